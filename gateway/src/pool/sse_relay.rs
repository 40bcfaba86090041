//! Relays an upstream's SSE stream to the client event by event: each `data:` JSON gets our
//! model id and is shown to `on_event` (which notes usage), and a failure or an end without `[DONE]` becomes
//! an OpenAI error event followed by `[DONE]`, so a client never hangs.

use axum::body::Bytes;
use futures::stream::{self, Stream, StreamExt};
use serde_json::Value;

use super::remote::ByteStream;
use crate::api::error::ApiError;

struct Relay {
    upstream: Option<ByteStream>,
    buffer: Vec<u8>,
    model: String,
    done: bool,
    on_event: Box<dyn FnMut(&Value) + Send>,
}

impl Relay {
    /// Rewrites one complete event (without its blank-line terminator).
    fn event(&mut self, raw: &[u8]) -> Option<Bytes> {
        let text = String::from_utf8_lossy(raw);
        let data = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n");
        if data.is_empty() {
            return None;
        }
        if data == "[DONE]" {
            self.done = true;
            return Some(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        let out = match serde_json::from_str::<Value>(&data) {
            Ok(mut v) => {
                if v.get("model").is_some() {
                    v["model"] = Value::String(self.model.clone());
                }
                (self.on_event)(&v);
                v.to_string()
            }
            Err(_) => data,
        };
        Some(Bytes::from(format!("data: {out}\n\n")))
    }

    /// Complete events in the buffer.
    fn drain(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some((event, sep)) = find_event_end(&self.buffer) {
            let raw: Vec<u8> = self.buffer.drain(..event + sep).take(event).collect();
            out.extend(self.event(&raw));
        }
        out
    }
}

/// Where the first event ends: its length and the separator's (`\n\n` or `\r\n\r\n`).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// An OpenAI error event (503) and `[DONE]`, as bytes.
pub fn error_event(message: &str) -> Vec<Bytes> {
    let e = ApiError::unavailable(message.to_string(), 1);
    vec![
        Bytes::from(format!("data: {}\n\n", e.to_json())),
        Bytes::from_static(b"data: [DONE]\n\n"),
    ]
}

/// The client's stream: `first` and then `rest` from the upstream.
pub fn relay(
    first: Bytes,
    rest: ByteStream,
    model: String,
    on_event: impl FnMut(&Value) + Send + 'static,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let mut relay = Relay {
        upstream: Some(rest),
        buffer: first.to_vec(),
        model,
        done: false,
        on_event: Box::new(on_event),
    };
    let ready = relay.drain();
    let head = stream::iter(ready);
    let tail = stream::unfold(relay, |mut r| async move {
        loop {
            let upstream = r.upstream.as_mut()?;
            match upstream.next().await {
                Some(Ok(bytes)) => {
                    r.buffer.extend_from_slice(&bytes);
                    let events = r.drain();
                    if r.done {
                        r.upstream = None;
                    }
                    if !events.is_empty() {
                        return Some((events, r));
                    }
                }
                Some(Err(e)) => {
                    r.upstream = None;
                    tracing::warn!(error = %e, "an upstream stream failed mid-way");
                    let events = error_event(
                        "The replica serving this stream failed before it finished; the answer is incomplete.",
                    );
                    return Some((events, r));
                }
                None => {
                    r.upstream = None;
                    if r.done {
                        return None;
                    }
                    let events = error_event(
                        "The replica serving this stream closed it before it finished; the answer is incomplete.",
                    );
                    return Some((events, r));
                }
            }
        }
    })
    .flat_map(stream::iter);
    head.chain(tail).map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(first: &str, rest: Vec<Result<&'static str, String>>) -> (String, Vec<Value>) {
        let rest: ByteStream =
            Box::pin(stream::iter(rest.into_iter().map(|r| {
                r.map(|s: &'static str| Bytes::from_static(s.as_bytes()))
            })));
        let usages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let u = usages.clone();
        let out: Vec<_> = relay(
            Bytes::from(first.to_string()),
            rest,
            "ours".into(),
            move |v| {
                if let Some(usage) = v.get("usage") {
                    u.lock().unwrap().push(usage.clone())
                }
            },
        )
        .collect()
        .await;
        let text = out
            .into_iter()
            .map(|b| String::from_utf8(b.unwrap().to_vec()).unwrap())
            .collect();
        let usages = usages.lock().unwrap().clone();
        (text, usages)
    }

    #[tokio::test]
    async fn renames_the_model_across_split_chunks_and_keeps_usage() {
        let (text, usage) = collect(
            "data: {\"model\":\"theirs\",\"x\":1}\n\ndata: {\"mod",
            vec![
                Ok("el\":\"theirs\",\"usage\":{\"total_tokens\":7}}\r\n\r\n"),
                Ok("data: [DONE]\n\n"),
            ],
        )
        .await;
        assert_eq!(
            text,
            "data: {\"model\":\"ours\",\"x\":1}\n\ndata: {\"model\":\"ours\",\"usage\":{\"total_tokens\":7}}\n\ndata: [DONE]\n\n"
        );
        assert_eq!(usage, vec![serde_json::json!({"total_tokens": 7})]);
    }

    #[tokio::test]
    async fn a_failure_or_early_end_becomes_an_error_event() {
        for rest in [vec![Err("reset".to_string())], vec![]] {
            let (text, _) = collect("data: {\"model\":\"m\"}\n\n", rest).await;
            assert!(
                text.starts_with("data: {\"model\":\"ours\"}\n\ndata: {\"error\""),
                "{text}"
            );
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        }
    }
}
