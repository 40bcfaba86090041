//! Weight matrices and the CPU matrix product behind every linear layer.
//!
//! Why not candle's matmul: its gemm picks a different summation order for different numbers
//! of rows, so a sequence's logits would change in the last bits with the batch it runs in,
//! and greedy outputs could differ between batched and unbatched runs. Here every output
//! element is one fused multiply-add chain over k in order, whatever the batch and whatever
//! tile it lands in: results are bit-identical for a row alone or among any others, and on
//! every CPU path with FMA. It also reads bf16 weights directly (module `bf16`, with the
//! same chains), halving memory traffic. The 8-bit and 4-bit formats sum integers, which do
//! not depend on their order, and quantize each row of activations on its own, so they are
//! exactly as batch-invariant (modules `w8a8`, `w4a8`).
//!
//! Layout: weights are packed at load into panels of 16 output columns, k-major
//! (`[n / 16][k][16]`), so the kernel is an outer product: per k it loads a few 16-wide
//! weight vectors and broadcasts one x value per row into a block of accumulators (6 rows ×
//! 4 panels on AVX-512), which keeps the FMA units busy for large batches and streams the
//! weights once, contiguously, for a single row. The int8, W8A8, W4A8 and bf16 formats have
//! layouts and kernels of their own (modules `w8a8`, `w4a8`, `bf16`) and share this module's
//! split of the product into parallel tasks.

use std::sync::atomic::{AtomicUsize, Ordering};

use half::bf16;
use rayon::prelude::*;

use super::w8a8::Activation;
use crate::memory::SharedMut;

/// Output columns per panel: one AVX-512 vector of f32 (or i32). Every format packs its
/// weights in panels of this width: the task split and the output masks count in them.
pub(super) const PANEL: usize = 16;
/// Panels per kernel call (64 output columns): the register tile's width.
pub(super) const PANELS_PER_TASK: usize = 4;
/// Panels per kernel call for a single row, whose tile holds one accumulator per panel.
pub(super) const PANELS_PER_ROW: usize = 8;
/// Rows of x per register tile.
const ROW_TILE: usize = 6;
/// Blocks per thread a product needs before its rows are split too (narrow matrices).
const TASKS_PER_THREAD: usize = 4;

/// Asks for the line `ahead` bytes past `at` in a panel's stream into L2, once per line
/// loaded: the hardware prefetcher alone keeps too few lines in flight across a tile's
/// several panel streams to reach the memory's bandwidth. A hint: it never faults, even past
/// the end.
///
/// Into L2 (`T1`), not L1 (`T0`): on a Zen 4 EPYC, whose L1 is 32 KiB and 8-way (Zen 5's is
/// 48 KiB and 12-way), the lines 2 KiB ahead of eight streams fill half of L1, and asking
/// for them there made w4a8's one-stream decode 16–37% slower than asking for nothing; into
/// L2 it was close to nothing in decode and faster in the kernels alone. On a Zen 5 EPYC
/// both hints gave the same speed, ahead of nothing (benchmarks/README.md).
///
/// Only the single-row tiles (decode) that spend long on each line ask: w4a8's (the
/// nibbles) and int8's (three digit planes per line), as far ahead as [`row_ahead`] says. On
/// Zen 5 w4a8's one-stream decode gained 6–20% from it in alternated runs, the kernels alone
/// 8–40%; on Zen 4 int8's decode of the demo model gained 7–12 points of the bandwidth bound
/// (benchmarks/README.md). f32, bf16, w16a16 and w8a8 keep up with the memory without it,
/// and gained nothing or lost up to 12% with it on Zen 5. A tile of several rows computes
/// long enough per line for the hardware prefetcher (w4a8's took twice as long with it in
/// every such tile); only w8a8 asks, [`AHEAD`] on, in the first of a block's row tiles, the
/// one that reads the block from memory (on Zen 4, 5% off its 32-row product; w4a8 and int8
/// gained nothing from it).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn prefetch_ahead<T>(at: *const T, ahead: usize) {
    // Safety: a prefetch reads nothing and cannot fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
            (at as *const i8).wrapping_add(ahead),
        )
    }
}

/// How far ahead [`prefetch_ahead`] asks by default: int8 (widening, on Zen 5, demo model)
/// gained two thirds as much at 1 KiB, and 4 KiB nothing more.
#[cfg(target_arch = "x86_64")]
pub(super) const AHEAD: usize = 2048;

/// How far ahead a single-row tile asks in a product over `k` columns. Where k is 2048 or
/// more (models of 1B parameters and up), 1 KiB took w4a8's and int8's one-stream decode of
/// Llama-3.2-1B's shape 1–4 points of the bandwidth bound nearer it than 2 KiB, in every one
/// of a dozen runs switched token by token; on the demo model (k of 576 and 1536) 1 KiB lost
/// 1–2 points and 512 bytes up to 6 (Zen 4 EPYC, benchmarks/README.md).
#[cfg(target_arch = "x86_64")]
pub(super) fn row_ahead(k: usize) -> usize {
    if k >= 2048 {
        1024
    } else {
        AHEAD
    }
}

/// How a model's weight matrices are held in memory, and the arithmetic of their products
/// (activations are f32 in the f32 and bf16 products; the others quantize or round them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightFormat {
    #[default]
    F32,
    Bf16,
    /// 8 bits per weight and an f32 scale per output row, quantized at load, times
    /// activations quantized to 24-bit integers per token, summed exactly; see `w8a8`.
    Int8,
    /// int8 weights as `Int8`, times activations quantized to int8 per token, summed in
    /// int32 (AVX-512 VNNI where the CPU has it); see `w8a8`.
    W8a8,
    /// bf16 weights times activations rounded to bf16, summed in f32 (AVX-512 BF16 where
    /// the CPU has it); see `bf16`.
    W16a16,
    /// 4-bit weights with an f32 scale per block of 32 (Q4_0's rounding), times activations
    /// quantized to int8 per token, summed in int32 per block; see `w4a8`.
    W4a8,
}

impl WeightFormat {
    /// Why this format would run slowly on this CPU, when it lacks every instruction set the
    /// format has a kernel for (measured portable paths were 13 to 240 times slower than the
    /// kernels: benchmarks/README.md); `None` when a kernel fits.
    pub fn slow_on_this_cpu(self) -> Option<&'static str> {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2_fma = crate::cpu::has!(Avx2: "avx2", "fma");
            let fits = match self {
                Self::F32 | Self::Bf16 => crate::cpu::has!(Avx512: "avx512f") || avx2_fma,
                Self::Int8 | Self::W8a8 => {
                    super::w8a8::vnni_available() || super::w8a8::avx2_usable()
                }
                Self::W4a8 => super::w8a8::vnni_available() || avx2_fma,
                Self::W16a16 => super::bf16::dot_available(),
            };
            if !fits {
                return Some(match self {
                    Self::W16a16 => {
                        "AVX-512 BF16 is not available (this CPU lacks it, or \
                         ROSETTA_MAX_CPU_ISA caps it), so w16a16 takes its portable path, 85 to \
                         240 times slower: bf16 reads the same bytes and has AVX-512 and AVX2 \
                         kernels"
                    }
                    _ => {
                        "neither AVX-512 nor AVX2 is available (this CPU lacks them, or \
                         ROSETTA_MAX_CPU_ISA caps them), so this weight format takes its \
                         portable path"
                    }
                });
            }
        }
        None
    }
}

/// A `[rows, cols]` weight matrix (`y = x W^T`), stored packed (see the module docs).
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    data: WeightData,
}

enum WeightData {
    F32(crate::memory::Buffer<f32>),
    Bf16(super::bf16::Bf16Weights),
    /// Int8 and W8A8 share weights and kernels; their activations differ.
    Int8(super::w8a8::W8a8),
    W8a8(super::w8a8::W8a8),
    W16a16(super::bf16::Bf16Weights),
    W4a8(super::w4a8::W4a8),
}

/// Row-major `[rows, cols]` → panels `[rows / 16][cols][16]`, the last panel zero-padded.
fn pack<T: crate::memory::ZeroBits>(
    rows: usize,
    cols: usize,
    data: &[T],
) -> crate::memory::Buffer<T> {
    let panels = rows.div_ceil(PANEL);
    // Streamed whole for every token: huge pages spare a TLB miss per 4 KiB.
    let mut out = crate::memory::zeroed(panels * cols * PANEL);
    for (r, row) in data.chunks_exact(cols).enumerate() {
        let base = (r / PANEL) * cols * PANEL + r % PANEL;
        for (c, &v) in row.iter().enumerate() {
            out[base + c * PANEL] = v;
        }
    }
    out
}

impl Matrix {
    pub fn f32(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Self {
            rows,
            cols,
            data: WeightData::F32(pack(rows, cols, &data)),
        }
    }

    pub fn bf16(rows: usize, cols: usize, data: Vec<bf16>) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Self {
            rows,
            cols,
            data: WeightData::Bf16(super::bf16::Bf16Weights::pack(rows, cols, &data)),
        }
    }

    /// Quantizes row-major f32 weights to int8, per output row: the scale maps the row's
    /// largest magnitude to 127, and each weight rounds to the nearest step. Products take
    /// activations at 24 bits (see `w8a8`).
    pub fn int8(rows: usize, cols: usize, data: &[f32]) -> Self {
        Self {
            rows,
            cols,
            data: WeightData::Int8(super::w8a8::W8a8::quantize(rows, cols, data)),
        }
    }

    /// Quantizes row-major f32 weights for W8A8 products.
    pub fn w8a8(rows: usize, cols: usize, data: &[f32]) -> Self {
        Self {
            rows,
            cols,
            data: WeightData::W8a8(super::w8a8::W8a8::quantize(rows, cols, data)),
        }
    }

    /// Packs row-major bf16 weights for bf16 × bf16 products.
    pub fn w16a16(rows: usize, cols: usize, data: &[bf16]) -> Self {
        Self {
            rows,
            cols,
            data: WeightData::W16a16(super::bf16::Bf16Weights::pack(rows, cols, data)),
        }
    }

    /// Quantizes row-major f32 weights for W4A8 products.
    pub fn w4a8(rows: usize, cols: usize, data: &[f32]) -> Self {
        Self {
            rows,
            cols,
            data: WeightData::W4a8(super::w4a8::W4a8::quantize(rows, cols, data)),
        }
    }

    /// Bytes the weights occupy (what a pass reads from memory once).
    pub fn bytes(&self) -> usize {
        match &self.data {
            WeightData::F32(d) => d.len() * 4,
            WeightData::Bf16(w) => w.bytes(),
            WeightData::Int8(w) | WeightData::W8a8(w) => w.bytes(),
            WeightData::W16a16(w) => w.bytes(),
            WeightData::W4a8(w) => w.bytes(),
        }
    }

    /// Copies row `r` into `out` as f32 (embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        match &self.data {
            WeightData::F32(d) => {
                // Where row r starts in the `[n / 16][k][16]` panels.
                let base = (r / PANEL) * self.cols * PANEL + r % PANEL;
                for (c, o) in out.iter_mut().enumerate() {
                    *o = d[base + c * PANEL];
                }
            }
            WeightData::Bf16(w) | WeightData::W16a16(w) => w.row_into(r, out),
            WeightData::Int8(w) | WeightData::W8a8(w) => w.row_into(r, out),
            WeightData::W4a8(w) => w.row_into(r, out),
        }
    }

    /// `x` is `[m, cols]`; returns `[m, rows]` = x W^T (+ bias).
    pub fn matmul(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        debug_assert_eq!(x.len(), m * self.cols);
        let mut out = match &self.data {
            // Safety: the kernel writes only its block's columns.
            WeightData::F32(w) => unsafe {
                self.panel_product(x, m, |block, out| dispatch(block, w, out))
            },
            WeightData::Int8(w) => w.matmul(x, m, Activation::Int24),
            WeightData::Bf16(w) => w.matmul_exact(x, m),
            WeightData::W16a16(w) => w.matmul_dot(x, m),
            WeightData::W8a8(w) => w.matmul(x, m, Activation::Int8),
            WeightData::W4a8(w) => w.matmul(x, m),
        };
        add_bias(&mut out, self.rows, bias);
        out
    }

    /// The product over the `[n / 16][k][16]` panels (f32 weights), `kernel` run on
    /// every block.
    ///
    /// Safety: `kernel(block, out)` writes only that block's columns of its rows of `out`.
    unsafe fn panel_product(
        &self,
        x: &[f32],
        m: usize,
        kernel: impl Fn(&Block, *mut f32) + Sync,
    ) -> Vec<f32> {
        let (n, k) = (self.rows, self.cols);
        // One row has one accumulator per panel: a call of eight panels keeps eight FMA
        // chains in flight on the portable path (each output is still one chain over k in
        // order); the AVX-512 kernel walks them two at a time, the AVX2 one four.
        let panels_per_call = if m == 1 {
            PANELS_PER_ROW
        } else {
            PANELS_PER_TASK
        };
        // Safety: the blocks cover the output and every kernel writes all of its block.
        unsafe {
            written_in_full(m * n, |dst| {
                for_each_block(n, m, panels_per_call, |rows, panel0, panels| {
                    let block = Block {
                        x,
                        rows,
                        k,
                        n,
                        panel0,
                        panels,
                    };
                    // Blocks never overlap (the caller's kernel writes only its own), and the
                    // output outlives the parallel loop.
                    kernel(&block, dst.0);
                })
            })
        }
    }
}

/// Calls `work(rows, panel0, panels)` for every block of an `[m, n]` product, in parallel: a
/// run of `panels_per_call` panels for a range of rows. Rows are split only when the columns
/// give too few groups to keep the threads busy (narrow matrices). The threads take the
/// blocks in runs that shrink as the product runs out (see [`in_shrinking_runs`]). Blocks
/// never overlap, and the split never changes a result.
pub(super) fn for_each_block(
    n: usize,
    m: usize,
    panels_per_call: usize,
    work: impl Fn(std::ops::Range<usize>, usize, usize) + Sync,
) {
    let panels = n.div_ceil(PANEL);
    let groups = panels.div_ceil(panels_per_call);
    let threads = rayon::current_num_threads();
    let row_split = (threads * TASKS_PER_THREAD)
        .div_ceil(groups)
        .min(m / ROW_TILE)
        .max(1);
    let rows_per_task = m.div_ceil(row_split).div_ceil(ROW_TILE) * ROW_TILE;
    let row_tasks = m.div_ceil(rows_per_task);
    in_shrinking_runs(row_tasks * groups, threads, |blocks| {
        for b in blocks {
            let (rt, g) = (b / groups, b % groups);
            let r0 = rt * rows_per_task;
            let p0 = g * panels_per_call;
            work(
                r0..(r0 + rows_per_task).min(m),
                p0,
                panels_per_call.min(panels - p0),
            );
        }
    });
}

/// Runs `work` over `0..units` on `threads` threads, each taking the next run of units as it
/// finishes one. A run is a `2 × threads`-th of what is left: long at first (few hand-overs,
/// long streams for the prefetchers), one unit at the end, so the threads finish within one
/// unit of each other instead of one task (a one-row product left a thread idle 14% of its
/// time with eight equal tasks).
fn in_shrinking_runs(units: usize, threads: usize, work: impl Fn(std::ops::Range<usize>) + Sync) {
    let next = AtomicUsize::new(0);
    let claim = || {
        // The run's length depends on how much is left when it is taken; a compare-exchange
        // loop keeps each claim's start and length consistent.
        let mut start = next.load(Ordering::Relaxed);
        loop {
            if start >= units {
                return None;
            }
            let len = (units - start).div_ceil(2 * threads).max(1);
            match next.compare_exchange_weak(
                start,
                start + len,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(start..start + len),
                Err(now) => start = now,
            }
        }
    };
    (0..threads).into_par_iter().for_each(|_| {
        while let Some(run) = claim() {
            work(run);
        }
    });
}

fn add_bias(out: &mut [f32], n: usize, bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(n) {
            for (o, b) in row.iter_mut().zip(b) {
                *o += b;
            }
        }
    }
}

/// An `[m, n]` product computed by `tile(i0, rows, panel0, panels, first, out)` on every
/// register tile, in parallel (see [`for_each_block`]): rows of x in tiles of up to six, each
/// block's panels `panels_per_tile` at a time. `first` is set for a block's first row tile,
/// the one that reads its panels from memory (the others find them in cache). `out` is the
/// `[m, n]` output, not initialised (see [`written_in_full`]). For the formats with kernels
/// of their own.
///
/// Safety: a tile writes every one of its elements (its rows, its panels' columns below
/// `n`) and no other (no two tiles overlap).
pub(super) unsafe fn tiled_product(
    n: usize,
    m: usize,
    panels_per_call: usize,
    panels_per_tile: usize,
    tile: impl Fn(usize, usize, usize, usize, bool, *mut f32) + Sync,
) -> Vec<f32> {
    // Safety: the blocks cover the output, their tiles cover each block, and every tile
    // writes all of its elements (the caller's promise).
    unsafe {
        written_in_full(m * n, |dst| {
            for_each_block(n, m, panels_per_call, |rows, panel0, panels| {
                let mut i = rows.start;
                while i < rows.end {
                    let r = ROW_TILE.min(rows.end - i);
                    for p in (panel0..panel0 + panels).step_by(panels_per_tile) {
                        let panels = panels_per_tile.min(panel0 + panels - p);
                        tile(i, r, p, panels, i == rows.start, dst.0);
                    }
                    i += r;
                }
            })
        })
    }
}

/// A `len`-long output that `fill` writes in full, in parallel, through the pointer it is
/// given. It is not zeroed first: that was a memset on one core while the others waited (6
/// MB for the output head of a 32-sequence step). Debug builds fill it with NaN first, so
/// that an element a kernel leaves unwritten fails the tests.
///
/// Safety: `fill` writes every element.
unsafe fn written_in_full(len: usize, fill: impl FnOnce(&SharedMut<f32>)) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if cfg!(debug_assertions) {
        out.resize(len, f32::NAN);
        out.clear();
    }
    fill(&SharedMut(out.as_mut_ptr()));
    // Safety: every element is written (the caller's promise), and `len` is the capacity.
    unsafe { out.set_len(len) };
    out
}

/// The fewest rows of x a thread takes when activations are prepared (quantized or rounded)
/// row by row before a product: a batch of decodes or a prefill chunk is split across
/// threads, so the pass does not run on one core while the others wait; a few rows stay
/// whole.
pub(super) fn rows_per_thread(m: usize, k: usize) -> usize {
    if m * k >= 1 << 14 {
        1
    } else {
        m.max(1)
    }
}

/// The lanes of the 16-column panel starting at column `col` that hold one of `n` outputs.
#[cfg(target_arch = "x86_64")]
pub(super) fn panel_mask(n: usize, col: usize) -> u16 {
    let valid = n.saturating_sub(col).min(PANEL);
    ((1u32 << valid) - 1) as u16
}

/// One task's share: panels `panel0 .. panel0 + panels` for some rows of x.
struct Block<'a> {
    x: &'a [f32],
    rows: std::ops::Range<usize>,
    k: usize,
    n: usize,
    panel0: usize,
    panels: usize,
}

impl Block<'_> {
    /// The same rows against `panels` of this block's panels from its `p`-th.
    #[cfg(target_arch = "x86_64")]
    fn panels_from(&self, p: usize, panels: usize) -> Self {
        Block {
            x: self.x,
            rows: self.rows.clone(),
            k: self.k,
            n: self.n,
            panel0: self.panel0 + p,
            panels,
        }
    }
}

pub(super) trait Fma {
    fn fma(a: f32, b: f32, c: f32) -> f32;
}

/// Fused multiply-add: the chain every vector kernel computes per lane, which the tests
/// check them against. Outside tests only where every CPU of the target has it in hardware:
/// on an x86 CPU without FMA, `mul_add` is a slow libm call.
#[cfg(any(test, target_arch = "aarch64"))]
pub(super) struct Fused;
#[cfg(any(test, target_arch = "aarch64"))]
impl Fma for Fused {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// x86 CPUs without FMA: the same order, rounded after each multiply (not bit-identical to
/// the fused paths, but batch-invariant on that machine).
#[cfg(not(target_arch = "aarch64"))]
pub(super) struct Plain;
#[cfg(not(target_arch = "aarch64"))]
impl Fma for Plain {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// The multiply-add of the portable kernels: fused on aarch64 (every such CPU has `fmadd`),
/// so there they give the vector kernels' bits.
#[cfg(target_arch = "aarch64")]
pub(super) type Portable = Fused;
#[cfg(not(target_arch = "aarch64"))]
pub(super) type Portable = Plain;

/// Safety: `w` is the whole packed matrix; `out` is the `[m, n]` output of which this call
/// writes only its block's columns.
unsafe fn dispatch(block: &Block, w: &[f32], out: *mut f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::has!(Avx512: "avx512f") {
            // Safety: the CPU supports the features the function is compiled for.
            return unsafe { avx512::kernel(block, w, out) };
        }
        if crate::cpu::has!(Avx2: "avx2", "fma") {
            // Safety: as above.
            return unsafe { avx2::kernel(block, w, out) };
        }
    }
    unsafe { kernel::<Portable>(block, w, out) }
}

/// The AVX2 kernels' register tiles over `rows` and `panels` panels (counted from the
/// block's first): two rows of up to two panels, or a last single row of up to four, eight
/// accumulators of the sixteen registers either way. Yields (first row, rows, first panel,
/// panels), for [`avx2_tile_shapes`].
#[cfg(target_arch = "x86_64")]
pub(super) fn avx2_tiles(
    rows: std::ops::Range<usize>,
    panels: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let end = rows.end;
    rows.step_by(2).flat_map(move |i| {
        let r = (end - i).min(2);
        let step = if r == 1 { 4 } else { 2 };
        (0..panels)
            .step_by(step)
            .map(move |p| (i, r, p, step.min(panels - p)))
    })
}

/// Calls `$f::<R, C>` for an [`avx2_tiles`] shape: R rows of x and C panels.
#[cfg(target_arch = "x86_64")]
macro_rules! avx2_tile_shapes {
    ($f:ident, $r:expr, $c:expr, ($($arg:expr),*)) => {
        match ($r, $c) {
            (2, 2) => $f::<2, 2>($($arg),*),
            (2, 1) => $f::<2, 1>($($arg),*),
            (1, 4) => $f::<1, 4>($($arg),*),
            (1, 3) => $f::<1, 3>($($arg),*),
            (1, 2) => $f::<1, 2>($($arg),*),
            (1, 1) => $f::<1, 1>($($arg),*),
            _ => unreachable!("AVX2 tiles hold 2 rows of 2 panels or 1 row of 4"),
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use avx2_tile_shapes;

/// Stores `v`, the outputs of columns `col..col + 8` of an output row of `n` columns starting
/// at `row`, writing only the columns below `n`: the AVX2 kernels' half-panel store.
///
/// Safety: needs AVX2; `row` is the start of an output row of `n` floats.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn store_half_panel(
    row: *mut f32,
    n: usize,
    col: usize,
    v: std::arch::x86_64::__m256,
) {
    use std::arch::x86_64::*;
    let valid = n.saturating_sub(col).min(8) as i32;
    if valid > 0 {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), lanes);
        // Safety: the mask keeps the store inside the row's n columns.
        unsafe { _mm256_maskstore_ps(row.add(col), mask, v) }
    }
}

/// The AVX2 kernel (CPUs without AVX-512: Zen 2 and 3, Intel's client cores): each panel in
/// two 8-wide halves, the same FMA chain per output as every other path. Written out because
/// the portable kernel compiled for AVX2 ran scalar, 15 to 130 times slower than the AVX-512
/// one (benchmarks/README.md). Sixteen registers hold 2 rows × 2 panels or 1 row × 4 panels.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{store_half_panel, Block, PANEL};

    /// Safety: needs AVX2 and FMA; see [`super::dispatch`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel(block: &Block, w: &[f32], out: *mut f32) {
        for (i, r, p, c) in super::avx2_tiles(block.rows.clone(), block.panels) {
            let panel0 = block.panel0 + p;
            // Safety: forwarded; the tile lies inside the block.
            unsafe { avx2_tile_shapes!(tile, r, c, (block, w, out, i, panel0)) }
        }
    }

    // Index loops over register tiles read clearer than iterator chains here.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(
        b: &Block,
        w: &[f32],
        out: *mut f32,
        i0: usize,
        panel0: usize,
    ) {
        let k = b.k;
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
        let (wp, xp) = (w.as_ptr(), b.x.as_ptr());
        for p in 0..k {
            // Safety: panel (panel0 + c) has k rows of 16; x row i0 + r has k values.
            unsafe {
                let mut xv = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    xv[r] = _mm256_set1_ps(*xp.add((i0 + r) * k + p));
                }
                for c in 0..C {
                    for h in 0..2 {
                        let wv = _mm256_loadu_ps(wp.add(((panel0 + c) * k + p) * PANEL + h * 8));
                        for r in 0..R {
                            acc[r][c][h] = _mm256_fmadd_ps(xv[r], wv, acc[r][c][h]);
                        }
                    }
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                for h in 0..2 {
                    let col = (panel0 + c) * PANEL + h * 8;
                    // Safety: row i0 + r of the output; only its valid columns are written.
                    unsafe { store_half_panel(out.add((i0 + r) * b.n), b.n, col, acc[r][c][h]) };
                }
            }
        }
    }
}

/// Calls `$f::<generics.., R, C>` for the runtime register tile shape: R rows of x (1 to 6)
/// by C panels (1 to 4).
macro_rules! tile_shapes {
    // A kernel with no other generics (rustfmt writes `f::<>` as `f`).
    ($f:ident, $r:expr, $c:expr, ($($arg:expr),*)) => {
        tile_shapes!($f::<>, $r, $c, ($($arg),*))
    };
    ($f:ident::<$($g:ty),*>, $r:expr, $c:expr, ($($arg:expr),*)) => {
        match ($r, $c) {
            (6, 4) => $f::<$($g,)* 6, 4>($($arg),*),
            (6, 3) => $f::<$($g,)* 6, 3>($($arg),*),
            (6, 2) => $f::<$($g,)* 6, 2>($($arg),*),
            (6, 1) => $f::<$($g,)* 6, 1>($($arg),*),
            (5, 4) => $f::<$($g,)* 5, 4>($($arg),*),
            (5, 3) => $f::<$($g,)* 5, 3>($($arg),*),
            (5, 2) => $f::<$($g,)* 5, 2>($($arg),*),
            (5, 1) => $f::<$($g,)* 5, 1>($($arg),*),
            (4, 4) => $f::<$($g,)* 4, 4>($($arg),*),
            (4, 3) => $f::<$($g,)* 4, 3>($($arg),*),
            (4, 2) => $f::<$($g,)* 4, 2>($($arg),*),
            (4, 1) => $f::<$($g,)* 4, 1>($($arg),*),
            (3, 4) => $f::<$($g,)* 3, 4>($($arg),*),
            (3, 3) => $f::<$($g,)* 3, 3>($($arg),*),
            (3, 2) => $f::<$($g,)* 3, 2>($($arg),*),
            (3, 1) => $f::<$($g,)* 3, 1>($($arg),*),
            (2, 4) => $f::<$($g,)* 2, 4>($($arg),*),
            (2, 3) => $f::<$($g,)* 2, 3>($($arg),*),
            (2, 2) => $f::<$($g,)* 2, 2>($($arg),*),
            (2, 1) => $f::<$($g,)* 2, 1>($($arg),*),
            (1, 4) => $f::<$($g,)* 1, 4>($($arg),*),
            (1, 3) => $f::<$($g,)* 1, 3>($($arg),*),
            (1, 2) => $f::<$($g,)* 1, 2>($($arg),*),
            (1, 1) => $f::<$($g,)* 1, 1>($($arg),*),
            _ => unreachable!("register tiles hold 1 to 6 rows of 1 to 4 panels"),
        }
    };
}
pub(super) use tile_shapes;

/// [`tile_shapes`], and a single row of up to 8 panels (`PANELS_PER_ROW`).
macro_rules! row_tile_shapes {
    ($f:ident, $r:expr, $c:expr, ($($arg:expr),*)) => {
        row_tile_shapes!($f::<>, $r, $c, ($($arg),*))
    };
    ($f:ident::<$($g:ty),*>, $r:expr, $c:expr, ($($arg:expr),*)) => {
        match ($r, $c) {
            (1, 8) => $f::<$($g,)* 1, 8>($($arg),*),
            (1, 7) => $f::<$($g,)* 1, 7>($($arg),*),
            (1, 6) => $f::<$($g,)* 1, 6>($($arg),*),
            (1, 5) => $f::<$($g,)* 1, 5>($($arg),*),
            (r, c) => $crate::model::matmul::tile_shapes!($f::<$($g),*>, r, c, ($($arg),*)),
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use row_tile_shapes;

/// Walks a block in register tiles: rows of x in sixes, the block's panels all at once.
#[inline(always)]
fn for_each_tile(block: &Block, mut f: impl FnMut(usize, usize)) {
    let mut i = block.rows.start;
    while i < block.rows.end {
        let r = ROW_TILE.min(block.rows.end - i);
        f(i, r);
        i += r;
    }
}

/// The AVX-512 kernel: per k, C weight vectors times R broadcast x values into R × C
/// accumulators, one FMA per output element per k, in k order.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{for_each_tile, Block, PANEL};

    /// Panels a single row reads side by side, each its own stream of weights: on a Zen 4
    /// EPYC two decoded a 1B model's f32 weights 2–5 points of the bandwidth bound nearer it
    /// than eight did, and the demo model's as fast (two FMA chains still outrun the memory).
    const ROW_PAIR: usize = 2;

    /// Safety: needs AVX-512F; see [`super::dispatch`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn kernel(block: &Block, w: &[f32], out: *mut f32) {
        let c = block.panels;
        if block.rows.len() == 1 {
            // One row walks its panels two at a time: two streams of weights instead of
            // eight, each output still one chain over k (benchmarks/README.md).
            for p in (0..c).step_by(ROW_PAIR) {
                let pair = block.panels_from(p, ROW_PAIR.min(c - p));
                let i = block.rows.start;
                // Safety: forwarded; the pair lies inside the block.
                unsafe { row_tile_shapes!(tile, 1, pair.panels, (&pair, w, out, i)) };
            }
            return;
        }
        for_each_tile(block, |i, r| {
            // Safety: forwarded; the tile lies inside x, w and the block's columns.
            unsafe { row_tile_shapes!(tile, r, c, (block, w, out, i)) }
        });
    }

    // Index loops over register tiles read clearer than iterator chains here.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const C: usize>(b: &Block, w: &[f32], out: *mut f32, i0: usize) {
        let k = b.k;
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let wp = w.as_ptr();
        let xp = b.x.as_ptr();
        for p in 0..k {
            let mut wv = [_mm512_setzero_ps(); C];
            // Safety: panel (panel0 + c) has k rows of 16; x row i0 + r has k values.
            unsafe {
                for c in 0..C {
                    wv[c] = _mm512_loadu_ps(wp.add(((b.panel0 + c) * k + p) * PANEL));
                }
                for r in 0..R {
                    let xv = _mm512_set1_ps(*xp.add((i0 + r) * k + p));
                    for c in 0..C {
                        acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
                    }
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                let col = (b.panel0 + c) * PANEL;
                let mask = super::panel_mask(b.n, col);
                // Safety: only the valid columns of this row are written.
                unsafe {
                    _mm512_mask_storeu_ps(out.add((i0 + r) * b.n + col), mask, acc[r][c]);
                }
            }
        }
    }
}

/// The portable kernel (auto-vectorised where the CPU allows): the same arithmetic.
///
/// Safety: see [`dispatch`].
#[inline(always)]
unsafe fn kernel<F: Fma>(block: &Block, w: &[f32], out: *mut f32) {
    let c = block.panels;
    for_each_tile(block, |i, r| {
        // Safety: forwarded.
        unsafe { row_tile_shapes!(tile_portable::<F>, r, c, (block, w, out, i)) }
    });
}

// Index loops over register tiles read clearer than iterator chains here.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile_portable<F: Fma, const R: usize, const C: usize>(
    b: &Block,
    w: &[f32],
    out: *mut f32,
    i0: usize,
) {
    let k = b.k;
    let mut acc = [[[0.0f32; PANEL]; C]; R];
    for p in 0..k {
        let mut wv = [[0.0f32; PANEL]; C];
        for c in 0..C {
            let at = ((b.panel0 + c) * k + p) * PANEL;
            wv[c].copy_from_slice(&w[at..at + PANEL]);
        }
        for r in 0..R {
            let xv = b.x[(i0 + r) * k + p];
            for c in 0..C {
                for l in 0..PANEL {
                    acc[r][c][l] = F::fma(xv, wv[c][l], acc[r][c][l]);
                }
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            let col = (b.panel0 + c) * PANEL;
            let valid = b.n.saturating_sub(col).min(PANEL);
            for l in 0..valid {
                // Safety: a valid column of this row, written by this task only.
                unsafe { *out.add((i0 + r) * b.n + col + l) = acc[r][c][l] };
            }
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
            (32, 200, 576),
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

    #[test]
    fn shrinking_runs_cover_every_unit_once() {
        use std::sync::atomic::AtomicU32;
        for units in [0, 1, 7, 64, 1000] {
            for threads in [1, 2, 5] {
                let seen: Vec<AtomicU32> = (0..units).map(|_| AtomicU32::new(0)).collect();
                let longest = AtomicUsize::new(0);
                in_shrinking_runs(units, threads, |run| {
                    longest.fetch_max(run.len(), Ordering::Relaxed);
                    for u in run {
                        seen[u].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
                assert!(longest.into_inner() <= units.div_ceil(2 * threads));
            }
        }
    }

    fn run(
        f: unsafe fn(&Block, &[f32], *mut f32),
        x: &[f32],
        m: usize,
        w: &[f32],
        n: usize,
        k: usize,
    ) -> Vec<f32> {
        let packed = pack(n, k, w);
        let mut out = vec![0.0; m * n];
        let block = Block {
            x,
            rows: 0..m,
            k,
            n,
            panel0: 0,
            panels: n.div_ceil(PANEL).min(PANELS_PER_TASK),
        };
        unsafe { f(&block, &packed, out.as_mut_ptr()) };
        out
    }

    /// Every CPU path with FMA computes the same chain per output, so they agree bit for bit.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn cpu_paths_agree_exactly() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let (m, n, k) = (9, 61, 83);
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let generic = run(kernel::<Fused>, &x, m, &w, n, k);
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                assert_eq!(run(avx2::kernel, &x, m, &w, n, k), generic, "avx2 path");
            }
            if std::is_x86_feature_detected!("avx512f") {
                assert_eq!(run(avx512::kernel, &x, m, &w, n, k), generic, "avx512 path");
            }
        }
    }

    #[test]
    fn bf16_weights_widen_exactly_and_rows_read_back() {
        let w: Vec<f32> = (0..64).map(|i| i as f32 * 0.25 - 8.0).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let x: Vec<f32> = (0..32).map(|i| (i % 5) as f32).collect();
        let a = Matrix::f32(2, 32, w.clone()).matmul(&x, 1, Some(&[1.0, 2.0]));
        let b = Matrix::bf16(2, 32, wb.clone()).matmul(&x, 1, Some(&[1.0, 2.0]));
        assert_eq!(a, b);
        let mut row = vec![0.0; 32];
        Matrix::bf16(2, 32, wb).row_into(1, &mut row);
        assert_eq!(row, w[32..]);
        let big: Vec<f32> = (0..40 * 3).map(|i| i as f32).collect();
        let m = Matrix::f32(40, 3, big.clone());
        let mut r = vec![0.0; 3];
        m.row_into(37, &mut r);
        assert_eq!(r, big[37 * 3..38 * 3]);
    }

    /// A CPU with AVX-512 BF16 and VNNI (the CI machines) has a kernel for every format.
    #[test]
    fn every_format_has_a_kernel_on_a_full_avx512_cpu() {
        #[cfg(target_arch = "x86_64")]
        if super::super::bf16::dot_available() && super::super::w8a8::vnni_available() {
            for format in [
                WeightFormat::F32,
                WeightFormat::Bf16,
                WeightFormat::Int8,
                WeightFormat::W8a8,
                WeightFormat::W16a16,
                WeightFormat::W4a8,
            ] {
                assert_eq!(format.slow_on_this_cpu(), None, "{format:?}");
            }
        }
    }

    /// int8: within half a quantization step per weight of f32's answer, and within the
    /// 24-bit activations' rounding of the answer over the quantized weights (module
    /// `w8a8`); batch-invariant. Its CPU paths are compared in `w8a8`'s tests.
    #[test]
    fn int8_weights_quantize_per_row_and_stay_batch_invariant() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for &(m, n, k) in &[(1, 1, 1), (7, 130, 64), (13, 67, 100), (32, 200, 576)] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mat = Matrix::int8(n, k, &w);
            let got = mat.matmul(&x, m, None);
            let want = naive(&x, m, &w, n, k);
            let mut quantized = vec![0.0; n * k];
            for (j, row) in quantized.chunks_exact_mut(k).enumerate() {
                mat.row_into(j, row);
            }
            let exact = naive(&x, m, &quantized, n, k);
            for i in 0..m {
                let xs = &x[i * k..(i + 1) * k];
                let x_step = xs.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 8_290_687.0;
                for j in 0..n {
                    let row = &w[j * k..(j + 1) * k];
                    let scale = row.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
                    // Each weight is off by at most half a step.
                    let bound: f32 = xs.iter().map(|v| v.abs() * scale / 2.0).sum::<f32>() + 1e-4;
                    let (a, b) = (got[i * n + j], want[i * n + j]);
                    assert!(
                        (a - b).abs() <= bound,
                        "{m}x{n}x{k}: {a} vs {b} (bound {bound})"
                    );
                    // Each activation is off by at most a step, and f32 sums round.
                    let q = &quantized[j * k..(j + 1) * k];
                    let size: f32 = xs.iter().zip(q).map(|(a, b)| (a * b).abs()).sum();
                    let steps: f32 = q.iter().map(|v| v.abs() * x_step).sum();
                    let bound = steps + size * 1e-5 + 1e-6;
                    let b = exact[i * n + j];
                    assert!(
                        (a - b).abs() <= bound,
                        "{m}x{n}x{k}: {a} vs {b} over int8 weights (bound {bound})"
                    );
                }
                let alone = mat.matmul(xs, 1, None);
                assert_eq!(alone, got[i * n..(i + 1) * n], "{m}x{n}x{k} row {i}");
            }
            let mut row = vec![0.0; k];
            mat.row_into(n - 1, &mut row);
            for (a, b) in row.iter().zip(&w[(n - 1) * k..]) {
                assert!((a - b).abs() <= 1.0 / 127.0 / 2.0 + 1e-6);
            }
        }
        // A zero row, and weights exactly on the grid, come back exactly.
        let w = [0.0, 0.0, 127.0, -63.0, 1.0, 0.5];
        let mat = Matrix::int8(3, 2, &w);
        let mut row = [0.0; 2];
        mat.row_into(0, &mut row);
        assert_eq!(row, [0.0, 0.0]);
        mat.row_into(1, &mut row);
        assert_eq!(row, [127.0, -63.0]);
        // One panel of one group of four k, three scales and three offsets.
        assert_eq!(mat.bytes(), 16 * 4 + 3 * 4 + 3 * 4);
    }
}
