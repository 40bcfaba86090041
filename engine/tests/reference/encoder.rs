//! An independent reference forward pass for XLM-RoBERTa encoders (Hugging Face transformers'
//! `XLMRobertaModel` in `modeling_xlm_roberta.py`), plus sentence-transformers' `Pooling` and
//! `Normalize` modules, used by the integration tests to check the engine's encoder and its
//! sentence embeddings.
//!
//! What the forward pass does, for one unpadded sequence (batch of one, attention mask all ones,
//! `token_type_ids` all zero, no cache):
//! - `XLMRobertaEmbeddings`: position ids come from the input ids as in
//!   `create_position_ids_from_input_ids`: every token that is not `pad_token_id` gets
//!   `pad_token_id + (number of non-pad tokens up to and including it)`, a pad token gets
//!   `pad_token_id` itself (so the first real token sits at `pad_token_id + 1`, i.e. 2 for the
//!   usual pad id 1). The embedding is word + token_type(row 0) + position, followed by a
//!   LayerNorm with weight and bias (eps `layer_norm_eps`); dropout is the identity at inference.
//! - `XLMRobertaLayer`, `num_hidden_layers` times, post-LN:
//!   - `XLMRobertaSelfAttention`: q, k and v are linear layers with bias, split into
//!     `num_attention_heads` heads of `hidden_size / num_attention_heads`; scores are
//!     q.k / sqrt(head_dim), softmax over every key (bidirectional, nothing masked), context is
//!     the probability-weighted sum of the values, heads concatenated back in order;
//!   - `XLMRobertaSelfOutput`: `dense` (with bias), plus the layer's input, then `LayerNorm`;
//!   - `XLMRobertaIntermediate`: `dense` (hidden -> intermediate, with bias) then `hidden_act`
//!     (`ACT2FN`: "gelu" is the exact erf GELU, "gelu_new" / "gelu_pytorch_tanh" the tanh
//!     approximation, "relu");
//!   - `XLMRobertaOutput`: `dense` (intermediate -> hidden, with bias), plus the attention block's
//!     output, then `LayerNorm`.
//! - `last_hidden_state` is the output of the last layer. The pooler (`XLMRobertaPooler`,
//!   `pooler.*` tensors) is not used by sentence-transformers' pooling and is ignored here.
//!
//! sentence-transformers then pools the token embeddings (`Pooling`: "mean" is the sum over the
//! attended tokens divided by their count, "cls" is the first token) and, if the pipeline has a
//! `Normalize` module, divides by the L2 norm (`F.normalize(p=2)`: x / max(||x||, 1e-12)).
//!
//! Like `mod.rs`, it is deliberately naive and shares nothing with the engine: every weight is
//! converted to `f32` at load and held in a plain row-major `Vec<f32>` (linear weights are PyTorch's
//! [out, in], y = x W^T + b), every operation is a visible loop, and dot products, the LayerNorm
//! mean and variance, softmax and the pooling sums accumulate in `f64`; GELU is evaluated in `f64`
//! with an erf accurate to about 1e-15.
//!
//! Tensor names are those `XLMRobertaModel.save_pretrained` writes (`embeddings.*`,
//! `encoder.layer.{i}.*`); the same names under a `roberta.` prefix (checkpoints saved from
//! `XLMRobertaForMaskedLM` and friends) are accepted too.
//!
//! Usage from a test: `mod reference;` then
//! `let enc = reference::encoder::ReferenceEncoder::load(dir);`
//! `let emb = reference::encoder::pool(&enc.hidden_states(&ids), "mean", true);`

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The activation after `intermediate.dense` (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    /// "gelu": 0.5 x (1 + erf(x / sqrt(2))).
    GeluErf,
    /// "gelu_new" / "gelu_pytorch_tanh": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    GeluTanh,
    /// "relu": max(x, 0).
    Relu,
}

/// The parts of config.json the forward pass needs, with `XLMRobertaConfig`'s defaults.
#[derive(Debug, Clone)]
struct EncoderConfig {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    head_dim: usize,
    intermediate_size: usize,
    activation: Activation,
    layer_norm_eps: f64,
    max_position_embeddings: usize,
    type_vocab_size: usize,
    pad_token_id: usize,
    vocab_size: usize,
}

impl EncoderConfig {
    fn parse(json: &Value) -> EncoderConfig {
        let hidden_size = super::require_usize(json, "hidden_size");
        let num_hidden_layers = super::require_usize(json, "num_hidden_layers");
        let num_attention_heads = super::require_usize(json, "num_attention_heads");
        let intermediate_size = super::require_usize(json, "intermediate_size");
        assert!(
            num_attention_heads > 0 && hidden_size.is_multiple_of(num_attention_heads),
            "encoder config.json: hidden_size ({hidden_size}) must be a multiple of \
             num_attention_heads ({num_attention_heads})"
        );

        let act_name = match super::get(json, "hidden_act") {
            None => "gelu".to_string(),
            Some(v) => v
                .as_str()
                .unwrap_or_else(|| {
                    panic!("encoder config.json: `hidden_act` should be a string, got {v}")
                })
                .to_string(),
        };
        let activation = match act_name.as_str() {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => panic!("reference encoder: unsupported hidden_act {other:?}"),
        };

        let layer_norm_eps = super::get_f64(json, "layer_norm_eps").unwrap_or(1e-12);

        // Only absolute learned positions are implemented (the XLM-RoBERTa default).
        if let Some(v) = super::get(json, "position_embedding_type") {
            assert_eq!(
                v.as_str(),
                Some("absolute"),
                "reference encoder: unsupported position_embedding_type {v}"
            );
        }
        // A decoder configuration would make the self-attention causal; not supported here.
        if let Some(v) = super::get(json, "is_decoder") {
            assert_eq!(
                v.as_bool(),
                Some(false),
                "reference encoder: is_decoder = {v} is not supported (encoder only)"
            );
        }

        EncoderConfig {
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            head_dim: hidden_size / num_attention_heads,
            intermediate_size,
            activation,
            layer_norm_eps,
            max_position_embeddings: super::get_usize(json, "max_position_embeddings")
                .unwrap_or(512),
            type_vocab_size: super::get_usize(json, "type_vocab_size").unwrap_or(2),
            pad_token_id: super::get_usize(json, "pad_token_id").unwrap_or(1),
            vocab_size: super::get_usize(json, "vocab_size").unwrap_or(30522),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------------

/// Every tensor of the checkpoint, converted to f32, by name.
struct EncoderTensors {
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl EncoderTensors {
    /// Every tensor of `model.safetensors` or its shards, read as the decoders' reference does.
    fn load(dir: &Path) -> EncoderTensors {
        EncoderTensors {
            tensors: super::TensorStore::load(dir).tensors,
        }
    }

    /// The tensor `name` (or `roberta.{name}`), which must exist and have `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Vec<f32> {
        let prefixed = format!("roberta.{name}");
        let (actual, data) = self
            .tensors
            .get(name)
            .or_else(|| self.tensors.get(&prefixed))
            .unwrap_or_else(|| {
                panic!("reference encoder: missing tensor {name} (also tried {prefixed})")
            });
        assert_eq!(
            actual.as_slice(),
            shape,
            "reference encoder: tensor {name} has shape {actual:?}, expected {shape:?}"
        );
        data.clone()
    }

    /// The shape of `name` (or `roberta.{name}`), if present.
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        let prefixed = format!("roberta.{name}");
        self.tensors
            .get(name)
            .or_else(|| self.tensors.get(&prefixed))
            .map(|(shape, _)| shape.clone())
    }
}

/// `nn.Linear`: y = x W^T + b with W stored [out, in] row-major.
struct DenseLayer {
    weight: Vec<f32>,
    bias: Vec<f32>,
    in_dim: usize,
    out_dim: usize,
}

impl DenseLayer {
    fn load(t: &EncoderTensors, prefix: &str, in_dim: usize, out_dim: usize) -> DenseLayer {
        DenseLayer {
            weight: t.get(&format!("{prefix}.weight"), &[out_dim, in_dim]),
            bias: t.get(&format!("{prefix}.bias"), &[out_dim]),
            in_dim,
            out_dim,
        }
    }

    fn forward(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len(), self.in_dim);
        let mut y = vec![0.0f32; self.out_dim];
        for (o, out) in y.iter_mut().enumerate() {
            let row = &self.weight[o * self.in_dim..(o + 1) * self.in_dim];
            *out = (super::dot(row, x) + self.bias[o] as f64) as f32;
        }
        y
    }
}

/// `nn.LayerNorm` with weight and bias.
struct LayerNormParams {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl LayerNormParams {
    fn load(t: &EncoderTensors, prefix: &str, dim: usize) -> LayerNormParams {
        LayerNormParams {
            weight: t.get(&format!("{prefix}.weight"), &[dim]),
            bias: t.get(&format!("{prefix}.bias"), &[dim]),
        }
    }
}

/// One `XLMRobertaLayer`.
struct EncoderLayer {
    query: DenseLayer,
    key: DenseLayer,
    value: DenseLayer,
    attn_out: DenseLayer,
    attn_norm: LayerNormParams,
    intermediate: DenseLayer,
    output: DenseLayer,
    output_norm: LayerNormParams,
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// An XLM-RoBERTa encoder (`XLMRobertaModel`), weights in f32.
pub struct ReferenceEncoder {
    cfg: EncoderConfig,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    token_type_embeddings: Vec<f32>,
    embeddings_norm: LayerNormParams,
    layers: Vec<EncoderLayer>,
}

impl ReferenceEncoder {
    /// Loads config.json and model.safetensors (or a sharded model.safetensors.index.json) from
    /// `dir`.
    pub fn load(dir: &Path) -> Self {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", config_path.display()));
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", config_path.display()));
        let mut cfg = EncoderConfig::parse(&json);

        let t = EncoderTensors::load(dir);
        let h = cfg.hidden_size;
        let inter = cfg.intermediate_size;

        // A config without `vocab_size` takes it from the embedding table rather than from
        // XLMRobertaConfig's default (30522), which would not match an XLM-R checkpoint.
        if let Some(shape) = t.shape_of("embeddings.word_embeddings.weight") {
            if super::get(&json, "vocab_size").is_none() && shape.len() == 2 {
                cfg.vocab_size = shape[0];
            }
        }

        let word_embeddings = t.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h]);
        let position_embeddings = t.get(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
        );
        let token_type_embeddings = t.get(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
        );
        assert!(
            cfg.type_vocab_size >= 1,
            "reference encoder: type_vocab_size must be at least 1"
        );
        let embeddings_norm = LayerNormParams::load(&t, "embeddings.LayerNorm", h);

        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(EncoderLayer {
                query: DenseLayer::load(&t, &format!("{p}.attention.self.query"), h, h),
                key: DenseLayer::load(&t, &format!("{p}.attention.self.key"), h, h),
                value: DenseLayer::load(&t, &format!("{p}.attention.self.value"), h, h),
                attn_out: DenseLayer::load(&t, &format!("{p}.attention.output.dense"), h, h),
                attn_norm: LayerNormParams::load(&t, &format!("{p}.attention.output.LayerNorm"), h),
                intermediate: DenseLayer::load(&t, &format!("{p}.intermediate.dense"), h, inter),
                output: DenseLayer::load(&t, &format!("{p}.output.dense"), inter, h),
                output_norm: LayerNormParams::load(&t, &format!("{p}.output.LayerNorm"), h),
            });
        }

        ReferenceEncoder {
            cfg,
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embeddings_norm,
            layers,
        }
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// `create_position_ids_from_input_ids` for one sequence with no past: non-pad tokens count
    /// up from `pad_token_id + 1`; pad tokens get `pad_token_id`.
    fn position_ids(&self, ids: &[u32]) -> Vec<usize> {
        let pad = self.cfg.pad_token_id;
        let mut non_pad_seen = 0usize;
        let mut positions = Vec::with_capacity(ids.len());
        for &id in ids {
            if id as usize == pad {
                positions.push(pad);
            } else {
                non_pad_seen += 1;
                positions.push(pad + non_pad_seen);
            }
        }
        positions
    }

    /// `last_hidden_state` for one sequence (no padding mask, token_type_ids all 0): one vector
    /// of `hidden_size` per token.
    pub fn hidden_states(&self, ids: &[u32]) -> Vec<Vec<f32>> {
        let h = self.cfg.hidden_size;
        let eps = self.cfg.layer_norm_eps;

        // XLMRobertaEmbeddings.
        let positions = self.position_ids(ids);
        let mut hidden: Vec<Vec<f32>> = Vec::with_capacity(ids.len());
        for (&id, &pos) in ids.iter().zip(&positions) {
            let id = id as usize;
            assert!(
                id < self.cfg.vocab_size,
                "reference encoder: token id {id} out of range (vocab_size {})",
                self.cfg.vocab_size
            );
            assert!(
                pos < self.cfg.max_position_embeddings,
                "reference encoder: position id {pos} out of range (max_position_embeddings {}); \
                 the sequence is too long",
                self.cfg.max_position_embeddings
            );
            let word = &self.word_embeddings[id * h..(id + 1) * h];
            let token_type = &self.token_type_embeddings[0..h];
            let position = &self.position_embeddings[pos * h..(pos + 1) * h];
            // transformers adds in this order: (word + token_type) + position, in f32.
            let mut x = vec![0.0f32; h];
            for d in 0..h {
                x[d] = (word[d] + token_type[d]) + position[d];
            }
            super::layer_norm_with_bias_in_place(
                &mut x,
                &self.embeddings_norm.weight,
                &self.embeddings_norm.bias,
                eps,
            );
            hidden.push(x);
        }

        // XLMRobertaEncoder.
        for layer in &self.layers {
            hidden = self.layer_forward(layer, &hidden);
        }
        hidden
    }

    /// One `XLMRobertaLayer` over the whole sequence.
    fn layer_forward(&self, layer: &EncoderLayer, input: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let n = input.len();
        let h = self.cfg.hidden_size;
        let heads = self.cfg.num_attention_heads;
        let hd = self.cfg.head_dim;
        let eps = self.cfg.layer_norm_eps;
        let scale = 1.0 / (hd as f64).sqrt();

        // XLMRobertaSelfAttention.
        let q: Vec<Vec<f32>> = input.iter().map(|x| layer.query.forward(x)).collect();
        let k: Vec<Vec<f32>> = input.iter().map(|x| layer.key.forward(x)).collect();
        let v: Vec<Vec<f32>> = input.iter().map(|x| layer.value.forward(x)).collect();

        let mut context: Vec<Vec<f32>> = vec![vec![0.0f32; h]; n];
        for head in 0..heads {
            let lo = head * hd;
            let hi = lo + hd;
            for i in 0..n {
                // Scores against every key (bidirectional, nothing masked).
                let mut scores = vec![0.0f64; n];
                for j in 0..n {
                    scores[j] = super::dot(&q[i][lo..hi], &k[j][lo..hi]) * scale;
                }
                let probs = softmax64(&scores);
                for d in 0..hd {
                    let mut acc = 0.0f64;
                    for j in 0..n {
                        acc += probs[j] * v[j][lo + d] as f64;
                    }
                    context[i][lo + d] = acc as f32;
                }
            }
        }

        // XLMRobertaSelfOutput: dense, residual, LayerNorm.
        let mut attention_output: Vec<Vec<f32>> = Vec::with_capacity(n);
        for i in 0..n {
            let mut y = layer.attn_out.forward(&context[i]);
            for d in 0..h {
                y[d] += input[i][d];
            }
            super::layer_norm_with_bias_in_place(
                &mut y,
                &layer.attn_norm.weight,
                &layer.attn_norm.bias,
                eps,
            );
            attention_output.push(y);
        }

        // XLMRobertaIntermediate + XLMRobertaOutput: dense, activation, dense, residual, LayerNorm.
        let mut out: Vec<Vec<f32>> = Vec::with_capacity(n);
        for x in &attention_output {
            let mut mid = layer.intermediate.forward(x);
            for m in mid.iter_mut() {
                *m = activate(self.cfg.activation, *m);
            }
            let mut y = layer.output.forward(&mid);
            for d in 0..h {
                y[d] += x[d];
            }
            super::layer_norm_with_bias_in_place(
                &mut y,
                &layer.output_norm.weight,
                &layer.output_norm.bias,
                eps,
            );
            out.push(y);
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// sentence-transformers pooling
// ---------------------------------------------------------------------------------------------

/// sentence-transformers' `Pooling` for one unpadded sequence: "mean" averages the token vectors,
/// "cls" takes the first token's. Then, if `normalize`, `Normalize` (x / max(||x||_2, 1e-12)).
pub fn pool(hidden: &[Vec<f32>], mode: &str, normalize: bool) -> Vec<f32> {
    assert!(!hidden.is_empty(), "pool: no tokens");
    let dim = hidden[0].len();
    for row in hidden {
        assert_eq!(row.len(), dim, "pool: token vectors of different sizes");
    }
    let mut pooled: Vec<f32> = match mode {
        "mean" => {
            // sum(token * mask) / clamp(sum(mask), min = 1e-9); the mask is all ones here.
            let count = (hidden.len() as f64).max(1e-9);
            let mut out = vec![0.0f32; dim];
            for (d, o) in out.iter_mut().enumerate() {
                let mut acc = 0.0f64;
                for row in hidden {
                    acc += row[d] as f64;
                }
                *o = (acc / count) as f32;
            }
            out
        }
        "cls" => hidden[0].clone(),
        other => panic!("pool: unsupported pooling mode {other:?} (expected \"mean\" or \"cls\")"),
    };
    if normalize {
        let norm = pooled
            .iter()
            .map(|&x| x as f64 * x as f64)
            .sum::<f64>()
            .sqrt();
        let denom = norm.max(1e-12);
        for x in pooled.iter_mut() {
            *x = (*x as f64 / denom) as f32;
        }
    }
    pooled
}

// ---------------------------------------------------------------------------------------------
// Numeric helpers (the dot product, LayerNorm and byte conversion are mod.rs's)
// ---------------------------------------------------------------------------------------------

/// Numerically stable softmax in f64.
fn softmax64(scores: &[f64]) -> Vec<f64> {
    let mut max = f64::NEG_INFINITY;
    for &s in scores {
        if s > max {
            max = s;
        }
    }
    let mut exps = Vec::with_capacity(scores.len());
    let mut total = 0.0f64;
    for &s in scores {
        let e = (s - max).exp();
        total += e;
        exps.push(e);
    }
    for e in exps.iter_mut() {
        *e /= total;
    }
    exps
}

/// The activation `hidden_act`, evaluated in f64.
fn activate(act: Activation, x: f32) -> f32 {
    let x = x as f64;
    let y = match act {
        Activation::GeluErf => 0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        Activation::Relu => x.max(0.0),
    };
    y as f32
}

/// The error function in f64, via the everywhere-convergent series with positive terms
/// (Abramowitz & Stegun 7.1.6):
/// erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_{n>=0} 2^n x^(2n+1) / (1 * 3 * ... * (2n+1)).
/// No cancellation, so the relative error is a few ulps. For |x| >= 6, 1 - |erf(x)| < 3e-17, below
/// f64 resolution near 1, so ±1 is returned.
fn erf64(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    if ax == 0.0 {
        return x;
    }
    if ax >= 6.0 {
        return x.signum();
    }
    let x2 = ax * ax;
    let mut term = ax;
    let mut sum = ax;
    let mut n = 0u32;
    loop {
        // term_{n+1} = term_n * 2 x^2 / (2n + 3)
        term *= 2.0 * x2 / (2 * n + 3) as f64;
        sum += term;
        n += 1;
        if term < sum * 1e-17 {
            break;
        }
        assert!(n < 10_000, "erf64 series did not converge for x = {x}");
    }
    let value = 2.0 / std::f64::consts::PI.sqrt() * (-x2).exp() * sum;
    value.min(1.0).copysign(x)
}
