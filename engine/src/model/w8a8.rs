//! Integer products over int8 weights with one f32 scale per output row, quantized at load
//! (symmetric, round to nearest), times activations quantized per token as they arrive (one
//! scale per row of x), summed exactly in int32. Two formats share the weights and kernels:
//! - `dtype: w8a8`: one int8 per activation, the row's largest magnitude mapped to 127.
//! - `dtype: int8`: a 24-bit integer per activation (the largest magnitude mapped to
//!   8,290,687), kept as three balanced base-255 digits of −127..=127, one byte plane each.
//!   Each plane is summed against the weights like a w8a8 row and the three sums are
//!   combined exactly (`s₂·255² + s₁·255 + s₀`), then rounded to f32 once. The activations
//!   lose at most a 16-millionth of their row's largest magnitude, so the weights'
//!   quantization is all that separates it from f32; and it costs three `vpdpbusd` per 64
//!   weights where widening them to f32 took twelve instructions (benchmarks/README.md).
//!
//! With AVX-512 VNNI one `vpdpbusd` does 64 multiply-adds, four times an f32 FMA's; without
//! it the same integers are summed portably. Integer sums do not depend on their order and
//! the final scaling is the same few operations everywhere, so every CPU path and every
//! batch gives the same bits.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so digits are stored offset by 128
//! (1..=255) and 128 × each column's weight sum is taken off at the end.
//!
//! Layout: panels of 16 output columns with k in groups of 4 (one 32-bit lane):
//! `[rows / 16][cols / 4][16][4]`, zero-padded.

use rayon::prelude::*;

use super::matmul::{rows_per_thread, tiled_product, PANEL, PANELS_PER_TASK};

/// k values per 32-bit lane.
const GROUP: usize = 4;
/// The base of `Activation::Int24`'s digits: odd, so −127..=127 covers every residue.
const BASE: i32 = 255;
/// `Activation::Int24`'s largest integer: (255³ − 1) / 2, three digits of 127.
const WIDE_MAX: i32 = 8_290_687;

/// How finely each row of activations is quantized before the integer product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activation {
    /// One int8 per value (`dtype: w8a8`).
    Int8,
    /// A 24-bit integer per value in three byte planes (`dtype: int8`).
    Int24,
}

impl Activation {
    /// Byte planes per row.
    fn planes(self) -> usize {
        match self {
            Self::Int8 => 1,
            Self::Int24 => 3,
        }
    }

    /// The integer the row's largest magnitude maps to.
    fn levels(self) -> i32 {
        match self {
            Self::Int8 => 127,
            Self::Int24 => WIDE_MAX,
        }
    }
}

/// A weight matrix for integer products.
pub struct W8a8 {
    rows: usize,
    cols: usize,
    /// Groups of 4 along k.
    groups: usize,
    values: crate::memory::Buffer<i8>,
    /// One per output row: a weight is `value × scale`.
    scales: Vec<f32>,
    /// 128 × the sum of each output row's values: what the activations' offset adds.
    offsets: Vec<i32>,
}

/// Rows of x quantized: `[m][planes][width]` bytes offset by 128, and one scale per row.
struct Activations {
    bytes: Vec<u8>,
    scales: Vec<f32>,
    planes: usize,
    /// For the AVX2 kernel of three planes: each row's exact integers again, as
    /// `lo + 4096 × hi`, `[m][2][width]` (see `avx2::widen`); empty elsewhere.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    wide: Vec<i16>,
    /// For the AVX2 kernel of one plane: each row's magnitudes and signed values,
    /// `[m][2][width]` (see `avx2::split_signs`); empty elsewhere.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    signed: Vec<u8>,
}

/// The scale that maps a row's largest magnitude `max` to `levels`.
fn scale_from(max: f32, levels: i32) -> f32 {
    if max > 0.0 && max.is_finite() {
        max / levels as f32
    } else {
        1.0
    }
}

/// Symmetric int8 scale of a row: its largest magnitude maps to 127.
fn scale_of(row: &[f32]) -> f32 {
    scale_from(row_max(row), 127)
}

/// A row's largest magnitude (NaN skipped). Inlined, so that it is vectorised with the
/// caller's instruction set (the AVX2 quantizer's).
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
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
    lanes.iter().fold(0.0f32, |m, &v| m.max(v))
}

/// The lowest balanced base-255 digit of `x` (−127..=127), and what is left above it.
#[inline(always)]
fn split_digit(x: i32) -> (i32, i32) {
    let d = (x + BASE / 2).rem_euclid(BASE) - BASE / 2;
    (d, (x - d) / BASE)
}

/// Quantizes one row of activations into `dst` (offset by 128, `planes` planes of `width`
/// bytes); returns its scale. Compiled for AVX-512 where the CPU has it; every operation
/// is exact per element, so every path gives the same bytes.
fn quantize_into(row: &[f32], dst: &mut [u8], width: usize, activation: Activation) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::has!(Avx512: "avx512f", "avx512bw") {
        // Safety: the CPU has the features.
        return unsafe { quantize_avx512(row, dst, width, activation) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2_usable() {
        // Safety: the CPU has the feature.
        return unsafe { quantize_avx2(row, dst, width, activation) };
    }
    quantize_portable(row, dst, width, activation)
}

/// One row quantized to int8 (offset by 128) into `dst`; returns its scale.
pub(super) fn quantize_row(row: &[f32], dst: &mut [u8]) -> f32 {
    quantize_into(row, dst, dst.len(), Activation::Int8)
}

/// [`quantize_portable`] in explicit vectors (the compiler's version ran at about one
/// element per nanosecond, a tenth of a decode step at 32 rows): the same maximum, the same
/// multiply then add, the same clamp and truncation, and the same digits, so the same bytes,
/// NaN and infinities included.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_avx512(row: &[f32], dst: &mut [u8], width: usize, a: Activation) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len().min(width);
    debug_assert!(dst.len() >= width * a.planes());
    let (src, out) = (row.as_ptr(), dst.as_mut_ptr());
    let tail = |at: usize| -> __mmask16 { ((1u32 << (n - at).min(16)) - 1) as __mmask16 };
    // Safety (every load and store below): masked to `at..n` of the row and of each plane,
    // inside both slices.
    unsafe {
        // Lanes never hold NaN (they start at 0 and `max_ps` returns its second operand when
        // either is NaN), so a NaN element is skipped, as `f32::max` skips it.
        let mut lanes = _mm512_setzero_ps();
        for at in (0..n).step_by(16) {
            let v = _mm512_maskz_loadu_ps(tail(at), src.add(at));
            lanes = _mm512_max_ps(_mm512_abs_ps(v), lanes);
        }
        let scale = scale_from(_mm512_reduce_max_ps(lanes), a.levels());
        let inverse = _mm512_set1_ps(1.0 / scale);
        let sign = _mm512_set1_epi32(i32::MIN);
        let half = _mm512_castps_si512(_mm512_set1_ps(0.5));
        let levels = a.levels() as f32;
        let (lo, hi) = (_mm512_set1_ps(-levels), _mm512_set1_ps(levels));
        let offset = _mm512_set1_epi32(128);
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
            let mut q = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(t, lo), hi));
            for p in 0..a.planes() {
                let digit = if p + 1 < a.planes() {
                    let (d, rest) = split_digit_avx512(q);
                    q = rest;
                    d
                } else {
                    q
                };
                let bytes = _mm512_add_epi32(digit, offset);
                _mm512_mask_cvtepi32_storeu_epi8(out.add(p * width + at) as *mut i8, m, bytes);
            }
        }
        scale
    }
}

/// [`split_digit`] on 16 lanes (|x| ≤ [`WIDE_MAX`]): the quotient from an f32 division
/// can miss by one, so the digit is brought back into −127..=127, which makes it the unique
/// balanced digit, as the integer version's.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn split_digit_avx512(
    x: std::arch::x86_64::__m512i,
) -> (std::arch::x86_64::__m512i, std::arch::x86_64::__m512i) {
    use std::arch::x86_64::*;
    let base = _mm512_set1_epi32(BASE);
    let q = _mm512_cvtps_epi32(_mm512_mul_ps(
        _mm512_cvtepi32_ps(x),
        _mm512_set1_ps(1.0 / BASE as f32),
    ));
    let d = _mm512_sub_epi32(x, _mm512_mullo_epi32(q, base));
    let over = _mm512_cmpgt_epi32_mask(d, _mm512_set1_epi32(BASE / 2));
    let under = _mm512_cmplt_epi32_mask(d, _mm512_set1_epi32(-(BASE / 2)));
    let one = _mm512_set1_epi32(1);
    let d = _mm512_mask_add_epi32(_mm512_mask_sub_epi32(d, over, d, base), under, d, base);
    let q = _mm512_mask_sub_epi32(_mm512_mask_add_epi32(q, over, q, one), under, q, one);
    (d, q)
}

/// [`quantize_avx512`] in AVX2, 32 values at a time, the rest by [`quantize_portable`]'s
/// loop: the same operations per element, so the same bytes. (The portable loop was 6% of a
/// 32-stream decode step with the AVX2 kernels, its row maximum included.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(row: &[f32], dst: &mut [u8], width: usize, a: Activation) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len().min(width);
    let whole = n / 32 * 32;
    let src = row.as_ptr();
    let max = row_max(&row[..n]);
    let scale = scale_from(max, a.levels());
    let inverse = _mm256_set1_ps(1.0 / scale);
    let sign = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    let half = _mm256_set1_ps(0.5);
    let levels = a.levels() as f32;
    let (lo, hi) = (_mm256_set1_ps(-levels), _mm256_set1_ps(levels));
    let offset = _mm256_set1_epi32(128);
    // packs/packus interleave 128-bit lanes; this puts the 32 bytes back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for at in (0..whole).step_by(32) {
        let mut q: [__m256i; 4] = std::array::from_fn(|j| {
            // Safety: 32 values from `at < whole` lie inside the row.
            let v = unsafe { _mm256_loadu_ps(src.add(at + 8 * j)) };
            let t = _mm256_add_ps(
                _mm256_mul_ps(v, inverse),
                _mm256_or_ps(_mm256_and_ps(v, sign), half),
            );
            // NaN to 0, as `as i32` maps it; clamping first keeps truncation in range.
            let t = _mm256_and_ps(t, _mm256_cmp_ps::<_CMP_ORD_Q>(t, t));
            _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(t, lo), hi))
        });
        for p in 0..a.planes() {
            let digits: [__m256i; 4] = std::array::from_fn(|j| {
                let digit = if p + 1 < a.planes() {
                    let (d, rest) = split_digit_avx2(q[j]);
                    q[j] = rest;
                    d
                } else {
                    q[j]
                };
                _mm256_add_epi32(digit, offset)
            });
            // Every byte is 1..=255: the saturating packs keep it.
            let bytes = _mm256_packus_epi16(
                _mm256_packs_epi32(digits[0], digits[1]),
                _mm256_packs_epi32(digits[2], digits[3]),
            );
            let bytes = _mm256_permutevar8x32_epi32(bytes, order);
            // Safety: 32 bytes of plane p from `at < whole ≤ width`.
            unsafe {
                _mm256_storeu_si256(dst.as_mut_ptr().add(p * width + at) as *mut __m256i, bytes)
            };
        }
    }
    quantize_values(&row[whole..n], dst, width, whole, 1.0 / scale, a);
    scale
}

/// [`split_digit`] on 8 lanes, as [`split_digit_avx512`] does it.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
fn split_digit_avx2(
    x: std::arch::x86_64::__m256i,
) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    let base = _mm256_set1_epi32(BASE);
    let q = _mm256_cvtps_epi32(_mm256_mul_ps(
        _mm256_cvtepi32_ps(x),
        _mm256_set1_ps(1.0 / BASE as f32),
    ));
    let d = _mm256_sub_epi32(x, _mm256_mullo_epi32(q, base));
    // All ones where the digit is past the balanced range on either side.
    let over = _mm256_cmpgt_epi32(d, _mm256_set1_epi32(BASE / 2));
    let under = _mm256_cmpgt_epi32(_mm256_set1_epi32(-(BASE / 2)), d);
    let d = _mm256_add_epi32(
        _mm256_sub_epi32(d, _mm256_and_si256(over, base)),
        _mm256_and_si256(under, base),
    );
    // `over` is -1 where a carry goes up, `under` where one comes down.
    let q = _mm256_add_epi32(_mm256_sub_epi32(q, over), under);
    (d, q)
}

#[inline(always)]
fn quantize_portable(row: &[f32], dst: &mut [u8], width: usize, a: Activation) -> f32 {
    let scale = scale_from(row_max(row), a.levels());
    quantize_values(&row[..row.len().min(width)], dst, width, 0, 1.0 / scale, a);
    scale
}

/// `values` (the row's from column `first`) quantized with `inverse` (1 / the row's scale)
/// into their columns of each plane of `dst`.
#[inline(always)]
fn quantize_values(
    values: &[f32],
    dst: &mut [u8],
    width: usize,
    first: usize,
    inverse: f32,
    a: Activation,
) {
    for (c, v) in (first..).zip(values) {
        // Round half away from zero with plain arithmetic (no libm call: this runs for every
        // activation of every product); the digits are offset: each byte is 1..=255.
        let mut q = ((v * inverse + 0.5f32.copysign(*v)) as i32).clamp(-a.levels(), a.levels());
        for p in 0..a.planes() {
            let digit = if p + 1 < a.planes() {
                let (d, rest) = split_digit(q);
                q = rest;
                d
            } else {
                q
            };
            dst[p * width + c] = (digit + 128) as u8;
        }
    }
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
                // `as` saturates (and maps NaN to 0); -128 (from -inf) is kept out, as the
                // AVX2 kernel moves activations' signs onto the weights.
                let q = ((v / scale).round() as i8).max(-127);
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

    /// `x` is `[m, cols]`; returns `[m, rows]` = x W^T, with x quantized as `activation`.
    pub(super) fn matmul(&self, x: &[f32], m: usize, activation: Activation) -> Vec<f32> {
        debug_assert_eq!(x.len(), m * self.cols);
        let (n, k) = (self.rows, self.cols);
        let acts = self.quantize_activations(x, m, k, activation);
        let tile = |i, rows, p, panels, first, out| {
            // Safety: tiles never overlap (`tiled_product`).
            unsafe { self.tile(&acts, i, rows, p, panels, first, out) }
        };
        // Safety: every tile writes all of its elements, and only those.
        unsafe { tiled_product(n, m, PANELS_PER_TASK, PANELS_PER_TASK, tile) }
    }

    fn quantize_activations(
        &self,
        x: &[f32],
        m: usize,
        k: usize,
        activation: Activation,
    ) -> Activations {
        let width = self.groups * GROUP;
        let planes = activation.planes();
        let mut bytes = vec![128u8; m * planes * width];
        let mut scales = vec![0.0f32; m];
        x.par_chunks_exact(k.max(1))
            .zip(bytes.par_chunks_exact_mut(planes * width))
            .zip(scales.par_iter_mut())
            .with_min_len(rows_per_thread(m, k))
            .for_each(|((row, dst), scale)| *scale = quantize_into(row, dst, width, activation));
        // What the AVX2 kernels take, where they are the ones that run.
        #[cfg(target_arch = "x86_64")]
        let (wide, signed) = match (!vnni_available() && avx2_usable(), planes) {
            // Safety (both): the CPU has AVX2.
            (true, 3) => (unsafe { avx2::widen(&bytes, width) }, Vec::new()),
            (true, _) => (Vec::new(), unsafe { avx2::split_signs(&bytes, width) }),
            (false, _) => (Vec::new(), Vec::new()),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let (wide, signed) = (Vec::new(), Vec::new());
        Activations {
            bytes,
            scales,
            planes,
            wide,
            signed,
        }
    }

    /// One register tile: `rows` rows of x from `i0` against `panels` panels from `panel0`;
    /// `first` when it is the first to read those panels (see `tiled_product`).
    ///
    /// Safety: `out` is the `[m, rows]` output; only this tile's elements are written.
    #[allow(clippy::too_many_arguments)]
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    unsafe fn tile(
        &self,
        acts: &Activations,
        i0: usize,
        rows: usize,
        panel0: usize,
        panels: usize,
        first: bool,
        out: *mut f32,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if vnni_available() {
                // Safety: the CPU has the features; forwarded.
                return unsafe { vnni::tile(self, acts, i0, rows, panel0, panels, first, out) };
            }
            if avx2_usable() {
                // Safety: the CPU has the feature; forwarded.
                return unsafe { avx2::tile(self, acts, i0, rows, panel0, panels, out) };
            }
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
            for j in c0..c1 {
                let base = ((j / PANEL) * self.groups) * PANEL * GROUP + (j % PANEL) * GROUP;
                let mut sums = [0i32; 3];
                for (p, sum) in sums.iter_mut().enumerate().take(acts.planes) {
                    let xq = &acts.bytes[(i * acts.planes + p) * width..][..width];
                    let mut acc = 0i32;
                    for g in 0..self.groups {
                        let w = &self.values[base + g * PANEL * GROUP..][..GROUP];
                        for l in 0..GROUP {
                            acc += i32::from(xq[g * GROUP + l]) * i32::from(w[l]);
                        }
                    }
                    *sum = acc.wrapping_sub(self.offsets[j]);
                }
                let v = finish(&sums[..acts.planes], acts.scales[i], self.scales[j]);
                // Safety: (i, j) lies in this tile.
                unsafe { *out.add(i * self.rows + j) = v };
            }
        }
    }
}

/// An output from its planes' integer sums (offsets taken off, lowest digit first): combined
/// exactly, rounded to f32 once, then the two scales, in this order on every path.
#[inline(always)]
fn finish(sums: &[i32], x_scale: f32, w_scale: f32) -> f32 {
    let total = sums
        .iter()
        .rev()
        .fold(0i64, |t, &s| t * i64::from(BASE) + i64::from(s));
    scaled(total, x_scale, w_scale)
}

/// A row-column product's exact integer total as f32, scaled: the one rounding every path
/// makes, in one order, so paths that sum the same integer differently give the same bits.
fn scaled(total: i64, x_scale: f32, w_scale: f32) -> f32 {
    (total as f32) * x_scale * w_scale
}

/// Where weight (r, c) lives in the packed layout.
fn index(groups: usize, r: usize, c: usize) -> usize {
    ((r / PANEL) * groups + c / GROUP) * PANEL * GROUP + (r % PANEL) * GROUP + c % GROUP
}

/// Whether the AVX2 kernel may run: the CPU has AVX2 and no cap forbids it.
#[cfg(target_arch = "x86_64")]
pub(super) fn avx2_usable() -> bool {
    crate::cpu::has!(Avx2: "avx2")
}

#[cfg(target_arch = "x86_64")]
pub(super) fn vnni_available() -> bool {
    crate::cpu::has!(Avx512: "avx512f", "avx512bw", "avx512vnni")
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::super::matmul::tile_shapes;
    use super::{Activations, W8a8, BASE, GROUP, PANEL};

    /// Safety: needs AVX-512F/BW/VNNI; see `W8a8::tile`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile(
        w: &W8a8,
        acts: &Activations,
        i0: usize,
        rows: usize,
        panel0: usize,
        panels: usize,
        first: bool,
        out: *mut f32,
    ) {
        // Safety (both): forwarded; the tile lies inside the activations, weights and output.
        if rows == 1 && acts.planes == 1 {
            // One row reads each panel whole, one after the next: a single stream through
            // memory, where four panels side by side were four short ones (on the demo's
            // 576-wide matrices each is 9 KiB, and every call started three new streams for
            // the prefetcher to find). Its one-stream decode gained 5 points of the
            // bandwidth bound (benchmarks/README.md).
            for panel in panel0..panel0 + panels {
                // Safety: forwarded; the panel lies inside the tile.
                unsafe { row_panel(w, acts, i0, panel, out) };
            }
            return;
        }
        if acts.planes == 1 {
            // The first of several rows' tiles over a block reads it from memory, and asking
            // 2 KiB ahead there took 5% off the 32-row product with the demo's output head
            // and gave 32 streams 5% more tokens (benchmarks/README.md). (One row, above,
            // keeps up with the memory without it.)
            let ask = first.then_some(super::super::matmul::AHEAD);
            return unsafe { tile_shapes!(tile_rc, rows, panels, (w, acts, i0, panel0, ask, out)) };
        }
        // Three planes: two rows of four panels hold 24 accumulators, as six rows do with one.
        for i in (i0..i0 + rows).step_by(2) {
            let r = (i0 + rows - i).min(2);
            unsafe {
                // One row of three planes spends three instructions per line: it asks ahead.
                let ask = (r == 1).then(|| super::super::matmul::row_ahead(w.cols));
                match (r, panels) {
                    (2, 4) => tile_planes::<3, 2, 4>(w, acts, i, panel0, ask, out),
                    (2, 3) => tile_planes::<3, 2, 3>(w, acts, i, panel0, ask, out),
                    (2, 2) => tile_planes::<3, 2, 2>(w, acts, i, panel0, ask, out),
                    (2, 1) => tile_planes::<3, 2, 1>(w, acts, i, panel0, ask, out),
                    (1, 4) => tile_planes::<3, 1, 4>(w, acts, i, panel0, ask, out),
                    (1, 3) => tile_planes::<3, 1, 3>(w, acts, i, panel0, ask, out),
                    (1, 2) => tile_planes::<3, 1, 2>(w, acts, i, panel0, ask, out),
                    (1, 1) => tile_planes::<3, 1, 1>(w, acts, i, panel0, ask, out),
                    _ => unreachable!("wide tiles hold 1 or 2 rows of 1 to 4 panels"),
                }
            }
        }
    }

    /// Row `i` of one-plane activations against one panel. Its groups go to `SUMS`
    /// independent sums in turn, so that more `vpdpbusd` run at once than one chain's
    /// latency allows; integer sums are exact in any order, so the output is the four-panel
    /// tile's, bit for bit.
    ///
    /// Safety: needs AVX-512F/BW/VNNI; row `i` and the panel lie inside the activations,
    /// the weights and `out` (the `[m, rows]` output), of which only the panel's columns
    /// of row `i` are written.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn row_panel(w: &W8a8, acts: &Activations, i: usize, panel: usize, out: *mut f32) {
        const SUMS: usize = 4;
        let groups = w.groups;
        let width = groups * GROUP;
        // Safety (every access below): the panel's `groups` groups of 64 bytes lie inside
        // the weights, the row's `width` bytes inside the activations, and the panel's
        // valid columns (masked) inside the scales, the offsets and row i of `out`.
        unsafe {
            let wp = w.values.as_ptr().add(panel * groups * PANEL * GROUP);
            let xp = acts.bytes.as_ptr().add(i * width);
            let group = |g: usize| {
                let wv = _mm512_loadu_si512(wp.add(g * PANEL * GROUP) as *const __m512i);
                let four = (xp.add(g * GROUP) as *const i32).read_unaligned();
                (wv, _mm512_set1_epi32(four))
            };
            let mut sums = [_mm512_setzero_si512(); SUMS];
            let whole = groups / SUMS * SUMS;
            for g0 in (0..whole).step_by(SUMS) {
                for (s, sum) in sums.iter_mut().enumerate() {
                    let (wv, xv) = group(g0 + s);
                    *sum = _mm512_dpbusd_epi32(*sum, xv, wv);
                }
            }
            for g in whole..groups {
                let (wv, xv) = group(g);
                sums[0] = _mm512_dpbusd_epi32(sums[0], xv, wv);
            }
            let total = sums[1..]
                .iter()
                .fold(sums[0], |t, &s| _mm512_add_epi32(t, s));
            let col = panel * PANEL;
            let mask = super::super::matmul::panel_mask(w.rows, col);
            let offsets = _mm512_maskz_loadu_epi32(mask, w.offsets.as_ptr().add(col));
            let scales = _mm512_maskz_loadu_ps(mask, w.scales.as_ptr().add(col));
            let v = combine([_mm512_sub_epi32(total, offsets)]);
            let v = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(acts.scales[i])), scales);
            _mm512_mask_storeu_ps(out.add(i * w.rows + col), mask, v);
        }
    }

    /// One-plane tiles (`tile_shapes` passes the rows and panels).
    #[inline(always)]
    unsafe fn tile_rc<const R: usize, const C: usize>(
        w: &W8a8,
        acts: &Activations,
        i0: usize,
        panel0: usize,
        ask: Option<usize>,
        out: *mut f32,
    ) {
        // Safety: forwarded.
        unsafe { tile_planes::<1, R, C>(w, acts, i0, panel0, ask, out) }
    }

    // Index loops over register tiles read clearer than iterator chains here.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    /// `ask`: ask for each panel's lines this many bytes ahead, into L2 (see
    /// `prefetch_ahead`).
    unsafe fn tile_planes<const P: usize, const R: usize, const C: usize>(
        w: &W8a8,
        acts: &Activations,
        i0: usize,
        panel0: usize,
        ask: Option<usize>,
        out: *mut f32,
    ) {
        let groups = w.groups;
        let width = groups * GROUP;
        let wp = w.values.as_ptr();
        let xp = acts.bytes.as_ptr();
        let mut acc = [[[_mm512_setzero_si512(); C]; P]; R];
        for g in 0..groups {
            let mut wv = [_mm512_setzero_si512(); C];
            // Safety: panel (panel0 + c) has `groups` groups of 64 bytes; each plane of row
            // i0 + r of the activations has `width` bytes.
            unsafe {
                for c in 0..C {
                    let at = ((panel0 + c) * groups + g) * PANEL * GROUP;
                    if let Some(ahead) = ask {
                        super::super::matmul::prefetch_ahead(wp.add(at), ahead);
                    }
                    wv[c] = _mm512_loadu_si512(wp.add(at) as *const __m512i);
                }
                for r in 0..R {
                    for p in 0..P {
                        let plane = ((i0 + r) * P + p) * width;
                        let four = (xp.add(plane + g * GROUP) as *const i32).read_unaligned();
                        let xv = _mm512_set1_epi32(four);
                        for c in 0..C {
                            acc[r][p][c] = _mm512_dpbusd_epi32(acc[r][p][c], xv, wv[c]);
                        }
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
                    let mut sums = [_mm512_setzero_si512(); P];
                    for p in 0..P {
                        sums[p] = _mm512_sub_epi32(acc[r][p][c], offsets);
                    }
                    let v = combine(sums);
                    let v = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(acts.scales[i])), scales);
                    _mm512_mask_storeu_ps(out.add(i * w.rows + col), mask, v);
                }
            }
        }
    }

    /// `super::finish`'s total on 16 lanes, rounded to f32: one plane converts directly;
    /// several are combined in f64, where every product and sum is exact (|total| < 2⁵³),
    /// so the one rounding to f32 is the integer's, as `i64 as f32` rounds it.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn combine<const P: usize>(sums: [__m512i; P]) -> __m512 {
        if P == 1 {
            return _mm512_cvtepi32_ps(sums[0]);
        }
        let (mut lo, mut hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let mut weight = 1.0f64;
        for s in sums {
            let w = _mm512_set1_pd(weight);
            let low_lanes = _mm512_cvtepi32_pd(_mm512_castsi512_si256(s));
            let high_lanes = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64::<1>(s));
            lo = _mm512_add_pd(lo, _mm512_mul_pd(low_lanes, w));
            hi = _mm512_add_pd(hi, _mm512_mul_pd(high_lanes, w));
            weight *= f64::from(BASE);
        }
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castps_pd(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo))),
            _mm256_castps_pd(_mm512_cvtpd_ps(hi)),
        ))
    }
}

/// CPUs with AVX2 but not AVX-512 VNNI (Zen 2 and 3, Intel's client cores): the same
/// integers, from activations prepared once per product (`Activations::signed` or `wide`).
/// - One plane: `vpmaddubsw` multiplies unsigned by signed bytes into i16 pairs. With the
///   stored bytes (1..=255) those pairs could pass i16's range (2 × 255 × 127), so each
///   activation's magnitude is the unsigned operand and its sign moves onto the weight
///   (`vpsignb`), as llama.cpp's AVX2 dot products do: a pair stays within 2 × 127², and
///   `vpmaddwd` sums pairs into i32. Several rows share each load of the weights.
/// - Three planes: each row's 24-bit integers as two i16 planes against the weights widened
///   to i16 (`vpmaddwd`), summed in i32 and then i64.
///
/// These sums carry no offset; the output is `finish`'s, as the portable one.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::matmul::store_half_panel;
    use super::{Activations, W8a8, GROUP, PANEL};

    /// Half the range of the low part of a widened activation.
    const HALF: i32 = 2048;

    /// Each row's activations (three planes of digits, `[m][3][width]` bytes offset by 128)
    /// as exact integers `lo + 4096 × hi`, `|lo| ≤ 2048`, `|hi| ≤ 2025`: two i16 planes per
    /// row, `[m][2][width]`.
    ///
    /// Safety: needs AVX2.
    pub(super) unsafe fn widen(bytes: &[u8], width: usize) -> Vec<i16> {
        per_row(bytes, 3, 2, width, |row, dst| {
            let (lo, hi) = dst.split_at_mut(width);
            let (d0, rest) = row.split_at(width);
            let (d1, d2) = rest.split_at(width);
            // Safety: the caller's promise (the CPU has AVX2).
            unsafe { widen_row(d0, d1, d2, lo, hi) };
        })
    }

    /// Each row of `bytes` (`from` planes of `width`) made by `f` into `to` planes of
    /// `width` values, the rows spread over the threads as the quantization spreads them.
    fn per_row<T: Copy + Default + Send>(
        bytes: &[u8],
        from: usize,
        to: usize,
        width: usize,
        f: impl Fn(&[u8], &mut [T]) + Sync,
    ) -> Vec<T> {
        use rayon::prelude::*;
        let rows = bytes.len() / (from * width).max(1);
        let mut out = vec![T::default(); rows * to * width];
        out.par_chunks_exact_mut((to * width).max(1))
            .zip(bytes.par_chunks_exact((from * width).max(1)))
            .with_min_len(super::super::matmul::rows_per_thread(rows, width))
            .for_each(|(dst, row)| f(row, dst));
        out
    }

    /// Compiled for AVX2, so that the loop runs eight values at a time.
    #[target_feature(enable = "avx2")]
    unsafe fn widen_row(d0: &[u8], d1: &[u8], d2: &[u8], lo: &mut [i16], hi: &mut [i16]) {
        let digit = |b: u8| i32::from((b ^ 0x80) as i8);
        for ((((&a, &b), &c), l), h) in d0.iter().zip(d1).zip(d2).zip(lo).zip(hi) {
            let x = digit(a) + super::BASE * (digit(b) + super::BASE * digit(c));
            // x = low + 4096 × high, low in -2048..2048.
            let low = ((x + HALF) & (2 * HALF - 1)) - HALF;
            *l = low as i16;
            *h = ((x - low) >> (2 * HALF).trailing_zeros()) as i16;
        }
    }

    /// Safety: needs AVX2; see `W8a8::tile`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile(
        w: &W8a8,
        acts: &Activations,
        i0: usize,
        rows: usize,
        panel0: usize,
        panels: usize,
        out: *mut f32,
    ) {
        if !acts.signed.is_empty() {
            for panel in panel0..panel0 + panels {
                for i in (i0..i0 + rows).step_by(ROWS) {
                    // Safety: forwarded; the rows and the panel lie inside the tile.
                    unsafe {
                        match (i0 + rows - i).min(ROWS) {
                            1 => rows_panel_signed::<1>(w, acts, i, panel, out),
                            2 => rows_panel_signed::<2>(w, acts, i, panel, out),
                            3 => rows_panel_signed::<3>(w, acts, i, panel, out),
                            _ => rows_panel_signed::<ROWS>(w, acts, i, panel, out),
                        }
                    }
                }
            }
            return;
        }
        if acts.wide.is_empty() {
            // Activations not prepared for these kernels (a test's): the same integers.
            // Safety: forwarded.
            return unsafe { w.tile_portable(acts, i0, rows, panel0, panels, out) };
        }
        for i in i0..i0 + rows {
            // The tile's first row reads its panels from memory.
            let ahead = (i == i0).then_some(WIDE_AHEAD);
            for panel in panel0..panel0 + panels {
                // Safety: forwarded; the row and panel lie inside the tile.
                unsafe { row_panel_wide(w, acts, i, panel, ahead, out) };
            }
        }
    }

    /// Rows of the one-plane kernel's register tile: two sums each, beside the two weight
    /// vectors and each row's two broadcasts. On Zen 4 running AVX2 the 32-row product of a
    /// 4096 × 2048 matrix went from 169 to 202 GOP/s with four rows, 188 with three, 179 with
    /// two (medians of six; benchmarks/README.md).
    const ROWS: usize = 4;

    /// Each row's bytes (one plane, offset by 128) as `vpmaddubsw` takes them: the
    /// magnitudes, then the signed values, `[m][2][width]`, so that the kernel does not
    /// rederive them for every panel.
    ///
    /// Safety: needs AVX2.
    pub(super) unsafe fn split_signs(bytes: &[u8], width: usize) -> Vec<u8> {
        // Safety: the caller's promise (the CPU has AVX2).
        per_row(bytes, 1, 2, width, |row, dst| unsafe {
            split_row(row, dst)
        })
    }

    /// Compiled for AVX2, so that the loop runs 32 bytes at a time.
    #[target_feature(enable = "avx2")]
    unsafe fn split_row(row: &[u8], dst: &mut [u8]) {
        let (magnitudes, values) = dst.split_at_mut(row.len());
        for ((&b, m), v) in row.iter().zip(magnitudes).zip(values) {
            let x = (b ^ 0x80) as i8;
            *m = x.unsigned_abs();
            *v = x as u8;
        }
    }

    /// Rows `i..i + R` of one plane against one panel: each group's weights loaded once for
    /// all the rows, the sign of each row's activation moved onto them (`vpsignb`).
    ///
    /// Safety: needs AVX2; `acts.signed` holds the rows; they and the panel lie inside the
    /// activations, the weights and `out` (the `[m, rows]` output), of which only their
    /// columns are written.
    // Index loops over register tiles read clearer than iterator chains here.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn rows_panel_signed<const R: usize>(
        w: &W8a8,
        acts: &Activations,
        i: usize,
        panel: usize,
        out: *mut f32,
    ) {
        let groups = w.groups;
        let width = groups * GROUP;
        let ones = _mm256_set1_epi16(1);
        // Safety: the panel's groups lie inside the weights.
        let wp = unsafe { w.values.as_ptr().add(panel * groups * PANEL * GROUP) };
        let sp = acts.signed.as_ptr();
        let broadcast = |r: usize, part: usize, g: usize| {
            // Safety: row i + r's two parts of `width` bytes lie inside `acts.signed`.
            let at = unsafe { sp.add(((i + r) * 2 + part) * width + g * GROUP) };
            _mm256_set1_epi32(unsafe { (at as *const i32).read_unaligned() })
        };
        // Per row, the panel's columns 0..8 and 8..16.
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for g in 0..groups {
            // Safety: the panel has `groups` groups of 64 bytes.
            let wv: [__m256i; 2] = std::array::from_fn(|h| unsafe {
                _mm256_loadu_si256(wp.add(g * PANEL * GROUP + h * 32) as *const __m256i)
            });
            for r in 0..R {
                let (magnitude, x) = (broadcast(r, 0, g), broadcast(r, 1, g));
                for h in 0..2 {
                    let pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(wv[h], x));
                    acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(pairs, ones));
                }
            }
        }
        let col = panel * PANEL;
        for r in 0..R {
            let x_scale = _mm256_set1_ps(acts.scales[i + r]);
            let row = out.wrapping_add((i + r) * w.rows);
            for h in 0..2 {
                // `finish` of one plane: the integer rounded to f32, then the two scales.
                let lanes = col + 8 * h;
                let valid = w.rows.saturating_sub(lanes).min(8);
                if valid == 0 {
                    break;
                }
                let mut scales = [0.0f32; 8];
                scales[..valid].copy_from_slice(&w.scales[lanes..lanes + valid]);
                // Safety: eight f32 read from eight.
                let scales = unsafe { _mm256_loadu_ps(scales.as_ptr()) };
                let v = _mm256_mul_ps(
                    _mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][h]), x_scale),
                    scales,
                );
                // Safety: row i + r of the output; only its valid columns are written.
                unsafe { store_half_panel(row, w.rows, lanes, v) };
            }
        }
    }

    /// Groups summed in i32 before the sums move to i64: each lane gains at most
    /// 2 × 127 × 2025 per group (the largest 24-bit activation's high part is 2025).
    const GROUPS_PER_FLUSH: usize = 4096;

    /// How far ahead the widening kernel asks for its weights. It spends little on each
    /// line, and on Zen 4 running AVX2 its one-stream decode of Llama-3.2-1B's shape took
    /// 85 and 87% of the bandwidth bound asking 8 KiB ahead, against 62–67% asking nothing
    /// and 63–85% at 2 or 4 KiB; the demo model was level (benchmarks/README.md).
    const WIDE_AHEAD: usize = 8192;

    /// Three planes as two of i16 (`acts.wide`): weights widened to i16 once per group and
    /// multiplied by `vpmaddwd`, eight multiplies per 64 weights where the digits took twelve.
    /// The same exact integers, so the same bits.
    ///
    /// Safety: needs AVX2; `acts.wide` holds row `i`'s two planes; see `W8a8::tile`.
    // Index loops over register tiles read clearer than iterator chains here.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn row_panel_wide(
        w: &W8a8,
        acts: &Activations,
        i: usize,
        panel: usize,
        ahead: Option<usize>,
        out: *mut f32,
    ) {
        let groups = w.groups;
        let width = groups * GROUP;
        let wp = w.values.as_ptr();
        let lo = acts.wide.as_ptr().wrapping_add(i * 2 * width);
        let hi = lo.wrapping_add(width);
        // Per column, its two pair sums (k 0+1 and 2+3 of each group), low and high part.
        let mut totals = [[0i64; 2 * PANEL]; 2];
        let mut g0 = 0;
        while g0 < groups {
            let g1 = (g0 + GROUPS_PER_FLUSH).min(groups);
            // Per part, columns 4q..4q+4, two lanes each.
            let mut acc = [[_mm256_setzero_si256(); 4]; 2];
            for g in g0..g1 {
                // Safety: the panel has `groups` groups of 64 bytes; each wide plane of the
                // row has `width` values.
                unsafe {
                    let at = (panel * groups + g) * PANEL * GROUP;
                    if let Some(ahead) = ahead {
                        super::super::matmul::prefetch_ahead(wp.add(at), ahead);
                    }
                    let halves = [
                        _mm256_loadu_si256(wp.add(at) as *const __m256i),
                        _mm256_loadu_si256(wp.add(at + 32) as *const __m256i),
                    ];
                    let wv = [
                        _mm256_cvtepi8_epi16(_mm256_castsi256_si128(halves[0])),
                        _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(halves[0])),
                        _mm256_cvtepi8_epi16(_mm256_castsi256_si128(halves[1])),
                        _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(halves[1])),
                    ];
                    for (part, base) in [lo, hi].into_iter().enumerate() {
                        let x = _mm256_set1_epi64x(
                            (base.add(g * GROUP) as *const i64).read_unaligned(),
                        );
                        for q in 0..4 {
                            acc[part][q] =
                                _mm256_add_epi32(acc[part][q], _mm256_madd_epi16(wv[q], x));
                        }
                    }
                }
            }
            for part in 0..2 {
                for q in 0..4 {
                    let mut lanes = [0i32; 8];
                    // Safety: eight i32 lanes into eight.
                    unsafe {
                        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc[part][q])
                    };
                    for (l, v) in lanes.into_iter().enumerate() {
                        totals[part][8 * q + l] += i64::from(v);
                    }
                }
            }
            g0 = g1;
        }
        let col = panel * PANEL;
        for l in 0..w.rows.saturating_sub(col).min(PANEL) {
            let part = |p: usize| totals[p][2 * l] + totals[p][2 * l + 1];
            let total = part(0) + 2 * i64::from(HALF) * part(1);
            let v = super::scaled(total, acts.scales[i], w.scales[col + l]);
            // Safety: a valid column of this row, inside the tile.
            unsafe { *out.add(i * w.rows + col + l) = v };
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

    const BOTH: [Activation; 2] = [Activation::Int8, Activation::Int24];

    /// The AVX2 kernels on the activations they are given where the CPU lacks VNNI (three
    /// planes widened, one plane's signs apart), the whole product and each row alone as a
    /// one-row tile, against `want`.
    #[cfg(target_arch = "x86_64")]
    fn assert_avx2_prepared_matches(w: &W8a8, mut acts: Activations, want: &[f32], a: Activation) {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        let (m, n) = (acts.scales.len(), w.rows);
        // Safety (both): the CPU has AVX2.
        if acts.planes == 3 {
            acts.wide = unsafe { avx2::widen(&acts.bytes, w.groups * GROUP) };
        } else {
            acts.signed = unsafe { avx2::split_signs(&acts.bytes, w.groups * GROUP) };
        }
        let panels = n.div_ceil(PANEL);
        let mut all = vec![0.0; m * n];
        let mut alone = vec![0.0; m * n];
        for panel0 in (0..panels).step_by(4) {
            let count = 4.min(panels - panel0);
            unsafe { avx2::tile(w, &acts, 0, m, panel0, count, all.as_mut_ptr()) };
            for i in 0..m {
                unsafe { avx2::tile(w, &acts, i, 1, panel0, count, alone.as_mut_ptr()) };
            }
        }
        assert_eq!(all, want, "{m}x{n}x{}: AVX2 prepared path ({a:?})", w.cols);
        assert_eq!(
            alone, want,
            "{m}x{n}x{}: AVX2 prepared, one row ({a:?})",
            w.cols
        );
    }

    /// The AVX2 kernels' sums at their largest: every weight and activation at its extreme.
    /// For three planes, over more groups than the widened kernel adds in i32 before moving
    /// them to i64, so a flush too late would overflow; for one, every `vpmaddubsw` pair at
    /// 2 × 127².
    #[test]
    fn the_avx2_paths_are_exact_at_the_largest_sums() {
        // 8300 groups: twice what i32 holds at the three planes' sums.
        let (m, n, k) = (2, 20, 4 * 8300 + 3);
        let data: Vec<f32> = (0..n * k)
            .map(|i| if i < 3 * k { -1.0 } else { 1.0 })
            .collect();
        let x: Vec<f32> = (0..m * k).map(|i| if i < k { 1.0 } else { -1.0 }).collect();
        let w = W8a8::quantize(n, k, &data);
        for a in BOTH {
            let want = integer_reference(&w, &x, m, a);
            assert_eq!(w.matmul(&x, m, a), want);
            #[cfg(target_arch = "x86_64")]
            assert_avx2_prepared_matches(&w, w.quantize_activations(&x, m, k, a), &want, a);
        }
    }

    /// What the integers say, computed the plain way from the quantized values: each
    /// activation rebuilt from its digits, one i64 sum.
    fn integer_reference(w: &W8a8, x: &[f32], m: usize, activation: Activation) -> Vec<f32> {
        let acts = w.quantize_activations(x, m, w.cols, activation);
        let width = w.groups * GROUP;
        let planes = activation.planes();
        let mut out = vec![0.0; m * w.rows];
        for i in 0..m {
            for j in 0..w.rows {
                let mut total = 0i64;
                for c in 0..w.cols {
                    let xq = (0..planes).rev().fold(0i64, |v, p| {
                        v * i64::from(BASE) + i64::from(acts.bytes[(i * planes + p) * width + c])
                            - 128
                    });
                    total += xq * i64::from(w.values[index(w.groups, j, c)]);
                }
                out[i * w.rows + j] = (total as f32) * acts.scales[i] * w.scales[j];
            }
        }
        out
    }

    /// Every integer of the 24-bit range has one set of three balanced digits, and the
    /// vector split finds the integer version's (its f32 quotient misses by one near the
    /// halfway points, which the check below would catch).
    #[test]
    fn digits_rebuild_every_integer() {
        let check = |x: i32| {
            let (d0, rest) = split_digit(x);
            let (d1, d2) = split_digit(rest);
            for d in [d0, d1, d2] {
                assert!((-127..=127).contains(&d), "{x}: digit {d}");
            }
            assert_eq!(d0 + BASE * (d1 + BASE * d2), x);
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512f") {
                use std::arch::x86_64::*;
                let lanes: [[i32; 16]; 2] = unsafe {
                    let (d, rest) = split_digit_avx512(_mm512_set1_epi32(x));
                    std::mem::transmute((d, rest))
                };
                assert_eq!((lanes[0][0], lanes[1][0]), (d0, rest), "{x}");
            }
        };
        for x in (-WIDE_MAX..=WIDE_MAX).step_by(997) {
            check(x);
        }
        // Both ends, and either side of every halfway point of the first digit near them.
        for x in [-WIDE_MAX, WIDE_MAX, 0, 1, -1, 127, 128, -127, -128] {
            check(x);
        }
        for q in [1, 2, 1000, 32_511, 32_512, 32_513, 32_639] {
            for d in [126, 127, 128, 129] {
                for x in [q * BASE + d, -(q * BASE + d), q * BASE - d, -(q * BASE - d)] {
                    if x.abs() <= WIDE_MAX {
                        check(x);
                    }
                }
            }
        }
    }

    /// The vector quantizers give the portable one's bytes and scale on every length (tails)
    /// and on values a request can produce: NaN, infinities, signed zeros, halves that round
    /// away from zero, subnormals, an all-zero row.
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
        for (len, activation) in [1usize, 5, 15, 16, 17, 33, 64, 95, 576]
            .into_iter()
            .flat_map(|len| BOTH.map(|a| (len, a)))
        {
            for case in 0..7 {
                let row: Vec<f32> = (0..len)
                    .map(|i| match case {
                        0 => 0.0,
                        1 => rng.random_range(-3.0..3.0),
                        2 => special[i % special.len()],
                        // Exact halves of the scale: 127 × i / len steps.
                        3 => (i as f32 - len as f32 / 2.0) * 0.5,
                        4 if i == len / 2 => f32::NAN,
                        // Evenly spaced across -1..1: many digit carries in the 24-bit split.
                        5 => (i as f32 - len as f32 / 2.0) / len as f32 * 2.0,
                        _ => rng.random_range(-1e6..1e6),
                    })
                    .collect();
                let planes = activation.planes();
                let (mut a, mut b) = (vec![128u8; len * planes], vec![128u8; len * planes]);
                let sa = quantize_portable(&row, &mut a, len, activation);
                let sb = quantize_into(&row, &mut b, len, activation);
                assert_eq!(
                    (sa.to_bits(), &a),
                    (sb.to_bits(), &b),
                    "{len} {case} {activation:?} {row:?}"
                );
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    let mut c = vec![128u8; len * planes];
                    // Safety: the CPU has AVX2.
                    let sc = unsafe { quantize_avx2(&row, &mut c, len, activation) };
                    assert_eq!(
                        (sa.to_bits(), &a),
                        (sc.to_bits(), &c),
                        "AVX2: {len} {case} {activation:?} {row:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_path_and_batch_gives_the_integer_answer() {
        for activation in BOTH {
            every_path_and_batch(activation);
        }
    }

    fn every_path_and_batch(activation: Activation) {
        let planes = activation.planes();
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
            let got = w.matmul(&x, m, activation);
            let want = integer_reference(&w, &x, m, activation);
            assert_eq!(got, want, "{m}x{n}x{k} {activation:?}");
            for i in 0..m {
                let alone = w.matmul(&x[i * k..(i + 1) * k], 1, activation);
                assert_eq!(alone, got[i * n..(i + 1) * n]);
            }
            // The portable tile, on the whole product.
            let acts = w.quantize_activations(&x, m, k, activation);
            // Activations quantized by the portable build equal those of the dispatched one.
            let width = w.groups * GROUP;
            for i in 0..m {
                let mut bytes = vec![128u8; width * planes];
                let scale =
                    quantize_portable(&x[i * k..(i + 1) * k], &mut bytes, width, activation);
                assert_eq!(
                    bytes,
                    acts.bytes[i * planes * width..(i + 1) * planes * width],
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
            #[cfg(target_arch = "x86_64")]
            assert_avx2_prepared_matches(&w, acts, &got, activation);
            // Within the two quantizations of f32's answer.
            for i in 0..m {
                let xs = scale_from(row_max(&x[i * k..(i + 1) * k]), activation.levels());
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
