//! One choice's output read as it streams: thinking, content and tool calls, in the order the
//! endpoint sends them. Whole answers are read by the same parser in one piece, so a streamed
//! answer and a whole one always agree.

use super::calls::{self, CallReader, NamedCall, RequiredCalls};
use super::formats::{ReasoningFormat, ToolFormat};
use super::piece::Piece;
use super::reasoning::{ReasoningSplitter, Thought};
use super::tools::{ToolChoice, Toolset};

/// A complete tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// A JSON string, as OpenAI sends it.
    pub arguments: String,
}

/// One choice's whole output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Turn {
    pub reasoning: Option<String>,
    /// `None` when the turn is only tool calls (or empty thinking aside).
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
}

impl Turn {
    pub fn from_pieces(pieces: impl IntoIterator<Item = Piece>) -> Self {
        let mut reasoning: Option<String> = None;
        let mut content = String::new();
        let mut calls: Vec<ToolCall> = Vec::new();
        for p in pieces {
            match p {
                Piece::Reasoning(t) => reasoning.get_or_insert_with(String::new).push_str(&t),
                Piece::Content(t) => content.push_str(&t),
                Piece::Call {
                    id,
                    name,
                    arguments,
                    ..
                } => calls.push(ToolCall {
                    id,
                    name,
                    arguments,
                }),
                Piece::Arguments { index, fragment } => {
                    if let Some(c) = calls.get_mut(index) {
                        c.arguments.push_str(&fragment);
                    }
                }
            }
        }
        let content = if calls.is_empty() || !content.trim().is_empty() {
            Some(content)
        } else {
            None
        };
        Self {
            reasoning,
            content,
            calls,
        }
    }
}

/// Reads one choice's output.
pub struct OutputParser {
    reasoning: Option<ReasoningSplitter>,
    calls: Option<Box<dyn CallReader>>,
    thoughts: Vec<Thought>,
}

impl OutputParser {
    /// The parser for a request: forced calls are the grammar's JSON (and never thought
    /// about); otherwise thinking is split off when the model thinks, and calls are read in
    /// its format when it may choose them. `constrained`: the output follows a grammar (a
    /// structured output): a thinking block the prompt opened is not part of it.
    pub fn new(
        tools: Option<&Toolset>,
        tool_format: Option<ToolFormat>,
        reasoning: Option<ReasoningFormat>,
        constrained: bool,
    ) -> Self {
        let forced: Option<Box<dyn CallReader>> = match tools.map(|t| &t.choice) {
            Some(ToolChoice::Named(name)) => Some(Box::new(NamedCall::new(name.clone()))),
            Some(ToolChoice::Required) => Some(Box::<RequiredCalls>::default()),
            _ => None,
        };
        if forced.is_some() {
            return Self {
                reasoning: None,
                calls: forced,
                thoughts: Vec::new(),
            };
        }
        let chosen = tools
            .filter(|t| t.parsed_from_text())
            .and(tool_format)
            .map(calls::reader);
        Self {
            reasoning: reasoning
                .filter(|r| !(constrained && *r == ReasoningFormat::DeepseekR1))
                .map(ReasoningSplitter::new),
            calls: chosen,
            thoughts: Vec::new(),
        }
    }

    /// A parser that passes text through as content (a completion's).
    pub fn plain() -> Self {
        Self {
            reasoning: None,
            calls: None,
            thoughts: Vec::new(),
        }
    }

    /// Whether text passes through unchanged (nothing to read out of it). The tests ask;
    /// streaming no longer needs to, since `push` passes plain text through itself.
    #[cfg(test)]
    pub fn is_plain(&self) -> bool {
        self.reasoning.is_none() && self.calls.is_none()
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        let mut out = Vec::new();
        match self.reasoning.as_mut() {
            Some(r) => {
                r.push(text, &mut self.thoughts);
                self.route(&mut out);
            }
            None => self.answer(text, &mut out),
        }
        out
    }

    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        if let Some(r) = self.reasoning.as_mut() {
            r.finish(&mut self.thoughts);
            self.route(&mut out);
        }
        if let Some(c) = self.calls.as_mut() {
            c.finish(&mut out);
        }
        out
    }

    /// A whole output read at once.
    pub fn read_whole(mut self, text: &str) -> Turn {
        let mut pieces = self.push(text);
        pieces.extend(self.finish());
        Turn::from_pieces(pieces)
    }

    fn route(&mut self, out: &mut Vec<Piece>) {
        for t in std::mem::take(&mut self.thoughts) {
            match t {
                Thought::Reasoning(r) => out.push(Piece::Reasoning(r)),
                Thought::Answer(a) => self.answer(&a, out),
            }
        }
    }

    fn answer(&mut self, text: &str, out: &mut Vec<Piece>) {
        match self.calls.as_mut() {
            Some(c) => c.push(text, out),
            None if !text.is_empty() => out.push(Piece::Content(text.to_string())),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::assistant::Tool;

    fn toolset(choice: ToolChoice) -> Toolset {
        let tool = Tool {
            name: "lookup".into(),
            description: None,
            parameters: json!({"type": "object"}),
            strict: false,
        };
        Toolset::new(vec![tool], choice, true).unwrap()
    }

    #[test]
    fn thinking_then_a_call() {
        let tools = toolset(ToolChoice::Auto);
        let parser = OutputParser::new(
            Some(&tools),
            Some(ToolFormat::Hermes),
            Some(ReasoningFormat::Qwen3),
            false,
        );
        let turn = parser.read_whole(
            "<think>\nNeeds a lookup.\n</think>\n\n<tool_call>\n{\"name\": \"lookup\", \"arguments\": {\"q\": \"x\"}}\n</tool_call>",
        );
        assert_eq!(turn.reasoning.as_deref(), Some("\nNeeds a lookup.\n"));
        assert_eq!(turn.content, None);
        assert_eq!(turn.calls.len(), 1);
        assert_eq!(turn.calls[0].arguments, r#"{"q":"x"}"#);
    }

    #[test]
    fn streamed_and_whole_agree() {
        let tools = toolset(ToolChoice::Auto);
        let text = "<think>a</think>Hi <tool_call>{\"name\": \"lookup\"}</tool_call>";
        let new = || {
            OutputParser::new(
                Some(&tools),
                Some(ToolFormat::Hermes),
                Some(ReasoningFormat::Qwen3),
                false,
            )
        };
        let whole = new().read_whole(text);
        let mut p = new();
        let mut pieces = Vec::new();
        for c in text.chars() {
            pieces.extend(p.push(&c.to_string()));
        }
        pieces.extend(p.finish());
        let mut streamed = Turn::from_pieces(pieces);
        // Ids are random per call.
        streamed.calls[0].id = whole.calls[0].id.clone();
        assert_eq!(streamed, whole);
        assert_eq!(whole.content.as_deref(), Some("Hi "));
    }

    #[test]
    fn plain_without_tools_or_thinking() {
        let p = OutputParser::new(None, Some(ToolFormat::Hermes), None, false);
        assert!(p.is_plain());
        let none = toolset(ToolChoice::None);
        let p = OutputParser::new(Some(&none), Some(ToolFormat::Hermes), None, false);
        assert!(p.is_plain(), "`none` reads no calls");
    }
}
