//! Causal attention that reads K and V in place through block tables (no gather into a
//! contiguous copy), parallel across query tokens and heads.

use rayon::prelude::*;

use super::KvLayout;

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
/// Query at position p sees keys `max(0, p + 1 - window) ..= p`.
///
/// One task per (query token, KV head): the query heads that share a KV head (GQA) are
/// served from one read of each key and value, and keys are walked block by block through
/// the block table. A query's result depends only on its own sequence, never on the batch.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    q: &[f32],
    num_heads: usize,
    layout: KvLayout,
    k_cache: &[f32],
    v_cache: &[f32],
    seqs: &[AttentionSeq<'_>],
    sliding_window: Option<usize>,
    scale: f32,
    alibi: Option<&[f32]>,
) -> Vec<f32> {
    let hd = layout.head_dim;
    let group = num_heads / layout.kv_heads;
    let total_tokens: usize = seqs
        .iter()
        .map(|s| s.first_token + s.num_tokens)
        .max()
        .unwrap_or(0);
    // Map each flat token to (sequence, position) so every task is independent.
    let mut owner = vec![(0usize, 0usize); total_tokens];
    for (si, s) in seqs.iter().enumerate() {
        for t in 0..s.num_tokens {
            owner[s.first_token + t] = (si, s.start_pos + t);
        }
    }
    let mut out = vec![0.0f32; total_tokens * num_heads * hd];
    // Heads of one KV group are adjacent in a token's row, so each task owns one chunk.
    out.par_chunks_mut(group * hd)
        .enumerate()
        .for_each(|(task, out_group)| {
            let token = task / layout.kv_heads;
            let kv_head = task % layout.kv_heads;
            let (si, pos) = owner[token];
            let first = sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let job = Job {
                q: &q[task * group * hd..(task + 1) * group * hd],
                layout,
                k_cache,
                v_cache,
                block_table: seqs[si].block_table,
                kv_head,
                group,
                first,
                last: pos,
                scale,
                alibi: alibi.map(|slopes| &slopes[kv_head * group..(kv_head + 1) * group]),
            };
            attend(&job, out_group);
        });
    out
}

/// One (query token, KV head) piece of work.
struct Job<'a> {
    /// The group's query heads, `[group, head_dim]`.
    q: &'a [f32],
    layout: KvLayout,
    k_cache: &'a [f32],
    v_cache: &'a [f32],
    block_table: &'a [u32],
    kv_head: usize,
    group: usize,
    /// Keys `first..=last` are visible.
    first: usize,
    last: usize,
    scale: f32,
    /// ALiBi slopes of the group's query heads: each score gains `slope × (key − query)`.
    alibi: Option<&'a [f32]>,
}

/// Adds the ALiBi bias to a job's scores (`[group, keys]`), the same way on every path.
fn add_alibi(job: &Job<'_>, scores: &mut [f32]) {
    let Some(slopes) = job.alibi else { return };
    let n = job.last + 1 - job.first;
    for (h, row) in scores.chunks_mut(n).enumerate() {
        for (i, s) in row.iter_mut().enumerate() {
            let distance = (job.first + i) as f32 - job.last as f32;
            *s += slopes[h] * distance;
        }
    }
}

fn attend(job: &Job<'_>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // Safety: the CPU has the features the function is compiled for.
            return unsafe { attend_avx512(job, out) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return unsafe { attend_avx2(job, out) };
        }
    }
    attend_generic(job, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn attend_avx512(job: &Job<'_>, out: &mut [f32]) {
    let n = job.last + 1 - job.first;
    let mut scores = vec![0.0f32; job.group * n];
    if job.layout.head_dim.is_multiple_of(16) && job.group <= 8 {
        // Safety: AVX-512F is enabled; the shapes are checked above.
        unsafe { avx512::scores(job, &mut scores) };
    } else {
        scores_generic(job, &mut scores);
    }
    add_alibi(job, &mut scores);
    softmax_rows(job, &mut scores);
    if job.layout.head_dim == 64 && job.group <= 4 {
        // Safety: AVX-512F is enabled; the shapes are checked above.
        unsafe { avx512::values_64(job, &scores, out) };
    } else {
        weighted_values(job, &scores, out);
    }
}

/// The score loop with explicit registers: each key is loaded once for the whole GQA group,
/// each dot product's 16 lanes are reduced by the same halving tree as [`reduce16`], in
/// registers, so the results equal the portable path's bit for bit.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Job, Slots};

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn reduce(v: __m512) -> f32 {
        // Lanes l + 8, then l + 4, l + 2, l + 1: `reduce16`'s tree.
        let hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(v, v);
        let s8 = _mm512_castps512_ps256(_mm512_add_ps(v, hi));
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2));
        _mm_cvtss_f32(s1)
    }

    /// `weighted_values` for head_dim 64 with the group's outputs held in registers (same
    /// multiply-then-add per element in position order, so the same bits).
    ///
    /// Safety: needs AVX-512F; `head_dim` is 64, `group` at most 4, `out` is `[group, 64]`.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn values_64(job: &Job<'_>, scores: &[f32], out: &mut [f32]) {
        let n = job.last + 1 - job.first;
        let vp = job.v_cache.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        for (p, off) in Slots::new(job) {
            let row = p - job.first;
            // Safety: the value vector at `off` is 64 long.
            let v = unsafe {
                [
                    _mm512_loadu_ps(vp.add(off)),
                    _mm512_loadu_ps(vp.add(off + 16)),
                    _mm512_loadu_ps(vp.add(off + 32)),
                    _mm512_loadu_ps(vp.add(off + 48)),
                ]
            };
            for h in 0..job.group {
                let w = _mm512_set1_ps(scores[h * n + row]);
                for c in 0..4 {
                    acc[h][c] = _mm512_add_ps(acc[h][c], _mm512_mul_ps(w, v[c]));
                }
            }
        }
        for h in 0..job.group {
            for c in 0..4 {
                // Safety: out holds `group` rows of 64.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(h * 64 + c * 16), acc[h][c]) };
            }
        }
    }

    /// Safety: needs AVX-512F; `head_dim` is a multiple of 16 and `group` at most 8.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores(job: &Job<'_>, scores: &mut [f32]) {
        let hd = job.layout.head_dim;
        let n = job.last + 1 - job.first;
        let chunks = hd / 16;
        let kp = job.k_cache.as_ptr();
        let qp = job.q.as_ptr();
        for (p, off) in Slots::new(job) {
            let row = p - job.first;
            for h in 0..job.group {
                let mut acc = _mm512_setzero_ps();
                for c in 0..chunks {
                    // Safety: q holds `group` heads of `hd`; the key vector is `hd` long.
                    unsafe {
                        let q = _mm512_loadu_ps(qp.add(h * hd + c * 16));
                        let k = _mm512_loadu_ps(kp.add(off + c * 16));
                        // Multiply then add, as the portable loop does (no fusing).
                        acc = _mm512_add_ps(acc, _mm512_mul_ps(q, k));
                    }
                }
                scores[h * n + row] = reduce(acc) * job.scale;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(job: &Job<'_>, out: &mut [f32]) {
    attend_generic(job, out)
}

/// The visible key slots in order, as (position, offset of this KV head's vector), walked a
/// block at a time without dividing per key. An iterator rather than a closure so the loop
/// bodies compile inside the caller's `target_feature` context.
struct Slots<'a> {
    job: &'a Job<'a>,
    pos: usize,
    block_end: usize,
    off: usize,
}

impl<'a> Slots<'a> {
    #[inline(always)]
    fn new(job: &'a Job<'a>) -> Self {
        Self {
            job,
            pos: job.first,
            block_end: job.first,
            off: 0,
        }
    }
}

impl Iterator for Slots<'_> {
    type Item = (usize, usize);

    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize)> {
        let l = self.job.layout;
        if self.pos > self.job.last {
            return None;
        }
        if self.pos == self.block_end {
            let block = self.job.block_table[self.pos / l.block_size] as usize;
            let in_block = self.pos % l.block_size;
            self.block_end = self.pos - in_block + l.block_size;
            self.off = (block * l.block_size + in_block) * l.token_stride()
                + self.job.kv_head * l.head_dim;
        }
        let item = (self.pos, self.off);
        self.pos += 1;
        self.off += l.token_stride();
        Some(item)
    }
}

#[inline(always)]
fn attend_generic(job: &Job<'_>, out: &mut [f32]) {
    let n = job.last + 1 - job.first;
    // Scores for every head of the group: [group, n].
    let mut scores = vec![0.0f32; job.group * n];
    scores_generic(job, &mut scores);
    add_alibi(job, &mut scores);
    finish(job, scores, out)
}

#[inline(always)]
fn scores_generic(job: &Job<'_>, scores: &mut [f32]) {
    let hd = job.layout.head_dim;
    let n = job.last + 1 - job.first;
    for (p, off) in Slots::new(job) {
        let k = &job.k_cache[off..off + hd];
        for h in 0..job.group {
            scores[h * n + p - job.first] = dot(&job.q[h * hd..(h + 1) * hd], k) * job.scale;
        }
    }
}

/// Softmax of the scores, then the weighted sum of values.
#[inline(always)]
fn finish(job: &Job<'_>, mut scores: Vec<f32>, out: &mut [f32]) {
    softmax_rows(job, &mut scores);
    weighted_values(job, &scores, out);
}

/// Each head's scores become probabilities.
#[inline(always)]
fn softmax_rows(job: &Job<'_>, scores: &mut [f32]) {
    let n = job.last + 1 - job.first;
    for h in 0..job.group {
        let row = &mut scores[h * n..(h + 1) * n];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|s| *s *= inv);
    }
}

/// `out[h] = Σ_p w[h][p] · v[p]`, in position order.
#[inline(always)]
fn weighted_values(job: &Job<'_>, scores: &[f32], out: &mut [f32]) {
    let hd = job.layout.head_dim;
    let n = job.last + 1 - job.first;
    for (p, off) in Slots::new(job) {
        let v = &job.v_cache[off..off + hd];
        for h in 0..job.group {
            let w = scores[h * n + p - job.first];
            for (o, &x) in out[h * hd..(h + 1) * hd].iter_mut().zip(v) {
                *o += w * x;
            }
        }
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Sixteen independent lanes over exact chunks: vectorises without reassociation.
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = reduce16(&acc);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// The fixed halving tree over 16 lanes (l + 8, then + 4, + 2, + 1): short dependency
/// chains, and the order the AVX-512 path computes in registers.
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Dense reference: K/V contiguous per sequence, plain loops.
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
    ) -> Vec<f32> {
        let mut out = vec![0.0; (len - start) * nh * hd];
        for t in start..len {
            for h in 0..nh {
                let kh = h / (nh / nkv);
                let qv = &q[((t - start) * nh + h) * hd..][..hd];
                let s: Vec<f32> = (0..=t)
                    .map(|j| {
                        (0..hd)
                            .map(|d| qv[d] * k[(j * nkv + kh) * hd + d])
                            .sum::<f32>()
                            / (hd as f32).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for d in 0..hd {
                    out[((t - start) * nh + h) * hd + d] =
                        (0..=t).map(|j| e[j] / z * v[(j * nkv + kh) * hd + d]).sum();
                }
            }
        }
        out
    }

    #[test]
    fn paged_equals_dense_for_many_shapes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for &(nh, nkv, hd, bs) in &[(4, 4, 8, 1), (4, 2, 16, 4), (8, 1, 32, 16), (6, 3, 64, 32)] {
            for &len in &[1usize, 5, 16, 33] {
                for &start in &[0usize, len - 1] {
                    let layout = KvLayout {
                        num_blocks: 64,
                        block_size: bs,
                        kv_heads: nkv,
                        head_dim: hd,
                    };
                    let nblocks = len.div_ceil(bs);
                    // Scatter the sequence over non-contiguous, shuffled blocks.
                    let table: Vec<u32> = (0..nblocks as u32).map(|b| (b * 7 + 3) % 64).collect();
                    let stride = nkv * hd;
                    let k: Vec<f32> = (0..len * stride)
                        .map(|_| rng.random_range(-1.0..1.0))
                        .collect();
                    let v: Vec<f32> = (0..len * stride)
                        .map(|_| rng.random_range(-1.0..1.0))
                        .collect();
                    let q: Vec<f32> = (0..(len - start) * nh * hd)
                        .map(|_| rng.random_range(-1.0..1.0))
                        .collect();
                    let mut kc = vec![0.0; 64 * bs * stride];
                    let mut vc = vec![0.0; 64 * bs * stride];
                    for p in 0..len {
                        let off = layout.slot_offset(&table, p);
                        kc[off..off + stride].copy_from_slice(&k[p * stride..(p + 1) * stride]);
                        vc[off..off + stride].copy_from_slice(&v[p * stride..(p + 1) * stride]);
                    }
                    let seqs = [AttentionSeq {
                        first_token: 0,
                        num_tokens: len - start,
                        start_pos: start,
                        block_table: &table,
                    }];
                    let got = paged_attention(
                        &q,
                        nh,
                        layout,
                        &kc,
                        &vc,
                        &seqs,
                        None,
                        1.0 / (hd as f32).sqrt(),
                        None,
                    );
                    let want = dense(&q, &k, &v, len, nh, nkv, hd, start);
                    for (a, b) in got.iter().zip(&want) {
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "nh={nh} nkv={nkv} hd={hd} bs={bs} len={len}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    /// The AVX-512 score loop and the portable one give the same bits.
    #[test]
    fn cpu_paths_agree_exactly() {
        #[cfg(target_arch = "x86_64")]
        {
            if !std::is_x86_feature_detected!("avx512f") {
                return;
            }
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
            let layout = KvLayout {
                num_blocks: 8,
                block_size: 4,
                kv_heads: 2,
                head_dim: 64,
            };
            let table: Vec<u32> = vec![5, 1, 7, 2, 0, 3];
            let cache: Vec<f32> = (0..8 * 4 * 2 * 64)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let q: Vec<f32> = (0..3 * 64).map(|_| rng.random_range(-1.0..1.0)).collect();
            let job = Job {
                q: &q,
                layout,
                k_cache: &cache,
                v_cache: &cache,
                block_table: &table,
                kv_head: 1,
                group: 3,
                first: 2,
                last: 21,
                scale: 0.125,
                alibi: None,
            };
            let n = 20;
            let mut generic = vec![0.0; 3 * n];
            scores_generic(&job, &mut generic);
            let mut fast = vec![0.0; 3 * n];
            unsafe { avx512::scores(&job, &mut fast) };
            assert_eq!(fast, generic);
            let mut out_generic = vec![0.0; 3 * 64];
            attend_generic(&job, &mut out_generic);
            let mut out_fast = vec![0.0; 3 * 64];
            unsafe { attend_avx512(&job, &mut out_fast) };
            assert_eq!(out_fast, out_generic);
        }
    }
}
