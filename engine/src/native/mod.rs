//! The in-process engine: a loop on its own thread that runs every admitted sequence through
//! the model together, one forward pass per step, over the paged KV cache.

mod sequence;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use sequence::{Group, Sequence};

use crate::kv::{BlockAllocator, KvLayout, KvPool};
use crate::model::{SeqChunk, Transformer};
use crate::text::ModelTokenizer;
use crate::{Engine, EngineError, EngineLoad, EventStream, GenerateEvent, GenerateRequest};

/// Sizing of the native engine.
#[derive(Debug, Clone)]
pub struct NativeEngineConfig {
    pub block_size: usize,
    pub kv_cache_bytes: u64,
    pub max_num_seqs: usize,
    /// Longest prompt plus completion.
    pub max_context: usize,
}

struct Submission {
    request: GenerateRequest,
    events: UnboundedSender<Result<GenerateEvent, EngineError>>,
}

pub struct NativeEngine {
    submissions: Option<UnboundedSender<Submission>>,
    load: Arc<Mutex<EngineLoad>>,
    block_size: usize,
    total_blocks: usize,
    max_context: usize,
    thread: Option<JoinHandle<()>>,
}

impl NativeEngine {
    pub fn start(
        model: Transformer,
        tokenizer: Arc<ModelTokenizer>,
        config: NativeEngineConfig,
    ) -> Result<Self, EngineError> {
        let shape = model.shape().clone();
        let block_bytes = (config.block_size * shape.kv_bytes_per_token()) as u64;
        let total_blocks = (config.kv_cache_bytes / block_bytes.max(1)) as usize;
        let needed = config.max_context.div_ceil(config.block_size);
        if total_blocks < needed {
            return Err(EngineError::load(format!(
                "engine.kv_cache_bytes = {} holds {} tokens, less than one full context of {} tokens \
                 (needs at least {} bytes)",
                config.kv_cache_bytes,
                total_blocks * config.block_size,
                config.max_context,
                needed as u64 * block_bytes
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
            ..EngineLoad::default()
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut worker = Worker {
            kv: KvPool::new(shape.num_layers, layout),
            allocator: BlockAllocator::new(total_blocks),
            model,
            tokenizer,
            config: config.clone(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            groups: HashMap::new(),
            next_group: 0,
            load: load.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("rosetta-engine".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| EngineError::load(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            submissions: Some(tx),
            load,
            block_size: config.block_size,
            total_blocks,
            max_context: config.max_context,
            thread: Some(thread),
        })
    }
}

impl Engine for NativeEngine {
    fn submit(&self, request: GenerateRequest) -> Result<EventStream, EngineError> {
        let total = request.prompt.len() + request.max_tokens;
        if request.prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
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
        if request.n * total.div_ceil(self.block_size) > self.total_blocks {
            return Err(EngineError::InvalidRequest(format!(
                "{} choices of {} tokens do not fit this model's KV cache",
                request.n, total
            )));
        }
        let (events, rx) = mpsc::unbounded_channel();
        let submissions = self.submissions.as_ref().ok_or(EngineError::Shutdown)?;
        submissions
            .send(Submission { request, events })
            .map_err(|_| EngineError::Shutdown)?;
        Ok(rx)
    }

    fn load(&self) -> EngineLoad {
        self.load.lock().map(|l| *l).unwrap_or_default()
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

struct Worker {
    model: Transformer,
    tokenizer: Arc<ModelTokenizer>,
    kv: KvPool,
    allocator: BlockAllocator,
    config: NativeEngineConfig,
    waiting: VecDeque<Submission>,
    running: Vec<Sequence>,
    groups: HashMap<u64, Group>,
    next_group: u64,
    load: Arc<Mutex<EngineLoad>>,
}

impl Worker {
    fn run(&mut self, mut rx: UnboundedReceiver<Submission>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.blocking_recv() {
                    Some(s) => self.waiting.push_back(s),
                    None => break,
                }
            }
            while let Ok(s) = rx.try_recv() {
                self.waiting.push_back(s);
            }
            self.drop_cancelled();
            self.admit();
            self.step();
            self.publish_load();
        }
        tracing::debug!("engine loop stopped");
    }

    /// Frees everything of requests whose client has gone away.
    fn drop_cancelled(&mut self) {
        self.waiting.retain(|s| !s.events.is_closed());
        let gone: BTreeSet<u64> = self
            .groups
            .iter()
            .filter(|(_, g)| g.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        if gone.is_empty() {
            return;
        }
        let allocator = &mut self.allocator;
        self.running.retain_mut(|seq| {
            if gone.contains(&seq.group) {
                allocator.release(seq.take_blocks());
                false
            } else {
                true
            }
        });
        for id in gone {
            self.groups.remove(&id);
        }
    }

    /// Starts waiting requests in arrival order while sequence slots and KV blocks last.
    /// Each sequence reserves blocks for its whole prompt and completion up front.
    fn admit(&mut self) {
        while let Some(front) = self.waiting.front() {
            let req = &front.request;
            let per_seq = (req.prompt.len() + req.max_tokens).div_ceil(self.config.block_size);
            if self.running.len() + req.n > self.config.max_num_seqs.max(req.n)
                || per_seq * req.n > self.allocator.free_count()
            {
                break;
            }
            let Some(sub) = self.waiting.pop_front() else {
                break;
            };
            let group_id = self.next_group;
            self.next_group += 1;
            for index in 0..sub.request.n {
                let blocks = self
                    .allocator
                    .allocate(per_seq)
                    .expect("free blocks were counted just above");
                self.running.push(Sequence::new(
                    group_id,
                    index,
                    &sub.request,
                    blocks,
                    &self.tokenizer,
                ));
            }
            self.groups
                .insert(group_id, Group::new(&sub.request, sub.events));
        }
    }

    fn step(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let chunks: Vec<SeqChunk<'_>> = self.running.iter().map(Sequence::next_chunk).collect();
        let result = self.model.forward(&chunks, &mut self.kv);
        drop(chunks);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "forward pass failed; failing the batch");
                for seq in self.running.drain(..) {
                    self.allocator.release(seq.into_blocks());
                }
                for (_, g) in self.groups.drain() {
                    let _ = g.events.send(Err(e.clone()));
                }
                return;
            }
        };
        let mut logits = logits.into_iter();
        let mut finished = Vec::new();
        for (i, seq) in self.running.iter_mut().enumerate() {
            seq.mark_computed();
            let Some(mut row) = logits.next() else { break };
            let Some(group) = self.groups.get_mut(&seq.group) else {
                continue;
            };
            let delta = seq.sample_next(&mut row, &self.tokenizer);
            group.usage.completion_tokens += 1;
            let done = delta.finish_reason.is_some();
            let _ = group.events.send(Ok(GenerateEvent::Delta(delta)));
            if done {
                finished.push(i);
            }
        }
        for i in finished.into_iter().rev() {
            // Descending indices keep swap_remove from moving an unprocessed finisher.
            let seq = self.running.swap_remove(i);
            let group_id = seq.group;
            self.allocator.release(seq.into_blocks());
            if let Some(group) = self.groups.get_mut(&group_id) {
                group.remaining -= 1;
                if group.remaining == 0 {
                    let usage = group.usage;
                    let _ = group.events.send(Ok(GenerateEvent::Done(usage)));
                    self.groups.remove(&group_id);
                }
            }
        }
    }

    fn publish_load(&self) {
        if let Ok(mut l) = self.load.lock() {
            *l = EngineLoad {
                running: self.running.len(),
                waiting: self.waiting.iter().map(|s| s.request.n).sum(),
                kv_blocks_used: self.allocator.in_use(),
                kv_blocks_total: self.allocator.total(),
            };
        }
    }
}
