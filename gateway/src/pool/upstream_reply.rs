//! An OpenAI-compatible upstream's answer read as replies, the same events the native engine's
//! tokens become: a `chat.completion` or `text_completion` body, or its SSE stream of chunks
//! (split anywhere). Thinking (`reasoning_content`), content, tool calls and logprobs keep
//! their meaning; ids, model and fingerprint are the gateway's to give. An event over 1 MiB,
//! a failure, or an end before `[DONE]` ends the replies with an error, so a client never
//! hangs on a broken upstream.

use std::collections::HashSet;

use axum::body::Bytes;
use futures::stream::{self, Stream, StreamExt};
use rosetta_engine::Usage;
use serde_json::Value;

use super::remote::ByteStream;
use crate::assistant::Piece;
use crate::reply::{Finish, ReplyError, ReplyEvent, Step, TokenLogprob, TopLogprob};

/// Longest event accepted from an upstream; one that never ends is cut off here.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// A whole answer's body as replies: one step per choice, then its usage.
pub fn whole(body: &Value) -> Vec<ReplyEvent> {
    let mut reader = ChunkReader::default();
    let mut out = reader.read(body, true);
    if !matches!(out.last(), Some(ReplyEvent::Error(_))) {
        if body["choices"].is_array() {
            out.push(ReplyEvent::Done(reader.usage()));
        } else {
            out.push(ReplyEvent::Error(ReplyError::Cut(
                "the replica's answer has no choices".into(),
            )));
        }
    }
    out
}

/// A streamed answer as replies: `first` (already received) and then `rest`.
pub fn stream(first: Bytes, rest: ByteStream) -> impl Stream<Item = ReplyEvent> + Send {
    let mut reader = StreamReader {
        upstream: Some(rest),
        events: EventSplitter::default(),
        chunks: ChunkReader::default(),
        ended: false,
    };
    let head = reader.take(&first);
    let tail = stream::unfold(reader, |mut r| async move {
        loop {
            if r.ended {
                return None;
            }
            let next = r.upstream.as_mut()?.next().await;
            let events = match next {
                Some(Ok(bytes)) => r.take(&bytes),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "an upstream stream failed mid-way");
                    r.end(
                        "The replica serving this stream failed before it finished; the answer is incomplete.",
                    )
                }
                None => r.end(
                    "The replica serving this stream closed it before it finished; the answer is incomplete.",
                ),
            };
            if !events.is_empty() {
                return Some((events, r));
            }
        }
    })
    .flat_map(stream::iter);
    stream::iter(head).chain(tail)
}

struct StreamReader {
    upstream: Option<ByteStream>,
    events: EventSplitter,
    chunks: ChunkReader,
    /// `Done` or an error has been given: nothing follows.
    ended: bool,
}

impl StreamReader {
    /// The replies in `bytes` (with what came before them).
    fn take(&mut self, bytes: &[u8]) -> Vec<ReplyEvent> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        for data in self.events.push(bytes) {
            if data == "[DONE]" {
                out.push(ReplyEvent::Done(self.chunks.usage()));
                self.finish();
                return out;
            }
            // A line that is not JSON (a comment, a keep-alive) says nothing.
            let Ok(chunk) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            out.extend(self.chunks.read(&chunk, false));
            if matches!(out.last(), Some(ReplyEvent::Error(_))) {
                self.finish();
                return out;
            }
        }
        if self.events.pending() > MAX_EVENT_BYTES {
            tracing::warn!(
                bytes = self.events.pending(),
                "an upstream event never ended; stream cut off"
            );
            out.extend(self.end(
                "The replica serving this stream sent an event too long to read; the answer is incomplete.",
            ));
        }
        out
    }

    fn end(&mut self, why: &str) -> Vec<ReplyEvent> {
        self.finish();
        vec![ReplyEvent::Error(ReplyError::Cut(why.to_string()))]
    }

    fn finish(&mut self) {
        self.ended = true;
        self.upstream = None;
    }
}

/// Splits SSE bytes into the `data` of whole events.
#[derive(Default)]
struct EventSplitter {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already searched for an event's end (so each byte is scanned once).
    scanned: usize,
}

impl EventSplitter {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut consumed = 0;
        loop {
            let from = self.scanned.max(consumed);
            match find_event_end(&self.buffer[from..]) {
                Some((len, sep)) => {
                    let data = event_data(&self.buffer[consumed..from + len]);
                    if !data.is_empty() {
                        out.push(data);
                    }
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

    /// Bytes of an event not yet ended.
    fn pending(&self) -> usize {
        self.buffer.len()
    }
}

/// The `data:` lines of one event, joined.
fn event_data(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("\n")
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

/// Reads chunks (or a whole body) into steps, remembering usage and which calls have begun.
#[derive(Default)]
struct ChunkReader {
    usage: Option<Usage>,
    /// Steps that carried output: the completion tokens of an upstream that reports none.
    steps: usize,
    /// Tool calls begun, by choice and call index.
    calls: HashSet<(usize, usize)>,
}

impl ChunkReader {
    fn usage(&self) -> Usage {
        self.usage.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: self.steps,
        })
    }

    fn read(&mut self, v: &Value, whole: bool) -> Vec<ReplyEvent> {
        if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
            let message = e["message"]
                .as_str()
                .or(e.as_str())
                .unwrap_or("the upstream reported an error")
                .to_string();
            return vec![ReplyEvent::Error(ReplyError::Upstream(message))];
        }
        let usage = &v["usage"];
        if let (Some(p), Some(c)) = (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64(),
        ) {
            self.usage = Some(Usage {
                prompt_tokens: p as usize,
                completion_tokens: c as usize,
            });
        }
        let mut out = Vec::new();
        for (position, c) in v["choices"].as_array().into_iter().flatten().enumerate() {
            let index = c["index"].as_u64().map_or(position, |i| i as usize);
            let mut pieces = Vec::new();
            // A whole answer's choice has `message`, a chunk's `delta` (chat); a completion's
            // has `text` either way.
            let m = if whole { &c["message"] } else { &c["delta"] };
            self.pieces(index, m, c["text"].as_str(), &mut pieces);
            let step = Step {
                index,
                pieces,
                logprobs: logprobs(&c["logprobs"]),
                finish: c["finish_reason"].as_str().map(finish),
            };
            if step.pieces.is_empty() && step.logprobs.is_empty() && step.finish.is_none() {
                continue;
            }
            if !step.pieces.is_empty() {
                self.steps += 1;
            }
            out.push(ReplyEvent::Step(step));
        }
        out
    }

    /// One choice's thinking, content (a chat message's, or a completion's `text`) and calls.
    fn pieces(&mut self, index: usize, m: &Value, text: Option<&str>, out: &mut Vec<Piece>) {
        if let Some(r) = reasoning(m).filter(|r| !r.is_empty()) {
            out.push(Piece::Reasoning(r.to_string()));
        }
        for text in [m["content"].as_str(), text].into_iter().flatten() {
            if !text.is_empty() {
                out.push(Piece::Content(text.to_string()));
            }
        }
        self.calls(index, m, out);
    }

    /// Tool calls (or a deprecated `function_call`) of a message or delta: a call's first
    /// sight begins it; later ones add to its arguments.
    fn calls(&mut self, choice: usize, m: &Value, out: &mut Vec<Piece>) {
        let mut seen: Vec<(usize, &Value, Option<&str>)> = Vec::new();
        for (position, call) in m["tool_calls"].as_array().into_iter().flatten().enumerate() {
            let index = call["index"].as_u64().map_or(position, |i| i as usize);
            seen.push((index, &call["function"], call["id"].as_str()));
        }
        if m["function_call"].is_object() {
            seen.push((0, &m["function_call"], None));
        }
        for (index, function, id) in seen {
            let arguments = function["arguments"].as_str().unwrap_or("").to_string();
            if self.calls.insert((choice, index)) {
                out.push(Piece::Call {
                    index,
                    id: id.map_or_else(crate::ids::tool_call_id, str::to_string),
                    name: function["name"].as_str().unwrap_or("").to_string(),
                    arguments,
                });
            } else if !arguments.is_empty() {
                out.push(Piece::Arguments {
                    index,
                    fragment: arguments,
                });
            }
        }
    }
}

/// Thinking, by vLLM's name (`reasoning_content`) or the newer `reasoning`.
fn reasoning(m: &Value) -> Option<&str> {
    m["reasoning_content"]
        .as_str()
        .or_else(|| m["reasoning"].as_str())
}

fn finish(reason: &str) -> Finish {
    match reason {
        "length" => Finish::Length,
        "tool_calls" | "function_call" => Finish::ToolCalls,
        "content_filter" => Finish::ContentFilter,
        _ => Finish::Stop,
    }
}

/// Logprobs in the chat layout (`content: [{token, logprob, bytes, top_logprobs}]`) or the
/// completions one (`tokens`, `token_logprobs`, `top_logprobs: [{token: logprob}]`).
fn logprobs(v: &Value) -> Vec<TokenLogprob> {
    let bytes = |t: &Value, token: &str| -> Vec<u8> {
        t["bytes"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u8)
                    .collect()
            })
            .unwrap_or_else(|| token.as_bytes().to_vec())
    };
    if let Some(content) = v["content"].as_array() {
        return content
            .iter()
            .map(|t| {
                let token = t["token"].as_str().unwrap_or("").to_string();
                TokenLogprob {
                    bytes: bytes(t, &token),
                    logprob: t["logprob"].as_f64().unwrap_or(0.0) as f32,
                    top: t["top_logprobs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| {
                            let token = a["token"].as_str().unwrap_or("").to_string();
                            TopLogprob {
                                bytes: bytes(a, &token),
                                logprob: a["logprob"].as_f64().unwrap_or(0.0) as f32,
                                token,
                            }
                        })
                        .collect(),
                    token,
                }
            })
            .collect();
    }
    let tokens = v["tokens"].as_array().into_iter().flatten();
    tokens
        .enumerate()
        .map(|(i, t)| {
            let token = t.as_str().unwrap_or("").to_string();
            TokenLogprob {
                bytes: token.as_bytes().to_vec(),
                logprob: v["token_logprobs"][i].as_f64().unwrap_or(0.0) as f32,
                top: v["top_logprobs"][i]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(token, l)| TopLogprob {
                        token: token.clone(),
                        bytes: token.as_bytes().to_vec(),
                        logprob: l.as_f64().unwrap_or(0.0) as f32,
                    })
                    .collect(),
                token,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    async fn read(first: &str, rest: Vec<Result<&'static str, String>>) -> Vec<ReplyEvent> {
        let rest: ByteStream =
            Box::pin(stream::iter(rest.into_iter().map(|r| {
                r.map(|s: &'static str| Bytes::from_static(s.as_bytes()))
            })));
        stream(Bytes::from(first.to_string()), rest).collect().await
    }

    fn pieces(events: &[ReplyEvent]) -> Vec<Piece> {
        events
            .iter()
            .flat_map(|e| match e {
                ReplyEvent::Step(s) => s.pieces.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[tokio::test]
    async fn chat_chunks_split_anywhere_become_pieces_and_usage() {
        let events = read(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hm\"}}]}\n\ndata: {\"choi",
            vec![
                Ok("ces\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\n"),
                Ok("data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n"),
                Ok("data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n"),
                Ok("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}}\n\ndata: [DONE]\n\n"),
            ],
        )
        .await;
        assert_eq!(
            pieces(&events),
            vec![
                Piece::Reasoning("hm".into()),
                Piece::Content("Hi".into()),
                Piece::Call {
                    index: 0,
                    id: "call_1".into(),
                    name: "f".into(),
                    arguments: String::new()
                },
                Piece::Arguments {
                    index: 0,
                    fragment: "{}".into()
                },
            ]
        );
        assert!(events
            .iter()
            .any(|e| matches!(e, ReplyEvent::Step(s) if s.finish == Some(Finish::ToolCalls))));
        match events.last() {
            Some(ReplyEvent::Done(u)) => assert_eq!((u.prompt_tokens, u.completion_tokens), (5, 3)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failure_an_early_end_or_an_upstream_error_ends_with_an_error() {
        for rest in [vec![Err("reset".to_string())], vec![]] {
            let events = read("data: {\"choices\":[{\"text\":\"a\"}]}\n\n", rest).await;
            assert_eq!(pieces(&events), vec![Piece::Content("a".into())]);
            assert!(matches!(
                events.last(),
                Some(ReplyEvent::Error(ReplyError::Cut(_)))
            ));
        }
        let events = read(
            "data: {\"error\":{\"message\":\"boom\"}}\n\ndata: {\"choices\":[{\"text\":\"late\"}]}\n\n",
            vec![],
        )
        .await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(matches!(&events[0], ReplyEvent::Error(ReplyError::Upstream(m)) if m == "boom"));
    }

    #[tokio::test]
    async fn an_event_that_never_ends_is_cut_off() {
        static CHUNK: [u8; 65536] = [b'x'; 65536];
        let chunk = std::str::from_utf8(&CHUNK).unwrap();
        // 64 MiB offered without a single newline: the reader stops after ~1 MiB.
        let rest: Vec<Result<&'static str, String>> = (0..1024).map(|_| Ok(chunk)).collect();
        let events = read("data: ", rest).await;
        assert_eq!(events.len(), 1);
        assert!(
            matches!(&events[0], ReplyEvent::Error(ReplyError::Cut(m)) if m.contains("too long"))
        );
    }

    #[test]
    fn a_whole_body_becomes_one_step_per_choice_then_usage() {
        let body = json!({"choices": [
            {"index": 0, "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_9", "type": "function",
                    "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
             "finish_reason": "tool_calls"},
            {"index": 1, "text": "done", "finish_reason": "length",
             "logprobs": {"tokens": ["do", "ne"], "token_logprobs": [-0.5, -1.0],
                 "top_logprobs": [{"do": -0.5}, {"ne": -1.0}]}}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 4}});
        let events = whole(&body);
        assert_eq!(events.len(), 3, "{events:?}");
        let ReplyEvent::Step(first) = &events[0] else {
            panic!()
        };
        assert_eq!(first.finish, Some(Finish::ToolCalls));
        assert!(
            matches!(&first.pieces[0], Piece::Call { id, arguments, .. } if id == "call_9" && arguments == "{\"a\":1}")
        );
        let ReplyEvent::Step(second) = &events[1] else {
            panic!()
        };
        assert_eq!(second.logprobs.len(), 2);
        assert_eq!(second.logprobs[1].top[0].token, "ne");
        assert!(matches!(
            whole(&json!({"oops": 1})).last(),
            Some(ReplyEvent::Error(_))
        ));
    }

    proptest::proptest! {
        /// Any bytes, cut anywhere: the reader never panics and always ends with Done or an
        /// error, and nothing after it.
        #[test]
        fn arbitrary_upstream_bytes_end_with_one_ending(
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
            let events: Vec<ReplyEvent> =
                runtime.block_on(stream(Bytes::from(first), rest).collect::<Vec<_>>());
            let endings = events
                .iter()
                .filter(|e| !matches!(e, ReplyEvent::Step(_)))
                .count();
            proptest::prop_assert_eq!(endings, 1);
            proptest::prop_assert!(!matches!(events.last(), Some(ReplyEvent::Step(_))));
        }
    }
}
