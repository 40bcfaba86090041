//! Writes a Hugging Face folder of the Llama decoder's family (Llama, Mistral without a window,
//! Mixtral, Qwen2, Qwen3) as a GGUF file (llama.cpp's format, read by mistral.rs and llama.cpp):
//! llama.cpp's architecture names (`llama` for Llama, Mistral and Mixtral; `qwen2`; `qwen3`),
//! tensor names and metadata keys, q and k rows reordered for `llama`'s interleaved rotary
//! pairs, Qwen2's q/k/v biases, Qwen3's q/k norms, Mixtral's router and experts, the byte-level
//! BPE vocabulary and merges, and the matrices in f32, f16, Q8_0 or Q4_K (candle's quantisers;
//! norms, biases and the router stay f32).

use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::config::{Family, MlpKind, ModelShape, NormKind, Positions, RopeScaling};
use super::weights::Weights;
use crate::EngineError;

/// The matrices' type in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    F32,
    F16,
    Q8_0,
    Q4K,
}

impl GgufType {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4_k",
        }
    }

    fn ggml(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4K => GgmlDType::Q4K,
        }
    }
}

fn unsupported(what: &str) -> EngineError {
    EngineError::InvalidRequest(format!(
        "GGUF conversion covers the Llama decoder and its relatives (Llama, Mistral without a \
         sliding window, Mixtral, Qwen2, Qwen3: RMSNorm, rotary without scaling, gated SiLU \
         MLP) without {what}"
    ))
}

/// llama.cpp's name for the architecture in the file, as mistral.rs 0.8.1 loads it.
fn gguf_architecture(s: &ModelShape) -> Result<&'static str, EngineError> {
    match s.family {
        // Mistral and Mixtral are written as `llama`, as llama.cpp's converter does.
        Family::Llama | Family::Mistral | Family::Mixtral => Ok("llama"),
        Family::Qwen2 => Ok("qwen2"),
        Family::Qwen3 => Ok("qwen3"),
        Family::Cohere | Family::Cohere2 | Family::Bloom => Err(unsupported(
            "Cohere's or BLOOM's blocks (mistral.rs reads neither from GGUF)",
        )),
    }
}

/// Reads the folder `dir` and writes `out`.
pub fn write_gguf(dir: &Path, out: &Path, ty: GgufType) -> Result<(), EngineError> {
    let s = ModelShape::from_file(&dir.join("config.json"))?;
    let arch = gguf_architecture(&s)?;
    let checks = [
        // Qwen2's q/k/v biases are in its GGUF; nothing else's are.
        (
            s.o_bias || s.mlp_bias || (s.qkv_bias && arch != "qwen2"),
            "biases other than Qwen2's",
        ),
        (s.qk_norm && arch != "qwen3", "q/k norms other than Qwen3's"),
        (s.norm != NormKind::Rms, "LayerNorm"),
        (s.parallel_block, "a parallel block"),
        (s.mlp != MlpKind::GatedSilu, "a GELU MLP"),
        (
            s.positions != (Positions::Rope { interleaved: false }),
            "interleaved rotary or ALiBi",
        ),
        (!matches!(s.rope_scaling, RopeScaling::None), "rope scaling"),
        // mistral.rs's GGUF models attend to the whole context.
        (
            s.layer_windows.iter().any(Option::is_some),
            "sliding windows",
        ),
        (
            s.embed_norm || s.logit_scale.is_some(),
            "embedding norms or logit scales",
        ),
    ];
    if let Some((_, what)) = checks.iter().find(|(bad, _)| *bad) {
        return Err(unsupported(what));
    }
    let w = Weights::open(dir, &Device::Cpu)?;
    let names = s.weight_names(|name| w.contains(name));
    let (h, hd) = (s.hidden_size, s.head_dim);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut put = |name: String, t: Tensor, ty: GgmlDType| -> Result<(), EngineError> {
        let t = t.to_dtype(DType::F32)?;
        tensors.push((name, QTensor::quantize(&t, ty)?));
        Ok(())
    };
    let matrix = ty.ggml();
    put(
        "token_embd.weight".into(),
        w.tensor(&format!("{}.weight", names.embed), &[s.vocab_size, h])?,
        matrix,
    )?;
    put(
        "output_norm.weight".into(),
        w.tensor(&format!("{}.weight", names.final_norm), &[h])?,
        GgmlDType::F32,
    )?;
    if !s.tie_word_embeddings {
        put(
            "output.weight".into(),
            w.tensor(&format!("{}.weight", names.lm_head), &[s.vocab_size, h])?,
            matrix,
        )?;
    }
    // llama's rotary pairs are interleaved in GGUF (llama.cpp permutes q and k); qwen2's and
    // qwen3's rotate halves, as Hugging Face's do.
    let rows = |t: Tensor, heads: usize| -> Result<Tensor, EngineError> {
        if arch == "llama" {
            interleave_rotary(&t, heads, hd)
        } else {
            Ok(t)
        }
    };
    let (qd, kvd, i) = (s.num_heads * hd, s.num_kv_heads * hd, s.intermediate_size);
    for l in 0..s.num_layers {
        let n = names.layer(l);
        let weight = |name: &str, dims: &[usize]| w.tensor(&format!("{name}.weight"), dims);
        let gg = |name: &str| format!("blk.{l}.{name}.weight");
        put(
            gg("attn_norm"),
            weight(&n.input_norm, &[h])?,
            GgmlDType::F32,
        )?;
        put(gg("ffn_norm"), weight(&n.post_norm, &[h])?, GgmlDType::F32)?;
        put(
            gg("attn_q"),
            rows(weight(&n.q, &[qd, h])?, s.num_heads)?,
            matrix,
        )?;
        put(
            gg("attn_k"),
            rows(weight(&n.k, &[kvd, h])?, s.num_kv_heads)?,
            matrix,
        )?;
        put(gg("attn_v"), weight(&n.v, &[kvd, h])?, matrix)?;
        put(gg("attn_output"), weight(&n.o, &[h, qd])?, matrix)?;
        if s.qkv_bias {
            for (gguf, hf, len) in [
                ("attn_q", &n.q, qd),
                ("attn_k", &n.k, kvd),
                ("attn_v", &n.v, kvd),
            ] {
                put(
                    format!("blk.{l}.{gguf}.bias"),
                    w.tensor(&format!("{hf}.bias"), &[len])?,
                    GgmlDType::F32,
                )?;
            }
        }
        if s.qk_norm {
            put(gg("attn_q_norm"), weight(&n.q_norm, &[hd])?, GgmlDType::F32)?;
            put(gg("attn_k_norm"), weight(&n.k_norm, &[hd])?, GgmlDType::F32)?;
        }
        match s.experts {
            // One matrix per expert under llama.cpp's older names: mistral.rs 0.8.1 mis-shapes
            // the stacked `ffn_*_exps` tensors.
            Some(experts) => {
                put(
                    gg("ffn_gate_inp"),
                    weight(&n.router, &[experts.count, h])?,
                    GgmlDType::F32,
                )?;
                for e in 0..experts.count {
                    let [gate, up, down] = n.expert(e);
                    put(
                        gg(&format!("ffn_gate.{e}")),
                        weight(&gate, &[i, h])?,
                        matrix,
                    )?;
                    put(gg(&format!("ffn_up.{e}")), weight(&up, &[i, h])?, matrix)?;
                    put(
                        gg(&format!("ffn_down.{e}")),
                        weight(&down, &[h, i])?,
                        matrix,
                    )?;
                }
            }
            None => {
                put(gg("ffn_gate"), weight(&n.gate, &[i, h])?, matrix)?;
                put(gg("ffn_up"), weight(&n.up, &[i, h])?, matrix)?;
                put(gg("ffn_down"), weight(&n.down, &[h, i])?, matrix)?;
            }
        }
    }
    let u32v = |v: usize| gguf_file::Value::U32(v as u32);
    let key = |k: &str| format!("{arch}.{k}");
    let mut meta: Vec<(String, gguf_file::Value)> = vec![
        (
            "general.architecture".into(),
            gguf_file::Value::String(arch.into()),
        ),
        (
            "general.name".into(),
            gguf_file::Value::String(
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
        ),
        (key("context_length"), u32v(s.max_position_embeddings)),
        (key("embedding_length"), u32v(h)),
        (key("block_count"), u32v(s.num_layers)),
        (key("feed_forward_length"), u32v(i)),
        (key("attention.head_count"), u32v(s.num_heads)),
        (key("attention.head_count_kv"), u32v(s.num_kv_heads)),
        (key("attention.key_length"), u32v(hd)),
        (key("attention.value_length"), u32v(hd)),
        (key("rope.dimension_count"), u32v(hd)),
        (
            key("attention.layer_norm_rms_epsilon"),
            gguf_file::Value::F32(s.rms_norm_eps as f32),
        ),
        (
            key("rope.freq_base"),
            gguf_file::Value::F32(s.rope_theta as f32),
        ),
    ];
    if let Some(experts) = s.experts {
        meta.push((key("expert_count"), u32v(experts.count)));
        meta.push((key("expert_used_count"), u32v(experts.top_k)));
    }
    meta.extend(tokenizer_metadata(dir)?);
    let io =
        |e: std::io::Error| EngineError::Internal(format!("cannot write {}: {e}", out.display()));
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).map_err(io)?);
    let meta_refs: Vec<(&str, &gguf_file::Value)> =
        meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs)?;
    std::io::Write::flush(&mut file).map_err(io)?;
    Ok(())
}

/// Hugging Face's q/k rows pair element i of a head with i + head_dim/2 (rotate-half); GGUF's
/// llama pairs 2i with 2i + 1. Row `half * hd/2 + i` of each head moves to `2i + half`.
fn interleave_rotary(w: &Tensor, heads: usize, hd: usize) -> Result<Tensor, EngineError> {
    let cols = w.dim(1)?;
    Ok(w.reshape((heads, 2, hd / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((heads * hd, cols))?)
}

/// The byte-level BPE tokenizer as GGUF's `gpt2` model: tokens by id, their types (3 for
/// added special tokens), merges, BOS/EOS, and the chat template.
fn tokenizer_metadata(dir: &Path) -> Result<Vec<(String, gguf_file::Value)>, EngineError> {
    let read = |f: &str| -> Result<Value, EngineError> {
        let text = std::fs::read_to_string(dir.join(f))
            .map_err(|e| EngineError::load(format!("cannot read {f}: {e}")))?;
        serde_json::from_str(&text).map_err(|e| EngineError::load(format!("invalid {f}: {e}")))
    };
    let tok = read("tokenizer.json")?;
    if tok["model"]["type"].as_str() != Some("BPE") {
        return Err(unsupported("a tokenizer other than BPE"));
    }
    let vocab = tok["model"]["vocab"]
        .as_object()
        .ok_or_else(|| EngineError::load("tokenizer.json has no vocab"))?;
    let mut tokens = vec![String::new(); vocab.len()];
    let mut types = vec![1i32; vocab.len()];
    for (t, id) in vocab {
        if let Some(slot) = id.as_u64().and_then(|id| tokens.get_mut(id as usize)) {
            *slot = t.clone();
        }
    }
    for added in tok["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) {
            let id = id as usize;
            if id >= tokens.len() {
                tokens.resize(id + 1, String::new());
                types.resize(id + 1, 1);
            }
            tokens[id] = content.to_string();
            if added["special"].as_bool() == Some(true) {
                types[id] = 3;
            }
        }
    }
    let merges: Vec<gguf_file::Value> = tok["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Value::String(s) => Some(s.clone()),
            Value::Array(pair) => Some(format!(
                "{} {}",
                pair.first()?.as_str()?,
                pair.get(1)?.as_str()?
            )),
            _ => None,
        })
        .map(gguf_file::Value::String)
        .collect();
    let id_of = |t: &str| tokens.iter().position(|x| x == t).map(|i| i as u32);
    let config = read("tokenizer_config.json").unwrap_or(Value::Null);
    let named = |k: &str| match &config[k] {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    };
    let mut meta = vec![
        (
            "tokenizer.ggml.model".to_string(),
            gguf_file::Value::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            gguf_file::Value::Array(
                tokens
                    .iter()
                    .cloned()
                    .map(gguf_file::Value::String)
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            gguf_file::Value::Array(types.into_iter().map(gguf_file::Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            gguf_file::Value::Array(merges),
        ),
    ];
    for (key, name) in [
        ("bos", "bos_token"),
        ("eos", "eos_token"),
        ("padding", "pad_token"),
    ] {
        if let Some(id) = named(name).and_then(|t| id_of(&t)) {
            meta.push((
                format!("tokenizer.ggml.{key}_token_id"),
                gguf_file::Value::U32(id),
            ));
        }
    }
    if let Some(add) = config["add_bos_token"].as_bool() {
        meta.push((
            "tokenizer.ggml.add_bos_token".into(),
            gguf_file::Value::Bool(add),
        ));
    }
    if let Some(template) = config["chat_template"].as_str() {
        meta.push((
            "tokenizer.chat_template".into(),
            gguf_file::Value::String(template.to_string()),
        ));
    }
    Ok(meta)
}
