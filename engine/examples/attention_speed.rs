//! Paged attention speed for one decode token, for a prefill chunk, and for a decode step of
//! 32 sequences, at a given context:
//! `[KV=bf16|fp8] [BS=16] cargo run --release -p rosetta-engine --example attention_speed -- [CONTEXT]`
//! (`KV`: also the 32-sequence step over a bf16 or fp8 cache; `BS`: tokens per KV block)
use std::time::Instant;

use rosetta_engine::kv::{
    paged_attention, paged_attention_in, AttentionSeq, KvDtype, KvLayout, KvPool,
};

fn main() {
    let ctx: usize = std::env::args()
        .nth(1)
        .map_or(2048, |s| s.parse().expect("CONTEXT"));
    let bs: usize = std::env::var("BS").map_or(16, |s| s.parse().expect("BS"));
    let (nh, nkv, hd) = (9, 3, 64);
    let blocks = ctx.div_ceil(bs);
    let layout = KvLayout {
        num_blocks: blocks,
        block_size: bs,
        kv_heads: nkv,
        head_dim: hd,
    };
    let kv: Vec<f32> = (0..blocks * bs * nkv * hd)
        .map(|i| ((i % 101) as f32 - 50.0) / 500.0)
        .collect();
    let table: Vec<u32> = (0..blocks as u32).collect();
    // In a serving pool the sequences' blocks are interleaved as they grow: the 32-sequence
    // step reads its blocks in a shuffled order (a fixed permutation).
    let mut shuffled = table.clone();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..shuffled.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        shuffled.swap(i, (state >> 33) as usize % (i + 1));
    }
    // A decode step of 32 sequences, each over its own part of the cache.
    let seqs = 32;
    let per = blocks / seqs;
    if per > 0 {
        let q: Vec<f32> = (0..seqs * nh * hd)
            .map(|i| ((i % 37) as f32 - 18.0) / 40.0)
            .collect();
        let batch: Vec<AttentionSeq<'_>> = (0..seqs)
            .map(|s| AttentionSeq {
                first_token: s,
                num_tokens: 1,
                start_pos: per * bs - 1,
                block_table: &shuffled[s * per..(s + 1) * per],
            })
            .collect();
        let narrow = match std::env::var("KV").as_deref() {
            Ok("bf16") => Some(KvDtype::Bf16),
            Ok("fp8") => Some(KvDtype::Fp8),
            _ => None,
        };
        if let Some(dtype) = narrow {
            let s = per_layer(dtype, &q, nh, layout, &batch);
            let bytes = (2 * seqs * per * bs * nkv * hd * dtype.size()) as f64;
            println!(
                "32 sequences decoding, {dtype:?} cache: {:.3} ms per layer, {:.1} GB/s of cache",
                s * 1e3,
                bytes / s / 1e9
            );
        }
        let s = per_layer(KvDtype::F32, &q, nh, layout, &batch);
        let flops = 4.0 * (seqs * nh * per * bs * hd) as f64;
        let bytes = (2 * seqs * per * bs * nkv * hd * 4) as f64;
        println!(
            "32 sequences decoding at context {}: {:.3} ms per layer, {:.1} GFLOP/s, {:.1} GB/s \
             of f32 cache",
            per * bs,
            s * 1e3,
            flops / s / 1e9,
            bytes / s / 1e9
        );
    }
    for tokens in [1usize, 64] {
        let q: Vec<f32> = (0..tokens * nh * hd)
            .map(|i| ((i % 37) as f32 - 18.0) / 40.0)
            .collect();
        let seqs = [AttentionSeq {
            first_token: 0,
            num_tokens: tokens,
            start_pos: ctx - tokens,
            block_table: &table,
        }];
        let iters = 200 / tokens + 3;
        let t = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(paged_attention(
                &q, nh, layout, &kv, &kv, &seqs, None, 0.125, None,
            ));
        }
        let s = t.elapsed().as_secs_f64() / iters as f64;
        let flops = 4.0 * (tokens * nh * ctx * hd) as f64;
        println!(
            "{tokens} queries at context {ctx}: {:.3} ms per layer, {:.1} GFLOP/s",
            s * 1e3,
            flops / s / 1e9
        );
    }
}

/// Seconds per layer of a decode step over 30 layers' caches in a [`KvPool`] (allocated as
/// the server allocates it, with huge pages where the system grants them), as a forward pass
/// walks them: the cache comes from memory, not from the CPU's caches. The fastest of 20 steps.
fn per_layer(
    dtype: KvDtype,
    q: &[f32],
    nh: usize,
    layout: KvLayout,
    batch: &[AttentionSeq<'_>],
) -> f64 {
    let layers = 30;
    let mut pool = KvPool::with_dtype(layers, layout, dtype);
    let table: Vec<u32> = (0..layout.num_blocks as u32).collect();
    let width = layout.kv_heads * layout.head_dim;
    for pos in 0..layout.num_blocks * layout.block_size {
        let token: Vec<f32> = (0..width)
            .map(|i| (((pos + i) % 101) as f32 - 50.0) / 500.0)
            .collect();
        for layer in 0..layers {
            pool.write(layer, &table, pos, &token, &token);
        }
    }
    // The fastest of 20 steps: this machine is shared, and a slow step says more about the
    // neighbours than about the kernel.
    let mut best = f64::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        for layer in 0..layers {
            std::hint::black_box(paged_attention_in(
                q,
                nh,
                layout,
                pool.layer(layer),
                batch,
                None,
                0.125,
                None,
            ));
        }
        best = best.min(t.elapsed().as_secs_f64() / layers as f64);
    }
    best
}
