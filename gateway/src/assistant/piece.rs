//! A piece of one choice's output as the readers give it: thinking, content, or a tool call
//! and its arguments.

/// A piece of one choice's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Reasoning(String),
    Content(String),
    /// A call begins: its id and name, and its arguments so far (all of them, unless
    /// `Arguments` pieces follow).
    Call {
        index: usize,
        id: String,
        name: String,
        arguments: String,
    },
    /// More of a call's arguments.
    Arguments {
        index: usize,
        fragment: String,
    },
}
