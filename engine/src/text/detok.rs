//! Incremental detokenization: text deltas that never split a character.

use super::ModelTokenizer;
use crate::EngineError;

/// Most tokens held back waiting to become whole characters. No character needs more (a
/// UTF-8 character is at most 4 bytes, byte-level tokens at least one); past this the
/// window is released with U+FFFD, so decoding stays linear in the output.
const MAX_HELD_TOKENS: usize = 8;

/// Turns a growing list of token ids into text deltas without ever emitting half a UTF-8
/// character: text is released only once the bytes decoded so far end in a whole character.
///
/// Decoding a short window (from `prefix` to the end) instead of single tokens keeps
/// tokenizer-level context such as SentencePiece's leading-space handling right.
#[derive(Debug, Default, Clone)]
pub struct IncrementalDetokenizer {
    ids: Vec<u32>,
    /// Start of the decode window.
    prefix: usize,
    /// Tokens before this index have been released as text.
    read: usize,
    skip_special: bool,
}

impl IncrementalDetokenizer {
    pub fn new(skip_special: bool) -> Self {
        Self {
            skip_special,
            ..Self::default()
        }
    }

    /// Adds a token and returns the text it completes, possibly empty.
    pub fn push(&mut self, tok: &ModelTokenizer, id: u32) -> Result<String, EngineError> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let after = tok.decode(&self.ids[self.prefix..], self.skip_special)?;
        if after.len() > before.len()
            && !after.ends_with('\u{FFFD}')
            && after.is_char_boundary(before.len())
        {
            let delta = after[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(delta)
        } else if self.ids.len() - self.read >= MAX_HELD_TOKENS {
            self.flush(tok)
        } else {
            Ok(String::new())
        }
    }

    /// Releases whatever is held back at the end of generation (an incomplete character
    /// decodes to U+FFFD, as every server does).
    pub fn flush(&mut self, tok: &ModelTokenizer) -> Result<String, EngineError> {
        if self.read == self.ids.len() {
            return Ok(String::new());
        }
        let before = tok.decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let after = tok.decode(&self.ids[self.prefix..], self.skip_special)?;
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(after.get(before.len()..).unwrap_or_default().to_string())
    }
}
