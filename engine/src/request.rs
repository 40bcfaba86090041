//! What the gateway sends to an engine and what comes back.

use crate::SamplingParams;

/// The tier of requests that do not say.
pub const DEFAULT_PRIORITY: u8 = 1;

/// One generation request: a tokenized prompt and `n` independent continuations of it.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    /// Number of choices.
    pub n: usize,
    pub max_tokens: usize,
    /// EOS and stop token ids are suppressed until this many tokens are out (vLLM's extension).
    pub min_tokens: usize,
    /// Keep generating past EOS (vLLM's extension, for benchmarks).
    pub ignore_eos: bool,
    pub sampling: SamplingParams,
    /// Stop strings: generation ends before the first one, which is not returned.
    pub stop: Vec<String>,
    /// Extra token ids that end generation, besides the model's EOS.
    pub stop_token_ids: Vec<u32>,
    pub skip_special_tokens: bool,
    /// Scheduling tier: 0 is served first; higher tiers are preempted first.
    pub priority: u8,
    /// Who asked: sequences of different tenants share the batch fairly within a tier, and
    /// never share prefix-cache entries.
    pub tenant: Option<String>,
    /// Abort the request (freeing its blocks) if it has not finished by then.
    pub deadline: Option<std::time::Instant>,
}

impl GenerateRequest {
    pub fn new(prompt: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            prompt,
            n: 1,
            max_tokens,
            min_tokens: 0,
            ignore_eos: false,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            skip_special_tokens: true,
            priority: DEFAULT_PRIORITY,
            tenant: None,
            deadline: None,
        }
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
}
