//! POST /v1/embeddings: OpenAI's embeddings request parsed and checked in full, and the
//! model's vectors rendered as floats or base64 (little-endian f32, what the SDKs ask for
//! by default), cut to `dimensions` where the model was trained for it.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use rosetta_config::RequestLimits;
use rosetta_engine::encoder::{normalize, Embeddings};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::authentication::Caller;
use super::error::ApiError;
use super::extract::OpenAiJsonRaw;
use super::pipeline::{self, Embedding, Work};
use super::prompts::{self, Prompts};
use super::upstream_body::{self, UpstreamRequest};
use crate::registry::LocalModel;
use crate::state::AppState;

/// OpenAI's embeddings request; other fields (`user`) are ignored, as OpenAI-compatible
/// servers do.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: Value,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<u64>,
}

/// How the vectors are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Float,
    Base64,
}

/// An embeddings request checked in full before any other work.
#[derive(Debug, Clone)]
pub struct EmbeddingCall {
    pub model: String,
    pub inputs: Prompts,
    pub encoding: Encoding,
    pub dimensions: Option<usize>,
}

pub async fn embeddings(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    OpenAiJsonRaw(req, raw): OpenAiJsonRaw<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    let call = validate(req, state.request_limits())?;
    pipeline::run(&state, &caller, &headers, Work::Embed(&call), &raw).await
}

pub fn validate(req: EmbeddingRequest, limits: &RequestLimits) -> Result<EmbeddingCall, ApiError> {
    let inputs = prompts::parse("input", &req.input, limits, |count| {
        if count > limits.max_embedding_inputs {
            return Err(ApiError::invalid_param(
                "input",
                format!(
                    "Invalid 'input': {count} inputs, more than this server's limit of {} per request.",
                    limits.max_embedding_inputs
                ),
            )
            .with_code("request_too_large"));
        }
        Ok(())
    })?;
    let empty = match &inputs {
        Prompts::Texts(t) => t.iter().position(String::is_empty),
        Prompts::Tokens(t) => t.iter().position(Vec::is_empty),
    };
    if let Some(i) = empty {
        return Err(ApiError::invalid_param(
            "input",
            format!("Invalid 'input[{i}]': an input must not be empty."),
        ));
    }
    let encoding = match req.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "encoding_format",
                format!("Invalid 'encoding_format': `{other}`; expected `float` or `base64`."),
            ))
        }
    };
    let dimensions = match req.dimensions {
        Some(0) => {
            return Err(ApiError::invalid_param(
                "dimensions",
                "Invalid 'dimensions': it must be at least 1.",
            ))
        }
        Some(d) => Some(usize::try_from(d).unwrap_or(usize::MAX)),
        None => None,
    };
    Ok(EmbeddingCall {
        model: req.model,
        inputs,
        encoding,
        dimensions,
    })
}

impl Embedding for EmbeddingCall {
    fn model(&self) -> &str {
        &self.model
    }

    fn upstream(&self) -> UpstreamRequest {
        upstream_body::embeddings(
            &self.inputs,
            self.encoding == Encoding::Base64,
            self.dimensions,
        )
    }

    fn language_text(&self) -> String {
        match &self.inputs {
            Prompts::Texts(t) => t.join("\n"),
            Prompts::Tokens(_) => String::new(),
        }
    }

    fn inputs(&self, model: &LocalModel) -> Result<Vec<Vec<u32>>, ApiError> {
        let tokens = match &self.inputs {
            // With the model's own framing (`<s> ... </s>`), as sentence-transformers reads.
            Prompts::Texts(texts) => texts
                .iter()
                .map(|t| model.tokenizer.encode(t, true))
                .collect::<Result<Vec<_>, _>>()?,
            Prompts::Tokens(ids) => ids.clone(),
        };
        for (i, t) in tokens.iter().enumerate() {
            if t.len() > model.max_context {
                return Err(ApiError::invalid_param(
                    "input",
                    format!(
                        "This model's maximum context length is {} tokens, however 'input[{i}]' has {} tokens. Please shorten it.",
                        model.max_context,
                        t.len()
                    ),
                )
                .with_code("context_length_exceeded"));
            }
            if let Some(bad) = t.iter().find(|&&id| id as usize >= model.vocab_size) {
                return Err(ApiError::invalid_param(
                    "input",
                    format!(
                        "Invalid token id {bad} in 'input[{i}]': the vocabulary has {} tokens.",
                        model.vocab_size
                    ),
                ));
            }
        }
        Ok(tokens)
    }

    fn check(&self, model: &LocalModel) -> Result<(), ApiError> {
        let (Some(d), Some(spec)) = (self.dimensions, &model.embedding) else {
            return Ok(());
        };
        let refuse = |why: String| Err(ApiError::invalid_param("dimensions", why));
        match &spec.matryoshka {
            _ if d == spec.dimensions => Ok(()),
            _ if d > spec.dimensions => refuse(format!(
                "Invalid 'dimensions': {d} is more than the {} of `{}`.",
                spec.dimensions, model.id
            )),
            None => refuse(format!(
                "`{}` was not trained to be shortened (Matryoshka); 'dimensions' may only be {}.",
                model.id, spec.dimensions
            )),
            Some(allowed) if !allowed.is_empty() && !allowed.contains(&d) => refuse(format!(
                "Invalid 'dimensions': `{}` may be shortened to {allowed:?} only.",
                model.id
            )),
            Some(_) => Ok(()),
        }
    }

    fn render(&self, model: &LocalModel, embeddings: Embeddings) -> Response {
        let normalized = model.embedding.as_ref().is_some_and(|e| e.normalized);
        let data = embeddings
            .vectors
            .into_iter()
            .enumerate()
            .map(|(index, mut v)| {
                if let Some(d) = self.dimensions.filter(|&d| d < v.len()) {
                    // A shortened vector is normalised again, as OpenAI's are.
                    v.truncate(d);
                    if normalized {
                        normalize(&mut v);
                    }
                }
                EmbeddingObject {
                    object: "embedding",
                    index,
                    embedding: match self.encoding {
                        Encoding::Float => EmbeddingValues::Float(v),
                        Encoding::Base64 => EmbeddingValues::Base64(base64_f32(&v)),
                    },
                }
            })
            .collect();
        let tokens = embeddings.prompt_tokens;
        Json(EmbeddingList {
            object: "list",
            data,
            model: model.id.clone(),
            usage: EmbeddingUsage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
        })
        .into_response()
    }
}

/// The vector's f32 values, little-endian, in standard base64 (what the SDKs decode).
fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Debug, Serialize)]
struct EmbeddingList {
    object: &'static str,
    data: Vec<EmbeddingObject>,
    model: String,
    usage: EmbeddingUsage,
}

#[derive(Debug, Serialize)]
struct EmbeddingObject {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValues,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum EmbeddingValues {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
struct EmbeddingUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<EmbeddingCall, ApiError> {
        validate(
            serde_json::from_value(body).unwrap(),
            &RequestLimits::default(),
        )
    }

    #[test]
    fn every_input_shape_is_read() {
        let one = parse(json!({"model": "e", "input": "hola"})).unwrap();
        assert!(matches!(&one.inputs, Prompts::Texts(t) if t == &["hola"]));
        assert_eq!(one.encoding, Encoding::Float);
        let many =
            parse(json!({"model": "e", "input": ["a", "b"], "encoding_format": "base64"})).unwrap();
        assert!(matches!(&many.inputs, Prompts::Texts(t) if t.len() == 2));
        assert_eq!(many.encoding, Encoding::Base64);
        let ids = parse(json!({"model": "e", "input": [0, 5, 2]})).unwrap();
        assert!(matches!(&ids.inputs, Prompts::Tokens(t) if t == &[vec![0, 5, 2]]));
        let lists =
            parse(json!({"model": "e", "input": [[0, 5, 2], [0, 2]], "dimensions": 8})).unwrap();
        assert!(matches!(&lists.inputs, Prompts::Tokens(t) if t.len() == 2));
        assert_eq!(lists.dimensions, Some(8));
    }

    #[test]
    fn bad_requests_name_their_field() {
        let param = |body: Value| parse(body).unwrap_err().body.param;
        for (body, field) in [
            (json!({"model": "e", "input": ""}), "input"),
            (json!({"model": "e", "input": []}), "input"),
            (json!({"model": "e", "input": ["a", ""]}), "input"),
            (json!({"model": "e", "input": [[1], []]}), "input"),
            (json!({"model": "e", "input": ["a", 3]}), "input"),
            (json!({"model": "e", "input": {"text": "a"}}), "input"),
            (json!({"model": "e", "input": [-1]}), "input"),
            (
                json!({"model": "e", "input": "a", "encoding_format": "int8"}),
                "encoding_format",
            ),
            (
                json!({"model": "e", "input": "a", "dimensions": 0}),
                "dimensions",
            ),
        ] {
            assert_eq!(param(body.clone()).as_deref(), Some(field), "{body}");
        }
        let too_many = vec!["x"; 2049];
        let e = parse(json!({"model": "e", "input": too_many})).unwrap_err();
        assert_eq!(e.body.code, Some("request_too_large"));
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let b = base64_f32(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
    }
}
