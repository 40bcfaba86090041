//! Llama 2 and 3 (`LlamaForCausalLM`): biases only with `attention_bias`, a sliding window
//! only if the config sets one.

use super::Architecture;
use crate::model::config::Family;

pub struct Llama;

impl Architecture for Llama {
    fn family(&self) -> Family {
        Family::Llama
    }

    fn config_names(&self) -> &'static [&'static str] {
        &["llama", "LlamaForCausalLM"]
    }
}
