//! The prompt shapes OpenAI's completions and embeddings take: a string, a list of strings,
//! a list of token ids, or a list of those.

use rosetta_config::RequestLimits;
use serde_json::Value;

use super::error::ApiError;
use super::params;

/// The prompts (or inputs) of a request, in their validated shape; text is tokenized on the
/// replica.
#[derive(Debug, Clone)]
pub enum Prompts {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

impl Prompts {
    pub fn len(&self) -> usize {
        match self {
            Prompts::Texts(t) => t.len(),
            Prompts::Tokens(t) => t.len(),
        }
    }
}

/// Reads `param`. `count` checks how many there are before any is copied, so a body of
/// many costs nothing more than its bytes.
pub fn parse(
    param: &'static str,
    value: &Value,
    limits: &RequestLimits,
    count: impl FnOnce(usize) -> Result<(), ApiError>,
) -> Result<Prompts, ApiError> {
    let bad = || {
        ApiError::invalid_param(param, format!("Invalid '{param}': expected a string, an array of strings, an array of token ids, or an array of token-id arrays."))
    };
    let tokens = |v: &[Value]| -> Result<Vec<u32>, ApiError> {
        params::at_most(param, "prompt tokens", v.len(), limits.max_prompt_tokens)?;
        v.iter()
            .map(|t| {
                t.as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .ok_or_else(|| {
                        ApiError::invalid_param(
                            param,
                            format!("Invalid token id {t} in '{param}'."),
                        )
                    })
            })
            .collect()
    };
    let Value::Array(items) = value else {
        return match value {
            Value::String(s) => {
                count(1)?;
                Ok(Prompts::Texts(vec![s.clone()]))
            }
            _ => Err(bad()),
        };
    };
    let Some(first) = items.first() else {
        return Err(ApiError::invalid_param(
            param,
            format!("'{param}' must not be empty."),
        ));
    };
    count(if first.is_number() { 1 } else { items.len() })?;
    Ok(match first {
        Value::String(_) => Prompts::Texts(
            items
                .iter()
                .map(|p| p.as_str().map(str::to_string).ok_or_else(bad))
                .collect::<Result<_, _>>()?,
        ),
        Value::Number(_) => Prompts::Tokens(vec![tokens(items)?]),
        Value::Array(_) => Prompts::Tokens(
            items
                .iter()
                .map(|p| p.as_array().ok_or_else(bad).and_then(|a| tokens(a)))
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(bad()),
    })
}
