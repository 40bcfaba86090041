//! The in-process engine: a loop on its own thread doing continuous batching over the paged
//! KV cache. `scheduler` decides each step and drives the loop, `kv_manager` keeps each
//! sequence's blocks, the model runner executes, `output` samples and sends the events,
//! `waiting` orders the queue by tier and fair share.

#[cfg(feature = "fault-injection")]
mod fault;
mod kv_manager;
mod output;
mod scheduler;
mod sequence;
mod waiting;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc::{self, Sender, UnboundedSender};

use crate::kv::{BlockManager, KvLayout};
use crate::model::{ComputeTimes, ModelWeights};
use crate::observe::{Observer, RequestTimes};
use crate::text::ModelTokenizer;
use crate::{Engine, EngineError, EngineLoad, EventStream, GenerateEvent, GenerateRequest};

/// Sizing and policy of the native engine.
#[derive(Debug, Clone)]
pub struct NativeEngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Memory for K and V of all layers.
    pub kv_cache_bytes: u64,
    /// Most sequences in one step.
    pub max_num_seqs: usize,
    /// Most tokens in one step (decodes plus prefill chunks).
    pub max_num_batched_tokens: usize,
    /// Split long prompts across steps so decodes keep flowing.
    pub chunked_prefill: bool,
    /// Reuse the KV of earlier prompts' full blocks.
    pub prefix_caching: bool,
    /// Longest prompt plus completion.
    pub max_context: usize,
    /// How long a request may stay paused because its reader is not reading before it is
    /// aborted and its blocks freed.
    pub stall_timeout: Duration,
    /// Keys each tenant's prefix-cache salt (a server secret).
    pub prefix_salt_key: Vec<u8>,
    /// Told of every step and every ended choice (metrics).
    pub observer: Observer,
}

impl NativeEngineConfig {
    /// Defaults for a context length: 16-token blocks, 1 GiB of KV, 64 sequences, 256-token steps.
    pub fn new(max_context: usize) -> Self {
        Self {
            block_size: 16,
            kv_cache_bytes: 1 << 30,
            max_num_seqs: 64,
            max_num_batched_tokens: 256,
            chunked_prefill: true,
            prefix_caching: true,
            max_context,
            stall_timeout: Duration::from_secs(60),
            prefix_salt_key: Vec::new(),
            observer: Observer::default(),
        }
    }
}

struct Submission {
    request: GenerateRequest,
    events: Sender<Result<GenerateEvent, EngineError>>,
    generated: Arc<AtomicU64>,
    times: Arc<RequestTimes>,
}

/// Events one request may have waiting for its reader: a few steps of every choice, and room
/// for the end. More is never buffered; a reader this far behind pauses the request.
fn channel_capacity(n: usize) -> usize {
    4 * n + 32
}

pub struct NativeEngine {
    submissions: Option<UnboundedSender<Submission>>,
    load: Arc<Mutex<EngineLoad>>,
    block_size: usize,
    total_blocks: usize,
    max_context: usize,
    max_num_seqs: usize,
    /// Cleared if the engine loop dies; nothing more can be served.
    alive: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The model's compute times, where it measures them.
    times: Option<Arc<ComputeTimes>>,
}

impl NativeEngine {
    /// Starts the engine loop over `model` (the CPU `Transformer`, or a model on a GPU), its
    /// KV cache sized from `config.kv_cache_bytes`.
    pub fn start(
        model: impl ModelWeights,
        tokenizer: Arc<ModelTokenizer>,
        config: NativeEngineConfig,
    ) -> Result<Self, EngineError> {
        let shape = model.shape().clone();
        let block_bytes = (config.block_size * model.kv_bytes_per_token()) as u64;
        let total_blocks = (config.kv_cache_bytes / block_bytes.max(1)) as usize;
        let needed = config.max_context.div_ceil(config.block_size);
        if total_blocks < needed {
            return Err(EngineError::load(format!(
                "the KV cache of {} bytes holds {} tokens, less than one full context of {} tokens \
                 (it needs at least {} bytes)",
                config.kv_cache_bytes,
                total_blocks * config.block_size,
                config.max_context,
                needed as u64 * block_bytes
            )));
        }
        if config.max_num_batched_tokens < config.max_num_seqs {
            return Err(EngineError::load(format!(
                "max_num_batched_tokens ({}) must be at least max_num_seqs ({}) so every running sequence can decode each step",
                config.max_num_batched_tokens, config.max_num_seqs
            )));
        }
        let layout = KvLayout {
            num_blocks: total_blocks,
            block_size: config.block_size,
            kv_heads: shape.num_kv_heads,
            head_dim: shape.head_dim,
        };
        let load = Arc::new(Mutex::new(EngineLoad {
            kv_blocks_total: total_blocks,
            kv_block_size: config.block_size,
            ..EngineLoad::default()
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        let times = model.compute_times();
        let runner = Box::new(model).into_runner(layout)?;
        let alive = Arc::new(AtomicBool::new(true));
        let mut worker = scheduler::EngineCore::new(
            runner,
            tokenizer,
            kv_manager::KvCacheManager::new(
                BlockManager::new(total_blocks, config.block_size, config.prefix_caching),
                config.block_size,
            ),
            config.clone(),
            load.clone(),
            alive.clone(),
        );
        // The loop runs on a worker of the engine's own thread pool, so each parallel kernel
        // (five per layer per step) is shared with a warm thread instead of waking the whole
        // pool from outside: about 7% faster decoding on two cores.
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("rosetta-engine-{i}"))
            .build()
            .map_err(|e| EngineError::load(format!("cannot start the engine's threads: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("rosetta-engine".into())
            .spawn(move || {
                // The worker marks the engine dead as it is dropped (here or while unwinding).
                let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    pool.install(move || worker.run(rx))
                }));
                if ended.is_err() {
                    tracing::error!("the engine loop died; the model can no longer serve");
                }
            })
            .map_err(|e| EngineError::load(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            submissions: Some(tx),
            load,
            block_size: config.block_size,
            total_blocks,
            max_context: config.max_context,
            max_num_seqs: config.max_num_seqs,
            alive,
            thread: Some(thread),
            times,
        })
    }
}

impl Engine for NativeEngine {
    fn submit(&self, request: GenerateRequest) -> Result<EventStream, EngineError> {
        let total = request.prompt.len() + request.max_tokens;
        if request.prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if request.params.n == 0 {
            return Err(EngineError::InvalidRequest("n must be at least 1".into()));
        }
        if request.params.n > self.max_num_seqs {
            // All choices of a request run together; more than fit a step could never start.
            return Err(EngineError::InvalidRequest(format!(
                "n = {} is more than this model's engine runs at once (max_num_seqs = {})",
                request.params.n, self.max_num_seqs
            )));
        }
        if total > self.max_context {
            return Err(EngineError::InvalidRequest(format!(
                "this model's maximum context length is {} tokens; the request needs {} ({} in the prompt, {} to generate)",
                self.max_context,
                total,
                request.prompt.len(),
                request.max_tokens
            )));
        }
        if total.div_ceil(self.block_size) > self.total_blocks {
            return Err(EngineError::InvalidRequest(format!(
                "{total} tokens do not fit this model's KV cache"
            )));
        }
        if !self.is_healthy() {
            return Err(EngineError::Shutdown);
        }
        let (events, rx) = mpsc::channel(channel_capacity(request.params.n));
        let generated = Arc::new(AtomicU64::new(0));
        let times = Arc::new(RequestTimes::new());
        let submissions = self.submissions.as_ref().ok_or(EngineError::Shutdown)?;
        submissions
            .send(Submission {
                request,
                events,
                generated: generated.clone(),
                times: times.clone(),
            })
            .map_err(|_| EngineError::Shutdown)?;
        Ok(EventStream::new(rx, generated).with_times(times))
    }

    fn load(&self) -> EngineLoad {
        let mut load = self.load.lock().map(|l| *l).unwrap_or_default();
        if let Some(t) = &self.times {
            load.forward_ns = t.forward_ns.load(Ordering::Relaxed);
            load.experts_ns = t.experts_ns.load(Ordering::Relaxed);
        }
        load
    }

    fn is_healthy(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

impl Drop for NativeEngine {
    fn drop(&mut self) {
        // Closing the channel ends the loop once running work has finished or been cancelled.
        self.submissions.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
