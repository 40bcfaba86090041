//! POST /tokenize and /detokenize, shaped like vLLM's.

use axum::extract::State;
use axum::{Extension, Json};

use super::authentication::Caller;
use super::chat::{chat_prompt, parse_messages};
use super::error::ApiError;
use super::extract::OpenAiJson;
use super::params;
use super::tool_params;
use super::types::{DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse};
use crate::assistant::Toolset;
use crate::state::AppState;

pub async fn tokenize(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    OpenAiJson(req): OpenAiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let limits = state.request_limits();
    let messages = req
        .messages
        .as_deref()
        .map(|m| parse_messages(m, limits))
        .transpose()?;
    // As vLLM's: the tools and template variables a chat request would render with.
    let tools = tool_params::toolset(
        req.tools.as_deref(),
        None,
        None,
        tool_params::Shape::Chat,
        limits,
    )?;
    let tools = tools.as_ref().and_then(Toolset::for_template);
    let model = state.model(&req.model)?;
    state
        .access()
        .authorize(&caller.principal, &model.id, caller.request_id())?;
    // Counts against the tenant's requests per minute (and concurrency while it runs).
    let _admission = state
        .access()
        .admit(&caller.principal, &model.id, 0)
        .await?;
    let tokens = match (&req.prompt, &messages) {
        (Some(p), None) => model
            .tokenizer
            .encode(p, req.add_special_tokens.unwrap_or(true))?,
        (None, Some(messages)) => chat_prompt(
            &model,
            messages,
            &rosetta_engine::text::RenderOptions {
                add_generation_prompt: req.add_generation_prompt.unwrap_or(true),
                tools: tools.as_deref(),
                kwargs: req.chat_template_kwargs.as_ref(),
            },
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
    params::at_most(
        "tokens",
        "token ids",
        req.tokens.len(),
        state.request_limits().max_prompt_tokens,
    )?;
    let model = state.model(&req.model)?;
    state
        .access()
        .authorize(&caller.principal, &model.id, caller.request_id())?;
    let _admission = state
        .access()
        .admit(&caller.principal, &model.id, 0)
        .await?;
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
