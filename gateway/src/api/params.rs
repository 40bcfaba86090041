//! Checks sampling fields against OpenAI's ranges and turns them into the engine's request.

use rosetta_engine::{GenerateRequest, SamplingParams, DEFAULT_PRIORITY};

use super::error::ApiError;
use super::types::{SamplingFields, StopField};
use crate::registry::ServedModel;

/// Most choices one request may ask for.
const MAX_N: i64 = 128;
/// Most alternatives per token in logprobs.
pub const MAX_TOP_LOGPROBS: i64 = 20;
const MAX_STOP_STRINGS: usize = 4;

fn in_range(param: &str, v: Option<f32>, lo: f32, hi: f32) -> Result<Option<f32>, ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) || x.is_nan() => Err(ApiError::invalid_param(
            param,
            format!("Invalid '{param}': {x} is not between {lo} and {hi}."),
        )),
        other => Ok(other),
    }
}

/// The parts of a request both endpoints share, validated.
pub struct Generation {
    pub request: GenerateRequest,
    pub stream: bool,
    pub include_usage: bool,
}

/// `logprobs` is the number of alternatives to report per token (None: no logprobs).
/// `max_tokens` is the endpoint's own field (chat also has max_completion_tokens);
/// `None` means "the rest of the context".
pub fn generation(
    f: &SamplingFields,
    model: &ServedModel,
    prompt: Vec<u32>,
    max_tokens: Option<i64>,
    logprobs: Option<usize>,
) -> Result<Generation, ApiError> {
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
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid_param(
            "n",
            format!("Invalid 'n': {n} is not between 1 and {MAX_N}."),
        ));
    }
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
    let vocab = model.tokenizer.vocab_size().max(model.vocab_size);
    let mut logit_bias = Vec::new();
    for (key, &bias) in f.logit_bias.iter().flatten() {
        let id: u32 = key.parse().ok().filter(|&id: &u32| (id as usize) < vocab).ok_or_else(|| {
            ApiError::invalid_param(
                "logit_bias",
                format!("Invalid key in 'logit_bias': `{key}` is not a token id of this model (0 to {}).", vocab - 1),
            )
        })?;
        if !(-100.0..=100.0).contains(&bias) {
            return Err(ApiError::invalid_param(
                "logit_bias",
                format!("Invalid 'logit_bias' value {bias} for token {key}: it must be between -100 and 100."),
            ));
        }
        logit_bias.push((id, bias));
    }
    logit_bias.sort_by_key(|b| b.0);
    let stop = match &f.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s.clone()],
        Some(StopField::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid_param(
            "stop",
            format!(
                "Invalid 'stop': at most {MAX_STOP_STRINGS} stop sequences are allowed, got {}.",
                stop.len()
            ),
        ));
    }
    if let Some(bad) = f
        .stop_token_ids
        .iter()
        .flatten()
        .find(|&&id| id as usize >= vocab)
    {
        return Err(ApiError::invalid_param(
            "stop_token_ids",
            format!("Invalid 'stop_token_ids': {bad} is not a token id of this model."),
        ));
    }
    let min_tokens = f.min_tokens.unwrap_or(0);
    if min_tokens < 0 {
        return Err(ApiError::invalid_param(
            "min_tokens",
            "Invalid 'min_tokens': it must not be negative.",
        ));
    }
    let prompt_len = prompt.len();
    if prompt_len == 0 {
        return Err(ApiError::invalid_param("prompt", "The prompt is empty."));
    }
    let room = model.max_context.saturating_sub(prompt_len);
    let max_tokens = match max_tokens {
        Some(m) if m < 1 => {
            return Err(ApiError::invalid_param(
                "max_tokens",
                format!("Invalid 'max_tokens': {m}; it must be at least 1."),
            ))
        }
        Some(m) => m as usize,
        // Unset: the rest of the context (at least one token, so a full prompt is reported).
        None => room.max(1),
    };
    let requested = prompt_len.saturating_add(max_tokens);
    if requested > model.max_context {
        return Err(ApiError::context_length_exceeded(format!(
            "This model's maximum context length is {} tokens. However, you requested {requested} tokens ({prompt_len} in the prompt, {max_tokens} in the completion). Please reduce the length of the prompt or completion.",
            model.max_context,
        )));
    }
    if min_tokens as usize > max_tokens {
        return Err(ApiError::invalid_param(
            "min_tokens",
            "Invalid 'min_tokens': it is larger than max_tokens.",
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
    let stream = f.stream.unwrap_or(false);
    if f.stream_options.is_some() && !stream {
        return Err(ApiError::invalid_param(
            "stream_options",
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        ));
    }
    Ok(Generation {
        request: GenerateRequest {
            prompt,
            n: n as usize,
            max_tokens,
            min_tokens: min_tokens as usize,
            ignore_eos: f.ignore_eos.unwrap_or(false),
            sampling,
            stop,
            stop_token_ids: f.stop_token_ids.clone().unwrap_or_default(),
            skip_special_tokens: f.skip_special_tokens.unwrap_or(true),
            // Tenants and their tiers arrive with authentication; until then all are equal.
            priority: DEFAULT_PRIORITY,
            tenant: None,
            deadline: None,
        },
        stream,
        include_usage: stream && f.stream_options.as_ref().is_some_and(|o| o.include_usage),
    })
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
