//! The decoder every supported architecture is a variant of (Llama 2/3, Mistral, Qwen2,
//! Qwen3; Mixtral's mixture of experts, Cohere's parallel block, BLOOM's ALiBi; see
//! `arch/`). Weights are loaded with candle (memory-mapped safetensors, dtype conversion);
//! the CPU forward pass runs on our own batch-invariant kernels (see `matmul`) and reads and
//! writes K/V through the paged cache.

mod arch;
mod bf16;
mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod gguf;
pub mod matmul;
mod rope;
mod runner;
mod w4a8;
mod w8a8;
pub(crate) mod weights;

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use rayon::prelude::*;

pub use candle_core::DType as WeightDtype;
pub use config::{Family, MlpKind, ModelShape, NormKind, Positions, RopeScaling};
use matmul::Matrix;
pub use matmul::WeightFormat;
use rope::Rope;
pub use runner::{BlockCopy, ModelRunner, ModelWeights};
use weights::Weights;

use crate::kv::{paged_attention_in, AttentionSeq, KvDtype, KvPool};
use crate::EngineError;

/// Which logits a chunk wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    /// None: a prefill chunk that does not end the prompt.
    None,
    /// The last token's: the next-token distribution.
    Last,
    /// Every token's (for scoring and tests).
    All,
}

/// A run of consecutive tokens of one sequence, fed in one forward pass with others.
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`; positions before it are already in the KV cache.
    pub start_pos: usize,
    /// The sequence's blocks; they must cover `start_pos + tokens.len()` positions.
    pub block_table: &'a [u32],
    pub logits: LogitRows,
}

impl SeqChunk<'_> {
    /// Refuses a chunk the model cannot run: positions past `max_positions`, or token ids
    /// outside the vocabulary.
    fn check(&self, max_positions: usize, vocab_size: usize) -> Result<(), EngineError> {
        let end = self.start_pos + self.tokens.len();
        if end > max_positions {
            return Err(EngineError::InvalidRequest(format!(
                "position {end} is beyond the model's {max_positions} positions"
            )));
        }
        if let Some(&bad) = self.tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary of {vocab_size} tokens"
            )));
        }
        Ok(())
    }

    /// The step's rows whose logits this chunk wants, its tokens starting at row `first`.
    fn logit_rows(&self, first: usize) -> std::ops::Range<usize> {
        let end = first + self.tokens.len();
        match self.logits {
            LogitRows::None => end..end,
            LogitRows::Last => end.saturating_sub(1).max(first)..end,
            LogitRows::All => first..end,
        }
    }
}

struct Linear {
    weight: Arc<Matrix>,
    bias: Option<Vec<f32>>,
}

impl Linear {
    /// `x` is `[m, in]`; returns `[m, out]`.
    fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.weight.matmul(x, m, self.bias.as_deref())
    }
}

/// A norm's weight, and its bias where the checkpoint has one (BLOOM's LayerNorms).
struct Norm {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
}

struct Layer {
    input_norm: Norm,
    /// Before the MLP; none in a parallel block (Cohere's), where one norm feeds both.
    post_norm: Option<Norm>,
    /// q, k and v projections fused into one product.
    qkv: Linear,
    o: Linear,
    ffn: FeedForward,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
}

/// A gated SiLU MLP: gate and up projections fused into one product, then down.
struct Mlp {
    gate_up: Linear,
    down: Linear,
}

impl Mlp {
    /// `x` is `[m, hidden]`; returns `[m, hidden]`.
    fn forward(&self, x: &[f32], m: usize, inter: usize) -> Vec<f32> {
        let gu = self.gate_up.forward(x, m);
        let mut act = vec![0.0f32; m * inter];
        crate::math::silu_gate(&gu, inter, &mut act);
        self.down.forward(&act, m)
    }
}

/// A layer's feed-forward block: a gated SiLU MLP, a GELU MLP, or a sparse mixture of expert
/// MLPs.
enum FeedForward {
    Dense(Mlp),
    /// `down(gelu_tanh(up(x)))` (BLOOM's); `gate_up` holds only `up`.
    Gelu(Mlp),
    Experts {
        router: Linear,
        experts: Vec<Mlp>,
        top_k: usize,
    },
}

impl FeedForward {
    fn forward(&self, x: &[f32], m: usize, hidden: usize, inter: usize) -> Vec<f32> {
        match self {
            Self::Dense(mlp) => mlp.forward(x, m, inter),
            Self::Gelu(mlp) => {
                let mut up = mlp.gate_up.forward(x, m);
                up.iter_mut().for_each(|v| *v = gelu_tanh(*v));
                mlp.down.forward(&up, m)
            }
            Self::Experts {
                router,
                experts,
                top_k,
            } => {
                let routes = route(&router.forward(x, m), experts.len(), *top_k);
                // Each expert runs once, on the rows routed to it (gathered); each row's
                // outputs are added in expert order, whatever the batch, so a row's result
                // does not depend on the rows beside it.
                let mut out = vec![0.0f32; m * hidden];
                let mut rows = Vec::new();
                let mut gathered = Vec::new();
                for (e, expert) in experts.iter().enumerate() {
                    rows.clear();
                    gathered.clear();
                    for (r, chosen) in routes.iter().enumerate() {
                        if let Some(&(_, w)) = chosen.iter().find(|(ce, _)| *ce == e) {
                            rows.push((r, w));
                            gathered.extend_from_slice(&x[r * hidden..(r + 1) * hidden]);
                        }
                    }
                    if rows.is_empty() {
                        continue;
                    }
                    let y = expert.forward(&gathered, rows.len(), inter);
                    for (&(r, w), yr) in rows.iter().zip(y.chunks(hidden)) {
                        for (o, v) in out[r * hidden..(r + 1) * hidden].iter_mut().zip(yr) {
                            *o += w * v;
                        }
                    }
                }
                out
            }
        }
    }
}

/// GELU with the tanh approximation, as BLOOM computes it.
fn gelu_tanh(x: f32) -> f32 {
    x * 0.5 * (1.0 + (0.797_884_6 * x * (1.0 + 0.044_715 * x * x)).tanh())
}

/// Per row of router logits `[m, experts]`: the `top_k` experts with the highest softmax
/// weight (ties to the lower index) and their weights renormalised to sum to one, as
/// transformers' Mixtral block computes them.
fn route(logits: &[f32], experts: usize, top_k: usize) -> Vec<Vec<(usize, f32)>> {
    logits
        .chunks(experts)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            let mut order: Vec<usize> = (0..experts).collect();
            order.sort_by(|&a, &b| exp[b].total_cmp(&exp[a]).then(a.cmp(&b)));
            let chosen = &order[..top_k.min(experts)];
            let kept: f32 = chosen.iter().map(|&e| exp[e] / sum).sum();
            chosen.iter().map(|&e| (e, exp[e] / sum / kept)).collect()
        })
        .collect()
}

/// Where a model's forward passes spend their time, since it was loaded: in total, and in
/// mixture-of-experts blocks (routing, gathering and the experts' products).
#[derive(Debug, Default)]
pub struct ComputeTimes {
    pub forward_ns: std::sync::atomic::AtomicU64,
    pub experts_ns: std::sync::atomic::AtomicU64,
}

pub struct Transformer {
    shape: ModelShape,
    times: Arc<ComputeTimes>,
    embed: Arc<Matrix>,
    /// The LayerNorm right after the embeddings (BLOOM's).
    embed_norm: Option<Norm>,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Linear,
    rope: Rope,
    /// ALiBi slopes per head, for architectures without rotary embeddings.
    alibi: Option<Vec<f32>>,
    /// What its KV cache stores (f32 unless set with `with_kv_dtype`).
    kv_dtype: KvDtype,
    /// Touch the whole KV cache when it is made (`with_kv_prefault`).
    kv_prefault: bool,
}

impl Transformer {
    /// Loads a Hugging Face model folder. Weights are held in `dtype` (f32; bf16 halves
    /// their memory and the bytes read per token, the 8-bit formats quarter them; see
    /// `WeightFormat` for each one's arithmetic).
    pub fn load(
        dir: &Path,
        dtype: WeightFormat,
        max_positions: usize,
    ) -> Result<Self, EngineError> {
        if let Some(why) = dtype.slow_on_this_cpu() {
            tracing::warn!(?dtype, "{why}");
        }
        let shape = ModelShape::from_file(&dir.join("config.json"))?;
        let w = Weights::open(dir, &Device::Cpu)?;
        let s = &shape;
        let (h, hd) = (s.hidden_size, s.head_dim);
        let (qd, kvd) = (s.num_heads * hd, s.num_kv_heads * hd);
        let vector = |name: &str, n: usize| -> Result<Vec<f32>, EngineError> { w.vector(name, n) };
        // Several checkpoint tensors stacked into one matrix (fused projections).
        let stacked =
            |names: &[(String, usize)], inp: usize, bias: bool| -> Result<Linear, EngineError> {
                let mut parts = Vec::with_capacity(names.len());
                for (prefix, out) in names {
                    parts.push(w.tensor(&format!("{prefix}.weight"), &[*out, inp])?);
                }
                let rows = names.iter().map(|(_, o)| o).sum();
                let weight = Arc::new(w.matrix(&parts, rows, inp, dtype)?);
                let mut biases = Vec::new();
                let mut any = false;
                for (prefix, out) in names {
                    let name = format!("{prefix}.bias");
                    if bias || w.contains(&name) {
                        biases.extend(vector(&name, *out)?);
                        any = true;
                    } else {
                        biases.extend(std::iter::repeat_n(0.0, *out));
                    }
                }
                Ok(Linear {
                    weight,
                    bias: any.then_some(biases),
                })
            };
        let names = s.weight_names(|name| w.contains(name));
        let norm = |name: &str| -> Result<Norm, EngineError> {
            let bias = format!("{name}.bias");
            Ok(Norm {
                weight: vector(&format!("{name}.weight"), h)?,
                bias: if w.contains(&bias) {
                    Some(vector(&bias, h)?)
                } else {
                    None
                },
            })
        };
        // BLOOM's fused projection is `[heads, 3, head_dim]`: regrouped at load into all q,
        // then all k, then all v, the layout the forward pass reads.
        let fused_per_head = |name: &str| -> Result<Linear, EngineError> {
            let fused = w.tensor(&format!("{name}.weight"), &[qd + 2 * kvd, h])?;
            let mut parts = Vec::with_capacity(3 * s.num_heads);
            for j in 0..3 {
                for head in 0..s.num_heads {
                    parts.push(fused.narrow(0, (head * 3 + j) * hd, hd)?);
                }
            }
            let weight = Arc::new(w.matrix(&parts, qd + 2 * kvd, h, dtype)?);
            let bias_name = format!("{name}.bias");
            let bias = if w.contains(&bias_name) {
                let b = vector(&bias_name, qd + 2 * kvd)?;
                let mut out = Vec::with_capacity(b.len());
                for j in 0..3 {
                    for head in 0..s.num_heads {
                        let at = (head * 3 + j) * hd;
                        out.extend_from_slice(&b[at..at + hd]);
                    }
                }
                Some(out)
            } else {
                None
            };
            Ok(Linear { weight, bias })
        };
        let mut layers = Vec::with_capacity(s.num_layers);
        for i in 0..s.num_layers {
            let n = names.layer(i);
            let head_norm = |name: &str| -> Result<Option<Vec<f32>>, EngineError> {
                if s.qk_norm {
                    Ok(Some(vector(&format!("{name}.weight"), hd)?))
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                input_norm: norm(&n.input_norm)?,
                post_norm: if s.parallel_block {
                    None
                } else {
                    Some(norm(&n.post_norm)?)
                },
                qkv: if s.qkv_fused_per_head {
                    fused_per_head(&n.q)?
                } else {
                    stacked(
                        &[(n.q.clone(), qd), (n.k.clone(), kvd), (n.v.clone(), kvd)],
                        h,
                        s.qkv_bias,
                    )?
                },
                o: stacked(&[(n.o.clone(), h)], qd, s.o_bias)?,
                ffn: match s.experts {
                    None if s.mlp == MlpKind::Gelu => FeedForward::Gelu(Mlp {
                        gate_up: stacked(&[(n.up.clone(), s.intermediate_size)], h, s.mlp_bias)?,
                        down: stacked(&[(n.down.clone(), h)], s.intermediate_size, s.mlp_bias)?,
                    }),
                    None => FeedForward::Dense(Mlp {
                        gate_up: stacked(
                            &[
                                (n.gate.clone(), s.intermediate_size),
                                (n.up.clone(), s.intermediate_size),
                            ],
                            h,
                            s.mlp_bias,
                        )?,
                        down: stacked(&[(n.down.clone(), h)], s.intermediate_size, s.mlp_bias)?,
                    }),
                    Some(experts) => FeedForward::Experts {
                        router: stacked(&[(n.router.clone(), experts.count)], h, false)?,
                        experts: (0..experts.count)
                            .map(|e| {
                                let [gate, up, down] = n.expert(e);
                                Ok(Mlp {
                                    gate_up: stacked(
                                        &[(gate, s.intermediate_size), (up, s.intermediate_size)],
                                        h,
                                        false,
                                    )?,
                                    down: stacked(&[(down, h)], s.intermediate_size, false)?,
                                })
                            })
                            .collect::<Result<_, EngineError>>()?,
                        top_k: experts.top_k,
                    },
                },
                q_norm: head_norm(&n.q_norm)?,
                k_norm: head_norm(&n.k_norm)?,
            });
        }
        let embed_t = w.tensor(&format!("{}.weight", names.embed), &[s.vocab_size, h])?;
        let embed = Arc::new(w.matrix(&[embed_t], s.vocab_size, h, dtype)?);
        let lm_head = if s.tie_word_embeddings && !w.contains(&format!("{}.weight", names.lm_head))
        {
            Linear {
                weight: embed.clone(),
                bias: None,
            }
        } else {
            stacked(&[(names.lm_head.to_string(), s.vocab_size)], h, false)?
        };
        let rope = Rope::new(hd, s.rope_theta, &s.rope_scaling, max_positions)
            .interleaved(s.positions == Positions::Rope { interleaved: true });
        Ok(Self {
            embed,
            embed_norm: if s.embed_norm {
                Some(norm(names.embed_norm)?)
            } else {
                None
            },
            layers,
            norm: norm(names.final_norm)?,
            lm_head,
            rope,
            alibi: (s.positions == Positions::Alibi).then(|| arch::alibi_slopes(s.num_heads)),
            shape,
            times: Arc::default(),
            kv_dtype: KvDtype::F32,
            kv_prefault: false,
        })
    }

    /// Stores its KV cache in `dtype` (bf16 halves the cache's memory and the bytes attention
    /// reads; K and V are rounded to bf16 as they are written).
    pub fn with_kv_dtype(mut self, dtype: KvDtype) -> Self {
        self.kv_dtype = dtype;
        self
    }

    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// Commits the KV cache's memory when it is made ([`KvPool::prefault`]).
    pub fn with_kv_prefault(mut self, prefault: bool) -> Self {
        self.kv_prefault = prefault;
        self
    }

    pub fn kv_prefault(&self) -> bool {
        self.kv_prefault
    }

    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// Bytes of weights one decoded token reads: every layer's projections (a token's
    /// `top_k` experts of a mixture), and the output head. What bounds single-stream decode
    /// by memory bandwidth.
    pub fn bytes_per_token(&self) -> usize {
        let mlp = |m: &Mlp| m.gate_up.weight.bytes() + m.down.weight.bytes();
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                let ffn = match &l.ffn {
                    FeedForward::Dense(m) | FeedForward::Gelu(m) => mlp(m),
                    FeedForward::Experts {
                        router,
                        experts,
                        top_k,
                    } => {
                        let all: usize = experts.iter().map(mlp).sum();
                        router.weight.bytes() + all / experts.len().max(1) * top_k
                    }
                };
                l.qkv.weight.bytes() + l.o.weight.bytes() + ffn
            })
            .sum();
        layers + self.lm_head.weight.bytes()
    }

    /// Runs the chunks through the model in one pass, writing their K/V into `kv`, and returns
    /// the requested logits rows in chunk order.
    pub fn forward(
        &self,
        chunks: &[SeqChunk<'_>],
        kv: &mut KvPool,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let started = std::time::Instant::now();
        let out = self.forward_pass(chunks, kv);
        self.times.forward_ns.fetch_add(
            started.elapsed().as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        out
    }

    /// Its compute times so far (shared: they go on counting).
    pub fn compute_times(&self) -> Arc<ComputeTimes> {
        self.times.clone()
    }

    fn forward_pass(
        &self,
        chunks: &[SeqChunk<'_>],
        kv: &mut KvPool,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let s = &self.shape;
        let (nh, nkv, hd, h) = (s.num_heads, s.num_kv_heads, s.head_dim, s.hidden_size);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let mut ids = Vec::new();
        let mut seqs = Vec::with_capacity(chunks.len());
        let mut rows = Vec::new();
        for c in chunks {
            c.check(self.rope.max_positions(), s.vocab_size)?;
            let first = ids.len();
            rows.extend(c.logit_rows(first));
            ids.extend_from_slice(c.tokens);
            seqs.push(AttentionSeq {
                first_token: first,
                num_tokens: c.tokens.len(),
                start_pos: c.start_pos,
                block_table: c.block_table,
            });
        }
        let n = ids.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let positions: Vec<usize> = seqs
            .iter()
            .flat_map(|seq| seq.start_pos..seq.start_pos + seq.num_tokens)
            .collect();
        // Where each row's K and V go in the cache: a block of its table and a slot in it.
        let slots = kv.token_slots(seqs.iter().flat_map(|seq| {
            (seq.start_pos..seq.start_pos + seq.num_tokens).map(|pos| (seq.block_table, pos))
        }))?;
        let layout = kv.layout();
        let mut x = vec![0.0f32; n * h];
        for (row, &id) in x.chunks_mut(h).zip(&ids) {
            self.embed.row_into(id as usize, row);
        }
        let eps = s.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        let inter = s.intermediate_size;
        let mut hidden = vec![0.0f32; n * h];
        let norm_rows = |x: &[f32], n: &Norm, out: &mut [f32]| match s.norm {
            NormKind::Rms => rms_norm_rows(x, &n.weight, eps, out),
            NormKind::Layer => layer_norm_rows(x, &n.weight, n.bias.as_deref(), eps, out),
        };
        if let Some(embed_norm) = &self.embed_norm {
            let raw = x.clone();
            norm_rows(&raw, embed_norm, &mut x);
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let rotary = s.layer_rotary[li];
            norm_rows(&x, &layer.input_norm, &mut hidden);
            let qkv = layer.qkv.forward(&hidden, n);
            let width = qd + 2 * kvd;
            // Each row's q and k heads normalised (Qwen3) and rotated, rows spread over the
            // threads; then its k and v go into the cache.
            let mut q = vec![0.0f32; n * qd];
            let mut k = vec![0.0f32; n * kvd];
            let mut v = vec![0.0f32; n * kvd];
            q.par_chunks_mut(qd.max(1))
                .zip(k.par_chunks_mut(kvd.max(1)))
                .zip(v.par_chunks_mut(kvd.max(1)))
                .zip(qkv.par_chunks(width.max(1)))
                .zip(&positions)
                .with_min_len(ROWS_PER_TASK)
                .for_each(|((((q, k), v), src), &pos)| {
                    q.copy_from_slice(&src[..qd]);
                    k.copy_from_slice(&src[qd..qd + kvd]);
                    v.copy_from_slice(&src[qd + kvd..]);
                    for (heads, norm) in [(q, &layer.q_norm), (k, &layer.k_norm)] {
                        for head in heads.chunks_mut(hd) {
                            if let Some(w) = norm {
                                rms_norm_in_place(head, w, eps);
                            }
                            if rotary {
                                self.rope.apply(head, pos);
                            }
                        }
                    }
                });
            kv.write_rows(li, &slots, &k, &v);
            let window = s.layer_windows[li];
            let alibi = self.alibi.as_deref();
            let attn =
                paged_attention_in(&q, nh, layout, kv.layer(li), &seqs, window, scale, alibi);
            let o = layer.o.forward(&attn, n);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            // A parallel block's MLP reads the same normalised input as its attention.
            if let Some(post_norm) = &layer.post_norm {
                norm_rows(&x, post_norm, &mut hidden);
            }
            let moe =
                matches!(layer.ffn, FeedForward::Experts { .. }).then(std::time::Instant::now);
            let down = layer.ffn.forward(&hidden, n, h, inter);
            if let Some(started) = moe {
                self.times.experts_ns.fetch_add(
                    started.elapsed().as_nanos() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut picked = vec![0.0f32; rows.len() * h];
        for (dst, &r) in picked.chunks_mut(h).zip(&rows) {
            norm_rows(&x[r * h..(r + 1) * h], &self.norm, dst);
        }
        let mut logits = self.lm_head.forward(&picked, rows.len());
        if let Some(scale) = s.logit_scale {
            logits.iter_mut().for_each(|l| *l *= scale);
        }
        // Copied row by row on every thread (a 32-sequence step's rows are 6 MB).
        Ok(logits
            .par_chunks(s.vocab_size.max(1))
            .map(<[f32]>::to_vec)
            .collect())
    }
}

/// LayerNorm of every `w.len()`-wide row of `x` into `out`: mean and variance over the row,
/// then the weight, and the bias if there is one (Cohere's has none, BLOOM's has).
fn layer_norm_rows(x: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    for_each_row(x, w.len(), out, |src, dst| {
        let n = src.len() as f32;
        let mean = src.iter().sum::<f32>() / n;
        let var = src.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        for ((o, v), g) in dst.iter_mut().zip(src).zip(w) {
            *o = (v - mean) * inv * g;
        }
        if let Some(b) = b {
            dst.iter_mut().zip(b).for_each(|(o, b)| *o += b);
        }
    });
}

/// RMSNorm of every `w.len()`-wide row of `x` into `out`.
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for_each_row(x, w.len(), out, |src, dst| {
        rms_norm_in_place_into(src, w, eps, dst)
    });
}

/// Rows a thread takes at least in the forward pass's row-wise steps (norms, RoPE): a batch
/// of decodes or a prefill chunk is spread over the threads, which would otherwise wait
/// while one core works through every row (a norm's sum is one chain of adds per row); a
/// single decode row stays on its thread.
const ROWS_PER_TASK: usize = 4;

/// `f(x row, out row)` on every `width`-wide row, rows spread over the threads.
fn for_each_row(x: &[f32], width: usize, out: &mut [f32], f: impl Fn(&[f32], &mut [f32]) + Sync) {
    let width = width.max(1);
    out.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(dst, src)| f(src, dst));
}

fn rms_norm_in_place_into(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for (v, g) in x.iter_mut().zip(w) {
        *v = *v * inv * g;
    }
}
