//! XLM-RoBERTa's encoder forward pass on the CPU: absolute positions after the padding
//! offset, post-norm layers of bidirectional attention and a GELU MLP. Sequences are packed
//! (no padding) and each attends only to itself, so an input's embedding does not depend on
//! the batch it runs in: every row goes through the same matrix kernels as the decoders'.

use std::path::Path;

use candle_core::{DType, Device};

use crate::model::WeightFormat;
use rayon::prelude::*;

use super::shape::{Activation, EncoderShape};
use crate::model::matmul::Matrix;
use crate::model::weights::Weights;
use crate::EngineError;

/// A LayerNorm with weight and bias.
struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    /// Normalises each `hidden`-wide row of `x` in place.
    fn apply(&self, x: &mut [f32]) {
        let h = self.weight.len();
        for row in x.chunks_exact_mut(h) {
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / h as f64;
            let var = row
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / h as f64;
            let inv = 1.0 / (var + f64::from(self.eps)).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = ((f64::from(*v) - mean) * inv) as f32 * w + b;
            }
        }
    }
}

/// A linear layer with its bias.
struct Linear {
    weight: Matrix,
    bias: Vec<f32>,
}

impl Linear {
    fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        self.weight.matmul(x, rows, Some(&self.bias))
    }
}

struct Layer {
    /// query, key and value fused into one product.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

/// The encoder's weights.
pub struct Encoder {
    shape: EncoderShape,
    /// Row-major `[vocab, hidden]`, `[positions, hidden]`: read a row per token.
    word: Vec<f32>,
    position: Vec<f32>,
    /// Token type 0's row (every input is a single segment).
    token_type: Vec<f32>,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
}

/// Where one sequence's rows are in a packed batch.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub start: usize,
    pub len: usize,
}

impl Encoder {
    /// Loads an `XLMRobertaModel` checkpoint (names with or without a `roberta.` prefix);
    /// `dtype` is how the matrices are held; all arithmetic is f32.
    pub fn load(dir: &Path, dtype: WeightFormat) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(dir.join("config.json")).map_err(|e| {
            EngineError::load(format!("cannot read {}/config.json: {e}", dir.display()))
        })?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::load(format!("invalid config.json: {e}")))?;
        let shape = EncoderShape::from_json(&config)?;
        let w = Weights::open(dir, &Device::Cpu)?;
        let prefix = if w.contains("roberta.embeddings.word_embeddings.weight") {
            "roberta."
        } else {
            ""
        };
        let (h, i) = (shape.hidden_size, shape.intermediate_size);
        let flat = |name: &str, dims: &[usize]| -> Result<Vec<f32>, EngineError> {
            Ok(w.tensor(&format!("{prefix}{name}"), dims)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let vector = |name: &str, n: usize| w.vector(&format!("{prefix}{name}"), n);
        let norm = |name: &str| -> Result<LayerNorm, EngineError> {
            Ok(LayerNorm {
                weight: vector(&format!("{name}.weight"), h)?,
                bias: vector(&format!("{name}.bias"), h)?,
                eps: shape.layer_norm_eps,
            })
        };
        let linear = |names: &[&str], rows: usize, cols: usize| -> Result<Linear, EngineError> {
            let parts = names
                .iter()
                .map(|n| w.tensor(&format!("{prefix}{n}.weight"), &[rows / names.len(), cols]))
                .collect::<Result<Vec<_>, _>>()?;
            let mut bias = Vec::with_capacity(rows);
            for n in names {
                bias.extend(vector(&format!("{n}.bias"), rows / names.len())?);
            }
            Ok(Linear {
                weight: w.matrix(&parts, rows, cols, dtype)?,
                bias,
            })
        };
        let layers = (0..shape.num_layers)
            .map(|l| -> Result<Layer, EngineError> {
                let p = format!("encoder.layer.{l}");
                let qkv = ["query", "key", "value"].map(|n| format!("{p}.attention.self.{n}"));
                let qkv: Vec<&str> = qkv.iter().map(String::as_str).collect();
                Ok(Layer {
                    qkv: linear(&qkv, 3 * h, h)?,
                    attn_out: linear(&[&format!("{p}.attention.output.dense")], h, h)?,
                    attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                    up: linear(&[&format!("{p}.intermediate.dense")], i, h)?,
                    down: linear(&[&format!("{p}.output.dense")], h, i)?,
                    out_norm: norm(&format!("{p}.output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let token_types = flat(
            "embeddings.token_type_embeddings.weight",
            &[shape.type_vocab_size, h],
        )?;
        Ok(Self {
            word: flat("embeddings.word_embeddings.weight", &[shape.vocab_size, h])?,
            position: flat(
                "embeddings.position_embeddings.weight",
                &[shape.max_position_embeddings, h],
            )?,
            token_type: token_types[..h].to_vec(),
            embed_norm: norm("embeddings.LayerNorm")?,
            layers,
            shape,
        })
    }

    pub fn shape(&self) -> &EncoderShape {
        &self.shape
    }

    /// Checks one input before it is queued: not empty, not past the positions, ids in the
    /// vocabulary.
    pub fn check(&self, tokens: &[u32]) -> Result<(), EngineError> {
        let max = self.shape.max_tokens();
        if tokens.is_empty() {
            return Err(EngineError::InvalidRequest("an input has no tokens".into()));
        }
        if tokens.len() > max {
            return Err(EngineError::InvalidRequest(format!(
                "an input has {} tokens; this model reads at most {max}",
                tokens.len()
            )));
        }
        if let Some(bad) = tokens
            .iter()
            .find(|&&t| t as usize >= self.shape.vocab_size)
        {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.shape.vocab_size
            )));
        }
        Ok(())
    }

    /// The last hidden state of every token of every (checked) sequence, packed:
    /// `[total tokens, hidden]`, and where each sequence's rows are.
    pub fn forward(&self, seqs: &[&[u32]]) -> (Vec<f32>, Vec<Span>) {
        let h = self.shape.hidden_size;
        let mut spans = Vec::with_capacity(seqs.len());
        let mut x = Vec::new();
        for s in seqs {
            spans.push(Span {
                start: x.len() / h,
                len: s.len(),
            });
            for (p, &t) in s.iter().enumerate() {
                // No token of a checked input is padding: positions run from pad + 1.
                let pos = self.shape.pad_token_id + 1 + p;
                let word = &self.word[t as usize * h..(t as usize + 1) * h];
                let position = &self.position[pos * h..(pos + 1) * h];
                x.extend(
                    word.iter()
                        .zip(position)
                        .zip(&self.token_type)
                        .map(|((w, p), t)| w + t + p),
                );
            }
        }
        self.embed_norm.apply(&mut x);
        let rows = x.len() / h;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x, rows);
            let context = self.attention(&qkv, &spans);
            let mut a = layer.attn_out.forward(&context, rows);
            a.iter_mut().zip(&x).for_each(|(a, x)| *a += x);
            layer.attn_norm.apply(&mut a);
            let mut up = layer.up.forward(&a, rows);
            let act = self.shape.activation;
            up.par_chunks_mut(4096)
                .for_each(|c| c.iter_mut().for_each(|v| *v = activate(act, *v)));
            let mut out = layer.down.forward(&up, rows);
            out.iter_mut().zip(&a).for_each(|(o, a)| *o += a);
            layer.out_norm.apply(&mut out);
            x = out;
        }
        (x, spans)
    }

    /// Bidirectional attention within each sequence: `qkv` is `[rows, 3 * hidden]`
    /// (queries, keys, values); returns `[rows, hidden]`, heads side by side.
    fn attention(&self, qkv: &[f32], spans: &[Span]) -> Vec<f32> {
        let (h, heads, hd) = (
            self.shape.hidden_size,
            self.shape.num_heads,
            self.shape.head_dim(),
        );
        let scale = 1.0 / (hd as f32).sqrt();
        let tasks: Vec<(usize, usize)> = (0..spans.len())
            .flat_map(|s| (0..heads).map(move |head| (s, head)))
            .collect();
        let results: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|&(s, head)| {
                let Span { start, len } = spans[s];
                let row = |r: usize, part: usize| {
                    let at = (start + r) * 3 * h + part * h + head * hd;
                    &qkv[at..at + hd]
                };
                let mut out = vec![0.0f32; len * hd];
                let mut scores = vec![0.0f32; len];
                for (i, o) in out.chunks_exact_mut(hd).enumerate() {
                    let q = row(i, 0);
                    for (j, s) in scores.iter_mut().enumerate() {
                        *s = q.iter().zip(row(j, 1)).map(|(a, b)| a * b).sum::<f32>() * scale;
                    }
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0f32;
                    for s in scores.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    for (j, &p) in scores.iter().enumerate() {
                        let w = p / sum;
                        for (o, v) in o.iter_mut().zip(row(j, 2)) {
                            *o += w * v;
                        }
                    }
                }
                out
            })
            .collect();
        let mut context = vec![0.0f32; qkv.len() / 3];
        for (&(s, head), out) in tasks.iter().zip(results) {
            let start = spans[s].start;
            for (r, o) in out.chunks_exact(hd).enumerate() {
                let at = (start + r) * h + head * hd;
                context[at..at + hd].copy_from_slice(o);
            }
        }
        context
    }
}

fn activate(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Gelu => {
            let x = f64::from(x);
            (0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))) as f32
        }
        Activation::GeluTanh => {
            x * 0.5 * (1.0 + (0.797_884_6 * x * (1.0 + 0.044_715 * x * x)).tanh())
        }
        Activation::Relu => x.max(0.0),
    }
}
