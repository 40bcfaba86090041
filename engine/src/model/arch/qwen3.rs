//! Qwen3 (`Qwen3ForCausalLM`): per-head RMSNorm on q and k before RoPE, biases only with
//! `attention_bias`, Qwen's sliding-window rule.

use super::qwen2::qwen_window;
use super::Architecture;
use crate::model::config::{Family, RawConfig};

pub struct Qwen3;

impl Architecture for Qwen3 {
    fn family(&self) -> Family {
        Family::Qwen3
    }

    fn config_names(&self) -> &'static [&'static str] {
        &["qwen3", "Qwen3ForCausalLM"]
    }

    fn qk_norm(&self) -> bool {
        true
    }

    fn window(&self, config: &RawConfig, layer: usize) -> Option<usize> {
        qwen_window(config, layer)
    }
}
