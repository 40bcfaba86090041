//! Memory bandwidth of this machine with rayon over a 512 MiB buffer (the bound for
//! single-stream decode): `cargo run --release -p rosetta-engine --example bandwidth`
use rayon::prelude::*;
use std::time::Instant;

fn main() {
    let v: Vec<f32> = (0..128 << 20).map(|i| (i % 7) as f32).collect();
    for chunk in [1 << 14, 1 << 18] {
        let t = Instant::now();
        let reps = 5;
        let mut total = 0.0f32;
        for _ in 0..reps {
            total += v
                .par_chunks(chunk)
                .map(|c| {
                    let mut acc = [0.0f32; 16];
                    for b in c.chunks_exact(16) {
                        for l in 0..16 {
                            acc[l] += b[l];
                        }
                    }
                    acc.iter().sum::<f32>()
                })
                .sum::<f32>();
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "chunk {chunk}: {:.1} GB/s ({total})",
            (v.len() * 4) as f64 / s / 1e9
        );
    }
}
