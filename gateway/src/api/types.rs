//! Request and response bodies of the OpenAI API, as far as Rosetta serves them. Fields a
//! client may send that Rosetta does not act on are accepted and ignored, as OpenAI's own
//! SDKs send extras; fields that would change the answer and are not supported get a 400.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling and length fields shared by both endpoints, plus vLLM's extensions. Parsed from
/// the same body as the endpoint's own fields, in a pass of its own (serde's `flatten` would
/// buffer the whole body a second time).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    #[serde(default, deserialize_with = "whole_number")]
    pub n: Option<i64>,
    #[serde(default, deserialize_with = "whole_number")]
    pub max_tokens: Option<i64>,
    pub stop: Option<StopField>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    #[serde(default, deserialize_with = "whole_number")]
    pub seed: Option<i64>,
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    // vLLM-compatible extensions.
    #[serde(default, deserialize_with = "whole_number")]
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    #[serde(default, deserialize_with = "whole_number")]
    pub min_tokens: Option<i64>,
    pub ignore_eos: Option<bool>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub skip_special_tokens: Option<bool>,
    /// vLLM's structured-output extensions (older `guided_*` and newer
    /// `structured_outputs: {json, regex, choice, grammar}`).
    pub guided_json: Option<serde_json::Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
    pub structured_outputs: Option<serde_json::Value>,
    /// OpenAI's request metadata; Rosetta reads `language` from it (and keeps it).
    #[serde(skip_serializing)]
    pub metadata: Option<Metadata>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    /// The stated language, if a string.
    #[serde(default, deserialize_with = "string_or_ignore")]
    pub language: Option<String>,
}

/// An integer field: an integer, or a number with no fraction (`1.0`), as OpenAI's API takes
/// it; anything else is an error naming the field.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(Some(f as i64)),
            _ => Err(D::Error::custom(format!(
                "invalid type: {n}, expected a whole number"
            ))),
        },
    }
}

/// A string, or nothing for any other JSON value (as a key Rosetta does not act on).
fn string_or_ignore<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_str().map(str::to_string))
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    /// Validated by hand for precise messages (role, content shapes).
    pub messages: Vec<serde_json::Value>,
    #[serde(default, deserialize_with = "whole_number")]
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    #[serde(default, deserialize_with = "whole_number")]
    pub top_logprobs: Option<i64>,
    pub tools: Option<Vec<serde_json::Value>>,
    pub tool_choice: Option<serde_json::Value>,
    pub parallel_tool_calls: Option<bool>,
    /// The deprecated forms of `tools` and `tool_choice`, answered in their own shape
    /// (`message.function_call`).
    pub functions: Option<Vec<serde_json::Value>>,
    pub function_call: Option<serde_json::Value>,
    pub response_format: Option<serde_json::Value>,
    /// `none`, `minimal`, `low`, `medium`, `high`: `none` turns a thinking template's
    /// thinking off.
    pub reasoning_effort: Option<String>,
    /// vLLM extension: render the assistant prompt (default true).
    pub add_generation_prompt: Option<bool>,
    /// vLLM extension: extra variables for the chat template (`enable_thinking`, ...).
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: serde_json::Value,
    pub suffix: Option<String>,
    pub echo: Option<bool>,
    #[serde(default, deserialize_with = "whole_number")]
    pub best_of: Option<i64>,
    #[serde(default, deserialize_with = "whole_number")]
    pub logprobs: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl From<rosetta_engine::Usage> for Usage {
    fn from(u: rosetta_engine::Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

// --- chat responses ---

#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// Null when the turn is only tool calls.
    pub content: Option<String>,
    pub refusal: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
    /// The deprecated single call, for requests that sent `functions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionCallOut>,
    /// The model's thinking, apart from its answer (vLLM's field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolCallOut {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionCallOut {
    pub name: String,
    pub arguments: String,
}

/// A streamed piece of a tool call: `index` always; id, type and name in its first.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
    pub refusal: Option<Vec<TokenLogprob>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<Vec<TopLogprob>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChunkChoice>,
    /// Present (as null until the last chunk) only with `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionDelta>,
}

// --- completions responses ---

#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// The legacy completions logprobs layout.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<HashMap<String, f32>>,
    pub text_offset: Vec<usize>,
}

// --- models ---

#[derive(Debug, Clone, Serialize)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: String,
    /// Rosetta's additions: what the model is and may be used for (a route alias has no
    /// licence of its own; its models have).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
    pub languages: Vec<String>,
    /// For a route alias: the models it may route this caller to, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes_to: Option<Vec<String>>,
    /// Known for models served here; remote-only models leave it out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
    /// The same, under OpenRouter's name (which aider and LiteLLM read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_length: Option<usize>,
    /// What the model can do here (models served here only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// OpenRouter's list of the request parameters the model honours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supported_parameters: Option<Vec<&'static str>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    /// Function tools: a required or named call always (constrained decoding), and the
    /// model's own choice when its template has a tool-call format.
    pub tools: bool,
    /// `tool_choice: auto`: the model may choose, and its calls are read back.
    pub tool_choice_auto: bool,
    /// `response_format` json_schema / json_object, enforced.
    pub structured_outputs: bool,
    /// Thinking returned as `reasoning_content`.
    pub reasoning: bool,
    /// An embedding model: it answers /v1/embeddings, not the generation endpoints.
    pub embeddings: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

// --- tokenize ---

#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    pub model: String,
    pub prompt: Option<String>,
    pub messages: Option<Vec<serde_json::Value>>,
    pub add_special_tokens: Option<bool>,
    pub add_generation_prompt: Option<bool>,
    /// With `messages`: tools and template variables, rendered as chat would render them.
    pub tools: Option<Vec<serde_json::Value>>,
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    pub model: String,
    pub tokens: Vec<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DetokenizeResponse {
    pub prompt: String,
}
