//! The engine's error kinds, and whether a retry elsewhere may help.

/// What can go wrong in the engine. The gateway maps each kind to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A model folder could not be loaded: missing file or tensor, unsupported architecture.
    #[error("{0}")]
    Load(String),
    /// The request cannot be served as asked (for example it does not fit the context).
    #[error("{0}")]
    InvalidRequest(String),
    /// The engine could not take the request right now.
    #[error("{0}")]
    Overloaded(String),
    /// A failure inside the engine while generating.
    #[error("engine failure: {0}")]
    Internal(String),
    /// The request's deadline passed before it finished.
    #[error("the request did not finish before its deadline")]
    DeadlineExceeded,
    /// The client stopped reading the stream for longer than the stall timeout.
    #[error("the client did not read the stream for {0} s; the request was aborted")]
    Stalled(u64),
    /// The engine loop has stopped.
    #[error("the engine has shut down")]
    Shutdown,
}

impl EngineError {
    pub fn load(msg: impl Into<String>) -> Self {
        Self::Load(msg.into())
    }

    /// Whether another replica may serve what this one could not: it was overloaded or
    /// shutting down, not the request's fault nor a failure mid-generation.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Overloaded(_) | Self::Shutdown)
    }
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        Self::Internal(candle_message(&e))
    }
}

/// A candle error's message without the backtrace candle appends when RUST_BACKTRACE is set.
pub(crate) fn candle_message(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}
