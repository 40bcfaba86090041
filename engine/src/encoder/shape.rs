//! An encoder's shape, read from its config.json.

use serde_json::Value;

use crate::EngineError;

/// The `model_type`s the encoder path serves.
const ENCODER_TYPES: &[&str] = &["xlm-roberta"];

/// Whether a config.json describes an encoder this engine serves as an embedding model.
pub fn is_encoder(config: &Value) -> bool {
    config["model_type"]
        .as_str()
        .is_some_and(|t| ENCODER_TYPES.contains(&t))
}

/// What the encoder's forward pass needs from config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderShape {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    /// Positions count from `pad_token_id + 1` (XLM-RoBERTa's offset).
    pub pad_token_id: usize,
    pub activation: Activation,
    /// Matryoshka-trained: an embedding may be cut to its first `dimensions` values. `Some`
    /// empty: any length; else only these lengths.
    pub matryoshka: Option<Vec<usize>>,
}

/// The MLP's activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU.
    Gelu,
    /// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
}

impl EncoderShape {
    pub fn from_json(c: &Value) -> Result<Self, EngineError> {
        let model_type = c["model_type"].as_str().unwrap_or("?");
        if !ENCODER_TYPES.contains(&model_type) {
            return Err(EngineError::load(format!(
                "model_type `{model_type}` is not an encoder this engine serves (it serves {})",
                ENCODER_TYPES.join(", ")
            )));
        }
        let n = |k: &str| {
            c[k].as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| EngineError::load(format!("config.json has no `{k}`")))
        };
        let activation = match c["hidden_act"].as_str().unwrap_or("gelu") {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(EngineError::load(format!(
                    "hidden_act `{other}` is not supported for encoders"
                )))
            }
        };
        if let Some(kind) = c["position_embedding_type"]
            .as_str()
            .filter(|k| *k != "absolute")
        {
            return Err(EngineError::load(format!(
                "position_embedding_type `{kind}` is not supported; only `absolute`"
            )));
        }
        let matryoshka = match (&c["matryoshka_dimensions"], &c["is_matryoshka"]) {
            (Value::Array(dims), _) => Some(
                dims.iter()
                    .filter_map(|d| d.as_u64())
                    .map(|d| d as usize)
                    .collect(),
            ),
            (_, Value::Bool(true)) => Some(Vec::new()),
            _ => None,
        };
        let shape = Self {
            hidden_size: n("hidden_size")?,
            num_layers: n("num_hidden_layers")?,
            num_heads: n("num_attention_heads")?,
            intermediate_size: n("intermediate_size")?,
            vocab_size: n("vocab_size")?,
            max_position_embeddings: n("max_position_embeddings")?,
            type_vocab_size: c["type_vocab_size"].as_u64().unwrap_or(1) as usize,
            layer_norm_eps: c["layer_norm_eps"].as_f64().unwrap_or(1e-5) as f32,
            pad_token_id: c["pad_token_id"].as_u64().unwrap_or(1) as usize,
            activation,
            matryoshka,
        };
        if shape.num_heads == 0 || !shape.hidden_size.is_multiple_of(shape.num_heads) {
            return Err(EngineError::load(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                shape.hidden_size, shape.num_heads
            )));
        }
        if shape.max_position_embeddings <= shape.pad_token_id + 1 {
            return Err(EngineError::load(
                "max_position_embeddings leaves no position after the padding offset",
            ));
        }
        Ok(shape)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// The longest input, in tokens (positions start after the padding offset).
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings - self.pad_token_id - 1
    }
}
