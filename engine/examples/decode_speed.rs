//! Single-sequence decode speed of the model's forward pass, without the server:
//! `cargo run --release -p rosetta-engine --example decode_speed -- MODEL_DIR [TOKENS]`
use std::time::Instant;

use rosetta_engine::kv::{KvLayout, KvPool};
use rosetta_engine::model::{LogitRows, SeqChunk, Transformer};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("MODEL_DIR"));
    let steps: usize = args.next().map_or(128, |s| s.parse().expect("TOKENS"));
    let model = Transformer::load(&dir, None, 2048).expect("load");
    let s = model.shape();
    let layout = KvLayout {
        num_blocks: 128,
        block_size: 16,
        kv_heads: s.num_kv_heads,
        head_dim: s.head_dim,
    };
    let mut kv = KvPool::new(s.num_layers, layout);
    let table: Vec<u32> = (0..128).collect();
    let prompt: Vec<u32> = (0..32).map(|i| 100 + i).collect();
    let t = Instant::now();
    let c = SeqChunk {
        tokens: &prompt,
        start_pos: 0,
        block_table: &table,
        logits: LogitRows::Last,
    };
    model.forward(&[c], &mut kv).expect("prefill");
    println!(
        "prefill 32 tokens: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    for i in 0..steps {
        let tok = [200 + i as u32];
        let c = SeqChunk {
            tokens: &tok,
            start_pos: 32 + i,
            block_table: &table,
            logits: LogitRows::Last,
        };
        std::hint::black_box(model.forward(&[c], &mut kv).expect("decode"));
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "decode: {:.1} tokens/s ({:.2} ms/token)",
        steps as f64 / secs,
        secs * 1e3 / steps as f64
    );
}
