//! Cohere's decoders. The first (`CohereForCausalLM`: Command R, Aya 23, Aya Expanse): one
//! LayerNorm (weight, no bias) feeds attention and the MLP in parallel, whose outputs are added
//! to the residual together; rotary pairs are interleaved; logits are scaled by
//! `logit_scale`; embeddings are tied.
//!
//! The second (`Cohere2ForCausalLM`: Command R7B, Command A) is the same block with layers of
//! two kinds. Sliding layers attend to the last `sliding_window` positions and rotate q and k;
//! full layers attend to everything and have no positional encoding at all (transformers
//! applies RoPE only where the layer has a window). Which layer is which comes from
//! `layer_types`, or from the older `sliding_window_pattern` (every n-th layer full, 4 by
//! default).

use super::Architecture;
use crate::model::config::{Family, NormKind, Positions, RawConfig};

/// Cohere's first decoder (`second: false`) or its second.
pub struct Cohere {
    pub second: bool,
}

impl Architecture for Cohere {
    fn family(&self) -> Family {
        if self.second {
            Family::Cohere2
        } else {
            Family::Cohere
        }
    }

    fn config_names(&self) -> &'static [&'static str] {
        if self.second {
            &["cohere2", "Cohere2ForCausalLM"]
        } else {
            &["cohere", "CohereForCausalLM"]
        }
    }

    fn window(&self, config: &RawConfig, layer: usize) -> Option<usize> {
        if !self.second {
            return config.sliding_window;
        }
        let pattern = config.sliding_window_pattern.unwrap_or(4);
        let sliding = pattern == 0 || !(layer + 1).is_multiple_of(pattern);
        config.sliding_window.filter(|_| sliding)
    }

    fn rotary_only_where_windowed(&self) -> bool {
        self.second
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
        if !self.second && config.use_qk_norm == Some(true) {
            return Err("Cohere models with use_qk_norm (per-head LayerNorm on q and k) are not supported yet".into());
        }
        Ok(())
    }
}
