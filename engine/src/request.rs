//! What the gateway sends to an engine and what comes back.

use std::sync::Arc;

use crate::SamplingParams;

/// The tier of requests that do not say.
pub const DEFAULT_PRIORITY: u8 = 1;

/// How a request generates, shared (one allocation) by all its prompts and choices.
#[derive(Debug, Clone)]
pub struct GenerationParams {
    /// Number of choices per prompt.
    pub n: usize,
    /// EOS and stop token ids are suppressed until this many tokens are out (vLLM's extension).
    pub min_tokens: usize,
    /// Keep generating past EOS (vLLM's extension, for benchmarks).
    pub ignore_eos: bool,
    pub sampling: SamplingParams,
    /// Stop strings: generation ends before the first one, which is not returned.
    pub stop: Arc<[String]>,
    /// Extra token ids that end generation, besides the model's EOS; sorted, no duplicates.
    pub stop_token_ids: Vec<u32>,
    pub skip_special_tokens: bool,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            n: 1,
            min_tokens: 0,
            ignore_eos: false,
            sampling: SamplingParams::default(),
            stop: Arc::from([]),
            stop_token_ids: Vec::new(),
            skip_special_tokens: true,
        }
    }
}

/// One generation request: a tokenized prompt and `n` independent continuations of it.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub params: Arc<GenerationParams>,
    /// Scheduling tier: 0 is served first; higher tiers are preempted first.
    pub priority: u8,
    /// Who asked: sequences of different tenants share the batch fairly within a tier, and
    /// never share prefix-cache entries.
    pub tenant: Option<Arc<str>>,
    /// Abort the request (freeing its blocks) if it has not finished by then.
    pub deadline: Option<std::time::Instant>,
    /// Structured output: only tokens that keep the output a valid prefix may be sampled.
    pub constraint: Option<crate::grammar::Constraint>,
}

impl GenerateRequest {
    pub fn new(prompt: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            prompt,
            max_tokens,
            params: Arc::default(),
            priority: DEFAULT_PRIORITY,
            tenant: None,
            deadline: None,
            constraint: None,
        }
    }

    /// The parameters to change, copied first if another request shares them.
    pub fn params_mut(&mut self) -> &mut GenerationParams {
        Arc::make_mut(&mut self.params)
    }

    pub fn n(&self) -> usize {
        self.params.n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// max_tokens reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// One generated token with its log-probabilities (when requested).
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedToken {
    pub id: u32,
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Progress of one choice: the text this step released and the token that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceDelta {
    pub index: usize,
    pub text: String,
    pub token: Option<GeneratedToken>,
    pub finish_reason: Option<FinishReason>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GenerateEvent {
    Delta(ChoiceDelta),
    /// Every choice has finished; the last event of a request.
    Done(Usage),
}

/// A snapshot of an engine's load, for routing and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineLoad {
    /// Sequences generating (holding KV blocks).
    pub running: usize,
    /// Sequences queued, including preempted ones.
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    /// Tokens per block.
    pub kv_block_size: usize,
    /// Slots in used blocks that hold no token yet (the partly filled last blocks).
    pub kv_slots_unused: usize,
    /// Sequences preempted (their blocks taken back, to be recomputed) since start.
    pub preemptions: u64,
    /// Prompt tokens looked up in the prefix cache, and found, since start.
    pub prefix_queried_tokens: u64,
    pub prefix_hit_tokens: u64,
    /// Time in forward passes since start, and the part in mixture-of-experts blocks
    /// (engines that measure it).
    pub forward_ns: u64,
    pub experts_ns: u64,
}
