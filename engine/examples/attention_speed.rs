//! Paged attention speed for one decode token, for a prefill chunk, and for a decode step of
//! 32 sequences, at a given context:
//! `[KV=bf16] cargo run --release -p rosetta-engine --example attention_speed -- [CONTEXT]`
//! (`KV=bf16`: also the 32-sequence step over a bf16 cache)
use std::time::Instant;

use rosetta_engine::kv::{paged_attention, AttentionSeq, KvElement, KvLayout};

fn main() {
    let ctx: usize = std::env::args()
        .nth(1)
        .map_or(2048, |s| s.parse().expect("CONTEXT"));
    let (nh, nkv, hd, bs) = (9, 3, 64, 16);
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
                block_table: &table[s * per..(s + 1) * per],
            })
            .collect();
        if std::env::var("KV").as_deref() == Ok("bf16") {
            let kv16: Vec<half::bf16> = kv.iter().map(|&x| half::bf16::from_f32(x)).collect();
            let s = per_layer(&kv16, &q, nh, layout, &batch);
            println!(
                "32 sequences decoding, bf16 cache: {:.3} ms per layer",
                s * 1e3
            );
        }
        let s = per_layer(&kv, &q, nh, layout, &batch);
        let flops = 4.0 * (seqs * nh * per * bs * hd) as f64;
        println!(
            "32 sequences decoding at context {}: {:.3} ms per layer, {:.1} GFLOP/s",
            per * bs,
            s * 1e3,
            flops / s / 1e9
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

/// Seconds per layer of a decode step over 30 layers, each with its own copies of `kv` as K
/// and V, as a forward pass walks them: the cache comes from memory, not from the CPU's
/// caches. Five steps.
fn per_layer<T: KvElement>(
    kv: &[T],
    q: &[f32],
    nh: usize,
    layout: KvLayout,
    batch: &[AttentionSeq<'_>],
) -> f64 {
    let layers: Vec<(Vec<T>, Vec<T>)> = (0..30).map(|_| (kv.to_vec(), kv.to_vec())).collect();
    let t = Instant::now();
    for _ in 0..5 {
        for (k, v) in &layers {
            std::hint::black_box(paged_attention(
                q, nh, layout, k, v, batch, None, 0.125, None,
            ));
        }
    }
    t.elapsed().as_secs_f64() / (5 * layers.len()) as f64
}
