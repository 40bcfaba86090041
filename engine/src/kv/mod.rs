//! The paged KV cache: a pool of fixed-size blocks per layer, handed out to sequences
//! through block tables.

mod allocator;
mod attention;
mod pool;

pub use allocator::BlockAllocator;
pub use attention::{paged_attention, AttentionSeq};
pub use pool::{KvLayout, KvPool};
