//! Cohere2 (`Cohere2ForCausalLM`: Command R7B, Command A): Cohere's parallel block, LayerNorm,
//! interleaved rotary, `logit_scale` and tied embeddings, with layers of two kinds. Sliding
//! layers attend to the last `sliding_window` positions and rotate q and k; full layers attend
//! to everything and have no positional encoding at all (transformers applies RoPE only where
//! the layer has a window). Which layer is which comes from `layer_types`, or from the older
//! `sliding_window_pattern` (every n-th layer full, 4 by default).

use super::Architecture;
use crate::model::config::{Family, NormKind, Positions, RawConfig};

pub struct Cohere2;

impl Architecture for Cohere2 {
    fn family(&self) -> Family {
        Family::Cohere2
    }

    fn config_names(&self) -> &'static [&'static str] {
        &["cohere2", "Cohere2ForCausalLM"]
    }

    fn window(&self, config: &RawConfig, layer: usize) -> Option<usize> {
        let pattern = config.sliding_window_pattern.unwrap_or(4);
        let sliding = pattern == 0 || !(layer + 1).is_multiple_of(pattern);
        config.sliding_window.filter(|_| sliding)
    }

    fn rotary_only_where_windowed(&self) -> bool {
        true
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
}
