//! Writes a Llama-architecture Hugging Face folder as a GGUF file (llama.cpp's format, read by
//! mistral.rs and llama.cpp): llama.cpp's tensor names and metadata keys, q and k rows
//! reordered for GGUF's interleaved rotary pairs, the byte-level BPE vocabulary and merges, and
//! the matrices in f32, f16, Q8_0 or Q4_K (candle's quantisers; norms stay f32).

use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::config::{MlpKind, ModelShape, NormKind, Positions, RopeScaling};
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
        "GGUF conversion covers Llama-architecture models (RMSNorm, rotary, gated SiLU MLP, no \
         biases) without {what}"
    ))
}

/// Reads the folder `dir` and writes `out`.
pub fn write_gguf(dir: &Path, out: &Path, ty: GgufType) -> Result<(), EngineError> {
    let s = ModelShape::from_file(&dir.join("config.json"))?;
    let checks = [
        (s.experts.is_some(), "experts"),
        (s.qkv_bias || s.o_bias || s.mlp_bias, "biases"),
        (s.qk_norm, "q/k norms"),
        (s.norm != NormKind::Rms, "LayerNorm"),
        (s.parallel_block, "a parallel block"),
        (s.mlp != MlpKind::GatedSilu, "a GELU MLP"),
        (
            s.positions != (Positions::Rope { interleaved: false }),
            "interleaved rotary or ALiBi",
        ),
        (!matches!(s.rope_scaling, RopeScaling::None), "rope scaling"),
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
        w.tensor("model.embed_tokens.weight", &[s.vocab_size, h])?,
        matrix,
    )?;
    put(
        "output_norm.weight".into(),
        w.tensor("model.norm.weight", &[h])?,
        GgmlDType::F32,
    )?;
    if !s.tie_word_embeddings {
        put(
            "output.weight".into(),
            w.tensor("lm_head.weight", &[s.vocab_size, h])?,
            matrix,
        )?;
    }
    for l in 0..s.num_layers {
        let hf = |n: &str| format!("model.layers.{l}.{n}.weight");
        let gg = |n: &str| format!("blk.{l}.{n}.weight");
        put(
            gg("attn_norm"),
            w.tensor(&hf("input_layernorm"), &[h])?,
            GgmlDType::F32,
        )?;
        put(
            gg("ffn_norm"),
            w.tensor(&hf("post_attention_layernorm"), &[h])?,
            GgmlDType::F32,
        )?;
        let q = w.tensor(&hf("self_attn.q_proj"), &[s.num_heads * hd, h])?;
        put(
            gg("attn_q"),
            interleave_rotary(&q, s.num_heads, hd)?,
            matrix,
        )?;
        let k = w.tensor(&hf("self_attn.k_proj"), &[s.num_kv_heads * hd, h])?;
        put(
            gg("attn_k"),
            interleave_rotary(&k, s.num_kv_heads, hd)?,
            matrix,
        )?;
        let v = w.tensor(&hf("self_attn.v_proj"), &[s.num_kv_heads * hd, h])?;
        put(gg("attn_v"), v, matrix)?;
        let o = w.tensor(&hf("self_attn.o_proj"), &[h, s.num_heads * hd])?;
        put(gg("attn_output"), o, matrix)?;
        let i = s.intermediate_size;
        put(
            gg("ffn_gate"),
            w.tensor(&hf("mlp.gate_proj"), &[i, h])?,
            matrix,
        )?;
        put(gg("ffn_up"), w.tensor(&hf("mlp.up_proj"), &[i, h])?, matrix)?;
        put(
            gg("ffn_down"),
            w.tensor(&hf("mlp.down_proj"), &[h, i])?,
            matrix,
        )?;
    }
    let u32v = |v: usize| gguf_file::Value::U32(v as u32);
    let mut meta: Vec<(String, gguf_file::Value)> = vec![
        (
            "general.architecture".into(),
            gguf_file::Value::String("llama".into()),
        ),
        (
            "general.name".into(),
            gguf_file::Value::String(
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
        ),
        (
            "llama.context_length".into(),
            u32v(s.max_position_embeddings),
        ),
        ("llama.embedding_length".into(), u32v(h)),
        ("llama.block_count".into(), u32v(s.num_layers)),
        (
            "llama.feed_forward_length".into(),
            u32v(s.intermediate_size),
        ),
        ("llama.attention.head_count".into(), u32v(s.num_heads)),
        ("llama.attention.head_count_kv".into(), u32v(s.num_kv_heads)),
        ("llama.attention.key_length".into(), u32v(hd)),
        ("llama.attention.value_length".into(), u32v(hd)),
        ("llama.rope.dimension_count".into(), u32v(hd)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            gguf_file::Value::F32(s.rms_norm_eps as f32),
        ),
        (
            "llama.rope.freq_base".into(),
            gguf_file::Value::F32(s.rope_theta as f32),
        ),
    ];
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
