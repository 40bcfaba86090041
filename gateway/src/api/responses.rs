//! POST /v1/responses, stateless: `input` (a string, or message, function-call and
//! function-call-output items) and `instructions` become a conversation for the model's chat
//! template; the answer is a `response` object whose output items are its thinking, its
//! message and its function calls, or the typed streaming events OpenAI's SDKs read. Nothing
//! is stored: `store: true` and `previous_response_id` are 400s.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::{Stream, StreamExt};
use rosetta_config::RequestLimits;
use rosetta_engine::grammar::GrammarSpec;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::answer::now_secs;
use super::authentication::Caller;
use super::chat::{self, ChatCall};
use super::error::ApiError;
use super::extract::{parse_json, OpenAiJsonRaw};
use super::params::{self, stated_language};
use super::pipeline::{self, Answer, Generation, Rendered, Work};
use super::sse;
use super::tool_params::{self, Shape};
use super::types::SamplingFields;
use super::upstream_body::{ChatTemplateFields, UpstreamRequest};
use crate::assistant::{OutputParser, Piece, Turn};
use crate::ids::item_id;
use crate::registry::LocalModel;
use crate::reply::{self, Finish, ReplyError, ReplyEvent};
use crate::state::AppState;

#[derive(Debug, Clone, Deserialize)]
pub struct ResponsesRequest {
    pub model: String,
    pub input: Value,
    pub instructions: Option<String>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<Value>,
    #[serde(default, deserialize_with = "super::types::whole_number")]
    pub max_output_tokens: Option<i64>,
    pub reasoning: Option<Value>,
    pub store: Option<bool>,
    pub previous_response_id: Option<String>,
    pub conversation: Option<Value>,
    pub background: Option<bool>,
    pub metadata: Option<Map<String, Value>>,
}

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    OpenAiJsonRaw(req, raw): OpenAiJsonRaw<ResponsesRequest>,
) -> Result<Response, ApiError> {
    let fields: SamplingFields = parse_json(&raw)?;
    let call = validate(req, &fields, state.request_limits())?;
    pipeline::run(&state, &caller, &headers, Work::Generate(&call), &raw).await
}

/// A responses request: the conversation as a chat, and what the response object echoes.
#[derive(Debug, Clone)]
pub struct ResponsesCall {
    chat: ChatCall,
    echo: Echo,
    /// The field each chat message came from, for error messages.
    origins: Vec<String>,
}

/// The request's settings, as the response object repeats them.
#[derive(Debug, Clone)]
struct Echo {
    instructions: Option<String>,
    tools: Value,
    tool_choice: Value,
    parallel_tool_calls: bool,
    text: Value,
    temperature: f32,
    top_p: f32,
    max_output_tokens: Option<i64>,
    reasoning: Value,
    metadata: Map<String, Value>,
}

fn validate(
    req: ResponsesRequest,
    fields: &SamplingFields,
    limits: &RequestLimits,
) -> Result<ResponsesCall, ApiError> {
    if req.store == Some(true) {
        return Err(ApiError::invalid_param(
            "store",
            "This server does not store responses yet; send `store: false` (or leave it out).",
        ));
    }
    for (given, param) in [
        (req.previous_response_id.is_some(), "previous_response_id"),
        (req.conversation.is_some(), "conversation"),
    ] {
        if given {
            return Err(ApiError::invalid_param(
                param,
                format!("'{param}' needs stored responses, which this server does not keep yet; send the whole conversation as 'input'."),
            ));
        }
    }
    if req.background == Some(true) {
        return Err(ApiError::invalid_param(
            "background",
            "Background responses are not supported; leave 'background' out.",
        ));
    }
    if fields.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid_param(
            "n",
            "'n' is not a parameter of the Responses API.",
        ));
    }
    let (messages, origins) = input_messages(&req.input, req.instructions.as_deref())?;
    let messages = chat::parse_messages(&messages, limits).map_err(|e| in_input(e, &origins))?;
    let tools = tool_params::toolset(
        req.tools.as_deref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
        Shape::Responses,
        limits,
    )?;
    let effort = req
        .reasoning
        .as_ref()
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str);
    let template_kwargs =
        tool_params::template_kwargs(None, effort).map_err(|e| e.with_param("reasoning.effort"))?;
    let mut sampling = params::validate(fields, limits, req.max_output_tokens, None)
        .map_err(|e| params::rename_max_tokens(e, "max_output_tokens"))?;
    if let Some(grammar) = text_format(req.text.as_ref())? {
        sampling.constrain("text.format", grammar)?;
    }
    tool_params::force_tool_calls(&mut sampling, tools.as_ref())?;
    let s = &sampling.params.sampling;
    let echo = Echo {
        instructions: req.instructions,
        tools: Value::Array(req.tools.unwrap_or_default()),
        tool_choice: req.tool_choice.unwrap_or_else(|| json!("auto")),
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        text: req
            .text
            .unwrap_or_else(|| json!({"format": {"type": "text"}})),
        temperature: s.temperature,
        top_p: s.top_p,
        max_output_tokens: req.max_output_tokens,
        reasoning: json!({"effort": effort, "summary": null}),
        metadata: req.metadata.unwrap_or_default(),
    };
    Ok(ResponsesCall {
        chat: ChatCall {
            model: req.model,
            messages,
            sampling,
            add_generation_prompt: true,
            stated_language: stated_language(fields),
            tools,
            template_kwargs,
            legacy_functions: false,
            template_fields: ChatTemplateFields {
                reasoning_effort: effort.map(str::to_string),
                chat_template_kwargs: None,
                add_generation_prompt: true,
            },
        },
        echo,
        origins,
    })
}

/// Chat-form errors about the converted conversation name the field they came from:
/// `messages[k]…` becomes `input[i]…` (or `instructions`), `messages` becomes `input`.
fn in_input(e: ApiError, origins: &[String]) -> ApiError {
    let Some(p) = e.body.param.clone() else {
        return e;
    };
    let Some(rest) = p.strip_prefix("messages") else {
        return e;
    };
    let origin = rest
        .strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(k, tail)| Some((origins.get(k.parse::<usize>().ok()?)?, tail)));
    match origin {
        Some((origin, tail)) => e.with_param(&format!("{origin}{tail}")),
        None => e.with_param(&format!("input{rest}")),
    }
}

/// `input` and `instructions` as chat messages (OpenAI's chat JSON, checked by the chat
/// endpoint's own parser next): consecutive function calls become one assistant turn. Beside
/// each message, the field it came from (`instructions`, `input`, `input[i]`).
fn input_messages(
    input: &Value,
    instructions: Option<&str>,
) -> Result<(Vec<Value>, Vec<String>), ApiError> {
    let mut messages: Vec<Value> = Vec::new();
    let mut origins: Vec<String> = Vec::new();
    if let Some(text) = instructions {
        messages.push(json!({"role": "system", "content": text}));
        origins.push("instructions".into());
    }
    let items = match input {
        Value::String(text) => {
            messages.push(json!({"role": "user", "content": text}));
            origins.push("input".into());
            return Ok((messages, origins));
        }
        Value::Array(items) => items,
        _ => {
            return Err(ApiError::invalid_param(
                "input",
                "Invalid 'input': expected a string or an array of input items.",
            ))
        }
    };
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let bad = |msg: String| ApiError::invalid_param(&at, format!("Invalid '{at}': {msg}"));
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => {
                let role = item.get("role").cloned().unwrap_or(Value::Null);
                let content = match item.get("content") {
                    Some(Value::Array(parts)) => Value::Array(
                        parts
                            .iter()
                            .enumerate()
                            .map(|(j, p)| text_part(p).ok_or_else(|| {
                                let kind = p.get("type").and_then(Value::as_str).unwrap_or("?");
                                ApiError::invalid_param(
                                    &format!("{at}.content[{j}]"),
                                    format!("Invalid '{at}.content[{j}]': content of type `{kind}` is not supported by this model; only text is."),
                                )
                            }))
                            .collect::<Result<_, _>>()?,
                    ),
                    Some(other) => other.clone(),
                    None => Value::Null,
                };
                messages.push(json!({"role": role, "content": content}));
                origins.push(at.clone());
            }
            "function_call" => {
                let field = |name: &str| {
                    item.get(name)
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad(format!("a function_call needs a string '{name}'.")))
                };
                let call = json!({"id": field("call_id")?, "type": "function",
                    "function": {"name": field("name")?, "arguments": field("arguments")?}});
                let joins = messages.last().is_some_and(|m| {
                    m["role"] == "assistant" && m["tool_calls"].is_array()
                });
                if joins {
                    if let Some(calls) = messages.last_mut().and_then(|m| m["tool_calls"].as_array_mut()) {
                        calls.push(call);
                    }
                } else {
                    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
                    origins.push(at.clone());
                }
            }
            "function_call_output" => {
                let call_id = item
                    .get("call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("a function_call_output needs a string 'call_id'.".into()))?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|p| text_part(p).and_then(|t| t["text"].as_str().map(str::to_string)))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    _ => return Err(bad("a function_call_output needs an 'output'.".into())),
                };
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
                origins.push(at.clone());
            }
            // Earlier thinking: the stateless model does not need it (templates drop it).
            "reasoning" => {}
            other => {
                return Err(ApiError::invalid_param(
                    &format!("{at}.type"),
                    format!("Invalid '{at}.type': items of type `{other}` are not supported; use message, function_call and function_call_output items."),
                ))
            }
        }
    }
    Ok((messages, origins))
}

/// A text part (`input_text`, `output_text`, `text`) in the chat form.
fn text_part(p: &Value) -> Option<Value> {
    match p.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => {
            Some(json!({"type": "text", "text": p.get("text")?.as_str()?}))
        }
        _ => None,
    }
}

/// `text.format`: `text`, `json_object`, or `json_schema` with `{name, schema, strict}`.
fn text_format(text: Option<&Value>) -> Result<Option<GrammarSpec>, ApiError> {
    let Some(format) = text.and_then(|t| t.get("format")) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(GrammarSpec::JsonSchema(json!({"type": "object"})))),
        Some("json_schema") => {
            let schema = format.get("schema").ok_or_else(|| {
                ApiError::invalid_param(
                    "text.format.schema",
                    "'text.format.schema' is required for `json_schema`.",
                )
            })?;
            params::json_schema("text.format.schema", schema).map(Some)
        }
        _ => Err(ApiError::invalid_param(
            "text.format.type",
            "'text.format.type' must be `text`, `json_object` or `json_schema`.",
        )),
    }
}

impl Generation for ResponsesCall {
    fn model(&self) -> &str {
        self.chat.model()
    }

    fn path(&self) -> &'static str {
        "/v1/responses"
    }

    fn operation(&self) -> &'static str {
        "chat"
    }

    fn stated_language(&self) -> Option<&str> {
        self.chat.stated_language()
    }

    fn language_text(&self) -> String {
        self.chat.language_text()
    }

    fn sampling(&self) -> &params::Sampling {
        self.chat.sampling()
    }

    fn prompt_count(&self) -> usize {
        1
    }

    fn prompts(&self, model: &LocalModel) -> Result<Vec<Vec<u32>>, ApiError> {
        self.chat
            .prompts(model)
            .map_err(|e| in_input(e, &self.origins))
    }

    fn render<'a>(&'a self, answer: Answer<'a>) -> Rendered<'a> {
        Box::pin(render(self, answer))
    }

    fn output_parser(&self, model: &LocalModel) -> OutputParser {
        self.chat.output_parser(model)
    }

    /// The conversation as a chat: any OpenAI-compatible upstream can answer it.
    fn upstream(&self) -> UpstreamRequest {
        self.chat.upstream()
    }
}

async fn render(call: &ResponsesCall, answer: Answer<'_>) -> Result<Response, ReplyError> {
    let Answer {
        state,
        model,
        replies,
        ..
    } = answer;
    let id = item_id("resp");
    crate::telemetry::attribute(&tracing::Span::current(), "gen_ai.response.id", id.as_str());
    let shell = ResponseShell {
        id,
        created_at: now_secs(),
        model,
        echo: call.echo.clone(),
    };
    if call.chat.sampling.stream {
        let events = stream_events(replies, shell);
        return Ok(sse::response(state.drain(), events));
    }
    let (choices, usage) = reply::collect(replies, 1).await?;
    let choice = choices.into_iter().next().unwrap_or_default();
    let turn = choice.turn();
    let mut output = Vec::new();
    let Turn {
        reasoning,
        content,
        calls,
    } = turn;
    if let Some(r) = reasoning {
        output.push(reasoning_item(&item_id("rs"), &r));
    }
    if content.is_some() || calls.is_empty() {
        output.push(message_item(
            &item_id("msg"),
            &content.unwrap_or_default(),
            "completed",
        ));
    }
    for c in calls {
        output.push(call_item(
            &item_id("fc"),
            &c.id,
            &c.name,
            &c.arguments,
            "completed",
        ));
    }
    Ok(axum::Json(shell.body(choice.finish, output, Some(usage))).into_response())
}

/// What every snapshot of one response repeats.
struct ResponseShell {
    id: String,
    created_at: u64,
    model: String,
    echo: Echo,
}

impl ResponseShell {
    /// The response object: in progress (no finish yet), completed, or incomplete at the
    /// length limit.
    fn body(
        &self,
        finish: Option<Finish>,
        output: Vec<Value>,
        usage: Option<rosetta_engine::Usage>,
    ) -> Value {
        let (status, incomplete) = match finish {
            None => ("in_progress", Value::Null),
            Some(Finish::Length) => ("incomplete", json!({"reason": "max_output_tokens"})),
            Some(_) => ("completed", Value::Null),
        };
        let e = &self.echo;
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": null,
            "incomplete_details": incomplete,
            "instructions": e.instructions,
            "max_output_tokens": e.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": e.parallel_tool_calls,
            "previous_response_id": null,
            "reasoning": e.reasoning,
            "store": false,
            "temperature": e.temperature,
            "text": e.text,
            "tool_choice": e.tool_choice,
            "tools": e.tools,
            "top_p": e.top_p,
            "truncation": "disabled",
            "usage": usage.map(|u| json!({
                "input_tokens": u.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": u.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": u.prompt_tokens + u.completion_tokens,
            })),
            "user": null,
            "metadata": e.metadata,
        })
    }
}

fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"type": "reasoning", "id": id, "summary": [],
        "content": [{"type": "reasoning_text", "text": text}]})
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
        "content": [output_text(text)]})
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
        "arguments": arguments, "status": status})
}

/// The output item being written.
enum Open {
    Nothing,
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Turns pieces of output into the typed events, numbering them.
struct EventWriter {
    sequence: u64,
    open: Open,
    /// Finished output items, for the final response object.
    done: Vec<Value>,
}

impl EventWriter {
    fn event(&mut self, mut body: Value) -> Event {
        body["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        let kind = body["type"].as_str().unwrap_or("error").to_string();
        sse::json_event(&body).event(kind)
    }

    fn index(&self) -> usize {
        self.done.len()
    }

    /// Starts an item of `kind` unless one is open; the previous one is closed.
    fn ensure(&mut self, kind: &str, out: &mut Vec<Event>) {
        let open_kind = match &self.open {
            Open::Nothing => "",
            Open::Reasoning { .. } => "reasoning",
            Open::Message { .. } => "message",
            Open::Call { .. } => "function_call",
        };
        if open_kind == kind {
            return;
        }
        self.close(out);
        let index = self.index();
        match kind {
            "reasoning" => {
                let id = item_id("rs");
                let item = json!({"type": "reasoning", "id": id, "summary": [], "content": []});
                out.push(self.event(json!({"type": "response.output_item.added", "output_index": index, "item": item})));
                self.open = Open::Reasoning {
                    id,
                    text: String::new(),
                };
            }
            _ => {
                let id = item_id("msg");
                let item = json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []});
                out.push(self.event(json!({"type": "response.output_item.added", "output_index": index, "item": item})));
                out.push(
                    self.event(json!({"type": "response.content_part.added", "item_id": id,
                    "output_index": index, "content_index": 0, "part": output_text("")})),
                );
                self.open = Open::Message {
                    id,
                    text: String::new(),
                };
            }
        }
    }

    fn piece(&mut self, piece: Piece, out: &mut Vec<Event>) {
        let index = self.index();
        match piece {
            Piece::Reasoning(delta) => {
                self.ensure("reasoning", out);
                if let Open::Reasoning { id, text } = &mut self.open {
                    text.push_str(&delta);
                    let body = json!({"type": "response.reasoning_text.delta", "item_id": id,
                        "output_index": index, "content_index": 0, "delta": delta});
                    out.push(self.event(body));
                }
            }
            Piece::Content(delta) => {
                self.ensure("message", out);
                if let Open::Message { id, text } = &mut self.open {
                    text.push_str(&delta);
                    let body = json!({"type": "response.output_text.delta", "item_id": id,
                        "output_index": index, "content_index": 0, "delta": delta, "logprobs": []});
                    out.push(self.event(body));
                }
            }
            Piece::Call {
                id: call_id,
                name,
                arguments,
                ..
            } => {
                self.close(out);
                let index = self.index();
                let id = item_id("fc");
                let item = call_item(&id, &call_id, &name, "", "in_progress");
                out.push(self.event(json!({"type": "response.output_item.added", "output_index": index, "item": item})));
                self.open = Open::Call {
                    id,
                    call_id,
                    name,
                    arguments: String::new(),
                };
                self.arguments(arguments, out);
            }
            Piece::Arguments { fragment, .. } => self.arguments(fragment, out),
        }
    }

    fn arguments(&mut self, delta: String, out: &mut Vec<Event>) {
        let index = self.index();
        if let Open::Call { id, arguments, .. } = &mut self.open {
            if delta.is_empty() {
                return;
            }
            arguments.push_str(&delta);
            let body = json!({"type": "response.function_call_arguments.delta", "item_id": id,
                "output_index": index, "delta": delta});
            out.push(self.event(body));
        }
    }

    /// Ends the open item with its `.done` events.
    fn close(&mut self, out: &mut Vec<Event>) {
        let index = self.index();
        let item = match std::mem::replace(&mut self.open, Open::Nothing) {
            Open::Nothing => return,
            Open::Reasoning { id, text } => {
                out.push(self.event(
                    json!({"type": "response.reasoning_text.done", "item_id": id,
                    "output_index": index, "content_index": 0, "text": text}),
                ));
                reasoning_item(&id, &text)
            }
            Open::Message { id, text } => {
                out.push(
                    self.event(json!({"type": "response.output_text.done", "item_id": id,
                    "output_index": index, "content_index": 0, "text": text, "logprobs": []})),
                );
                out.push(
                    self.event(json!({"type": "response.content_part.done", "item_id": id,
                    "output_index": index, "content_index": 0, "part": output_text(&text)})),
                );
                message_item(&id, &text, "completed")
            }
            Open::Call {
                id,
                call_id,
                name,
                arguments,
            } => {
                out.push(self.event(
                    json!({"type": "response.function_call_arguments.done", "item_id": id,
                    "output_index": index, "name": name, "arguments": arguments}),
                ));
                call_item(&id, &call_id, &name, &arguments, "completed")
            }
        };
        out.push(self.event(
            json!({"type": "response.output_item.done", "output_index": index, "item": item}),
        ));
        self.done.push(item);
    }
}

fn stream_events(
    replies: impl Stream<Item = ReplyEvent> + Send + 'static,
    shell: ResponseShell,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let mut writer = EventWriter {
        sequence: 0,
        open: Open::Nothing,
        done: Vec::new(),
    };
    let snapshot = shell.body(None, Vec::new(), None);
    let opening = vec![
        writer.event(json!({"type": "response.created", "response": snapshot})),
        writer.event(json!({"type": "response.in_progress", "response": snapshot})),
    ];
    let mut finish = None;
    let body = replies.flat_map(move |event| {
        let mut out = Vec::new();
        match event {
            ReplyEvent::Step(step) => {
                if step.finish.is_some() {
                    finish = step.finish;
                }
                for p in step.pieces {
                    writer.piece(p, &mut out);
                }
            }
            ReplyEvent::Done(usage) => {
                if writer.done.is_empty() && matches!(writer.open, Open::Nothing) {
                    // An empty answer is still a message.
                    writer.ensure("message", &mut out);
                }
                writer.close(&mut out);
                let done = std::mem::take(&mut writer.done);
                let response = shell.body(finish, done, Some(usage));
                let kind = if response["status"] == "incomplete" {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                out.push(writer.event(json!({"type": kind, "response": response})));
            }
            ReplyEvent::Error(e) => {
                let e = ApiError::from(e);
                out.push(writer.event(json!({"type": "error", "code": e.body.code,
                    "message": e.body.message, "param": e.body.param})));
            }
        }
        futures::stream::iter(out.into_iter().map(Ok))
    });
    futures::stream::iter(opening.into_iter().map(Ok)).chain(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replies_render_as_numbered_events_ending_incomplete_at_the_length_limit() {
        let call = check(&json!({"model": "m", "input": "hi", "max_output_tokens": 2})).unwrap();
        let shell = ResponseShell {
            id: "resp_1".into(),
            created_at: 1,
            model: "m".into(),
            echo: call.echo.clone(),
        };
        let step = |pieces, finish| {
            ReplyEvent::Step(reply::Step {
                index: 0,
                pieces,
                logprobs: Vec::new(),
                finish,
            })
        };
        let events = futures::stream::iter(vec![
            step(vec![Piece::Reasoning("think".into())], None),
            step(vec![Piece::Content("Hel".into())], None),
            step(vec![Piece::Content("lo".into())], Some(Finish::Length)),
            ReplyEvent::Done(rosetta_engine::Usage {
                prompt_tokens: 4,
                completion_tokens: 2,
            }),
        ]);
        let data = sse::rendered_data(stream_events(events, shell)).await;
        let events: Vec<Value> = data
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], i, "{e}");
        }
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(kinds.first(), Some(&"response.created"));
        assert!(kinds.contains(&"response.reasoning_text.done"), "{kinds:?}");
        let text_done = events
            .iter()
            .find(|e| e["type"] == "response.output_text.done")
            .unwrap();
        assert_eq!(text_done["text"], "Hello");
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        assert_eq!(last["response"]["usage"]["output_tokens"], 2);
        assert_eq!(last["response"]["output"].as_array().unwrap().len(), 2);
    }

    fn check(body: &Value) -> Result<ResponsesCall, ApiError> {
        let bytes = serde_json::to_vec(body).unwrap();
        let req: ResponsesRequest = parse_json(&bytes)?;
        let fields: SamplingFields = parse_json(&bytes)?;
        validate(req, &fields, &RequestLimits::default())
    }

    #[test]
    fn input_items_become_a_conversation() {
        let call = check(&json!({
            "model": "m", "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{\"a\":1}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": "rain"}
            ],
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
            "max_output_tokens": 7
        }))
        .unwrap();
        let roles: Vec<&str> = call.chat.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "tool"]);
        assert_eq!(
            call.chat.messages[2].tool_calls.len(),
            2,
            "consecutive calls are one turn"
        );
        assert_eq!(call.chat.sampling.max_tokens, Some(7));
        assert_eq!(call.chat.tools.as_ref().unwrap().tools[0].name, "w");
    }

    #[test]
    fn what_needs_storage_is_a_400_naming_it() {
        for (body, param) in [
            (json!({"model": "m", "input": "x", "store": true}), "store"),
            (
                json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}),
                "input[0].tool_call_id",
            ),
            (
                json!({"model": "m", "input": "x", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
        ] {
            let e = check(&body).unwrap_err();
            assert_eq!(e.body.param.as_deref(), Some(param), "{e:?}");
        }
        assert!(check(&json!({"model": "m", "input": "x", "store": false})).is_ok());
    }
}
