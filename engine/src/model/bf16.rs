//! bf16 weights and their two products, over one packed layout:
//! - `dtype: bf16`: f32 activations. Each weight is widened exactly to f32 and each output is
//!   one fused multiply-add chain over k in order, so the result is bit-identical to f32
//!   weights holding the same values (and to the reference). Two k values share a 32-bit
//!   lane, so one 64-byte load gives 32 weights, widened by a shift and a mask.
//! - `dtype: w16a16`: activations rounded to bf16 as they arrive, summed in f32 by AVX-512
//!   BF16's `vdpbf16ps`, which does 32 multiply-adds per instruction, twice an f32 FMA's.
//!   This is how llama.cpp and vLLM compute a bf16 model on a CPU; it trades the
//!   activations' low 16 bits for the speed.
//!
//! `vdpbf16ps` adds, per 32-bit lane j, the product of the odd halves of the two operands'
//! lane j and then that of the even halves, each product exact and each addition rounded to
//! nearest even, with subnormal inputs read as zero and subnormal results flushed to zero.
//! The portable path does the same two fused multiply-adds with the same flushes.
//!
//! In both products every CPU path and every batch gives the same bits.
//!
//! Layout: panels of 16 output columns with k in pairs (one 32-bit lane, the even k in the
//! low half): `[rows / 16][cols / 2][16][2]`, zero-padded.

use half::bf16;

use rayon::prelude::*;

#[cfg(test)]
use super::matmul::Fused;
use super::matmul::{
    rows_per_thread, tiled_product, Fma, Portable, PANEL, PANELS_PER_ROW, PANELS_PER_TASK,
};

/// k values per 32-bit lane.
const PAIR: usize = 2;

/// A bf16 weight matrix, packed in pairs along k.
pub struct Bf16Weights {
    rows: usize,
    cols: usize,
    /// Pairs along k.
    pairs: usize,
    values: crate::memory::Buffer<bf16>,
}

impl Bf16Weights {
    /// Packs row-major bf16 weights.
    pub fn pack(rows: usize, cols: usize, data: &[bf16]) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        let pairs = cols.div_ceil(PAIR);
        let mut values = crate::memory::zeroed(rows.div_ceil(PANEL) * pairs * PANEL * PAIR);
        for (r, row) in data.chunks_exact(cols.max(1)).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                values[index(pairs, r, c)] = v;
            }
        }
        Self {
            rows,
            cols,
            pairs,
            values,
        }
    }

    /// Bytes the weights occupy.
    pub fn bytes(&self) -> usize {
        self.values.len() * 2
    }

    /// Copies row `r` into `out` as f32 (embedding lookup: the stored bf16, exactly).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        for (c, o) in out.iter_mut().enumerate().take(self.cols) {
            *o = self.values[index(self.pairs, r, c)].to_f32();
        }
    }

    /// `x` is `[m, cols]`; returns `[m, rows]` = x W^T in f32 arithmetic (`dtype: bf16`).
    pub fn matmul_exact(&self, x: &[f32], m: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), m * self.cols);
        // One row keeps one accumulator per panel: eight panels keep eight chains in flight.
        let panels = if m == 1 {
            PANELS_PER_ROW
        } else {
            PANELS_PER_TASK
        };
        let tile = |i, rows, p, panels, _, out| {
            // Safety: tiles never overlap (`tiled_product`).
            unsafe { self.exact_tile(x, i, rows, p, panels, out) }
        };
        // Safety: every tile writes all of its elements, and only those.
        unsafe { tiled_product(self.rows, m, panels, panels, tile) }
    }

    /// Safety: `out` is the `[m, rows]` output; only this tile's elements are written.
    unsafe fn exact_tile(
        &self,
        x: &[f32],
        i0: usize,
        rows: usize,
        panel0: usize,
        panels: usize,
        out: *mut f32,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if crate::cpu::has!(Avx512: "avx512f") {
                // Safety: the CPU has the feature; forwarded.
                return unsafe { exact::tile(self, x, i0, rows, panel0, panels, out) };
            }
            if crate::cpu::has!(Avx2: "avx2", "fma") {
                // Safety: as above.
                return unsafe { exact_avx2::tile(self, x, i0, rows, panel0, panels, out) };
            }
        }
        // Safety: forwarded.
        unsafe { self.exact_tile_portable::<Portable>(x, i0, rows, panel0, panels, out) }
    }

    /// One chain per output over k in order, one output at a time (vectorised by the compiler
    /// where the CPU allows).
    #[inline(always)]
    unsafe fn exact_tile_portable<F: Fma>(
        &self,
        x: &[f32],
        i0: usize,
        rows: usize,
        panel0: usize,
        panels: usize,
        out: *mut f32,
    ) {
        let k = self.cols;
        let c0 = panel0 * PANEL;
        let c1 = ((panel0 + panels) * PANEL).min(self.rows);
        for i in i0..i0 + rows {
            let xr = &x[i * k..(i + 1) * k];
            for j in c0..c1 {
                let acc = xr.iter().enumerate().fold(0.0f32, |acc, (c, &xc)| {
                    F::fma(xc, self.values[index(self.pairs, j, c)].to_f32(), acc)
                });
                // Safety: (i, j) lies in this tile.
                unsafe { *out.add(i * self.rows + j) = acc };
            }
        }
    }

    /// `x` is `[m, cols]`; returns `[m, rows]` = x W^T, x rounded to bf16 (`dtype: w16a16`).
    pub fn matmul_dot(&self, x: &[f32], m: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), m * self.cols);
        let acts = self.round_activations(x, m);
        let tile = |i, rows, p, panels, _, out| {
            // Safety: tiles never overlap (`tiled_product`).
            unsafe { self.tile(&acts, i, rows, p, panels, out) }
        };
        // Safety: every tile writes all of its elements, and only those.
        unsafe { tiled_product(self.rows, m, PANELS_PER_TASK, PANELS_PER_TASK, tile) }
    }

    /// x rounded to bf16 (to nearest even), two per 32-bit lane: `[m][pairs]`, the even
    /// element in the low half, a zero after an odd last column.
    fn round_activations(&self, x: &[f32], m: usize) -> Vec<u32> {
        let (k, pairs) = (self.cols, self.pairs);
        let mut lanes = vec![0u32; m * pairs];
        let round_row = |(row, dst): (&[f32], &mut [u32])| {
            for (p, d) in dst.iter_mut().enumerate() {
                let even = round_to_bf16(row[PAIR * p]);
                let odd = row.get(PAIR * p + 1).map_or(0, |&v| round_to_bf16(v));
                *d = u32::from(even) | u32::from(odd) << 16;
            }
        };
        x.par_chunks_exact(k.max(1))
            .zip(lanes.par_chunks_exact_mut(pairs.max(1)))
            .with_min_len(rows_per_thread(m, k))
            .for_each(round_row);
        lanes
    }

    /// One register tile: `rows` rows of x from `i0` against `panels` panels from `panel0`.
    ///
    /// Safety: `out` is the `[m, rows]` output; only this tile's elements are written.
    unsafe fn tile(
        &self,
        acts: &[u32],
        i0: usize,
        rows: usize,
        panel0: usize,
        panels: usize,
        out: *mut f32,
    ) {
        #[cfg(target_arch = "x86_64")]
        if dot_available() {
            // Safety: the CPU has the features; forwarded.
            return unsafe { dot::tile(self, acts, i0, rows, panel0, panels, out) };
        }
        // Safety: forwarded.
        unsafe { self.tile_portable(acts, i0, rows, panel0, panels, out) }
    }

    /// The same two fused multiply-adds per pair, one output at a time.
    unsafe fn tile_portable(
        &self,
        acts: &[u32],
        i0: usize,
        rows: usize,
        panel0: usize,
        panels: usize,
        out: *mut f32,
    ) {
        let c0 = panel0 * PANEL;
        let c1 = ((panel0 + panels) * PANEL).min(self.rows);
        let weights = |j: usize, p: usize| {
            let at = index(self.pairs, j, PAIR * p);
            u32::from(self.values[at].to_bits()) | u32::from(self.values[at + 1].to_bits()) << 16
        };
        for i in i0..i0 + rows {
            let x = &acts[i * self.pairs..(i + 1) * self.pairs];
            for j in c0..c1 {
                let acc = (0..self.pairs).fold(0.0f32, |acc, p| dot_pair(acc, x[p], weights(j, p)));
                // Safety: (i, j) lies in this tile.
                unsafe { *out.add(i * self.rows + j) = acc };
            }
        }
    }
}

/// f32 to bf16 bits, to nearest even; NaN stays a (quiet) NaN of the same sign.
#[inline(always)]
fn round_to_bf16(v: f32) -> u16 {
    bf16::from_f32(v).to_bits()
}

/// One lane of `vdpbf16ps`: the odd halves' product added first, then the even halves',
/// subnormal inputs read as zero and subnormal sums flushed to zero.
#[inline(always)]
fn dot_pair(acc: f32, x: u32, w: u32) -> f32 {
    let half =
        |v: u32, odd: bool| flush(f32::from_bits(if odd { v & 0xffff_0000 } else { v << 16 }));
    let acc = flush(half(x, true).mul_add(half(w, true), acc));
    flush(half(x, false).mul_add(half(w, false), acc))
}

/// Subnormals to zero of the same sign.
#[inline(always)]
fn flush(v: f32) -> f32 {
    if v.is_subnormal() {
        0.0f32.copysign(v)
    } else {
        v
    }
}

/// Where weight (r, c) lives in the packed layout.
fn index(pairs: usize, r: usize, c: usize) -> usize {
    ((r / PANEL) * pairs + c / PAIR) * PANEL * PAIR + (r % PANEL) * PAIR + c % PAIR
}

#[cfg(target_arch = "x86_64")]
pub(super) fn dot_available() -> bool {
    crate::cpu::has!(Avx512: "avx512f", "avx512bf16")
}

/// The exact product's AVX-512 kernel: per pair of k, C 64-byte loads widened by a shift
/// (the even k) and a mask (the odd k), each times R broadcast x values, in k order.
#[cfg(target_arch = "x86_64")]
mod exact {
    use std::arch::x86_64::*;

    use super::super::matmul::row_tile_shapes;
    use super::{Bf16Weights, PAIR, PANEL};

    /// Safety: needs AVX-512F; see `Bf16Weights::exact_tile`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile(
        w: &Bf16Weights,
        x: &[f32],
        i0: usize,
        rows: usize,
        panel0: usize,
        panels: usize,
        out: *mut f32,
    ) {
        // Safety: forwarded; the tile lies inside x, the weights and the output.
        unsafe { row_tile_shapes!(tile_rc, rows, panels, (w, x, i0, panel0, out)) }
    }

    // Index loops over register tiles read clearer than iterator chains here.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_rc<const R: usize, const C: usize>(
        w: &Bf16Weights,
        x: &[f32],
        i0: usize,
        panel0: usize,
        out: *mut f32,
    ) {
        let (k, pairs) = (w.cols, w.pairs);
        let wp = w.values.as_ptr();
        let xp = x.as_ptr();
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        // Whole pairs; an odd last column has only its even half.
        for p in 0..k / PAIR {
            // Safety: panel (panel0 + c) has `pairs` pairs of 16 lanes; row i0 + r of x has
            // k values and 2p + 1 < k.
            unsafe {
                let mut v = [_mm512_setzero_si512(); C];
                let mut half = [_mm512_setzero_ps(); C];
                for c in 0..C {
                    let at = ((panel0 + c) * pairs + p) * PANEL * PAIR;
                    v[c] = _mm512_loadu_si512(wp.add(at) as *const __m512i);
                    half[c] = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v[c]));
                }
                for r in 0..R {
                    let xv = _mm512_set1_ps(*xp.add((i0 + r) * k + PAIR * p));
                    for c in 0..C {
                        acc[r][c] = _mm512_fmadd_ps(xv, half[c], acc[r][c]);
                    }
                }
                for c in 0..C {
                    half[c] = _mm512_castsi512_ps(_mm512_and_si512(v[c], high));
                }
                for r in 0..R {
                    let xv = _mm512_set1_ps(*xp.add((i0 + r) * k + PAIR * p + 1));
                    for c in 0..C {
                        acc[r][c] = _mm512_fmadd_ps(xv, half[c], acc[r][c]);
                    }
                }
            }
        }
        if k % PAIR == 1 {
            let p = k / PAIR;
            // Safety: as above; the last pair's even half is column k - 1.
            unsafe {
                for c in 0..C {
                    let at = ((panel0 + c) * pairs + p) * PANEL * PAIR;
                    let v = _mm512_loadu_si512(wp.add(at) as *const __m512i);
                    let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
                    for r in 0..R {
                        let xv = _mm512_set1_ps(*xp.add((i0 + r) * k + k - 1));
                        acc[r][c] = _mm512_fmadd_ps(xv, even, acc[r][c]);
                    }
                }
            }
        }
        for c in 0..C {
            let col = (panel0 + c) * PANEL;
            let mask = super::super::matmul::panel_mask(w.rows, col);
            for r in 0..R {
                // Safety: only the valid columns of this row are written.
                unsafe { _mm512_mask_storeu_ps(out.add((i0 + r) * w.rows + col), mask, acc[r][c]) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod dot {
    use std::arch::x86_64::*;

    use super::super::matmul::tile_shapes;
    use super::{Bf16Weights, PAIR, PANEL};

    /// Safety: needs AVX-512F and AVX-512 BF16; see `Bf16Weights::tile`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn tile(
        w: &Bf16Weights,
        acts: &[u32],
        i0: usize,
        rows: usize,
        panel0: usize,
        panels: usize,
        out: *mut f32,
    ) {
        // Safety: forwarded; the tile lies inside the activations, weights and output.
        unsafe { tile_shapes!(tile_rc, rows, panels, (w, acts, i0, panel0, out)) }
    }

    // Index loops over register tiles read clearer than iterator chains here.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_rc<const R: usize, const C: usize>(
        w: &Bf16Weights,
        acts: &[u32],
        i0: usize,
        panel0: usize,
        out: *mut f32,
    ) {
        let pairs = w.pairs;
        let wp = w.values.as_ptr();
        let xp = acts.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for p in 0..pairs {
            let mut wv = [_mm512_setzero_si512(); C];
            // Safety: panel (panel0 + c) has `pairs` pairs of 16 lanes; row i0 + r of the
            // activations has `pairs` lanes.
            unsafe {
                for c in 0..C {
                    let at = ((panel0 + c) * pairs + p) * PANEL * PAIR;
                    wv[c] = _mm512_loadu_si512(wp.add(at) as *const __m512i);
                }
                for r in 0..R {
                    let xv = _mm512_set1_epi32(*xp.add((i0 + r) * pairs + p) as i32);
                    for c in 0..C {
                        acc[r][c] = _mm512_dpbf16_ps(
                            acc[r][c],
                            std::mem::transmute::<__m512i, __m512bh>(xv),
                            std::mem::transmute::<__m512i, __m512bh>(wv[c]),
                        );
                    }
                }
            }
        }
        for c in 0..C {
            let col = (panel0 + c) * PANEL;
            let mask = super::super::matmul::panel_mask(w.rows, col);
            for r in 0..R {
                // Safety: only the valid columns of this row are written.
                unsafe { _mm512_mask_storeu_ps(out.add((i0 + r) * w.rows + col), mask, acc[r][c]) };
            }
        }
    }
}

/// `exact` for CPUs with AVX2 but not AVX-512 (Zen 2 and 3, Intel's client cores): each
/// panel in two 8-wide halves (one 32-byte load holds a half's pair of k), the same chain per
/// output. Written out because the portable product compiled for AVX2 ran scalar, about 20
/// times slower than the AVX-512 one (benchmarks/README.md). Sixteen registers hold 2 rows ×
/// 2 panels or 1 row × 4 panels.
#[cfg(target_arch = "x86_64")]
mod exact_avx2 {
    use std::arch::x86_64::*;

    use super::super::matmul::{avx2_tile_shapes, avx2_tiles, store_half_panel};
    use super::{Bf16Weights, PAIR, PANEL};

    /// Safety: needs AVX2 and FMA; see `Bf16Weights::exact_tile`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile(
        w: &Bf16Weights,
        x: &[f32],
        i0: usize,
        rows: usize,
        panel0: usize,
        panels: usize,
        out: *mut f32,
    ) {
        for (i, r, p, c) in avx2_tiles(i0..i0 + rows, panels) {
            // Safety: forwarded; the tile lies inside x, the weights and the output.
            unsafe { avx2_tile_shapes!(tile_rc, r, c, (w, x, i, panel0 + p, out)) }
        }
    }

    // Index loops over register tiles read clearer than iterator chains here.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_rc<const R: usize, const C: usize>(
        w: &Bf16Weights,
        x: &[f32],
        i0: usize,
        panel0: usize,
        out: *mut f32,
    ) {
        let (k, pairs) = (w.cols, w.pairs);
        let (wp, xp) = (w.values.as_ptr(), x.as_ptr());
        let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
        // Whole pairs, then an odd last column's even half alone.
        for p in 0..k.div_ceil(PAIR) {
            let odd = PAIR * p + 1 < k;
            // Safety: panel (panel0 + c) has `pairs` pairs of 16 lanes; row i0 + r of x has
            // k values, and 2p + 1 is read only when it is below k.
            unsafe {
                let mut even_x = [_mm256_setzero_ps(); R];
                let mut odd_x = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    even_x[r] = _mm256_set1_ps(*xp.add((i0 + r) * k + PAIR * p));
                    if odd {
                        odd_x[r] = _mm256_set1_ps(*xp.add((i0 + r) * k + PAIR * p + 1));
                    }
                }
                for c in 0..C {
                    for h in 0..2 {
                        let at = ((panel0 + c) * pairs + p) * PANEL * PAIR + h * 8 * PAIR;
                        let v = _mm256_loadu_si256(wp.add(at) as *const __m256i);
                        let even = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
                        let odd_w = _mm256_castsi256_ps(_mm256_and_si256(v, high));
                        for r in 0..R {
                            acc[r][c][h] = _mm256_fmadd_ps(even_x[r], even, acc[r][c][h]);
                            if odd {
                                acc[r][c][h] = _mm256_fmadd_ps(odd_x[r], odd_w, acc[r][c][h]);
                            }
                        }
                    }
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                for h in 0..2 {
                    let col = (panel0 + c) * PANEL + h * 8;
                    let row = out.wrapping_add((i0 + r) * w.rows);
                    // Safety: row i0 + r of the output; only its valid columns are written.
                    unsafe { store_half_panel(row, w.rows, col, acc[r][c][h]) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn random(seed: u64, len: usize) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Every path, every batch and every tile give the same bits; each output is the f32
    /// product of the bf16-rounded operands within f32 rounding.
    #[test]
    fn every_path_and_batch_agree_exactly() {
        for &(m, n, k, seed) in &[
            (1, 1, 1, 1),
            (7, 130, 65, 2),
            (13, 67, 100, 3),
            (32, 200, 576, 4),
            // Rounded across threads; each row alone (below) takes the serial path.
            (128, 40, 576, 5),
        ] {
            let mut x = random(seed, m * k);
            // Values a request can produce: tiny, subnormal, huge, signed zeros.
            for (i, v) in [1e-39f32, -1e-40, 3e38, -0.0, 1e-30]
                .into_iter()
                .enumerate()
            {
                let len = x.len();
                if i < len {
                    x[i * 3 % len] = v;
                }
            }
            let data: Vec<bf16> = random(seed + 100, n * k)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            let w = Bf16Weights::pack(n, k, &data);
            let got = w.matmul_dot(&x, m);
            for i in 0..m {
                let alone = w.matmul_dot(&x[i * k..(i + 1) * k], 1);
                assert!(
                    bits(&alone) == bits(&got[i * n..(i + 1) * n]),
                    "{m}x{n}x{k}: row {i} alone"
                );
            }
            let acts = w.round_activations(&x, m);
            let mut portable = vec![0.0; m * n];
            for panel0 in (0..n.div_ceil(PANEL)).step_by(4) {
                let panels = 4.min(n.div_ceil(PANEL) - panel0);
                unsafe { w.tile_portable(&acts, 0, m, panel0, panels, portable.as_mut_ptr()) };
            }
            assert!(bits(&portable) == bits(&got), "{m}x{n}x{k}: portable path");
            for i in (0..m).filter(|&i| i > 0 || m == 1) {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|c| {
                            f64::from(bf16::from_f32(x[i * k + c]).to_f32())
                                * f64::from(data[j * k + c].to_f32())
                        })
                        .sum();
                    let err = (f64::from(got[i * n + j]) - want).abs();
                    assert!(err <= 1e-5 * k as f64, "{m}x{n}x{k} ({i},{j}): {err}");
                }
            }
            let mut row = vec![0.0; k];
            w.row_into(n - 1, &mut row);
            let want: Vec<f32> = data[(n - 1) * k..].iter().map(|v| v.to_f32()).collect();
            assert_eq!(row, want);
        }
    }

    /// The exact product equals f32 weights holding the same values, bit for bit, on every
    /// path and batch (odd k, a single row's eight-panel tiles, partial panels).
    #[test]
    fn exact_product_is_f32_arithmetic_on_every_path() {
        for &(m, n, k, seed) in &[
            (1, 1, 1, 1),
            (1, 300, 577, 2),
            (7, 130, 65, 3),
            (13, 67, 100, 4),
        ] {
            let x = random(seed, m * k);
            let data: Vec<bf16> = random(seed + 100, n * k)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            let w = Bf16Weights::pack(n, k, &data);
            let widened: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
            let f32_product = super::super::matmul::Matrix::f32(n, k, widened).matmul(&x, m, None);
            let got = w.matmul_exact(&x, m);
            assert!(
                bits(&got) == bits(&f32_product),
                "{m}x{n}x{k}: against f32 weights"
            );
            for i in 0..m {
                let alone = w.matmul_exact(&x[i * k..(i + 1) * k], 1);
                assert!(
                    bits(&alone) == bits(&got[i * n..(i + 1) * n]),
                    "{m}x{n}x{k} row {i}"
                );
            }
            let mut portable = vec![0.0; m * n];
            for panel0 in (0..n.div_ceil(PANEL)).step_by(4) {
                let panels = 4.min(n.div_ceil(PANEL) - panel0);
                unsafe {
                    w.exact_tile_portable::<Fused>(&x, 0, m, panel0, panels, portable.as_mut_ptr())
                };
            }
            assert!(bits(&portable) == bits(&got), "{m}x{n}x{k}: portable path");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                let mut avx2 = vec![0.0; m * n];
                for panel0 in (0..n.div_ceil(PANEL)).step_by(4) {
                    let panels = 4.min(n.div_ceil(PANEL) - panel0);
                    unsafe { exact_avx2::tile(&w, &x, 0, m, panel0, panels, avx2.as_mut_ptr()) };
                }
                assert!(bits(&avx2) == bits(&got), "{m}x{n}x{k}: AVX2 path");
            }
        }
    }

    /// The portable lane is `vdpbf16ps`'s, on operands chosen to tell the orders and flushes
    /// apart (cancellations, subnormal inputs and sums), where the CPU has the instruction.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_portable_lane_is_the_instructions() {
        if !dot_available() {
            eprintln!("no AVX-512 BF16 here: nothing to compare");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut bf = |lo: u32, hi: u32| -> u16 {
            let sign = if rng.random::<bool>() { 0x8000 } else { 0 };
            sign | ((rng.random_range(lo..=hi) as u16) << 7) | rng.random_range(0..128u16)
        };
        for case in 0..20_000 {
            // Exponents near 1, at the subnormal edge (0 is subnormal/zero), and mixed.
            let (lo, hi) = match case % 3 {
                0 => (100, 154),
                1 => (0, 70),
                _ => (0, 254),
            };
            let mut x = [0u32; 16];
            let mut wv = [0u32; 16];
            let mut acc = [0.0f32; 16];
            for l in 0..16 {
                x[l] = u32::from(bf(lo, hi)) | u32::from(bf(lo, hi)) << 16;
                wv[l] = u32::from(bf(lo, hi)) | u32::from(bf(lo, hi)) << 16;
                acc[l] = f32::from_bits(u32::from(bf(lo, hi)) << 16);
            }
            let got = unsafe { hardware(acc, x, wv) };
            for l in 0..16 {
                let want = dot_pair(flush(acc[l]), x[l], wv[l]);
                assert!(
                    want.to_bits() == got[l].to_bits() || (want.is_nan() && got[l].is_nan()),
                    "acc {:e} x {:08x} w {:08x}: {want:e} vs {:e}",
                    acc[l],
                    x[l],
                    wv[l],
                    got[l]
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn hardware(acc: [f32; 16], x: [u32; 16], w: [u32; 16]) -> [f32; 16] {
        use std::arch::x86_64::*;
        let mut out = [0.0f32; 16];
        unsafe {
            let v = _mm512_dpbf16_ps(
                _mm512_loadu_ps(acc.as_ptr()),
                std::mem::transmute::<[u32; 16], __m512bh>(x),
                std::mem::transmute::<[u32; 16], __m512bh>(w),
            );
            _mm512_storeu_ps(out.as_mut_ptr(), v);
        }
        out
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }
}
