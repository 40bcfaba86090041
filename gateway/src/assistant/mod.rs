//! The assistant's turn beyond plain text: the tools a request offers and how the model must
//! use them, and reading its output back into thinking, content and tool calls, whole or as
//! it streams, for every endpoint that speaks chat (chat completions, responses).

mod calls;
mod formats;
mod output;
mod piece;
mod reasoning;
mod tools;

pub use formats::{reasoning_format, tool_format, ReasoningFormat, ToolFormat};
pub use output::{OutputParser, ToolCall, Turn};
pub use piece::Piece;
pub use tools::{Tool, ToolChoice, ToolError, Toolset};

/// The longest end of `text` that could be the start of `marker` (held back until the next
/// piece of text says whether the marker follows). Markers are ASCII.
fn partial_marker_len(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&k| {
            let start = text.len() - k;
            text.is_char_boundary(start) && marker.starts_with(&text[start..])
        })
        .unwrap_or(0)
}

/// `text` cut into pieces of `step` bytes (at character boundaries), as a stream delivers it.
#[cfg(test)]
fn in_steps(text: &str, step: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = step.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        pieces.push(&rest[..end]);
        rest = &rest[end..];
    }
    pieces
}

#[cfg(test)]
mod tests {
    #[test]
    fn partial_markers() {
        assert_eq!(super::partial_marker_len("abc<too", "<tool_call>"), 4);
        assert_eq!(super::partial_marker_len("abc", "<tool_call>"), 0);
        assert_eq!(super::partial_marker_len("<", "<tool_call>"), 1);
        assert_eq!(super::partial_marker_len("é<t", "<tool_call>"), 2);
    }
}
