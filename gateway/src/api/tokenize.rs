//! POST /tokenize and /detokenize, shaped like vLLM's.

use axum::extract::State;
use axum::{Extension, Json};

use super::caller::Caller;
use super::chat::{chat_prompt, parse_messages};
use super::error::ApiError;
use super::extract::OpenAiJson;
use super::types::{DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse};
use crate::state::AppState;

pub async fn tokenize(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    OpenAiJson(req): OpenAiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let model = state.model(&req.model)?;
    state
        .access()
        .authorize(&caller.principal, &model.id, caller.request_id())?;
    let tokens = match (&req.prompt, &req.messages) {
        (Some(p), None) => model
            .tokenizer
            .encode(p, req.add_special_tokens.unwrap_or(true))?,
        (None, Some(messages)) => chat_prompt(
            &model,
            &parse_messages(messages)?,
            req.add_generation_prompt.unwrap_or(true),
        )?,
        _ => {
            return Err(ApiError::invalid(
                "Give exactly one of 'prompt' or 'messages'.",
            ))
        }
    };
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        max_model_len: model.max_context,
        tokens,
    }))
}

pub async fn detokenize(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    OpenAiJson(req): OpenAiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let model = state.model(&req.model)?;
    state
        .access()
        .authorize(&caller.principal, &model.id, caller.request_id())?;
    if let Some(bad) = req
        .tokens
        .iter()
        .find(|&&t| t as usize >= model.tokenizer.vocab_size())
    {
        return Err(ApiError::invalid_param(
            "tokens",
            format!(
                "Invalid token id {bad}: the vocabulary has {} tokens.",
                model.tokenizer.vocab_size()
            ),
        ));
    }
    Ok(Json(DetokenizeResponse {
        prompt: model.tokenizer.decode(&req.tokens, false)?,
    }))
}
