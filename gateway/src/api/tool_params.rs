//! What the chat and responses endpoints share about the assistant's turn: `tools`,
//! `tool_choice` and `parallel_tool_calls` as each writes them, read into one [`Toolset`]
//! (and the deprecated `functions`); assistant turns' `tool_calls` in history; the grammar a
//! required call decodes under; the template's variables (`chat_template_kwargs`,
//! `reasoning_effort`); and the parser that reads a model's output back.

use serde_json::Value;

use super::error::ApiError;
use super::params;
use crate::assistant::{OutputParser, Tool, ToolChoice, ToolError, Toolset};
use crate::registry::LocalModel;
use rosetta_config::RequestLimits;

impl From<ToolError> for ApiError {
    fn from(e: ToolError) -> Self {
        ApiError::invalid_param(&e.param, e.message)
    }
}

/// Where the function's fields sit: chat nests them under `function`, responses does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Responses,
}

/// The request's tools and choice; `None` when it offers none.
pub fn toolset(
    tools: Option<&[Value]>,
    choice: Option<&Value>,
    parallel: Option<bool>,
    shape: Shape,
    limits: &RequestLimits,
) -> Result<Option<Toolset>, ApiError> {
    let tools = tools.unwrap_or_default();
    params::at_most("tools", "tools", tools.len(), limits.max_tools)?;
    let tools = tools
        .iter()
        .enumerate()
        .map(|(i, t)| tool(t, i, shape))
        .collect::<Result<Vec<_>, _>>()?;
    let choice = match choice {
        None | Some(Value::Null) if tools.is_empty() => return Ok(None),
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(c) => tool_choice(c, shape)?,
    };
    if tools.is_empty() && choice == ToolChoice::None {
        return Ok(None);
    }
    Ok(Some(Toolset::new(tools, choice, parallel.unwrap_or(true))?))
}

fn tool(t: &Value, i: usize, shape: Shape) -> Result<Tool, ApiError> {
    let at = format!("tools[{i}]");
    let kind = t.get("type").and_then(Value::as_str);
    if kind != Some("function") {
        let what = kind.map_or("without a type".to_string(), |k| format!("of type `{k}`"));
        return Err(ApiError::invalid_param(
            &format!("{at}.type"),
            format!("Invalid '{at}': tools {what} are not supported; only `function` tools are."),
        ));
    }
    let (f, at) = match shape {
        Shape::Chat => (
            t.get("function").filter(|f| f.is_object()).ok_or_else(|| {
                ApiError::invalid_param(
                    &format!("{at}.function"),
                    format!("Missing required parameter: '{at}.function'."),
                )
            })?,
            format!("{at}.function"),
        ),
        Shape::Responses => (t, at),
    };
    let name = match f.get("name") {
        Some(Value::String(n)) if valid_name(n) => n.clone(),
        Some(Value::String(n)) => {
            return Err(ApiError::invalid_param(
                &format!("{at}.name"),
                format!("Invalid '{at}.name': `{n}` must be 1 to 64 characters of a-z, A-Z, 0-9, `_` and `-`."),
            ))
        }
        _ => {
            return Err(ApiError::invalid_param(
                &format!("{at}.name"),
                format!("Missing required parameter: '{at}.name'."),
            ))
        }
    };
    let description = match f.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(_) => {
            return Err(ApiError::invalid_param(
                &format!("{at}.description"),
                format!("Invalid '{at}.description': expected a string."),
            ))
        }
    };
    let parameters = match f.get("parameters") {
        // OpenAI: omitting parameters defines a function with an empty parameter list.
        None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(ApiError::invalid_param(
                &format!("{at}.parameters"),
                format!("Invalid '{at}.parameters': expected a JSON Schema object."),
            ))
        }
    };
    Ok(Tool {
        name,
        description,
        parameters,
        strict: f.get("strict").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// OpenAI's rule for function names.
fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn tool_choice(c: &Value, shape: Shape) -> Result<ToolChoice, ApiError> {
    let invalid = || {
        ApiError::invalid_param(
            "tool_choice",
            "Invalid 'tool_choice': expected `none`, `auto`, `required` or a function to call.",
        )
    };
    match c {
        Value::String(s) => match s.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" => Ok(ToolChoice::Auto),
            "required" => Ok(ToolChoice::Required),
            _ => Err(invalid()),
        },
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = match shape {
                Shape::Chat => o.get("function").and_then(|f| f.get("name")),
                Shape::Responses => o.get("name"),
            };
            name.and_then(Value::as_str)
                .map(|n| ToolChoice::Named(n.to_string()))
                .ok_or_else(invalid)
        }
        _ => Err(invalid()),
    }
}

/// An assistant turn's `tool_calls`, as templates read them (arguments parsed into an
/// object where they are JSON, as vLLM passes them), and their ids.
pub fn history_calls(raw: &Value, param: &str) -> Result<Vec<Value>, ApiError> {
    let at = format!("{param}.tool_calls");
    let calls = raw.as_array().ok_or_else(|| {
        ApiError::invalid_param(&at, format!("Invalid '{at}': expected an array."))
    })?;
    calls
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let at = format!("{at}[{j}]");
            let bad = |what: &str| {
                ApiError::invalid_param(&at, format!("Invalid '{at}': {what}."))
            };
            let id = c.get("id").and_then(Value::as_str).ok_or_else(|| bad("'id' must be a string"))?;
            let f = c.get("function").ok_or_else(|| bad("'function' is required"))?;
            let name = f.get("name").and_then(Value::as_str).ok_or_else(|| bad("'function.name' must be a string"))?;
            let arguments = match f.get("arguments") {
                Some(Value::String(a)) => serde_json::from_str::<Value>(a).unwrap_or_else(|_| Value::String(a.clone())),
                None | Some(Value::Null) => serde_json::json!({}),
                Some(_) => return Err(bad("'function.arguments' must be a string")),
            };
            Ok(serde_json::json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}))
        })
        .collect()
}

/// `functions` and `function_call` (OpenAI's deprecated forms) as tools: one call at most.
pub fn legacy_toolset(
    functions: &[Value],
    function_call: Option<&Value>,
    limits: &RequestLimits,
) -> Result<Option<Toolset>, ApiError> {
    let tools: Vec<Value> = functions
        .iter()
        .map(|f| serde_json::json!({"type": "function", "function": f}))
        .collect();
    let choice = match function_call {
        Some(Value::Object(o)) => Some(serde_json::json!({"type": "function", "function": o})),
        other => other.cloned(),
    };
    toolset(
        Some(&tools),
        choice.as_ref(),
        Some(false),
        Shape::Chat,
        limits,
    )
    .map_err(|e| match e.body.param.clone() {
        Some(p) => e.with_param(
            &p.replace("tools[", "functions[")
                .replace(".function.", ".")
                .replace("tool_choice", "function_call"),
        ),
        None => e,
    })
}

/// A call the client requires is the grammar the model decodes under; it cannot be
/// combined with another structured output.
pub fn force_tool_calls(
    sampling: &mut params::Sampling,
    tools: Option<&Toolset>,
) -> Result<(), ApiError> {
    let Some(grammar) = tools.and_then(Toolset::forced_grammar) else {
        return Ok(());
    };
    if sampling.grammar.is_some() {
        return Err(ApiError::invalid_param(
            "tool_choice",
            "A required or named tool call cannot be combined with `response_format` or another structured output.",
        ));
    }
    sampling.grammar = Some(std::sync::Arc::new(grammar));
    Ok(())
}

/// `reasoning_effort` values OpenAI defines.
const EFFORTS: [&str; 5] = ["none", "minimal", "low", "medium", "high"];

/// The template's variables: `chat_template_kwargs` as given, and `reasoning_effort`
/// (which templates of reasoning models read; `none` also turns `enable_thinking` off unless
/// the kwargs say otherwise).
pub fn template_kwargs(
    kwargs: Option<serde_json::Map<String, Value>>,
    effort: Option<&str>,
) -> Result<Option<serde_json::Map<String, Value>>, ApiError> {
    let Some(effort) = effort else {
        return Ok(kwargs);
    };
    if !EFFORTS.contains(&effort) {
        return Err(ApiError::invalid_param(
            "reasoning_effort",
            format!(
                "Invalid 'reasoning_effort': `{effort}`; expected one of {}.",
                EFFORTS.join(", ")
            ),
        ));
    }
    let mut kwargs = kwargs.unwrap_or_default();
    kwargs
        .entry("reasoning_effort")
        .or_insert_with(|| Value::from(effort));
    if effort == "none" {
        kwargs
            .entry("enable_thinking")
            .or_insert(Value::Bool(false));
    }
    Ok(Some(kwargs))
}

/// The model must be able to choose tools itself when the request leaves it the choice.
pub fn check_tool_format(model: &LocalModel, tools: Option<&Toolset>) -> Result<(), ApiError> {
    if tools.is_some_and(Toolset::parsed_from_text) && model.tool_format.is_none() {
        return Err(ApiError::invalid_param(
            "tool_choice",
            format!(
                "The model `{}` cannot choose tools itself: its chat template has no tool-call format Rosetta reads (set `tool_parser` in its config). Use `tool_choice: required` or name a function.",
                model.id
            ),
        ));
    }
    Ok(())
}

/// The parser of one choice's output.
pub fn output_parser(
    model: &LocalModel,
    tools: Option<&Toolset>,
    sampling: &params::Sampling,
) -> OutputParser {
    OutputParser::new(
        tools,
        model.tool_format,
        model.reasoning,
        sampling.grammar.is_some() && !tools.is_some_and(Toolset::forces_call),
    )
}
