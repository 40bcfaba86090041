//! The `x-ratelimit-*` headers OpenAI sends: limit, remaining and reset, for requests and
//! for tokens.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};

use crate::ratelimit::{RateState, WindowState};

/// A duration the way OpenAI writes it: `20ms`, `1.5s`, `6m0s`.
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        let text = format!("{secs:.3}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        return format!("{text}s");
    }
    let whole = d.as_secs();
    let (h, m, s) = (whole / 3600, whole / 60 % 60, whole % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else {
        format!("{m}m{s}s")
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_openais() {
        assert_eq!(duration_text(Duration::from_millis(20)), "20ms");
        assert_eq!(duration_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration_text(Duration::from_secs(1)), "1s");
        assert_eq!(duration_text(Duration::from_secs(360)), "6m0s");
        assert_eq!(duration_text(Duration::from_secs(3725)), "1h2m5s");
    }
}
