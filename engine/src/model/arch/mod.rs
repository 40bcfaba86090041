//! One module per architecture: the names it answers to in config.json, what its config
//! decides (biases, per-head norms, sliding windows), and its checkpoint's tensor names, one
//! table that the CPU and CUDA passes both load from. A new architecture whose forward pass
//! is the Llama decoder's is one new file here.

mod bloom;
mod cohere;
mod llama;
mod mistral;
mod mixtral;
mod qwen2;
mod qwen3;

pub use bloom::alibi_slopes;

use super::config::{Experts, Family, MlpKind, NormKind, Positions, RawConfig};

/// What an architecture decides about a config and its weights.
pub trait Architecture: Sync {
    fn family(&self) -> Family;
    /// `model_type` and `architectures[]` values that name it.
    fn config_names(&self) -> &'static [&'static str];
    /// Whether the q/k/v projections and o_proj carry biases.
    fn attention_biases(&self, config: &RawConfig) -> (bool, bool) {
        let bias = config.attention_bias.unwrap_or(false);
        (bias, bias)
    }
    /// Per-head RMSNorm on q and k before RoPE.
    fn qk_norm(&self) -> bool {
        false
    }
    /// Layer `layer`'s attention window when the config has no `layer_types`.
    fn window(&self, config: &RawConfig, _layer: usize) -> Option<usize> {
        config.sliding_window
    }
    /// Rotary embeddings only on windowed layers; layers without a window have no positional
    /// encoding (Cohere2's global layers).
    fn rotary_only_where_windowed(&self) -> bool {
        false
    }
    /// Mixture-of-experts layers in place of the MLP, if the architecture has them.
    fn experts(&self, _config: &RawConfig) -> Result<Option<Experts>, String> {
        Ok(None)
    }
    /// Its checkpoint's tensor names.
    fn weights(&self) -> &'static WeightNames {
        &LLAMA_NAMES
    }
    /// Another naming its checkpoints are found with (BLOOM's original files lack the
    /// `transformer.` prefix `save_pretrained` writes today).
    fn other_weights(&self) -> Option<&'static WeightNames> {
        None
    }
    /// How it normalises, and with which epsilon.
    fn norm(&self) -> NormKind {
        NormKind::Rms
    }
    fn norm_eps(&self, config: &RawConfig) -> f64 {
        config.rms_norm_eps
    }
    /// Attention and MLP in parallel from one norm.
    fn parallel_block(&self) -> bool {
        false
    }
    fn positions(&self) -> Positions {
        Positions::Rope { interleaved: false }
    }
    fn mlp(&self) -> MlpKind {
        MlpKind::GatedSilu
    }
    fn qkv_fused_per_head(&self) -> bool {
        false
    }
    fn embed_norm(&self) -> bool {
        false
    }
    /// The MLP's width when the config does not say.
    fn default_intermediate(&self, _hidden: usize) -> Option<usize> {
        None
    }
    fn logit_scale(&self, _config: &RawConfig) -> Option<f64> {
        None
    }
    /// `tie_word_embeddings` when the config does not say (transformers' default for it).
    fn tied_by_default(&self) -> bool {
        false
    }
    /// Refuses config options the engine does not implement for it.
    fn check(&self, _config: &RawConfig) -> Result<(), String> {
        Ok(())
    }
}

const ARCHITECTURES: [&dyn Architecture; 8] = [
    &bloom::Bloom,
    &cohere::Cohere { second: false },
    &cohere::Cohere { second: true },
    &llama::Llama,
    &mistral::Mistral,
    &qwen2::Qwen2,
    &qwen3::Qwen3,
    &mixtral::Mixtral,
];

/// The architecture a config names (`model_type`, else its first `architectures` entry).
pub fn named(kind: &str) -> Option<&'static dyn Architecture> {
    ARCHITECTURES
        .into_iter()
        .find(|a| a.config_names().contains(&kind))
}

/// The architecture of a family.
pub fn of(family: Family) -> &'static dyn Architecture {
    ARCHITECTURES
        .into_iter()
        .find(|a| a.family() == family)
        .unwrap_or(&llama::Llama)
}

/// Every supported name, for error messages.
pub fn supported() -> String {
    ARCHITECTURES
        .iter()
        .map(|a| a.config_names()[0])
        .collect::<Vec<_>>()
        .join(", ")
}

/// A checkpoint's tensor names, without the `.weight` / `.bias` suffix; `{i}` in `layer`
/// is the layer's index, and the per-layer names follow the layer's prefix.
pub struct WeightNames {
    pub embed: &'static str,
    /// The LayerNorm after the embeddings, for architectures that have one.
    pub embed_norm: &'static str,
    pub final_norm: &'static str,
    pub lm_head: &'static str,
    pub layer: &'static str,
    pub input_norm: &'static str,
    pub post_norm: &'static str,
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub o: &'static str,
    pub q_norm: &'static str,
    pub k_norm: &'static str,
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
    /// Mixture of experts: the router, and expert `{e}`'s gate, up and down projections.
    pub router: &'static str,
    pub expert_gate: &'static str,
    pub expert_up: &'static str,
    pub expert_down: &'static str,
}

/// One layer's tensor names, in full.
pub struct LayerNames {
    pub input_norm: String,
    pub post_norm: String,
    pub q: String,
    pub k: String,
    pub v: String,
    pub o: String,
    pub q_norm: String,
    pub k_norm: String,
    pub gate: String,
    pub up: String,
    pub down: String,
    pub router: String,
    prefix: String,
    names: &'static WeightNames,
}

impl LayerNames {
    /// Expert `e`'s (gate, up, down) projections.
    pub fn expert(&self, e: usize) -> [String; 3] {
        let n = self.names;
        [n.expert_gate, n.expert_up, n.expert_down]
            .map(|name| format!("{}.{}", self.prefix, name.replace("{e}", &e.to_string())))
    }
}

impl WeightNames {
    pub fn layer(&'static self, i: usize) -> LayerNames {
        let prefix = self.layer.replace("{i}", &i.to_string());
        let full = |name: &str| format!("{prefix}.{name}");
        LayerNames {
            input_norm: full(self.input_norm),
            post_norm: full(self.post_norm),
            q: full(self.q),
            k: full(self.k),
            v: full(self.v),
            o: full(self.o),
            q_norm: full(self.q_norm),
            k_norm: full(self.k_norm),
            gate: full(self.gate),
            up: full(self.up),
            down: full(self.down),
            router: full(self.router),
            prefix: prefix.clone(),
            names: self,
        }
    }
}

/// Transformers' Llama layout, which Mistral and Qwen2/3 share.
pub const LLAMA_NAMES: WeightNames = WeightNames {
    embed: "model.embed_tokens",
    embed_norm: "",
    final_norm: "model.norm",
    lm_head: "lm_head",
    layer: "model.layers.{i}",
    input_norm: "input_layernorm",
    post_norm: "post_attention_layernorm",
    q: "self_attn.q_proj",
    k: "self_attn.k_proj",
    v: "self_attn.v_proj",
    o: "self_attn.o_proj",
    q_norm: "self_attn.q_norm",
    k_norm: "self_attn.k_norm",
    gate: "mlp.gate_proj",
    up: "mlp.up_proj",
    down: "mlp.down_proj",
    // Mixtral's, in the same layout.
    router: "block_sparse_moe.gate",
    expert_gate: "block_sparse_moe.experts.{e}.w1",
    expert_up: "block_sparse_moe.experts.{e}.w3",
    expert_down: "block_sparse_moe.experts.{e}.w2",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_is_found_by_its_names_and_family() {
        for a in ARCHITECTURES {
            for name in a.config_names() {
                assert_eq!(named(name).map(|n| n.family()), Some(a.family()));
            }
            assert_eq!(of(a.family()).family(), a.family());
        }
        assert!(named("gpt_neox").is_none());
        assert_eq!(LLAMA_NAMES.layer(3).q, "model.layers.3.self_attn.q_proj");
    }
}
