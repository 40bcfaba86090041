//! The demo models' shapes and config.json contents, per architecture and size.

use rosetta_config::{Arch, Size};
use serde_json::json;

use super::deepseek::DeepseekShape;
use super::tokenizer::TrainedTokenizer;
use super::{DemoSpec, StoredDtype};

/// The decoder shape of a demo model.
#[derive(Debug, Clone)]
pub struct DemoShape {
    pub arch: Arch,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_positions: usize,
    pub tied: bool,
    /// Mixtral: (experts, experts per token).
    pub experts: Option<(usize, usize)>,
    /// DeepSeek-V3's own shape (its attention and experts are not the Llama decoder's).
    pub deepseek: Option<DeepseekShape>,
}

impl DemoShape {
    pub fn new(arch: Arch, size: Size) -> Self {
        if arch == Arch::XlmRoberta {
            return Self::xlm_roberta(size);
        }
        if arch == Arch::Deepseek {
            let d = DeepseekShape::new(size);
            return Self {
                arch,
                hidden: d.hidden,
                intermediate: d.intermediate,
                layers: d.layers,
                heads: d.heads,
                kv_heads: d.heads,
                head_dim: d.qk_nope + d.qk_rope,
                vocab_size: d.vocab_size,
                max_positions: d.max_positions,
                tied: false,
                experts: Some((d.routed_experts, d.experts_per_token)),
                deepseek: Some(d),
            };
        }
        match size {
            // Small enough to load and answer in milliseconds; still GQA (but BLOOM, which has
            // none), multi-layer.
            Size::Tiny => Self {
                arch,
                hidden: 64,
                intermediate: if arch == Arch::Bloom { 256 } else { 128 },
                // Cohere2 needs four layers for one global layer among three sliding ones.
                layers: if arch == Arch::Cohere2 { 4 } else { 2 },
                heads: 4,
                kv_heads: if arch == Arch::Bloom { 4 } else { 2 },
                // Qwen3 declares head_dim explicitly; make it differ from hidden / heads.
                head_dim: if arch == Arch::Qwen3 { 32 } else { 16 },
                vocab_size: 2048,
                max_positions: 2048,
                // Cover both tied and separate output heads across architectures.
                tied: matches!(
                    arch,
                    Arch::Llama | Arch::Qwen3 | Arch::Cohere | Arch::Cohere2 | Arch::Bloom
                ),
                experts: (arch == Arch::Mixtral).then_some((4, 2)),
                deepseek: None,
            },
            // bloom-560m's shape (with the demo tokenizer's vocabulary).
            Size::Small if arch == Arch::Bloom => Self {
                arch,
                hidden: 1024,
                intermediate: 4096,
                layers: 24,
                heads: 16,
                kv_heads: 16,
                head_dim: 64,
                vocab_size: 49152,
                max_positions: 2048,
                tied: true,
                experts: None,
                deepseek: None,
            },
            // A small Mixtral: eight experts, two per token, about 390M parameters.
            Size::Small if arch == Arch::Mixtral => Self {
                arch,
                hidden: 768,
                intermediate: 1536,
                layers: 12,
                heads: 12,
                kv_heads: 4,
                head_dim: 64,
                vocab_size: 49152,
                max_positions: 8192,
                tied: false,
                experts: Some((8, 2)),
                deepseek: None,
            },
            // SmolLM2-135M's exact shape.
            Size::Small => Self {
                arch,
                hidden: 576,
                intermediate: 1536,
                layers: 30,
                heads: 9,
                kv_heads: 3,
                head_dim: 64,
                vocab_size: 49152,
                max_positions: 8192,
                tied: true,
                experts: None,
                deepseek: None,
            },
        }
    }

    /// The encoder's shapes: `small` is multilingual-e5-small's (with the demo vocabulary);
    /// both have XLM-RoBERTa's 514 positions (512 tokens after the padding offset).
    fn xlm_roberta(size: Size) -> Self {
        let (hidden, intermediate, layers, heads) = match size {
            Size::Tiny => (64, 128, 2, 4),
            Size::Small => (384, 1536, 12, 12),
        };
        Self {
            arch: Arch::XlmRoberta,
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads: heads,
            head_dim: hidden / heads,
            vocab_size: if size == Size::Tiny { 2048 } else { 49152 },
            max_positions: 514,
            tied: false,
            experts: None,
            deepseek: None,
        }
    }

    /// Marks the folder as generated, and from which spec (`generate` replaces only such a
    /// folder).
    fn demo_marker(&self, spec: &DemoSpec) -> serde_json::Value {
        json!({ "arch": self.arch.name(), "size": spec.size.name(), "seed": spec.seed })
    }

    pub fn is_tiny(&self) -> bool {
        self.hidden == 64
    }

    pub fn config_json(&self, spec: &DemoSpec, tok: &TrainedTokenizer) -> serde_json::Value {
        if self.arch == Arch::Bloom {
            return self.bloom_config(spec, tok);
        }
        if self.arch == Arch::XlmRoberta {
            return self.xlm_roberta_config(spec);
        }
        if let Some(d) = &self.deepseek {
            let mut c = d.config_json();
            if let Some(c) = c.as_object_mut() {
                c.extend(
                    json!({
                        "bos_token_id": tok.bos_id,
                        "eos_token_id": tok.eos_id,
                        "torch_dtype": torch_dtype(spec),
                        "rosetta_demo": self.demo_marker(spec),
                    })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                );
            }
            return c;
        }
        let (model_type, arch_class) = match self.arch {
            Arch::Llama => ("llama", "LlamaForCausalLM"),
            Arch::Mistral => ("mistral", "MistralForCausalLM"),
            Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
            Arch::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
            Arch::Mixtral => ("mixtral", "MixtralForCausalLM"),
            Arch::Cohere => ("cohere", "CohereForCausalLM"),
            Arch::Cohere2 => ("cohere2", "Cohere2ForCausalLM"),
            Arch::Bloom => ("bloom", "BloomForCausalLM"),
            Arch::XlmRoberta => ("xlm-roberta", "XLMRobertaModel"),
            Arch::Deepseek => ("deepseek_v3", "DeepseekV3ForCausalLM"),
        };
        let mut c = json!({
            "architectures": [arch_class],
            "model_type": model_type,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_positions,
            "rms_norm_eps": 1e-5,
            "rope_theta": if self.is_tiny() { 10000.0 } else { 100000.0 },
            "hidden_act": "silu",
            "tie_word_embeddings": self.tied,
            "bos_token_id": tok.bos_id,
            "eos_token_id": tok.eos_id,
            "torch_dtype": torch_dtype(spec),
            "rosetta_demo": self.demo_marker(spec),
        });
        let extra = match self.arch {
            // The tiny Llama exercises Llama 3.1's rope scaling.
            Arch::Llama if self.is_tiny() => json!({
                "attention_bias": false,
                "mlp_bias": false,
                "rope_scaling": { "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64 },
            }),
            Arch::Llama => {
                json!({ "attention_bias": false, "mlp_bias": false, "rope_scaling": null })
            }
            // The tiny Mistral exercises Mistral v0.1's sliding window.
            Arch::Mistral => {
                json!({ "sliding_window": if self.is_tiny() { json!(16) } else { json!(null) } })
            }
            Arch::Qwen2 => {
                json!({ "use_sliding_window": false, "sliding_window": 4096, "max_window_layers": 21 })
            }
            Arch::Qwen3 => {
                json!({ "attention_bias": false, "use_sliding_window": false, "sliding_window": null })
            }
            // Aya's and Command R's keys: LayerNorm epsilon, logit scale, no q/k norm.
            Arch::Cohere => json!({ "layer_norm_eps": 1e-5, "logit_scale": 0.0625,
                                    "use_qk_norm": false, "attention_bias": false }),
            // Command R7B's keys. The tiny model's window is shorter than the tests' prompts and
            // says which layers slide the old way (`sliding_window_pattern`, as R7B's config on
            // the Hub); the small one lists `layer_types`, as transformers writes it today.
            Arch::Cohere2 if self.is_tiny() => json!({ "layer_norm_eps": 1e-5,
                "logit_scale": 0.0625, "attention_bias": false, "sliding_window": 12,
                "sliding_window_pattern": 4 }),
            Arch::Cohere2 => json!({ "layer_norm_eps": 1e-5, "logit_scale": 0.0625,
                "attention_bias": false, "sliding_window": 4096,
                "layer_types": (0..self.layers)
                    .map(|i| if (i + 1) % 4 == 0 { "full_attention" } else { "sliding_attention" })
                    .collect::<Vec<_>>() }),
            Arch::Bloom | Arch::XlmRoberta | Arch::Deepseek => json!({}),
            Arch::Mixtral => {
                let (experts, per_token) = self.experts.unwrap_or((8, 2));
                json!({ "num_local_experts": experts, "num_experts_per_tok": per_token,
                        "sliding_window": null, "router_aux_loss_coef": 0.02,
                        "output_router_logits": false, "router_jitter_noise": 0.0 })
            }
        };
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        c
    }

    /// BLOOM's config.json keys (bloom-560m's): `n_layer`, `n_head`, `layer_norm_epsilon`, no
    /// rotary or MLP-width keys.
    fn bloom_config(&self, spec: &DemoSpec, tok: &TrainedTokenizer) -> serde_json::Value {
        json!({
            "architectures": ["BloomForCausalLM"],
            "model_type": "bloom",
            "hidden_size": self.hidden,
            "n_layer": self.layers,
            "n_head": self.heads,
            "vocab_size": self.vocab_size,
            "layer_norm_epsilon": 1e-5,
            "apply_residual_connection_post_layernorm": false,
            "attention_dropout": 0.0,
            "hidden_dropout": 0.0,
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "slow_but_exact": false,
            "tie_word_embeddings": true,
            "bos_token_id": tok.bos_id,
            "eos_token_id": tok.eos_id,
            "torch_dtype": torch_dtype(spec),
            "rosetta_demo": self.demo_marker(spec),
        })
    }

    /// multilingual-e5's config.json keys (an `XLMRobertaModel`). The demo declares itself
    /// Matryoshka-trained so that `dimensions` can be exercised; real checkpoints say so
    /// only where they are.
    fn xlm_roberta_config(&self, spec: &DemoSpec) -> serde_json::Value {
        json!({
            "architectures": ["XLMRobertaModel"],
            "model_type": "xlm-roberta",
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "intermediate_size": self.intermediate,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": self.max_positions,
            "type_vocab_size": 1,
            "initializer_range": 0.02,
            "layer_norm_eps": 1e-5,
            "position_embedding_type": "absolute",
            "vocab_size": self.vocab_size,
            "bos_token_id": 0,
            "pad_token_id": 1,
            "eos_token_id": 2,
            "is_matryoshka": true,
            "torch_dtype": torch_dtype(spec),
            "rosetta_demo": self.demo_marker(spec),
        })
    }

    /// An `XLMRobertaModel`'s tensors, as `save_pretrained` names them (pooler included, which
    /// sentence-transformers' pooling does not use).
    fn xlm_roberta_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i) = (self.hidden, self.intermediate);
        let mut t = vec![
            (
                "embeddings.word_embeddings.weight".to_string(),
                vec![self.vocab_size, h],
            ),
            (
                "embeddings.position_embeddings.weight".to_string(),
                vec![self.max_positions, h],
            ),
            (
                "embeddings.token_type_embeddings.weight".to_string(),
                vec![1, h],
            ),
            ("embeddings.LayerNorm.weight".to_string(), vec![h]),
            ("embeddings.LayerNorm.bias".to_string(), vec![h]),
        ];
        for l in 0..self.layers {
            let p = format!("encoder.layer.{l}");
            for (name, shape) in [
                ("attention.self.query.weight", vec![h, h]),
                ("attention.self.query.bias", vec![h]),
                ("attention.self.key.weight", vec![h, h]),
                ("attention.self.key.bias", vec![h]),
                ("attention.self.value.weight", vec![h, h]),
                ("attention.self.value.bias", vec![h]),
                ("attention.output.dense.weight", vec![h, h]),
                ("attention.output.dense.bias", vec![h]),
                ("attention.output.LayerNorm.weight", vec![h]),
                ("attention.output.LayerNorm.bias", vec![h]),
                ("intermediate.dense.weight", vec![i, h]),
                ("intermediate.dense.bias", vec![i]),
                ("output.dense.weight", vec![h, i]),
                ("output.dense.bias", vec![h]),
                ("output.LayerNorm.weight", vec![h]),
                ("output.LayerNorm.bias", vec![h]),
            ] {
                t.push((format!("{p}.{name}"), shape));
            }
        }
        t.push(("pooler.dense.weight".to_string(), vec![h, h]));
        t.push(("pooler.dense.bias".to_string(), vec![h]));
        t
    }

    /// BLOOM's tensors, as transformers' `save_pretrained` names them.
    fn bloom_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i) = (self.hidden, self.intermediate);
        let mut t = vec![
            (
                "transformer.word_embeddings.weight".to_string(),
                vec![self.vocab_size, h],
            ),
            (
                "transformer.word_embeddings_layernorm.weight".to_string(),
                vec![h],
            ),
            (
                "transformer.word_embeddings_layernorm.bias".to_string(),
                vec![h],
            ),
        ];
        for l in 0..self.layers {
            let p = format!("transformer.h.{l}");
            for (name, shape) in [
                ("input_layernorm.weight", vec![h]),
                ("input_layernorm.bias", vec![h]),
                ("self_attention.query_key_value.weight", vec![3 * h, h]),
                ("self_attention.query_key_value.bias", vec![3 * h]),
                ("self_attention.dense.weight", vec![h, h]),
                ("self_attention.dense.bias", vec![h]),
                ("post_attention_layernorm.weight", vec![h]),
                ("post_attention_layernorm.bias", vec![h]),
                ("mlp.dense_h_to_4h.weight", vec![i, h]),
                ("mlp.dense_h_to_4h.bias", vec![i]),
                ("mlp.dense_4h_to_h.weight", vec![h, i]),
                ("mlp.dense_4h_to_h.bias", vec![h]),
            ] {
                t.push((format!("{p}.{name}"), shape));
            }
        }
        t.push(("transformer.ln_f.weight".to_string(), vec![h]));
        t.push(("transformer.ln_f.bias".to_string(), vec![h]));
        t
    }

    /// Every tensor of the checkpoint as (name, shape), in a fixed order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        if self.arch == Arch::Bloom {
            return self.bloom_tensors();
        }
        if self.arch == Arch::XlmRoberta {
            return self.xlm_roberta_tensors();
        }
        if let Some(d) = &self.deepseek {
            return d.tensors();
        }
        let (h, hd, i) = (self.hidden, self.head_dim, self.intermediate);
        let (qd, kvd) = (self.heads * hd, self.kv_heads * hd);
        let mut t = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, h],
        )];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            t.push((format!("{p}.input_layernorm.weight"), vec![h]));
            t.push((format!("{p}.self_attn.q_proj.weight"), vec![qd, h]));
            t.push((format!("{p}.self_attn.k_proj.weight"), vec![kvd, h]));
            t.push((format!("{p}.self_attn.v_proj.weight"), vec![kvd, h]));
            if self.arch == Arch::Qwen2 {
                t.push((format!("{p}.self_attn.q_proj.bias"), vec![qd]));
                t.push((format!("{p}.self_attn.k_proj.bias"), vec![kvd]));
                t.push((format!("{p}.self_attn.v_proj.bias"), vec![kvd]));
            }
            if self.arch == Arch::Qwen3 {
                t.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
                t.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
            }
            t.push((format!("{p}.self_attn.o_proj.weight"), vec![h, qd]));
            // Cohere's parallel block has one norm per layer.
            if !matches!(self.arch, Arch::Cohere | Arch::Cohere2) {
                t.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            }
            match self.experts {
                Some((experts, _)) => {
                    let moe = format!("{p}.block_sparse_moe");
                    t.push((format!("{moe}.gate.weight"), vec![experts, h]));
                    for e in 0..experts {
                        t.push((format!("{moe}.experts.{e}.w1.weight"), vec![i, h]));
                        t.push((format!("{moe}.experts.{e}.w2.weight"), vec![h, i]));
                        t.push((format!("{moe}.experts.{e}.w3.weight"), vec![i, h]));
                    }
                }
                None => {
                    t.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
                    t.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
                    t.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
                }
            }
        }
        t.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tied {
            t.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        t
    }
}

/// transformers' name for the stored dtype (`torch_dtype`).
fn torch_dtype(spec: &DemoSpec) -> &'static str {
    match spec.dtype {
        StoredDtype::F32 => "float32",
        StoredDtype::Bf16 => "bfloat16",
    }
}
