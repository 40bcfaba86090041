//! Embedding models: XLM-RoBERTa-architecture encoders (multilingual-e5, bge-m3) with
//! sentence-transformers' pooling, served by their own batching engine behind the same
//! [`Engine`](crate::Engine) trait as the decoders.

mod model;
mod pooling;
mod service;
mod shape;

pub use model::Encoder;
pub use pooling::{normalize, Pooling, PoolingMode};
pub use service::{EmbedRequest, EmbedTicket, Embeddings, EncoderConfig, EncoderEngine};
pub use shape::{is_encoder, Activation, EncoderShape};
