//! A JSON body extractor whose every failure is an OpenAI error: 413 over the body limit,
//! 400 naming the offending field for malformed JSON, wrong types and missing fields.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::state::AppState;

pub struct OpenAiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for OpenAiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(OpenAiJson)
    }
}

/// The typed body and the bytes it came from: other views of the same body are parsed from
/// them (never a second full copy as a JSON tree; only a remote replica's body is built).
pub struct OpenAiJsonRaw<T>(pub T, pub Bytes);

impl<T: DeserializeOwned> FromRequest<AppState> for OpenAiJsonRaw<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        let typed = parse_json(&bytes)?;
        Ok(OpenAiJsonRaw(typed, bytes))
    }
}

async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let limit = state.max_body_bytes;
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(limit)
        } else {
            ApiError::invalid(format!("Could not read the request body: {e}"))
        }
    })
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "The request body is empty; send a JSON object (Content-Type: application/json).",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let detail = strip_position(&inner.to_string());
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!(
                "We could not parse the JSON body of your request: {detail}. The body must be valid JSON."
            ))
        } else if path == "." || path.is_empty() {
            let e = ApiError::invalid(format!("Invalid request body: {detail}."));
            match missing_field(&detail) {
                Some(field) => e.with_param(field),
                None => e,
            }
        } else {
            ApiError::invalid_param(&path, format!("Invalid value for '{path}': {detail}."))
        }
    })
}

fn missing_field(detail: &str) -> Option<&str> {
    detail.strip_prefix("missing field `")?.split('`').next()
}

/// serde_json appends " at line 1 column 42"; the position means little to API users.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}
