//! Trains the demo models' byte-level BPE tokenizer on the shipped corpus.

use rosetta_config::Arch;
use serde_json::{json, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use super::corpus::CORPUS;
use super::templates;
use crate::EngineError;

pub struct TrainedTokenizer {
    pub tokenizer_json: String,
    pub tokenizer_config: Value,
    pub generation_config: Value,
    pub bos_id: u32,
    pub eos_id: u32,
}

struct Flavour {
    specials: &'static [&'static str],
    bos: &'static str,
    eos: &'static str,
    /// Generation also ends on these (Llama 3's end_of_text next to eot_id).
    extra_eos: &'static [&'static str],
    /// None: an encoder, which has no chat template.
    template: Option<&'static str>,
    add_bos: bool,
    /// The post-processor also closes each sequence with the EOS token (XLM-RoBERTa's
    /// `<s> $A </s>`).
    add_eos: bool,
}

/// Command R7B's special tokens; Cohere's first decoder has the first eight.
const COHERE2_SPECIALS: [&str; 10] = [
    "<PAD>",
    "<BOS_TOKEN>",
    "<EOS_TOKEN>",
    "<|START_OF_TURN_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    "<|SYSTEM_TOKEN|>",
    "<|START_RESPONSE|>",
    "<|END_RESPONSE|>",
];

fn flavour(arch: Arch) -> Flavour {
    match arch {
        Arch::Llama => Flavour {
            specials: &[
                "<|begin_of_text|>",
                "<|end_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ],
            bos: "<|begin_of_text|>",
            eos: "<|eot_id|>",
            extra_eos: &["<|end_of_text|>"],
            template: Some(templates::LLAMA3),
            add_bos: true,
            add_eos: false,
        },
        // bloom's tokenizer: unk, bos, eos, pad first.
        Arch::Bloom => Flavour {
            specials: &["<unk>", "<s>", "</s>", "<pad>"],
            bos: "<s>",
            eos: "</s>",
            extra_eos: &[],
            template: Some(templates::BLOOM),
            add_bos: false,
            add_eos: false,
        },
        Arch::Cohere => Flavour {
            specials: &COHERE2_SPECIALS[..8],
            bos: "<BOS_TOKEN>",
            eos: "<|END_OF_TURN_TOKEN|>",
            extra_eos: &["<EOS_TOKEN>"],
            template: Some(templates::COHERE),
            add_bos: true,
            add_eos: false,
        },
        // Command R7B's: Cohere's turn markers, and the answer between response markers.
        Arch::Cohere2 => Flavour {
            specials: &COHERE2_SPECIALS,
            bos: "<BOS_TOKEN>",
            eos: "<|END_OF_TURN_TOKEN|>",
            extra_eos: &["<EOS_TOKEN>", "<|END_RESPONSE|>"],
            template: Some(templates::COHERE2),
            add_bos: true,
            add_eos: false,
        },
        // DeepSeek-V3's: sentence markers and the two role markers.
        Arch::Deepseek => Flavour {
            specials: &[
                "<｜begin▁of▁sentence｜>",
                "<｜end▁of▁sentence｜>",
                "<｜User｜>",
                "<｜Assistant｜>",
            ],
            bos: "<｜begin▁of▁sentence｜>",
            eos: "<｜end▁of▁sentence｜>",
            extra_eos: &[],
            template: Some(templates::DEEPSEEK),
            add_bos: true,
            add_eos: false,
        },
        // XLM-RoBERTa's specials at its ids (0 to 3); every input is `<s> ... </s>`.
        Arch::XlmRoberta => Flavour {
            specials: &["<s>", "<pad>", "</s>", "<unk>"],
            bos: "<s>",
            eos: "</s>",
            extra_eos: &[],
            template: None,
            add_bos: true,
            add_eos: true,
        },
        // One vocabulary for these (the same specials keep token ids as they were).
        Arch::Mistral | Arch::Mixtral | Arch::Qwen2 | Arch::Qwen3 => Flavour {
            specials: &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            bos: "<|endoftext|>",
            eos: "<|im_end|>",
            extra_eos: &["<|endoftext|>"],
            template: Some(match arch {
                Arch::Mistral | Arch::Mixtral => templates::MISTRAL,
                Arch::Qwen3 => templates::QWEN3,
                _ => templates::QWEN2,
            }),
            add_bos: false,
            add_eos: false,
        },
    }
}

pub fn train(arch: Arch, vocab_size: usize) -> Result<TrainedTokenizer, EngineError> {
    let err =
        |e: tokenizers::Error| EngineError::Internal(format!("tokenizer training failed: {e}"));
    let f = flavour(arch);
    let specials: Vec<AddedToken> = f
        .specials
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
        .with_decoder(Some(ByteLevelDecoder::default()))
        .build()
        .map_err(err)?;
    tokenizer
        .train(
            &mut trainer,
            CORPUS.iter().flat_map(|(_, text)| text.lines()),
        )
        .map_err(err)?;
    let mut tokenizer: Tokenizer = tokenizer.into();
    let id = |t: &str, tok: &Tokenizer| {
        tok.token_to_id(t).ok_or_else(|| {
            EngineError::Internal(format!("special token {t} missing after training"))
        })
    };
    let bos_id = id(f.bos, &tokenizer)?;
    let eos_id = id(f.eos, &tokenizer)?;
    if f.add_bos {
        let (single, pair, specials) = if f.add_eos {
            let (b, e) = (f.bos, f.eos);
            (
                format!("{b} $A {e}"),
                format!("{b} $A {e} {e} $B {e}"),
                vec![(b, bos_id), (e, eos_id)],
            )
        } else {
            let b = f.bos;
            (
                format!("{b} $A"),
                format!("{b} $A {b} $B"),
                vec![(b, bos_id)],
            )
        };
        let post = TemplateProcessing::builder()
            .try_single(single)
            .and_then(|b| b.try_pair(pair))
            .map_err(|e| EngineError::Internal(e.to_string()))?
            .special_tokens(specials)
            .build()
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        tokenizer.with_post_processor(Some(post));
    }
    let json = tokenizer.to_string(true).map_err(err)?;
    let json = pad_vocab(&json, vocab_size)?;
    let mut eos_ids = vec![eos_id];
    for t in f.extra_eos {
        eos_ids.push(id(t, &tokenizer)?);
    }
    let mut tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": f.bos,
        "eos_token": f.eos,
        "pad_token": f.specials[0],
        "add_bos_token": f.add_bos,
        "clean_up_tokenization_spaces": false,
        "model_max_length": 131072,
    });
    if let Some(template) = f.template {
        tokenizer_config["chat_template"] = json!(template);
    }
    if arch.is_encoder() {
        // XLM-RoBERTa's: padding is `<pad>`, and inputs fit its 512 positions.
        tokenizer_config["pad_token"] = json!("<pad>");
        tokenizer_config["model_max_length"] = json!(512);
    }
    Ok(TrainedTokenizer {
        tokenizer_json: json,
        tokenizer_config,
        generation_config: json!({
            "bos_token_id": bos_id,
            "eos_token_id": eos_ids,
            "do_sample": true,
            "temperature": 0.7,
            "top_p": 0.9,
        }),
        bos_id,
        eos_id,
    })
}

/// A small corpus cannot yield every merge a large vocabulary needs; append merges of
/// existing tokens (valid BPE entries that decode to real text) until the vocabulary has
/// exactly `target` entries, so tokenizer and embedding table agree.
fn pad_vocab(tokenizer_json: &str, target: usize) -> Result<String, EngineError> {
    let bad = |m: &str| EngineError::Internal(format!("unexpected tokenizer.json layout: {m}"));
    let mut root: Value = serde_json::from_str(tokenizer_json).map_err(|e| bad(&e.to_string()))?;
    let added = root["added_tokens"].as_array().map_or(0, Vec::len);
    let model = root.get_mut("model").ok_or_else(|| bad("no model"))?;
    let vocab = model["vocab"]
        .as_object()
        .cloned()
        .ok_or_else(|| bad("no vocab"))?;
    let mut by_id: Vec<(u64, String)> = vocab
        .iter()
        .filter_map(|(t, id)| Some((id.as_u64()?, t.clone())))
        .collect();
    by_id.sort();
    let mut next = by_id.len().max(added) as u64;
    if next as usize >= target {
        return Ok(tokenizer_json.to_string());
    }
    // Combine the most common pieces first: trained tokens in id order with the byte alphabet.
    let bases: Vec<String> = by_id.iter().skip(added).map(|(_, t)| t.clone()).collect();
    let alphabet: Vec<String> = bases
        .iter()
        .filter(|t| t.chars().count() == 1)
        .cloned()
        .collect();
    let mut vocab = vocab;
    let mut merges = model["merges"]
        .as_array()
        .cloned()
        .ok_or_else(|| bad("no merges"))?;
    'outer: for left in &bases {
        for right in &alphabet {
            if next as usize >= target {
                break 'outer;
            }
            let joined = format!("{left}{right}");
            if !vocab.contains_key(&joined) {
                vocab.insert(joined, json!(next));
                merges.push(json!([left, right]));
                next += 1;
            }
        }
    }
    model["vocab"] = Value::Object(vocab);
    model["merges"] = Value::Array(merges);
    serde_json::to_string(&root).map_err(|e| bad(&e.to_string()))
}
