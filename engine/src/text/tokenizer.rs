//! A model's tokenizer (tokenizer.json), its special tokens and chat template.

use std::collections::BTreeSet;
use std::path::Path;

use tokenizers::Tokenizer;

use super::ChatTemplate;
use crate::EngineError;

/// The special tokens a model folder declares (tokenizer_config.json, generation_config.json).
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    /// Every id that ends generation: eos_token plus generation_config's eos_token_id(s).
    pub eos_ids: BTreeSet<u32>,
}

/// A model's tokenizer with what the API needs around it.
pub struct ModelTokenizer {
    inner: Tokenizer,
    special: SpecialTokens,
    chat_template: Option<ChatTemplate>,
    /// Bytes of every token id, for logprobs' `bytes` and byte-exact detokenization.
    token_bytes: Vec<Vec<u8>>,
}

impl ModelTokenizer {
    /// Loads tokenizer.json, tokenizer_config.json and generation_config.json from a folder.
    pub fn from_dir(dir: &Path) -> Result<Self, EngineError> {
        let path = dir.join("tokenizer.json");
        let inner = Tokenizer::from_file(&path)
            .map_err(|e| EngineError::load(format!("cannot load {}: {e}", path.display())))?;
        let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let gc = read_json(&dir.join("generation_config.json"))?.unwrap_or_default();
        let token_str = |v: Option<&serde_json::Value>| -> Option<String> {
            match v? {
                serde_json::Value::String(s) => Some(s.clone()),
                other => other.get("content")?.as_str().map(str::to_string),
            }
        };
        let bos = token_str(tc.get("bos_token"));
        let eos = token_str(tc.get("eos_token"));
        let mut eos_ids = BTreeSet::new();
        if let Some(id) = eos.as_deref().and_then(|t| inner.token_to_id(t)) {
            eos_ids.insert(id);
        }
        match gc.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => eos_ids.extend(n.as_u64().map(|v| v as u32)),
            Some(serde_json::Value::Array(a)) => {
                eos_ids.extend(a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32))
            }
            _ => {}
        }
        let chat_template = match tc.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: use the one called "default".
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or(list.first())
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        }
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
        let special = SpecialTokens { bos, eos, eos_ids };
        let chat_template = chat_template
            .map(|src| ChatTemplate::new(&src, special.bos.clone(), special.eos.clone()))
            .transpose()?;
        let token_bytes = compute_token_bytes(&inner);
        Ok(Self {
            inner,
            special,
            chat_template,
            token_bytes,
        })
    }

    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokenizes text; `add_special` adds what the tokenizer's post-processor adds (BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, EngineError> {
        self.inner
            .encode_fast(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| EngineError::InvalidRequest(format!("cannot tokenize: {e}")))
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, EngineError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| EngineError::InvalidRequest(format!("cannot detokenize: {e}")))
    }

    /// The raw bytes a token stands for (for logprobs). Unknown ids have none.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

fn read_json(
    path: &Path,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, EngineError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| EngineError::load(format!("invalid {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::load(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// GPT-2's byte-to-unicode table, inverted: byte-level BPE stores each byte as one of these chars.
fn byte_level_decoder() -> std::collections::HashMap<char, u8> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .filter_map(|(b, c)| char::from_u32(c).map(|c| (c, b as u8)))
        .collect()
}

fn compute_token_bytes(tok: &Tokenizer) -> Vec<Vec<u8>> {
    let n = tok.get_vocab_size(true);
    let byte_level = byte_level_decoder();
    // Byte-level BPE (GPT-2, Llama 3, Qwen) stores bytes as chars; SentencePiece does not.
    let is_byte_level = tok
        .get_decoder()
        .and_then(|d| serde_json::to_string(d).ok())
        .is_some_and(|s| s.contains("\"ByteLevel\""));
    (0..n as u32)
        .map(|id| {
            let Some(piece) = tok.id_to_token(id) else {
                return Vec::new();
            };
            if tok
                .get_added_vocabulary()
                .get_added_tokens_decoder()
                .contains_key(&id)
            {
                return piece.into_bytes();
            }
            // Byte-level BPE: every char maps back to one byte.
            if !is_byte_level {
                // fall through to the SentencePiece rules below
            } else if let Some(bytes) = piece
                .chars()
                .map(|c| byte_level.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
            {
                return bytes;
            }
            // SentencePiece-style: byte fallback tokens and "▁" for spaces.
            if piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>') {
                if let Ok(b) = u8::from_str_radix(&piece[3..5], 16) {
                    return vec![b];
                }
            }
            piece.replace('\u{2581}', " ").into_bytes()
        })
        .collect()
}
