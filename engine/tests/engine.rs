//! The native engine through its trait: text, stops, choices, concurrency, cancellation, and
//! that every KV block comes back.

mod common;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rosetta_engine::demo::{Arch, DemoSpec, Size};
use rosetta_engine::model::{Transformer, WeightFormat};
use rosetta_engine::text::{IncrementalDetokenizer, ModelTokenizer};
use rosetta_engine::{
    Engine, FinishReason, GenerateEvent, GenerateRequest, NativeEngine, NativeEngineConfig,
    SamplingParams, Usage,
};

fn model_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    common::generated_model(&DIR, DemoSpec::new(Arch::Qwen2, Size::Tiny, 11))
}

fn start(kv_cache_bytes: u64, max_num_seqs: usize) -> (NativeEngine, Arc<ModelTokenizer>) {
    let dir = model_dir();
    let tok = Arc::new(ModelTokenizer::from_dir(dir).unwrap());
    let model = Transformer::load(dir, WeightFormat::F32, 512).unwrap();
    let cfg = NativeEngineConfig {
        block_size: 4,
        kv_cache_bytes,
        max_num_seqs,
        ..NativeEngineConfig::new(512)
    };
    (NativeEngine::start(model, tok.clone(), cfg).unwrap(), tok)
}

struct Answer {
    texts: Vec<String>,
    tokens: Vec<Vec<u32>>,
    finish: Vec<Option<FinishReason>>,
    usage: Usage,
}

fn run(engine: &NativeEngine, req: GenerateRequest) -> Answer {
    let n = req.n();
    let mut rx = engine.submit(req).unwrap();
    let mut a = Answer {
        texts: vec![String::new(); n],
        tokens: vec![Vec::new(); n],
        finish: vec![None; n],
        usage: Usage::default(),
    };
    loop {
        match rx
            .blocking_recv()
            .expect("stream ended without Done")
            .unwrap()
        {
            GenerateEvent::Delta(d) => {
                assert!(a.finish[d.index].is_none(), "delta after finish");
                a.texts[d.index].push_str(&d.text);
                a.tokens[d.index].extend(d.token.map(|t| t.id));
                a.finish[d.index] = d.finish_reason;
            }
            GenerateEvent::Done(u) => {
                a.usage = u;
                return a;
            }
        }
    }
}

use common::greedy;

fn wait_blocks_free(engine: &NativeEngine) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.load().kv_blocks_used != 0 || engine.load().running != 0 {
        assert!(
            Instant::now() < deadline,
            "KV blocks not returned: {:?}",
            engine.load()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn prompt_of(tok: &ModelTokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, true).unwrap()
}

#[test]
fn streamed_text_equals_full_decode_and_blocks_return() {
    let (engine, tok) = start(1 << 24, 8);
    let a = run(
        &engine,
        greedy(prompt_of(&tok, "Habari ya asubuhi, 你好, नमस्ते"), 64),
    );
    assert_eq!(a.finish[0], Some(FinishReason::Length));
    assert_eq!(a.tokens[0].len(), 64);
    assert_eq!(a.usage.completion_tokens, 64);
    // Nothing dropped, nothing invented: the deltas add up to decoding all tokens at once.
    assert_eq!(a.texts[0], tok.decode(&a.tokens[0], true).unwrap());
    wait_blocks_free(&engine);
}

#[test]
fn incremental_detokenizer_never_splits_characters() {
    let tok = ModelTokenizer::from_dir(model_dir()).unwrap();
    let text =
        "Ἀρχὴ ἥμισυ παντός. 東京は晴れ、서울은 비. ሰላም ነው። გამარჯობა! مرحبا بالعالم. 🙂 naïve café";
    let ids = tok.encode(text, false).unwrap();
    let mut d = IncrementalDetokenizer::new(true);
    let mut out = String::new();
    for &id in &ids {
        let piece = d.push(&tok, id).unwrap();
        assert!(
            !piece.contains('\u{FFFD}'),
            "half a character leaked after token {id}: {piece:?}"
        );
        out.push_str(&piece);
    }
    out.push_str(&d.flush(&tok).unwrap());
    assert_eq!(out, text);
}

#[test]
fn greedy_is_deterministic_and_batched_equals_alone() {
    let (engine, tok) = start(1 << 24, 64);
    let prompts: Vec<Vec<u32>> = (0..12)
        .map(|i| {
            prompt_of(
                &tok,
                &"Bonjour le monde, comment ça va ? ".repeat(1 + i % 5),
            )
        })
        .collect();
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| run(&engine, greedy(p.clone(), 24)).tokens[0].clone())
        .collect();
    let together: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| s.spawn(|| run(&engine, greedy(p.clone(), 24)).tokens[0].clone()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone, together);
    wait_blocks_free(&engine);
}

#[test]
fn seeded_choices_repeat_and_differ_from_each_other() {
    let (engine, tok) = start(1 << 24, 8);
    let req = || {
        let mut r = GenerateRequest::new(prompt_of(&tok, "Once upon a time"), 16);
        r.params_mut().n = 3;
        r.params_mut().ignore_eos = true;
        r.params_mut().sampling = SamplingParams {
            temperature: 1.0,
            seed: Some(42),
            ..Default::default()
        };
        r
    };
    let a = run(&engine, req());
    let b = run(&engine, req());
    assert_eq!(a.tokens, b.tokens, "same seed, same output");
    assert_ne!(a.tokens[0], a.tokens[1], "choices under one seed differ");
    assert_eq!(a.usage.completion_tokens, 48);
    assert_eq!(
        a.usage.prompt_tokens,
        prompt_of(&tok, "Once upon a time").len()
    );
    wait_blocks_free(&engine);
}

#[test]
fn stop_string_cuts_output_before_it() {
    let (engine, tok) = start(1 << 24, 8);
    let prompt = prompt_of(&tok, "La casa es grande y bonita");
    let full = run(&engine, greedy(prompt.clone(), 40)).texts[0].clone();
    // A stop string from the middle of the greedy answer, spanning several characters.
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let mut req = greedy(prompt, 40);
    req.params_mut().stop = vec![stop.clone()].into();
    let a = run(&engine, req);
    assert_eq!(a.finish[0], Some(FinishReason::Stop));
    let cut = full.find(&stop).unwrap();
    assert_eq!(a.texts[0], full[..cut]);
    assert!(!a.texts[0].contains(&stop));
    wait_blocks_free(&engine);
}

#[test]
fn stop_token_and_min_tokens() {
    let (engine, tok) = start(1 << 24, 8);
    let prompt = prompt_of(&tok, "Guten Morgen");
    let full = run(&engine, greedy(prompt.clone(), 10));
    let third = full.tokens[0][2];
    let mut req = greedy(prompt.clone(), 10);
    req.params_mut().stop_token_ids = vec![third];
    let a = run(&engine, req);
    let first_at = full.tokens[0].iter().position(|&t| t == third).unwrap();
    assert_eq!(a.tokens[0].len(), first_at + 1, "ends at the stop token");
    assert_eq!(a.finish[0], Some(FinishReason::Stop));
    let mut req = greedy(prompt, 10);
    req.params_mut().stop_token_ids = vec![third];
    req.params_mut().min_tokens = 10;
    let a = run(&engine, req);
    assert_eq!(
        a.tokens[0].len(),
        10,
        "stop tokens are suppressed before min_tokens"
    );
    assert!(!a.tokens[0].contains(&third));
    wait_blocks_free(&engine);
}

#[test]
fn dropping_the_stream_cancels_and_frees_blocks() {
    let (engine, tok) = start(1 << 24, 8);
    let mut rx = engine
        .submit(greedy(prompt_of(&tok, "Tell me a long story"), 400))
        .unwrap();
    for _ in 0..3 {
        rx.blocking_recv().unwrap().unwrap();
    }
    assert!(engine.load().kv_blocks_used > 0);
    drop(rx);
    wait_blocks_free(&engine);
}

#[test]
fn requests_wait_for_blocks_and_all_finish() {
    // Room for about two sequences at a time: the rest queue and still complete.
    let per_token = 2 * 2 * 2 * 16 * 4; // layers * (k, v) * kv_heads * head_dim * f32
    let (engine, tok) = start((per_token * 512 * 2) as u64, 64);
    let prompt = prompt_of(&tok, "Hola");
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| s.spawn(|| run(&engine, greedy(prompt.clone(), 400))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for a in &answers {
        assert_eq!(a.tokens[0], answers[0].tokens[0]);
    }
    wait_blocks_free(&engine);
}

#[test]
fn over_long_requests_are_refused_up_front() {
    let (engine, tok) = start(1 << 24, 8);
    let err = engine
        .submit(greedy(prompt_of(&tok, "x"), 600))
        .expect_err("must refuse");
    assert!(
        err.to_string().contains("maximum context length is 512"),
        "{err}"
    );
    assert!(engine.submit(greedy(Vec::new(), 4)).is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// Any token ids, in any order (including ones that never make whole characters): the
    /// detokenizer never panics and, when the ids decode to valid text, releases exactly
    /// that text.
    #[test]
    fn the_detokenizer_takes_arbitrary_ids(
        ids in proptest::collection::vec(0u32..2000, 0..64),
        skip_special in proptest::bool::ANY,
    ) {
        static TOK: OnceLock<ModelTokenizer> = OnceLock::new();
        let tok = TOK.get_or_init(|| ModelTokenizer::from_dir(model_dir()).unwrap());
        let ids: Vec<u32> = ids.into_iter().filter(|&i| (i as usize) < tok.vocab_size()).collect();
        let mut d = IncrementalDetokenizer::new(skip_special);
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&d.push(tok, id).unwrap());
        }
        out.push_str(&d.flush(tok).unwrap());
        let whole = tok.decode(&ids, skip_special).unwrap();
        if !whole.contains('\u{FFFD}') {
            proptest::prop_assert_eq!(out, whole);
        }
    }
}

#[test]
fn the_detokenizer_releases_a_window_that_never_becomes_text() {
    let tok = ModelTokenizer::from_dir(model_dir()).unwrap();
    // A token that is one UTF-8 continuation byte: never a character on its own.
    let lone = (0..tok.vocab_size() as u32)
        .find(|&id| tok.token_bytes(id) == [0x80])
        .expect("a byte-level vocabulary has every byte");
    let mut d = IncrementalDetokenizer::new(true);
    let mut held = 0;
    let mut released = String::new();
    for _ in 0..100 {
        let piece = d.push(&tok, lone).unwrap();
        held = if piece.is_empty() { held + 1 } else { 0 };
        assert!(held < 8, "{held} tokens held back");
        released.push_str(&piece);
    }
    assert!(released.chars().all(|c| c == '\u{FFFD}') && !released.is_empty());
}
