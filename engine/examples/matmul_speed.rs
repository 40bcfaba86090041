//! Quick look at the linear-layer kernel's speed: GB/s of weights streamed at m = 1, and
//! GFLOP/s (or GOP/s) at larger m, per weight format:
//! `FORMAT=f32|bf16|int8|w8a8 cargo run --release -p rosetta-engine --example matmul_speed`
use std::time::Instant;

use rosetta_engine::model::matmul::Matrix;

fn main() {
    // SmolLM2-135M's gate+up, q/o and k/v shapes.
    for (n, k) in [(1536 * 2, 576), (576, 576), (192, 576), (576, 1536)] {
        println!("n = {n}, k = {k}");
        measure(n, k);
    }
}

fn measure(n: usize, k: usize) {
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
        .collect();
    let mat = match std::env::var("FORMAT").as_deref() {
        Ok("bf16") => Matrix::bf16(n, k, w.iter().map(|&v| half::bf16::from_f32(v)).collect()),
        Ok("int8") => Matrix::int8(n, k, &w),
        Ok("w8a8") => Matrix::w8a8(n, k, &w),
        _ => Matrix::f32(n, k, w),
    };
    for m in [1usize, 8, 32, 128, 512] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 / 13.0).collect();
        let iters = (2000 / m.max(1) + 10) * (3072 / n).max(1);
        let t = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(mat.matmul(&x, m, None));
        }
        let s = t.elapsed().as_secs_f64() / iters as f64;
        println!(
            "m={m:4}: {:8.1} us/call, {:6.1} GB/s weights, {:6.1} GFLOP/s",
            s * 1e6,
            mat.bytes() as f64 / s / 1e9,
            (2 * m * n * k) as f64 / s / 1e9
        );
    }
}
