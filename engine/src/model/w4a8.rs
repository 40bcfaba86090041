//! W4A8 products (`dtype: w4a8`): 4-bit weights in blocks of 32 along k, each block with its
//! own f32 scale (llama.cpp's Q4_0 rounding: the block's largest-magnitude weight maps to
//! -8, the rest round to the nearest of -8..=7 steps), times int8 activations quantized per
//! token as in `w8a8`. A weight takes 0.625 bytes, five eighths of `int8`'s.
//!
//! Each block's integers are summed exactly in int32 (AVX-512 VNNI's `vpdpbusd` where the
//! CPU has it), then converted and added into an f32 sum with the block's scale, one fused
//! multiply-add per block in k order; the activation scale multiplies the total once. An
//! output's arithmetic is the same whatever the batch, the tile and the CPU path.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: the weights are the unsigned side, stored
//! offset by 8 (0..=15), and 8 × the block's activation sum is taken off each block's sum.
//!
//! Layout: panels of 16 output columns; per block of 32 k, four 64-byte vectors, each
//! holding two groups of 4 k for the 16 columns (the first group in the low nibbles), then
//! the block's 16 scales (f32): `[rows / 16][cols / 32]` units of `[4][16][4]` bytes and
//! `[16]` f32. Each panel is one stream of memory: with the scales apart, a one-row tile of
//! four panels read eight, and streamed its weights a fifth slower (benchmarks/README).
//! Columns past the last are zero weights.

use rayon::prelude::*;

use super::matmul::{rows_per_thread, tiled_product, PANEL, PANELS_PER_TASK};
use super::w8a8::quantize_row;

/// k values per 32-bit lane.
const GROUP: usize = 4;
/// k values per weight scale.
const BLOCK: usize = 32;
/// 64-byte vectors per panel per block (two groups each).
const VECTORS: usize = BLOCK / GROUP / 2;
/// Bytes of a panel's block of weights, and of the unit they lead: then its 16 scales.
const NIBBLE_BYTES: usize = VECTORS * PANEL * GROUP;
const UNIT: usize = NIBBLE_BYTES + PANEL * 4;
/// Panels per register tile: two keep 6 × 2 integer and 6 × 2 f32 sums in registers. A
/// single row takes four, each with two integer sums so that more `vpdpbusd` chains are in
/// flight (a row alone is bound by their latency, not by the weights' bytes).
const TILE_PANELS: usize = 2;
const ROW_PANELS: usize = 4;

/// A weight matrix for W4A8 products.
pub struct W4a8 {
    rows: usize,
    cols: usize,
    blocks: usize,
    /// The weights and their scales, in units (see the module doc).
    units: crate::memory::Buffer<u8>,
}

/// A row of x and its quantized bytes; its scale and block sums.
type RowIn<'a> = (&'a [f32], &'a mut [i8]);
type RowOut<'a> = (&'a mut f32, &'a mut [i32]);

/// Activations quantized per row: signed bytes (zero past the last column), the row's scale,
/// and the sum of each block's bytes.
struct Activations {
    bytes: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
}

impl W4a8 {
    /// Quantizes row-major f32 weights per block of 32 along each output row.
    pub fn quantize(rows: usize, cols: usize, data: &[f32]) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        let blocks = cols.div_ceil(BLOCK);
        let panels = rows.div_ceil(PANEL);
        let mut units = crate::memory::zeroed::<u8>(panels * blocks * UNIT);
        for (r, row) in data.chunks_exact(cols.max(1)).enumerate() {
            for (b, block) in row.chunks(BLOCK).enumerate() {
                let scale = block_scale(block);
                let at = scale_at(blocks, r, b);
                units[at..at + 4].copy_from_slice(&scale.to_ne_bytes());
                for (i, &v) in block.iter().enumerate() {
                    set_nibble(&mut units, blocks, r, b * BLOCK + i, quantize(v, scale));
                }
            }
            // Padding columns hold the weight 0 (stored as 8).
            for c in cols..blocks * BLOCK {
                set_nibble(&mut units, blocks, r, c, 0);
            }
        }
        Self {
            rows,
            cols,
            blocks,
            units,
        }
    }

    /// Bytes the weights occupy, scales included.
    pub fn bytes(&self) -> usize {
        self.units.len()
    }

    /// Copies row `r` into `out` as f32 (embedding lookup): each weight times its block's
    /// scale.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        for (c, o) in out.iter_mut().enumerate().take(self.cols) {
            *o = f32::from(self.weight(r, c)) * self.scale(r, c / BLOCK);
        }
    }

    fn weight(&self, r: usize, c: usize) -> i8 {
        let (at, high) = nibble_at(self.blocks, r, c);
        let byte = self.units[at];
        (if high { byte >> 4 } else { byte & 0x0f }) as i8 - 8
    }

    fn scale(&self, r: usize, b: usize) -> f32 {
        let at = scale_at(self.blocks, r, b);
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&self.units[at..at + 4]);
        f32::from_ne_bytes(bytes)
    }

    /// `x` is `[m, cols]`; returns `[m, rows]` = x W^T.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        debug_assert_eq!(x.len(), m * self.cols);
        let acts = self.quantize_activations(x, m);
        let step = if m == 1 { ROW_PANELS } else { TILE_PANELS };
        let tile = |i, rows, p, panels, _, out| {
            // Safety: tiles never overlap (`tiled_product`).
            unsafe { self.tile(&acts, i, rows, p, panels, out) }
        };
        // Safety: every tile writes all of its elements, and only those.
        unsafe { tiled_product(self.rows, m, PANELS_PER_TASK, step, tile) }
    }

    fn quantize_activations(&self, x: &[f32], m: usize) -> Activations {
        let (k, width) = (self.cols, self.blocks * BLOCK);
        let mut bytes = vec![0i8; m * width];
        let mut scales = vec![0.0f32; m];
        let mut sums = vec![0i32; m * self.blocks];
        let quantize_one = |((row, dst), (scale, sums)): (RowIn<'_>, RowOut<'_>)| {
            // w8a8's quantizer gives bytes offset by 128; flipping the top bit makes them
            // the same values as signed bytes.
            let mut offset = vec![128u8; width];
            *scale = quantize_row(row, &mut offset);
            for (d, o) in dst.iter_mut().zip(&offset) {
                *d = (o ^ 0x80) as i8;
            }
            for (s, block) in sums.iter_mut().zip(dst.chunks_exact(BLOCK)) {
                *s = block.iter().map(|&v| i32::from(v)).sum();
            }
        };
        x.par_chunks_exact(k.max(1))
            .zip(bytes.par_chunks_exact_mut(width.max(1)))
            .zip(
                scales
                    .par_iter_mut()
                    .zip(sums.par_chunks_exact_mut(self.blocks.max(1))),
            )
            .with_min_len(rows_per_thread(m, k))
            .for_each(quantize_one);
        Activations {
            bytes,
            scales,
            sums,
        }
    }

    /// One register tile: `rows` rows of x from `i0` against `panels` panels from `panel0`
    /// (at most 2, or 4 for one row).
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
        {
            if super::w8a8::vnni_available() {
                // Safety: the CPU has the features; forwarded.
                return unsafe { vnni::tile(self, acts, i0, rows, panel0, panels, out) };
            }
            if crate::cpu::has!(Avx2: "avx2", "fma") {
                // Safety: as above.
                return unsafe { avx2::tile(self, acts, i0, rows, panel0, panels, out) };
            }
        }
        // Safety: forwarded.
        unsafe { self.tile_portable(acts, i0, rows, panel0, panels, out) }
    }

    /// The same integers and the same f32 operations, one output at a time.
    unsafe fn tile_portable(
        &self,
        acts: &Activations,
        i0: usize,
        rows: usize,
        panel0: usize,
        panels: usize,
        out: *mut f32,
    ) {
        let width = self.blocks * BLOCK;
        let c0 = panel0 * PANEL;
        let c1 = ((panel0 + panels) * PANEL).min(self.rows);
        for i in i0..i0 + rows {
            let x = &acts.bytes[i * width..(i + 1) * width];
            for j in c0..c1 {
                let mut acc = 0.0f32;
                for b in 0..self.blocks {
                    let range = b * BLOCK..(b + 1) * BLOCK;
                    let sum: i32 = x[range.clone()]
                        .iter()
                        .zip(range)
                        .map(|(&xc, c)| (i32::from(self.weight(j, c)) + 8) * i32::from(xc))
                        .sum();
                    let sum = sum - 8 * acts.sums[i * self.blocks + b];
                    acc = (sum as f32).mul_add(self.scale(j, b), acc);
                }
                // Safety: (i, j) lies in this tile.
                unsafe { *out.add(i * self.rows + j) = acc * acts.scales[i] };
            }
        }
    }
}

/// A block's scale: its largest-magnitude weight over -8, so that weight is exactly -8
/// steps; 1 for a block of zeros (or one holding NaN or an infinity, whose steps saturate).
/// (Choosing among divisors near -8 for the least squared error, as llama.cpp's K-quants
/// do, changed the drift below by under 10% on the generated models: not kept.)
fn block_scale(block: &[f32]) -> f32 {
    let extreme = block
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if extreme != 0.0 && extreme.is_finite() {
        extreme / -8.0
    } else {
        1.0
    }
}

/// The nearest step, in -8..=7 (`as` saturates and maps NaN to 0).
fn quantize(v: f32, scale: f32) -> i8 {
    ((v / scale).round() as i32).clamp(-8, 7) as i8
}

/// The first byte of the unit of row `r`'s panel and block `b`.
fn unit_at(blocks: usize, r: usize, b: usize) -> usize {
    (r / PANEL * blocks + b) * UNIT
}

/// The first byte of row `r`'s scale for block `b`.
fn scale_at(blocks: usize, r: usize, b: usize) -> usize {
    unit_at(blocks, r, b) + NIBBLE_BYTES + (r % PANEL) * 4
}

/// The byte holding weight (r, c), and whether it is the high nibble.
fn nibble_at(blocks: usize, r: usize, c: usize) -> (usize, bool) {
    let (b, within) = (c / BLOCK, c % BLOCK);
    let (group, position) = (within / GROUP, within % GROUP);
    let vector = unit_at(blocks, r, b) + group / 2 * PANEL * GROUP;
    (vector + (r % PANEL) * GROUP + position, group % 2 == 1)
}

fn set_nibble(units: &mut [u8], blocks: usize, r: usize, c: usize, q: i8) {
    let (at, high) = nibble_at(blocks, r, c);
    let stored = (q + 8) as u8;
    let byte = units[at];
    units[at] = if high {
        (byte & 0x0f) | stored << 4
    } else {
        (byte & 0xf0) | stored
    };
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{Activations, W4a8, BLOCK, GROUP, NIBBLE_BYTES, PANEL, UNIT, VECTORS};

    /// Safety: needs AVX-512F/BW/VNNI; see `W4a8::tile`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile(
        w: &W4a8,
        acts: &Activations,
        i0: usize,
        rows: usize,
        panel0: usize,
        panels: usize,
        out: *mut f32,
    ) {
        macro_rules! shapes {
            ($($r:literal),*) => {
                match (rows, panels) {
                    (1, 4) => unsafe { tile_rc::<1, 4, 2>(w, acts, i0, panel0, out) },
                    (1, 3) => unsafe { tile_rc::<1, 3, 2>(w, acts, i0, panel0, out) },
                    (1, 2) => unsafe { tile_rc::<1, 2, 2>(w, acts, i0, panel0, out) },
                    (1, _) => unsafe { tile_rc::<1, 1, 2>(w, acts, i0, panel0, out) },
                    $(
                        ($r, 2) => unsafe { tile_rc::<$r, 2, 1>(w, acts, i0, panel0, out) },
                        ($r, _) => unsafe { tile_rc::<$r, 1, 1>(w, acts, i0, panel0, out) },
                    )*
                    _ => unreachable!("row tiles hold 1 to 6 rows"),
                }
            };
        }
        shapes!(2, 3, 4, 5, 6)
    }

    // Index loops over register tiles read clearer than iterator chains here.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_rc<const R: usize, const C: usize, const S: usize>(
        w: &W4a8,
        acts: &Activations,
        i0: usize,
        panel0: usize,
        out: *mut f32,
    ) {
        let blocks = w.blocks;
        let width = blocks * BLOCK;
        let wp = w.units.as_ptr();
        let xp = acts.bytes.as_ptr();
        let low = _mm512_set1_epi8(0x0f);
        let ahead = super::super::matmul::row_ahead(w.cols);
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for b in 0..blocks {
            // S independent integer sums per output vector (added exactly at the end).
            let mut sums = [[[_mm512_setzero_si512(); C]; R]; S];
            for v in 0..VECTORS {
                let mut first = [_mm512_setzero_si512(); C];
                let mut second = [_mm512_setzero_si512(); C];
                // Safety: panel (panel0 + c) has `blocks` blocks of VECTORS vectors; row
                // i0 + r of the activations has `width` bytes.
                unsafe {
                    for c in 0..C {
                        let at = ((panel0 + c) * blocks + b) * UNIT + v * PANEL * GROUP;
                        if R == 1 {
                            super::super::matmul::prefetch_ahead(wp.add(at), ahead);
                        }
                        let bytes = _mm512_loadu_si512(wp.add(at) as *const __m512i);
                        first[c] = _mm512_and_si512(bytes, low);
                        second[c] = _mm512_and_si512(_mm512_srli_epi16::<4>(bytes), low);
                    }
                    for r in 0..R {
                        let at = xp.add((i0 + r) * width + b * BLOCK + v * 2 * GROUP);
                        let x0 = _mm512_set1_epi32((at as *const i32).read_unaligned());
                        let x1 = _mm512_set1_epi32((at.add(GROUP) as *const i32).read_unaligned());
                        // With two sums, the high nibbles' products go to the second.
                        let t = S - 1;
                        for c in 0..C {
                            sums[0][r][c] = _mm512_dpbusd_epi32(sums[0][r][c], first[c], x0);
                            sums[t][r][c] = _mm512_dpbusd_epi32(sums[t][r][c], second[c], x1);
                        }
                    }
                }
            }
            for c in 0..C {
                // Safety: every unit ends with its 16 scales.
                let at = unsafe { wp.add(((panel0 + c) * blocks + b) * UNIT + NIBBLE_BYTES) };
                // The scales' line of the panel's stream.
                if R == 1 {
                    super::super::matmul::prefetch_ahead(at, ahead);
                }
                let scale = unsafe { _mm512_loadu_ps(at as *const f32) };
                for r in 0..R {
                    let offset = _mm512_set1_epi32(8 * acts.sums[(i0 + r) * blocks + b]);
                    let mut total = sums[0][r][c];
                    for s in 1..S {
                        total = _mm512_add_epi32(total, sums[s][r][c]);
                    }
                    let sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(total, offset));
                    acc[r][c] = _mm512_fmadd_ps(sum, scale, acc[r][c]);
                }
            }
        }
        for c in 0..C {
            let col = (panel0 + c) * PANEL;
            let mask = super::super::matmul::panel_mask(w.rows, col);
            for r in 0..R {
                let i = i0 + r;
                let v = _mm512_mul_ps(acc[r][c], _mm512_set1_ps(acts.scales[i]));
                // Safety: only the valid columns of this row are written.
                unsafe { _mm512_mask_storeu_ps(out.add(i * w.rows + col), mask, v) };
            }
        }
    }
}

/// CPUs with AVX2 but not AVX-512 VNNI (Zen 2 and 3, Intel's client cores): the same block
/// sums from `vpmaddubsw`, unsigned nibbles (0..=15) times signed activations (−127..=127)
/// into i16 pairs; then the same conversion and fused multiply-add per block as every other
/// path.
///
/// A block's sixteen products per i16 lane stay within 16 × 15 × 127 = 30,480, inside i16,
/// so its pairs are added in i16 and widened by one `vpmaddwd` per block, where one per
/// vector made every 64 weights cost five instructions beyond the multiplies. The nibbles
/// are unpacked once for all the rows of a register tile (up to `ROWS`).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::matmul::store_half_panel;
    use super::{Activations, W4a8, BLOCK, GROUP, NIBBLE_BYTES, PANEL, UNIT, VECTORS};

    /// Rows of a register tile: per row, two f32 sums and two i16 block sums. On Zen 4 running
    /// AVX2, two rows took the 32-row product of a 4096 × 2048 matrix from 231 to 295 GOP/s
    /// (medians of six), three rows to 252 (benchmarks/README.md).
    const ROWS: usize = 2;

    /// Safety: needs AVX2 and FMA; see `W4a8::tile`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(
        w: &W4a8,
        acts: &Activations,
        i0: usize,
        rows: usize,
        panel0: usize,
        panels: usize,
        out: *mut f32,
    ) {
        for panel in panel0..panel0 + panels {
            for i in (i0..i0 + rows).step_by(ROWS) {
                // Safety: forwarded; the rows and the panel lie inside the tile.
                unsafe {
                    if i0 + rows - i == 1 {
                        rows_panel::<1>(w, acts, i, panel, out)
                    } else {
                        rows_panel::<ROWS>(w, acts, i, panel, out)
                    }
                }
            }
        }
    }

    /// Rows `i..i + R` against one panel (both 8-column halves).
    ///
    /// Safety: needs AVX2 and FMA; the rows and the panel lie inside the activations, the
    /// weights and `out` (the `[m, rows]` output), of which only their columns are written.
    // Index loops over register tiles read clearer than iterator chains here.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_panel<const R: usize>(
        w: &W4a8,
        acts: &Activations,
        i: usize,
        panel: usize,
        out: *mut f32,
    ) {
        let width = w.blocks * BLOCK;
        let low = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let xp = acts.bytes.as_ptr();
        let group = |r: usize, b: usize, g: usize| {
            // Safety: row i + r's block b lies inside the activations.
            let at = unsafe { xp.add((i + r) * width + b * BLOCK + g * GROUP) };
            _mm256_set1_epi32(unsafe { (at as *const i32).read_unaligned() })
        };
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for b in 0..w.blocks {
            // Safety: the panel's unit for block b lies inside the weights.
            let unit = unsafe { w.units.as_ptr().add((panel * w.blocks + b) * UNIT) };
            // Per row, per half panel: the block's pair sums so far.
            let mut pairs = [[_mm256_setzero_si256(); 2]; R];
            for v in 0..VECTORS {
                // Vector v holds groups 2v (low nibbles) and 2v + 1 (high nibbles), in two
                // halves of 8 columns.
                let nibbles: [(__m256i, __m256i); 2] = std::array::from_fn(|h| {
                    // Safety: inside the unit.
                    let bytes = unsafe {
                        _mm256_loadu_si256(unit.add(v * PANEL * GROUP + h * 32) as *const __m256i)
                    };
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low);
                    (_mm256_and_si256(bytes, low), hi)
                });
                for r in 0..R {
                    let (x_lo, x_hi) = (group(r, b, 2 * v), group(r, b, 2 * v + 1));
                    for (h, &(lo, hi)) in nibbles.iter().enumerate() {
                        let p = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo, x_lo),
                            _mm256_maddubs_epi16(hi, x_hi),
                        );
                        pairs[r][h] = _mm256_add_epi16(pairs[r][h], p);
                    }
                }
            }
            for h in 0..2 {
                // Safety: every unit ends with its 16 scales.
                let scales =
                    unsafe { _mm256_loadu_ps(unit.add(NIBBLE_BYTES + h * 32) as *const f32) };
                for r in 0..R {
                    let offset = _mm256_set1_epi32(8 * acts.sums[(i + r) * w.blocks + b]);
                    let sum = _mm256_sub_epi32(_mm256_madd_epi16(pairs[r][h], ones), offset);
                    acc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scales, acc[r][h]);
                }
            }
        }
        for r in 0..R {
            let x_scale = _mm256_set1_ps(acts.scales[i + r]);
            for (h, a) in acc[r].iter().enumerate() {
                let (row, col) = (out.wrapping_add((i + r) * w.rows), panel * PANEL + h * 8);
                // Safety: row i + r of the output; only its valid columns are written.
                unsafe { store_half_panel(row, w.rows, col, _mm256_mul_ps(*a, x_scale)) };
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

    /// What the integers and scales say, computed the plain way from the quantized values.
    fn reference(w: &W4a8, x: &[f32], m: usize) -> Vec<f32> {
        let acts = w.quantize_activations(x, m);
        let width = w.blocks * BLOCK;
        let mut out = vec![0.0; m * w.rows];
        for i in 0..m {
            for j in 0..w.rows {
                let mut acc = 0.0f32;
                for b in 0..w.blocks {
                    let sum: i32 = (b * BLOCK..(b + 1) * BLOCK)
                        .map(|c| i32::from(w.weight(j, c)) * i32::from(acts.bytes[i * width + c]))
                        .sum();
                    acc = (sum as f32).mul_add(w.scale(j, b), acc);
                }
                out[i * w.rows + j] = acc * acts.scales[i];
            }
        }
        out
    }

    #[test]
    fn every_path_and_batch_gives_the_same_answer() {
        for &(m, n, k, seed) in &[
            (1, 1, 1, 1),
            (7, 130, 66, 2),
            (13, 67, 100, 3),
            (32, 200, 576, 4),
            // Quantized across threads; each row alone (below) takes the serial path.
            (128, 40, 576, 5),
        ] {
            let x = random(seed, m * k);
            let data = random(seed + 100, n * k);
            let w = W4a8::quantize(n, k, &data);
            let got = w.matmul(&x, m);
            assert_eq!(got, reference(&w, &x, m), "{m}x{n}x{k}");
            for i in 0..m {
                assert_eq!(w.matmul(&x[i * k..(i + 1) * k], 1), got[i * n..(i + 1) * n]);
            }
            let acts = w.quantize_activations(&x, m);
            let mut portable = vec![0.0; m * n];
            for panel0 in (0..n.div_ceil(PANEL)).step_by(TILE_PANELS) {
                let panels = TILE_PANELS.min(n.div_ceil(PANEL) - panel0);
                unsafe { w.tile_portable(&acts, 0, m, panel0, panels, portable.as_mut_ptr()) };
            }
            assert_eq!(portable, got, "{m}x{n}x{k}: portable path");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                let mut avx2 = vec![0.0; m * n];
                for panel0 in (0..n.div_ceil(PANEL)).step_by(TILE_PANELS) {
                    let panels = TILE_PANELS.min(n.div_ceil(PANEL) - panel0);
                    unsafe { avx2::tile(&w, &acts, 0, m, panel0, panels, avx2.as_mut_ptr()) };
                }
                assert_eq!(avx2, got, "{m}x{n}x{k}: AVX2 path");
            }
            // Within the two quantizations of f32's answer: half a weight step per block
            // and half an activation step per element.
            for i in 0..m {
                let row = &x[i * k..(i + 1) * k];
                let xs = row.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
                for j in 0..n {
                    let wrow = &data[j * k..(j + 1) * k];
                    let want: f32 = row.iter().zip(wrow).map(|(a, b)| a * b).sum();
                    let bound: f32 = (0..k)
                        .map(|c| {
                            let ws = w.scale(j, c / BLOCK).abs();
                            (row[c].abs() + xs) * ws * 0.5 + wrow[c].abs() * xs * 0.5
                        })
                        .sum::<f32>()
                        * 1.01
                        + 1e-4;
                    assert!(
                        (got[i * n + j] - want).abs() <= bound,
                        "{m}x{n}x{k} ({i},{j}): {} vs {want}, bound {bound}",
                        got[i * n + j]
                    );
                }
            }
        }
    }

    /// Blocks whose stored nibbles are all 15 (but the one weight each block's scale maps to
    /// -8) against activations all 127: the AVX2 kernel's i16 pair sums reach their largest,
    /// 16 × 15 × 127, and must still give the plain integers.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_block_sums_hold_the_largest_products() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            return;
        }
        let (m, n, k) = (3, 20, 4 * BLOCK);
        let data: Vec<f32> = (0..n * k)
            .map(|i| if i % BLOCK == 0 { -1.0 } else { 0.875 })
            .collect();
        let w = W4a8::quantize(n, k, &data);
        assert_eq!(w.weight(0, 1), 7, "stored as 15");
        let x = vec![1.0; m * k];
        let acts = w.quantize_activations(&x, m);
        assert!(acts.bytes.iter().all(|&b| b == 127));
        let panels = n.div_ceil(PANEL);
        let mut avx2 = vec![0.0; m * n];
        // Safety: the CPU has the features; the tile covers the whole output.
        unsafe { avx2::tile(&w, &acts, 0, m, 0, panels, avx2.as_mut_ptr()) };
        assert_eq!(avx2, reference(&w, &x, m));
    }

    /// Q4_0's rounding: the largest magnitude is exactly -8 steps, the rest to the nearest
    /// step within -8..=7; zeros, NaN and infinities quantize without a panic.
    #[test]
    fn blocks_round_as_q4_0_does() {
        let mut row: Vec<f32> = (0..40).map(|i| (i as f32 - 20.0) / 10.0).collect();
        row[3] = 4.0;
        let w = W4a8::quantize(1, 40, &row);
        assert_eq!(w.scale(0, 0), -0.5);
        assert_eq!(w.weight(0, 3), -8);
        assert_eq!(w.weight(0, 0), 4); // -2.0 / -0.5
        assert_eq!(w.weight(0, 1), 4); // -1.9 / -0.5 = 3.8
        assert_eq!(w.weight(0, 39), -8); // the second block's largest
        assert_eq!(w.scale(0, 1), 1.9 / -8.0);
        let mut out = vec![0.0; 40];
        w.row_into(0, &mut out);
        assert_eq!(out[3], 4.0);
        for special in [0.0, f32::NAN, f32::INFINITY] {
            let w = W4a8::quantize(2, 3, &[special, 1.0, -1.0, 0.0, 0.0, 0.0]);
            let y = w.matmul(&[1.0, 2.0, 3.0], 1);
            assert_eq!(y.len(), 2);
            assert_eq!(y[1], 0.0);
        }
    }
}
