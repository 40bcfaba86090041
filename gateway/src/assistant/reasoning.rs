//! Splits a thinking model's output into its thinking and its answer as the text streams:
//! `<think>…</think>` (or, when the prompt opened the block, everything up to `</think>`).

use super::formats::ReasoningFormat;
use super::partial_marker_len;

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// A piece of output: thinking, or the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Thought {
    Reasoning(String),
    Answer(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not yet known whether the output opens `<think>`.
    Opening,
    Thinking,
    /// Just past `</think>`: the newlines that separate it from the answer are dropped.
    Closed,
    Answering,
}

pub struct ReasoningSplitter {
    format: ReasoningFormat,
    state: State,
    held: String,
}

impl ReasoningSplitter {
    pub fn new(format: ReasoningFormat) -> Self {
        Self {
            format,
            state: State::Opening,
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str, out: &mut Vec<Thought>) {
        self.held.push_str(text);
        loop {
            match self.state {
                State::Opening => {
                    let trimmed = self.held.trim_start();
                    if let Some(rest) = trimmed.strip_prefix(OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Thinking;
                    } else if OPEN.starts_with(trimmed) {
                        return; // still could be `<think>`
                    } else {
                        self.state = match self.format {
                            ReasoningFormat::Qwen3 => State::Answering,
                            ReasoningFormat::DeepseekR1 => State::Thinking,
                        };
                    }
                }
                State::Thinking => match self.held.find(CLOSE) {
                    Some(end) => {
                        emit(out, Thought::Reasoning(self.held[..end].to_string()));
                        self.held.drain(..end + CLOSE.len());
                        self.state = State::Closed;
                    }
                    None => {
                        let keep = partial_marker_len(&self.held, CLOSE);
                        let ready = self.held.len() - keep;
                        emit(out, Thought::Reasoning(self.held[..ready].to_string()));
                        self.held.drain(..ready);
                        return;
                    }
                },
                State::Closed => {
                    let answer = self.held.trim_start_matches('\n');
                    if answer.is_empty() {
                        self.held.clear();
                        return;
                    }
                    self.held = answer.to_string();
                    self.state = State::Answering;
                }
                State::Answering => {
                    emit(out, Thought::Answer(std::mem::take(&mut self.held)));
                    return;
                }
            }
        }
    }

    /// What is still held when the output ends.
    pub fn finish(&mut self, out: &mut Vec<Thought>) {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Opening => match self.format {
                ReasoningFormat::Qwen3 => emit(out, Thought::Answer(held)),
                ReasoningFormat::DeepseekR1 => emit(out, Thought::Reasoning(held)),
            },
            State::Thinking => emit(out, Thought::Reasoning(held)),
            State::Closed => {}
            State::Answering => emit(out, Thought::Answer(held)),
        }
    }
}

fn emit(out: &mut Vec<Thought>, t: Thought) {
    let empty = match &t {
        Thought::Reasoning(s) | Thought::Answer(s) => s.is_empty(),
    };
    if !empty {
        out.push(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `text` fed in pieces of `step` bytes (at char boundaries) into (thinking, answer).
    fn split(format: ReasoningFormat, text: &str, step: usize) -> (String, String) {
        let mut s = ReasoningSplitter::new(format);
        let mut out = Vec::new();
        for piece in super::super::in_steps(text, step) {
            s.push(piece, &mut out);
        }
        s.finish(&mut out);
        let (mut r, mut a) = (String::new(), String::new());
        for t in out {
            match t {
                Thought::Reasoning(x) => r.push_str(&x),
                Thought::Answer(x) => a.push_str(&x),
            }
        }
        (r, a)
    }

    #[test]
    fn thinking_and_answer_whatever_the_pieces() {
        for step in [1, 2, 3, 7, 100] {
            let q = ReasoningFormat::Qwen3;
            assert_eq!(
                split(q, "<think>\nHmm, Swahili…\n</think>\n\nJambo!", step),
                ("\nHmm, Swahili…\n".into(), "Jambo!".into())
            );
            assert_eq!(
                split(q, "Jambo <think>", step),
                ("".into(), "Jambo <think>".into())
            );
            assert_eq!(split(q, "<thi", step), ("".into(), "<thi".into()));
            assert_eq!(
                split(q, "<think>cut short", step),
                ("cut short".into(), "".into())
            );
            let r1 = ReasoningFormat::DeepseekR1;
            assert_eq!(
                split(r1, "wait</think>ok", step),
                ("wait".into(), "ok".into())
            );
            assert_eq!(
                split(r1, "<think>a</think>\nb", step),
                ("a".into(), "b".into())
            );
        }
    }
}
