//! The paged KV cache: a pool of fixed-size blocks per layer, handed out to sequences
//! through block tables.

mod attention;
mod block_manager;
mod element;
mod pool;

pub use attention::{paged_attention, paged_attention_in, AttentionSeq};
pub use block_manager::{
    chain_hash, keyed_salt_hash, salt_hash, BlockHash, BlockManager, PrefixStats,
};
pub use element::{Fp8, KvDtype, KvElement};
pub use pool::{KvLayer, KvLayout, KvPool, TokenSlots};
