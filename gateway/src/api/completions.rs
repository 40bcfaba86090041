//! POST /v1/completions

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::{Stream, StreamExt};
use rosetta_engine::GeneratedToken;
use serde_json::Value;

use super::caller::Caller;
use super::dispatch::{dispatch, Call};
use super::error::ApiError;
use super::extract::OpenAiJsonRaw;
use super::generate::{
    admit, collect, new_id, now_secs, submit_admitted, token_text, with_rate_headers, Item,
};
use super::params;
use super::sse::{self, json_event};
use super::types::*;
use crate::pool::InFlight;
use crate::registry::ServedModel;
use crate::state::AppState;

/// OpenAI's default for the legacy endpoint.
const DEFAULT_MAX_TOKENS: i64 = 16;

/// `prompt` may be a string, a list of strings, a list of token ids or a list of those.
fn parse_prompts(model: &ServedModel, prompt: &Value) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = || {
        ApiError::invalid_param("prompt", "Invalid 'prompt': expected a string, an array of strings, an array of token ids, or an array of token-id arrays.")
    };
    let tokens = |v: &[Value]| -> Result<Vec<u32>, ApiError> {
        v.iter()
            .map(|t| {
                t.as_u64()
                    .filter(|&id| (id as usize) < model.vocab_size)
                    .map(|id| id as u32)
                    .ok_or_else(|| {
                        ApiError::invalid_param(
                            "prompt",
                            format!(
                                "Invalid token id {t} in 'prompt' (the vocabulary has {} tokens).",
                                model.vocab_size
                            ),
                        )
                    })
            })
            .collect()
    };
    let prompts = match prompt {
        Value::String(s) => vec![model.tokenizer.encode(s, true)?],
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::invalid_param(
                "prompt",
                "'prompt' must not be empty.",
            ))
        }
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|p| {
                    p.as_str()
                        .ok_or_else(bad)
                        .and_then(|s| Ok(model.tokenizer.encode(s, true)?))
                })
                .collect::<Result<_, _>>()?,
            Value::Number(_) => vec![tokens(items)?],
            Value::Array(_) => items
                .iter()
                .map(|p| p.as_array().ok_or_else(bad).and_then(|a| tokens(a)))
                .collect::<Result<_, _>>()?,
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    Ok(prompts)
}

pub async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    OpenAiJsonRaw(req, raw): OpenAiJsonRaw<CompletionRequest>,
) -> Result<Response, ApiError> {
    let text = prompt_text(&req.prompt);
    dispatch(
        &state,
        &caller,
        &headers,
        Call::Completion(req),
        &raw,
        &text,
    )
    .await
}

/// The prompt's text (token-id prompts have none to detect).
fn prompt_text(prompt: &Value) -> String {
    match prompt {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Runs a completion request on this process's engine for `model`.
pub async fn run_local(
    state: &AppState,
    caller: &Caller,
    model: Arc<ServedModel>,
    req: CompletionRequest,
    hold: InFlight,
) -> Result<Response, ApiError> {
    tracing::debug!(model = %model.id, user = req.sampling.user.as_deref().unwrap_or(""), "completion");
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_param(
            "suffix",
            "'suffix' is not supported by this model.",
        ));
    }
    let n = req.sampling.n.unwrap_or(1);
    if req.best_of.is_some_and(|b| b != n) {
        return Err(ApiError::invalid_param(
            "best_of",
            "'best_of' other than 'n' is not supported.",
        ));
    }
    let logprobs = req
        .logprobs
        .map(|k| params::top_logprobs("logprobs", k))
        .transpose()?;
    let echo = req.echo.unwrap_or(false);
    if echo && logprobs.is_some() {
        return Err(ApiError::invalid_param(
            "echo",
            "'echo' together with 'logprobs' is not supported.",
        ));
    }
    let prompts = parse_prompts(&model, &req.prompt)?;
    let max_tokens = Some(req.sampling.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS));
    let mut requests = Vec::with_capacity(prompts.len());
    let mut echoes = Vec::new();
    let mut gen_flags = (false, false);
    for prompt in prompts {
        if echo {
            echoes.push(model.tokenizer.decode(&prompt, true)?);
        }
        let gen = params::generation(&req.sampling, &model, prompt, max_tokens, logprobs)?;
        gen_flags = (gen.stream, gen.include_usage);
        requests.push(gen.request);
    }
    let per_prompt = n as usize;
    let total_choices = per_prompt * requests.len();
    let admission = admit(state, caller, &model, &mut requests)?;
    let rate = admission.state();
    let items = submit_admitted(&model, requests, admission, hold)?;
    let meta = Meta {
        id: new_id("cmpl"),
        created: now_secs(),
        model: model.id.clone(),
        fingerprint: state.fingerprint().to_string(),
        logprobs,
        echoes,
        per_prompt,
    };
    let (stream, include_usage) = gen_flags;
    if stream {
        let events = stream_chunks(items, meta, model, total_choices, include_usage);
        return Ok(with_rate_headers(sse::response(events), rate));
    }
    let (choices, usage) = collect(items, total_choices).await?;
    let body = Completion {
        choices: choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| CompletionChoice {
                index,
                text: format!("{}{}", meta.echo_for(index), c.text),
                logprobs: meta.logprobs.map(|k| {
                    let mut lp = CompletionLogprobs::default();
                    let mut offset = 0;
                    append_logprobs(&mut lp, &model, &c.tokens, k, &mut offset);
                    lp
                }),
                finish_reason: c.finish.map(|f| f.as_str()),
            })
            .collect(),
        usage: Some(Some(usage.into())),
        ..meta.header()
    };
    Ok(with_rate_headers(axum::Json(body).into_response(), rate))
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    logprobs: Option<usize>,
    /// Decoded prompts, when `echo` is set.
    echoes: Vec<String>,
    per_prompt: usize,
}

impl Meta {
    fn echo_for(&self, choice: usize) -> &str {
        self.echoes
            .get(choice / self.per_prompt.max(1))
            .map(String::as_str)
            .unwrap_or("")
    }

    /// A body with this response's identity and no choices or usage yet.
    fn header(&self) -> Completion {
        Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices: Vec::new(),
            usage: None,
        }
    }

    fn chunk(&self, choice: CompletionChoice, include_usage: bool) -> Completion {
        Completion {
            choices: vec![choice],
            usage: include_usage.then_some(None),
            ..self.header()
        }
    }
}

/// Appends tokens in the legacy layout; `offset` is the running character offset of the text.
fn append_logprobs(
    lp: &mut CompletionLogprobs,
    model: &ServedModel,
    tokens: &[GeneratedToken],
    k: usize,
    offset: &mut usize,
) {
    for t in tokens {
        let (text, _) = token_text(model, t.id);
        lp.text_offset.push(*offset);
        *offset += text.chars().count();
        lp.tokens.push(text);
        lp.token_logprobs.push(t.logprob.unwrap_or(0.0));
        let top: HashMap<String, f32> = t
            .top_logprobs
            .iter()
            .take(k)
            .map(|&(id, l)| (token_text(model, id).0, l))
            .collect();
        lp.top_logprobs.push(top);
    }
}

fn stream_chunks(
    items: impl Stream<Item = Item> + Send + 'static,
    meta: Meta,
    model: Arc<ServedModel>,
    choices: usize,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let opening: Vec<Event> = (0..choices)
        .filter(|&i| !meta.echo_for(i).is_empty())
        .map(|index| {
            let choice = CompletionChoice {
                index,
                text: meta.echo_for(index).to_string(),
                logprobs: None,
                finish_reason: None,
            };
            json_event(&meta.chunk(choice, include_usage))
        })
        .collect();
    let mut offsets = vec![0usize; choices];
    let body = items.flat_map(move |item| {
        let events: Vec<Event> = match item {
            Item::Delta(d) => {
                let logprobs = meta.logprobs.map(|k| {
                    let mut lp = CompletionLogprobs::default();
                    if let Some(offset) = offsets.get_mut(d.index) {
                        append_logprobs(&mut lp, &model, d.token.as_slice(), k, offset);
                    }
                    lp
                });
                if d.text.is_empty() && logprobs.is_none() && d.finish_reason.is_none() {
                    Vec::new()
                } else {
                    let choice = CompletionChoice {
                        index: d.index,
                        text: d.text,
                        logprobs,
                        finish_reason: d.finish_reason.map(|f| f.as_str()),
                    };
                    vec![json_event(&meta.chunk(choice, include_usage))]
                }
            }
            Item::Done(usage) => sse::closing(include_usage.then(|| Completion {
                choices: Vec::new(),
                usage: Some(Some(usage.into())),
                ..meta.header()
            })),
            Item::Error(e) => sse::error_closing(&e),
        };
        futures::stream::iter(events.into_iter().map(Ok))
    });
    futures::stream::iter(opening.into_iter().map(Ok)).chain(body)
}
