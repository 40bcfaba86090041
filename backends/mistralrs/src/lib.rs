//! mistral.rs (the `mistralrs` crate) behind Rosetta's [`Engine`] trait: a second backend for
//! the Hugging Face folders of the architectures mistral.rs supports (DeepSeek V2/V3 among
//! them), with its in-situ quantisation (`isq: Q4K`, `Q8_0`, ...), and GGUF files (such as
//! `rosetta model gguf` writes).
//!
//! The gateway renders and tokenizes as for the native engine and sends token ids; mistral.rs
//! samples and detokenizes, and its answer becomes the engine's events. The answer is taken
//! whole (a stream to the client gets it in one chunk at the end): mistral.rs 0.8.1's
//! completion stream carries no usage and drops its final chunk when the last token is an
//! incomplete UTF-8 sequence, so a stream could not be finished reliably. What mistral.rs
//! 0.8.1 does not do per request is done here or refused with a clear error:
//! - `ignore_eos`, `min_tokens` and `logit_bias` (its `logits_bias` is not applied) are a
//!   logits processor of ours;
//! - `logprobs`, a `seed` for sampled output, and stop strings together with stop token ids
//!   are refused (400);
//! - tenants' tiers and fairness are not applied inside it (the gateway's limits still are).
//!
//! Its CPU batching panicked in 0.8.1 with 32 concurrent sequences and its prefix cache on
//! (`shape mismatch on dim 2` in the KV cache manager): the prefix cache is off and at most
//! `max_running` sequences run at once; the rest wait here. A panic inside mistral.rs fails the
//! request it hit with a server error (the end-to-end test injects one). mistral.rs 0.8.1 starts
//! a new engine thread on the same loaded model when it finds its thread dead, but a panic in a
//! forward pass leaves that model's KV cache lock poisoned, so the new thread may die too. So
//! when a request ends without an answer or cannot be sent, the replica is rebuilt: it reports
//! itself unhealthy (the pool stops choosing it, later requests get a 503, readiness fails),
//! loads the model afresh from the same options on a thread of its own, retrying with backoff,
//! and serves again once that is done. The process goes on throughout.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mistralrs::core::{parse_isq_value, RequestMessage, TokenSource};
use mistralrs::{
    Constraint, CustomLogitsProcessor, DeviceMapSetting, GgufModelBuilder, ModelDType,
    NormalRequest, Request, Response, SamplingParams, StopTokens, Tensor, TextModelBuilder,
};
use rosetta_engine::{
    ChoiceDelta, Engine, EngineError, EngineLoad, EventStream, FinishReason, GenerateEvent,
    GenerateRequest, Usage,
};
use tokio::sync::{mpsc, Semaphore};

/// How to load a model into mistral.rs.
#[derive(Debug, Clone)]
pub struct MistralRsOptions {
    /// A local Hugging Face model folder.
    pub dir: PathBuf,
    /// In-situ quantisation at load (`Q4K`, `Q8_0`, `Q4_0`, ...: mistral.rs's names).
    pub isq: Option<String>,
    /// Serve this GGUF file in `dir` instead of safetensors. mistral.rs 0.8.1 decodes with the
    /// vocabulary in the file's metadata (its `with_tokenizer_json` is not applied); the gateway
    /// encodes with `dir`'s tokenizer.json, which `rosetta model gguf` writes the same.
    pub gguf: Option<String>,
    /// Weights and activations in bf16 instead of f32.
    pub bf16: bool,
    /// Sequences running at once (more wait their turn).
    pub max_running: usize,
    /// The model's end-of-sequence ids (banned for `ignore_eos` and before `min_tokens`).
    pub eos_ids: Vec<u32>,
}

/// A model served by mistral.rs in this process.
pub struct MistralRsEngine {
    /// Runs the tasks that relay mistral.rs's answers (mistral.rs has its own thread).
    runtime: Option<tokio::runtime::Runtime>,
    replica: Arc<Replica>,
    slots: Arc<Semaphore>,
    running: Arc<AtomicUsize>,
    waiting: Arc<AtomicUsize>,
    next_id: AtomicUsize,
    eos: Arc<[u32]>,
}

/// The loaded model, and what it takes to load it again when its engine dies.
struct Replica {
    model: RwLock<Arc<mistralrs::Model>>,
    options: MistralRsOptions,
    handle: tokio::runtime::Handle,
    healthy: AtomicBool,
    rebuilding: AtomicBool,
    /// Times the model was rebuilt after its engine died: the generation of `model`.
    rebuilds: AtomicU64,
    /// Set when the engine is dropped: a rebuild in progress gives up.
    closed: AtomicBool,
}

impl Replica {
    /// The model now, and its generation.
    fn model(&self) -> (Arc<mistralrs::Model>, u64) {
        let model = match self.model.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        (model, self.rebuilds.load(Ordering::Acquire))
    }

    /// The engine of generation `generation` died (a request could not be sent, or ended
    /// without an answer): stop taking requests and load the model afresh on a thread of its
    /// own, retrying with backoff until it loads. Only one rebuild runs at a time, and news of
    /// an older generation's death (a request that was still on it) is ignored.
    fn rebuild(self: &Arc<Self>, generation: u64, why: &str) {
        if generation != self.rebuilds.load(Ordering::Acquire) {
            return;
        }
        self.healthy.store(false, Ordering::Relaxed);
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            model = %self.options.dir.display(),
            "mistral.rs engine died ({why}); reloading the model"
        );
        let replica = self.clone();
        let spawned = std::thread::Builder::new()
            .name("rosetta-mistralrs-reload".into())
            .spawn(move || {
                let mut backoff = Duration::from_secs(1);
                while !replica.closed.load(Ordering::Relaxed) {
                    let build = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        build_model(&replica.options, &replica.handle)
                    }));
                    match build {
                        Ok(Ok(model)) => {
                            let old = match replica.model.write() {
                                Ok(mut m) => std::mem::replace(&mut *m, Arc::new(model)),
                                Err(poisoned) => {
                                    std::mem::replace(&mut *poisoned.into_inner(), Arc::new(model))
                                }
                            };
                            drop(old);
                            let n = replica.rebuilds.fetch_add(1, Ordering::AcqRel) + 1;
                            replica.rebuilding.store(false, Ordering::Release);
                            replica.healthy.store(true, Ordering::Relaxed);
                            tracing::info!(
                                model = %replica.options.dir.display(),
                                rebuilds = n,
                                "mistral.rs model reloaded; serving again"
                            );
                            return;
                        }
                        Ok(Err(e)) => tracing::error!(
                            "reloading the mistral.rs model failed: {e}; retrying in {backoff:?}"
                        ),
                        Err(_) => tracing::error!(
                            "reloading the mistral.rs model panicked; retrying in {backoff:?}"
                        ),
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the mistral.rs reload thread: {e}");
            self.rebuilding.store(false, Ordering::Release);
        }
    }
}

fn load_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::load(format!("mistral.rs: {e}"))
}

/// Loads the model `options` name on `handle`'s runtime. Blocks, so it runs on a thread of
/// its own (the caller may be inside another runtime).
fn build_model(
    options: &MistralRsOptions,
    handle: &tokio::runtime::Handle,
) -> Result<mistralrs::Model, EngineError> {
    let dir = options.dir.to_string_lossy().into_owned();
    let seqs = options.max_running.max(1);
    if let Some(file) = options.gguf.clone() {
        // No automatic device map: on one CPU there is nothing to map, and 0.8.1's estimate
        // of a GGUF mixture of experts fails (it reads an unprefixed `expert_count`).
        let builder = GgufModelBuilder::new(dir, vec![file])
            .with_device_mapping(DeviceMapSetting::dummy())
            .with_token_source(TokenSource::None)
            .with_force_cpu()
            .with_max_num_seqs(seqs)
            .with_prefix_cache_n(None);
        handle.block_on(builder.build()).map_err(load_error)
    } else {
        let mut builder = TextModelBuilder::new(dir)
            .with_token_source(TokenSource::None)
            .with_dtype(if options.bf16 {
                ModelDType::BF16
            } else {
                ModelDType::F32
            })
            .with_force_cpu()
            .with_max_num_seqs(seqs)
            .with_prefix_cache_n(None);
        if let Some(isq) = &options.isq {
            builder = builder.with_isq(parse_isq_value(isq, None).map_err(load_error)?);
        }
        handle.block_on(builder.build()).map_err(load_error)
    }
}

impl MistralRsEngine {
    pub fn load(options: MistralRsOptions) -> Result<Self, EngineError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rosetta-mistralrs")
            .enable_all()
            .build()
            .map_err(load_error)?;
        let handle = runtime.handle().clone();
        let model = std::thread::scope(|scope| {
            scope
                .spawn(|| build_model(&options, &handle))
                .join()
                .map_err(|_| load_error("loading panicked"))?
        })?;
        let slots = options.max_running.max(1);
        let eos = options.eos_ids.clone().into();
        Ok(Self {
            runtime: Some(runtime),
            replica: Arc::new(Replica {
                model: RwLock::new(Arc::new(model)),
                options,
                handle,
                healthy: AtomicBool::new(true),
                rebuilding: AtomicBool::new(false),
                rebuilds: AtomicU64::new(0),
                closed: AtomicBool::new(false),
            }),
            slots: Arc::new(Semaphore::new(slots)),
            running: Arc::default(),
            waiting: Arc::default(),
            next_id: AtomicUsize::new(0),
            eos,
        })
    }

    /// mistral.rs's sampling for the request, or why it cannot serve it.
    fn sampling(&self, request: &GenerateRequest) -> Result<SamplingParams, EngineError> {
        let p = &request.params;
        let s = &p.sampling;
        let refuse = |what: &str| {
            Err(EngineError::InvalidRequest(format!(
                "{what} is not available on this model's engine (mistral.rs)"
            )))
        };
        if s.logprobs.is_some() {
            return refuse("logprobs");
        }
        if s.seed.is_some() && !s.is_greedy() {
            return refuse("a seed for sampled output");
        }
        if !p.stop.is_empty() && !p.stop_token_ids.is_empty() {
            return refuse("`stop` together with `stop_token_ids`");
        }
        let stop = if !p.stop.is_empty() {
            Some(StopTokens::Seqs(p.stop.to_vec()))
        } else if !p.stop_token_ids.is_empty() {
            Some(StopTokens::Ids(p.stop_token_ids.clone()))
        } else {
            None
        };
        let greedy = s.is_greedy();
        Ok(SamplingParams {
            temperature: Some(if greedy {
                0.0
            } else {
                f64::from(s.temperature)
            }),
            top_k: Some(if greedy { 1 } else { s.top_k }).filter(|&k| k > 0),
            top_p: (s.top_p < 1.0).then_some(f64::from(s.top_p)),
            min_p: (s.min_p > 0.0).then_some(f64::from(s.min_p)),
            top_n_logprobs: 0,
            frequency_penalty: (s.frequency_penalty != 0.0).then_some(s.frequency_penalty),
            presence_penalty: (s.presence_penalty != 0.0).then_some(s.presence_penalty),
            repetition_penalty: (s.repetition_penalty != 1.0).then_some(s.repetition_penalty),
            stop_toks: stop,
            max_len: Some(request.max_tokens),
            logits_bias: None,
            n_choices: p.n.max(1),
            dry_params: None,
        })
    }
}

impl Drop for MistralRsEngine {
    fn drop(&mut self) {
        self.replica.closed.store(true, Ordering::Relaxed);
        // Never blocks, even when dropped inside another runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// `ignore_eos`, `min_tokens` and `logit_bias`, applied to the logits before mistral.rs
/// samples.
struct Adjust {
    bias: Vec<(u32, f32)>,
    /// Banned while fewer than `until` tokens follow the prompt (forever for ignore_eos).
    banned: Vec<u32>,
    until: usize,
    prompt_len: usize,
}

impl CustomLogitsProcessor for Adjust {
    fn apply(&self, logits: &Tensor, context: &[u32]) -> mistralrs::Result<Tensor> {
        let generated = context.len().saturating_sub(self.prompt_len);
        let ban = generated < self.until;
        let dtype = logits.dtype();
        let mut v: Vec<f32> = logits
            .to_dtype(mistralrs::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        for &(id, b) in &self.bias {
            if let Some(x) = v.get_mut(id as usize) {
                *x += b;
            }
        }
        if ban {
            for &id in &self.banned {
                if let Some(x) = v.get_mut(id as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        Tensor::from_vec(v, logits.shape(), logits.device())?.to_dtype(dtype)
    }
}

impl Engine for MistralRsEngine {
    fn submit(&self, request: GenerateRequest) -> Result<EventStream, EngineError> {
        if !self.is_healthy() {
            return Err(EngineError::Shutdown);
        }
        let sampling = self.sampling(&request)?;
        let p = &request.params;
        let mut processors: Vec<Arc<dyn CustomLogitsProcessor>> = Vec::new();
        let until = if p.ignore_eos {
            usize::MAX
        } else {
            p.min_tokens
        };
        if until > 0 || !p.sampling.logit_bias.is_empty() {
            let mut banned: Vec<u32> = self.eos.to_vec();
            if !p.ignore_eos {
                banned.extend(&p.stop_token_ids);
            }
            processors.push(Arc::new(Adjust {
                bias: p.sampling.logit_bias.clone(),
                banned,
                until,
                prompt_len: request.prompt.len(),
            }));
        }
        #[cfg(feature = "fault-injection")]
        if fault::injected(&request.prompt) {
            processors.push(Arc::new(fault::Panic));
        }
        let constraint = match &request.constraint {
            Some(c) => Constraint::Llguidance(c.grammar().clone()),
            None => Constraint::None,
        };
        let (model, generation) = self.replica.model();
        let sender = model.inner().get_sender(None).map_err(|e| {
            self.replica.rebuild(generation, &e.to_string());
            EngineError::Internal(format!("mistral.rs: {e}"))
        })?;
        let (answers, from) = mpsc::channel(64);
        let normal = NormalRequest {
            messages: RequestMessage::CompletionTokens(request.prompt.clone()),
            sampling_params: sampling,
            response: answers,
            return_logprobs: false,
            // Whole answers: mistral.rs 0.8.1's completion stream carries no usage and drops
            // its final chunk when the last token is an incomplete UTF-8 sequence.
            is_streaming: false,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            constraint,
            suffix: None,
            tools: None,
            tool_choice: None,
            logits_processors: (!processors.is_empty()).then_some(processors),
            return_raw_logits: false,
            web_search_options: None,
            model_id: None,
            truncate_sequence: false,
        };
        let (to, events) = mpsc::channel(64);
        let generated = Arc::new(AtomicU64::new(0));
        let relay = Relay {
            prompt_tokens: request.prompt.len(),
            generated: generated.clone(),
            deadline: request.deadline,
            to,
            replica: self.replica.clone(),
            generation,
        };
        let (slots, running, waiting) = (
            self.slots.clone(),
            self.running.clone(),
            self.waiting.clone(),
        );
        waiting.fetch_add(1, Ordering::Relaxed);
        let runtime = self.runtime.as_ref().ok_or(EngineError::Shutdown)?;
        runtime.spawn(async move {
            let permit = slots.acquire_owned().await;
            waiting.fetch_sub(1, Ordering::Relaxed);
            let Ok(_permit) = permit else { return };
            if relay.to.is_closed() {
                return; // its client left while it waited
            }
            running.fetch_add(1, Ordering::Relaxed);
            if sender
                .send(Request::Normal(Box::new(normal)))
                .await
                .is_err()
            {
                relay
                    .replica
                    .rebuild(relay.generation, "its request channel is closed");
                let _ = relay.to.send(Err(EngineError::Shutdown)).await;
            } else {
                relay.run(from).await;
            }
            running.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(EventStream::new(events, generated))
    }

    fn load(&self) -> EngineLoad {
        EngineLoad {
            running: self.running.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            ..EngineLoad::default()
        }
    }

    fn is_healthy(&self) -> bool {
        self.replica.healthy.load(Ordering::Relaxed)
    }
}

/// Turns one request's mistral.rs answer into the engine's events.
struct Relay {
    prompt_tokens: usize,
    generated: Arc<AtomicU64>,
    deadline: Option<std::time::Instant>,
    to: mpsc::Sender<Result<GenerateEvent, EngineError>>,
    replica: Arc<Replica>,
    /// The generation of the model the request was sent to.
    generation: u64,
}

impl Relay {
    async fn run(self, mut from: mpsc::Receiver<Response>) {
        // One answer ends the request (or an error does).
        let deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let answer = tokio::select! {
            a = from.recv() => a,
            // Its client left: dropping `from` makes mistral.rs drop the sequence.
            () = self.to.closed() => return,
            () = &mut deadline => {
                let _ = self.to.send(Err(EngineError::DeadlineExceeded)).await;
                return;
            }
        };
        let error = match answer {
            Some(Response::CompletionDone(done)) => {
                for choice in done.choices {
                    let finish = match choice.finish_reason.as_str() {
                        "length" => FinishReason::Length,
                        _ => FinishReason::Stop,
                    };
                    let delta = ChoiceDelta {
                        index: choice.index,
                        text: choice.text,
                        token: None,
                        finish_reason: Some(finish),
                    };
                    if self.to.send(Ok(GenerateEvent::Delta(delta))).await.is_err() {
                        return;
                    }
                }
                let completion_tokens = done.usage.completion_tokens;
                self.generated
                    .store(completion_tokens as u64, Ordering::Relaxed);
                let usage = Usage {
                    prompt_tokens: self.prompt_tokens,
                    completion_tokens,
                };
                let _ = self.to.send(Ok(GenerateEvent::Done(usage))).await;
                return;
            }
            Some(Response::ValidationError(e)) => EngineError::InvalidRequest(e.to_string()),
            Some(Response::InternalError(e)) => EngineError::Internal(e.to_string()),
            Some(Response::CompletionModelError(e, _)) => EngineError::Internal(e),
            Some(_) => EngineError::Internal("mistral.rs sent an unexpected answer".into()),
            None => {
                // Only a dead engine thread drops a request without answering it.
                self.replica
                    .rebuild(self.generation, "a request ended without an answer");
                EngineError::Internal("mistral.rs ended the request without an answer".into())
            }
        };
        let _ = self.to.send(Err(error)).await;
    }
}

/// Test-only fault injection (cargo feature `fault-injection`, never in a release build): a
/// prompt holding the token id in `ROSETTA_FAULT_TOKEN` gets a logits processor that panics
/// inside mistral.rs's engine thread, so an end-to-end test can prove that such a panic fails
/// only the requests mistral.rs held, never the process.
#[cfg(feature = "fault-injection")]
mod fault {
    use std::sync::OnceLock;

    use mistralrs::{CustomLogitsProcessor, Tensor};

    pub fn injected(prompt: &[u32]) -> bool {
        static TOKEN: OnceLock<Option<u32>> = OnceLock::new();
        TOKEN
            .get_or_init(|| {
                std::env::var("ROSETTA_FAULT_TOKEN")
                    .ok()
                    .and_then(|v| v.parse().ok())
            })
            .is_some_and(|t| prompt.contains(&t))
    }

    pub struct Panic;

    impl CustomLogitsProcessor for Panic {
        fn apply(&self, _: &Tensor, _: &[u32]) -> mistralrs::Result<Tensor> {
            panic!("injected fault inside mistral.rs");
        }
    }
}
