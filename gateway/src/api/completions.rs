//! POST /v1/completions

use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::{Stream, StreamExt};
use rosetta_config::RequestLimits;
use serde_json::Value;

use super::answer::{new_id, now_secs};
use super::authentication::Caller;
use super::error::ApiError;
use super::extract::{parse_json, OpenAiJsonRaw};
use super::params::{self, stated_language};
use super::pipeline::{self, Answer, Generation, Rendered, Work};
use super::prompts::{self, Prompts};
use super::sse::{self, json_event};
use super::types::*;
use super::upstream_body::{self, UpstreamRequest};
use crate::assistant::OutputParser;
use crate::registry::LocalModel;
use crate::reply::{self, Finish, ReplyError, ReplyEvent, TokenLogprob};
use crate::state::AppState;

/// OpenAI's default for the legacy endpoint.
const DEFAULT_MAX_TOKENS: usize = 16;

/// `prompt` may be a string, a list of strings, a list of token ids or a list of those;
/// prompts × n is counted before any is copied.
fn parse_prompts(prompt: &Value, n: usize, limits: &RequestLimits) -> Result<Prompts, ApiError> {
    prompts::parse("prompt", prompt, limits, |count| {
        let choices = count.saturating_mul(n);
        if choices > limits.max_choices {
            return Err(ApiError::invalid_param(
                "prompt",
                format!("Invalid 'prompt': {count} prompts × n = {n} ask for {choices} choices, more than this server's limit of {} per request.", limits.max_choices),
            )
            .with_code("request_too_large"));
        }
        Ok(())
    })
}

pub async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    OpenAiJsonRaw(req, raw): OpenAiJsonRaw<CompletionRequest>,
) -> Result<Response, ApiError> {
    let fields: SamplingFields = parse_json(&raw)?;
    let call = validate(req, &fields, state.request_limits())?;
    pipeline::run(&state, &caller, &headers, Work::Generate(&call), &raw).await
}

/// A completion request checked in full before any other work.
#[derive(Debug, Clone)]
pub struct CompletionCall {
    pub model: String,
    pub prompts: Prompts,
    /// Holds `logprobs` too (`sampling.params.sampling.logprobs`).
    pub sampling: params::Sampling,
    pub echo: bool,
    /// `metadata.language`, unchecked.
    pub stated_language: Option<String>,
}

fn validate(
    req: CompletionRequest,
    fields: &SamplingFields,
    limits: &RequestLimits,
) -> Result<CompletionCall, ApiError> {
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_param(
            "suffix",
            "'suffix' is not supported by this model.",
        ));
    }
    let n = fields.n.unwrap_or(1);
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
    // n's own range is checked by the sampling fields; here only the product matters.
    let n_for_count = usize::try_from(n.max(1)).unwrap_or(usize::MAX);
    let prompts = parse_prompts(&req.prompt, n_for_count, limits)?;
    let max_tokens = Some(fields.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS as i64));
    let sampling = params::validate(fields, limits, max_tokens, logprobs)?;
    Ok(CompletionCall {
        model: req.model,
        prompts,
        sampling,
        echo,
        stated_language: stated_language(fields),
    })
}

impl Generation for CompletionCall {
    fn model(&self) -> &str {
        &self.model
    }

    fn path(&self) -> &'static str {
        "/v1/completions"
    }

    fn stated_language(&self) -> Option<&str> {
        self.stated_language.as_deref()
    }

    /// The prompts' text (token-id prompts have none to detect).
    fn language_text(&self) -> String {
        match &self.prompts {
            Prompts::Texts(t) => t.join("\n"),
            Prompts::Tokens(_) => String::new(),
        }
    }

    fn sampling(&self) -> &params::Sampling {
        &self.sampling
    }

    fn prompt_count(&self) -> usize {
        self.prompts.len()
    }

    fn prompts(&self, model: &LocalModel) -> Result<Vec<Vec<u32>>, ApiError> {
        match &self.prompts {
            Prompts::Texts(texts) => Ok(texts
                .iter()
                .map(|s| model.tokenizer.encode(s, true))
                .collect::<Result<_, _>>()?),
            Prompts::Tokens(ids) => {
                if let Some(&bad) = ids
                    .iter()
                    .flatten()
                    .find(|&&id| id as usize >= model.vocab_size)
                {
                    return Err(ApiError::invalid_param(
                        "prompt",
                        format!(
                            "Invalid token id {bad} in 'prompt' (the vocabulary has {} tokens).",
                            model.vocab_size
                        ),
                    ));
                }
                Ok(ids.clone())
            }
        }
    }

    fn output_parser(&self, _model: &LocalModel) -> OutputParser {
        OutputParser::plain()
    }

    fn echoes(&self) -> bool {
        self.echo
    }

    fn upstream(&self) -> UpstreamRequest {
        upstream_body::completion(&self.prompts, &self.sampling, self.echo)
    }

    fn operation(&self) -> &'static str {
        "text_completion"
    }

    fn render<'a>(&'a self, answer: Answer<'a>) -> Rendered<'a> {
        Box::pin(render(self, answer))
    }
}

/// Completion chunks, or one `text_completion` body.
async fn render(call: &CompletionCall, answer: Answer<'_>) -> Result<Response, ReplyError> {
    let Answer {
        state,
        model,
        echoes,
        replies,
    } = answer;
    let per_prompt = call.sampling.params.n;
    let total_choices = per_prompt * call.prompts.len();
    let id = new_id("cmpl");
    crate::telemetry::attribute(&tracing::Span::current(), "gen_ai.response.id", id.as_str());
    let meta = CompletionIdentity {
        id,
        created: now_secs(),
        model,
        fingerprint: state.fingerprint().to_string(),
        logprobs: call.sampling.params.sampling.logprobs.is_some(),
        echoes,
        per_prompt,
    };
    let (stream, include_usage) = (call.sampling.stream, call.sampling.include_usage);
    if stream {
        let events = stream_chunks(replies, meta, total_choices, include_usage);
        return Ok(sse::response(state.drain(), events));
    }
    let (choices, usage) = reply::collect(replies, total_choices).await?;
    let body = Completion {
        choices: choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| CompletionChoice {
                index,
                text: format!("{}{}", meta.echo_for(index), c.text()),
                logprobs: meta.logprobs.then(|| {
                    let mut lp = CompletionLogprobs::default();
                    let mut offset = 0;
                    append_logprobs(&mut lp, &c.logprobs, &mut offset);
                    lp
                }),
                finish_reason: c.finish.map(Finish::as_str),
            })
            .collect(),
        usage: Some(Some(usage.into())),
        ..meta.header()
    };
    Ok(axum::Json(body).into_response())
}

/// What every chunk or body of one answer repeats, and what echo and logprobs need.
struct CompletionIdentity {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    /// Whether the request asked for logprobs.
    logprobs: bool,
    /// The prompts as text, when `echo` is set and the engine does not echo them itself.
    echoes: Vec<String>,
    per_prompt: usize,
}

impl CompletionIdentity {
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
fn append_logprobs(lp: &mut CompletionLogprobs, tokens: &[TokenLogprob], offset: &mut usize) {
    for t in tokens {
        lp.text_offset.push(*offset);
        *offset += t.token.chars().count();
        lp.tokens.push(t.token.clone());
        lp.token_logprobs.push(t.logprob);
        let top: HashMap<String, f32> =
            t.top.iter().map(|a| (a.token.clone(), a.logprob)).collect();
        lp.top_logprobs.push(top);
    }
}

fn stream_chunks(
    replies: impl Stream<Item = ReplyEvent> + Send + 'static,
    meta: CompletionIdentity,
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
    let body = replies.flat_map(move |event| {
        let events: Vec<Event> = match event {
            ReplyEvent::Step(step) => {
                let logprobs = meta.logprobs.then(|| {
                    let mut lp = CompletionLogprobs::default();
                    if let Some(offset) = offsets.get_mut(step.index) {
                        append_logprobs(&mut lp, &step.logprobs, offset);
                    }
                    lp
                });
                let text = reply::content(&step.pieces);
                if text.is_empty() && logprobs.is_none() && step.finish.is_none() {
                    Vec::new()
                } else {
                    let choice = CompletionChoice {
                        index: step.index,
                        text,
                        logprobs,
                        finish_reason: step.finish.map(Finish::as_str),
                    };
                    vec![json_event(&meta.chunk(choice, include_usage))]
                }
            }
            ReplyEvent::Done(usage) => sse::closing(include_usage.then(|| Completion {
                choices: Vec::new(),
                usage: Some(Some(usage.into())),
                ..meta.header()
            })),
            ReplyEvent::Error(e) => sse::error_closing(&e.into()),
        };
        futures::stream::iter(events.into_iter().map(Ok))
    });
    futures::stream::iter(opening.into_iter().map(Ok)).chain(body)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::api::arbitrary;

    #[tokio::test]
    async fn replies_render_as_chunks_after_the_echoed_prompts() {
        let lp = |token: &str| TokenLogprob {
            token: token.into(),
            bytes: token.as_bytes().to_vec(),
            logprob: -0.25,
            top: vec![reply::TopLogprob {
                token: token.into(),
                bytes: token.as_bytes().to_vec(),
                logprob: -0.25,
            }],
        };
        let meta = CompletionIdentity {
            id: "cmpl-1".into(),
            created: 1,
            model: "m".into(),
            fingerprint: "fp".into(),
            logprobs: true,
            echoes: vec!["P0".into(), "P1".into()],
            per_prompt: 1,
        };
        let step = |index, text: &str, finish| {
            ReplyEvent::Step(reply::Step {
                index,
                pieces: vec![crate::assistant::Piece::Content(text.into())],
                logprobs: vec![lp(text)],
                finish,
            })
        };
        let events = futures::stream::iter(vec![
            step(0, "ab", None),
            step(1, "c", Some(Finish::Length)),
            step(0, "de", Some(Finish::Stop)),
            ReplyEvent::Done(rosetta_engine::Usage {
                prompt_tokens: 2,
                completion_tokens: 3,
            }),
        ]);
        let data = sse::rendered_data(stream_chunks(events, meta, 2, false)).await;
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let choice = |i: usize| &chunks[i]["choices"][0];
        assert_eq!(
            (choice(0)["text"].as_str(), choice(1)["text"].as_str()),
            (Some("P0"), Some("P1"))
        );
        assert_eq!(choice(2)["text"], "ab");
        assert_eq!(choice(3)["finish_reason"], "length");
        assert_eq!(choice(4)["text"], "de");
        // Offsets run on per choice, in characters of its generated text.
        assert_eq!(choice(4)["logprobs"]["text_offset"], json!([2]));
        assert_eq!(
            choice(4)["logprobs"]["top_logprobs"],
            json!([{"de": -0.25}])
        );
        assert_eq!(chunks.len(), 5, "no usage chunk unless asked: {chunks:?}");
    }

    fn check(body: &Value) -> Result<CompletionCall, ApiError> {
        let bytes = serde_json::to_vec(body).unwrap();
        let req: CompletionRequest = parse_json(&bytes)?;
        let fields: SamplingFields = parse_json(&bytes)?;
        validate(req, &fields, &RequestLimits::default())
    }

    #[test]
    fn prompts_in_every_shape() {
        let texts = check(&json!({"model": "m", "prompt": ["a", "b"], "n": 2})).unwrap();
        assert!(matches!(&texts.prompts, Prompts::Texts(t) if t.len() == 2));
        assert_eq!(texts.prompt_count(), 2);
        assert_eq!(texts.sampling.max_tokens, Some(DEFAULT_MAX_TOKENS));
        assert_eq!(texts.sampling.params.n, 2);
        let ids = check(&json!({"model": "m", "prompt": [1, 2, 3]})).unwrap();
        assert!(matches!(&ids.prompts, Prompts::Tokens(t) if t == &[vec![1, 2, 3]]));
        let lists = check(&json!({"model": "m", "prompt": [[1], [2, 3]]})).unwrap();
        assert!(matches!(&lists.prompts, Prompts::Tokens(t) if t.len() == 2));
        for bad in [json!([]), json!([1, "a"]), json!({"x": 1}), json!([-1])] {
            let e = check(&json!({"model": "m", "prompt": bad})).unwrap_err();
            assert_eq!(e.body.param.as_deref(), Some("prompt"), "{bad}");
        }
    }

    #[test]
    fn counts_choices_before_copying_prompts() {
        let prompts = vec![json!("x"); 65];
        let e = check(&json!({"model": "m", "prompt": prompts, "n": 2})).unwrap_err();
        assert_eq!(e.body.code, Some("request_too_large"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any body: parsed and validated, or a 400 naming what is wrong; never a panic.
        #[test]
        fn arbitrary_bodies_validate_or_fail_with_a_400(body in arbitrary::body(&[
            "prompt", "suffix", "echo", "best_of", "logprobs", "n", "max_tokens",
            "temperature", "top_p", "stop", "presence_penalty", "frequency_penalty",
            "logit_bias", "seed", "stream", "stream_options", "top_k", "min_p",
            "repetition_penalty", "min_tokens", "stop_token_ids", "metadata",
        ])) {
            if let Err(e) = check(&body) {
                prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{:?}", e);
            }
        }
    }
}
