//! Checks sampling fields against OpenAI's ranges and the server's size limits, once, right
//! after parsing (before language, routing, policy or tokenization); then, on the replica
//! that serves, against the model (token ids, context length) to make the engine's request.

use std::collections::HashMap;
use std::sync::Arc;

use rosetta_config::RequestLimits;
use rosetta_engine::grammar::{Constraint, GrammarSpec};
use rosetta_engine::{GenerateRequest, GenerationParams, SamplingParams, DEFAULT_PRIORITY};

use super::error::ApiError;
use super::types::{SamplingFields, StopField};
use crate::registry::LocalModel;

/// Most alternatives per token in logprobs.
pub const MAX_TOP_LOGPROBS: i64 = 20;

fn in_range(param: &str, v: Option<f32>, lo: f32, hi: f32) -> Result<Option<f32>, ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) || x.is_nan() => Err(ApiError::invalid_param(
            param,
            format!("Invalid '{param}': {x} is not between {lo} and {hi}."),
        )),
        other => Ok(other),
    }
}

fn too_many(param: &str, what: &str, got: usize, limit: usize) -> ApiError {
    ApiError::invalid_param(
        param,
        format!("Invalid '{param}': {got} {what} is more than this server's limit of {limit}."),
    )
    .with_code("request_too_large")
}

/// Fails with a 400 naming `param` when `got` is over `limit`.
pub fn at_most(param: &str, what: &str, got: usize, limit: usize) -> Result<(), ApiError> {
    if got > limit {
        Err(too_many(param, what, got, limit))
    } else {
        Ok(())
    }
}

/// A request's sampling fields, validated without a model. The parameters are built once
/// and shared by every prompt and choice of the request.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub params: Arc<GenerationParams>,
    /// Structured output: what the text must match (compiled for the model that serves).
    pub grammar: Option<Arc<GrammarSpec>>,
    /// The endpoint's max_tokens (at least 1) when given.
    pub max_tokens: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    /// The sampling fields the client set, re-encoded from their parsed types: what a
    /// remote replica is sent (structured-output fields aside; see `upstream_body`).
    pub stated: serde_json::Map<String, serde_json::Value>,
}

/// vLLM's structured-output fields: at most one grammar.
fn vllm_grammar(f: &SamplingFields) -> Result<Option<GrammarSpec>, ApiError> {
    let mut found: Vec<(&str, GrammarSpec)> = Vec::new();
    if let Some(schema) = &f.guided_json {
        found.push(("guided_json", json_schema("guided_json", schema)?));
    }
    if let Some(rx) = &f.guided_regex {
        found.push(("guided_regex", GrammarSpec::Regex(rx.clone())));
    }
    if let Some(choices) = &f.guided_choice {
        found.push(("guided_choice", GrammarSpec::Choice(choices.clone())));
    }
    if let Some(g) = &f.guided_grammar {
        found.push(("guided_grammar", GrammarSpec::Lark(g.clone())));
    }
    if let Some(so) = &f.structured_outputs {
        let field = |k: &str| so.get(k).filter(|v| !v.is_null());
        let string = |k: &str| -> Result<Option<String>, ApiError> {
            match field(k) {
                None => Ok(None),
                Some(v) => v.as_str().map(|s| Some(s.to_string())).ok_or_else(|| {
                    ApiError::invalid_param(
                        &format!("structured_outputs.{k}"),
                        format!("'structured_outputs.{k}' must be a string."),
                    )
                }),
            }
        };
        if let Some(schema) = field("json") {
            found.push((
                "structured_outputs.json",
                json_schema("structured_outputs.json", schema)?,
            ));
        }
        if let Some(rx) = string("regex")? {
            found.push(("structured_outputs.regex", GrammarSpec::Regex(rx)));
        }
        if let Some(choices) = field("choice") {
            let choices: Vec<String> = serde_json::from_value(choices.clone()).map_err(|_| {
                ApiError::invalid_param(
                    "structured_outputs.choice",
                    "'structured_outputs.choice' must be a list of strings.",
                )
            })?;
            found.push(("structured_outputs.choice", GrammarSpec::Choice(choices)));
        }
        if let Some(g) = string("grammar")? {
            found.push(("structured_outputs.grammar", GrammarSpec::Lark(g)));
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop().map(|(_, g)| g)),
        _ => {
            let names: Vec<&str> = found.iter().map(|(n, _)| *n).collect();
            Err(ApiError::invalid_param(
                names[1],
                format!(
                    "Give one structured-output constraint, not several ({}).",
                    names.join(", ")
                ),
            ))
        }
    }
}

/// A JSON schema as a grammar: `true` (any JSON), or an object.
pub fn json_schema(param: &str, schema: &serde_json::Value) -> Result<GrammarSpec, ApiError> {
    match schema {
        serde_json::Value::Object(_) => Ok(GrammarSpec::JsonSchema(schema.clone())),
        serde_json::Value::Bool(true) => Ok(GrammarSpec::JsonSchema(serde_json::json!({}))),
        _ => Err(ApiError::invalid_param(
            param,
            format!("Invalid '{param}': a JSON schema must be an object."),
        )),
    }
}

/// `logprobs` is the number of alternatives to report per token (None: no logprobs).
pub fn validate(
    f: &SamplingFields,
    limits: &RequestLimits,
    max_tokens: Option<i64>,
    logprobs: Option<usize>,
) -> Result<Sampling, ApiError> {
    let temperature = in_range("temperature", f.temperature, 0.0, 2.0)?;
    let top_p = in_range("top_p", f.top_p, 0.0, 1.0)?;
    let presence = in_range("presence_penalty", f.presence_penalty, -2.0, 2.0)?;
    let frequency = in_range("frequency_penalty", f.frequency_penalty, -2.0, 2.0)?;
    let min_p = in_range("min_p", f.min_p, 0.0, 1.0)?;
    let repetition = match f.repetition_penalty {
        Some(r) if !(r > 0.0 && r.is_finite()) => {
            return Err(ApiError::invalid_param(
                "repetition_penalty",
                format!("Invalid 'repetition_penalty': {r} must be greater than 0."),
            ))
        }
        other => other,
    };
    let n = f.n.unwrap_or(1);
    let max_choices = limits.max_choices;
    if n < 1 || n as u64 > max_choices as u64 {
        return Err(ApiError::invalid_param(
            "n",
            format!("Invalid 'n': {n} is not between 1 and {max_choices}."),
        ));
    }
    // Prompts × n is checked where prompts are counted, before any is copied.
    let n = n as usize;
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid_param(
                "top_k",
                format!("Invalid 'top_k': {k}; use a positive number, or -1 or 0 to disable it."),
            ))
        }
    };
    let logit_bias = logit_bias(f.logit_bias.as_ref(), limits)?;
    let stop: Vec<String> = match &f.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s.clone()],
        Some(StopField::Many(v)) => v.clone(),
    };
    at_most(
        "stop",
        "stop sequences",
        stop.len(),
        limits.max_stop_sequences,
    )?;
    if let Some(long) = stop.iter().find(|s| s.len() > limits.max_stop_bytes) {
        return Err(too_many(
            "stop",
            "bytes in a stop sequence",
            long.len(),
            limits.max_stop_bytes,
        ));
    }
    let mut stop_token_ids = f.stop_token_ids.clone().unwrap_or_default();
    at_most(
        "stop_token_ids",
        "token ids",
        stop_token_ids.len(),
        limits.max_stop_token_ids,
    )?;
    stop_token_ids.sort_unstable();
    stop_token_ids.dedup();
    let min_tokens = f.min_tokens.unwrap_or(0);
    if min_tokens < 0 {
        return Err(ApiError::invalid_param(
            "min_tokens",
            "Invalid 'min_tokens': it must not be negative.",
        ));
    }
    let max_tokens = match max_tokens {
        Some(m) if m < 1 => {
            return Err(ApiError::invalid_param(
                "max_tokens",
                format!("Invalid 'max_tokens': {m}; it must be at least 1."),
            ))
        }
        Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
        None => None,
    };
    let min_tokens = usize::try_from(min_tokens).unwrap_or(usize::MAX);
    if max_tokens.is_some_and(|m| min_tokens > m) {
        return Err(ApiError::invalid_param(
            "min_tokens",
            "Invalid 'min_tokens': it is larger than max_tokens.",
        ));
    }
    let stream = f.stream.unwrap_or(false);
    if f.stream_options.is_some() && !stream {
        return Err(ApiError::invalid_param(
            "stream_options",
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        ));
    }
    let sampling = SamplingParams {
        temperature: temperature.unwrap_or(1.0),
        top_p: top_p.unwrap_or(1.0),
        top_k,
        min_p: min_p.unwrap_or(0.0),
        presence_penalty: presence.unwrap_or(0.0),
        frequency_penalty: frequency.unwrap_or(0.0),
        repetition_penalty: repetition.unwrap_or(1.0),
        logit_bias,
        seed: f.seed.map(|s| s as u64),
        logprobs,
    };
    let grammar = vllm_grammar(f)?.map(Arc::new);
    Ok(Sampling {
        grammar,
        params: Arc::new(GenerationParams {
            n,
            min_tokens,
            ignore_eos: f.ignore_eos.unwrap_or(false),
            sampling,
            stop: stop.into(),
            stop_token_ids,
            skip_special_tokens: f.skip_special_tokens.unwrap_or(true),
        }),
        max_tokens,
        stream,
        include_usage: stream && f.stream_options.as_ref().is_some_and(|o| o.include_usage),
        stated: stated_fields(f),
    })
}

/// Fields the upstream gets in another form: the constraint (normalised from `grammar`),
/// the length (from `max_tokens`), and what says how to stream.
const RESTATED: &[&str] = &[
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
    "max_tokens",
    "stream",
    "stream_options",
];

/// The sampling fields the client set, as the parser read them.
fn stated_fields(f: &SamplingFields) -> serde_json::Map<String, serde_json::Value> {
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::to_value(f) else {
        return serde_json::Map::new();
    };
    fields.retain(|k, v| !v.is_null() && !RESTATED.contains(&k.as_str()));
    fields
}

/// Parses `logit_bias` keys to token ids, sorted; two keys naming one token is an error.
fn logit_bias(
    raw: Option<&HashMap<String, f32>>,
    limits: &RequestLimits,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    at_most("logit_bias", "entries", raw.len(), limits.max_logit_bias)?;
    let mut out = Vec::with_capacity(raw.len());
    for (key, &bias) in raw {
        let id: u32 = key.trim().parse().map_err(|_| {
            ApiError::invalid_param(
                "logit_bias",
                format!("Invalid key in 'logit_bias': `{key}` is not a token id."),
            )
        })?;
        if !(-100.0..=100.0).contains(&bias) {
            return Err(ApiError::invalid_param(
                "logit_bias",
                format!("Invalid 'logit_bias' value {bias} for token {key}: it must be between -100 and 100."),
            ));
        }
        out.push((id, bias));
    }
    out.sort_by_key(|b| b.0);
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ApiError::invalid_param(
            "logit_bias",
            format!(
                "Invalid 'logit_bias': token {} is named by two keys.",
                w[0].0
            ),
        ));
    }
    Ok(out)
}

/// Errors about the length budget name the field the client used (`max_completion_tokens`,
/// `max_output_tokens`).
pub fn rename_max_tokens(e: ApiError, param_name: &str) -> ApiError {
    if e.body.param.as_deref() == Some("max_tokens") {
        e.with_param(param_name)
    } else {
        e
    }
}

impl Sampling {
    /// Sets the endpoint's own structured output (`param`: the field that gave it); a
    /// request that also gave one of vLLM's is a 400.
    pub fn constrain(&mut self, param: &str, grammar: GrammarSpec) -> Result<(), ApiError> {
        if self.grammar.is_some() {
            return Err(ApiError::invalid_param(
                param,
                format!("Give one structured-output constraint: `{param}` or vLLM's `guided_*` / `structured_outputs`, not both."),
            ));
        }
        self.grammar = Some(Arc::new(grammar));
        Ok(())
    }

    /// Checks the token ids the parameters name against `model`'s vocabulary.
    pub fn check_vocabulary(&self, model: &LocalModel) -> Result<(), ApiError> {
        let vocab = model.tokenizer.vocab_size().max(model.vocab_size);
        let p = &self.params;
        if let Some(&(id, _)) = p
            .sampling
            .logit_bias
            .last()
            .filter(|b| b.0 as usize >= vocab)
        {
            return Err(ApiError::invalid_param(
                "logit_bias",
                format!("Invalid key in 'logit_bias': `{id}` is not a token id of this model (0 to {}).", vocab - 1),
            ));
        }
        if let Some(&bad) = p.stop_token_ids.last().filter(|&&id| id as usize >= vocab) {
            return Err(ApiError::invalid_param(
                "stop_token_ids",
                format!("Invalid 'stop_token_ids': {bad} is not a token id of this model."),
            ));
        }
        Ok(())
    }

    /// The request's grammar compiled for `model`; a grammar it cannot compile is a 400
    /// naming what is unsupported.
    pub fn constraint(&self, model: &LocalModel) -> Result<Option<Constraint>, ApiError> {
        let Some(spec) = &self.grammar else {
            return Ok(None);
        };
        let compiler = model.grammar.as_ref().ok_or_else(|| {
            ApiError::invalid_param(
                "response_format",
                format!("Structured outputs are not available for the model `{}` (its tokenizer could not be prepared for them).", model.id),
            )
        })?;
        compiler.compile(spec).map(Some).map_err(|e| {
            ApiError::invalid_param(
                "response_format",
                format!("The structured-output constraint cannot be used: {e}"),
            )
        })
    }

    /// The engine's request for one prompt: the shared parameters and this prompt's length
    /// budget. Unset max_tokens means the rest of the context.
    pub fn request(
        &self,
        model: &LocalModel,
        prompt: Vec<u32>,
    ) -> Result<GenerateRequest, ApiError> {
        let prompt_len = prompt.len();
        if prompt_len == 0 {
            return Err(ApiError::invalid_param("prompt", "The prompt is empty."));
        }
        let room = model.max_context.saturating_sub(prompt_len);
        // Unset: the rest of the context (at least one token, so a full prompt is reported).
        let max_tokens = self.max_tokens.unwrap_or(room.max(1));
        let requested = prompt_len.saturating_add(max_tokens);
        if requested > model.max_context {
            return Err(ApiError::context_length_exceeded(format!(
                "This model's maximum context length is {} tokens. However, you requested {requested} tokens ({prompt_len} in the prompt, {max_tokens} in the completion). Please reduce the length of the prompt or completion.",
                model.max_context,
            )));
        }
        if self.params.min_tokens > max_tokens {
            return Err(ApiError::invalid_param(
                "min_tokens",
                "Invalid 'min_tokens': it is larger than max_tokens.",
            ));
        }
        Ok(GenerateRequest {
            prompt,
            max_tokens,
            params: self.params.clone(),
            // Tenants and their tiers are set at admission.
            priority: DEFAULT_PRIORITY,
            tenant: None,
            deadline: None,
            // Compiled once per request by the pipeline and set on each prompt.
            constraint: None,
        })
    }
}

/// `metadata.language` as the client sent it (checked with the header by the pipeline).
pub fn stated_language(f: &SamplingFields) -> Option<String> {
    f.metadata.as_ref().and_then(|m| m.language.clone())
}

/// Validates `top_logprobs`-style counts.
pub fn top_logprobs(param: &str, v: i64) -> Result<usize, ApiError> {
    if (0..=MAX_TOP_LOGPROBS).contains(&v) {
        Ok(v as usize)
    } else {
        Err(ApiError::invalid_param(
            param,
            format!("Invalid '{param}': {v} is not between 0 and {MAX_TOP_LOGPROBS}."),
        ))
    }
}
