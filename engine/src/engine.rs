//! The one trait the gateway talks to every engine through.

use tokio::sync::mpsc::UnboundedReceiver;

use crate::{EngineError, EngineLoad, GenerateEvent, GenerateRequest};

/// Events of one request, ending with `Done` or an error. Dropping the receiver cancels the
/// request: the engine frees its KV blocks at the next step.
pub type EventStream = UnboundedReceiver<Result<GenerateEvent, EngineError>>;

pub trait Engine: Send + Sync + 'static {
    /// Queues a request. Errors here mean the request was never accepted.
    fn submit(&self, request: GenerateRequest) -> Result<EventStream, EngineError>;

    /// The current load.
    fn load(&self) -> EngineLoad;
}
