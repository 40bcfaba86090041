//! The engine's logits for every position of a prompt, run in chunks of `chunk` tokens over
//! a paged KV cache of `block_size` with scattered blocks (so the paged path is really
//! exercised): shared by the logits tests.

use rosetta_engine::kv::{KvLayout, KvPool};
use rosetta_engine::model::{LogitRows, SeqChunk, Transformer};

pub fn logits(
    model: &Transformer,
    tokens: &[u32],
    block_size: usize,
    chunk: usize,
) -> Vec<Vec<f32>> {
    let s = model.shape();
    let layout = KvLayout {
        num_blocks: 64,
        block_size,
        kv_heads: s.num_kv_heads,
        head_dim: s.head_dim,
    };
    let mut kv = KvPool::with_dtype(s.num_layers, layout, model.kv_dtype());
    let table: Vec<u32> = (0..64u32).rev().collect();
    let mut out = Vec::new();
    for start in (0..tokens.len()).step_by(chunk) {
        let end = (start + chunk).min(tokens.len());
        let c = SeqChunk {
            tokens: &tokens[start..end],
            start_pos: start,
            block_table: &table,
            logits: LogitRows::All,
        };
        out.extend(model.forward(&[c], &mut kv).expect("forward"));
    }
    out
}
