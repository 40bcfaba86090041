//! Quick look at the linear-layer kernel's speed: GB/s of weights streamed at m = 1, and
//! GFLOP/s at larger m. `cargo run --release -p rosetta-engine --example matmul_speed`
use std::time::Instant;

use rosetta_engine::model::matmul::Matrix;

fn main() {
    // SmolLM2-135M's gate+up, q/o and k/v shapes.
    for (n, k) in [(1536 * 2, 576), (576, 576), (192, 576)] {
        println!("n = {n}, k = {k}");
        measure(n, k);
    }
}

fn measure(n: usize, k: usize) {
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
        .collect();
    let mat = Matrix::f32(n, k, w);
    for m in [1usize, 8, 32, 128] {
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
            (n * k * 4) as f64 / s / 1e9,
            (2 * m * n * k) as f64 / s / 1e9
        );
    }
}
