//! The parts of a Hugging Face `config.json` the Llama-family decoder needs; each
//! architecture's own rules are in `arch/`.

use std::path::Path;

use serde::Deserialize;

use super::arch::{self, WeightNames};
use crate::EngineError;

/// Which decoder variant a config.json describes; they differ in biases, norms and windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Mixtral,
    Cohere,
    Cohere2,
    Bloom,
}

/// How hidden states are normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// RMSNorm with a weight (Llama's).
    Rms,
    /// LayerNorm: mean and variance, a weight, and a bias where the checkpoint has one
    /// (BLOOM's; Cohere's has none).
    Layer,
}

/// The feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpKind {
    /// `down(silu(gate(x)) * up(x))` (Llama's).
    GatedSilu,
    /// `down(gelu_tanh(up(x)))` (BLOOM's).
    Gelu,
}

/// How positions enter attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// Rotary embeddings on q and k (halves, or interleaved pairs).
    Rope { interleaved: bool },
    /// ALiBi: a per-head linear bias on attention scores by distance (BLOOM's).
    Alibi,
}

/// A sparse mixture of experts in place of each layer's MLP: `top_k` of `count` experts per
/// token, chosen by a linear router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Experts {
    pub count: usize,
    pub top_k: usize,
}

/// config.json as written, before an architecture reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct RawConfig {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(alias = "n_embed")]
    pub hidden_size: usize,
    /// BLOOM's configs leave it out (its MLP is 4 × hidden_size).
    #[serde(default)]
    intermediate_size: Option<usize>,
    #[serde(alias = "n_layer")]
    num_hidden_layers: usize,
    #[serde(alias = "n_head")]
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    /// Cohere2's older form of `layer_types`: every n-th layer attends fully.
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    torch_dtype: Option<String>,
    #[serde(default, alias = "layer_norm_epsilon")]
    pub layer_norm_eps: Option<f64>,
    #[serde(default)]
    pub apply_residual_connection_post_layernorm: Option<bool>,
    #[serde(default)]
    pub logit_scale: Option<f64>,
    #[serde(default)]
    pub use_qk_norm: Option<bool>,
    #[serde(default)]
    pub num_local_experts: Option<usize>,
    #[serde(default)]
    pub num_experts_per_tok: Option<usize>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    4096
}

/// RoPE frequency scaling, as in transformers' `ROPE_INIT_FUNCTIONS`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// A validated decoder shape.
#[derive(Debug, Clone)]
pub struct ModelShape {
    pub family: Family,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// The norms' epsilon: RMSNorm's, or LayerNorm's where the architecture uses LayerNorm.
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2 always; Llama when `attention_bias`).
    pub qkv_bias: bool,
    /// o_proj carries a bias (Llama with `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Per layer: attend only to this many most recent positions (Mistral v0.1; Qwen layers
    /// past `max_window_layers` when `use_sliding_window`).
    pub layer_windows: Vec<Option<usize>>,
    /// Per layer: whether q and k are rotated (false for Cohere2's global layers, which have no
    /// positional encoding; always false with ALiBi).
    pub layer_rotary: Vec<bool>,
    /// The dtype the checkpoint was saved in, when it says.
    pub torch_dtype: Option<String>,
    /// Mixture-of-experts layers (Mixtral); `None` for a dense MLP.
    pub experts: Option<Experts>,
    pub norm: NormKind,
    /// Attention and MLP both read the same normalised input and add to the residual
    /// together (Cohere's parallel block); otherwise the MLP follows attention.
    pub parallel_block: bool,
    /// Rotary embeddings (halves or interleaved pairs), or ALiBi.
    pub positions: Positions,
    pub mlp: MlpKind,
    /// The fused query_key_value projection holds each head's q, k and v together
    /// (BLOOM's `[heads, 3, head_dim]`), not all q then all k then all v.
    pub qkv_fused_per_head: bool,
    /// A LayerNorm right after the token embeddings (BLOOM's).
    pub embed_norm: bool,
    /// Logits are multiplied by this (Cohere's `logit_scale`).
    pub logit_scale: Option<f32>,
}

impl ModelShape {
    pub fn from_file(path: &Path) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EngineError::load(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(&text).map_err(|e| EngineError::load(format!("{}: {e}", path.display())))
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| format!("invalid config.json: {e}"))?;
        let kind = raw
            .model_type
            .clone()
            .or_else(|| raw.architectures.first().cloned())
            .unwrap_or_default();
        let arch = arch::named(&kind).ok_or_else(|| {
            format!(
                "unsupported architecture `{kind}`: the native engine supports {}; \
                 `backend: mistralrs` serves others, such as DeepSeek V2/V3",
                arch::supported()
            )
        })?;
        let family = arch.family();
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" && act != "swish" {
                return Err(format!(
                    "unsupported hidden_act `{act}`: only silu is supported"
                ));
            }
        }
        if raw.num_attention_heads == 0 || raw.hidden_size == 0 || raw.num_hidden_layers == 0 {
            return Err(
                "hidden_size, num_attention_heads and num_hidden_layers must be positive".into(),
            );
        }
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if num_kv_heads == 0 || !raw.num_attention_heads.is_multiple_of(num_kv_heads) {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({num_kv_heads})",
                raw.num_attention_heads
            ));
        }
        let head_dim = raw
            .head_dim
            .unwrap_or(raw.hidden_size / raw.num_attention_heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {head_dim} must be even and positive"));
        }
        let rope_scaling = parse_rope_scaling(raw.rope_scaling.as_ref())?;
        let (qkv_bias, o_bias) = arch.attention_biases(&raw);
        let experts = arch.experts(&raw)?;
        arch.check(&raw)?;
        let intermediate_size = raw
            .intermediate_size
            .or_else(|| arch.default_intermediate(raw.hidden_size))
            .ok_or("config.json has no intermediate_size")?;
        let norm_eps = arch.norm_eps(&raw);
        // `layer_types` (newer configs) says per layer; otherwise the architecture's rule.
        let layer_windows = (0..raw.num_hidden_layers)
            .map(|layer| match &raw.layer_types {
                Some(types) => raw
                    .sliding_window
                    .filter(|_| types.get(layer).is_some_and(|t| t == "sliding_attention")),
                None => arch.window(&raw, layer),
            })
            .collect::<Vec<_>>();
        let rotary = matches!(arch.positions(), Positions::Rope { .. });
        let layer_rotary = layer_windows
            .iter()
            .map(|w| rotary && (w.is_some() || !arch.rotary_only_where_windowed()))
            .collect();
        Ok(Self {
            family,
            hidden_size: raw.hidden_size,
            intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            rms_norm_eps: norm_eps,
            rope_theta: raw.rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(arch.tied_by_default()),
            qkv_bias,
            o_bias,
            mlp_bias: raw.mlp_bias,
            qk_norm: arch.qk_norm(),
            layer_windows,
            layer_rotary,
            torch_dtype: raw.torch_dtype.clone(),
            experts,
            norm: arch.norm(),
            parallel_block: arch.parallel_block(),
            positions: arch.positions(),
            mlp: arch.mlp(),
            qkv_fused_per_head: arch.qkv_fused_per_head(),
            embed_norm: arch.embed_norm(),
            logit_scale: arch.logit_scale(&raw).map(|s| s as f32),
        })
    }

    /// The checkpoint's tensor names: the architecture's, or its other naming where the
    /// checkpoint (`contains`) has that one's embeddings instead.
    pub fn weight_names(&self, contains: impl Fn(&str) -> bool) -> &'static WeightNames {
        let arch = arch::of(self.family);
        let names = arch.weights();
        match arch.other_weights() {
            Some(other)
                if !contains(&format!("{}.weight", names.embed))
                    && contains(&format!("{}.weight", other.embed)) =>
            {
                other
            }
            _ => names,
        }
    }

    /// Bytes of K and V one token occupies across all layers, in f32.
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * std::mem::size_of::<f32>()
    }
}

fn parse_rope_scaling(v: Option<&serde_json::Value>) -> Result<RopeScaling, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |k: &str| -> Result<f64, String> {
        v.get(k)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| format!("rope_scaling of type {kind} needs a number `{k}`"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        }),
        other => Err(format!("unsupported rope_scaling type `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cohere2(extra: &str) -> ModelShape {
        let text = format!(
            r#"{{"model_type": "cohere2", "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2,
                "vocab_size": 100 {extra}}}"#
        );
        ModelShape::from_json(&text).expect("a valid Cohere2 config")
    }

    /// Command R7B's two spellings of its layer kinds agree: every fourth layer is global, and
    /// only the sliding layers are rotated.
    #[test]
    fn cohere2_layer_kinds_from_the_pattern_or_layer_types() {
        let sliding = |l: usize| !(l + 1).is_multiple_of(4);
        let types: Vec<&str> = (0..8)
            .map(|l| {
                if sliding(l) {
                    "\"sliding_attention\""
                } else {
                    "\"full_attention\""
                }
            })
            .collect();
        for shape in [
            cohere2(r#", "sliding_window": 32, "sliding_window_pattern": 4"#),
            cohere2(r#", "sliding_window": 32"#),
            cohere2(&format!(
                r#", "sliding_window": 32, "layer_types": [{}]"#,
                types.join(",")
            )),
        ] {
            for l in 0..8 {
                assert_eq!(
                    shape.layer_windows[l],
                    sliding(l).then_some(32),
                    "layer {l}"
                );
                assert_eq!(shape.layer_rotary[l], sliding(l), "layer {l}");
            }
        }
        // No window at all: no layer slides, and none is rotated.
        let none = cohere2(r#", "sliding_window": null"#);
        assert!(none.layer_windows.iter().all(Option::is_none));
        assert!(none.layer_rotary.iter().all(|r| !r));
        // Every other architecture rotates every layer, windowed or not.
        let mistral = ModelShape::from_json(
            r#"{"model_type": "mistral", "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
                "sliding_window": 8}"#,
        )
        .expect("a valid Mistral config");
        assert_eq!(mistral.layer_rotary, vec![true, true]);
    }
}
