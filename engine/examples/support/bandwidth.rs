//! The machine's read bandwidth, shared by the examples that set a kernel against it.
use std::time::Instant;

use rayon::prelude::*;

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
