//! What the speed examples share: the weight format they are asked for, and the machine's
//! read bandwidth to set a kernel against.
use std::time::Instant;

use rayon::prelude::*;
use rosetta_engine::model::WeightFormat;

/// The format named by `FORMAT` (f32, bf16, int8, w8a8, w16a16, w4a8); f32 when unset.
pub fn format() -> WeightFormat {
    match std::env::var("FORMAT").as_deref() {
        Ok("bf16") => WeightFormat::Bf16,
        Ok("int8") => WeightFormat::Int8,
        Ok("w8a8") => WeightFormat::W8a8,
        Ok("w16a16") => WeightFormat::W16a16,
        Ok("w4a8") => WeightFormat::W4a8,
        _ => WeightFormat::F32,
    }
}

/// A buffer far beyond the caches (1 GiB) to measure with; allocate it once.
pub fn probe() -> Vec<u64> {
    vec![1u64; 1 << 27]
}

/// Bytes per second all threads read from `data`, best of 5.
pub fn read_bandwidth(data: &[u64]) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let sum: u64 = data
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
            .sum();
        std::hint::black_box(sum);
        best = best.max((data.len() * 8) as f64 / t.elapsed().as_secs_f64());
    }
    best
}
