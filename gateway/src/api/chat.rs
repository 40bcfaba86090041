//! POST /v1/chat/completions

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::{Stream, StreamExt};
use rosetta_config::RequestLimits;
use rosetta_engine::grammar::GrammarSpec;
use rosetta_engine::text::{ChatMessage, ContentPart, MessageContent, RenderOptions};
use serde_json::Value;

use super::answer::{new_id, now_secs};
use super::authentication::Caller;
use super::error::ApiError;
use super::extract::{parse_json, OpenAiJsonRaw};
use super::params::{self, stated_language};
use super::pipeline::{self, Answer, Generation, Rendered, Work};
use super::sse::{self, json_event};
use super::tool_params::{self, Shape};
use super::types::*;
use super::upstream_body::{self, ChatTemplateFields, UpstreamRequest};
use crate::assistant::{OutputParser, Piece, Toolset, Turn};
use crate::registry::LocalModel;
use crate::reply::{self, Finish, ReplyError, ReplyEvent};
use crate::state::AppState;

/// `function` is the deprecated form of `tool` (a result for the last `function_call`).
const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// Checks the messages by hand so each mistake gets a message naming it, and their count and
/// content parts against the server's limits.
pub fn parse_messages(raw: &[Value], limits: &RequestLimits) -> Result<Vec<ChatMessage>, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "'messages' must contain at least one message.",
        ));
    }
    params::at_most("messages", "messages", raw.len(), limits.max_messages)?;
    let parts: usize = raw
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .map(Vec::len)
        .sum();
    params::at_most("messages", "content parts", parts, limits.max_content_parts)?;
    // Ids of the calls made so far: a tool turn must answer one of them.
    let mut call_ids: Vec<String> = Vec::new();
    raw.iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("messages[{i}]");
            let obj = m
                .as_object()
                .ok_or_else(|| ApiError::invalid_param(&param, format!("Invalid '{param}': expected an object.")))?;
            let role = match obj.get("role") {
                Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.as_str(),
                Some(Value::String(r)) => {
                    return Err(ApiError::invalid_param(
                        &format!("{param}.role"),
                        format!("Invalid '{param}.role': unknown role `{r}`; expected one of {}.", ROLES.join(", ")),
                    ))
                }
                Some(_) => return Err(ApiError::invalid_param(&format!("{param}.role"), format!("Invalid '{param}.role': expected a string."))),
                None => return Err(ApiError::invalid_param(&format!("{param}.role"), format!("Missing required parameter: '{param}.role'."))),
            };
            let content = match obj.get("content") {
                // An assistant turn that only called tools has no text; templates expect a string.
                None | Some(Value::Null) if role == "assistant" => Some(MessageContent::Text(String::new())),
                None | Some(Value::Null) => {
                    return Err(ApiError::invalid_param(
                        &format!("{param}.content"),
                        format!("Missing required parameter: '{param}.content'."),
                    ))
                }
                Some(Value::String(s)) => Some(MessageContent::Text(s.clone())),
                Some(Value::Array(parts)) => Some(MessageContent::Parts(parse_parts(parts, &param)?)),
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        &format!("{param}.content"),
                        format!("Invalid '{param}.content': expected a string or an array of content parts."),
                    ))
                }
            };
            let name = match obj.get("name") {
                None | Some(Value::Null) => None,
                Some(Value::String(n)) => Some(n.clone()),
                Some(_) => return Err(ApiError::invalid_param(&format!("{param}.name"), format!("Invalid '{param}.name': expected a string."))),
            };
            let tool_calls = match (obj.get("tool_calls"), obj.get("function_call")) {
                (Some(calls), _) if role == "assistant" && !calls.is_null() => {
                    let calls = tool_params::history_calls(calls, &param)?;
                    call_ids.extend(calls.iter().filter_map(|c| c["id"].as_str().map(str::to_string)));
                    calls
                }
                // The deprecated single call: given an id its `function` result answers.
                (_, Some(call)) if role == "assistant" && !call.is_null() => {
                    let id = format!("call_legacy_{i}");
                    let calls = serde_json::json!([{"id": id, "type": "function", "function": call}]);
                    let calls = tool_params::history_calls(&calls, &param)
                        .map_err(|e| e.with_param(&format!("{param}.function_call")))?;
                    call_ids.push(id);
                    calls
                }
                _ => Vec::new(),
            };
            let tool_call_id = if role == "function" {
                let id = call_ids.last().filter(|id| id.starts_with("call_legacy_")).ok_or_else(|| {
                    ApiError::invalid_param(&param, format!("Invalid '{param}': messages with role 'function' must follow an assistant message with a 'function_call'."))
                })?;
                Some(id.clone())
            } else if role == "tool" {
                let id = obj.get("tool_call_id").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid_param(&format!("{param}.tool_call_id"), format!("Missing required parameter: '{param}.tool_call_id'."))
                })?;
                if !call_ids.iter().any(|c| c == id) {
                    return Err(ApiError::invalid_param(
                        &format!("{param}.tool_call_id"),
                        format!("Invalid '{param}': messages with role 'tool' must be a response to a preceding message with 'tool_calls'; no call has the id `{id}`."),
                    ));
                }
                Some(id.to_string())
            } else {
                None
            };
            let reasoning_content = obj.get("reasoning_content").and_then(Value::as_str).map(str::to_string);
            // OpenAI's `developer` role is the system role of models that predate it.
            let role = match role {
                "developer" => "system",
                "function" => "tool",
                r => r,
            };
            Ok(ChatMessage { role: role.to_string(), content, name, tool_calls, tool_call_id, reasoning_content })
        })
        .collect()
}

fn parse_parts(parts: &[Value], param: &str) -> Result<Vec<ContentPart>, ApiError> {
    parts
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let at = format!("{param}.content[{j}]");
            match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                (Some("text"), Some(text)) => Ok(ContentPart { kind: "text".into(), text: text.to_string() }),
                (Some("text"), None) => Err(ApiError::invalid_param(&at, format!("Invalid '{at}': a text part needs a string 'text'."))),
                (Some(other), _) => Err(ApiError::invalid_param(
                    &at,
                    format!("Invalid '{at}': content parts of type `{other}` are not supported by this model; only `text` is."),
                )),
                (None, _) => Err(ApiError::invalid_param(&at, format!("Invalid '{at}': expected an object with a 'type'."))),
            }
        })
        .collect()
}

/// Renders the conversation with the model's chat template and tokenizes it.
pub fn chat_prompt(
    model: &LocalModel,
    messages: &[ChatMessage],
    options: &RenderOptions<'_>,
) -> Result<Vec<u32>, ApiError> {
    let template = model.tokenizer.chat_template().ok_or_else(|| {
        ApiError::invalid(format!(
            "The model `{}` has no chat template; use /v1/completions instead.",
            model.id
        ))
    })?;
    let text = template.render_with(messages, options)?;
    // The template already holds the special tokens (BOS); add no more, as Hugging Face does.
    Ok(model.tokenizer.encode(&text, false)?)
}

pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    OpenAiJsonRaw(req, raw): OpenAiJsonRaw<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let fields: SamplingFields = parse_json(&raw)?;
    let chat = validate(req, &fields, state.request_limits())?;
    pipeline::run(&state, &caller, &headers, Work::Generate(&chat), &raw).await
}

/// A chat request checked in full before any other work: messages, sizes, sampling.
#[derive(Debug, Clone)]
pub struct ChatCall {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Holds `top_logprobs` too (`sampling.params.sampling.logprobs`).
    pub sampling: params::Sampling,
    pub add_generation_prompt: bool,
    /// `metadata.language`, unchecked.
    pub stated_language: Option<String>,
    pub tools: Option<Toolset>,
    /// Variables for the chat template (`chat_template_kwargs`, `reasoning_effort`).
    pub template_kwargs: Option<serde_json::Map<String, Value>>,
    /// The request used `functions`: its call is answered as `function_call`.
    pub legacy_functions: bool,
    /// `reasoning_effort` and `chat_template_kwargs` as sent, for a remote replica.
    pub template_fields: ChatTemplateFields,
}

fn validate(
    req: ChatCompletionRequest,
    fields: &SamplingFields,
    limits: &RequestLimits,
) -> Result<ChatCall, ApiError> {
    let messages = parse_messages(&req.messages, limits)?;
    let legacy_functions = req.functions.is_some() && req.tools.is_none();
    let tools = if legacy_functions {
        tool_params::legacy_toolset(
            req.functions.as_deref().unwrap_or_default(),
            req.function_call.as_ref(),
            limits,
        )?
    } else {
        tool_params::toolset(
            req.tools.as_deref(),
            req.tool_choice.as_ref(),
            req.parallel_tool_calls,
            Shape::Chat,
            limits,
        )?
    };
    let template_fields = ChatTemplateFields {
        reasoning_effort: req.reasoning_effort.clone(),
        chat_template_kwargs: req.chat_template_kwargs.clone(),
        add_generation_prompt: req.add_generation_prompt.unwrap_or(true),
    };
    let template_kwargs =
        tool_params::template_kwargs(req.chat_template_kwargs, req.reasoning_effort.as_deref())?;
    let response_format = match &req.response_format {
        None => None,
        Some(f) => response_format(f)?,
    };
    let top_logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (true, k) => Some(params::top_logprobs("top_logprobs", k.unwrap_or(0))?),
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "'top_logprobs' requires 'logprobs' to be true.",
            ))
        }
        (false, _) => None,
    };
    let max_tokens = req.max_completion_tokens.or(fields.max_tokens);
    let param_name = if req.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let mut sampling = params::validate(fields, limits, max_tokens, top_logprobs)
        .map_err(|e| params::rename_max_tokens(e, param_name))?;
    if let Some(grammar) = response_format {
        sampling.constrain("response_format", grammar)?;
    }
    tool_params::force_tool_calls(&mut sampling, tools.as_ref())?;
    Ok(ChatCall {
        model: req.model,
        messages,
        sampling,
        add_generation_prompt: req.add_generation_prompt.unwrap_or(true),
        stated_language: stated_language(fields),
        tools,
        template_kwargs,
        legacy_functions,
        template_fields,
    })
}

/// OpenAI's `response_format`: `text` (no constraint), `json_object` (any JSON object), or
/// `json_schema` with `{name, schema, strict}`.
fn response_format(f: &Value) -> Result<Option<GrammarSpec>, ApiError> {
    let kind = f.get("type").and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid_param(
            "response_format.type",
            "'response_format.type' must be `text`, `json_object` or `json_schema`.",
        )
    })?;
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(GrammarSpec::JsonSchema(
            serde_json::json!({"type": "object"}),
        ))),
        "json_schema" => {
            let schema = f
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| {
                    ApiError::invalid_param(
                        "response_format.json_schema.schema",
                        "'response_format.json_schema.schema' is required for `json_schema`.",
                    )
                })?;
            params::json_schema("response_format.json_schema.schema", schema).map(Some)
        }
        other => Err(ApiError::invalid_param(
            "response_format.type",
            format!("Invalid 'response_format.type': `{other}`; expected `text`, `json_object` or `json_schema`."),
        )),
    }
}

/// The text of the user's messages, whose language routes the request.
fn user_text(messages: &[ChatMessage]) -> String {
    let mut text = String::new();
    for m in messages.iter().filter(|m| m.role == "user") {
        match &m.content {
            Some(MessageContent::Text(s)) => text.push_str(s),
            Some(MessageContent::Parts(parts)) => {
                for p in parts {
                    text.push_str(&p.text);
                    text.push(' ');
                }
            }
            None => {}
        }
        text.push('\n');
    }
    text
}

impl Generation for ChatCall {
    fn model(&self) -> &str {
        &self.model
    }

    fn path(&self) -> &'static str {
        "/v1/chat/completions"
    }

    fn stated_language(&self) -> Option<&str> {
        self.stated_language.as_deref()
    }

    fn language_text(&self) -> String {
        user_text(&self.messages)
    }

    fn sampling(&self) -> &params::Sampling {
        &self.sampling
    }

    fn prompt_count(&self) -> usize {
        1
    }

    fn prompts(&self, model: &LocalModel) -> Result<Vec<Vec<u32>>, ApiError> {
        tool_params::check_tool_format(model, self.tools.as_ref())?;
        let tools = self.tools.as_ref().and_then(Toolset::for_template);
        let options = RenderOptions {
            add_generation_prompt: self.add_generation_prompt,
            tools: tools.as_deref(),
            kwargs: self.template_kwargs.as_ref(),
        };
        Ok(vec![chat_prompt(model, &self.messages, &options)?])
    }

    fn operation(&self) -> &'static str {
        "chat"
    }

    fn output_parser(&self, model: &LocalModel) -> OutputParser {
        tool_params::output_parser(model, self.tools.as_ref(), &self.sampling)
    }

    fn upstream(&self) -> UpstreamRequest {
        upstream_body::chat(
            &self.messages,
            &self.sampling,
            self.tools.as_ref(),
            &self.template_fields,
        )
    }

    fn render<'a>(&'a self, answer: Answer<'a>) -> Rendered<'a> {
        Box::pin(render(self, answer))
    }
}

/// Chat chunks, or one `chat.completion` body.
async fn render(chat: &ChatCall, answer: Answer<'_>) -> Result<Response, ReplyError> {
    let Answer {
        state,
        model,
        replies,
        ..
    } = answer;
    let n = chat.sampling.params.n;
    let id = new_id("chatcmpl");
    crate::telemetry::attribute(&tracing::Span::current(), "gen_ai.response.id", id.as_str());
    let meta = ChatIdentity {
        id,
        created: now_secs(),
        model,
        fingerprint: state.fingerprint().to_string(),
        logprobs: chat.sampling.params.sampling.logprobs.is_some(),
    };
    if chat.sampling.stream {
        let events = stream_chunks(
            replies,
            meta,
            n,
            chat.sampling.include_usage,
            chat.legacy_functions,
        );
        return Ok(sse::response(state.drain(), events));
    }
    let (choices, usage) = reply::collect(replies, n).await?;
    let body = ChatCompletion {
        id: meta.id.clone(),
        object: "chat.completion",
        created: meta.created,
        model: meta.model.clone(),
        system_fingerprint: meta.fingerprint.clone(),
        choices: choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| ChatChoice {
                index,
                message: assistant_message(c.turn(), chat.legacy_functions),
                logprobs: meta.logprobs.then(|| ChatLogprobs {
                    content: c.logprobs.iter().map(wire_logprob).collect(),
                    refusal: None,
                }),
                finish_reason: finish_reason(c.finish, chat.legacy_functions),
            })
            .collect(),
        usage: usage.into(),
    };
    Ok(axum::Json(body).into_response())
}

/// The reply's reason, with `function_call` for a request that sent `functions`.
fn finish_reason(finish: Option<Finish>, legacy: bool) -> Option<&'static str> {
    finish.map(|f| match f {
        Finish::ToolCalls if legacy => "function_call",
        f => f.as_str(),
    })
}

fn assistant_message(turn: Turn, legacy: bool) -> AssistantMessage {
    let calls = turn.calls.into_iter().map(|c| {
        (
            c.id,
            FunctionCallOut {
                name: c.name,
                arguments: c.arguments,
            },
        )
    });
    let (tool_calls, function_call) = if legacy {
        (Vec::new(), calls.map(|(_, f)| f).next())
    } else {
        let calls = calls
            .map(|(id, function)| ToolCallOut {
                id,
                kind: "function",
                function,
            })
            .collect();
        (calls, None)
    };
    AssistantMessage {
        role: "assistant",
        content: turn.content,
        refusal: None,
        tool_calls,
        function_call,
        reasoning_content: turn.reasoning,
    }
}

/// One piece of a choice's output as a chunk's delta (a call as `function_call` for a
/// request that sent `functions`).
fn piece_delta(piece: Piece, legacy: bool) -> ChatDelta {
    match piece {
        Piece::Call {
            name, arguments, ..
        } if legacy => ChatDelta {
            function_call: Some(FunctionDelta {
                name: Some(name),
                arguments,
            }),
            ..ChatDelta::default()
        },
        Piece::Arguments { fragment, .. } if legacy => ChatDelta {
            function_call: Some(FunctionDelta {
                name: None,
                arguments: fragment,
            }),
            ..ChatDelta::default()
        },
        Piece::Content(text) => ChatDelta {
            content: Some(text),
            ..ChatDelta::default()
        },
        Piece::Reasoning(text) => ChatDelta {
            reasoning_content: Some(text),
            ..ChatDelta::default()
        },
        Piece::Call {
            index,
            id,
            name,
            arguments,
        } => ChatDelta {
            tool_calls: Some(vec![ToolCallDelta {
                index,
                id: Some(id),
                kind: Some("function"),
                function: FunctionDelta {
                    name: Some(name),
                    arguments,
                },
            }]),
            ..ChatDelta::default()
        },
        Piece::Arguments { index, fragment } => ChatDelta {
            tool_calls: Some(vec![ToolCallDelta {
                index,
                id: None,
                kind: None,
                function: FunctionDelta {
                    name: None,
                    arguments: fragment,
                },
            }]),
            ..ChatDelta::default()
        },
    }
}

/// What every chunk or body of one answer repeats: its id, time, model and fingerprint.
struct ChatIdentity {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    /// Whether the request asked for logprobs.
    logprobs: bool,
}

impl ChatIdentity {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, include_usage: bool) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices,
            usage: include_usage.then_some(None),
        }
    }
}

fn wire_logprob(t: &reply::TokenLogprob) -> TokenLogprob {
    TokenLogprob {
        token: t.token.clone(),
        logprob: t.logprob,
        bytes: t.bytes.clone(),
        top_logprobs: Some(
            t.top
                .iter()
                .map(|a| TopLogprob {
                    token: a.token.clone(),
                    logprob: a.logprob,
                    bytes: a.bytes.clone(),
                })
                .collect(),
        ),
    }
}

fn stream_chunks(
    replies: impl Stream<Item = ReplyEvent> + Send + 'static,
    meta: ChatIdentity,
    choices: usize,
    include_usage: bool,
    legacy: bool,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    // OpenAI opens each choice with a chunk carrying the role.
    let opening: Vec<Event> = (0..choices)
        .map(|index| {
            let choice = ChatChunkChoice {
                index,
                delta: ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    ..ChatDelta::default()
                },
                logprobs: None,
                finish_reason: None,
            };
            json_event(&meta.chunk(vec![choice], include_usage))
        })
        .collect();
    let body = replies.flat_map(move |event| {
        let events: Vec<Event> = match event {
            ReplyEvent::Step(step) => {
                let mut out = Vec::new();
                let mut logprobs = meta.logprobs.then(|| ChatLogprobs {
                    content: step.logprobs.iter().map(wire_logprob).collect(),
                    refusal: None,
                });
                let mut pieces = step.pieces;
                if pieces.is_empty() && !step.logprobs.is_empty() && logprobs.is_some() {
                    // The token's text is held back (it may open a marker); its logprobs
                    // still go out with it.
                    pieces.push(Piece::Content(String::new()));
                }
                for piece in pieces {
                    let choice = ChatChunkChoice {
                        index: step.index,
                        delta: piece_delta(piece, legacy),
                        logprobs: logprobs.take(),
                        finish_reason: None,
                    };
                    out.push(json_event(&meta.chunk(vec![choice], include_usage)));
                }
                if step.finish.is_some() {
                    let choice = ChatChunkChoice {
                        index: step.index,
                        delta: ChatDelta::default(),
                        logprobs: None,
                        finish_reason: finish_reason(step.finish, legacy),
                    };
                    out.push(json_event(&meta.chunk(vec![choice], include_usage)));
                }
                out
            }
            ReplyEvent::Done(usage) => sse::closing(include_usage.then(|| {
                let mut last = meta.chunk(Vec::new(), true);
                last.usage = Some(Some(usage.into()));
                last
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

    fn step(index: usize, pieces: Vec<Piece>, finish: Option<Finish>) -> ReplyEvent {
        ReplyEvent::Step(reply::Step {
            index,
            pieces,
            logprobs: Vec::new(),
            finish,
        })
    }

    fn identity(logprobs: bool) -> ChatIdentity {
        ChatIdentity {
            id: "chatcmpl-1".into(),
            created: 1,
            model: "m".into(),
            fingerprint: "fp".into(),
            logprobs,
        }
    }

    async fn render_stream(
        events: Vec<ReplyEvent>,
        meta: ChatIdentity,
        legacy: bool,
    ) -> Vec<Value> {
        let events = stream_chunks(futures::stream::iter(events), meta, 2, true, legacy);
        let data = sse::rendered_data(events).await;
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn replies_render_as_chunks_in_order_with_usage_last() {
        let call = Piece::Call {
            index: 0,
            id: "call_1".into(),
            name: "f".into(),
            arguments: String::new(),
        };
        let events = vec![
            step(1, vec![Piece::Content("b".into())], None),
            step(0, vec![Piece::Reasoning("r".into()), call], None),
            step(
                0,
                vec![Piece::Arguments {
                    index: 0,
                    fragment: "{}".into(),
                }],
                Some(Finish::ToolCalls),
            ),
            step(1, Vec::new(), Some(Finish::Length)),
            ReplyEvent::Done(rosetta_engine::Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
            }),
        ];
        let chunks = render_stream(events, identity(false), false).await;
        // Both choices open with the role.
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["index"], 1);
        let delta = |i: usize| &chunks[i]["choices"][0]["delta"];
        assert_eq!(delta(2)["content"], "b");
        assert_eq!(delta(3)["reasoning_content"], "r");
        assert_eq!(delta(4)["tool_calls"][0]["id"], "call_1");
        assert_eq!(delta(4)["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(delta(5)["tool_calls"][0]["function"]["arguments"], "{}");
        assert!(delta(5)["tool_calls"][0].get("id").is_none());
        assert_eq!(chunks[6]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[7]["choices"][0]["finish_reason"], "length");
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 7);
        for c in &chunks {
            assert_eq!(
                (c["id"].as_str(), c["model"].as_str()),
                (Some("chatcmpl-1"), Some("m"))
            );
        }
    }

    #[tokio::test]
    async fn a_call_for_a_functions_request_renders_as_function_call() {
        let events = vec![
            step(
                0,
                vec![Piece::Call {
                    index: 0,
                    id: "call_1".into(),
                    name: "f".into(),
                    arguments: "{\"a\"".into(),
                }],
                None,
            ),
            step(
                0,
                vec![Piece::Arguments {
                    index: 0,
                    fragment: ":1}".into(),
                }],
                Some(Finish::ToolCalls),
            ),
            step(1, Vec::new(), Some(Finish::Stop)),
            ReplyEvent::Done(rosetta_engine::Usage::default()),
        ];
        let chunks = render_stream(events, identity(false), true).await;
        let delta = |i: usize| &chunks[i]["choices"][0]["delta"];
        assert_eq!(
            delta(2)["function_call"],
            json!({"name": "f", "arguments": "{\"a\""})
        );
        assert_eq!(delta(3)["function_call"], json!({"arguments": ":1}"}));
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "function_call");
    }

    #[tokio::test]
    async fn logprobs_ride_with_the_first_piece_and_held_back_text_still_sends_them() {
        let lp = reply::TokenLogprob {
            token: "a".into(),
            bytes: vec![97],
            logprob: -0.5,
            top: vec![reply::TopLogprob {
                token: "b".into(),
                bytes: vec![98],
                logprob: -1.0,
            }],
        };
        let events = vec![
            ReplyEvent::Step(reply::Step {
                index: 0,
                pieces: Vec::new(),
                logprobs: vec![lp.clone()],
                finish: None,
            }),
            ReplyEvent::Step(reply::Step {
                index: 0,
                pieces: vec![Piece::Content("x".into()), Piece::Content("y".into())],
                logprobs: vec![lp],
                finish: Some(Finish::Stop),
            }),
            step(1, Vec::new(), Some(Finish::Stop)),
            ReplyEvent::Done(rosetta_engine::Usage::default()),
        ];
        let chunks = render_stream(events, identity(true), false).await;
        let choice = |i: usize| &chunks[i]["choices"][0];
        assert_eq!(choice(2)["delta"]["content"], "");
        assert_eq!(
            choice(2)["logprobs"]["content"][0]["top_logprobs"][0]["token"],
            "b"
        );
        assert_eq!(choice(3)["delta"]["content"], "x");
        assert_eq!(choice(3)["logprobs"]["content"][0]["logprob"], -0.5);
        assert_eq!(choice(4)["delta"]["content"], "y");
        assert!(choice(4)["logprobs"].is_null());
    }

    fn check(body: &Value) -> Result<ChatCall, ApiError> {
        let bytes = serde_json::to_vec(body).unwrap();
        let req: ChatCompletionRequest = parse_json(&bytes)?;
        let fields: SamplingFields = parse_json(&bytes)?;
        validate(req, &fields, &RequestLimits::default())
    }

    #[test]
    fn parses_a_request_into_messages_and_shared_parameters() {
        let call = check(&json!({
            "model": "m", "n": 3, "max_completion_tokens": 9, "stop": "END",
            "logit_bias": {"7": 5}, "stop_token_ids": [9, 2, 9],
            "messages": [{"role": "developer", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "Jambo"}]}],
            "metadata": {"language": "sw"}
        }))
        .unwrap();
        assert_eq!(call.messages.len(), 2);
        assert_eq!(
            call.messages[0].role, "system",
            "developer is the system role"
        );
        assert_eq!(call.sampling.params.n, 3);
        assert_eq!(call.sampling.max_tokens, Some(9));
        assert_eq!(
            call.sampling.params.stop_token_ids,
            [2, 9],
            "sorted, deduplicated"
        );
        assert_eq!(call.sampling.params.sampling.logit_bias, [(7, 5.0)]);
        assert_eq!(call.stated_language.as_deref(), Some("sw"));
        assert_eq!(user_text(&call.messages).trim(), "Jambo");
    }

    #[test]
    fn whole_number_floats_are_integers_as_openai_takes_them() {
        let call = check(
            &json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "n": 2.0, "max_tokens": 5.0, "seed": 7.0}),
        )
        .unwrap();
        assert_eq!(call.sampling.params.n, 2);
        assert_eq!(call.sampling.max_tokens, Some(5));
        let e = check(
            &json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "n": 1.5}),
        )
        .unwrap_err();
        assert_eq!(e.body.param.as_deref(), Some("n"));
    }

    #[test]
    fn names_the_parameter_the_client_used() {
        let e = check(
            &json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 0}),
        )
        .unwrap_err();
        assert_eq!(e.body.param.as_deref(), Some("max_completion_tokens"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any body: parsed and validated, or a 400 naming what is wrong; never a panic.
        #[test]
        fn arbitrary_bodies_validate_or_fail_with_a_400(body in arbitrary::body(&[
            "messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools",
            "response_format", "add_generation_prompt", "n", "max_tokens", "temperature",
            "top_p", "stop", "presence_penalty", "frequency_penalty", "logit_bias", "seed",
            "stream", "stream_options", "top_k", "min_p", "repetition_penalty", "min_tokens",
            "stop_token_ids", "metadata", "ignore_eos",
        ])) {
            if let Err(e) = check(&body) {
                prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{:?}", e);
            }
        }
    }
}
