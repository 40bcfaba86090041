//! Mistral (`MistralForCausalLM`): the Llama decoder with `sliding_window` on every layer
//! (v0.1; later versions set it null).

use super::Architecture;
use crate::model::config::Family;

pub struct Mistral;

impl Architecture for Mistral {
    fn family(&self) -> Family {
        Family::Mistral
    }

    fn config_names(&self) -> &'static [&'static str] {
        &["mistral", "MistralForCausalLM"]
    }
}
