//! An independent reference forward pass for the decoders the engine serves (the Llama family:
//! Llama 2/3, Mistral, Mixtral, Qwen2, Qwen3, Cohere; and BLOOM), used by the integration tests to
//! check the engine's logits. Mixtral is Mistral with each layer's MLP replaced by a sparse mixture-of-experts
//! block (`MixtralSparseMoeBlock` in transformers' `modeling_mixtral.py`).
//!
//! Cohere (`CohereForCausalLM` in transformers' `modeling_cohere.py`: Command R, Aya 23, Aya
//! Expanse) differs from Llama as follows (each place is marked "Cohere" below):
//! - its norms are `CohereLayerNorm`, a LayerNorm without bias (mean subtracted, divided by the
//!   standard deviation, times the weight), not RMSNorm; eps is `layer_norm_eps`;
//! - each decoder layer is parallel: attention and MLP both read the same normed input and are
//!   both added to the residual (`h + attn(norm(h)) + mlp(norm(h))`); there is no
//!   post_attention_layernorm;
//! - RoPE is interleaved: element 2i pairs with element 2i+1 (rather than i with i + head_dim/2);
//! - the logits are multiplied by `logit_scale`; and, optionally (`use_qk_norm`), each query and
//!   key head goes through its own LayerNorm (a separate weight row per head) before RoPE.
//!
//! Cohere2 (`Cohere2ForCausalLM` in transformers' `modular_cohere2.py`: Command R7B) is Cohere
//! (without `use_qk_norm`) whose layers are of two kinds (each place is marked "Cohere2"):
//! - `layer_types[i]` is "sliding_attention" or "full_attention"; a config without it gives the
//!   old `sliding_window_pattern` p (default 4): layer i slides unless (i + 1) % p == 0;
//! - a sliding layer attends to the last `sliding_window` positions (default 4096; null means no
//!   layer slides) and is the only kind that applies RoPE (`if self.sliding_window is not
//!   None: apply_rotary_pos_emb`): full layers have no positional encoding at all;
//! - `head_dim` is always hidden_size / num_attention_heads (`__post_init__` overwrites it).
//!
//! BLOOM (`BloomForCausalLM` in transformers' `modeling_bloom.py`) is different enough to have its
//! own config, weights and forward pass (`BloomModel` below; the Llama family is
//! `LlamaFamilyModel`). Its differences from Llama:
//! - no RoPE: ALiBi instead, a per-head bias slope_h * key_position added to the attention scores
//!   (`build_alibi_tensor`); multi-head attention only (no GQA), head_dim = hidden / n_head;
//! - q, k and v come from one fused `query_key_value` projection whose output is laid out
//!   [n_head, 3, head_dim] (per head: its q, then its k, then its v);
//! - every norm is a standard LayerNorm with weight and bias, eps `layer_norm_epsilon`, and the
//!   embeddings go through one (`word_embeddings_layernorm`) before the first layer;
//! - every linear layer except the lm_head has a bias; the MLP is
//!   dense_4h_to_h(gelu_tanh(dense_h_to_4h(x))), 4 * hidden wide, with BLOOM's own tanh GELU;
//! - with `apply_residual_connection_post_layernorm` the residual added back is the normed input
//!   rather than the raw hidden state;
//! - the lm_head is tied to the word embeddings by default.
//!
//! It is deliberately naive: every weight is converted to `f32` on load and held in a plain
//! row-major `Vec<f32>`, every operation is a visible loop, and nothing is shared with the engine
//! (no candle, no engine code). It follows Hugging Face transformers' modelling code, so a
//! disagreement with the engine points at the engine (or at this file, which is short enough to
//! read against the Python).
//!
//! Precision: values are stored in `f32`, as transformers does with an `f32` model. Dot products
//! and the reductions in RMSNorm, LayerNorm and softmax accumulate in `f64`, so this file is, if
//! anything, closer to the exact result than an `f32` implementation; RoPE angles and BLOOM's GELU
//! are also computed in `f64`.
//! The differences this causes are far below any sensible test tolerance.
//!
//! Usage from a test: `mod reference;` then
//! `reference::ReferenceModel::load(dir).logits(&tokens)`.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
pub mod encoder;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// How RoPE frequencies are adjusted for long contexts (`rope_scaling` in config.json).
#[derive(Debug, Clone)]
enum RopeScaling {
    None,
    /// Position interpolation: positions divided by `factor` (same as `inv_freq / factor`).
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling (`_compute_llama3_parameters` in transformers).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Which normalisation the model's norms use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NormKind {
    /// Llama-style RMSNorm: x / sqrt(mean(x^2) + eps) * w (eps = `rms_norm_eps`).
    Rms,
    /// Cohere's `CohereLayerNorm`: (x - mean) / sqrt(var + eps) * w, no bias
    /// (eps = `layer_norm_eps`).
    LayerNorm,
}

/// The parts of config.json this reference needs, with transformers' defaults filled in.
#[derive(Debug, Clone)]
struct Config {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
    /// RMSNorm for every model except Cohere, whose norms are LayerNorms.
    norm_kind: NormKind,
    /// `rms_norm_eps`, or for Cohere `layer_norm_eps`.
    norm_eps: f64,
    rope_theta: f64,
    vocab_size: usize,
    tie_word_embeddings: bool,
    /// Whether the config says q/k/v (and, for Llama, o) projections carry a bias. Used only to
    /// reject checkpoints that lack a bias the config demands; presence is decided by the tensors.
    config_attention_bias: bool,
    rope_scaling: RopeScaling,
    /// Per layer: the sliding attention window, if that layer uses one.
    sliding_window_per_layer: Vec<Option<usize>>,
    /// Mixtral only: the sparse mixture-of-experts shape that replaces every layer's MLP.
    moe: Option<MoeConfig>,
    /// Cohere only: `logit_scale`, the factor the lm_head output is multiplied by.
    logit_scale: Option<f32>,
    /// Cohere only: `use_qk_norm`, per-head LayerNorms on queries and keys before RoPE.
    use_qk_norm: bool,
}

impl Config {
    /// Cohere: parallel attention + MLP per layer, interleaved RoPE, LayerNorm, logit_scale.
    fn is_cohere(&self) -> bool {
        self.model_type == "cohere" || self.model_type == "cohere2"
    }

    /// Whether layer `layer` rotates q and k: every layer but Cohere2's full-attention ones.
    fn applies_rope(&self, layer: usize) -> bool {
        self.model_type != "cohere2" || self.sliding_window_per_layer[layer].is_some()
    }
}

/// Mixtral's `num_local_experts` and `num_experts_per_tok`.
#[derive(Debug, Clone)]
struct MoeConfig {
    /// Experts per layer (`num_local_experts`).
    num_experts: usize,
    /// Experts each token is routed to (`num_experts_per_tok`, the top-k).
    top_k: usize,
}

/// Reads a key, treating JSON `null` the same as an absent key (transformers configs use both).
fn get<'a>(json: &'a Value, key: &str) -> Option<&'a Value> {
    json.get(key).filter(|v| !v.is_null())
}

fn get_usize(json: &Value, key: &str) -> Option<usize> {
    get(json, key).map(|v| {
        v.as_u64().unwrap_or_else(|| {
            panic!("config.json: `{key}` should be a non-negative integer, got {v}")
        }) as usize
    })
}

fn get_f64(json: &Value, key: &str) -> Option<f64> {
    get(json, key).map(|v| {
        v.as_f64()
            .unwrap_or_else(|| panic!("config.json: `{key}` should be a number, got {v}"))
    })
}

fn get_bool(json: &Value, key: &str) -> Option<bool> {
    get(json, key).map(|v| {
        v.as_bool()
            .unwrap_or_else(|| panic!("config.json: `{key}` should be a boolean, got {v}"))
    })
}

fn require_usize(json: &Value, key: &str) -> usize {
    get_usize(json, key).unwrap_or_else(|| panic!("config.json: missing required key `{key}`"))
}

fn require_f64(json: &Value, key: &str) -> f64 {
    get_f64(json, key).unwrap_or_else(|| panic!("config.json: missing required key `{key}`"))
}

impl Config {
    fn parse(json: &Value) -> Config {
        let model_type = model_type_of(json).to_string();
        // BLOOM never gets here: `ReferenceModel::load` sends it to `BloomConfig::parse`.
        if !matches!(
            model_type.as_str(),
            "llama" | "mistral" | "mixtral" | "qwen2" | "qwen3" | "cohere" | "cohere2"
        ) {
            panic!("{}", unsupported_model_type(&model_type));
        }
        let is_mixtral = model_type == "mixtral";
        let is_cohere = model_type == "cohere" || model_type == "cohere2";
        let is_cohere2 = model_type == "cohere2";

        let hidden_size = require_usize(json, "hidden_size");
        let num_attention_heads = require_usize(json, "num_attention_heads");
        // MixtralConfig defaults `num_key_value_heads` to 8 (the other configs here fall back to
        // multi-head attention).
        let num_key_value_heads = get_usize(json, "num_key_value_heads").unwrap_or(if is_mixtral {
            8
        } else {
            num_attention_heads
        });
        let num_hidden_layers = require_usize(json, "num_hidden_layers");
        // Qwen3 (and some Mistral/Llama checkpoints) set head_dim explicitly and it need not equal
        // hidden_size / num_attention_heads.
        // Cohere2: always hidden_size / num_attention_heads, whatever the key says.
        let head_dim = match get_usize(json, "head_dim") {
            Some(d) if !is_cohere2 => d,
            _ => hidden_size / num_attention_heads,
        };
        assert!(
            num_key_value_heads > 0 && num_attention_heads.is_multiple_of(num_key_value_heads),
            "config.json: num_attention_heads ({num_attention_heads}) must be a multiple of \
             num_key_value_heads ({num_key_value_heads})"
        );
        assert!(
            head_dim.is_multiple_of(2),
            "config.json: head_dim ({head_dim}) must be even for RoPE"
        );

        // Newer transformers releases nest theta and scaling under `rope_parameters`; accept it as a
        // fallback so such configs are not silently read with the default theta.
        let rope_parameters = get(json, "rope_parameters");
        // MixtralConfig's default theta is 1e6; the others (Cohere included) default to 10000.
        let default_theta = if is_mixtral { 1e6 } else { 10000.0 };
        let rope_theta = get_f64(json, "rope_theta")
            .or_else(|| rope_parameters.and_then(|p| get_f64(p, "rope_theta")))
            .unwrap_or(default_theta);
        let rope_scaling = parse_rope_scaling(get(json, "rope_scaling").or(rope_parameters));

        let config_attention_bias = match model_type.as_str() {
            // Qwen2's attention always has q/k/v bias (and never an o bias).
            "qwen2" => true,
            // Mistral's and Mixtral's attention projections are always bias-free.
            "mistral" | "mixtral" => false,
            _ => get_bool(json, "attention_bias").unwrap_or(false),
        };

        let sliding_window_per_layer = sliding_windows(json, &model_type, num_hidden_layers);

        let moe = is_mixtral.then(|| {
            // The experts are SwiGLU MLPs: w2(act(w1 x) * w3 x) with act = `hidden_act`.
            let act = get(json, "hidden_act")
                .map(|v| {
                    v.as_str().unwrap_or_else(|| {
                        panic!("config.json: `hidden_act` should be a string, got {v}")
                    })
                })
                .unwrap_or("silu");
            assert!(
                act == "silu",
                "reference model: unsupported hidden_act {act:?} for mixtral (supported: silu)"
            );
            let num_experts = get_usize(json, "num_local_experts").unwrap_or(8);
            let top_k = get_usize(json, "num_experts_per_tok").unwrap_or(2);
            assert!(
                num_experts > 0 && (1..=num_experts).contains(&top_k),
                "config.json: num_experts_per_tok ({top_k}) must be between 1 and \
                 num_local_experts ({num_experts})"
            );
            MoeConfig { num_experts, top_k }
        });

        // Cohere: LayerNorm with `layer_norm_eps` (default 1e-5) instead of RMSNorm with
        // `rms_norm_eps`; `logit_scale` (default 0.0625); optional q/k LayerNorms; its MLP is
        // down(act(gate x) * up x) with act = `hidden_act` (default silu), of which only silu is
        // implemented here.
        let (norm_kind, norm_eps) = if is_cohere {
            (
                NormKind::LayerNorm,
                get_f64(json, "layer_norm_eps").unwrap_or(1e-5),
            )
        } else {
            (NormKind::Rms, require_f64(json, "rms_norm_eps"))
        };
        let logit_scale = is_cohere.then(|| get_f64(json, "logit_scale").unwrap_or(0.0625) as f32);
        // Cohere2Config has no `use_qk_norm`.
        let use_qk_norm =
            is_cohere && !is_cohere2 && get_bool(json, "use_qk_norm").unwrap_or(false);
        if is_cohere {
            let act = get(json, "hidden_act")
                .map(|v| {
                    v.as_str().unwrap_or_else(|| {
                        panic!("config.json: `hidden_act` should be a string, got {v}")
                    })
                })
                .unwrap_or("silu");
            assert!(
                act == "silu",
                "reference model: unsupported hidden_act {act:?} for cohere (supported: silu)"
            );
        }

        Config {
            model_type,
            hidden_size,
            intermediate_size: require_usize(json, "intermediate_size"),
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            norm_kind,
            norm_eps,
            rope_theta,
            vocab_size: require_usize(json, "vocab_size"),
            // CohereConfig ties the embeddings by default; the others do not.
            tie_word_embeddings: get_bool(json, "tie_word_embeddings").unwrap_or(is_cohere),
            config_attention_bias,
            rope_scaling,
            sliding_window_per_layer,
            moe,
            logit_scale,
            use_qk_norm,
        }
    }
}

/// The panic message for a `model_type` this reference does not implement.
fn unsupported_model_type(model_type: &str) -> String {
    format!(
        "reference model: unsupported model_type {model_type:?} \
         (supported: llama, mistral, mixtral, qwen2, qwen3, cohere, bloom)"
    )
}

/// Reads `model_type` from config.json.
fn model_type_of(json: &Value) -> &str {
    get(json, "model_type")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("config.json: missing string key `model_type`"))
}

fn parse_rope_scaling(scaling: Option<&Value>) -> RopeScaling {
    let Some(scaling) = scaling else {
        return RopeScaling::None;
    };
    // Older configs spell the kind `type`, newer ones `rope_type`.
    let kind = get(scaling, "rope_type")
        .or_else(|| get(scaling, "type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: require_f64(scaling, "factor"),
        },
        "llama3" => RopeScaling::Llama3 {
            factor: require_f64(scaling, "factor"),
            low_freq_factor: require_f64(scaling, "low_freq_factor"),
            high_freq_factor: require_f64(scaling, "high_freq_factor"),
            original_max_position_embeddings: require_f64(
                scaling,
                "original_max_position_embeddings",
            ),
        },
        other => panic!(
            "reference model: unsupported rope_scaling type {other:?} (supported: linear, llama3)"
        ),
    }
}

/// Which layers use a sliding attention window, and how wide it is, following transformers.
fn sliding_windows(json: &Value, model_type: &str, num_layers: usize) -> Vec<Option<usize>> {
    match model_type {
        // Mistral and Mixtral apply `sliding_window` (when non-null) to every layer.
        "mistral" | "mixtral" => vec![get_usize(json, "sliding_window"); num_layers],
        // Qwen2/Qwen3: the window exists only when `use_sliding_window` is true, and even then it
        // applies only to the layers marked "sliding_attention" in `layer_types`. When a config has
        // no `layer_types`, transformers derives them: layers with index >= `max_window_layers`
        // (default 28) slide, the ones below attend fully.
        "qwen2" | "qwen3" => {
            let use_window = get_bool(json, "use_sliding_window").unwrap_or(false);
            let window = get_usize(json, "sliding_window").filter(|_| use_window);
            let Some(window) = window else {
                return vec![None; num_layers];
            };
            if let Some(types) = get(json, "layer_types") {
                let types = types
                    .as_array()
                    .unwrap_or_else(|| panic!("config.json: `layer_types` should be an array"));
                assert_eq!(
                    types.len(),
                    num_layers,
                    "config.json: `layer_types` has {} entries for {num_layers} layers",
                    types.len()
                );
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => Some(window),
                        Some("full_attention") => None,
                        _ => panic!("config.json: unknown layer type {t}"),
                    })
                    .collect()
            } else {
                let max_window_layers = get_usize(json, "max_window_layers").unwrap_or(28);
                (0..num_layers)
                    .map(|i| (i >= max_window_layers).then_some(window))
                    .collect()
            }
        }
        // Cohere2: `Cohere2Config.sliding_window` defaults to 4096 when the key is absent; an
        // explicit null means no window. Layer kinds from `layer_types`, else from
        // `sliding_window_pattern`.
        "cohere2" => {
            let window = match json.get("sliding_window") {
                None => Some(4096),
                Some(_) => get_usize(json, "sliding_window"),
            };
            let sliding: Vec<bool> = match get(json, "layer_types") {
                Some(types) => types
                    .as_array()
                    .unwrap_or_else(|| panic!("config.json: `layer_types` should be an array"))
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => true,
                        Some("full_attention") => false,
                        _ => panic!("config.json: unknown layer type {t}"),
                    })
                    .collect(),
                None => {
                    let pattern = get_usize(json, "sliding_window_pattern").unwrap_or(4);
                    (0..num_layers).map(|i| (i + 1) % pattern != 0).collect()
                }
            };
            assert_eq!(
                sliding.len(),
                num_layers,
                "config.json: `layer_types` length"
            );
            sliding.into_iter().map(|s| window.filter(|_| s)).collect()
        }
        // Llama has no sliding window.
        _ => vec![None; num_layers],
    }
}

// ---------------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------------

/// All tensors of the checkpoint, converted to f32, by name. Loading removes tensors from it so
/// that anything left over at the end (an unsupported feature) can be reported.
struct TensorStore {
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl TensorStore {
    fn load(dir: &Path) -> TensorStore {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<std::path::PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let text = std::fs::read_to_string(&index)
                .unwrap_or_else(|e| panic!("reading {}: {e}", index.display()));
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("parsing {}: {e}", index.display()));
            let weight_map = json
                .get("weight_map")
                .and_then(Value::as_object)
                .unwrap_or_else(|| panic!("{}: missing object `weight_map`", index.display()));
            // Each shard once, in a stable order.
            let shards: BTreeSet<&str> = weight_map
                .values()
                .map(|v| {
                    v.as_str()
                        .unwrap_or_else(|| panic!("{}: non-string shard name", index.display()))
                })
                .collect();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            panic!(
                "reference model: {} has neither model.safetensors nor model.safetensors.index.json",
                dir.display()
            );
        };

        let mut tensors = HashMap::new();
        for file in files {
            let bytes =
                std::fs::read(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            let st = SafeTensors::deserialize(&bytes)
                .unwrap_or_else(|e| panic!("parsing safetensors {}: {e:?}", file.display()));
            for (name, view) in st.tensors() {
                let data = to_f32(view.dtype(), view.data(), &name);
                let previous = tensors.insert(name.clone(), (view.shape().to_vec(), data));
                assert!(
                    previous.is_none(),
                    "tensor {name} appears in more than one shard"
                );
            }
        }
        TensorStore { tensors }
    }

    /// Removes a tensor that must exist, checking its shape.
    fn take(&mut self, name: &str, shape: &[usize]) -> Vec<f32> {
        self.take_optional(name, shape)
            .unwrap_or_else(|| panic!("reference model: missing tensor {name}"))
    }

    /// Removes a tensor if it exists, checking its shape.
    fn take_optional(&mut self, name: &str, shape: &[usize]) -> Option<Vec<f32>> {
        let (actual, data) = self.tensors.remove(name)?;
        assert_eq!(
            actual, shape,
            "reference model: tensor {name} has shape {actual:?}, expected {shape:?}"
        );
        Some(data)
    }
}

/// Converts little-endian raw tensor bytes to f32 (bf16 and f16 widen exactly).
fn to_f32(dtype: Dtype, bytes: &[u8], name: &str) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => panic!("reference model: tensor {name} has unsupported dtype {other:?}"),
    }
}

/// A linear layer y = x W^T + b, with W stored as [out, in] row-major (PyTorch's layout).
struct Linear {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    in_dim: usize,
    out_dim: usize,
}

impl Linear {
    /// Loads `{prefix}.weight` and, if the checkpoint has it, `{prefix}.bias`.
    fn load(store: &mut TensorStore, prefix: &str, in_dim: usize, out_dim: usize) -> Linear {
        Linear {
            weight: store.take(&format!("{prefix}.weight"), &[out_dim, in_dim]),
            bias: store.take_optional(&format!("{prefix}.bias"), &[out_dim]),
            in_dim,
            out_dim,
        }
    }

    /// Applies the layer to `rows` row vectors stored back to back in `x`.
    fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.in_dim);
        let mut y = vec![0.0f32; rows * self.out_dim];
        for r in 0..rows {
            let input = &x[r * self.in_dim..(r + 1) * self.in_dim];
            for o in 0..self.out_dim {
                let w_row = &self.weight[o * self.in_dim..(o + 1) * self.in_dim];
                let mut acc = dot(input, w_row);
                if let Some(bias) = &self.bias {
                    acc += bias[o] as f64;
                }
                y[r * self.out_dim + o] = acc as f32;
            }
        }
        y
    }
}

struct Layer {
    input_layernorm: Vec<f32>,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Norms applied to each query/key head before RoPE. Qwen3: RMSNorm, one [head_dim] weight
    /// shared by all heads. Cohere with `use_qk_norm`: LayerNorm over head_dim with a weight of
    /// [num_heads (or num_kv_heads), head_dim], i.e. one weight row per head.
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    /// Absent for Cohere, whose MLP reads the output of input_layernorm (parallel layer).
    post_attention_layernorm: Option<Vec<f32>>,
    /// What follows post_attention_layernorm (Cohere: input_layernorm): a dense MLP or (Mixtral)
    /// a sparse MoE block.
    feed_forward: FeedForward,
    sliding_window: Option<usize>,
    /// Whether q and k are rotated (Cohere2: only in sliding layers).
    rope: bool,
}

/// The feed-forward half of a decoder layer.
enum FeedForward {
    /// Llama/Mistral/Qwen MLP: down_proj(silu(gate_proj(x)) * up_proj(x)).
    Dense {
        gate_proj: Linear,
        up_proj: Linear,
        down_proj: Linear,
    },
    /// Mixtral's `block_sparse_moe`.
    SparseMoe(SparseMoe),
}

/// One Mixtral expert (`MixtralBlockSparseTop2MLP`): w2(silu(w1(x)) * w3(x)), no biases.
struct Expert {
    /// [intermediate, hidden]
    w1: Linear,
    /// [hidden, intermediate]
    w2: Linear,
    /// [intermediate, hidden]
    w3: Linear,
}

/// Mixtral's sparse mixture-of-experts block (`MixtralSparseMoeBlock`).
struct SparseMoe {
    /// The router: [num_experts, hidden], no bias.
    gate: Linear,
    experts: Vec<Expert>,
    /// How many experts each token is sent to (`num_experts_per_tok`).
    top_k: usize,
}

impl FeedForward {
    /// Applies the block to `rows` normed row vectors stored back to back in `x`.
    fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        match self {
            FeedForward::Dense {
                gate_proj,
                up_proj,
                down_proj,
            } => swiglu(gate_proj, up_proj, down_proj, x, rows),
            FeedForward::SparseMoe(moe) => moe.forward(x, rows),
        }
    }
}

/// down(silu(gate(x)) * up(x)) on `rows` rows: the dense MLP, and also one Mixtral expert
/// (w2(silu(w1 x) * w3 x)).
fn swiglu(gate: &Linear, up: &Linear, down: &Linear, x: &[f32], rows: usize) -> Vec<f32> {
    let g = gate.forward(x, rows);
    let u = up.forward(x, rows);
    let act: Vec<f32> = g.iter().zip(&u).map(|(&g, &u)| silu(g) * u).collect();
    down.forward(&act, rows)
}

impl SparseMoe {
    /// Loads `{prefix}.gate` and `{prefix}.experts.{e}.w1/w2/w3` (the Hub's Mixtral layout).
    fn load(
        store: &mut TensorStore,
        prefix: &str,
        hidden: usize,
        inter: usize,
        moe: &MoeConfig,
    ) -> SparseMoe {
        // transformers creates all of these with bias=False; a bias in the checkpoint is left in
        // the store so that the "unused tensors" check reports it.
        let load = |store: &mut TensorStore, name: &str, in_dim: usize, out_dim: usize| Linear {
            weight: store.take(&format!("{name}.weight"), &[out_dim, in_dim]),
            bias: None,
            in_dim,
            out_dim,
        };
        let gate = load(store, &format!("{prefix}.gate"), hidden, moe.num_experts);
        let experts = (0..moe.num_experts)
            .map(|e| {
                let p = format!("{prefix}.experts.{e}");
                Expert {
                    w1: load(store, &format!("{p}.w1"), hidden, inter),
                    w2: load(store, &format!("{p}.w2"), inter, hidden),
                    w3: load(store, &format!("{p}.w3"), hidden, inter),
                }
            })
            .collect();
        SparseMoe {
            gate,
            experts,
            top_k: moe.top_k,
        }
    }

    /// Routes every row independently, as `MixtralSparseMoeBlock.forward` does:
    ///
    /// ```text
    /// router_logits = gate(x)
    /// routing_weights = softmax(router_logits)            (transformers: in float32)
    /// routing_weights, selected = topk(routing_weights, top_k)
    /// routing_weights /= routing_weights.sum()
    /// out = sum over selected experts e, in increasing e: routing_weight[e] * expert_e(x)
    /// ```
    ///
    /// transformers loops over the experts in increasing index and `index_add_`s each one's
    /// weighted output into a zeroed buffer; the sum here runs in the same order, in f64.
    fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let hidden = self.gate.in_dim;
        let num_experts = self.experts.len();
        assert_eq!(x.len(), rows * hidden);
        let mut out = vec![0.0f32; rows * hidden];
        for r in 0..rows {
            let row = &x[r * hidden..(r + 1) * hidden];

            // Router logits, one per expert, then a softmax over all experts (in f64).
            let logits = self.gate.forward(row, 1);
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            let probs: Vec<f64> = exps.iter().map(|&e| e / total).collect();

            // Top-k by probability: largest first; on an exact tie the lower expert index wins
            // (the sort is stable over indices 0..num_experts).
            let mut order: Vec<usize> = (0..num_experts).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            let selected = &order[..self.top_k];

            // Renormalise the selected probabilities to sum to 1 (Mixtral always does).
            let selected_sum: f64 = selected.iter().map(|&e| probs[e]).sum();
            let mut weight = vec![None; num_experts];
            for &e in selected {
                weight[e] = Some(probs[e] / selected_sum);
            }

            // Weighted sum of the selected experts' outputs, experts in increasing index.
            let mut acc = vec![0.0f64; hidden];
            for (e, expert) in self.experts.iter().enumerate() {
                let Some(w) = weight[e] else {
                    continue;
                };
                let y = swiglu(&expert.w1, &expert.w3, &expert.w2, row, 1);
                for (a, &v) in acc.iter_mut().zip(&y) {
                    *a += w * v as f64;
                }
            }
            for (o, &a) in out[r * hidden..(r + 1) * hidden].iter_mut().zip(&acc) {
                *o = a as f32;
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// The model a test loads: whichever implementation below matches config.json's `model_type`.
pub struct ReferenceModel {
    inner: Inner,
}

enum Inner {
    LlamaFamily(LlamaFamilyModel),
    Bloom(BloomModel),
}

impl ReferenceModel {
    /// Loads a Hugging Face model folder: config.json plus model.safetensors, or
    /// model.safetensors.index.json with its shards (weight_map: tensor name -> file).
    /// Panics with a descriptive message on any problem (this is test code).
    pub fn load(dir: &Path) -> ReferenceModel {
        let config_path = dir.join("config.json");
        let config_text = std::fs::read_to_string(&config_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", config_path.display()));
        let config_json: Value = serde_json::from_str(&config_text)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", config_path.display()));
        let inner = match model_type_of(&config_json) {
            "bloom" => Inner::Bloom(BloomModel::load(dir, &config_json)),
            // Any other model_type is checked (and, if unknown, rejected) by `Config::parse`.
            _ => Inner::LlamaFamily(LlamaFamilyModel::load(dir, &config_json)),
        };
        ReferenceModel { inner }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::LlamaFamily(m) => m.vocab_size(),
            Inner::Bloom(m) => m.config.vocab_size,
        }
    }

    /// Full-sequence causal forward pass from position 0; returns the logits for every position,
    /// `[tokens.len()][vocab_size]`.
    pub fn logits(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        match &self.inner {
            Inner::LlamaFamily(m) => m.logits(tokens),
            Inner::Bloom(m) => m.logits(tokens),
        }
    }
}

/// Llama, Mistral, Mixtral, Qwen2, Qwen3 and Cohere.
struct LlamaFamilyModel {
    config: Config,
    /// [vocab, hidden]
    embed_tokens: Vec<f32>,
    layers: Vec<Layer>,
    /// [hidden]
    norm: Vec<f32>,
    lm_head: Linear,
    /// RoPE inverse frequencies, head_dim / 2 of them, already scaled per `rope_scaling`.
    inv_freq: Vec<f64>,
}

impl LlamaFamilyModel {
    /// Loads the checkpoint in `dir` whose parsed config.json is `config_json`.
    fn load(dir: &Path, config_json: &Value) -> LlamaFamilyModel {
        let config = Config::parse(config_json);

        let mut store = TensorStore::load(dir);
        let hidden = config.hidden_size;
        let q_dim = config.num_attention_heads * config.head_dim;
        let kv_dim = config.num_key_value_heads * config.head_dim;
        let inter = config.intermediate_size;

        let embed_tokens = store.take("model.embed_tokens.weight", &[config.vocab_size, hidden]);

        let is_cohere = config.is_cohere();
        // Shapes of the per-head q/k norm weights: Qwen3 shares one [head_dim] weight across heads;
        // Cohere's `CohereLayerNorm(hidden_size=(num_heads, head_dim))` has one row per head.
        let (q_norm_shape, k_norm_shape) = if is_cohere {
            (
                vec![config.num_attention_heads, config.head_dim],
                vec![config.num_key_value_heads, config.head_dim],
            )
        } else {
            (vec![config.head_dim], vec![config.head_dim])
        };

        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let layer = Layer {
                input_layernorm: store.take(&format!("{p}.input_layernorm.weight"), &[hidden]),
                q_proj: Linear::load(&mut store, &format!("{p}.self_attn.q_proj"), hidden, q_dim),
                k_proj: Linear::load(&mut store, &format!("{p}.self_attn.k_proj"), hidden, kv_dim),
                v_proj: Linear::load(&mut store, &format!("{p}.self_attn.v_proj"), hidden, kv_dim),
                o_proj: Linear::load(&mut store, &format!("{p}.self_attn.o_proj"), q_dim, hidden),
                q_norm: store.take_optional(&format!("{p}.self_attn.q_norm.weight"), &q_norm_shape),
                k_norm: store.take_optional(&format!("{p}.self_attn.k_norm.weight"), &k_norm_shape),
                // Cohere has none (its layer is parallel); if a checkpoint had one it is left in
                // the store and reported as unused.
                post_attention_layernorm: (!is_cohere).then(|| {
                    store.take(&format!("{p}.post_attention_layernorm.weight"), &[hidden])
                }),
                feed_forward: match &config.moe {
                    None => FeedForward::Dense {
                        gate_proj: Linear::load(
                            &mut store,
                            &format!("{p}.mlp.gate_proj"),
                            hidden,
                            inter,
                        ),
                        up_proj: Linear::load(
                            &mut store,
                            &format!("{p}.mlp.up_proj"),
                            hidden,
                            inter,
                        ),
                        down_proj: Linear::load(
                            &mut store,
                            &format!("{p}.mlp.down_proj"),
                            inter,
                            hidden,
                        ),
                    },
                    Some(moe) => FeedForward::SparseMoe(SparseMoe::load(
                        &mut store,
                        &format!("{p}.block_sparse_moe"),
                        hidden,
                        inter,
                        moe,
                    )),
                },
                sliding_window: config.sliding_window_per_layer[i],
                rope: config.applies_rope(i),
            };

            // Qwen3 always has q_norm/k_norm, Cohere exactly when `use_qk_norm` is true; the others
            // never do. A mismatch means the checkpoint and config disagree, and guessing would
            // hide the bug.
            let wants_qk_norm = config.model_type == "qwen3" || config.use_qk_norm;
            assert!(
                layer.q_norm.is_some() == wants_qk_norm && layer.k_norm.is_some() == wants_qk_norm,
                "reference model: layer {i}: q_norm/k_norm must be present exactly for qwen3 and \
                 for cohere with use_qk_norm (model_type {:?}, use_qk_norm {}); present: {}/{}",
                config.model_type,
                config.use_qk_norm,
                layer.q_norm.is_some(),
                layer.k_norm.is_some()
            );
            // Biases are taken wherever the checkpoint has them; but a bias the config demands
            // must be there (transformers would otherwise leave it randomly initialised).
            if config.config_attention_bias {
                for (name, proj) in [
                    ("q", &layer.q_proj),
                    ("k", &layer.k_proj),
                    ("v", &layer.v_proj),
                ] {
                    assert!(
                        proj.bias.is_some(),
                        "reference model: config implies attention bias but {p}.self_attn.{name}_proj.bias is missing"
                    );
                }
                // Cohere's `attention_bias` also puts a bias on o_proj.
                if is_cohere {
                    assert!(
                        layer.o_proj.bias.is_some(),
                        "reference model: config implies attention bias but {p}.self_attn.o_proj.bias is missing"
                    );
                }
            }
            layers.push(layer);
        }

        // Cohere: a CohereLayerNorm (weight only, no bias); the others: RMSNorm.
        let norm = store.take("model.norm.weight", &[hidden]);

        let lm_head = if config.tie_word_embeddings {
            // Tied: the output projection is the embedding matrix. Some checkpoints still store an
            // lm_head.weight; transformers ignores it in favour of the tie, and so do we.
            store.tensors.remove("lm_head.weight");
            Linear {
                weight: embed_tokens.clone(),
                bias: None,
                in_dim: hidden,
                out_dim: config.vocab_size,
            }
        } else {
            Linear {
                weight: store.take("lm_head.weight", &[config.vocab_size, hidden]),
                bias: None,
                in_dim: hidden,
                out_dim: config.vocab_size,
            }
        };

        // Old checkpoints may carry precomputed RoPE buffers; they are recomputed, not loaded.
        store
            .tensors
            .retain(|name, _| !name.ends_with("rotary_emb.inv_freq"));
        if !store.tensors.is_empty() {
            let mut left: Vec<&String> = store.tensors.keys().collect();
            left.sort();
            panic!("reference model: checkpoint has tensors this reference does not use: {left:?}");
        }

        let inv_freq = rope_inv_freq(&config);
        LlamaFamilyModel {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
        }
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// Full-sequence causal forward pass from position 0; returns the logits for every position,
    /// `[tokens.len()][vocab_size]`.
    fn logits(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let cfg = &self.config;
        let t = tokens.len();
        let hidden = cfg.hidden_size;

        // Embedding lookup: x is [T, hidden].
        let mut x = Vec::with_capacity(t * hidden);
        for &tok in tokens {
            let tok = tok as usize;
            assert!(
                tok < cfg.vocab_size,
                "token {tok} out of range (vocab {})",
                cfg.vocab_size
            );
            x.extend_from_slice(&self.embed_tokens[tok * hidden..(tok + 1) * hidden]);
        }

        for layer in &self.layers {
            // Attention block with residual.
            let normed = self.norm_rows(&x, &layer.input_layernorm);
            let attn = self.attention(layer, &normed, t);
            let attn_out = layer.o_proj.forward(&attn, t);

            match &layer.post_attention_layernorm {
                Some(post_norm) => {
                    // Sequential (Llama and the rest): h = h + attn(norm1(h)), then
                    // h = h + mlp(norm2(h)). The MLP is down(silu(gate(n)) * up(n)), or for
                    // Mixtral the sparse MoE block (see `SparseMoe::forward`).
                    for (xi, ai) in x.iter_mut().zip(&attn_out) {
                        *xi += ai;
                    }
                    let normed = self.norm_rows(&x, post_norm);
                    let mlp_out = layer.feed_forward.forward(&normed, t);
                    for (xi, mi) in x.iter_mut().zip(&mlp_out) {
                        *xi += mi;
                    }
                }
                None => {
                    // Cohere's parallel layer (`CohereDecoderLayer.forward`):
                    //   residual = h; h = input_layernorm(h)
                    //   attn = self_attn(h); mlp = mlp(h)
                    //   h = residual + attn + mlp
                    // Both branches read the same normed input; the sums run left to right in
                    // f32, as torch's `residual + attn + mlp` does.
                    let mlp_out = layer.feed_forward.forward(&normed, t);
                    for ((xi, ai), mi) in x.iter_mut().zip(&attn_out).zip(&mlp_out) {
                        *xi = (*xi + ai) + mi;
                    }
                }
            }
        }

        let normed = self.norm_rows(&x, &self.norm);
        let mut logits = self.lm_head.forward(&normed, t);
        // Cohere: `logits = logits * self.logit_scale` after the lm_head (an f32 multiply).
        if let Some(scale) = cfg.logit_scale {
            for l in logits.iter_mut() {
                *l *= scale;
            }
        }
        logits
            .chunks_exact(cfg.vocab_size)
            .map(<[f32]>::to_vec)
            .collect()
    }

    /// Self-attention for one layer over the whole sequence. `x` is the normed input [T, hidden];
    /// returns the concatenated head outputs [T, n_heads * head_dim] (before o_proj).
    fn attention(&self, layer: &Layer, x: &[f32], t: usize) -> Vec<f32> {
        let cfg = &self.config;
        let n_heads = cfg.num_attention_heads;
        let n_kv = cfg.num_key_value_heads;
        let hd = cfg.head_dim;

        // q is [T, n_heads, head_dim]; k and v are [T, n_kv, head_dim] (row-major, so head h of
        // position p starts at (p * n + h) * hd).
        let mut q = layer.q_proj.forward(x, t);
        let mut k = layer.k_proj.forward(x, t);
        let v = layer.v_proj.forward(x, t);

        // Qwen3: per-head RMSNorm over head_dim with one shared weight, before RoPE.
        // Cohere with use_qk_norm: per-head LayerNorm over head_dim, before RoPE, where head h
        // uses row h of the [n_heads, head_dim] weight (`CohereLayerNorm` normalises over the last
        // dim only and broadcasts its 2-D weight over positions).
        for (x, norm, heads) in [
            (&mut q, &layer.q_norm, n_heads),
            (&mut k, &layer.k_norm, n_kv),
        ] {
            let Some(w) = norm else {
                continue;
            };
            for (idx, head) in x.chunks_exact_mut(hd).enumerate() {
                match cfg.norm_kind {
                    NormKind::Rms => rms_norm_in_place(head, w, cfg.norm_eps),
                    NormKind::LayerNorm => {
                        let h = idx % heads;
                        layer_norm_in_place(head, &w[h * hd..(h + 1) * hd], cfg.norm_eps);
                    }
                }
            }
        }

        // RoPE on every head of every position (position p = row index, since we start at 0);
        // Cohere2's full-attention layers skip it.
        for p in (0..t).filter(|_| layer.rope) {
            for h in 0..n_heads {
                let start = (p * n_heads + h) * hd;
                self.apply_rope(&mut q[start..start + hd], p);
            }
            for h in 0..n_kv {
                let start = (p * n_kv + h) * hd;
                self.apply_rope(&mut k[start..start + hd], p);
            }
        }

        // Grouped-query attention: consecutive groups of query heads share one kv head.
        let group = n_heads / n_kv;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut out = vec![0.0f32; t * n_heads * hd];
        let mut scores = vec![0.0f32; t];
        for h in 0..n_heads {
            let kv_h = h / group;
            for i in 0..t {
                let q_vec = &q[(i * n_heads + h) * hd..(i * n_heads + h + 1) * hd];

                // Keys allowed for query i: causal (j <= i) and, with a sliding window of w,
                // only the last w positions including i itself (i - j < w).
                let first = match layer.sliding_window {
                    Some(w) => (i + 1).saturating_sub(w),
                    None => 0,
                };
                let allowed = first..=i;

                for j in allowed.clone() {
                    let k_vec = &k[(j * n_kv + kv_h) * hd..(j * n_kv + kv_h + 1) * hd];
                    scores[j] = (dot(q_vec, k_vec) * scale) as f32;
                }

                // Softmax over the allowed keys, subtracting the max for stability.
                let max = allowed
                    .clone()
                    .map(|j| scores[j])
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f64;
                for j in allowed.clone() {
                    scores[j] = (scores[j] - max).exp();
                    sum += scores[j] as f64;
                }

                // Weighted sum of the values.
                let o = &mut out[(i * n_heads + h) * hd..(i * n_heads + h + 1) * hd];
                for d in 0..hd {
                    let mut acc = 0.0f64;
                    for j in allowed.clone() {
                        let v_val = v[(j * n_kv + kv_h) * hd + d];
                        acc += scores[j] as f64 * v_val as f64;
                    }
                    o[d] = (acc / sum) as f32;
                }
            }
        }
        out
    }

    /// Rotates one head vector in place for position `pos`. Llama and the rest use transformers'
    /// non-interleaved "rotate_half" layout: element j pairs with element j + head_dim/2. Cohere
    /// uses the interleaved layout (see `apply_rope_interleaved`).
    fn apply_rope(&self, x: &mut [f32], pos: usize) {
        if self.config.is_cohere() {
            self.apply_rope_interleaved(x, pos);
            return;
        }
        let half = x.len() / 2;
        for j in 0..half {
            let angle = pos as f64 * self.inv_freq[j];
            let (sin, cos) = (angle.sin() as f32, angle.cos() as f32);
            let a = x[j];
            let b = x[j + half];
            x[j] = a * cos - b * sin;
            x[j + half] = b * cos + a * sin;
        }
    }

    /// Cohere's interleaved RoPE: element 2i pairs with element 2i+1, both rotated by the angle
    /// pos * inv_freq[i]. In transformers (`modeling_cohere.py`):
    ///
    /// ```text
    /// emb = repeat_interleave(freqs, 2, dim=-1)     # angle for dims 2i and 2i+1 = freqs[i]
    /// rotate_half(x) = stack([-x[..., 1::2], x[..., ::2]], -1).flatten(-2)
    ///                 # = [-x1, x0, -x3, x2, ...]
    /// x_embed = x * cos(emb) + rotate_half(x) * sin(emb)
    /// ```
    ///
    /// so out[2i] = x[2i] cos - x[2i+1] sin and out[2i+1] = x[2i+1] cos + x[2i] sin.
    fn apply_rope_interleaved(&self, x: &mut [f32], pos: usize) {
        let half = x.len() / 2;
        for i in 0..half {
            let angle = pos as f64 * self.inv_freq[i];
            let (sin, cos) = (angle.sin() as f32, angle.cos() as f32);
            let a = x[2 * i];
            let b = x[2 * i + 1];
            x[2 * i] = a * cos - b * sin;
            x[2 * i + 1] = b * cos + a * sin;
        }
    }

    /// The model's norm (RMSNorm, or Cohere's LayerNorm) applied to each row of `x`.
    fn norm_rows(&self, x: &[f32], weight: &[f32]) -> Vec<f32> {
        match self.config.norm_kind {
            NormKind::Rms => rms_norm_rows(x, weight, self.config.norm_eps),
            NormKind::LayerNorm => layer_norm_rows(x, weight, self.config.norm_eps),
        }
    }
}

/// RoPE inverse frequencies inv_freq[j] = 1 / theta^(2j / head_dim), adjusted for rope_scaling.
fn rope_inv_freq(cfg: &Config) -> Vec<f64> {
    let hd = cfg.head_dim;
    let base: Vec<f64> = (0..hd / 2)
        .map(|j| 1.0 / cfg.rope_theta.powf((2 * j) as f64 / hd as f64))
        .collect();
    match cfg.rope_scaling {
        RopeScaling::None => base,
        // Dividing every position by `factor` is the same as dividing every frequency by it.
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_ctx,
        } => {
            // transformers' `_compute_llama3_parameters`: high frequencies (short wavelengths)
            // are kept, low frequencies are divided by `factor`, and the band in between is
            // interpolated smoothly between the two.
            let low_freq_wavelen = old_ctx / low_freq_factor;
            let high_freq_wavelen = old_ctx / high_freq_factor;
            base.iter()
                .map(|&inv| {
                    let wavelen = 2.0 * std::f64::consts::PI / inv;
                    if wavelen < high_freq_wavelen {
                        inv
                    } else if wavelen > low_freq_wavelen {
                        inv / factor
                    } else {
                        let smooth = (old_ctx / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * inv / factor + smooth * inv
                    }
                })
                .collect()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// BLOOM
// ---------------------------------------------------------------------------------------------
//
// Follows transformers' `models/bloom/configuration_bloom.py` and `models/bloom/modeling_bloom.py`
// (`BloomConfig`, `build_alibi_tensor`, `bloom_gelu_forward`, `BloomAttention`, `BloomMLP`,
// `BloomBlock`, `BloomModel`, `BloomForCausalLM`).

/// The parts of a BLOOM config.json this reference needs, with `BloomConfig`'s defaults.
#[derive(Debug, Clone)]
struct BloomConfig {
    /// `hidden_size`, or the older spelling `n_embed`, which wins when both are present (as in
    /// `BloomConfig.__post_init__`/`__init__`: `hidden_size if n_embed is None else n_embed`).
    hidden_size: usize,
    /// `n_layer` (alias `num_hidden_layers`).
    n_layer: usize,
    /// `n_head` (alias `num_attention_heads`). Every head has its own k and v (no GQA).
    n_head: usize,
    /// hidden_size / n_head (`BloomAttention.head_dim`).
    head_dim: usize,
    /// `layer_norm_epsilon`, the eps of every LayerNorm.
    layer_norm_epsilon: f64,
    vocab_size: usize,
    /// `apply_residual_connection_post_layernorm`: the residual added back around attention and
    /// around the MLP is the LayerNorm output instead of the block's input.
    apply_residual_connection_post_layernorm: bool,
    /// `tie_word_embeddings`, true by default for BLOOM.
    tie_word_embeddings: bool,
    /// `pretraining_tp > 1 and slow_but_exact`: `BloomAttention` and `BloomMLP` then compute their
    /// output projections (`dense`, `dense_4h_to_h`) as a sum of `F.linear` calls on column
    /// slices of the weight, without the bias; mathematically that is the projection with its
    /// bias dropped.
    tp_slices_without_bias: bool,
}

/// A key that has two spellings in BLOOM configs (`BloomConfig.attribute_map` maps
/// `num_hidden_layers` to `n_layer` and `num_attention_heads` to `n_head`). A config that gives
/// both with different values is rejected rather than guessed at.
fn get_usize_aliased(json: &Value, key: &str, alias: &str) -> Option<usize> {
    match (get_usize(json, key), get_usize(json, alias)) {
        (Some(a), Some(b)) => {
            assert_eq!(
                a, b,
                "config.json: `{key}` ({a}) and its alias `{alias}` ({b}) disagree"
            );
            Some(a)
        }
        (a, b) => a.or(b),
    }
}

impl BloomConfig {
    fn parse(json: &Value) -> BloomConfig {
        assert_eq!(model_type_of(json), "bloom");
        // Defaults are `BloomConfig`'s: vocab_size 250880, hidden_size 64, n_layer 2, n_head 8,
        // layer_norm_epsilon 1e-5, apply_residual_connection_post_layernorm False,
        // pretraining_tp 1, slow_but_exact False, tie_word_embeddings True.
        let hidden_size = get_usize(json, "n_embed")
            .or_else(|| get_usize(json, "hidden_size"))
            .unwrap_or(64);
        let n_layer = get_usize_aliased(json, "n_layer", "num_hidden_layers").unwrap_or(2);
        let n_head = get_usize_aliased(json, "n_head", "num_attention_heads").unwrap_or(8);
        assert!(
            n_head > 0 && hidden_size.is_multiple_of(n_head),
            "config.json: hidden_size ({hidden_size}) must be divisible by n_head ({n_head})"
        );
        let pretraining_tp = get_usize(json, "pretraining_tp").unwrap_or(1);
        let slow_but_exact = get_bool(json, "slow_but_exact").unwrap_or(false);
        BloomConfig {
            hidden_size,
            n_layer,
            n_head,
            head_dim: hidden_size / n_head,
            layer_norm_epsilon: get_f64(json, "layer_norm_epsilon").unwrap_or(1e-5),
            vocab_size: get_usize(json, "vocab_size").unwrap_or(250880),
            apply_residual_connection_post_layernorm: get_bool(
                json,
                "apply_residual_connection_post_layernorm",
            )
            .unwrap_or(false),
            tie_word_embeddings: get_bool(json, "tie_word_embeddings").unwrap_or(true),
            tp_slices_without_bias: pretraining_tp > 1 && slow_but_exact,
        }
    }
}

/// A standard LayerNorm's parameters (`torch.nn.LayerNorm` with elementwise affine and bias).
struct LayerNormParams {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl LayerNormParams {
    fn load(store: &mut TensorStore, prefix: &str, dim: usize) -> LayerNormParams {
        LayerNormParams {
            weight: store.take(&format!("{prefix}.weight"), &[dim]),
            bias: store.take(&format!("{prefix}.bias"), &[dim]),
        }
    }

    /// The LayerNorm applied to each row of `x`.
    fn forward(&self, x: &[f32], eps: f64) -> Vec<f32> {
        layer_norm_with_bias_rows(x, &self.weight, &self.bias, eps)
    }
}

/// `BloomBlock`'s parameters.
struct BloomLayer {
    input_layernorm: LayerNormParams,
    /// [3 * hidden, hidden] with bias; output row r = (head * 3 + c) * head_dim + d, c = 0 for
    /// the query, 1 for the key, 2 for the value.
    query_key_value: Linear,
    /// [hidden, hidden] with bias (dropped when `tp_slices_without_bias`).
    dense: Linear,
    post_attention_layernorm: LayerNormParams,
    /// [4 * hidden, hidden] with bias.
    dense_h_to_4h: Linear,
    /// [hidden, 4 * hidden] with bias (dropped when `tp_slices_without_bias`).
    dense_4h_to_h: Linear,
}

/// `BloomForCausalLM`.
struct BloomModel {
    config: BloomConfig,
    /// [vocab, hidden]
    word_embeddings: Vec<f32>,
    word_embeddings_layernorm: LayerNormParams,
    layers: Vec<BloomLayer>,
    ln_f: LayerNormParams,
    /// [vocab, hidden], no bias; the word embeddings when tied.
    lm_head: Linear,
    /// ALiBi slope of each head (`build_alibi_tensor`), in f32 as transformers holds them.
    alibi_slopes: Vec<f32>,
}

/// Loads `{prefix}.weight` [out, in] and the bias `{prefix}.bias` [out], which BLOOM's
/// `nn.Linear`s always have (bias=True).
fn linear_with_bias(
    store: &mut TensorStore,
    prefix: &str,
    in_dim: usize,
    out_dim: usize,
) -> Linear {
    Linear {
        weight: store.take(&format!("{prefix}.weight"), &[out_dim, in_dim]),
        bias: Some(store.take(&format!("{prefix}.bias"), &[out_dim])),
        in_dim,
        out_dim,
    }
}

/// ALiBi slopes, exactly as `build_alibi_tensor` computes them:
///
/// ```text
/// closest_power_of_2 = 2 ** math.floor(math.log2(num_heads))
/// base = torch.tensor(2 ** (-(2 ** -(math.log2(closest_power_of_2) - 3))), dtype=torch.float32)
/// powers = torch.arange(1, 1 + closest_power_of_2, dtype=torch.int32)
/// slopes = torch.pow(base, powers)
/// if closest_power_of_2 != num_heads:
///     extra_base = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest_power_of_2) - 3))), dtype=torch.float32)
///     num_remaining_heads = min(closest_power_of_2, num_heads - closest_power_of_2)
///     extra_powers = torch.arange(1, 1 + 2 * num_remaining_heads, 2, dtype=torch.int32)
///     slopes = torch.cat([slopes, torch.pow(extra_base, extra_powers)], dim=0)
/// ```
///
/// i.e. with n = closest_power_of_2: slopes 2^(-8k/n) for k = 1..n, then for the remaining heads
/// 2^(-4k/n) for the odd k = 1, 3, 5, ... The bases are rounded to f32 first, as the
/// float32 tensors are; each power is computed in f64 and rounded to f32.
fn alibi_slopes(num_heads: usize) -> Vec<f32> {
    assert!(num_heads > 0);
    // 2 ** floor(log2(num_heads)): the largest power of two not above num_heads.
    let mut closest_power_of_2 = 1usize;
    while closest_power_of_2 * 2 <= num_heads {
        closest_power_of_2 *= 2;
    }
    // math.log2 of a power of two is exact.
    let log2 = |n: usize| n.trailing_zeros() as f64;
    let base = 2f64.powf(-(2f64.powf(-(log2(closest_power_of_2) - 3.0)))) as f32;
    let mut slopes: Vec<f32> = (1..=closest_power_of_2)
        .map(|p| (base as f64).powi(p as i32) as f32)
        .collect();
    if closest_power_of_2 != num_heads {
        let extra_base = 2f64.powf(-(2f64.powf(-(log2(2 * closest_power_of_2) - 3.0)))) as f32;
        let num_remaining_heads = closest_power_of_2.min(num_heads - closest_power_of_2);
        for p in (1..1 + 2 * num_remaining_heads).step_by(2) {
            slopes.push((extra_base as f64).powi(p as i32) as f32);
        }
    }
    assert_eq!(slopes.len(), num_heads);
    slopes
}

/// `bloom_gelu_forward` (the inference branch of `BloomGelu`), a tanh approximation of GELU with
/// BLOOM's own rounded constants:
/// `x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))`.
/// Computed in f64 from the f32 input, rounded once.
fn bloom_gelu(x: f32) -> f32 {
    let x = x as f64;
    (x * 0.5 * (1.0 + (0.79788456 * x * (1.0 + 0.044715 * x * x)).tanh())) as f32
}

impl BloomModel {
    /// Loads the checkpoint in `dir` whose parsed config.json is `config_json`.
    ///
    /// Tensor names are those of `BloomForCausalLM`'s state dict: `transformer.word_embeddings`,
    /// `transformer.word_embeddings_layernorm`, `transformer.h.{i}.{input_layernorm,
    /// self_attention.query_key_value, self_attention.dense, post_attention_layernorm,
    /// mlp.dense_h_to_4h, mlp.dense_4h_to_h}`, `transformer.ln_f`, `lm_head`. The BigScience Hub
    /// checkpoints were saved from the bare `BloomModel` and so lack the `transformer.` prefix;
    /// transformers loads those into `BloomForCausalLM` too (`base_model_prefix = "transformer"`),
    /// so both spellings are accepted (the whole checkpoint must use one of them).
    fn load(dir: &Path, config_json: &Value) -> BloomModel {
        let config = BloomConfig::parse(config_json);
        let mut store = TensorStore::load(dir);
        let hidden = config.hidden_size;
        let vocab = config.vocab_size;

        let prefix = if store
            .tensors
            .contains_key("transformer.word_embeddings.weight")
        {
            "transformer."
        } else {
            ""
        };

        let word_embeddings =
            store.take(&format!("{prefix}word_embeddings.weight"), &[vocab, hidden]);
        let word_embeddings_layernorm = LayerNormParams::load(
            &mut store,
            &format!("{prefix}word_embeddings_layernorm"),
            hidden,
        );

        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("{prefix}h.{i}");
            let mut layer = BloomLayer {
                input_layernorm: LayerNormParams::load(
                    &mut store,
                    &format!("{p}.input_layernorm"),
                    hidden,
                ),
                query_key_value: linear_with_bias(
                    &mut store,
                    &format!("{p}.self_attention.query_key_value"),
                    hidden,
                    3 * hidden,
                ),
                dense: linear_with_bias(
                    &mut store,
                    &format!("{p}.self_attention.dense"),
                    hidden,
                    hidden,
                ),
                post_attention_layernorm: LayerNormParams::load(
                    &mut store,
                    &format!("{p}.post_attention_layernorm"),
                    hidden,
                ),
                // `BloomMLP`: nn.Linear(hidden_size, 4 * hidden_size) and back.
                dense_h_to_4h: linear_with_bias(
                    &mut store,
                    &format!("{p}.mlp.dense_h_to_4h"),
                    hidden,
                    4 * hidden,
                ),
                dense_4h_to_h: linear_with_bias(
                    &mut store,
                    &format!("{p}.mlp.dense_4h_to_h"),
                    4 * hidden,
                    hidden,
                ),
            };
            if config.tp_slices_without_bias {
                // The `pretraining_tp > 1 and slow_but_exact` branches of `BloomAttention.forward`
                // and `BloomMLP.forward` sum `F.linear(slice, weight_slice)` without the bias.
                layer.dense.bias = None;
                layer.dense_4h_to_h.bias = None;
            }
            layers.push(layer);
        }

        let ln_f = LayerNormParams::load(&mut store, &format!("{prefix}ln_f"), hidden);

        // `BloomForCausalLM.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)`, tied to the
        // word embeddings unless `tie_word_embeddings` is false.
        let lm_head = if config.tie_word_embeddings {
            // A stored lm_head.weight is ignored in favour of the tie, as transformers does.
            store.tensors.remove("lm_head.weight");
            Linear {
                weight: word_embeddings.clone(),
                bias: None,
                in_dim: hidden,
                out_dim: vocab,
            }
        } else {
            Linear {
                weight: store.take("lm_head.weight", &[vocab, hidden]),
                bias: None,
                in_dim: hidden,
                out_dim: vocab,
            }
        };

        if !store.tensors.is_empty() {
            let mut left: Vec<&String> = store.tensors.keys().collect();
            left.sort();
            panic!("reference model: checkpoint has tensors this reference does not use: {left:?}");
        }

        let alibi_slopes = alibi_slopes(config.n_head);
        BloomModel {
            config,
            word_embeddings,
            word_embeddings_layernorm,
            layers,
            ln_f,
            lm_head,
            alibi_slopes,
        }
    }

    /// Full-sequence causal forward pass from position 0 (`BloomModel.forward` then the lm_head),
    /// with no padding (attention_mask all ones); returns `[tokens.len()][vocab_size]` logits.
    fn logits(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let cfg = &self.config;
        let t = tokens.len();
        let hidden = cfg.hidden_size;
        let eps = cfg.layer_norm_epsilon;

        // inputs_embeds = word_embeddings(input_ids)
        let mut embeds = Vec::with_capacity(t * hidden);
        for &tok in tokens {
            let tok = tok as usize;
            assert!(
                tok < cfg.vocab_size,
                "token {tok} out of range (vocab {})",
                cfg.vocab_size
            );
            embeds.extend_from_slice(&self.word_embeddings[tok * hidden..(tok + 1) * hidden]);
        }
        // hidden_states = word_embeddings_layernorm(inputs_embeds)
        let mut x = self.word_embeddings_layernorm.forward(&embeds, eps);

        for layer in &self.layers {
            // `BloomBlock.forward` (dropout is off at inference, so dropout_add(a, r) = r + a):
            //   layernorm_output = input_layernorm(hidden_states)
            //   residual = layernorm_output if apply_residual_connection_post_layernorm
            //              else hidden_states
            //   attention_output = residual + dense(attention(layernorm_output))
            //   layernorm_output = post_attention_layernorm(attention_output)
            //   residual = layernorm_output if apply_residual_connection_post_layernorm
            //              else attention_output
            //   output = residual + dense_4h_to_h(gelu(dense_h_to_4h(layernorm_output)))
            let post = cfg.apply_residual_connection_post_layernorm;

            let normed = layer.input_layernorm.forward(&x, eps);
            let context = self.attention(layer, &normed, t);
            let attn = layer.dense.forward(&context, t);
            let residual = if post { &normed } else { &x };
            let attention_output: Vec<f32> =
                residual.iter().zip(&attn).map(|(&r, &a)| r + a).collect();

            let normed = layer
                .post_attention_layernorm
                .forward(&attention_output, eps);
            let mut inner = layer.dense_h_to_4h.forward(&normed, t);
            for v in inner.iter_mut() {
                *v = bloom_gelu(*v);
            }
            let mlp = layer.dense_4h_to_h.forward(&inner, t);
            let residual = if post { &normed } else { &attention_output };
            x = residual.iter().zip(&mlp).map(|(&r, &m)| r + m).collect();
        }

        // hidden_states = ln_f(hidden_states); lm_logits = lm_head(hidden_states)
        let normed = self.ln_f.forward(&x, eps);
        let logits = self.lm_head.forward(&normed, t);
        logits
            .chunks_exact(cfg.vocab_size)
            .map(<[f32]>::to_vec)
            .collect()
    }

    /// `BloomAttention.forward` up to (not including) `dense`: `x` is the normed input
    /// [T, hidden]; returns the merged head outputs [T, hidden] (head h at columns
    /// h * head_dim .. (h + 1) * head_dim, as `_merge_heads` lays them out).
    ///
    /// ```text
    /// fused_qkv = query_key_value(x)                                  # [T, 3 * hidden]
    /// fused_qkv = fused_qkv.view(batch, T, num_heads, 3, head_dim)    # `_reshape`
    /// query, key, value = fused_qkv[..., 0, :], fused_qkv[..., 1, :], fused_qkv[..., 2, :]
    /// scores = alibi.baddbmm(query, key^T, beta=1.0, alpha=1 / sqrt(head_dim))
    /// scores = scores + causal_mask                                   # finfo.min above diagonal
    /// probs = softmax(scores, dim=-1, dtype=float32)
    /// context = probs @ value
    /// ```
    ///
    /// ALiBi: `build_alibi_tensor` makes alibi[h, 0, j] = slope_h * (cumsum(mask)[j] - 1), which
    /// with an all-ones mask is slope_h * j for key position j, broadcast over every query row.
    /// This uses that form, slope_h * key_position (not the relative key - query form of the
    /// ALiBi paper; softmax is shift-invariant per row, so the two agree up to rounding).
    fn attention(&self, layer: &BloomLayer, x: &[f32], t: usize) -> Vec<f32> {
        let cfg = &self.config;
        let n_heads = cfg.n_head;
        let hd = cfg.head_dim;
        let hidden = cfg.hidden_size;

        let qkv = layer.query_key_value.forward(x, t);
        // Head h's query (c = 0), key (c = 1) or value (c = 2) at position p.
        let part = |p: usize, h: usize, c: usize| -> &[f32] {
            let start = p * 3 * hidden + (h * 3 + c) * hd;
            &qkv[start..start + hd]
        };

        let scale = 1.0 / (hd as f64).sqrt();
        let mut out = vec![0.0f32; t * hidden];
        let mut scores = vec![0.0f32; t];
        for h in 0..n_heads {
            let slope = self.alibi_slopes[h];
            for i in 0..t {
                let q_vec = part(i, h, 0);
                // Causal: query i attends to keys 0..=i (masked scores become exactly 0 after
                // softmax in transformers too, since exp(finfo.min - max) underflows to 0).
                let allowed = 0..=i;
                for j in allowed.clone() {
                    let k_vec = part(j, h, 1);
                    // alibi in f32 (slopes * arange, both float32), then baddbmm:
                    // beta * alibi + alpha * (q . k) with beta = 1.
                    let alibi = slope * j as f32;
                    scores[j] = (alibi as f64 + dot(q_vec, k_vec) * scale) as f32;
                }

                // Softmax over the allowed keys, subtracting the max for stability.
                let max = allowed
                    .clone()
                    .map(|j| scores[j])
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f64;
                for j in allowed.clone() {
                    scores[j] = (scores[j] - max).exp();
                    sum += scores[j] as f64;
                }

                // Weighted sum of the values.
                let o = &mut out[i * hidden + h * hd..i * hidden + (h + 1) * hd];
                for (d, od) in o.iter_mut().enumerate() {
                    let mut acc = 0.0f64;
                    for j in allowed.clone() {
                        acc += scores[j] as f64 * part(j, h, 2)[d] as f64;
                    }
                    *od = (acc / sum) as f32;
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Small numeric helpers
// ---------------------------------------------------------------------------------------------

/// Dot product accumulated in f64.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// RMSNorm of one vector in place: x * w / sqrt(mean(x^2) + eps).
fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f64) {
    assert_eq!(x.len(), weight.len());
    let mean_sq = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    let inv_rms = 1.0 / (mean_sq + eps).sqrt();
    for (v, &w) in x.iter_mut().zip(weight) {
        // transformers normalises first, then multiplies by the weight.
        *v = w * ((*v as f64 * inv_rms) as f32);
    }
}

/// RMSNorm applied to each row of a row-major [rows, weight.len()] matrix; returns a new matrix.
fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f64) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(weight.len()) {
        rms_norm_in_place(row, weight, eps);
    }
    out
}

/// Cohere's `CohereLayerNorm` of one vector in place: a LayerNorm without bias,
/// w * (x - mean) / sqrt(var + eps), with var the biased variance mean((x - mean)^2).
/// transformers computes it in float32; the sums here are in f64.
fn layer_norm_in_place(x: &mut [f32], weight: &[f32], eps: f64) {
    assert_eq!(x.len(), weight.len());
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| {
            let d = v as f64 - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    let inv_std = 1.0 / (var + eps).sqrt();
    for (v, &w) in x.iter_mut().zip(weight) {
        // As transformers: normalise first, then multiply by the weight.
        *v = w * (((*v as f64 - mean) * inv_std) as f32);
    }
}

/// Cohere's LayerNorm applied to each row of a row-major [rows, weight.len()] matrix.
fn layer_norm_rows(x: &[f32], weight: &[f32], eps: f64) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(weight.len()) {
        layer_norm_in_place(row, weight, eps);
    }
    out
}

/// A standard LayerNorm (`torch.nn.LayerNorm`, BLOOM's norms) of one vector in place:
/// w * (x - mean) / sqrt(var + eps) + b, var the biased variance. transformers computes it in
/// float32; the sums here are in f64.
fn layer_norm_with_bias_in_place(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f64) {
    assert_eq!(x.len(), weight.len());
    assert_eq!(x.len(), bias.len());
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| {
            let d = v as f64 - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    let inv_std = 1.0 / (var + eps).sqrt();
    for ((v, &w), &b) in x.iter_mut().zip(weight).zip(bias) {
        *v = ((*v as f64 - mean) * inv_std * w as f64 + b as f64) as f32;
    }
}

/// The LayerNorm with bias applied to each row of a row-major [rows, weight.len()] matrix.
fn layer_norm_with_bias_rows(x: &[f32], weight: &[f32], bias: &[f32], eps: f64) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(weight.len()) {
        layer_norm_with_bias_in_place(row, weight, bias, eps);
    }
    out
}

/// SiLU (a.k.a. swish): x * sigmoid(x).
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}
