//! W8A8 products (`dtype: w8a8`): int8 weights with one f32 scale per output row (as
//! `Matrix::int8`), times int8 activations quantized per token as they arrive (one scale per
//! row of x: its largest magnitude maps to 127), summed exactly in int32. With AVX-512 VNNI
//! one `vpdpbusd` does 64 multiply-adds, four times an f32 FMA's; without it the same
//! integers are summed portably. Integer sums do not depend on their order and the final
//! scaling is the same few f32 operations everywhere, so every CPU path and every batch gives
//! the same bits.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so activations are stored offset by 128
//! (1..=255) and 128 × each column's weight sum is taken off at the end.
//!
//! Layout: panels of 16 output columns with k in groups of 4 (one 32-bit lane):
//! `[rows / 16][cols / 4][16][4]`, zero-padded.

use rayon::prelude::*;

use super::matmul::{rows_per_thread, tiled_product, PANEL, PANELS_PER_TASK};

/// k values per 32-bit lane.
const GROUP: usize = 4;

/// A weight matrix for W8A8 products.
pub struct W8a8 {
    rows: usize,
    cols: usize,
    /// Groups of 4 along k.
    groups: usize,
    values: Vec<i8>,
    /// One per output row: a weight is `value × scale`.
    scales: Vec<f32>,
    /// 128 × the sum of each output row's values: what the activations' offset adds.
    offsets: Vec<i32>,
}

/// A row of x quantized: bytes offset by 128, and its scale.
struct Activations {
    bytes: Vec<u8>,
    scales: Vec<f32>,
}

/// Symmetric int8 scale of a row: its largest magnitude maps to 127.
fn scale_of(row: &[f32]) -> f32 {
    // In 16 lanes so it vectorises; a maximum does not depend on the order.
    let mut lanes = [0.0f32; 16];
    let chunks = row.chunks_exact(16);
    for v in chunks.remainder() {
        lanes[0] = lanes[0].max(v.abs());
    }
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.abs());
        }
    }
    let max = lanes.iter().fold(0.0f32, |m, &v| m.max(v));
    if max > 0.0 && max.is_finite() {
        max / 127.0
    } else {
        1.0
    }
}

/// Quantizes one row of activations into `dst` (offset by 128); returns its scale. Compiled
/// for AVX-512 where the CPU has it; every operation is exact per element, so every path
/// gives the same bytes.
pub(super) fn quantize_row(row: &[f32], dst: &mut [u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
        // Safety: the CPU has the features.
        return unsafe { quantize_row_avx512(row, dst) };
    }
    quantize_row_portable(row, dst)
}

/// [`quantize_row_portable`] in explicit vectors (the compiler's version ran at about one
/// element per nanosecond, a tenth of a decode step at 32 rows): the same maximum, the same
/// multiply then add, and the same clamp and truncation, so the same bytes, NaN and
/// infinities included.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(row: &[f32], dst: &mut [u8]) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len().min(dst.len());
    let (src, out) = (row.as_ptr(), dst.as_mut_ptr());
    let tail = |at: usize| -> __mmask16 { ((1u32 << (n - at).min(16)) - 1) as __mmask16 };
    // Safety (every load and store below): masked to `at..n`, inside both slices.
    unsafe {
        // Lanes never hold NaN (they start at 0 and `max_ps` returns its second operand when
        // either is NaN), so a NaN element is skipped, as `f32::max` skips it.
        let mut lanes = _mm512_setzero_ps();
        for at in (0..n).step_by(16) {
            let v = _mm512_maskz_loadu_ps(tail(at), src.add(at));
            lanes = _mm512_max_ps(_mm512_abs_ps(v), lanes);
        }
        let max = _mm512_reduce_max_ps(lanes);
        let scale = if max > 0.0 && max.is_finite() {
            max / 127.0
        } else {
            1.0
        };
        let inverse = _mm512_set1_ps(1.0 / scale);
        let sign = _mm512_set1_epi32(i32::MIN);
        let half = _mm512_castps_si512(_mm512_set1_ps(0.5));
        let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
        for at in (0..n).step_by(16) {
            let m = tail(at);
            let v = _mm512_maskz_loadu_ps(m, src.add(at));
            let signed_half = _mm512_castsi512_ps(_mm512_or_si512(
                _mm512_and_si512(_mm512_castps_si512(v), sign),
                half,
            ));
            let t = _mm512_add_ps(_mm512_mul_ps(v, inverse), signed_half);
            // `as i32` maps NaN to 0 and saturates; clamping first keeps truncation in range.
            let t = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(t, t), t);
            let q = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(t, lo), hi));
            let bytes = _mm512_add_epi32(q, _mm512_set1_epi32(128));
            _mm512_mask_cvtepi32_storeu_epi8(out.add(at) as *mut i8, m, bytes);
        }
        scale
    }
}

#[inline(always)]
fn quantize_row_portable(row: &[f32], dst: &mut [u8]) -> f32 {
    let scale = scale_of(row);
    let inverse = 1.0 / scale;
    for (v, d) in row.iter().zip(dst.iter_mut()) {
        // Round half away from zero with plain arithmetic (no libm call: this runs for every
        // activation of every product), then offset: |q| ≤ 127, so the byte is 1..=255.
        let q = (v * inverse + 0.5f32.copysign(*v)) as i32;
        *d = (q.clamp(-127, 127) + 128) as u8;
    }
    scale
}

impl W8a8 {
    /// Quantizes row-major f32 weights per output row.
    pub fn quantize(rows: usize, cols: usize, data: &[f32]) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        let groups = cols.div_ceil(GROUP);
        let mut values = crate::memory::zeroed(rows.div_ceil(PANEL) * groups * PANEL * GROUP);
        let mut scales = Vec::with_capacity(rows);
        let mut offsets = Vec::with_capacity(rows);
        for (r, row) in data.chunks_exact(cols.max(1)).enumerate() {
            let scale = scale_of(row);
            let mut sum = 0i32;
            for (c, v) in row.iter().enumerate() {
                // `as` saturates (and maps NaN to 0).
                let q = (v / scale).round() as i8;
                values[index(groups, r, c)] = q;
                sum += i32::from(q);
            }
            scales.push(scale);
            offsets.push(128 * sum);
        }
        Self {
            rows,
            cols,
            groups,
            values,
            scales,
            offsets,
        }
    }

    /// Bytes the weights occupy.
    pub fn bytes(&self) -> usize {
        self.values.len() + self.scales.len() * 4 + self.offsets.len() * 4
    }

    /// Copies row `r` into `out` as f32 (embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        for (c, o) in out.iter_mut().enumerate().take(self.cols) {
            *o = f32::from(self.values[index(self.groups, r, c)]) * self.scales[r];
        }
    }

    /// `x` is `[m, cols]`; returns `[m, rows]` = x W^T.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), m * self.cols);
        let (n, k) = (self.rows, self.cols);
        let acts = self.quantize_activations(x, m, k);
        tiled_product(
            n,
            m,
            PANELS_PER_TASK,
            PANELS_PER_TASK,
            |i, rows, p, panels, out| {
                // Safety: tiles never overlap (`tiled_product`).
                unsafe { self.tile(&acts, i, rows, p, panels, out) }
            },
        )
    }

    fn quantize_activations(&self, x: &[f32], m: usize, k: usize) -> Activations {
        let width = self.groups * GROUP;
        let mut bytes = vec![128u8; m * width];
        let mut scales = vec![0.0f32; m];
        x.par_chunks_exact(k.max(1))
            .zip(bytes.par_chunks_exact_mut(width))
            .zip(scales.par_iter_mut())
            .with_min_len(rows_per_thread(m, k))
            .for_each(|((row, dst), scale)| *scale = quantize_row(row, dst));
        Activations { bytes, scales }
    }

    /// One register tile: `rows` rows of x from `i0` against `panels` panels from `panel0`.
    ///
    /// Safety: `out` is the `[m, rows]` output; only this tile's elements are written.
    unsafe fn tile(
        &self,
        acts: &Activations,
        i0: usize,
        rows: usize,
        panel0: usize,
        panels: usize,
        out: *mut f32,
    ) {
        #[cfg(target_arch = "x86_64")]
        if vnni_available() {
            // Safety: the CPU has the features; forwarded.
            return unsafe { vnni::tile(self, acts, i0, rows, panel0, panels, out) };
        }
        // Safety: forwarded.
        unsafe { self.tile_portable(acts, i0, rows, panel0, panels, out) }
    }

    /// The same integers, one output at a time.
    unsafe fn tile_portable(
        &self,
        acts: &Activations,
        i0: usize,
        rows: usize,
        panel0: usize,
        panels: usize,
        out: *mut f32,
    ) {
        let width = self.groups * GROUP;
        let c0 = panel0 * PANEL;
        let c1 = ((panel0 + panels) * PANEL).min(self.rows);
        for i in i0..i0 + rows {
            let xq = &acts.bytes[i * width..(i + 1) * width];
            for j in c0..c1 {
                let base = ((j / PANEL) * self.groups) * PANEL * GROUP + (j % PANEL) * GROUP;
                let mut acc = 0i32;
                for g in 0..self.groups {
                    let w = &self.values[base + g * PANEL * GROUP..][..GROUP];
                    for l in 0..GROUP {
                        acc += i32::from(xq[g * GROUP + l]) * i32::from(w[l]);
                    }
                }
                let v = finish(acc, self.offsets[j], acts.scales[i], self.scales[j]);
                // Safety: (i, j) lies in this tile.
                unsafe { *out.add(i * self.rows + j) = v };
            }
        }
    }
}

/// An output from its integer sum: the offset taken off, then the two scales, in this order
/// on every path.
#[inline(always)]
fn finish(acc: i32, offset: i32, x_scale: f32, w_scale: f32) -> f32 {
    (acc.wrapping_sub(offset) as f32) * x_scale * w_scale
}

/// Where weight (r, c) lives in the packed layout.
fn index(groups: usize, r: usize, c: usize) -> usize {
    ((r / PANEL) * groups + c / GROUP) * PANEL * GROUP + (r % PANEL) * GROUP + c % GROUP
}

#[cfg(target_arch = "x86_64")]
pub(super) fn vnni_available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::super::matmul::tile_shapes;
    use super::{Activations, W8a8, GROUP, PANEL};

    /// Safety: needs AVX-512F/BW/VNNI; see `W8a8::tile`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile(
        w: &W8a8,
        acts: &Activations,
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
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_rc<const R: usize, const C: usize>(
        w: &W8a8,
        acts: &Activations,
        i0: usize,
        panel0: usize,
        out: *mut f32,
    ) {
        let groups = w.groups;
        let width = groups * GROUP;
        let wp = w.values.as_ptr();
        let xp = acts.bytes.as_ptr();
        let mut acc = [[_mm512_setzero_si512(); C]; R];
        for g in 0..groups {
            let mut wv = [_mm512_setzero_si512(); C];
            // Safety: panel (panel0 + c) has `groups` groups of 64 bytes; row i0 + r of the
            // activations has `width` bytes.
            unsafe {
                for c in 0..C {
                    let at = ((panel0 + c) * groups + g) * PANEL * GROUP;
                    wv[c] = _mm512_loadu_si512(wp.add(at) as *const __m512i);
                }
                for r in 0..R {
                    let four =
                        (xp.add((i0 + r) * width + g * GROUP) as *const i32).read_unaligned();
                    let xv = _mm512_set1_epi32(four);
                    for c in 0..C {
                        acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], xv, wv[c]);
                    }
                }
            }
        }
        for c in 0..C {
            let col = (panel0 + c) * PANEL;
            let mask = super::super::matmul::panel_mask(w.rows, col);
            // Safety: only the valid columns are read and written.
            unsafe {
                let offsets = _mm512_maskz_loadu_epi32(mask, w.offsets.as_ptr().add(col));
                let scales = _mm512_maskz_loadu_ps(mask, w.scales.as_ptr().add(col));
                for r in 0..R {
                    let i = i0 + r;
                    let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][c], offsets));
                    let v = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(acts.scales[i])), scales);
                    _mm512_mask_storeu_ps(out.add(i * w.rows + col), mask, v);
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

    /// What the integers say, computed the plain way from the quantized values.
    fn integer_reference(w: &W8a8, x: &[f32], m: usize) -> Vec<f32> {
        let acts = w.quantize_activations(x, m, w.cols);
        let width = w.groups * GROUP;
        let mut out = vec![0.0; m * w.rows];
        for i in 0..m {
            for j in 0..w.rows {
                let mut acc = 0i32;
                for c in 0..w.cols {
                    let xq = i32::from(acts.bytes[i * width + c]) - 128;
                    acc += xq * i32::from(w.values[index(w.groups, j, c)]);
                }
                out[i * w.rows + j] = finish(
                    acc + w.offsets[j],
                    w.offsets[j],
                    acts.scales[i],
                    w.scales[j],
                );
            }
        }
        out
    }

    /// The vector quantizer gives the portable one's bytes and scale on every length (masked
    /// tails) and on values a request can produce: NaN, infinities, signed zeros, halves that
    /// round away from zero, subnormals, an all-zero row.
    #[test]
    fn vector_quantizer_equals_the_portable_one() {
        let special = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            1e-40,
            -1e-40,
            f32::MAX,
            f32::MIN,
            0.5,
            -0.5,
            63.5,
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for len in [1usize, 5, 15, 16, 17, 33, 576] {
            for case in 0..6 {
                let row: Vec<f32> = (0..len)
                    .map(|i| match case {
                        0 => 0.0,
                        1 => rng.random_range(-3.0..3.0),
                        2 => special[i % special.len()],
                        // Exact halves of the scale: 127 × i / len steps.
                        3 => (i as f32 - len as f32 / 2.0) * 0.5,
                        4 if i == len / 2 => f32::NAN,
                        _ => rng.random_range(-1e6..1e6),
                    })
                    .collect();
                let (mut a, mut b) = (vec![128u8; len], vec![128u8; len]);
                let sa = quantize_row_portable(&row, &mut a);
                let sb = quantize_row(&row, &mut b);
                assert_eq!(
                    (sa.to_bits(), &a),
                    (sb.to_bits(), &b),
                    "{len} {case} {row:?}"
                );
            }
        }
    }

    #[test]
    fn every_path_and_batch_gives_the_integer_answer() {
        for &(m, n, k, seed) in &[
            (1, 1, 1, 1),
            (7, 130, 66, 2),
            (13, 67, 100, 3),
            (32, 200, 576, 4),
            // Large enough that the activations are quantized across threads; each row alone
            // (below) takes the serial path.
            (128, 40, 576, 5),
        ] {
            let x = random(seed, m * k);
            let data = random(seed + 100, n * k);
            let w = W8a8::quantize(n, k, &data);
            let got = w.matmul(&x, m);
            assert_eq!(got, integer_reference(&w, &x, m), "{m}x{n}x{k}");
            for i in 0..m {
                assert_eq!(w.matmul(&x[i * k..(i + 1) * k], 1), got[i * n..(i + 1) * n]);
            }
            // The portable tile, on the whole product.
            let acts = w.quantize_activations(&x, m, k);
            // Activations quantized by the portable build equal those of the dispatched one.
            let width = w.groups * GROUP;
            for i in 0..m {
                let mut bytes = vec![128u8; width];
                let scale = quantize_row_portable(&x[i * k..(i + 1) * k], &mut bytes);
                assert_eq!(
                    bytes,
                    acts.bytes[i * width..(i + 1) * width],
                    "{m}x{n}x{k} row {i}"
                );
                assert_eq!(scale, acts.scales[i]);
            }
            let mut portable = vec![0.0; m * n];
            for panel0 in (0..n.div_ceil(PANEL)).step_by(4) {
                let panels = 4.min(n.div_ceil(PANEL) - panel0);
                unsafe { w.tile_portable(&acts, 0, m, panel0, panels, portable.as_mut_ptr()) };
            }
            assert_eq!(portable, got, "{m}x{n}x{k}: portable path");
            // Within the two quantizations of f32's answer.
            for i in 0..m {
                let xs = scale_of(&x[i * k..(i + 1) * k]);
                for j in 0..n {
                    let ws = scale_of(&data[j * k..(j + 1) * k]);
                    let want: f32 = (0..k).map(|c| x[i * k + c] * data[j * k + c]).sum();
                    let bound = k as f32 * (xs + ws) * 0.5 * 1.01 + 1e-4;
                    assert!(
                        (got[i * n + j] - want).abs() <= bound,
                        "{m}x{n}x{k} ({i},{j})"
                    );
                }
            }
            let mut row = vec![0.0; k];
            w.row_into(n - 1, &mut row);
            for (a, b) in row.iter().zip(&data[(n - 1) * k..]) {
                assert!((a - b).abs() <= scale_of(&data[(n - 1) * k..]) / 2.0 + 1e-6);
            }
        }
    }
}
