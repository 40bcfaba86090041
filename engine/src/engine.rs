//! The one trait the gateway talks to every engine through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::Receiver;

use crate::encoder::{EmbedRequest, EmbedTicket};
use crate::{EngineError, EngineLoad, GenerateEvent, GenerateRequest, RequestTimes};

/// Events of one request, ending with `Done` or an error. The channel is bounded: an engine
/// pauses a request whose reader falls behind instead of buffering its output. Dropping the
/// stream cancels the request: the engine frees its KV blocks at the next step.
#[derive(Debug)]
pub struct EventStream {
    events: Receiver<Result<GenerateEvent, EngineError>>,
    generated: Arc<AtomicU64>,
    times: Option<Arc<RequestTimes>>,
}

impl EventStream {
    pub fn new(
        events: Receiver<Result<GenerateEvent, EngineError>>,
        generated: Arc<AtomicU64>,
    ) -> Self {
        Self {
            events,
            generated,
            times: None,
        }
    }

    /// An engine that measures when the request was queued, scheduled and first answered
    /// shares those times with its reader.
    pub fn with_times(mut self, times: Arc<RequestTimes>) -> Self {
        self.times = Some(times);
        self
    }

    pub fn times(&self) -> Option<Arc<RequestTimes>> {
        self.times.clone()
    }

    pub async fn recv(&mut self) -> Option<Result<GenerateEvent, EngineError>> {
        self.events.recv().await
    }

    pub fn blocking_recv(&mut self) -> Option<Result<GenerateEvent, EngineError>> {
        self.events.blocking_recv()
    }

    pub fn try_recv(&mut self) -> Result<Result<GenerateEvent, EngineError>, TryRecvError> {
        self.events.try_recv()
    }

    /// Tokens the engine has generated for this request so far, read or not: what the
    /// request has cost, even if its client leaves before reading them.
    pub fn generated_tokens(&self) -> Arc<AtomicU64> {
        self.generated.clone()
    }

    pub fn generated_now(&self) -> u64 {
        self.generated.load(Ordering::Relaxed)
    }
}

pub trait Engine: Send + Sync + 'static {
    /// Queues a request. Errors here mean the request was never accepted.
    fn submit(&self, request: GenerateRequest) -> Result<EventStream, EngineError>;

    /// Queues inputs to embed; only embedding models do.
    fn embed(&self, _request: EmbedRequest) -> Result<EmbedTicket, EngineError> {
        Err(EngineError::InvalidRequest(
            "this model generates text; it makes no embeddings".into(),
        ))
    }

    /// The current load.
    fn load(&self) -> EngineLoad;

    /// False once the engine cannot serve any more (its loop died); the pool stops choosing
    /// it and readiness fails.
    fn is_healthy(&self) -> bool {
        true
    }
}
