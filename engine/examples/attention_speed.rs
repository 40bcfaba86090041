//! Paged attention speed for one decode token and for a prefill chunk at a given context:
//! `cargo run --release -p rosetta-engine --example attention_speed -- [CONTEXT]`
use std::time::Instant;

use rosetta_engine::kv::{paged_attention, AttentionSeq, KvLayout};

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
