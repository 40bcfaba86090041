//! Mixtral (`MixtralForCausalLM`): Mistral's decoder with each MLP replaced by a sparse
//! mixture of experts: a router picks `num_experts_per_tok` of `num_local_experts` experts
//! per token (softmax, top-k, weights renormalised to sum to one, as transformers does), and
//! only those experts run for it.

use super::Architecture;
use crate::model::config::{Experts, Family, RawConfig};

pub struct Mixtral;

impl Architecture for Mixtral {
    fn family(&self) -> Family {
        Family::Mixtral
    }

    fn config_names(&self) -> &'static [&'static str] {
        &["mixtral", "MixtralForCausalLM"]
    }

    fn experts(&self, config: &RawConfig) -> Result<Option<Experts>, String> {
        let (Some(count), Some(top_k)) = (config.num_local_experts, config.num_experts_per_tok)
        else {
            return Err("a Mixtral config needs num_local_experts and num_experts_per_tok".into());
        };
        if top_k == 0 || top_k > count {
            return Err(format!(
                "num_experts_per_tok ({top_k}) must be between 1 and num_local_experts ({count})"
            ));
        }
        Ok(Some(Experts { count, top_k }))
    }
}
