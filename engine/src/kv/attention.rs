//! Causal attention that reads K and V in place through block tables (no gather into a
//! contiguous copy), tiled as query tokens × key blocks.
//!
//! Work is split into tasks of one KV head and a tile of consecutive query tokens of one
//! sequence: every query head of the tile that shares the KV head (GQA) is served from one
//! read of each key and value. K is stored transposed within a block (see `pool`), so a
//! tile's scores come 16 keys at a time as plain multiply-adds, with no horizontal sums.
//!
//! Every query row is computed by the same sequence of floating-point operations whatever
//! tile, batch or CPU path it lands in, so results are bit-identical across batches and
//! across the AVX-512, AVX2 and portable code:
//! - a score is `(a + b) × scale`, where `a` and `b` are fused multiply-add chains over the
//!   first and the second half of the head's dimensions, in order;
//! - softmax uses `math::exp_nonpositive` (same bits in scalar and vector code), and sums the
//!   weights in 16 interleaved lanes reduced by a fixed tree;
//! - each output is a fused multiply-add chain over the visible keys in position order,
//!   multiplied by 1 / Σ weights at the end.
//!
//! When there are fewer tasks than threads can share evenly (one sequence decoding: the
//! model's few KV heads), each task is cut in two steps that keep those operations: its
//! scores by ranges of keys (each score stands alone), then its softmax and values by ranges
//! of head dimensions (each output is its own chain). So no thread waits on another's whole
//! head, and no key or value is read twice.

use rayon::prelude::*;

use super::{KvElement, KvLayer, KvLayout};
use crate::math::exp_nonpositive;

/// Keys per score vector (one AVX-512 register of f32).
const LANES: usize = 16;
/// Query rows (tokens × heads of a group) one task holds in registers.
const MAX_ROWS: usize = 12;
/// Most query tokens in one tile.
const MAX_TILE_TOKENS: usize = 8;

/// One sequence's slice of a flat batch of query tokens.
pub struct AttentionSeq<'a> {
    /// Index of the sequence's first query token in the flat batch.
    pub first_token: usize,
    /// Number of query tokens (1 when decoding, the chunk length when prefilling).
    pub num_tokens: usize,
    /// Position of the first query token; the sequence's K/V cover `0..start_pos + num_tokens`.
    pub start_pos: usize,
    pub block_table: &'a [u32],
}

/// `q` is `[tokens, num_heads, head_dim]`; returns `[tokens, num_heads, head_dim]`.
/// Query at position p sees keys `max(0, p + 1 - window) ..= p`. A query's result depends
/// only on its own sequence, never on the batch.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention<T: KvElement>(
    q: &[f32],
    num_heads: usize,
    layout: KvLayout,
    k_cache: &[T],
    v_cache: &[T],
    seqs: &[AttentionSeq<'_>],
    sliding_window: Option<usize>,
    scale: f32,
    alibi: Option<&[f32]>,
) -> Vec<f32> {
    let batch = Batch {
        q,
        num_heads,
        layout,
        k_cache,
        v_cache,
        seqs,
        window: sliding_window,
        scale,
        alibi,
    };
    batch.run()
}

/// [`paged_attention`] over one layer of a [`KvPool`](super::KvPool), whatever element type
/// its cache holds.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_in(
    q: &[f32],
    num_heads: usize,
    layout: KvLayout,
    layer: KvLayer<'_>,
    seqs: &[AttentionSeq<'_>],
    window: Option<usize>,
    scale: f32,
    alibi: Option<&[f32]>,
) -> Vec<f32> {
    // One call per element type: `paged_attention` is compiled for each.
    macro_rules! attend {
        ($k:expr, $v:expr) => {
            paged_attention(q, num_heads, layout, $k, $v, seqs, window, scale, alibi)
        };
    }
    match layer {
        KvLayer::F32 { k, v } => attend!(k, v),
        KvLayer::Bf16 { k, v } => attend!(k, v),
        KvLayer::Fp8 { k, v } => attend!(k, v),
    }
}

/// One call's inputs.
struct Batch<'a, T> {
    q: &'a [f32],
    num_heads: usize,
    layout: KvLayout,
    k_cache: &'a [T],
    v_cache: &'a [T],
    seqs: &'a [AttentionSeq<'a>],
    window: Option<usize>,
    scale: f32,
    alibi: Option<&'a [f32]>,
}

/// Fewest keys a task must span before it is cut across threads. A cut task does more work
/// (each dimension range broadcasts every weight again; the scores are gathered) and waits
/// at a second fork-join. But a thread left idle for long falls asleep, and waking it for
/// the next product costs more than the cut: from about 250 keys (one sequence) to 330
/// (three) a cut is ahead, and between 400 and 768 keys it saves a fifth of one sequence's
/// token (demo model, Zen 4, benchmarks/README.md).
const MIN_SPLIT_KEYS: usize = 256;

impl<'a, T: KvElement> Batch<'a, T> {
    /// Runs every task with the fastest kernels this CPU has, cut across threads where there
    /// are too few of them ([`Split::of`]), and assembles the output.
    fn run(&self) -> Vec<f32> {
        let jobs = self.jobs();
        let split = Split::of(&jobs, self.layout, rayon::current_num_threads());
        let kernels = Kernels::best(self.num_heads / self.layout.kv_heads);
        self.run_split(&jobs, kernels, split)
    }

    /// The tasks: tiles of one sequence's consecutive query tokens, one per KV head.
    fn jobs(&self) -> Vec<Job<'a, T>> {
        let l = self.layout;
        let hd = l.head_dim;
        let group = self.num_heads / l.kv_heads;
        let tile = (MAX_ROWS / group).clamp(1, MAX_TILE_TOKENS);
        let mut jobs = Vec::new();
        for s in self.seqs {
            for t0 in (0..s.num_tokens).step_by(tile) {
                for kv_head in 0..l.kv_heads {
                    jobs.push(Job {
                        q: self.q,
                        q_stride: self.num_heads * hd,
                        q_first: ((s.first_token + t0) * self.num_heads + kv_head * group) * hd,
                        tokens: tile.min(s.num_tokens - t0),
                        pos0: s.start_pos + t0,
                        layout: l,
                        k_cache: self.k_cache,
                        v_cache: self.v_cache,
                        block_table: s.block_table,
                        kv_head,
                        group,
                        window: self.window,
                        scale: self.scale,
                        alibi: self
                            .alibi
                            .map(|slopes| &slopes[kv_head * group..(kv_head + 1) * group]),
                        keys: None,
                        dims: (0, hd),
                    });
                }
            }
        }
        jobs
    }

    /// Runs the first `split.whole` tasks whole and cuts each of the others into
    /// `split.parts` key ranges, then as many dimension ranges; the bits are the same either
    /// way.
    fn run_split(&self, jobs: &[Job<'_, T>], kernels: Kernels<T>, split: Split) -> Vec<f32> {
        let (whole, cut) = jobs.split_at(split.whole.min(jobs.len()));
        let pieces: Vec<(Job<'_, T>, Vec<f32>)> = if cut.is_empty() {
            jobs.par_iter()
                .map(|job| (*job, attend(job, kernels)))
                .collect()
        } else {
            let parts = split.parts.max(1);
            let weighed: Vec<Weights> = cut.iter().map(|j| Weights::new(j, parts)).collect();
            // Each thread's share of the first pass lies together, whole tasks beside key
            // ranges, as rayon halves the range among threads.
            let threads = rayon::current_num_threads().max(1);
            let items = Split::interleave(whole.len(), cut.len() * parts, threads);
            let first: Vec<Option<(Job<'_, T>, Vec<f32>)>> = items
                .par_iter()
                .map(|item| match *item {
                    Item::Whole(i) => Some((whole[i], attend(&whole[i], kernels))),
                    Item::Keys(i) => {
                        let (job, w) = (&cut[i / parts], &weighed[i / parts]);
                        let range = job.key_part(i % parts, parts);
                        let mut scores = vec![0.0f32; range.rows() * range.width()];
                        (kernels.scores)(&range, &mut scores);
                        w.add_cut(job, &range, &scores, kernels);
                        None
                    }
                })
                .collect();
            let weighed: Vec<WeightsState> = weighed.into_iter().map(Weights::landed).collect();
            let values: Vec<(Job<'_, T>, Vec<f32>)> = (0..cut.len() * parts)
                .into_par_iter()
                .map(|i| {
                    let job = cut[i / parts].dim_part(i % parts, parts);
                    let w = &weighed[i / parts];
                    let out = (kernels.values)(&job, &w.weights, &w.inv);
                    (job, out)
                })
                .collect();
            first.into_iter().flatten().chain(values).collect()
        };
        let total_tokens = self
            .seqs
            .iter()
            .map(|s| s.first_token + s.num_tokens)
            .max()
            .unwrap_or(0);
        let hd = self.layout.head_dim;
        let mut out = vec![0.0f32; total_tokens * self.num_heads * hd];
        // A task's rows are its tokens' group heads, which sit together in each token's row.
        for (job, part) in &pieces {
            let (d0, d1) = job.dims;
            for (r, row) in part.chunks_exact(hd).enumerate() {
                let (t, h) = (r / job.group, r % job.group);
                let at = job.q_first + t * job.q_stride + h * hd;
                out[at + d0..at + d1].copy_from_slice(&row[d0..d1]);
            }
        }
        out
    }
}

/// How a call's tasks share the threads: the first `whole` run whole, and each of the
/// others is cut into `parts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Split {
    whole: usize,
    parts: usize,
}

/// One piece of a split call's first pass.
enum Item {
    /// A whole task, by its index among the whole ones.
    Whole(usize),
    /// A key range: `cut task × parts + part`.
    Keys(usize),
}

impl Split {
    /// Whole tasks where the threads share them evenly. Where they do not, the tasks left
    /// over after an even share are cut, so that each thread ends at the same time: one
    /// sequence's three KV heads on two threads, or three sequences' nine. Only where the
    /// keys are many, and where a head's values can be cut at `LANES` dimensions: at whole
    /// cache lines where a row has two or more (so that no line is read by two threads), in
    /// halves of a line where a row is one (fp8 at head size 64; only the tasks cut read it
    /// twice).
    fn of<T>(jobs: &[Job<'_, T>], layout: KvLayout, threads: usize) -> Self {
        let n = jobs.len();
        let whole = Split { whole: n, parts: 1 };
        if threads < 2 {
            return whole;
        }
        let left = n % threads;
        if left == 0 || jobs[n - left..].iter().any(|j| j.width() < MIN_SPLIT_KEYS) {
            return whole;
        }
        let hd = layout.head_dim;
        let line = LANES.max(64 / std::mem::size_of::<T>());
        let unit = if hd / line >= 2 {
            line
        } else {
            (hd / 2).next_multiple_of(LANES)
        };
        if !hd.is_multiple_of(unit) {
            return whole;
        }
        let parts = (threads / gcd(left, threads)).min(hd / unit);
        if parts < 2 {
            return whole;
        }
        Split {
            whole: n - left,
            parts,
        }
    }

    /// The first pass's pieces in `threads` groups of as many whole tasks and key ranges each.
    fn interleave(whole: usize, ranges: usize, threads: usize) -> Vec<Item> {
        let mut items = Vec::with_capacity(whole + ranges);
        for g in 0..threads {
            items.extend((whole * g / threads..whole * (g + 1) / threads).map(Item::Whole));
            items.extend((ranges * g / threads..ranges * (g + 1) / threads).map(Item::Keys));
        }
        items
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Computes `rows × head_dim` outputs from weights and each row's 1 / Σ weights, written
/// only in the job's `dims`.
type ValuesKernel<T> = fn(&Job<'_, T>, &[f32], &[f32]) -> Vec<f32>;

/// One CPU path's three steps of a task: its scores, softmax, and the weighted values.
struct Kernels<T> {
    scores: fn(&Job<'_, T>, &mut [f32]),
    /// Turns `rows × width` scores into weights in place; returns each row's 1 / Σ weights.
    softmax: fn(&Job<'_, T>, &mut [f32]) -> Vec<f32>,
    values: ValuesKernel<T>,
}

impl<T> Clone for Kernels<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Kernels<T> {}

impl<T: KvElement> Kernels<T> {
    /// The fastest this CPU has for tasks of `group` query heads per KV head: the AVX-512
    /// kernels take tiles of up to `MAX_ROWS` rows, and tiles hold that many where a group
    /// fits ([`Batch::jobs`]).
    fn best(group: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if group <= MAX_ROWS && crate::cpu::has!(Avx512: "avx512f", "avx512bw", "avx512vl") {
                return Self::AVX512;
            }
            if crate::cpu::has!(Avx2: "avx2", "fma") {
                return Self::AVX2;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = group;
        Self::PORTABLE
    }

    /// The portable loops, on every CPU.
    const PORTABLE: Self = Kernels {
        scores: scores_generic,
        softmax,
        values: values_generic,
    };

    /// Only for a CPU with AVX-512 F, BW and VL ([`Kernels::best`] asks), and tiles of at
    /// most `MAX_ROWS` rows.
    #[cfg(target_arch = "x86_64")]
    const AVX512: Self = Kernels {
        // Safety, for all three: chosen only where the CPU has the features they need.
        scores: |j, s| unsafe { avx512::scores(j, s) },
        softmax: |j, s| unsafe { softmax_avx512(j, s) },
        values: |j, w, inv| unsafe { avx512::values(j, w, inv) },
    };

    /// Only for a CPU with AVX2 and FMA ([`Kernels::best`] asks).
    #[cfg(target_arch = "x86_64")]
    const AVX2: Self = Kernels {
        // Safety, for all three: chosen only where the CPU has the features they need.
        scores: |j, s| unsafe { avx2::scores(j, s) },
        softmax: |j, s| unsafe { softmax_avx2(j, s) },
        values: |j, w, inv| unsafe { avx2::values(j, w, inv) },
    };
}

/// A whole task: its scores in this thread's buffer, then weighed.
fn attend<T>(job: &Job<'_, T>, kernels: Kernels<T>) -> Vec<f32> {
    let mut weights = take_scores(job.rows() * job.width());
    (kernels.scores)(job, &mut weights);
    let inv = (kernels.softmax)(job, &mut weights);
    let out = (kernels.values)(job, &weights, &inv);
    SCORES.set(weights);
    out
}

/// A cut task's weights: each key range's scores land here, and the range that lands last
/// runs the softmax, once, for the parts that weigh the values.
struct Weights {
    state: std::sync::Mutex<WeightsState>,
}

struct WeightsState {
    /// Key ranges not yet landed.
    pending: usize,
    /// `rows × width` scores; weights once `pending` is 0.
    weights: Vec<f32>,
    inv: Vec<f32>,
}

impl Weights {
    fn new<T>(job: &Job<'_, T>, parts: usize) -> Self {
        Weights {
            state: std::sync::Mutex::new(WeightsState {
                pending: parts,
                weights: vec![0.0; job.rows() * job.width()],
                inv: Vec::new(),
            }),
        }
    }

    /// Lands `cut`'s scores (`rows × cut.width()`); the job's last cut runs softmax.
    fn add_cut<T>(&self, job: &Job<'_, T>, cut: &Job<'_, T>, scores: &[f32], k: Kernels<T>) {
        // Poisoned only if another cut panicked here, and rayon passes that panic on.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (lo, width, w) = (job.lo(), job.width(), cut.width());
        if w > 0 {
            for (r, row) in scores.chunks_exact(w).enumerate() {
                state.weights[r * width + cut.lo() - lo..][..w].copy_from_slice(row);
            }
        }
        state.pending -= 1;
        if state.pending == 0 {
            let state = &mut *state;
            state.inv = (k.softmax)(job, &mut state.weights);
        }
    }

    /// The weights, once every cut has landed.
    fn landed(self) -> WeightsState {
        let state = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        debug_assert_eq!(state.pending, 0);
        state
    }
}

/// One (tile of query tokens, KV head) piece of work. Its rows are `token × group + head`.
struct Job<'a, T> {
    q: &'a [f32],
    /// Floats per token in `q`.
    q_stride: usize,
    /// Offset in `q` of the first token's first head of this group.
    q_first: usize,
    tokens: usize,
    /// Position of the first query token; the others follow.
    pos0: usize,
    layout: KvLayout,
    k_cache: &'a [T],
    v_cache: &'a [T],
    block_table: &'a [u32],
    kv_head: usize,
    group: usize,
    window: Option<usize>,
    scale: f32,
    /// ALiBi slopes of the group's query heads: each score gains `slope × (key − query)`.
    alibi: Option<&'a [f32]>,
    /// The keys `first..end` a cut of the task scores; `None`: all the tile spans.
    keys: Option<(usize, usize)>,
    /// The head dimensions `first..end` whose outputs the task computes.
    dims: (usize, usize),
}

impl<T> Clone for Job<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Job<'_, T> {}

impl<T> Job<'_, T> {
    fn rows(&self) -> usize {
        self.tokens * self.group
    }

    fn query(&self, row: usize) -> &[f32] {
        let hd = self.layout.head_dim;
        let (t, h) = (row / self.group, row % self.group);
        &self.q[self.q_first + t * self.q_stride + h * hd..][..hd]
    }

    /// The keys `row`'s query sees: `first..=last`.
    fn visible(&self, row: usize) -> (usize, usize) {
        let pos = self.pos0 + row / self.group;
        (self.window.map_or(0, |w| (pos + 1).saturating_sub(w)), pos)
    }

    /// First key any row sees (or the first of a cut's keys).
    fn lo(&self) -> usize {
        self.keys
            .map_or_else(|| self.visible(0).0, |(first, _)| first)
    }

    /// One past the last key the tile spans (or a cut's).
    fn end(&self) -> usize {
        self.keys.map_or(self.pos0 + self.tokens, |(_, end)| end)
    }

    /// Keys the tile spans (`lo..=` the last token's position): each row's scores are kept
    /// at `row × width + key − lo`.
    fn width(&self) -> usize {
        self.end() - self.lo()
    }

    fn chunks(&self) -> KeyChunks<'_> {
        KeyChunks {
            table: self.block_table,
            block_size: self.layout.block_size,
            pos: self.lo(),
            end: self.end(),
        }
    }

    /// The `part`-th of the task's keys in `parts` consecutive ranges, cut at multiples of
    /// `LANES` keys so that each range's chunks are as long as the whole task's.
    fn key_part(&self, part: usize, parts: usize) -> Self {
        let (lo, end) = (self.lo(), self.end());
        let cut = |i: usize| {
            if i >= parts {
                end
            } else {
                ((lo + (end - lo) * i / parts) / LANES * LANES).max(lo)
            }
        };
        Job {
            keys: Some((cut(part), cut(part + 1))),
            ..*self
        }
    }

    /// The `part`-th of `parts` ranges of head dimensions, cut at multiples of `LANES`.
    fn dim_part(&self, part: usize, parts: usize) -> Self {
        let hd = self.layout.head_dim;
        let vectors = hd.div_ceil(LANES);
        let cut = |i: usize| (vectors * i / parts * LANES).min(hd);
        Job {
            dims: (cut(part), cut(part + 1)),
            ..*self
        }
    }
}

/// Up to 16 consecutive keys that lie in one block.
struct KeyChunk {
    pos: usize,
    len: usize,
    block: usize,
    slot: usize,
}

/// The tile's keys in order, in chunks that never cross a block.
struct KeyChunks<'a> {
    table: &'a [u32],
    block_size: usize,
    pos: usize,
    end: usize,
}

impl Iterator for KeyChunks<'_> {
    type Item = KeyChunk;

    #[inline(always)]
    fn next(&mut self) -> Option<KeyChunk> {
        if self.pos >= self.end {
            return None;
        }
        let slot = self.pos % self.block_size;
        let len = (self.block_size - slot).min(LANES).min(self.end - self.pos);
        let chunk = KeyChunk {
            pos: self.pos,
            len,
            block: self.table[self.pos / self.block_size] as usize,
            slot,
        };
        self.pos += len;
        Some(chunk)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn softmax_avx512<T>(job: &Job<'_, T>, scores: &mut [f32]) -> Vec<f32> {
    softmax(job, scores)
}

/// Softmax compiled for AVX2 and FMA. It must be reached with no closure between: a closure
/// is compiled without its caller's target features, and the multiply-adds in one became
/// calls to libm's `fmaf`, 50–115 times slower (benchmarks/README.md).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2<T>(job: &Job<'_, T>, scores: &mut [f32]) -> Vec<f32> {
    softmax(job, scores)
}

thread_local! {
    /// Each thread's score buffer, kept between jobs: at long contexts a fresh one would be
    /// a fresh mapping from the OS, zeroed page by page, for every tile.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's score buffer, zeroed to `len`; give it back with `SCORES.set`.
#[inline(always)]
fn take_scores(len: usize) -> Vec<f32> {
    let mut buffer = SCORES.take();
    buffer.clear();
    buffer.resize(len, 0.0);
    buffer
}

/// Every row's score for every key of the tile (visible or not; softmax drops the others).
fn scores_generic<T: KvElement>(job: &Job<'_, T>, scores: &mut [f32]) {
    let l = job.layout;
    let (hd, bs) = (l.head_dim, l.block_size);
    let half = hd / 2;
    let (lo, width) = (job.lo(), job.width());
    for c in job.chunks() {
        let base = l.key_index(c.block, c.slot, job.kv_head);
        for r in 0..job.rows() {
            let q = job.query(r);
            let (mut a, mut b) = ([0.0f32; LANES], [0.0f32; LANES]);
            for (d, &x) in q.iter().enumerate() {
                let acc = if d < half { &mut a } else { &mut b };
                let k = &job.k_cache[base + d * bs..][..c.len];
                for (acc, &k) in acc.iter_mut().zip(k) {
                    *acc = x.mul_add(k.to_f32(), *acc);
                }
            }
            let row = &mut scores[r * width + c.pos - lo..][..c.len];
            for (s, (a, b)) in row.iter_mut().zip(a.iter().zip(&b)) {
                *s = (a + b) * job.scale;
            }
        }
    }
}

/// Turns each row's visible scores into unnormalised weights `exp(s − max)` (ALiBi added
/// first) and every other key's into 0. Returns each row's 1 / Σ weights.
#[inline(always)]
fn softmax<T>(job: &Job<'_, T>, scores: &mut [f32]) -> Vec<f32> {
    let (lo, width) = (job.lo(), job.width());
    let mut inv = Vec::with_capacity(job.rows());
    for (r, row) in scores.chunks_exact_mut(width).enumerate() {
        let (first, last) = job.visible(r);
        let (a, b) = (first - lo, last + 1 - lo);
        if let Some(slopes) = job.alibi {
            let slope = slopes[r % job.group];
            for (i, s) in row[a..b].iter_mut().enumerate() {
                let distance = (first + i) as f32 - last as f32;
                *s += slope * distance;
            }
        }
        row[..a].fill(0.0);
        row[b..].fill(0.0);
        let visible = &mut row[a..b];
        let max = visible.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for s in visible.iter_mut() {
            *s = exp_nonpositive(*s - max);
        }
        inv.push(1.0 / lane_sum(visible));
    }
    inv
}

/// `out[row] = (Σ_key w[row][key] · v[key]) × inv[row]`, keys in position order.
#[inline(always)]
fn values_generic<T: KvElement>(job: &Job<'_, T>, weights: &[f32], inv: &[f32]) -> Vec<f32> {
    let l = job.layout;
    let hd = l.head_dim;
    let (lo, width) = (job.lo(), job.width());
    let (d0, d1) = job.dims;
    let mut out = vec![0.0f32; job.rows() * hd];
    for (r, o) in out.chunks_exact_mut(hd).enumerate() {
        let o = &mut o[d0..d1];
        let (first, last) = job.visible(r);
        for c in job.chunks() {
            for i in 0..c.len {
                let p = c.pos + i;
                if p < first || p > last {
                    continue;
                }
                let at = l.value_index(c.block, c.slot + i, job.kv_head);
                let v = &job.v_cache[at + d0..at + d1];
                let w = weights[r * width + p - lo];
                for (o, &x) in o.iter_mut().zip(v) {
                    *o = w.mul_add(x.to_f32(), *o);
                }
            }
        }
        o.iter_mut().for_each(|o| *o *= inv[r]);
    }
    out
}

/// Σ x in 16 interleaved lanes (element i into lane i mod 16), reduced by [`reduce16`].
#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(rest) {
        *a += v;
    }
    reduce16(&acc)
}

/// The fixed halving tree over 16 lanes (l + 8, then + 4, + 2, + 1).
#[inline(always)]
fn reduce16(a: &[f32; 16]) -> f32 {
    let mut s8 = [0.0f32; 8];
    for l in 0..8 {
        s8[l] = a[l] + a[l + 8];
    }
    let s4 = [s8[0] + s8[4], s8[1] + s8[5], s8[2] + s8[6], s8[3] + s8[7]];
    let s2 = [s4[0] + s4[2], s4[1] + s4[3]];
    s2[0] + s2[1]
}

/// Asking for K and V ahead of use, for the vector kernels: blocks lie anywhere in memory.
#[cfg(target_arch = "x86_64")]
mod ahead {
    use std::arch::x86_64::*;

    use super::Job;

    /// Cache lines to ask for ahead of use, a part at a time: spread over the loop that
    /// computes the chunk before them, the requests keep memory busy without a burst of them
    /// waiting on the few line-fill buffers a core has (with a burst per chunk, a 32-sequence
    /// decode step took 18–31% longer: `attention_speed`). They lie in `runs` runs of
    /// `run_lines` lines, `stride` bytes apart: one run per line where the memory is
    /// contiguous, one per key where a task weighs only some of each value's dimensions.
    #[derive(Clone, Copy)]
    pub(super) struct Lines {
        start: *const i8,
        runs: usize,
        run_lines: usize,
        stride: usize,
    }

    impl Lines {
        const NONE: Lines = Lines {
            start: std::ptr::null(),
            runs: 0,
            run_lines: 0,
            stride: 0,
        };

        /// `len` contiguous elements from `at`.
        fn of<T>(at: *const T, len: usize) -> Self {
            Lines {
                start: at as *const i8,
                runs: (len * std::mem::size_of::<T>()).div_ceil(64),
                run_lines: 1,
                stride: 64,
            }
        }

        /// `runs` runs of `len` elements, the first at `at`, each `stride` elements on.
        fn strided<T>(at: *const T, runs: usize, len: usize, stride: usize) -> Self {
            let size = std::mem::size_of::<T>();
            Lines {
                start: at as *const i8,
                runs,
                run_lines: (len * size).div_ceil(64),
                stride: stride * size,
            }
        }

        /// Split into parts of `per_part` runs, the last perhaps shorter or empty.
        #[inline(always)]
        pub(super) fn in_parts(self, parts: usize) -> Parts {
            Parts {
                lines: self,
                per_part: self.runs.div_ceil(parts.max(1)),
            }
        }

        /// Asks for all of it at once.
        #[inline(always)]
        fn ask_all(self) {
            self.in_parts(1).ask(0);
        }
    }

    /// [`Lines`] asked for a part at a time (no division in the loop that asks).
    #[derive(Clone, Copy)]
    pub(super) struct Parts {
        lines: Lines,
        per_part: usize,
    }

    impl Parts {
        /// Asks for part `i` (a hint: never faults).
        #[inline(always)]
        pub(super) fn ask(self, i: usize) {
            let l = self.lines;
            let first = i * self.per_part;
            for run in first..(first + self.per_part).min(l.runs) {
                let at = l.start.wrapping_add(run * l.stride);
                for line in 0..l.run_lines {
                    // Safety: a prefetch reads nothing and cannot fault, whatever the address.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line * 64)) };
                }
            }
        }
    }

    /// Chunks of keys asked for ahead of the one being computed: enough to cover the
    /// memory's latency at this kernel's speed.
    const AHEAD: usize = 2;

    /// What the score loop asks for while it computes each chunk: the keys `AHEAD` chunks
    /// on, and once they are all asked for, the first values the value loop will read.
    pub(super) struct WhileScoring<'j, 'a, T> {
        job: &'j Job<'a, T>,
        keys: super::KeyChunks<'j>,
        values: std::iter::Take<super::KeyChunks<'j>>,
    }

    impl<'j, 'a, T> WhileScoring<'j, 'a, T> {
        /// Asks for the first `AHEAD` chunks' keys now.
        #[inline(always)]
        pub(super) fn start(job: &'j Job<'a, T>) -> Self {
            let mut keys = job.chunks();
            keys.by_ref()
                .take(AHEAD)
                .for_each(|n| key_lines(job, &n).ask_all());
            WhileScoring {
                job,
                keys,
                values: job.chunks().take(AHEAD),
            }
        }

        /// The lines to ask for while the next chunk computes.
        #[inline(always)]
        pub(super) fn next_lines(&mut self) -> Lines {
            match self.keys.next() {
                Some(n) => key_lines(self.job, &n),
                None => self
                    .values
                    .next()
                    .map_or(Lines::NONE, |n| value_lines(self.job, &n)),
            }
        }
    }

    /// What the value loop asks for while it weighs each chunk: the values `AHEAD` chunks on
    /// (the score loop asked for the first `AHEAD`), or nothing on a pass that finds them in
    /// cache.
    pub(super) struct WhileWeighing<'j, 'a, T> {
        job: &'j Job<'a, T>,
        values: Option<std::iter::Skip<super::KeyChunks<'j>>>,
    }

    impl<'j, 'a, T> WhileWeighing<'j, 'a, T> {
        #[inline(always)]
        pub(super) fn start(job: &'j Job<'a, T>, ask: bool) -> Self {
            WhileWeighing {
                job,
                values: ask.then(|| job.chunks().skip(AHEAD)),
            }
        }

        #[inline(always)]
        pub(super) fn next_lines(&mut self) -> Lines {
            self.values
                .as_mut()
                .and_then(Iterator::next)
                .map_or(Lines::NONE, |n| value_lines(self.job, &n))
        }
    }

    /// One chunk's keys of the job's head (contiguous: `head_dim` rows of `block_size`).
    #[inline(always)]
    fn key_lines<T>(job: &Job<'_, T>, n: &super::KeyChunk) -> Lines {
        let l = job.layout;
        let at = l.key_index(n.block, n.slot, job.kv_head);
        Lines::of(
            job.k_cache.as_ptr().wrapping_add(at),
            (l.head_dim - 1) * l.block_size + n.len,
        )
    }

    /// One chunk's values of the job's head (contiguous: `len` vectors of `head_dim`), or of
    /// the job's dimensions of each.
    #[inline(always)]
    fn value_lines<T>(job: &Job<'_, T>, n: &super::KeyChunk) -> Lines {
        let l = job.layout;
        let at = job
            .v_cache
            .as_ptr()
            .wrapping_add(l.value_index(n.block, n.slot, job.kv_head));
        match job.dims {
            (0, end) if end == l.head_dim => Lines::of(at, n.len * l.head_dim),
            (first, end) => Lines::strided(at.wrapping_add(first), n.len, end - first, l.head_dim),
        }
    }
}

/// The score and value loops with explicit registers: the same per-row operations as the
/// portable loops, with each key vector loaded once for all the tile's rows.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::ahead::{WhileScoring, WhileWeighing};
    use super::{Job, KvElement, LANES};

    /// Calls `$f::<R>` for the job's row count (1 ..= MAX_ROWS).
    macro_rules! by_rows {
        ($f:ident, $job:expr, $($arg:expr),*) => {
            match $job.rows() {
                1 => $f::<T, 1>($job, $($arg),*),
                2 => $f::<T, 2>($job, $($arg),*),
                3 => $f::<T, 3>($job, $($arg),*),
                4 => $f::<T, 4>($job, $($arg),*),
                5 => $f::<T, 5>($job, $($arg),*),
                6 => $f::<T, 6>($job, $($arg),*),
                7 => $f::<T, 7>($job, $($arg),*),
                8 => $f::<T, 8>($job, $($arg),*),
                9 => $f::<T, 9>($job, $($arg),*),
                10 => $f::<T, 10>($job, $($arg),*),
                11 => $f::<T, 11>($job, $($arg),*),
                _ => $f::<T, 12>($job, $($arg),*),
            }
        };
    }

    /// Lanes `0..len` set.
    #[inline(always)]
    fn mask(len: usize) -> __mmask16 {
        ((1u32 << len) - 1) as __mmask16
    }

    /// Safety: needs AVX-512F/BW/VL; the job has 1 ..= MAX_ROWS rows; `scores` is
    /// `rows × width`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn scores<T: KvElement>(job: &Job<'_, T>, scores: &mut [f32]) {
        debug_assert!(job.rows() <= super::MAX_ROWS && scores.len() == job.rows() * job.width());
        // Safety: passed on from the caller.
        unsafe { by_rows!(scores_rows, job, scores) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn scores_rows<T: KvElement, const R: usize>(job: &Job<'_, T>, scores: &mut [f32]) {
        let l = job.layout;
        let (hd, bs) = (l.head_dim, l.block_size);
        let half = hd / 2;
        let (lo, width) = (job.lo(), job.width());
        let q: [*const f32; R] = std::array::from_fn(|r| job.query(r).as_ptr());
        let scale = _mm512_set1_ps(job.scale);
        let kp = job.k_cache.as_ptr();
        let out = scores.as_mut_ptr();
        let mut ahead = WhileScoring::start(job);
        for c in job.chunks() {
            let ahead = ahead.next_lines().in_parts(half);
            let m = mask(c.len);
            // Safety (for the loads below): lanes `0..len` of each K row lie in this block
            // (`len` ≤ block_size − slot); the others are masked off and not read. Each query
            // row is `hd` long.
            let k = unsafe { kp.add(l.key_index(c.block, c.slot, job.kv_head)) };
            let mut a = [_mm512_setzero_ps(); R];
            let mut b = [_mm512_setzero_ps(); R];
            for d in 0..half {
                ahead.ask(d);
                unsafe {
                    let ka = T::load16(m, k.add(d * bs));
                    let kb = T::load16(m, k.add((d + half) * bs));
                    for r in 0..R {
                        a[r] = _mm512_fmadd_ps(_mm512_set1_ps(*q[r].add(d)), ka, a[r]);
                        b[r] = _mm512_fmadd_ps(_mm512_set1_ps(*q[r].add(d + half)), kb, b[r]);
                    }
                }
            }
            if hd % 2 == 1 {
                let d = hd - 1;
                unsafe {
                    let kb = T::load16(m, k.add(d * bs));
                    for r in 0..R {
                        b[r] = _mm512_fmadd_ps(_mm512_set1_ps(*q[r].add(d)), kb, b[r]);
                    }
                }
            }
            for r in 0..R {
                let s = _mm512_mul_ps(_mm512_add_ps(a[r], b[r]), scale);
                // Safety: lanes `0..len` are this row's keys `pos..pos + len`, inside the row.
                unsafe { _mm512_mask_storeu_ps(out.add(r * width + c.pos - lo), m, s) };
            }
        }
    }

    /// Safety: needs AVX-512F/BW/VL; the job has 1 ..= MAX_ROWS rows; `weights` is
    /// `rows × width` with 0 for every key a row does not see.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn values<T: KvElement>(job: &Job<'_, T>, weights: &[f32], inv: &[f32]) -> Vec<f32> {
        debug_assert!(job.rows() <= super::MAX_ROWS && weights.len() == job.rows() * job.width());
        // Safety: passed on from the caller.
        unsafe { by_rows!(values_rows, job, weights, inv) }
    }

    /// Keys a row does not see have weight +0, and adding 0 × v to an accumulator leaves it
    /// unchanged (it starts at +0 and can never become −0), so looping over the whole tile
    /// gives each row exactly its own chain over its visible keys.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn values_rows<T: KvElement, const R: usize>(
        job: &Job<'_, T>,
        weights: &[f32],
        inv: &[f32],
    ) -> Vec<f32> {
        // Column vectors per pass over the keys: as many as fit in registers beside R rows,
        // and no more than the job's dimensions fill.
        let (d0, d1) = job.dims;
        let vectors = d1.div_ceil(LANES) - d0 / LANES;
        // Safety: passed on from the caller.
        unsafe {
            if R <= 6 && vectors > 2 {
                values_passes::<T, R, 4>(job, weights, inv)
            } else {
                values_passes::<T, R, 2>(job, weights, inv)
            }
        }
    }

    /// `V` output vectors of every row per pass over the job's dimensions; lanes past them
    /// are masked off.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn values_passes<T: KvElement, const R: usize, const V: usize>(
        job: &Job<'_, T>,
        weights: &[f32],
        inv: &[f32],
    ) -> Vec<f32> {
        let l = job.layout;
        let hd = l.head_dim;
        let (lo, width) = (job.lo(), job.width());
        let (d0, d1) = job.dims;
        let mut out = vec![0.0f32; R * hd];
        let vp = job.v_cache.as_ptr();
        let wp: [*const f32; R] = std::array::from_fn(|r| weights[r * width..].as_ptr());
        for first in (d0 / LANES..d1.div_ceil(LANES)).step_by(V) {
            let masks: [__mmask16; V] =
                std::array::from_fn(|j| mask((d1 - ((first + j) * LANES).min(d1)).min(LANES)));
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            // The first pass over the keys asks for values ahead; the later passes find them
            // in cache.
            let mut ahead = WhileWeighing::start(job, first == d0 / LANES);
            for c in job.chunks() {
                let ahead = ahead.next_lines().in_parts(c.len);
                let mut at = l.value_index(c.block, c.slot, job.kv_head) + first * LANES;
                for (i, key) in (c.pos - lo..c.pos - lo + c.len).enumerate() {
                    ahead.ask(i);
                    // Safety: the masks keep each load inside this key's `hd` values (below
                    // `d1` ≤ hd; a vector past them reads nothing, where the pointer may lie
                    // outside the cache); each weights row is `width` long and `key` < width.
                    unsafe {
                        let v: [__m512; V] = std::array::from_fn(|j| {
                            T::load16(masks[j], vp.wrapping_add(at + j * LANES))
                        });
                        for r in 0..R {
                            let w = _mm512_set1_ps(*wp[r].add(key));
                            for j in 0..V {
                                acc[r][j] = _mm512_fmadd_ps(w, v[j], acc[r][j]);
                            }
                        }
                    }
                    at += hd;
                }
            }
            for r in 0..R {
                let scale = _mm512_set1_ps(inv[r]);
                for j in 0..V {
                    let o = _mm512_mul_ps(acc[r][j], scale);
                    // Safety: the mask keeps the store inside row r's outputs below `d1` ≤ hd
                    // (none at all past them, where the pointer may lie outside `out`).
                    unsafe {
                        _mm512_mask_storeu_ps(
                            out.as_mut_ptr().wrapping_add(r * hd + (first + j) * LANES),
                            masks[j],
                            o,
                        )
                    };
                }
            }
        }
        out
    }
}

/// The AVX2 score and value loops: the portable loops' per-row operations, 8 lanes to a
/// register, with each key and value vector loaded once for a group of rows. 16 registers
/// hold fewer rows than AVX-512's 32, so a tile's rows go in groups, each a pass over the keys.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::element::load_up_to8;
    use super::ahead::{WhileScoring, WhileWeighing};
    use super::{Job, KvElement};

    /// Lanes per register.
    const LANES: usize = 8;
    /// Rows per pass: two accumulators each for the scores (the halves of the head's
    /// dimensions), two value vectors each for the outputs, beside the loaded vectors.
    const ROWS: usize = 6;
    /// Output vectors per row in one pass over the values.
    const VALUE_VECTORS: usize = 2;

    /// Calls `$f::<T, R>` for a group of `$rows` (1 ..= ROWS) rows.
    macro_rules! by_rows {
        ($f:ident, $rows:expr, $($arg:expr),*) => {
            match $rows {
                1 => $f::<T, 1>($($arg),*),
                2 => $f::<T, 2>($($arg),*),
                3 => $f::<T, 3>($($arg),*),
                4 => $f::<T, 4>($($arg),*),
                5 => $f::<T, 5>($($arg),*),
                _ => $f::<T, 6>($($arg),*),
            }
        };
    }

    /// Lanes `0..len` of a store mask.
    #[inline(always)]
    unsafe fn store_mask(len: usize) -> __m256i {
        // Safety: the CPU has AVX2 (the callers' target features).
        unsafe {
            _mm256_cmpgt_epi32(
                _mm256_set1_epi32(len as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            )
        }
    }

    /// Safety: needs AVX2 and FMA; `scores` is `rows × width`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores<T: KvElement>(job: &Job<'_, T>, scores: &mut [f32]) {
        debug_assert_eq!(scores.len(), job.rows() * job.width());
        for r0 in (0..job.rows()).step_by(ROWS) {
            let rows = (job.rows() - r0).min(ROWS);
            // Safety: passed on from the caller.
            unsafe { by_rows!(scores_rows, rows, job, r0, scores) }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_rows<T: KvElement, const R: usize>(
        job: &Job<'_, T>,
        r0: usize,
        scores: &mut [f32],
    ) {
        let l = job.layout;
        let (hd, bs) = (l.head_dim, l.block_size);
        let half = hd / 2;
        let (lo, width) = (job.lo(), job.width());
        let q: [*const f32; R] = std::array::from_fn(|r| job.query(r0 + r).as_ptr());
        let scale = _mm256_set1_ps(job.scale);
        let kp = job.k_cache.as_ptr();
        let out = scores.as_mut_ptr();
        // The first group of rows asks for memory ahead; the others find it in cache.
        let mut ahead = (r0 == 0).then(|| WhileScoring::start(job));
        for c in job.chunks() {
            let k = kp.wrapping_add(l.key_index(c.block, c.slot, job.kv_head));
            for first in (0..c.len).step_by(LANES) {
                let len = (c.len - first).min(LANES);
                let ask = match (&mut ahead, first) {
                    (Some(a), 0) => Some(a.next_lines().in_parts(half)),
                    _ => None,
                };
                let mut a = [_mm256_setzero_ps(); R];
                let mut b = [_mm256_setzero_ps(); R];
                for d in 0..half {
                    if let Some(ask) = ask {
                        ask.ask(d);
                    }
                    // Safety (for the loads below): keys `first..first + len` of each K row
                    // lie in this block (`len` ≤ block_size − slot − first); each query row is
                    // `hd` long.
                    unsafe {
                        let ka = load_up_to8(len, k.add(d * bs + first));
                        let kb = load_up_to8(len, k.add((d + half) * bs + first));
                        for r in 0..R {
                            a[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*q[r].add(d)), ka, a[r]);
                            b[r] = _mm256_fmadd_ps(
                                _mm256_broadcast_ss(&*q[r].add(d + half)),
                                kb,
                                b[r],
                            );
                        }
                    }
                }
                if hd % 2 == 1 {
                    let d = hd - 1;
                    // Safety: as above.
                    unsafe {
                        let kb = load_up_to8(len, k.add(d * bs + first));
                        for r in 0..R {
                            b[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*q[r].add(d)), kb, b[r]);
                        }
                    }
                }
                let mask = store_mask(len);
                for r in 0..R {
                    let s = _mm256_mul_ps(_mm256_add_ps(a[r], b[r]), scale);
                    // Safety: lanes `0..len` are this row's keys `pos + first ..`, inside it.
                    unsafe {
                        _mm256_maskstore_ps(out.add((r0 + r) * width + c.pos + first - lo), mask, s)
                    };
                }
            }
        }
    }

    /// Safety: needs AVX2 and FMA; `weights` is `rows × width` with 0 for every key a row
    /// does not see (adding 0 × v leaves an accumulator as it is, as in the AVX-512 loop).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn values<T: KvElement>(job: &Job<'_, T>, weights: &[f32], inv: &[f32]) -> Vec<f32> {
        debug_assert_eq!(weights.len(), job.rows() * job.width());
        let mut out = vec![0.0f32; job.rows() * job.layout.head_dim];
        for r0 in (0..job.rows()).step_by(ROWS) {
            let rows = (job.rows() - r0).min(ROWS);
            // Safety: passed on from the caller.
            unsafe { by_rows!(values_rows, rows, job, r0, weights, inv, &mut out) }
        }
        out
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn values_rows<T: KvElement, const R: usize>(
        job: &Job<'_, T>,
        r0: usize,
        weights: &[f32],
        inv: &[f32],
        out: &mut [f32],
    ) {
        const V: usize = VALUE_VECTORS;
        let l = job.layout;
        let hd = l.head_dim;
        let (lo, width) = (job.lo(), job.width());
        let (d0, d1) = job.dims;
        let vp = job.v_cache.as_ptr();
        let wp: [*const f32; R] = std::array::from_fn(|r| weights[(r0 + r) * width..].as_ptr());
        for first in (d0 / LANES..d1.div_ceil(LANES)).step_by(V) {
            let lens: [usize; V] =
                std::array::from_fn(|j| d1.saturating_sub((first + j) * LANES).min(LANES));
            let mut acc = [[_mm256_setzero_ps(); V]; R];
            let mut ahead = WhileWeighing::start(job, r0 == 0 && first == d0 / LANES);
            for c in job.chunks() {
                let ask = ahead.next_lines().in_parts(c.len);
                let mut at = l.value_index(c.block, c.slot, job.kv_head) + first * LANES;
                for (i, key) in (c.pos - lo..c.pos - lo + c.len).enumerate() {
                    ask.ask(i);
                    // Safety: each load reads only this key's values (`lens`; none past `d1`
                    // ≤ hd, where the pointer may lie outside the cache); each weights row is
                    // `width` long and `key` < width.
                    unsafe {
                        let v: [__m256; V] = std::array::from_fn(|j| {
                            load_up_to8(lens[j], vp.wrapping_add(at + j * LANES))
                        });
                        for r in 0..R {
                            let w = _mm256_broadcast_ss(&*wp[r].add(key));
                            for j in 0..V {
                                acc[r][j] = _mm256_fmadd_ps(w, v[j], acc[r][j]);
                            }
                        }
                    }
                    at += hd;
                }
            }
            for r in 0..R {
                let scale = _mm256_set1_ps(inv[r0 + r]);
                for j in 0..V {
                    let o = _mm256_mul_ps(acc[r][j], scale);
                    // Safety: the mask keeps the store inside row r's outputs below `d1` ≤ hd
                    // (none at all past them, where the pointer may lie outside `out`).
                    unsafe {
                        _mm256_maskstore_ps(
                            out.as_mut_ptr()
                                .wrapping_add((r0 + r) * hd + (first + j) * LANES),
                            store_mask(lens[j]),
                            o,
                        )
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvDtype, KvLayer, KvPool};
    use rand::{Rng, SeedableRng};

    /// Dense reference: K/V contiguous per sequence, plain loops, libm's exp.
    #[allow(clippy::too_many_arguments)]
    fn dense(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        len: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
        start: usize,
        window: Option<usize>,
        alibi: Option<&[f32]>,
    ) -> Vec<f32> {
        let mut out = vec![0.0; (len - start) * nh * hd];
        for t in start..len {
            let first = window.map_or(0, |w| (t + 1).saturating_sub(w));
            for h in 0..nh {
                let kh = h / (nh / nkv);
                let qv = &q[((t - start) * nh + h) * hd..][..hd];
                let s: Vec<f32> = (first..=t)
                    .map(|j| {
                        let dot = (0..hd)
                            .map(|d| qv[d] * k[(j * nkv + kh) * hd + d])
                            .sum::<f32>()
                            / (hd as f32).sqrt();
                        dot + alibi.map_or(0.0, |a| a[h] * (j as f32 - t as f32))
                    })
                    .collect();
                let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for d in 0..hd {
                    out[((t - start) * nh + h) * hd + d] = (first..=t)
                        .map(|j| e[j - first] / z * v[(j * nkv + kh) * hd + d])
                        .sum();
                }
            }
        }
        out
    }

    /// A sequence of `len` random tokens scattered over shuffled blocks of a pool.
    struct Case {
        layout: KvLayout,
        table: Vec<u32>,
        k: Vec<f32>,
        v: Vec<f32>,
        pool: KvPool,
    }

    fn case(rng: &mut impl Rng, nkv: usize, hd: usize, bs: usize, len: usize) -> Case {
        case_in(rng, nkv, hd, bs, len, KvDtype::F32)
    }

    fn case_in(
        rng: &mut impl Rng,
        nkv: usize,
        hd: usize,
        bs: usize,
        len: usize,
        dtype: KvDtype,
    ) -> Case {
        let layout = KvLayout {
            num_blocks: 64,
            block_size: bs,
            kv_heads: nkv,
            head_dim: hd,
        };
        let table: Vec<u32> = (0..len.div_ceil(bs) as u32)
            .map(|b| (b * 7 + 3) % 64)
            .collect();
        let stride = nkv * hd;
        let k: Vec<f32> = (0..len * stride)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let v: Vec<f32> = (0..len * stride)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let mut pool = KvPool::with_dtype(1, layout, dtype);
        for p in 0..len {
            let s = p * stride..(p + 1) * stride;
            pool.write(0, &table, p, &k[s.clone()], &v[s]);
        }
        Case {
            layout,
            table,
            k,
            v,
            pool,
        }
    }

    #[test]
    fn paged_equals_dense_for_many_shapes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let shapes = [
            (4, 4, 8, 1),
            (4, 2, 16, 4),
            (8, 1, 32, 16),
            (6, 3, 64, 32),
            (2, 1, 7, 5),
            (16, 1, 16, 16),
        ];
        for &(nh, nkv, hd, bs) in &shapes {
            for &len in &[1usize, 5, 16, 33] {
                for &start in &[0usize, len - 1, len / 2] {
                    for window in [None, Some(3), Some(20)] {
                        for alibi in [false, true] {
                            let c = case(&mut rng, nkv, hd, bs, len);
                            let q: Vec<f32> = (0..(len - start) * nh * hd)
                                .map(|_| rng.random_range(-1.0..1.0))
                                .collect();
                            let slopes: Vec<f32> = (0..nh).map(|h| 0.5 / (h + 1) as f32).collect();
                            let alibi = alibi.then_some(slopes.as_slice());
                            let seqs = [AttentionSeq {
                                first_token: 0,
                                num_tokens: len - start,
                                start_pos: start,
                                block_table: &c.table,
                            }];
                            let KvLayer::F32 { k: kc, v: vc } = c.pool.layer(0) else {
                                unreachable!("an f32 pool")
                            };
                            let scale = 1.0 / (hd as f32).sqrt();
                            let got = paged_attention(
                                &q, nh, c.layout, kc, vc, &seqs, window, scale, alibi,
                            );
                            let want =
                                dense(&q, &c.k, &c.v, len, nh, nkv, hd, start, window, alibi);
                            for (a, b) in got.iter().zip(&want) {
                                assert!(
                                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                                    "nh={nh} nkv={nkv} hd={hd} bs={bs} len={len} \
                                     window={window:?}: {a} vs {b}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The AVX-512, AVX2 and portable kernels give the same bits, for every tile shape,
    /// block size, odd and even head sizes, windows and ALiBi; and a token's output does not
    /// depend on the tile it is computed in (a prefill chunk equals token-by-token decoding).
    #[test]
    fn cpu_paths_and_tilings_agree_exactly() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let shapes = [
            (9, 3, 64, 16),
            (4, 1, 16, 4),
            (2, 2, 7, 5),
            (16, 1, 32, 16),
            (8, 2, 80, 32),
        ];
        for &(nh, nkv, hd, bs) in &shapes {
            for window in [None, Some(6)] {
                for alibi in [false, true] {
                    for dtype in [KvDtype::F32, KvDtype::Bf16, KvDtype::Fp8] {
                        let len = 37;
                        let c = case_in(&mut rng, nkv, hd, bs, len, dtype);
                        let q: Vec<f32> = (0..len * nh * hd)
                            .map(|_| rng.random_range(-2.0..2.0))
                            .collect();
                        let slopes: Vec<f32> = (0..nh).map(|h| 0.25 / (h + 1) as f32).collect();
                        let check = Check {
                            q: &q,
                            nh,
                            layout: c.layout,
                            table: &c.table,
                            len,
                            window,
                            alibi: alibi.then_some(slopes.as_slice()),
                        };
                        match c.pool.layer(0) {
                            KvLayer::F32 { k, v } => check.run(k, v),
                            KvLayer::Bf16 { k, v } => check.run(k, v),
                            KvLayer::Fp8 { k, v } => check.run(k, v),
                        }
                    }
                }
            }
        }
    }

    /// Tasks are cut only where threads would wait, only those left over after an even
    /// share, only where the keys are many, and only where each thread's values are whole
    /// cache lines of its own.
    #[test]
    fn few_long_tasks_are_cut_across_threads() {
        use half::bf16;
        /// How `sequences` decoding at `context` over `kv` heads of `hd` dimensions are split.
        fn split_in<T: KvElement>(
            cache: &[T],
            (sequences, context, threads): (usize, usize, usize),
            (kv, hd): (usize, usize),
        ) -> Split {
            let layout = KvLayout {
                num_blocks: 64,
                block_size: 16,
                kv_heads: kv,
                head_dim: hd,
            };
            let table: Vec<u32> = (0..MIN_SPLIT_KEYS as u32).collect();
            let q = vec![0.0f32; 32 * 9 * 128];
            let seqs: Vec<AttentionSeq<'_>> = (0..sequences)
                .map(|s| AttentionSeq {
                    first_token: s,
                    num_tokens: 1,
                    start_pos: context - 1,
                    block_table: &table,
                })
                .collect();
            let batch = Batch {
                q: &q,
                num_heads: 9,
                layout,
                k_cache: cache,
                v_cache: cache,
                seqs: &seqs,
                window: None,
                scale: 1.0,
                alibi: None,
            };
            Split::of(&batch.jobs(), layout, threads)
        }
        let split = |sequences, context, threads, kv, hd| {
            split_in(&[bf16::ZERO], (sequences, context, threads), (kv, hd))
        };
        let long = MIN_SPLIT_KEYS;
        let whole = |n| Split { whole: n, parts: 1 };
        // One sequence's three KV heads on two threads: one each, the third cut in two.
        assert_eq!(split(1, long, 2, 3, 64), Split { whole: 2, parts: 2 });
        // One KV head: cut in two.
        assert_eq!(split(1, long, 2, 1, 64), Split { whole: 0, parts: 2 });
        // On 16 threads, all three cut into as many parts as whole lines of bf16 values allow.
        assert_eq!(split(1, long, 16, 3, 128), Split { whole: 0, parts: 4 });
        // Three sequences: eight whole, the ninth cut in two.
        assert_eq!(split(3, long, 2, 3, 64), Split { whole: 8, parts: 2 });
        // Short contexts, one thread, or tasks that share out evenly: whole.
        assert_eq!(split(1, long - 1, 2, 3, 64), whole(3));
        assert_eq!(split(1, long, 1, 3, 64), whole(3));
        assert_eq!(split(2, long, 2, 1, 64), whole(2));
        assert_eq!(split(2, long, 2, 3, 64), whole(6));
        assert_eq!(split(32, long, 2, 3, 64), whole(96));
        // 48 bf16 dimensions are not whole lines in two parts.
        assert_eq!(split(1, long, 2, 3, 48), whole(3));
        // An fp8 value row of 64 dimensions is one line: cut in halves of it all the same.
        let fp8 = [crate::kv::Fp8(0)];
        assert_eq!(
            split_in(&fp8, (1, long, 2), (3, 64)),
            Split { whole: 2, parts: 2 }
        );
        assert_eq!(
            split_in(&fp8, (1, long, 4), (3, 64)),
            Split { whole: 0, parts: 2 }
        );
    }

    /// One case of `cpu_paths_and_tilings_agree_exactly`, for either cache element type.
    struct Check<'a> {
        q: &'a [f32],
        nh: usize,
        layout: KvLayout,
        table: &'a [u32],
        len: usize,
        window: Option<usize>,
        alibi: Option<&'a [f32]>,
    }

    impl Check<'_> {
        fn run<T: KvElement>(&self, k: &[T], v: &[T]) {
            let len = self.len;
            let whole = [AttentionSeq {
                first_token: 0,
                num_tokens: len,
                start_pos: 0,
                block_table: self.table,
            }];
            let one_by_one: Vec<AttentionSeq<'_>> = (0..len)
                .map(|t| AttentionSeq {
                    first_token: t,
                    num_tokens: 1,
                    start_pos: t,
                    block_table: self.table,
                })
                .collect();
            // Tasks whole, all cut across threads into 2 and 3 parts, and all but the first
            // cut into 2.
            let splits = [
                Split {
                    whole: usize::MAX,
                    parts: 1,
                },
                Split { whole: 0, parts: 2 },
                Split { whole: 0, parts: 3 },
                Split { whole: 1, parts: 2 },
            ];
            let run = |seqs: &[AttentionSeq<'_>], kernels: Kernels<T>, split: Split| {
                let batch = Batch {
                    q: self.q,
                    num_heads: self.nh,
                    layout: self.layout,
                    k_cache: k,
                    v_cache: v,
                    seqs,
                    window: self.window,
                    scale: 0.2,
                    alibi: self.alibi,
                };
                batch.run_split(&batch.jobs(), kernels, split)
            };
            let what = format!("{:?} {}", self.layout, std::any::type_name::<T>());
            let generic = run(&whole, Kernels::PORTABLE, splits[0]);
            let decoded = run(&one_by_one, Kernels::PORTABLE, splits[0]);
            assert_eq!(generic, decoded, "tiling changed bits: {what}");
            let best = Kernels::best(self.nh / self.layout.kv_heads);
            #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
            let mut paths = vec![("portable", Kernels::PORTABLE), ("best", best)];
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                paths.push(("AVX2", Kernels::AVX2));
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
                && self.nh / self.layout.kv_heads <= MAX_ROWS
            {
                paths.push(("AVX-512", Kernels::AVX512));
            }
            for (name, kernels) in paths {
                for split in splits {
                    assert_eq!(
                        run(&whole, kernels, split),
                        generic,
                        "{name} {split:?}: {what}"
                    );
                    assert_eq!(
                        run(&one_by_one, kernels, split),
                        generic,
                        "{name} {split:?}, one by one: {what}"
                    );
                }
            }
        }
    }
}
