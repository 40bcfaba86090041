//! Quick look at the linear-layer kernel's speed: GB/s of weights streamed at m = 1, and
//! GFLOP/s (or GOP/s) at larger m, per weight format:
//! `FORMAT=f32|bf16|int8|w8a8|w16a16|w4a8 cargo run --release -p rosetta-engine --example matmul_speed`
//!
//! With `STREAM=1` it instead runs one row through 120 matrices, 30 layers of these shapes
//! (far more weight than the caches hold, as in one-stream decode), each pass beside a plain
//! read of as many bytes: the kernels' share of the bandwidth bound without the rest of the
//! model.
//! `SHAPE=n,k` measures one shape instead of the model's four, and `M=1,8` only those batch
//! sizes.
use std::time::Instant;

mod support;

use half::bf16;
use rosetta_engine::model::matmul::Matrix;
use rosetta_engine::model::WeightFormat;

/// SmolLM2-135M's gate+up, q/o and k/v, and down shapes.
const SHAPES: [(usize, usize); 4] = [(1536 * 2, 576), (576, 576), (192, 576), (576, 1536)];

fn main() {
    // `SHAPE=n,k` measures that shape alone.
    let shapes = match std::env::var("SHAPE") {
        Ok(s) => {
            let (n, k) = s.split_once(',').expect("SHAPE=n,k");
            vec![(n.parse().expect("n"), k.parse().expect("k"))]
        }
        Err(_) => SHAPES.to_vec(),
    };
    if std::env::var("STREAM").is_ok() {
        // From inside the pool, as the engine's forward pass runs.
        let pool = rayon::ThreadPoolBuilder::new().build().expect("pool");
        return pool.install(|| stream(&shapes));
    }
    for (n, k) in shapes {
        println!("n = {n}, k = {k}");
        measure(n, k);
    }
}

fn matrix(n: usize, k: usize, seed: usize) -> Matrix {
    let w: Vec<f32> = (0..n * k)
        .map(|i| (((i + seed) % 97) as f32 - 48.0) / 97.0)
        .collect();
    let halves = || w.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>();
    match support::format() {
        WeightFormat::F32 => Matrix::f32(n, k, w),
        WeightFormat::Bf16 => Matrix::bf16(n, k, halves()),
        WeightFormat::W16a16 => Matrix::w16a16(n, k, &halves()),
        WeightFormat::Int8 => Matrix::int8(n, k, &w),
        WeightFormat::W8a8 => Matrix::w8a8(n, k, &w),
        WeightFormat::W4a8 => Matrix::w4a8(n, k, &w),
    }
}

fn measure(n: usize, k: usize) {
    let mat = matrix(n, k, 0);
    let ms: Vec<usize> = match std::env::var("M") {
        Ok(s) => s.split(',').map(|m| m.parse().expect("M=m,m,…")).collect(),
        Err(_) => vec![1, 8, 32, 128, 512],
    };
    for m in ms {
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

fn stream(shapes: &[(usize, usize)]) {
    let layers: Vec<Matrix> = (0..120 / shapes.len())
        .flat_map(|l| shapes.iter().map(move |&(n, k)| matrix(n, k, l)))
        .collect();
    let bytes: usize = layers.iter().map(Matrix::bytes).sum();
    let xs: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(_, k)| (0..k).map(|i| (i % 13) as f32 / 13.0).collect())
        .collect();
    // Each pass over the matrices beside a read of as many bytes just before it (see
    // `support::Reader`): the pair's time ratio is the pass's share of the bound.
    let mut reader = support::Reader::new(bytes);
    let (mut passes, mut shares) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        let read = reader.read(bytes);
        let t = Instant::now();
        for (i, m) in layers.iter().enumerate() {
            std::hint::black_box(m.matmul(&xs[i % xs.len()], 1, None));
        }
        let pass = t.elapsed().as_secs_f64();
        passes.push(pass);
        shares.push(read / pass);
    }
    passes.sort_by(f64::total_cmp);
    shares.sort_by(f64::total_cmp);
    let pass = passes[passes.len() / 2];
    println!(
        "{} matrices, {:.1} MB: {:.2} ms per pass (median), {:.1} GB/s; each pass paired with \
         a read of as many bytes: median share of the bound {:.0}% (quartiles {:.0}% and {:.0}%)",
        layers.len(),
        bytes as f64 / 1e6,
        pass * 1e3,
        bytes as f64 / pass / 1e9,
        shares[50] * 100.0,
        shares[25] * 100.0,
        shares[75] * 100.0
    );
}
