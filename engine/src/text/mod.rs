//! Text in and out: the tokenizer, chat templates, incremental detokenization and stop strings.

mod chat_template;
mod detok;
mod stop;
mod tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate, ContentPart, MessageContent, RenderOptions};
pub use detok::IncrementalDetokenizer;
pub use stop::StopMatcher;
pub use tokenizer::{ModelTokenizer, SpecialTokens};
