//! Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): biases on q, k and v (not o); a sliding window that
//! is off unless `use_sliding_window`, and then only from layer `max_window_layers` on, as
//! in transformers.

use super::Architecture;
use crate::model::config::{Family, RawConfig};

pub struct Qwen2;

impl Architecture for Qwen2 {
    fn family(&self) -> Family {
        Family::Qwen2
    }

    fn config_names(&self) -> &'static [&'static str] {
        &["qwen2", "Qwen2ForCausalLM"]
    }

    fn attention_biases(&self, _: &RawConfig) -> (bool, bool) {
        (true, false)
    }

    fn window(&self, config: &RawConfig, layer: usize) -> Option<usize> {
        qwen_window(config, layer)
    }
}

/// Qwen's window rule (Qwen2 and Qwen3 share it).
pub fn qwen_window(config: &RawConfig, layer: usize) -> Option<usize> {
    config.sliding_window.filter(|_| {
        config.use_sliding_window == Some(true) && layer >= config.max_window_layers.unwrap_or(28)
    })
}
