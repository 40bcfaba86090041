//! DeepSeek-V3's decoder (`DeepseekV3ForCausalLM`), which Rosetta serves through the mistral.rs
//! backend, not natively: multi-head latent attention (queries through a low-rank `q_a`/`q_b`
//! pair, keys and values from one compressed `kv_a` projection plus a shared rotary key), a
//! dense MLP in the first `first_k_dense_replace` layers, then a mixture of routed experts
//! (sigmoid scores, `noaux_tc` group selection with a score-correction bias) beside shared
//! experts. Tensor names and config keys are transformers'.
//!
//! mistral.rs 0.8.1 on a CPU reads routed experts only as two stacked tensors
//! (`mlp.experts.gate_up_proj` `[E, hidden, 2 × moe_intermediate]`, `mlp.experts.down_proj`
//! `[E, moe_intermediate, hidden]`; its per-expert path is for GPUs), and its CPU attention
//! needs `v_head_dim == qk_nope_head_dim + qk_rope_head_dim`. So the folder also holds those
//! stacked copies, made from the same per-expert values (transformers ignores them), and the
//! shapes keep that equality.

use rosetta_config::Size;
use serde_json::{json, Value};

/// A DeepSeek-V3 shape.
#[derive(Debug, Clone)]
pub struct DeepseekShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub moe_intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub q_lora_rank: usize,
    pub kv_lora_rank: usize,
    pub qk_nope: usize,
    pub qk_rope: usize,
    pub v_head: usize,
    pub routed_experts: usize,
    pub shared_experts: usize,
    pub experts_per_token: usize,
    pub groups: usize,
    pub topk_groups: usize,
    pub first_dense: usize,
    pub vocab_size: usize,
    pub max_positions: usize,
}

impl DeepseekShape {
    pub fn new(size: Size) -> Self {
        match size {
            Size::Tiny => Self {
                hidden: 64,
                intermediate: 128,
                moe_intermediate: 48,
                layers: 2,
                heads: 4,
                q_lora_rank: 32,
                kv_lora_rank: 32,
                qk_nope: 8,
                qk_rope: 8,
                v_head: 16,
                routed_experts: 4,
                shared_experts: 1,
                experts_per_token: 2,
                groups: 2,
                topk_groups: 1,
                first_dense: 1,
                vocab_size: 2048,
                max_positions: 2048,
            },
            // DeepSeek-V3's proportions at about 150M parameters.
            Size::Small => Self {
                hidden: 512,
                intermediate: 1408,
                moe_intermediate: 192,
                layers: 8,
                heads: 8,
                q_lora_rank: 192,
                kv_lora_rank: 128,
                qk_nope: 32,
                qk_rope: 32,
                v_head: 64,
                routed_experts: 16,
                shared_experts: 1,
                experts_per_token: 4,
                groups: 4,
                topk_groups: 2,
                first_dense: 1,
                vocab_size: 49152,
                max_positions: 4096,
            },
        }
    }

    /// DeepSeek-V3's config.json keys (its own values where the shape does not decide).
    pub fn config_json(&self) -> Value {
        json!({
            "architectures": ["DeepseekV3ForCausalLM"],
            "model_type": "deepseek_v3",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "moe_intermediate_size": self.moe_intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.heads,
            "q_lora_rank": self.q_lora_rank,
            "kv_lora_rank": self.kv_lora_rank,
            "qk_nope_head_dim": self.qk_nope,
            "qk_rope_head_dim": self.qk_rope,
            "v_head_dim": self.v_head,
            "n_routed_experts": self.routed_experts,
            "n_shared_experts": self.shared_experts,
            "num_experts_per_tok": self.experts_per_token,
            "n_group": self.groups,
            "topk_group": self.topk_groups,
            "topk_method": "noaux_tc",
            "scoring_func": "sigmoid",
            "norm_topk_prob": true,
            "routed_scaling_factor": 2.5,
            "first_k_dense_replace": self.first_dense,
            "moe_layer_freq": 1,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_positions,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "rope_scaling": null,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "hidden_act": "silu",
            "tie_word_embeddings": false,
        })
    }

    /// Every tensor as (name, shape), in a fixed order: transformers' checkpoint, then the
    /// stacked expert copies mistral.rs reads (see [`Self::stacked`]).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden;
        let q_head = self.qk_nope + self.qk_rope;
        let mut t = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, h],
        )];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            let a = format!("{p}.self_attn");
            for (name, shape) in [
                (format!("{p}.input_layernorm.weight"), vec![h]),
                (format!("{a}.q_a_proj.weight"), vec![self.q_lora_rank, h]),
                (format!("{a}.q_a_layernorm.weight"), vec![self.q_lora_rank]),
                (
                    format!("{a}.q_b_proj.weight"),
                    vec![self.heads * q_head, self.q_lora_rank],
                ),
                (
                    format!("{a}.kv_a_proj_with_mqa.weight"),
                    vec![self.kv_lora_rank + self.qk_rope, h],
                ),
                (
                    format!("{a}.kv_a_layernorm.weight"),
                    vec![self.kv_lora_rank],
                ),
                (
                    format!("{a}.kv_b_proj.weight"),
                    vec![self.heads * (self.qk_nope + self.v_head), self.kv_lora_rank],
                ),
                (
                    format!("{a}.o_proj.weight"),
                    vec![h, self.heads * self.v_head],
                ),
                (format!("{p}.post_attention_layernorm.weight"), vec![h]),
            ] {
                t.push((name, shape));
            }
            let m = format!("{p}.mlp");
            if l < self.first_dense {
                let i = self.intermediate;
                t.push((format!("{m}.gate_proj.weight"), vec![i, h]));
                t.push((format!("{m}.up_proj.weight"), vec![i, h]));
                t.push((format!("{m}.down_proj.weight"), vec![h, i]));
                continue;
            }
            let (e, i) = (self.routed_experts, self.moe_intermediate);
            t.push((format!("{m}.gate.weight"), vec![e, h]));
            t.push((format!("{m}.gate.e_score_correction_bias"), vec![e]));
            for x in 0..e {
                t.push((format!("{m}.experts.{x}.gate_proj.weight"), vec![i, h]));
                t.push((format!("{m}.experts.{x}.up_proj.weight"), vec![i, h]));
                t.push((format!("{m}.experts.{x}.down_proj.weight"), vec![h, i]));
            }
            let shared = i * self.shared_experts;
            t.push((
                format!("{m}.shared_experts.gate_proj.weight"),
                vec![shared, h],
            ));
            t.push((
                format!("{m}.shared_experts.up_proj.weight"),
                vec![shared, h],
            ));
            t.push((
                format!("{m}.shared_experts.down_proj.weight"),
                vec![h, shared],
            ));
        }
        t.push(("model.norm.weight".to_string(), vec![h]));
        t.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        t
    }

    /// The stacked copies of each MoE layer's routed experts, from the per-expert values
    /// (`value(name)` gives a tensor written earlier): `gate_up_proj[e]` is
    /// `[gate_projᵀ | up_projᵀ]` (`[hidden, 2 × moe_intermediate]`), `down_proj[e]` is
    /// `down_projᵀ` (`[moe_intermediate, hidden]`).
    pub fn stacked<'a>(
        &self,
        value: impl Fn(&str) -> Option<&'a [f32]>,
    ) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let (h, i, e) = (self.hidden, self.moe_intermediate, self.routed_experts);
        let mut out = Vec::new();
        for l in self.first_dense..self.layers {
            let m = format!("model.layers.{l}.mlp.experts");
            let mut gate_up = vec![0.0f32; e * h * 2 * i];
            let mut down = vec![0.0f32; e * i * h];
            for x in 0..e {
                let get = |n: &str| value(&format!("{m}.{x}.{n}.weight")).unwrap_or(&[]);
                let (gate, up, dn) = (get("gate_proj"), get("up_proj"), get("down_proj"));
                let gu = &mut gate_up[x * h * 2 * i..(x + 1) * h * 2 * i];
                for c in 0..i {
                    for j in 0..h {
                        gu[j * 2 * i + c] = gate.get(c * h + j).copied().unwrap_or(0.0);
                        gu[j * 2 * i + i + c] = up.get(c * h + j).copied().unwrap_or(0.0);
                    }
                }
                let d = &mut down[x * i * h..(x + 1) * i * h];
                for c in 0..i {
                    for j in 0..h {
                        d[c * h + j] = dn.get(j * i + c).copied().unwrap_or(0.0);
                    }
                }
            }
            out.push((format!("{m}.gate_up_proj"), vec![e, h, 2 * i], gate_up));
            out.push((format!("{m}.down_proj"), vec![e, i, h], down));
        }
        out
    }
}
