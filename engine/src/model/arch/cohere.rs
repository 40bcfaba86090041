//! Cohere (`CohereForCausalLM`: Command R, Aya 23, Aya Expanse): one LayerNorm (weight, no
//! bias) feeds attention and the MLP in parallel, whose outputs are added to the residual
//! together; rotary pairs are interleaved; logits are scaled by `logit_scale`; embeddings
//! are tied.

use super::Architecture;
use crate::model::config::{Family, NormKind, Positions, RawConfig};

pub struct Cohere;

impl Architecture for Cohere {
    fn family(&self) -> Family {
        Family::Cohere
    }

    fn config_names(&self) -> &'static [&'static str] {
        &["cohere", "CohereForCausalLM"]
    }

    fn norm(&self) -> NormKind {
        NormKind::Layer
    }

    fn norm_eps(&self, config: &RawConfig) -> f64 {
        config.layer_norm_eps.unwrap_or(1e-5)
    }

    fn parallel_block(&self) -> bool {
        true
    }

    fn positions(&self) -> Positions {
        Positions::Rope { interleaved: true }
    }

    fn logit_scale(&self, config: &RawConfig) -> Option<f64> {
        Some(config.logit_scale.unwrap_or(0.0625))
    }

    fn tied_by_default(&self) -> bool {
        true
    }

    fn check(&self, config: &RawConfig) -> Result<(), String> {
        if config.use_qk_norm == Some(true) {
            return Err("Cohere models with use_qk_norm (per-head LayerNorm on q and k) are not supported yet".into());
        }
        Ok(())
    }
}
