//! Relays an upstream's SSE stream to the client event by event: each `data:` JSON gets our
//! model id and is shown to `on_event` (which notes usage), and a failure or an end without `[DONE]` becomes
//! an OpenAI error event followed by `[DONE]`, so a client never hangs.

use axum::body::Bytes;
use futures::stream::{self, Stream, StreamExt};
use serde_json::Value;

use super::error::ApiError;
use crate::pool::remote::ByteStream;

/// Longest event accepted from an upstream; one that never ends is cut off here.
const MAX_EVENT_BYTES: usize = 1 << 20;

struct Relay {
    upstream: Option<ByteStream>,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already searched for an event's end (so each byte is scanned once).
    scanned: usize,
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

    /// Complete events in the buffer; the buffer keeps only the unfinished one.
    fn drain(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut consumed = 0;
        loop {
            let from = self.scanned.max(consumed);
            match find_event_end(&self.buffer[from..]) {
                Some((len, sep)) => {
                    let raw = self.buffer[consumed..from + len].to_vec();
                    out.extend(self.event(&raw));
                    consumed = from + len + sep;
                    self.scanned = consumed;
                }
                None => {
                    // A terminator may straddle the next chunk: rescan its last 3 bytes.
                    self.scanned = self.buffer.len().saturating_sub(3).max(consumed);
                    break;
                }
            }
        }
        self.buffer.drain(..consumed);
        self.scanned -= consumed;
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

/// `error` as an OpenAI error event, then `[DONE]`, as bytes.
pub fn error_event(error: &ApiError) -> Vec<Bytes> {
    vec![
        Bytes::from(format!("data: {}\n\n", error.to_json())),
        Bytes::from_static(b"data: [DONE]\n\n"),
    ]
}

/// The end of a relayed stream that could not finish: a 503 event naming why, and `[DONE]`.
fn cut_off(why: &str) -> Vec<Bytes> {
    error_event(&ApiError::unavailable(why.to_string(), 1))
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
        scanned: 0,
        model,
        done: false,
        on_event: Box::new(on_event),
    };
    let mut ready = relay.drain();
    if relay.buffer.len() > MAX_EVENT_BYTES {
        relay.upstream = None;
        ready.extend(cut_off(
            "The replica serving this stream sent an event too long to relay; the answer is incomplete.",
        ));
    }
    let head = stream::iter(ready);
    let tail = stream::unfold(relay, |mut r| async move {
        loop {
            let upstream = r.upstream.as_mut()?;
            match upstream.next().await {
                Some(Ok(bytes)) => {
                    r.buffer.extend_from_slice(&bytes);
                    let mut events = r.drain();
                    if r.done {
                        r.upstream = None;
                    } else if r.buffer.len() > MAX_EVENT_BYTES {
                        r.upstream = None;
                        tracing::warn!(bytes = r.buffer.len(), "an upstream event never ended; stream cut off");
                        events.extend(cut_off(
                            "The replica serving this stream sent an event too long to relay; the answer is incomplete.",
                        ));
                    }
                    if !events.is_empty() {
                        return Some((events, r));
                    }
                }
                Some(Err(e)) => {
                    r.upstream = None;
                    tracing::warn!(error = %e, "an upstream stream failed mid-way");
                    let events = cut_off(
                        "The replica serving this stream failed before it finished; the answer is incomplete.",
                    );
                    return Some((events, r));
                }
                None => {
                    r.upstream = None;
                    if r.done {
                        return None;
                    }
                    let events = cut_off(
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

    #[tokio::test]
    async fn byte_by_byte_chunks_relay_the_same_events() {
        let whole =
            "data: {\"model\":\"a\",\"x\":1}\r\n\r\ndata: {\"model\":\"b\"}\n\ndata: [DONE]\n\n";
        let bytes: Vec<Result<&'static str, String>> =
            (1..whole.len()).map(|i| Ok(&whole[i..i + 1])).collect();
        let (text, _) = collect(&whole[..1], bytes).await;
        assert_eq!(
            text,
            "data: {\"model\":\"ours\",\"x\":1}\n\ndata: {\"model\":\"ours\"}\n\ndata: [DONE]\n\n"
        );
    }

    #[tokio::test]
    async fn an_event_that_never_ends_is_cut_off() {
        static CHUNK: [u8; 65536] = [b'x'; 65536];
        let chunk = std::str::from_utf8(&CHUNK).unwrap();
        // 64 MiB offered without a single newline: the relay stops reading after ~1 MiB.
        let rest: Vec<Result<&'static str, String>> = (0..1024).map(|_| Ok(chunk)).collect();
        let (text, _) = collect("data: ", rest).await;
        assert!(text.starts_with("data: {\"error\""), "{:.200}", text);
        assert!(text.contains("too long"), "{:.200}", text);
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    proptest::proptest! {
        /// Any bytes, cut anywhere: the relay never panics and always ends with `[DONE]`.
        #[test]
        fn arbitrary_upstream_bytes_end_with_done(
            first in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            rest in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![
                        proptest::prelude::any::<u8>(),
                        proptest::prelude::Just(b'\n'),
                        proptest::prelude::Just(b'\r'),
                    ],
                    0..64,
                ),
                0..8,
            ),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let rest: ByteStream = Box::pin(stream::iter(
                rest.into_iter().map(|c| Ok(Bytes::from(c))),
            ));
            let out: Vec<_> = runtime.block_on(
                relay(Bytes::from(first), rest, "ours".into(), |_| {}).collect::<Vec<_>>(),
            );
            let text: Vec<u8> = out.into_iter().flat_map(|b| b.unwrap().to_vec()).collect();
            proptest::prop_assert!(text.ends_with(b"data: [DONE]\n\n"));
        }
    }
}
