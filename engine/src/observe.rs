//! What the engine tells its observer as it works, for metrics: each step's tokens and
//! latencies, and each choice as it ends. Called on the engine thread, so an observer must be
//! cheap (atomic counters and histograms, no locks held long, no I/O).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::FinishReason;

/// Receives the engine's measurements. Every method has an empty default.
pub trait EngineObserver: Send + Sync + 'static {
    /// One step (forward pass) ran.
    fn step(&self, _step: &StepStats) {}
    /// One choice ended, by finishing or otherwise.
    fn choice_ended(&self, _choice: &ChoiceStats) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl EngineObserver for NoObserver {}

/// An observer handle that can sit in a `Debug + Clone` configuration.
#[derive(Clone)]
pub struct Observer(pub Arc<dyn EngineObserver>);

impl Default for Observer {
    fn default() -> Self {
        Self(Arc::new(NoObserver))
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// One step: what it computed and the latencies of the tokens it sampled.
#[derive(Debug, Default, Clone)]
pub struct StepStats {
    /// Tokens run through the model: prefill chunks plus one per decode.
    pub scheduled_tokens: usize,
    /// Prompt tokens of the requests whose prompt was finished in this step (counted once
    /// per request, when its first token comes).
    pub prompt_tokens: usize,
    /// Tokens sampled in this step, over every choice.
    pub generation_tokens: usize,
    /// For each request whose first token came in this step: arrival to that token.
    pub time_to_first_token: Vec<Duration>,
    /// For each other sampled token: the time since its choice's previous token.
    pub inter_token: Vec<Duration>,
}

impl StepStats {
    pub fn clear(&mut self) {
        self.scheduled_tokens = 0;
        self.prompt_tokens = 0;
        self.generation_tokens = 0;
        self.time_to_first_token.clear();
        self.inter_token.clear();
    }
}

/// How a choice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChoiceEnd {
    Finished(FinishReason),
    /// Its client left, it ran past its deadline, or its reader stalled.
    Aborted,
    /// The engine failed it.
    Failed,
}

impl ChoiceEnd {
    /// vLLM's `finished_reason` label values.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Finished(r) => r.as_str(),
            Self::Aborted => "abort",
            Self::Failed => "error",
        }
    }
}

/// One ended choice, with its request's phases as vLLM measures them.
#[derive(Debug, Clone)]
pub struct ChoiceStats {
    pub end: ChoiceEnd,
    pub prompt_tokens: usize,
    pub generation_tokens: usize,
    /// The request's `n` and `max_tokens`.
    pub n: usize,
    pub max_tokens: usize,
    /// Arrival to the end.
    pub e2e: Duration,
    /// Arrival to first scheduled; `None` if it never ran.
    pub queued: Option<Duration>,
    /// First scheduled to first token.
    pub prefill: Option<Duration>,
    /// First token to last token.
    pub decode: Option<Duration>,
    /// First scheduled to the end.
    pub inference: Option<Duration>,
}

/// When a request reached the engine, first ran and produced its first token; shared with the
/// request's [`EventStream`](crate::EventStream) so the gateway can report where time went.
#[derive(Debug)]
pub struct RequestTimes {
    pub arrived: Instant,
    scheduled: OnceLock<Instant>,
    first_token: OnceLock<Instant>,
}

impl RequestTimes {
    pub fn new() -> Self {
        Self {
            arrived: Instant::now(),
            scheduled: OnceLock::new(),
            first_token: OnceLock::new(),
        }
    }

    /// The first time it is scheduled; later calls (after a preemption) change nothing.
    pub fn mark_scheduled(&self, at: Instant) {
        let _ = self.scheduled.set(at);
    }

    pub fn mark_first_token(&self, at: Instant) {
        let _ = self.first_token.set(at);
    }

    pub fn scheduled(&self) -> Option<Instant> {
        self.scheduled.get().copied()
    }

    pub fn first_token(&self) -> Option<Instant> {
        self.first_token.get().copied()
    }

    /// Arrival to first scheduled.
    pub fn queue_time(&self) -> Option<Duration> {
        self.scheduled().map(|s| s.duration_since(self.arrived))
    }

    /// First scheduled to first token.
    pub fn prefill_time(&self) -> Option<Duration> {
        Some(self.first_token()?.duration_since(self.scheduled()?))
    }
}

impl Default for RequestTimes {
    fn default() -> Self {
        Self::new()
    }
}
