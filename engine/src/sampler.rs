//! Turns logits into the next token: penalties, logit bias, temperature, top-k/top-p/min-p,
//! seeded randomness, and the log-probabilities the API reports.

use std::collections::HashMap;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::GenerationParams;

/// How one sequence samples. Ranges are checked by the gateway; the sampler trusts them.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means off.
    pub top_k: usize,
    pub min_p: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Hugging Face's multiplicative penalty over prompt and output tokens; 1 means off.
    pub repetition_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
    /// Report the chosen token's log-probability, plus this many alternatives when `Some`.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
            seed: None,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 1e-5
    }
}

/// The chosen token and, when asked, its log-probability and the top alternatives, all from
/// the model's raw distribution (before penalties and temperature), as OpenAI reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub id: u32,
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<(u32, f32)>,
}

pub struct Sampler {
    /// The request's parameters, shared with its other choices.
    request: Arc<GenerationParams>,
    rng: ChaCha8Rng,
    /// How often each token occurs in the output so far.
    output_counts: HashMap<u32, u32>,
    /// Tokens of the prompt, for the repetition penalty.
    prompt_tokens: Vec<u32>,
}

impl Sampler {
    /// `stream` distinguishes the choices of one request so that they differ under one seed.
    pub fn new(params: SamplingParams, prompt: &[u32], stream: u64) -> Self {
        let request = GenerationParams {
            sampling: params,
            ..GenerationParams::default()
        };
        Self::for_request(Arc::new(request), prompt, stream)
    }

    /// A sampler reading a request's shared parameters (nothing is copied per choice).
    pub fn for_request(request: Arc<GenerationParams>, prompt: &[u32], stream: u64) -> Self {
        let params = &request.sampling;
        let seed = params.seed.unwrap_or_else(|| rand::rng().random());
        let rng = ChaCha8Rng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let prompt_tokens = if params.repetition_penalty != 1.0 {
            let mut p = prompt.to_vec();
            p.sort_unstable();
            p.dedup();
            p
        } else {
            Vec::new()
        };
        Self {
            request,
            rng,
            output_counts: HashMap::new(),
            prompt_tokens,
        }
    }

    /// Picks the next token. `banned` ids (for example EOS before `min_tokens`) are never chosen.
    fn params(&self) -> &SamplingParams {
        &self.request.sampling
    }

    pub fn sample(&mut self, logits: &mut [f32], banned: &[&[u32]]) -> SampledToken {
        // Log-probabilities come from the raw distribution, so keep it before penalties.
        let raw = self.params().logprobs.map(|k| {
            let lse = log_sum_exp(logits);
            let top: Vec<(u32, f32)> = top_n(logits, k)
                .into_iter()
                .map(|(i, l)| (i, l - lse))
                .collect();
            (logits.to_vec(), lse, top)
        });
        self.apply_penalties(logits);
        for &id in banned.iter().copied().flatten() {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        let id = if self.params().is_greedy() {
            argmax(logits)
        } else {
            self.sample_random(logits)
        };
        *self.output_counts.entry(id).or_insert(0) += 1;
        match raw {
            Some((raw, lse, top)) => SampledToken {
                id,
                logprob: Some(raw[id as usize] - lse),
                top_logprobs: top,
            },
            None => SampledToken {
                id,
                logprob: None,
                top_logprobs: Vec::new(),
            },
        }
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = self.params();
        if p.repetition_penalty != 1.0 {
            let seen = self.prompt_tokens.iter().chain(self.output_counts.keys());
            let mut done = std::collections::HashSet::new();
            for &id in seen {
                if done.insert(id) {
                    if let Some(l) = logits.get_mut(id as usize) {
                        *l = if *l > 0.0 {
                            *l / p.repetition_penalty
                        } else {
                            *l * p.repetition_penalty
                        };
                    }
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&id, &count) in &self.output_counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * count as f32;
                }
            }
        }
        for &(id, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
    }

    fn sample_random(&mut self, logits: &[f32]) -> u32 {
        let p = self.params();
        let inv_t = 1.0 / p.temperature;
        let mut cands: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l * inv_t))
            .collect();
        if cands.is_empty() {
            return argmax(logits);
        }
        let filtering = p.top_k > 0 || p.top_p < 1.0 || p.min_p > 0.0;
        if p.top_k > 0 && p.top_k < cands.len() {
            cands.select_nth_unstable_by(p.top_k - 1, |a, b| b.1.total_cmp(&a.1));
            cands.truncate(p.top_k);
        }
        if filtering {
            cands.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<f32> = cands.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        if filtering {
            let mut keep = probs.len();
            if p.top_p < 1.0 {
                let mut acc = 0.0;
                for (i, q) in probs.iter().enumerate() {
                    acc += q;
                    if acc >= p.top_p {
                        keep = i + 1;
                        break;
                    }
                }
            }
            if p.min_p > 0.0 {
                let floor = probs[0] * p.min_p;
                keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
            }
            cands.truncate(keep);
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (c, q) in cands.iter().zip(&probs) {
            if r < *q {
                return c.0;
            }
            r -= q;
        }
        cands[cands.len() - 1].0
    }
}

/// Index of the largest value; the lowest index wins ties so greedy decoding is deterministic.
/// It is what a one-pass `x > best` scan gives (NaN never wins; with a NaN first, 0), in two
/// vectorisable passes: the scan's branch on every element cost a millisecond per 32-sequence
/// step over a 49k vocabulary, on one core.
pub fn argmax(xs: &[f32]) -> u32 {
    let Some(&first) = xs.first() else {
        return 0;
    };
    if first.is_nan() {
        return 0;
    }
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    for &x in chunks.remainder() {
        if x > lanes[0] {
            lanes[0] = x;
        }
    }
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            if x > *l {
                *l = x;
            }
        }
    }
    let max = lanes
        .iter()
        .fold(f32::NEG_INFINITY, |m, &l| if l > m { l } else { m });
    xs.iter().position(|&x| x == max).unwrap_or(0) as u32
}

fn log_sum_exp(xs: &[f32]) -> f32 {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + xs.iter().map(|x| (x - max).exp()).sum::<f32>().ln()
}

fn top_n(xs: &[f32], n: usize) -> Vec<(u32, f32)> {
    if n == 0 {
        return Vec::new();
    }
    let mut v: Vec<(u32, f32)> = xs.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
    let n = n.min(v.len());
    v.select_nth_unstable_by(n - 1, |a, b| b.1.total_cmp(&a.1));
    v.truncate(n);
    v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, -1.0]
    }

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            seed: Some(7),
            ..Default::default()
        };
        f(&mut p);
        p
    }

    #[test]
    fn greedy_picks_argmax_and_reports_logprobs() {
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 0.0;
                p.logprobs = Some(2)
            }),
            &[],
            0,
        );
        let t = s.sample(&mut logits(), &[]);
        assert_eq!(t.id, 1);
        let lse = log_sum_exp(&logits());
        assert!((t.logprob.unwrap() - (3.0 - lse)).abs() < 1e-6);
        assert_eq!(
            t.top_logprobs.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn same_seed_same_tokens_and_streams_differ() {
        let run = |stream| {
            let mut s = Sampler::new(params(|_| {}), &[], stream);
            (0..32)
                .map(|_| s.sample(&mut logits(), &[]).id)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(0), run(0));
        assert_ne!(run(0), run(1));
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        for p in [
            params(|p| p.top_k = 1),
            params(|p| p.top_p = 0.01),
            params(|p| p.min_p = 0.99),
        ] {
            let mut s = Sampler::new(p, &[], 0);
            for _ in 0..20 {
                assert_eq!(s.sample(&mut logits(), &[]).id, 1);
            }
        }
    }

    #[test]
    fn logit_bias_and_bans_steer_choice() {
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 0.0;
                p.logit_bias = vec![(4, 100.0)]
            }),
            &[],
            0,
        );
        assert_eq!(s.sample(&mut logits(), &[]).id, 4);
        let mut s = Sampler::new(params(|p| p.temperature = 0.0), &[], 0);
        assert_eq!(s.sample(&mut logits(), &[&[1]]).id, 2);
    }

    #[test]
    fn penalties_discourage_repeats() {
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 0.0;
                p.presence_penalty = 1.5
            }),
            &[],
            0,
        );
        assert_eq!(s.sample(&mut logits(), &[]).id, 1);
        assert_eq!(
            s.sample(&mut logits(), &[]).id,
            2,
            "presence penalty moves off token 1"
        );
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 0.0;
                p.repetition_penalty = 2.0
            }),
            &[1],
            0,
        );
        assert_eq!(
            s.sample(&mut logits(), &[]).id,
            2,
            "prompt token 1 is penalised 3.0 -> 1.5"
        );
    }

    /// The vectorised argmax picks what the one-pass scan picks: ties to the first, NaN
    /// never, signed zeros alike, all -inf to 0, a NaN first to 0.
    #[test]
    fn argmax_matches_the_one_pass_scan() {
        fn scan(xs: &[f32]) -> u32 {
            let mut best = 0;
            for (i, &x) in xs.iter().enumerate() {
                if x > xs[best] {
                    best = i;
                }
            }
            best as u32
        }
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for len in [0usize, 1, 2, 15, 16, 17, 33, 1000, 49152] {
            for case in 0..6 {
                let xs: Vec<f32> = (0..len)
                    .map(|i| match case {
                        0 => rng.random_range(-5.0..5.0),
                        // Few distinct values: many ties.
                        1 => (rng.random_range(0..4) as f32) - 2.0,
                        2 if i % 7 == 3 => f32::NAN,
                        2 => rng.random_range(-5.0..5.0),
                        3 => f32::NEG_INFINITY,
                        4 if i == 0 => f32::NAN,
                        4 => rng.random_range(-5.0..5.0),
                        _ => [0.0, -0.0, -1.0][i % 3],
                    })
                    .collect();
                assert_eq!(argmax(&xs), scan(&xs), "len {len} case {case}");
            }
        }
    }
}
