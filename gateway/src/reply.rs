//! A replica's answer as endpoints render it, whatever engine made it: per choice, pieces of
//! output (thinking, content, tool calls), the logprobs of the tokens they came from as text,
//! and how the choice ended; then the usage of them all, or an error. The native engine's
//! token events are read into replies in `api::answer`, an OpenAI-compatible upstream's
//! chunks in `pool::upstream_reply`; the endpoints render nothing else.

use futures::{Stream, StreamExt};
use rosetta_engine::{EngineError, Usage};

use crate::assistant::{Piece, Turn};

/// One token's log-probability, with its most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<TopLogprob>,
}

/// An alternative to a generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// Why a choice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// It ended by itself (EOS, a stop token or string).
    Stop,
    /// It reached `max_tokens`.
    Length,
    /// It ended by itself after calling tools.
    ToolCalls,
    /// The upstream withheld the rest.
    ContentFilter,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
            Finish::ContentFilter => "content_filter",
        }
    }
}

/// The next output of one choice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    pub index: usize,
    pub pieces: Vec<Piece>,
    /// The tokens this step's text came from (empty unless logprobs were asked for).
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<Finish>,
}

/// Why an answer stopped before it finished.
#[derive(Debug)]
pub enum ReplyError {
    /// The native engine failed the request.
    Engine(EngineError),
    /// The replica went away or sent what cannot be read; the answer is incomplete.
    Cut(String),
    /// The upstream reported an error of its own mid-answer.
    Upstream(String),
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyError::Engine(e) => write!(f, "{e}"),
            ReplyError::Cut(why) => f.write_str(why),
            ReplyError::Upstream(message) => write!(f, "the upstream failed: {message}"),
        }
    }
}

impl From<EngineError> for ReplyError {
    fn from(e: EngineError) -> Self {
        ReplyError::Engine(e)
    }
}

/// What a running answer yields: steps of its choices, then `Done` with the usage of all of
/// them, or an error. Nothing follows `Done` or an error.
#[derive(Debug)]
pub enum ReplyEvent {
    Step(Step),
    Done(Usage),
    Error(ReplyError),
}

/// One choice's whole answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChoiceReply {
    pub pieces: Vec<Piece>,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<Finish>,
}

impl ChoiceReply {
    /// Its thinking, content and calls.
    pub fn turn(&self) -> Turn {
        Turn::from_pieces(self.pieces.iter().cloned())
    }

    /// Its content, as plain text (what a completion answers).
    pub fn text(&self) -> String {
        content(&self.pieces)
    }
}

/// The content among `pieces`, as plain text.
pub fn content(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Content(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// Waits for every choice to finish.
pub async fn collect(
    events: impl Stream<Item = ReplyEvent>,
    choices: usize,
) -> Result<(Vec<ChoiceReply>, Usage), ReplyError> {
    let mut out = vec![ChoiceReply::default(); choices];
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event {
            ReplyEvent::Step(step) => {
                let Some(c) = out.get_mut(step.index) else {
                    continue;
                };
                c.pieces.extend(step.pieces);
                c.logprobs.extend(step.logprobs);
                if step.finish.is_some() {
                    c.finish = step.finish;
                }
            }
            ReplyEvent::Done(usage) => return Ok((out, usage)),
            ReplyEvent::Error(e) => return Err(e),
        }
    }
    Err(ReplyError::Cut(
        "the answer stopped before every choice had finished".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn collects_each_choice_in_order_and_ends_at_done() {
        let step = |index, text: &str, finish| {
            ReplyEvent::Step(Step {
                index,
                pieces: vec![Piece::Content(text.into())],
                logprobs: Vec::new(),
                finish,
            })
        };
        let events = futures::stream::iter(vec![
            step(1, "b", None),
            step(0, "a", None),
            step(0, "c", Some(Finish::Stop)),
            step(1, "d", Some(Finish::Length)),
            step(7, "out of range", None),
            ReplyEvent::Done(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
            }),
        ]);
        let (choices, usage) = collect(events, 2).await.unwrap();
        assert_eq!(choices[0].text(), "ac");
        assert_eq!(choices[1].text(), "bd");
        assert_eq!(choices[0].finish, Some(Finish::Stop));
        assert_eq!(choices[1].finish, Some(Finish::Length));
        assert_eq!(usage.completion_tokens, 4);
        let cut = collect(futures::stream::iter(vec![step(0, "a", None)]), 1).await;
        assert!(matches!(cut, Err(ReplyError::Cut(_))));
    }
}
