//! Weight matrices and the CPU matrix product behind every linear layer.
//!
//! Why not candle's matmul: its gemm picks a different summation order for different numbers
//! of rows, so a sequence's logits would change in the last bits with the batch it runs in,
//! and greedy outputs could differ between batched and unbatched runs. Here every output
//! element is one dot product with a fixed lane-wise order, whatever the batch: results are
//! bit-identical for a row alone or among any others. It also reads bf16 weights directly,
//! halving memory traffic, and dispatches at run time to AVX-512 or AVX2 + FMA.

use half::bf16;
use rayon::prelude::*;

/// Lanes of the per-dot accumulator; fixed, so the summation order never depends on the CPU
/// path chosen for a given machine.
const LANES: usize = 16;
/// Output rows computed together (register blocking); does not affect results.
const ROW_TILE: usize = 4;
/// Weight rows computed together.
const COL_TILE: usize = 4;
/// Weight rows per parallel task.
const COLS_PER_TASK: usize = 64;

/// A row-major `[rows, cols]` weight matrix (`y = x W^T`).
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    data: WeightData,
}

enum WeightData {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
}

impl Matrix {
    pub fn f32(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Self {
            rows,
            cols,
            data: WeightData::F32(data),
        }
    }

    pub fn bf16(rows: usize, cols: usize, data: Vec<bf16>) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Self {
            rows,
            cols,
            data: WeightData::Bf16(data),
        }
    }

    /// Copies row `r` into `out` as f32 (embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let range = r * self.cols..(r + 1) * self.cols;
        match &self.data {
            WeightData::F32(d) => out.copy_from_slice(&d[range]),
            WeightData::Bf16(d) => out
                .iter_mut()
                .zip(&d[range])
                .for_each(|(o, w)| *o = w.to_f32()),
        }
    }

    /// `x` is `[m, cols]`; returns `[m, rows]` = x W^T (+ bias).
    pub fn matmul(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        debug_assert_eq!(x.len(), m * self.cols);
        let n = self.rows;
        // Each task fills a block of W's rows for every x row, transposed ([n, m]) so tasks
        // own contiguous output; one transpose at the end restores [m, n].
        let mut out_t = vec![0.0f32; n * m];
        out_t
            .par_chunks_mut(COLS_PER_TASK * m)
            .enumerate()
            .for_each(|(task, chunk)| {
                let j0 = task * COLS_PER_TASK;
                let cols = chunk.len() / m;
                match &self.data {
                    WeightData::F32(w) => dispatch(
                        x,
                        m,
                        &w[j0 * self.cols..(j0 + cols) * self.cols],
                        self.cols,
                        chunk,
                    ),
                    WeightData::Bf16(w) => dispatch(
                        x,
                        m,
                        &w[j0 * self.cols..(j0 + cols) * self.cols],
                        self.cols,
                        chunk,
                    ),
                }
            });
        let mut out = vec![0.0f32; m * n];
        for j in 0..n {
            let b = bias.map_or(0.0, |b| b[j]);
            for i in 0..m {
                out[i * n + j] = out_t[j * m + i] + b;
            }
        }
        out
    }
}

trait Weight: Copy + Send + Sync {
    fn get(self) -> f32;
    /// Loads 16 consecutive weights widened to f32 (AVX-512).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(ptr: *const Self) -> std::arch::x86_64::__m512;
}

impl Weight for f32 {
    #[inline(always)]
    fn get(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(ptr: *const Self) -> std::arch::x86_64::__m512 {
        // Safety: the caller guarantees 16 readable floats and AVX-512F.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(ptr) }
    }
}

impl Weight for bf16 {
    #[inline(always)]
    fn get(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(ptr: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // Safety: the caller guarantees 16 readable bf16 values and AVX-512F.
        // bf16 is the top half of an f32: widen to 32 bits and shift into place.
        unsafe {
            let halves = _mm256_loadu_si256(ptr as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
        }
    }
}

trait Fma {
    fn fma(a: f32, b: f32, c: f32) -> f32;
}

/// Fused multiply-add, only used where the CPU has it (else `mul_add` is a slow libm call).
struct Fused;
impl Fma for Fused {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

struct Plain;
impl Fma for Plain {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

fn dispatch<W: Weight>(x: &[f32], m: usize, w: &[W], k: usize, out_t: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // Safety: the CPU supports the features the function is compiled for.
            return unsafe { avx512::kernel(x, m, w, k, out_t) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return unsafe { kernel_avx2(x, m, w, k, out_t) };
        }
    }
    kernel::<W, Plain>(x, m, w, k, out_t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2<W: Weight>(x: &[f32], m: usize, w: &[W], k: usize, out_t: &mut [f32]) {
    kernel::<W, Fused>(x, m, w, k, out_t)
}

/// The AVX-512 kernel: the same arithmetic as [`tile`] with `Fused` (per-lane FMA over k in
/// steps of 16, then the same fixed lane reduction), with explicit registers so that small
/// batches stream weights at memory speed and large ones keep the FMA units busy.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Weight, LANES};

    /// Safety: needs AVX-512F; `w` holds whole rows of `k` weights and `x` has `m` rows.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn kernel<W: Weight>(x: &[f32], m: usize, w: &[W], k: usize, out_t: &mut [f32]) {
        let n = w.len() / k;
        // Small batches: many weight rows per pass (independent chains hide FMA latency).
        let (rows, cols) = if m < 4 { (m.min(2), 8) } else { (4, 4) };
        let mut j = 0;
        while j < n {
            let c = cols.min(n - j);
            let mut i = 0;
            while i < m {
                let r = rows.min(m - i);
                // Safety: every tile stays inside x, w and out_t.
                unsafe {
                    match (r, c) {
                        (4, 4) => tile::<W, 4, 4>(x, i, w, j, k, m, out_t),
                        (2, 8) => tile::<W, 2, 8>(x, i, w, j, k, m, out_t),
                        (1, 8) => tile::<W, 1, 8>(x, i, w, j, k, m, out_t),
                        _ => {
                            for rr in 0..r {
                                for cc in 0..c {
                                    tile::<W, 1, 1>(x, i + rr, w, j + cc, k, m, out_t);
                                }
                            }
                        }
                    }
                }
                i += r;
            }
            j += c;
        }
    }

    /// [`reduce_lanes`] in registers: the same halving tree (lanes l and l + 8, then + 4,
    /// + 2, + 1), so results equal the portable kernel's bit for bit.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn reduce(v: __m512) -> f32 {
        // Upper 256 bits onto the lower: lanes l + 8.
        let hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(v, v);
        let s8 = _mm512_castps512_ps256(_mm512_add_ps(v, hi));
        // Then l + 4, l + 2, l + 1.
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2));
        _mm_cvtss_f32(s1)
    }

    // Index loops over register tiles read clearer than iterator chains here.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<W: Weight, const R: usize, const C: usize>(
        x: &[f32],
        i0: usize,
        w: &[W],
        j0: usize,
        k: usize,
        m: usize,
        out_t: &mut [f32],
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let full = k / LANES * LANES;
        let xp = x.as_ptr();
        let wp = w.as_ptr();
        let mut p = 0;
        while p < full {
            let mut wv = [_mm512_setzero_ps(); C];
            // Safety: p + 16 <= full <= k, inside row j0 + c of w and row i0 + r of x.
            unsafe {
                for c in 0..C {
                    wv[c] = W::load16(wp.add((j0 + c) * k + p));
                }
                for r in 0..R {
                    let xv = _mm512_loadu_ps(xp.add((i0 + r) * k + p));
                    for c in 0..C {
                        acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
                    }
                }
            }
            p += LANES;
        }
        for r in 0..R {
            for c in 0..C {
                let mut s = reduce(acc[r][c]);
                for q in full..k {
                    s = x[(i0 + r) * k + q].mul_add(w[(j0 + c) * k + q].get(), s);
                }
                out_t[(j0 + c) * m + i0 + r] = s;
            }
        }
    }
}

/// The fixed pairwise reduction of a dot product's 16 lanes.
#[inline(always)]
fn reduce_lanes(a: &[f32; LANES]) -> f32 {
    let mut s8 = [0.0f32; 8];
    for l in 0..8 {
        s8[l] = a[l] + a[l + 8];
    }
    let s4 = [s8[0] + s8[4], s8[1] + s8[5], s8[2] + s8[6], s8[3] + s8[7]];
    (s4[0] + s4[2]) + (s4[1] + s4[3])
}

/// `out_t[j * m + i] = dot(x[i], w[j])` for this task's weight rows.
#[inline(always)]
fn kernel<W: Weight, F: Fma>(x: &[f32], m: usize, w: &[W], k: usize, out_t: &mut [f32]) {
    let n = w.len() / k;
    let mut j = 0;
    while j < n {
        let cols = COL_TILE.min(n - j);
        let mut i = 0;
        while i < m {
            let rows = ROW_TILE.min(m - i);
            if rows == ROW_TILE && cols == COL_TILE {
                tile::<W, F, ROW_TILE, COL_TILE>(x, i, w, j, k, m, out_t);
            } else {
                for r in 0..rows {
                    for c in 0..cols {
                        tile::<W, F, 1, 1>(x, i + r, w, j + c, k, m, out_t);
                    }
                }
            }
            i += rows;
        }
        j += cols;
    }
}

/// R x C dot products, each accumulated lane-wise over k in the same order as a 1 x 1 tile.
#[inline(always)]
fn tile<W: Weight, F: Fma, const R: usize, const C: usize>(
    x: &[f32],
    i0: usize,
    w: &[W],
    j0: usize,
    k: usize,
    m: usize,
    out_t: &mut [f32],
) {
    let mut acc = [[[0.0f32; LANES]; C]; R];
    let full = k / LANES * LANES;
    let mut p = 0;
    while p < full {
        let mut wv = [[0.0f32; LANES]; C];
        for c in 0..C {
            let row = &w[(j0 + c) * k + p..(j0 + c) * k + p + LANES];
            for l in 0..LANES {
                wv[c][l] = row[l].get();
            }
        }
        for r in 0..R {
            let xr = &x[(i0 + r) * k + p..(i0 + r) * k + p + LANES];
            for c in 0..C {
                for l in 0..LANES {
                    acc[r][c][l] = F::fma(xr[l], wv[c][l], acc[r][c][l]);
                }
            }
        }
        p += LANES;
    }
    for r in 0..R {
        for c in 0..C {
            // Fixed pairwise reduction of the lanes, then the tail in order.
            let mut s = reduce_lanes(&acc[r][c]);
            for q in full..k {
                s = F::fma(x[(i0 + r) * k + q], w[(j0 + c) * k + q].get(), s);
            }
            out_t[(j0 + c) * m + i0 + r] = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn naive(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn matches_naive_and_is_batch_invariant() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 17),
            (7, 130, 64),
            (13, 67, 100),
            (1, 300, 576),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mat = Matrix::f32(n, k, w.clone());
            let got = mat.matmul(&x, m, None);
            let want = naive(&x, m, &w, n, k);
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{m}x{n}x{k}: {a} vs {b}"
                );
            }
            // Every row alone equals the same row in the batch, bit for bit.
            for i in 0..m {
                let alone = mat.matmul(&x[i * k..(i + 1) * k], 1, None);
                assert_eq!(alone, got[i * n..(i + 1) * n], "{m}x{n}x{k} row {i}");
            }
        }
    }

    /// Every CPU path computes the same per-dot arithmetic, so they agree bit for bit.
    #[test]
    fn cpu_paths_agree_exactly() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let (m, n, k) = (9, 70, 83);
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut generic = vec![0.0; n * m];
        kernel::<f32, Fused>(&x, m, &w, k, &mut generic);
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                let mut out = vec![0.0; n * m];
                unsafe { kernel_avx2(&x, m, &w, k, &mut out) };
                assert_eq!(out, generic, "avx2 path");
            }
            if std::is_x86_feature_detected!("avx512f") {
                let mut out = vec![0.0; n * m];
                unsafe { avx512::kernel(&x, m, &w, k, &mut out) };
                assert_eq!(out, generic, "avx512 path");
            }
        }
    }

    #[test]
    fn bf16_weights_widen_exactly() {
        let w: Vec<f32> = (0..64).map(|i| i as f32 * 0.25 - 8.0).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let x: Vec<f32> = (0..32).map(|i| (i % 5) as f32).collect();
        let a = Matrix::f32(2, 32, w).matmul(&x, 1, Some(&[1.0, 2.0]));
        let b = Matrix::bf16(2, 32, wb).matmul(&x, 1, Some(&[1.0, 2.0]));
        assert_eq!(a, b);
    }
}
