//! Structured outputs: a grammar (a JSON schema, a regex, a list of choices, a Lark grammar)
//! compiled with llguidance for one model's tokenizer. Each choice of a request gets its own
//! matcher, which masks the logits before every sample, so only tokens that keep the output
//! a valid prefix of the grammar can be chosen, whatever the weights.

use std::path::Path;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory, TokenParser};
use toktrie_hf_tokenizers::ByteTokenizer;

use crate::EngineError;

/// What the output must match, as a request states it.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// A JSON schema (`{"type": "object"}` for any JSON object).
    JsonSchema(serde_json::Value),
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A Lark grammar (llguidance's dialect).
    Lark(String),
}

impl GrammarSpec {
    fn top_level(&self) -> Result<TopLevelGrammar, String> {
        Ok(match self {
            Self::JsonSchema(schema) => {
                // Compact JSON, as OpenAI's structured outputs are, unless the schema asks
                // for llguidance's own options.
                let mut schema = schema.clone();
                if let Some(obj) = schema.as_object_mut() {
                    obj.entry("x-guidance")
                        .or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
                }
                TopLevelGrammar::from_json_schema(schema)
            }
            Self::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Self::Choice(choices) => {
                if choices.is_empty() {
                    return Err("the list of choices is empty".into());
                }
                // Each choice a quoted Lark literal (JSON escaping is Lark's).
                let alternatives: Vec<String> = choices
                    .iter()
                    .map(|c| serde_json::to_string(c).unwrap_or_default())
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
            }
            Self::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        })
    }
}

/// Compiles grammars for one model's tokenizer.
pub struct GrammarCompiler {
    factory: ParserFactory,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrammarCompiler")
    }
}

impl GrammarCompiler {
    /// From the model's `tokenizer.json`; `eos` ends a finished grammar, `n_vocab` is the
    /// model's logits width (may exceed the tokenizer's vocabulary).
    pub fn from_tokenizer_file(
        path: &Path,
        eos: &[u32],
        n_vocab: usize,
    ) -> Result<Self, EngineError> {
        let load = |e: String| EngineError::load(format!("structured outputs: {e}"));
        let mut bytes = ByteTokenizer::from_file(path).map_err(|e| load(e.to_string()))?;
        if !eos.is_empty() {
            bytes.set_eos_tokens(eos);
        }
        let env = bytes
            .into_tok_env(Some(n_vocab))
            .map_err(|e| load(e.to_string()))?;
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| load(e.to_string()))?;
        // Grammar problems are the client's (a 400), not the server log's.
        factory.quiet();
        Ok(Self { factory })
    }

    /// The compiled grammar, or why it cannot be used (for the client).
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Constraint, String> {
        let grammar = spec.top_level()?;
        let parser = self
            .factory
            .create_parser(grammar.clone())
            .map_err(|e| e.to_string())?;
        Ok(Constraint {
            parser: Arc::new(parser),
            grammar: Arc::new(grammar),
        })
    }
}

/// A compiled grammar, shared by every choice of a request (each gets its own matcher), and
/// its source (for engines that compile grammars themselves).
#[derive(Clone)]
pub struct Constraint {
    parser: Arc<TokenParser>,
    grammar: Arc<TopLevelGrammar>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Constraint")
    }
}

impl Constraint {
    /// A fresh matcher at the grammar's start.
    pub fn matcher(&self) -> Matcher {
        Matcher::new(Ok(self.parser.deep_clone()))
    }

    /// The grammar it was compiled from, in llguidance's form.
    pub fn grammar(&self) -> &TopLevelGrammar {
        &self.grammar
    }
}
