//! Rosetta's native inference engine: the Llama-family decoder on candle, a paged KV cache,
//! the sampler, tokenization and chat templates, the engine loop, and the demo-model generator.

pub mod cpu;
pub mod demo;
pub mod encoder;
mod engine;
mod error;
pub mod grammar;
pub mod kv;
mod math;
mod memory;
pub mod model;
mod native;
mod observe;
mod request;
mod sampler;
pub mod text;

pub use engine::{Engine, EventStream};
pub use error::EngineError;
pub use native::{NativeEngine, NativeEngineConfig};
pub use observe::{
    ChoiceEnd, ChoiceStats, EngineObserver, NoObserver, Observer, RequestTimes, StepStats,
};
pub use request::{
    ChoiceDelta, EngineLoad, FinishReason, GenerateEvent, GenerateRequest, GeneratedToken,
    GenerationParams, Usage, DEFAULT_PRIORITY,
};
pub use sampler::{argmax, SampledToken, Sampler, SamplingParams};
