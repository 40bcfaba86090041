//! BLOOM (`BloomForCausalLM`): ALiBi position biases instead of rotary embeddings, a fused
//! query_key_value projection holding each head's q, k and v together, LayerNorms with
//! biases (one right after the embeddings), a GELU MLP four times as wide as the model, biases
//! on every projection, tied embeddings. No grouped-query attention.

use super::{Architecture, WeightNames};
use crate::model::config::{Family, MlpKind, NormKind, Positions, RawConfig};

pub struct Bloom;

impl Architecture for Bloom {
    fn family(&self) -> Family {
        Family::Bloom
    }

    fn config_names(&self) -> &'static [&'static str] {
        &["bloom", "BloomForCausalLM"]
    }

    fn attention_biases(&self, _: &RawConfig) -> (bool, bool) {
        (true, true)
    }

    fn window(&self, _: &RawConfig, _: usize) -> Option<usize> {
        None
    }

    fn weights(&self) -> &'static WeightNames {
        &BLOOM_NAMES
    }

    fn other_weights(&self) -> Option<&'static WeightNames> {
        Some(&BLOOM_HUB_NAMES)
    }

    fn norm(&self) -> NormKind {
        NormKind::Layer
    }

    fn norm_eps(&self, config: &RawConfig) -> f64 {
        config.layer_norm_eps.unwrap_or(1e-5)
    }

    fn positions(&self) -> Positions {
        Positions::Alibi
    }

    fn mlp(&self) -> MlpKind {
        MlpKind::Gelu
    }

    fn qkv_fused_per_head(&self) -> bool {
        true
    }

    fn embed_norm(&self) -> bool {
        true
    }

    fn default_intermediate(&self, hidden: usize) -> Option<usize> {
        Some(4 * hidden)
    }

    fn tied_by_default(&self) -> bool {
        true
    }

    fn check(&self, config: &RawConfig) -> Result<(), String> {
        if config.apply_residual_connection_post_layernorm == Some(true) {
            return Err(
                "BLOOM with apply_residual_connection_post_layernorm is not supported".into(),
            );
        }
        Ok(())
    }
}

/// Transformers' BLOOM layout, as `save_pretrained` writes it (`transformer.` prefix).
const BLOOM_NAMES: WeightNames = WeightNames {
    embed: "transformer.word_embeddings",
    embed_norm: "transformer.word_embeddings_layernorm",
    final_norm: "transformer.ln_f",
    lm_head: "lm_head",
    layer: "transformer.h.{i}",
    input_norm: "input_layernorm",
    post_norm: "post_attention_layernorm",
    // The fused projection; k and v are inside it.
    q: "self_attention.query_key_value",
    k: "self_attention.query_key_value",
    v: "self_attention.query_key_value",
    o: "self_attention.dense",
    q_norm: "",
    k_norm: "",
    gate: "",
    up: "mlp.dense_h_to_4h",
    down: "mlp.dense_4h_to_h",
    router: "",
    expert_gate: "",
    expert_up: "",
    expert_down: "",
};

/// The same without the prefix, as bigscience's own checkpoints (bloom-560m, ...) name them.
const BLOOM_HUB_NAMES: WeightNames = WeightNames {
    embed: "word_embeddings",
    embed_norm: "word_embeddings_layernorm",
    final_norm: "ln_f",
    layer: "h.{i}",
    ..BLOOM_NAMES
};

/// ALiBi slopes per head, as transformers' `build_alibi_tensor` makes them: a geometric
/// sequence from the closest power of two of the head count, and for the heads past it the
/// odd powers of the next one's base.
pub fn alibi_slopes(heads: usize) -> Vec<f32> {
    let closest = 1usize << (usize::BITS - 1 - heads.leading_zeros());
    let base = 2f64.powf(-(2f64.powf(-((closest as f64).log2() - 3.0))));
    let mut slopes: Vec<f64> = (1..=closest).map(|p| base.powi(p as i32)).collect();
    if closest != heads {
        let extra_base = 2f64.powf(-(2f64.powf(-((2.0 * closest as f64).log2() - 3.0))));
        let remaining = closest.min(heads - closest);
        slopes.extend((0..remaining).map(|i| extra_base.powi(1 + 2 * i as i32)));
    }
    slopes.into_iter().map(|s| s as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alibi_slopes_as_bloom_makes_them() {
        // 8 heads: 2^-1 .. 2^-8.
        let s = alibi_slopes(8);
        assert_eq!(s, (1..=8).map(|p| 0.5f32.powi(p)).collect::<Vec<_>>());
        // 12 heads: 8 of base 2^-1, then 4 odd powers of base 2^-0.5.
        let s = alibi_slopes(12);
        assert_eq!(s.len(), 12);
        assert!((s[8] - 0.5f32.sqrt()).abs() < 1e-7);
        assert!((s[9] - 0.5f32.sqrt().powi(3)).abs() < 1e-7);
    }
}
