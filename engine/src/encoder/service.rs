//! The encoder's engine: a thread that batches the queued inputs of every request into
//! forward passes of at most `max_batch_tokens` tokens, pools each input, and answers each
//! request once all its inputs are done. A request whose client has gone is skipped; a panic
//! in a forward pass fails that batch's requests, not the engine.

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::model::WeightFormat;
use tokio::sync::oneshot;

use super::model::Encoder;
use super::pooling::Pooling;
use super::shape::EncoderShape;
use crate::{Engine, EngineError, EngineLoad, EventStream, GenerateRequest};

/// Inputs to embed, already tokenized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedRequest {
    pub inputs: Vec<Vec<u32>>,
}

/// One vector per input, in order, as the model's pooling makes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
}

/// The answer to an accepted [`EmbedRequest`]; dropping it cancels the request.
pub struct EmbedTicket(oneshot::Receiver<Result<Embeddings, EngineError>>);

impl Future for EmbedTicket {
    type Output = Result<Embeddings, EngineError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(EngineError::Shutdown)))
    }
}

/// Limits of the encoder's engine.
#[derive(Debug, Clone, Copy)]
pub struct EncoderConfig {
    /// Tokens in one forward pass (a longer request is split over several).
    pub max_batch_tokens: usize,
    /// Requests queued before new ones are refused as overloaded.
    pub max_waiting: usize,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 8192,
            max_waiting: 256,
        }
    }
}

struct Job {
    inputs: Vec<Vec<u32>>,
    vectors: Vec<Vec<f32>>,
    reply: oneshot::Sender<Result<Embeddings, EngineError>>,
}

#[derive(Default)]
struct Counters {
    running: AtomicUsize,
    waiting: AtomicUsize,
    stopped: AtomicBool,
}

/// An embedding model served in this process.
pub struct EncoderEngine {
    queue: SyncSender<Job>,
    counters: Arc<Counters>,
    shape: EncoderShape,
    pooling: Pooling,
    encoder: Arc<Encoder>,
}

impl EncoderEngine {
    /// Loads the encoder and its pooling from `dir` and starts its thread.
    pub fn load(
        dir: &Path,
        dtype: WeightFormat,
        config: EncoderConfig,
    ) -> Result<Self, EngineError> {
        let encoder = Arc::new(Encoder::load(dir, dtype)?);
        let pooling = Pooling::from_dir(dir)?;
        let (queue, jobs) = sync_channel(config.max_waiting.max(1));
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            encoder: encoder.clone(),
            pooling,
            jobs,
            counters: counters.clone(),
            // A pass always takes at least one input, whatever its length.
            max_batch_tokens: config.max_batch_tokens.max(1),
        };
        std::thread::Builder::new()
            .name("rosetta-encoder".into())
            .spawn(move || worker.run())
            .map_err(|e| EngineError::load(format!("cannot start the encoder thread: {e}")))?;
        Ok(Self {
            queue,
            counters,
            shape: encoder.shape().clone(),
            pooling,
            encoder,
        })
    }

    pub fn shape(&self) -> &EncoderShape {
        &self.shape
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }
}

impl Engine for EncoderEngine {
    fn submit(&self, _request: GenerateRequest) -> Result<EventStream, EngineError> {
        Err(EngineError::InvalidRequest(
            "this model makes embeddings (/v1/embeddings); it does not generate text".into(),
        ))
    }

    fn embed(&self, request: EmbedRequest) -> Result<EmbedTicket, EngineError> {
        for input in &request.inputs {
            self.encoder.check(input)?;
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            vectors: Vec::with_capacity(request.inputs.len()),
            inputs: request.inputs,
            reply,
        };
        self.counters.waiting.fetch_add(1, Ordering::Relaxed);
        match self.queue.try_send(job) {
            Ok(()) => Ok(EmbedTicket(answer)),
            Err(e) => {
                self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => {
                        EngineError::Overloaded("the embedding queue is full".into())
                    }
                    TrySendError::Disconnected(_) => EngineError::Shutdown,
                })
            }
        }
    }

    fn load(&self) -> EngineLoad {
        EngineLoad {
            running: self.counters.running.load(Ordering::Relaxed),
            waiting: self.counters.waiting.load(Ordering::Relaxed),
            ..EngineLoad::default()
        }
    }

    fn is_healthy(&self) -> bool {
        !self.counters.stopped.load(Ordering::Relaxed)
    }
}

struct Worker {
    encoder: Arc<Encoder>,
    pooling: Pooling,
    jobs: Receiver<Job>,
    counters: Arc<Counters>,
    max_batch_tokens: usize,
}

impl Worker {
    fn run(self) {
        let mut active: VecDeque<Job> = VecDeque::new();
        loop {
            // Wait for work only when there is none in hand.
            if active.is_empty() {
                match self.jobs.recv() {
                    Ok(job) => self.take(&mut active, job),
                    Err(_) => break,
                }
            }
            while let Ok(job) = self.jobs.try_recv() {
                self.take(&mut active, job);
            }
            // A request whose client has gone is not computed.
            active.retain(|j| !j.reply.is_closed());
            self.counters.running.store(active.len(), Ordering::Relaxed);
            if active.is_empty() {
                continue;
            }
            self.step(&mut active);
        }
        self.counters.stopped.store(true, Ordering::Relaxed);
    }

    fn take(&self, active: &mut VecDeque<Job>, job: Job) {
        self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
        active.push_back(job);
    }

    /// One forward pass over the next inputs, in arrival order, up to the token budget;
    /// answers every request it completes.
    fn step(&self, active: &mut VecDeque<Job>) {
        let mut batch: Vec<(usize, usize)> = Vec::new();
        let mut tokens = 0;
        'fill: for (j, job) in active.iter().enumerate() {
            for i in job.vectors.len()..job.inputs.len() {
                let len = job.inputs[i].len();
                if !batch.is_empty() && tokens + len > self.max_batch_tokens {
                    break 'fill;
                }
                tokens += len;
                batch.push((j, i));
            }
        }
        let seqs: Vec<&[u32]> = batch
            .iter()
            .map(|&(j, i)| active[j].inputs[i].as_slice())
            .collect();
        let hidden = self.encoder.shape().hidden_size;
        let pooled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let (states, spans) = self.encoder.forward(&seqs);
            spans
                .iter()
                .map(|s| {
                    let rows = &states[s.start * hidden..(s.start + s.len) * hidden];
                    self.pooling.pool(rows, hidden)
                })
                .collect::<Vec<_>>()
        }));
        match pooled {
            Ok(vectors) => {
                for (&(j, _), v) in batch.iter().zip(vectors) {
                    active[j].vectors.push(v);
                }
            }
            Err(_) => {
                tracing::error!("the encoder's forward pass panicked; failing its requests");
                let failed: std::collections::BTreeSet<usize> =
                    batch.iter().map(|&(j, _)| j).collect();
                for j in failed.into_iter().rev() {
                    if let Some(job) = active.remove(j) {
                        let _ = job.reply.send(Err(EngineError::Internal(
                            "the encoder failed on this batch".into(),
                        )));
                    }
                }
                return;
            }
        }
        while active
            .front()
            .is_some_and(|j| j.vectors.len() == j.inputs.len())
        {
            if let Some(job) = active.pop_front() {
                let prompt_tokens = job.inputs.iter().map(Vec::len).sum();
                let _ = job.reply.send(Ok(Embeddings {
                    vectors: job.vectors,
                    prompt_tokens,
                }));
            }
        }
    }
}
