//! Prefill and single-sequence decode speed of the forward pass, without the server, beside
//! the memory-bandwidth bound for single-stream decode (weight bytes read per token ÷ the
//! machine's read bandwidth, measured just before each of five rounds of decode, and a read
//! of as many bytes just before each token), and the share were the KV cache's bytes counted too:
//! `FORMAT=f32|bf16|int8|w8a8|w16a16|w4a8 [KV=f32|bf16|fp8] cargo run --release -p rosetta-engine --example decode_speed -- MODEL_DIR [TOKENS] [PROMPT_TOKENS]`
use std::time::Instant;

mod support;
use support::read_bandwidth;

use rosetta_engine::kv::{KvDtype, KvLayout, KvPool};
use rosetta_engine::model::{LogitRows, SeqChunk, Transformer, WeightFormat};

fn main() {
    if std::env::var("IN_POOL").is_ok() {
        let pool = rayon::ThreadPoolBuilder::new().build().expect("pool");
        return pool.install(run);
    }
    run()
}

fn run() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("MODEL_DIR"));
    let steps: usize = args.next().map_or(128, |s| s.parse().expect("TOKENS"));
    let prompt_len: usize = args
        .next()
        .map_or(32, |s| s.parse().expect("PROMPT_TOKENS"));
    let format = support::format();
    let model = Transformer::load(&dir, format, 8192).expect("load");
    let s = model.shape();
    let blocks = (prompt_len + steps + 16).div_ceil(16);
    let layout = KvLayout {
        num_blocks: blocks,
        block_size: 16,
        kv_heads: s.num_kv_heads,
        head_dim: s.head_dim,
    };
    // The cache a server gives this format (`kv_cache_dtype: auto`): f32 with f32 weights,
    // bf16 with any other; `KV=f32|bf16|fp8` asks for one.
    let kv_dtype = match std::env::var("KV").as_deref() {
        Ok("f32") => KvDtype::F32,
        Ok("bf16") => KvDtype::Bf16,
        Ok("fp8") => KvDtype::Fp8,
        _ if format == WeightFormat::F32 => KvDtype::F32,
        _ => KvDtype::Bf16,
    };
    let mut kv = KvPool::with_dtype(s.num_layers, layout, kv_dtype);
    let table: Vec<u32> = (0..blocks as u32).collect();
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| 100 + i % 1000).collect();
    // Twice: the first pass also faults in the KV pool's pages (once in a server's life).
    for pass in ["first", "again"] {
        let t = Instant::now();
        // In chunks of 512 (the default step budget until it became 256; kept so figures stay
        // comparable with earlier runs).
        for start in (0..prompt_len).step_by(512) {
            let end = (start + 512).min(prompt_len);
            let c = SeqChunk {
                tokens: &prompt[start..end],
                start_pos: start,
                block_table: &table,
                logits: LogitRows::Last,
            };
            model.forward(&[c], &mut kv).expect("prefill");
        }
        println!(
            "prefill {prompt_len} tokens ({pass}): {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    // Rounds of (the machine's read bandwidth, then decode) side by side: on a shared machine
    // the bandwidth moves by half between minutes, so each round's decode is set against the
    // bandwidth measured just before it (best of five reads of 1 GiB), and the median round
    // is reported. Beside it, each token is paired with one read of as many bytes as its
    // weights, just before it: that pair's time ratio is its share of the bound, both sides
    // measured the same way within milliseconds of each other.
    let rounds = 5;
    let per_round = steps.div_ceil(rounds);
    let bytes = model.bytes_per_token();
    let mut shares = Vec::new();
    let mut paired = Vec::new();
    let (mut read_secs, mut decode_secs) = (0.0, 0.0);
    let mut pos = prompt_len;
    let probe = support::probe();
    let mut reader = support::Reader::new(bytes);
    for round in 0..rounds {
        let bandwidth = read_bandwidth(&probe);
        let mut secs = 0.0;
        let mut round_paired = Vec::new();
        for i in 0..per_round {
            let read = reader.read(bytes);
            let tok = [200 + (pos + i) as u32 % 1000];
            let c = SeqChunk {
                tokens: &tok,
                start_pos: pos + i,
                block_table: &table,
                logits: LogitRows::Last,
            };
            let t = Instant::now();
            std::hint::black_box(model.forward(&[c], &mut kv).expect("decode"));
            let step = t.elapsed().as_secs_f64();
            secs += step;
            read_secs += read;
            decode_secs += step;
            round_paired.push(read / step);
        }
        pos += per_round;
        let rate = per_round as f64 / secs;
        let bound = bandwidth / bytes as f64;
        paired.extend_from_slice(&round_paired);
        round_paired.sort_by(f64::total_cmp);
        println!(
            "round {round}: decode {format:?} {rate:.1} tokens/s ({:.2} ms/token); read \
             bandwidth {:.1} GB/s, bound {bound:.1} tokens/s: {:.0}% of it; paired with \
             reads, median {:.0}%",
            secs * 1e3 / per_round as f64,
            bandwidth / 1e9,
            rate / bound * 100.0,
            round_paired[round_paired.len() / 2] * 100.0
        );
        shares.push(rate / bound);
    }
    shares.sort_by(f64::total_cmp);
    paired.sort_by(f64::total_cmp);
    let quartile = |q: usize| paired[(paired.len() - 1) * q / 4] * 100.0;
    println!(
        "decode {format:?}: {:.1} MB of weights per token; median share of the bandwidth bound \
         {:.0}% (rounds from {:.0}% to {:.0}%)",
        bytes as f64 / 1e6,
        shares[rounds / 2] * 100.0,
        shares[0] * 100.0,
        shares[rounds - 1] * 100.0
    );
    println!(
        "decode {format:?}, each token paired with a read of its weights' bytes: median share \
         {:.0}% (quartiles {:.0}% and {:.0}%), all tokens together {:.0}%",
        quartile(2),
        quartile(1),
        quartile(3),
        read_secs / decode_secs * 100.0
    );
    // The bound counts the weights alone, but each token's attention also reads every layer's
    // keys and values so far: at a few hundred tokens of context on the demo model, 6–10% as
    // many bytes again. Beside it, the share were those bytes counted (mean context).
    let context = prompt_len + per_round * rounds / 2;
    let cache = 2 * s.num_layers * s.num_kv_heads * s.head_dim * context * kv_dtype.size();
    println!(
        "decode {format:?}: {:.1} MB of {kv_dtype:?} KV cache read per token at context \
         {context}; counting them as well, median share of the bound {:.0}%",
        cache as f64 / 1e6,
        shares[rounds / 2] * (bytes + cache) as f64 / bytes as f64 * 100.0
    );
}
