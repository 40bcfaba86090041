//! A request's answer from the engine: admission within the tenant's limits, submitting its
//! prompts, merging their event streams (choice indices offset) into [`AnswerEvent`]s, token
//! accounting as the engine generates, and reading the tokens as [`ReplyEvent`]s.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::{self, SelectAll, Stream, StreamExt};
use rosetta_engine::{
    ChoiceDelta, EngineError, EventStream, FinishReason, GenerateEvent, GenerateRequest,
    GeneratedToken, Usage,
};

use super::authentication::Caller;
use crate::access::AccessError;
use crate::assistant::{OutputParser, Piece};
use crate::metrics::{GenerationMeasure, RequestFacts};
use crate::ratelimit::{Admission, RateState};
use crate::registry::LocalModel;
use crate::reply::{Finish, ReplyEvent, Step, TokenLogprob, TopLogprob};
use crate::state::AppState;

/// Gives the requests the caller's scheduling tier and tenant, and admits them within the
/// tenant's limits, reserving their worst case: prompt tokens plus `n × max_tokens`.
pub async fn admit(
    state: &AppState,
    caller: &Caller,
    model: &LocalModel,
    requests: &mut [GenerateRequest],
) -> Result<Admission, AccessError> {
    let tenant: Arc<str> = Arc::from(caller.scheduling_tenant());
    for r in requests.iter_mut() {
        r.priority = caller.priority();
        r.tenant = Some(tenant.clone());
    }
    let tokens = requests.iter().fold(0u64, |sum, r| {
        let most = (r.params.n as u64).saturating_mul(r.max_tokens as u64);
        sum.saturating_add(r.prompt.len() as u64)
            .saturating_add(most)
    });
    state
        .access()
        .admit(&caller.principal, &model.id, tokens)
        .await
}

/// Settles the tenant's token reservation when the request ends or its client leaves: the
/// prompt plus every token the engine generated, read by the client or not (the engine
/// counts them as it makes them). Recorded just before the admission itself settles.
struct Settlement {
    admission: Admission,
    prompt_tokens: u64,
    generated: Vec<Arc<AtomicU64>>,
}

impl Drop for Settlement {
    fn drop(&mut self) {
        let generated: u64 = self
            .generated
            .iter()
            .map(|g| g.load(Ordering::Relaxed))
            .sum();
        self.admission
            .record_usage(self.prompt_tokens.saturating_add(generated));
    }
}

/// Submits every prompt to the model's engine and merges their events; the admission lives
/// as long as the stream and settles to what the engine generated when the stream ends or is
/// dropped (client gone).
pub fn submit_admitted(
    model: &LocalModel,
    requests: Vec<GenerateRequest>,
    admission: Admission,
    hold: impl Send + 'static,
    mut measure: GenerationMeasure,
    facts: &RequestFacts,
) -> Result<impl Stream<Item = AnswerEvent> + Send, EngineError> {
    let prompt_tokens: u64 = requests.iter().map(|r| r.prompt.len() as u64).sum();
    let n = requests.first().map_or(1, |r| r.params.n);
    let streams = match requests
        .into_iter()
        .map(|r| model.engine.submit(r))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(streams) => streams,
        Err(e) => {
            // Another replica may take it: then that attempt is the one measured.
            if e.is_retryable() {
                measure.discard();
            } else {
                measure.failed(error_type(&e));
            }
            return Err(e);
        }
    };
    let settlement = Settlement {
        admission,
        prompt_tokens,
        generated: streams.iter().map(EventStream::generated_tokens).collect(),
    };
    let times = streams.first().and_then(EventStream::times);
    facts.set_engine_times(times.clone());
    measure.engine_times(times);
    let items = merge(streams, n);
    Ok(items.map(move |item| {
        // Both live as long as the stream.
        let _ = (&hold, &settlement);
        match &item {
            AnswerEvent::Delta(d) => {
                // A token, or text from an engine that streams text only (mistral.rs).
                if d.token.is_some() || !d.text.is_empty() {
                    measure.token(std::time::Instant::now());
                }
                if let Some(reason) = d.finish_reason {
                    measure.finished(reason.as_str());
                }
            }
            AnswerEvent::Done(u) => {
                measure.usage(u.prompt_tokens as u64, u.completion_tokens as u64);
            }
            AnswerEvent::Error(e) => measure.failed(error_type(e)),
        }
        item
    }))
}

/// `error.type` of an engine error.
pub fn error_type(e: &EngineError) -> &'static str {
    match e {
        EngineError::Load(_) => "load",
        EngineError::InvalidRequest(_) => "invalid_request",
        EngineError::Overloaded(_) => "overloaded",
        EngineError::Internal(_) => "internal",
        EngineError::DeadlineExceeded => "deadline_exceeded",
        EngineError::Stalled(_) => "stalled",
        EngineError::Shutdown => "shutdown",
    }
}

/// Adds the `x-ratelimit-*` headers of an admitted request to its response.
pub fn with_rate_headers(
    mut resp: axum::response::Response,
    state: RateState,
) -> axum::response::Response {
    super::ratelimit_headers::insert(resp.headers_mut(), state);
    resp
}

/// What an endpoint sees of a running request.
#[derive(Debug)]
pub enum AnswerEvent {
    Delta(ChoiceDelta),
    /// Every prompt's every choice has finished; usage summed over them.
    Done(Usage),
    Error(EngineError),
}

type Part = Pin<Box<dyn Stream<Item = PromptEvent> + Send>>;

enum PromptEvent {
    Delta(ChoiceDelta),
    Done(Usage),
    Error(EngineError),
}

/// Merges the event streams of a request's prompts (each with `n` choices) into one,
/// offsetting choice indices. The engine cancels every prompt if the stream is dropped.
fn merge(streams: Vec<EventStream>, n: usize) -> impl Stream<Item = AnswerEvent> + Send {
    let mut parts: SelectAll<Part> = SelectAll::new();
    let count = streams.len();
    for (i, rx) in streams.into_iter().enumerate() {
        let base = i * n;
        // Each part ends after its Done or error; a channel that closes before Done means
        // the engine went away.
        let part = stream::unfold(Some(rx), move |rx| async move {
            let mut rx = rx?;
            let ev = match rx.recv().await {
                Some(Ok(GenerateEvent::Delta(mut d))) => {
                    d.index += base;
                    return Some((PromptEvent::Delta(d), Some(rx)));
                }
                Some(Ok(GenerateEvent::Done(u))) => PromptEvent::Done(u),
                Some(Err(e)) => PromptEvent::Error(e),
                None => PromptEvent::Error(EngineError::Internal(
                    "the engine stopped before the request finished".into(),
                )),
            };
            Some((ev, None))
        });
        parts.push(Box::pin(part));
    }
    struct State {
        parts: SelectAll<Part>,
        remaining: usize,
        usage: Usage,
        finished: bool,
    }
    let state = State {
        parts,
        remaining: count,
        usage: Usage::default(),
        finished: false,
    };
    stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        loop {
            match st.parts.next().await {
                Some(PromptEvent::Delta(d)) => return Some((AnswerEvent::Delta(d), st)),
                Some(PromptEvent::Done(u)) => {
                    st.usage.prompt_tokens += u.prompt_tokens;
                    st.usage.completion_tokens += u.completion_tokens;
                    st.remaining -= 1;
                    if st.remaining == 0 {
                        st.finished = true;
                        return Some((AnswerEvent::Done(st.usage), st));
                    }
                }
                Some(PromptEvent::Error(e)) => {
                    st.finished = true;
                    return Some((AnswerEvent::Error(e), st));
                }
                None => return None,
            }
        }
    })
}

/// Reads the engine's token events as replies: each choice's text through its output
/// parser, its tokens' logprobs as text (with `top` alternatives, when asked for), and
/// `tool_calls` as the end of a choice that called a tool and stopped by itself.
pub fn replies(
    items: impl Stream<Item = AnswerEvent> + Send + 'static,
    model: Arc<LocalModel>,
    mut parsers: Vec<OutputParser>,
    top: Option<usize>,
) -> impl Stream<Item = ReplyEvent> + Send + 'static {
    let mut called = vec![false; parsers.len()];
    items.filter_map(move |item| {
        let event = match item {
            AnswerEvent::Delta(d) => {
                let logprobs = match top {
                    Some(k) => d
                        .token
                        .iter()
                        .map(|t| token_logprob(&model, t, k))
                        .collect(),
                    None => Vec::new(),
                };
                match (parsers.get_mut(d.index), called.get_mut(d.index)) {
                    (Some(parser), Some(called)) => {
                        let mut pieces = parser.push(&d.text);
                        if d.finish_reason.is_some() {
                            pieces.extend(parser.finish());
                        }
                        *called |= pieces.iter().any(|p| matches!(p, Piece::Call { .. }));
                        let finish = d.finish_reason.map(|f| match f {
                            FinishReason::Stop if *called => Finish::ToolCalls,
                            FinishReason::Stop => Finish::Stop,
                            FinishReason::Length => Finish::Length,
                        });
                        Some(ReplyEvent::Step(Step {
                            index: d.index,
                            pieces,
                            logprobs,
                            finish,
                        }))
                    }
                    _ => None,
                }
            }
            AnswerEvent::Done(usage) => Some(ReplyEvent::Done(usage)),
            AnswerEvent::Error(e) => Some(ReplyEvent::Error(e.into())),
        };
        futures::future::ready(event)
    })
}

/// A generated token's logprob and its `k` likeliest alternatives, as text.
fn token_logprob(model: &LocalModel, t: &GeneratedToken, k: usize) -> TokenLogprob {
    let (token, bytes) = token_text(model, t.id);
    TokenLogprob {
        token,
        bytes,
        logprob: t.logprob.unwrap_or(0.0),
        top: t
            .top_logprobs
            .iter()
            .take(k)
            .map(|&(id, logprob)| {
                let (token, bytes) = token_text(model, id);
                TopLogprob {
                    token,
                    bytes,
                    logprob,
                }
            })
            .collect(),
    }
}

/// Unix seconds, for `created`.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub use crate::ids::new_id;

/// Text of a token for logprobs (lossy where a token is part of a character), and its bytes.
fn token_text(model: &LocalModel, id: u32) -> (String, Vec<u8>) {
    let bytes = model.tokenizer.token_bytes(id).to_vec();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}
