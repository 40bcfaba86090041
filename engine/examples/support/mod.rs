//! What the speed examples share: the weight format they are asked for, and the machine's
//! read bandwidth to set a kernel against.
// Each example uses its own part of it.
#![allow(dead_code)]
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
pub fn probe() -> Memory {
    Memory::new(1 << 30)
}

/// Memory to read, backed as the engine backs its weights: an anonymous mapping advised to
/// use huge pages. Plain heap memory would have 4 KiB pages, whose TLB misses the weights do
/// not pay, and set the bound too low.
pub struct Memory(memmap2::MmapMut);

impl Memory {
    /// `bytes` (a multiple of 8) of memory, every page touched once.
    pub fn new(bytes: usize) -> Self {
        let mut map = memmap2::MmapOptions::new()
            .len(bytes)
            .map_anon()
            .expect("memory to read");
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        map.fill(1);
        Memory(map)
    }
}

impl std::ops::Deref for Memory {
    type Target = [u64];

    fn deref(&self) -> &[u64] {
        // Safety: the mapping is page-aligned and its length a multiple of 8; any bits are
        // a u64.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr() as *const u64, self.0.len() / 8) }
    }
}

/// Bytes per second all threads read from `data`, best of 5.
pub fn read_bandwidth(data: &[u64]) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t = Instant::now();
        std::hint::black_box(sum_words(data));
        best = best.max((data.len() * 8) as f64 / t.elapsed().as_secs_f64());
    }
    best
}

/// A reader of the machine's memory to pair with one piece of work: each [`Reader::read`]
/// reads `bytes` from where the last one stopped in a buffer far beyond the caches, on all
/// threads, and returns the seconds it took. Read next to each decode step, it gives the
/// bound for that step under the machine's load at that moment; on a shared machine whose
/// bandwidth moves by half between minutes, a reading taken once before a run does not.
pub struct Reader {
    data: Memory,
    at: usize,
}

impl Reader {
    /// A reader over `max(bytes, 1 GiB)` of memory, touched once.
    pub fn new(bytes: usize) -> Self {
        let data = Memory::new((bytes / 8).max(1 << 27) * 8);
        Reader { data, at: 0 }
    }

    /// Seconds to read `bytes`, wrapping at the buffer's end.
    pub fn read(&mut self, bytes: usize) -> f64 {
        let words = (bytes / 8).clamp(1, self.data.len());
        let t = Instant::now();
        let first = (self.data.len() - self.at).min(words);
        let sum = sum_words(&self.data[self.at..self.at + first])
            .wrapping_add(sum_words(&self.data[..words - first]));
        std::hint::black_box(sum);
        let secs = t.elapsed().as_secs_f64();
        self.at = (self.at + words) % self.data.len();
        secs
    }
}

/// The words of `data` summed (wrapping) on all threads: a plain read of every byte.
fn sum_words(data: &[u64]) -> u64 {
    data.par_chunks(1 << 16)
        .map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
        .reduce(|| 0, u64::wrapping_add)
}
