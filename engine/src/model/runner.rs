//! What the scheduler drives each step, whatever the device: a model bound to its KV cache.

use std::sync::Arc;

use super::{ComputeTimes, ModelShape, SeqChunk, Transformer};
use crate::kv::{KvLayout, KvPool};
use crate::EngineError;

/// Copy-on-write of a shared, partly filled block: its first `slots` token slots go to `dst`
/// before the step's forward pass appends to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    pub src: u32,
    pub dst: u32,
    pub slots: usize,
}

/// A model's weights bound to their KV cache, on some device: runs the scheduler's steps.
pub trait ModelRunner: Send {
    /// Applies `copies`, then runs the chunks in one pass, writing their K/V into the cache,
    /// and returns the requested logits rows in chunk order.
    fn step(
        &mut self,
        copies: &[BlockCopy],
        chunks: &[SeqChunk<'_>],
    ) -> Result<Vec<Vec<f32>>, EngineError>;
}

/// A model's weights loaded on a device, before its KV cache exists: the engine sizes the
/// cache from `kv_bytes_per_token` and its memory budget, then binds the two into a
/// [`ModelRunner`].
pub trait ModelWeights: Send + 'static {
    fn shape(&self) -> &ModelShape;
    /// Bytes one token's K and V take across all layers, as this model stores them.
    fn kv_bytes_per_token(&self) -> usize;
    fn into_runner(self: Box<Self>, layout: KvLayout) -> Result<Box<dyn ModelRunner>, EngineError>;
    /// Where its forward passes spend their time, if it measures that.
    fn compute_times(&self) -> Option<Arc<ComputeTimes>> {
        None
    }
}

/// The CPU path: our own kernels over a KV pool in main memory.
struct CpuRunner {
    model: Transformer,
    kv: KvPool,
}

impl ModelRunner for CpuRunner {
    fn step(
        &mut self,
        copies: &[BlockCopy],
        chunks: &[SeqChunk<'_>],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        for c in copies {
            self.kv.copy_block_prefix(c.src, c.dst, c.slots);
        }
        self.model.forward(chunks, &mut self.kv)
    }
}

impl ModelWeights for Transformer {
    fn shape(&self) -> &ModelShape {
        Transformer::shape(self)
    }

    fn kv_bytes_per_token(&self) -> usize {
        self.shape().kv_bytes_per_token() / 4 * self.kv_dtype().size()
    }

    fn compute_times(&self) -> Option<Arc<ComputeTimes>> {
        Some(Transformer::compute_times(self))
    }

    fn into_runner(self: Box<Self>, layout: KvLayout) -> Result<Box<dyn ModelRunner>, EngineError> {
        let mut kv = KvPool::with_dtype(self.shape().num_layers, layout, self.kv_dtype());
        if self.kv_prefault() {
            kv.prefault();
        }
        Ok(Box::new(CpuRunner { model: *self, kv }))
    }
}
