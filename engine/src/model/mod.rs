//! The Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3) on candle, reading and
//! writing K/V through the paged cache so sequences of any length can share one pool.

mod config;
mod rope;
mod weights;

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};

pub use candle_core::DType as WeightDtype;
pub use config::{Family, ModelShape, RopeScaling};
use rope::Rope;
use weights::Weights;

use crate::kv::{paged_attention, AttentionSeq, KvPool};
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

struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// `x` is f32 `[tokens, in]`, and so is the result. Weights kept in bf16 (to halve their
    /// memory) are widened per product, since candle's CPU matmul is f32-only.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = if self.weight.dtype() == DType::F32 {
            x.matmul(&self.weight.t()?)?
        } else {
            x.matmul(&self.weight.to_dtype(DType::F32)?.t()?)?
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?),
            None => Ok(y),
        }
    }
}

struct Layer {
    input_norm: Tensor,
    post_norm: Tensor,
    /// q, k and v projections fused into one product.
    qkv: Linear,
    o: Linear,
    /// gate and up projections fused into one product.
    gate_up: Linear,
    down: Linear,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
}

pub struct Transformer {
    shape: ModelShape,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    rope: Rope,
    device: Device,
}

impl Transformer {
    /// Loads a Hugging Face model folder. Weights are held in `dtype` (f32 by default; bf16
    /// halves their memory at some speed cost on CPU); all arithmetic is f32.
    pub fn load(
        dir: &Path,
        dtype: Option<DType>,
        max_positions: usize,
    ) -> Result<Self, EngineError> {
        let shape = ModelShape::from_file(&dir.join("config.json"))?;
        let dtype = dtype.unwrap_or(DType::F32);
        let device = Device::Cpu;
        let w = Weights::open(dir, dtype, &device)?;
        let s = &shape;
        let (h, hd) = (s.hidden_size, s.head_dim);
        let (qd, kvd) = (s.num_heads * hd, s.num_kv_heads * hd);
        let f32_vec = |name: &str, n: usize| -> Result<Tensor, EngineError> {
            Ok(w.get_shaped(name, &[n])?.to_dtype(DType::F32)?)
        };
        let linear =
            |prefix: &str, out: usize, inp: usize, bias: bool| -> Result<Linear, EngineError> {
                let weight = w.get_shaped(&format!("{prefix}.weight"), &[out, inp])?;
                let bias = if bias {
                    Some(w.get_shaped(&format!("{prefix}.bias"), &[out])?)
                } else {
                    w.get_opt(&format!("{prefix}.bias"), &[out])?
                };
                Ok(Linear { weight, bias })
            };
        let fuse = |parts: Vec<Linear>| -> Result<Linear, EngineError> {
            let weight = Tensor::cat(&parts.iter().map(|l| &l.weight).collect::<Vec<_>>(), 0)?;
            let bias = if parts.iter().any(|l| l.bias.is_some()) {
                let biases = parts
                    .iter()
                    .map(|l| match &l.bias {
                        Some(b) => Ok(b.clone()),
                        None => Tensor::zeros(l.weight.dim(0)?, l.weight.dtype(), &device),
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Some(Tensor::cat(&biases, 0)?)
            } else {
                None
            };
            Ok(Linear { weight, bias })
        };
        let mut layers = Vec::with_capacity(s.num_layers);
        for i in 0..s.num_layers {
            let p = format!("model.layers.{i}");
            let attn = format!("{p}.self_attn");
            let mlp = format!("{p}.mlp");
            let norm_vec = |name: String| -> Result<Option<Vec<f32>>, EngineError> {
                if s.qk_norm {
                    Ok(Some(f32_vec(&name, hd)?.to_vec1::<f32>()?))
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                input_norm: f32_vec(&format!("{p}.input_layernorm.weight"), h)?,
                post_norm: f32_vec(&format!("{p}.post_attention_layernorm.weight"), h)?,
                qkv: fuse(vec![
                    linear(&format!("{attn}.q_proj"), qd, h, s.qkv_bias)?,
                    linear(&format!("{attn}.k_proj"), kvd, h, s.qkv_bias)?,
                    linear(&format!("{attn}.v_proj"), kvd, h, s.qkv_bias)?,
                ])?,
                o: linear(&format!("{attn}.o_proj"), h, qd, s.o_bias)?,
                gate_up: fuse(vec![
                    linear(
                        &format!("{mlp}.gate_proj"),
                        s.intermediate_size,
                        h,
                        s.mlp_bias,
                    )?,
                    linear(
                        &format!("{mlp}.up_proj"),
                        s.intermediate_size,
                        h,
                        s.mlp_bias,
                    )?,
                ])?,
                down: linear(
                    &format!("{mlp}.down_proj"),
                    h,
                    s.intermediate_size,
                    s.mlp_bias,
                )?,
                q_norm: norm_vec(format!("{attn}.q_norm.weight"))?,
                k_norm: norm_vec(format!("{attn}.k_norm.weight"))?,
            });
        }
        let embed = w.get_shaped("model.embed_tokens.weight", &[s.vocab_size, h])?;
        let lm_head = if s.tie_word_embeddings && !w.contains("lm_head.weight") {
            Linear {
                weight: embed.clone(),
                bias: None,
            }
        } else {
            linear("lm_head", s.vocab_size, h, false)?
        };
        let rope = Rope::new(hd, s.rope_theta, &s.rope_scaling, max_positions);
        Ok(Self {
            embed,
            layers,
            norm: f32_vec("model.norm.weight", h)?,
            lm_head,
            rope,
            device,
            shape,
        })
    }

    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// Runs the chunks through the model in one pass, writing their K/V into `kv`, and returns
    /// the requested logits rows in chunk order.
    pub fn forward(
        &self,
        chunks: &[SeqChunk<'_>],
        kv: &mut KvPool,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let s = &self.shape;
        let (nh, nkv, hd) = (s.num_heads, s.num_kv_heads, s.head_dim);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let mut ids = Vec::new();
        let mut seqs = Vec::with_capacity(chunks.len());
        let mut rows = Vec::new();
        for c in chunks {
            let end = c.start_pos + c.tokens.len();
            if end > self.rope.max_positions() {
                return Err(EngineError::InvalidRequest(format!(
                    "position {end} is beyond the model's {} positions",
                    self.rope.max_positions()
                )));
            }
            let first = ids.len();
            match c.logits {
                LogitRows::None => {}
                LogitRows::Last if !c.tokens.is_empty() => {
                    rows.push((first + c.tokens.len() - 1) as u32)
                }
                LogitRows::Last => {}
                LogitRows::All => rows.extend((first..first + c.tokens.len()).map(|r| r as u32)),
            }
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
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= s.vocab_size) {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                s.vocab_size
            )));
        }
        let ids_t = Tensor::from_vec(ids, n, &self.device)?;
        let mut x = self.embed.index_select(&ids_t, 0)?.to_dtype(DType::F32)?;
        let eps = s.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        let layout = kv.layout();
        for (li, layer) in self.layers.iter().enumerate() {
            let hidden = candle_nn::ops::rms_norm(&x, &layer.input_norm, eps)?;
            let qkv = layer
                .qkv
                .forward(&hidden)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let width = qd + 2 * kvd;
            let mut q = vec![0.0f32; n * qd];
            for seq in &seqs {
                for t in 0..seq.num_tokens {
                    let row = seq.first_token + t;
                    let pos = seq.start_pos + t;
                    let src = &qkv[row * width..(row + 1) * width];
                    let qrow = &mut q[row * qd..(row + 1) * qd];
                    qrow.copy_from_slice(&src[..qd]);
                    let mut k = src[qd..qd + kvd].to_vec();
                    for head in qrow.chunks_mut(hd) {
                        if let Some(w) = &layer.q_norm {
                            rms_norm_in_place(head, w, eps);
                        }
                        self.rope.apply(head, pos);
                    }
                    for head in k.chunks_mut(hd) {
                        if let Some(w) = &layer.k_norm {
                            rms_norm_in_place(head, w, eps);
                        }
                        self.rope.apply(head, pos);
                    }
                    kv.write(li, seq.block_table, pos, &k, &src[qd + kvd..]);
                }
            }
            let (kc, vc) = kv.layer(li);
            let attn = paged_attention(&q, nh, layout, kc, vc, &seqs, s.layer_windows[li], scale);
            let attn = Tensor::from_vec(attn, (n, qd), &self.device)?;
            x = (x + layer.o.forward(&attn)?)?;
            let hidden = candle_nn::ops::rms_norm(&x, &layer.post_norm, eps)?;
            let gu = layer.gate_up.forward(&hidden)?;
            let inter = s.intermediate_size;
            let gate = gu.narrow(1, 0, inter)?;
            let up = gu.narrow(1, inter, inter)?;
            let act = (candle_nn::Activation::Silu.forward(&gate)? * up)?;
            x = (x + layer.down.forward(&act)?)?;
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let nrows = rows.len();
        let picked = x.index_select(&Tensor::from_vec(rows, nrows, &self.device)?, 0)?;
        let normed = candle_nn::ops::rms_norm(&picked, &self.norm, eps)?;
        Ok(self.lm_head.forward(&normed)?.to_vec2::<f32>()?)
    }
}

fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for (v, g) in x.iter_mut().zip(w) {
        *v = *v * inv * g;
    }
}
