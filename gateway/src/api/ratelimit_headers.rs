//! The `x-ratelimit-*` headers OpenAI sends: limit, remaining and reset, for requests and
//! for tokens.

use axum::http::{HeaderMap, HeaderValue};

use crate::ratelimit::{duration_text, RateState, WindowState};

fn put(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(name, v);
    }
}

fn put_window(headers: &mut HeaderMap, kind: &str, w: WindowState) {
    let names: [&'static str; 3] = match kind {
        "requests" => [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
        _ => [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ],
    };
    put(headers, names[0], w.limit.to_string());
    put(headers, names[1], w.remaining.to_string());
    put(headers, names[2], duration_text(w.reset));
}

/// Adds the headers for whichever limits `state` knows.
pub fn insert(headers: &mut HeaderMap, state: RateState) {
    if let Some(w) = state.requests {
        put_window(headers, "requests", w);
    }
    if let Some(w) = state.tokens {
        put_window(headers, "tokens", w);
    }
}
