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
) -> Vec<f32> {
    let hd = layout.head_dim;
    let group = num_heads / layout.kv_heads;
    let total_tokens: usize = seqs
        .iter()
        .map(|s| s.first_token + s.num_tokens)
        .max()
        .unwrap_or(0);
    // Map each flat token to (sequence, position) so every (token, head) task is independent.
    let mut owner = vec![(0usize, 0usize); total_tokens];
    for (si, s) in seqs.iter().enumerate() {
        for t in 0..s.num_tokens {
            owner[s.first_token + t] = (si, s.start_pos + t);
        }
    }
    let mut out = vec![0.0f32; total_tokens * num_heads * hd];
    out.par_chunks_mut(hd)
        .enumerate()
        .for_each(|(task, out_head)| {
            let token = task / num_heads;
            let head = task % num_heads;
            let (si, pos) = owner[token];
            let seq = &seqs[si];
            let kv_head = head / group;
            let qv = &q[task * hd..(task + 1) * hd];
            let first = sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let mut scores = Vec::with_capacity(pos + 1 - first);
            let mut max = f32::NEG_INFINITY;
            for j in first..=pos {
                let off = layout.slot_offset(seq.block_table, j) + kv_head * hd;
                let s = dot(qv, &k_cache[off..off + hd]) * scale;
                max = max.max(s);
                scores.push(s);
            }
            let mut sum = 0.0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            for (j, &w) in (first..=pos).zip(scores.iter()) {
                let off = layout.slot_offset(seq.block_table, j) + kv_head * hd;
                let w = w * inv;
                for (o, &v) in out_head.iter_mut().zip(&v_cache[off..off + hd]) {
                    *o += w * v;
                }
            }
        });
    out
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise without reassociation.
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
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
}
