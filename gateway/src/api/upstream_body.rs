//! The body a remote replica gets, built from a validated request rather than passed on as
//! received: the sampling fields the client set (re-encoded from their parsed types), the
//! validated messages or prompts, the tools and choice as validated, and the
//! structured-output constraint in OpenAI's `response_format` (vLLM's `structured_outputs`
//! for the kinds OpenAI lacks). A Responses request goes upstream as the chat it was converted
//! to, so any OpenAI-compatible server can answer it. The replica adds its model name, and the
//! extension fields its config lists (`pool::remote`).

use rosetta_engine::grammar::GrammarSpec;
use rosetta_engine::text::ChatMessage;
use serde_json::{json, Map, Value};

use super::params::Sampling;
use super::prompts::Prompts;
use crate::assistant::{ToolChoice, Toolset};
pub use crate::pool::remote::UpstreamRequest;

/// A chat: its messages, sampling, tools and constraint, and the template's options.
pub fn chat(
    messages: &[ChatMessage],
    sampling: &Sampling,
    tools: Option<&Toolset>,
    template: &ChatTemplateFields,
) -> UpstreamRequest {
    let mut body = common(sampling);
    body.insert(
        "messages".into(),
        Value::Array(messages.iter().map(message).collect()),
    );
    if let Some(k) = sampling.params.sampling.logprobs {
        body.insert("logprobs".into(), json!(true));
        body.insert("top_logprobs".into(), json!(k));
    }
    if let Some(tools) = tools {
        body.insert(
            "tools".into(),
            Value::Array(tools.tools.iter().map(tool).collect()),
        );
        body.insert("tool_choice".into(), tool_choice(&tools.choice));
        body.insert("parallel_tool_calls".into(), json!(tools.parallel));
    }
    // A call the client requires is the upstream's to enforce, from `tool_choice`.
    if !tools.is_some_and(Toolset::forces_call) {
        constrain(&mut body, sampling);
    }
    if let Some(effort) = &template.reasoning_effort {
        body.insert("reasoning_effort".into(), json!(effort));
    }
    if let Some(kwargs) = &template.chat_template_kwargs {
        body.insert("chat_template_kwargs".into(), Value::Object(kwargs.clone()));
    }
    if !template.add_generation_prompt {
        body.insert("add_generation_prompt".into(), json!(false));
    }
    UpstreamRequest {
        path: "/v1/chat/completions",
        body,
    }
}

/// What a chat request says about its template, as the client sent it.
#[derive(Debug, Clone, Default)]
pub struct ChatTemplateFields {
    pub reasoning_effort: Option<String>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
    pub add_generation_prompt: bool,
}

/// A completion: its prompts and sampling; `echo` is the upstream's to do.
pub fn completion(prompts: &Prompts, sampling: &Sampling, echo: bool) -> UpstreamRequest {
    let mut body = common(sampling);
    let prompt = match prompts {
        Prompts::Texts(t) if t.len() == 1 => json!(t[0]),
        Prompts::Texts(t) => json!(t),
        Prompts::Tokens(t) if t.len() == 1 => json!(t[0]),
        Prompts::Tokens(t) => json!(t),
    };
    body.insert("prompt".into(), prompt);
    if let Some(k) = sampling.params.sampling.logprobs {
        body.insert("logprobs".into(), json!(k));
    }
    if echo {
        body.insert("echo".into(), json!(true));
    }
    constrain(&mut body, sampling);
    UpstreamRequest {
        path: "/v1/completions",
        body,
    }
}

/// Embeddings of validated inputs.
pub fn embeddings(inputs: &Prompts, base64: bool, dimensions: Option<usize>) -> UpstreamRequest {
    let mut body = Map::new();
    let input = match inputs {
        Prompts::Texts(t) => json!(t),
        Prompts::Tokens(t) => json!(t),
    };
    body.insert("input".into(), input);
    body.insert(
        "encoding_format".into(),
        json!(if base64 { "base64" } else { "float" }),
    );
    if let Some(d) = dimensions {
        body.insert("dimensions".into(), json!(d));
    }
    UpstreamRequest {
        path: "/v1/embeddings",
        body,
    }
}

/// The sampling fields the client set, the length, and how to stream: always with usage,
/// which settles the tenant's tokens.
fn common(sampling: &Sampling) -> Map<String, Value> {
    let mut body = sampling.stated.clone();
    if let Some(max) = sampling.max_tokens {
        body.insert("max_tokens".into(), json!(max));
    }
    if sampling.stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    body
}

/// The structured-output constraint: JSON schemas as OpenAI's `response_format`, the rest
/// as vLLM's `structured_outputs`.
fn constrain(body: &mut Map<String, Value>, sampling: &Sampling) {
    let Some(grammar) = &sampling.grammar else {
        return;
    };
    let (field, value) = match grammar.as_ref() {
        GrammarSpec::JsonSchema(schema) => (
            "response_format",
            json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}),
        ),
        GrammarSpec::Regex(rx) => ("structured_outputs", json!({ "regex": rx })),
        GrammarSpec::Choice(c) => ("structured_outputs", json!({ "choice": c })),
        GrammarSpec::Lark(g) => ("structured_outputs", json!({ "grammar": g })),
    };
    body.insert(field.into(), value);
}

/// A message in OpenAI's form: an assistant turn's call arguments as JSON strings again
/// (templates read them parsed).
fn message(m: &ChatMessage) -> Value {
    let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
    if let Some(calls) = v.get_mut("tool_calls").and_then(Value::as_array_mut) {
        for call in calls {
            let args = &mut call["function"]["arguments"];
            if !args.is_string() && !args.is_null() {
                *args = Value::String(args.to_string());
            }
        }
    }
    v
}

fn tool(t: &crate::assistant::Tool) -> Value {
    let mut function = Map::new();
    function.insert("name".into(), json!(t.name));
    if let Some(d) = &t.description {
        function.insert("description".into(), json!(d));
    }
    function.insert("parameters".into(), t.parameters.clone());
    if t.strict {
        function.insert("strict".into(), json!(true));
    }
    json!({"type": "function", "function": function})
}

fn tool_choice(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::None => json!("none"),
        ToolChoice::Auto => json!("auto"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Named(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assistant::Tool;

    fn sampling(body: Value) -> Sampling {
        let fields: crate::api::types::SamplingFields = serde_json::from_value(body).unwrap();
        let limits = rosetta_config::RequestLimits::default();
        crate::api::params::validate(&fields, &limits, fields.max_tokens, None).unwrap()
    }

    #[test]
    fn a_chat_goes_upstream_as_validated_with_its_constraint_and_usage() {
        let s = sampling(
            json!({"temperature": 0.5, "max_tokens": 3.0, "stream": true,
            "stop": "x", "guided_regex": "[a-z]+", "metadata": {"language": "sw"}}),
        );
        let messages = vec![ChatMessage {
            role: "assistant".into(),
            tool_calls: vec![json!({"id": "call_1", "type": "function",
                "function": {"name": "f", "arguments": {"a": 1}}})],
            ..ChatMessage::default()
        }];
        let up = chat(&messages, &s, None, &ChatTemplateFields::default());
        assert_eq!(up.path, "/v1/chat/completions");
        let b = Value::Object(up.body);
        assert_eq!(b["max_tokens"], 3);
        assert_eq!(b["temperature"], 0.5);
        assert_eq!(b["stop"], "x");
        assert_eq!(b["stream_options"], json!({"include_usage": true}));
        assert_eq!(b["structured_outputs"], json!({"regex": "[a-z]+"}));
        assert!(b.get("guided_regex").is_none() && b.get("metadata").is_none());
        assert_eq!(
            b["messages"][0]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(b["add_generation_prompt"], false);
    }

    #[test]
    fn a_required_call_goes_as_tool_choice_not_as_a_grammar() {
        let mut s = sampling(json!({}));
        let tools = Toolset::new(
            vec![Tool {
                name: "f".into(),
                description: None,
                parameters: json!({"type": "object"}),
                strict: false,
            }],
            ToolChoice::Named("f".into()),
            false,
        )
        .unwrap();
        crate::api::tool_params::force_tool_calls(&mut s, Some(&tools)).unwrap();
        let template = ChatTemplateFields {
            add_generation_prompt: true,
            ..ChatTemplateFields::default()
        };
        let b = Value::Object(chat(&[], &s, Some(&tools), &template).body);
        assert_eq!(
            b["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(b["tools"][0]["function"]["name"], "f");
        assert!(b.get("response_format").is_none(), "{b}");
        assert!(b.get("stream").is_none() && b.get("add_generation_prompt").is_none());
    }

    #[test]
    fn a_completion_keeps_its_prompts_shape_and_asks_for_echo() {
        let s = sampling(json!({"max_tokens": 5, "logprobs": 2}));
        let up = completion(&Prompts::Tokens(vec![vec![1, 2], vec![3]]), &s, true);
        let b = Value::Object(up.body);
        assert_eq!(b["prompt"], json!([[1, 2], [3]]));
        assert_eq!(b["echo"], true);
        assert_eq!(b["max_tokens"], 5);
    }
}
