//! The scheduler's decisions, watched through a fake model runner: no weights and no forward
//! pass, only a log of what each step was asked to run (which sequence, from which position,
//! how many tokens) and made-up logits. Token budget, decodes before prefill, chunking,
//! preemption by recompute, choices sharing their prompt, and aborts.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rosetta_engine::demo::{Arch, DemoSpec, Size};
use rosetta_engine::kv::KvLayout;
use rosetta_engine::model::{
    BlockCopy, LogitRows, ModelRunner, ModelShape, ModelWeights, SeqChunk,
};
use rosetta_engine::text::ModelTokenizer;
use rosetta_engine::{ChoiceEnd, ChoiceStats, EngineObserver, FinishReason, Observer, StepStats};
use rosetta_engine::{
    Engine, EngineError, EventStream, GenerateEvent, NativeEngine, NativeEngineConfig,
};

use common::greedy;

const CONTEXT: usize = 512;

/// One chunk of one step: where it starts, how long it is, and its first token (which tells
/// the prompts apart in these tests; a decode's is the sampled token, 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunk {
    start: usize,
    len: usize,
    first_token: u32,
}

type Log = Arc<Mutex<Vec<Vec<Chunk>>>>;

/// A model that runs nothing: it logs each step, takes a millisecond (so requests submitted
/// one after another meet in the batch), and answers with logits whose greedy pick is a fixed
/// ordinary token (7).
struct FakeModel {
    shape: ModelShape,
    log: Log,
}

struct FakeRunner {
    vocab: usize,
    log: Log,
}

impl ModelWeights for FakeModel {
    fn shape(&self) -> &ModelShape {
        &self.shape
    }

    fn kv_bytes_per_token(&self) -> usize {
        self.shape.kv_bytes_per_token()
    }

    fn into_runner(self: Box<Self>, _: KvLayout) -> Result<Box<dyn ModelRunner>, EngineError> {
        Ok(Box::new(FakeRunner {
            vocab: self.shape.vocab_size,
            log: self.log,
        }))
    }
}

impl ModelRunner for FakeRunner {
    fn step(
        &mut self,
        _: &[BlockCopy],
        chunks: &[SeqChunk<'_>],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let step = chunks
            .iter()
            .map(|c| Chunk {
                start: c.start_pos,
                len: c.tokens.len(),
                first_token: c.tokens[0],
            })
            .collect();
        self.log.lock().unwrap().push(step);
        std::thread::sleep(Duration::from_millis(1));
        let mut rows = Vec::new();
        for c in chunks {
            if matches!(c.logits, LogitRows::Last) {
                let mut row = vec![0.0; self.vocab];
                row[7] = 10.0;
                rows.push(row);
            }
        }
        Ok(rows)
    }
}

fn model_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    common::generated_model(&DIR, DemoSpec::new(Arch::Qwen2, Size::Tiny, 31))
}

/// An engine over the fake model with `pool_tokens` of KV in 4-token blocks (at least one
/// context of 512 tokens).
fn start(pool_tokens: usize, budget: usize, max_num_seqs: usize) -> (NativeEngine, Log) {
    start_with_context(pool_tokens, budget, max_num_seqs, CONTEXT)
}

fn start_with_context(
    pool_tokens: usize,
    budget: usize,
    max_num_seqs: usize,
    context: usize,
) -> (NativeEngine, Log) {
    start_observed(
        pool_tokens,
        budget,
        max_num_seqs,
        context,
        Observer::default(),
    )
}

fn start_observed(
    pool_tokens: usize,
    budget: usize,
    max_num_seqs: usize,
    context: usize,
    observer: Observer,
) -> (NativeEngine, Log) {
    let dir = model_dir();
    let shape = ModelShape::from_file(&dir.join("config.json")).unwrap();
    let log = Log::default();
    let cfg = NativeEngineConfig {
        block_size: 4,
        kv_cache_bytes: (pool_tokens * shape.kv_bytes_per_token()) as u64,
        max_num_seqs,
        max_num_batched_tokens: budget,
        observer,
        ..NativeEngineConfig::new(context)
    };
    let tok = Arc::new(ModelTokenizer::from_dir(dir).unwrap());
    let model = FakeModel {
        shape,
        log: log.clone(),
    };
    (NativeEngine::start(model, tok, cfg).unwrap(), log)
}

fn finish(mut rx: EventStream) -> usize {
    let mut tokens = 0;
    loop {
        match rx
            .blocking_recv()
            .expect("stream ended early")
            .expect("engine error")
        {
            GenerateEvent::Delta(_) => tokens += 1,
            GenerateEvent::Done(_) => return tokens,
        }
    }
}

fn wait_idle(engine: &NativeEngine) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let l = engine.load();
        if l.kv_blocks_used == 0 && l.running == 0 && l.waiting == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("engine did not go idle: {:?}", engine.load());
}

#[test]
fn steps_keep_the_budget_run_decodes_first_and_chunk_long_prompts() {
    let (engine, log) = start(4096, 64, 8);
    // Four prompts of 100 tokens each, told apart by their first token.
    let streams: Vec<_> = (0..4)
        .map(|i| engine.submit(greedy(vec![100 + i; 100], 6)).unwrap())
        .collect();
    for rx in streams {
        assert_eq!(finish(rx), 6);
    }
    wait_idle(&engine);
    let log = log.lock().unwrap();
    let mut prefilled = std::collections::HashMap::new();
    for step in log.iter() {
        let total: usize = step.iter().map(|c| c.len).sum();
        assert!(total <= 64, "a step of {total} tokens: {step:?}");
        // Decodes (one token past the prompt) come before any prefill chunk in a step.
        let first_prefill = step.iter().position(|c| c.start < 100);
        if let Some(p) = first_prefill {
            assert!(
                step[p..].iter().all(|c| c.start < 100),
                "a decode after a prefill: {step:?}"
            );
        }
        for c in step.iter().filter(|c| c.start < 100) {
            let done = prefilled.entry(c.first_token).or_insert(0);
            // Chunks of a prompt follow one another.
            assert_eq!(c.start, *done, "{step:?}");
            *done += c.len;
        }
    }
    assert!(prefilled.values().all(|&n| n == 100), "{prefilled:?}");
    // Each 100-token prompt had to be split: 64 tokens a step at most.
    assert!(log.len() >= 100 * 4 / 64);
}

#[test]
fn choices_share_one_prefill_then_decode_together() {
    let (engine, log) = start(4096, 512, 8);
    let mut req = greedy(vec![42; 20], 5);
    req.params_mut().n = 3;
    assert_eq!(finish(engine.submit(req).unwrap()), 15);
    wait_idle(&engine);
    let log = log.lock().unwrap();
    let prefills: Vec<&Chunk> = log.iter().flatten().filter(|c| c.start == 0).collect();
    assert_eq!(prefills.len(), 1, "the prompt is computed once: {log:?}");
    // After the prefill (which samples all three first tokens) the three decode side by side.
    assert!(log[1..].iter().all(|step| step.len() == 3), "{log:?}");
}

#[test]
fn when_blocks_run_out_one_is_preempted_and_recomputed_from_its_cached_prefix() {
    // 96 tokens of KV: two sequences growing to 64 tokens each cannot both stay.
    let (engine, log) = start_with_context(96, 512, 8, 64);
    let a = engine.submit(greedy(vec![11; 24], 40)).unwrap();
    let b = engine.submit(greedy(vec![22; 24], 40)).unwrap();
    assert_eq!(finish(a), 40);
    assert_eq!(finish(b), 40);
    wait_idle(&engine);
    assert!(engine.load().preemptions > 0, "{:?}", engine.load());
    let log = log.lock().unwrap();
    // Both prefilled at once (in the first step, or `b` in the second when the engine
    // took its first step between the two submissions); then one was preempted and later
    // ran a chunk of many tokens again: its recompute, from the longest prefix still
    // cached.
    let prefills = log
        .iter()
        .take(2)
        .flatten()
        .filter(|c| c.start == 0 && c.len == 24);
    assert_eq!(prefills.count(), 2, "{log:?}");
    let many = log.iter().flatten().filter(|c| c.len > 1).count();
    assert!(many >= 3, "no recompute in {log:?}");
    // The other never stopped: one decode a step from its prompt's end to its last token.
    let decodes = log.iter().flatten().filter(|c| c.len == 1).count();
    assert!(decodes >= 39, "{log:?}");
}

#[test]
fn an_aborted_request_stops_being_scheduled_and_its_blocks_come_back() {
    let (engine, log) = start(4096, 512, 8);
    let gone = engine.submit(greedy(vec![33; 10], 400)).unwrap();
    let kept = engine.submit(greedy(vec![44; 10], 40)).unwrap();
    drop(gone);
    assert_eq!(finish(kept), 40);
    wait_idle(&engine);
    let log = log.lock().unwrap();
    // `kept` decodes 39 times (its first token comes from the prefill); the dropped one at
    // most a step or two before the engine sees it gone, never its 400 tokens.
    let decodes = log
        .iter()
        .flatten()
        .filter(|c| c.len == 1 && c.start >= 10)
        .count();
    assert!((39..45).contains(&decodes), "{decodes} decodes: {log:?}");
}

/// Everything the engine reported.
#[derive(Default)]
struct Recorded {
    steps: Mutex<Vec<StepStats>>,
    ended: Mutex<Vec<ChoiceStats>>,
}

impl EngineObserver for Recorded {
    fn step(&self, step: &StepStats) {
        self.steps.lock().unwrap().push(step.clone());
    }

    fn choice_ended(&self, choice: &ChoiceStats) {
        self.ended.lock().unwrap().push(choice.clone());
    }
}

#[test]
fn the_observer_sees_every_step_token_and_ended_choice() {
    let recorded = Arc::new(Recorded::default());
    let (engine, log) = start_observed(4096, 16, 8, CONTEXT, Observer(recorded.clone()));
    // A 40-token prompt in chunks of 16, three choices of 5 tokens each.
    let mut req = greedy(vec![42; 40], 5);
    req.params_mut().n = 3;
    let rx = engine.submit(req).unwrap();
    let times = rx.times().expect("the engine shares its times");
    assert_eq!(finish(rx), 15);
    wait_idle(&engine);
    let steps = recorded.steps.lock().unwrap();
    let log = log.lock().unwrap();
    assert_eq!(steps.len(), log.len(), "one report per forward pass");
    for (s, l) in steps.iter().zip(log.iter()) {
        assert_eq!(s.scheduled_tokens, l.iter().map(|c| c.len).sum::<usize>());
    }
    let sum = |f: fn(&StepStats) -> usize| steps.iter().map(f).sum::<usize>();
    assert_eq!(sum(|s| s.generation_tokens), 15);
    // The prompt is counted once, with the request's one first token.
    assert_eq!(sum(|s| s.prompt_tokens), 40);
    assert_eq!(sum(|s| s.time_to_first_token.len()), 1);
    // Every token but each choice's first follows another.
    assert_eq!(sum(|s| s.inter_token.len()), 15 - 3);
    let ended = recorded.ended.lock().unwrap();
    assert_eq!(ended.len(), 3);
    for c in ended.iter() {
        assert_eq!(c.end, ChoiceEnd::Finished(FinishReason::Length));
        assert_eq!((c.prompt_tokens, c.generation_tokens), (40, 5));
        assert_eq!((c.n, c.max_tokens), (3, 5));
        let (queued, prefill, decode) = (c.queued.unwrap(), c.prefill.unwrap(), c.decode.unwrap());
        assert!(queued + prefill + decode <= c.e2e);
        assert_eq!(c.inference.unwrap() + queued, c.e2e);
    }
    // The stream's times agree: scheduled, then a first token.
    assert!(times.queue_time().is_some() && times.prefill_time().is_some());
}

#[test]
fn a_cancelled_request_is_reported_aborted() {
    let recorded = Arc::new(Recorded::default());
    let (engine, _log) = start_observed(4096, 16, 8, CONTEXT, Observer(recorded.clone()));
    let mut rx = engine.submit(greedy(vec![7; 30], 100)).unwrap();
    // Its first token, then the reader goes away.
    loop {
        if let GenerateEvent::Delta(_) = rx.blocking_recv().unwrap().unwrap() {
            break;
        }
    }
    drop(rx);
    wait_idle(&engine);
    let ended = recorded.ended.lock().unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].end, ChoiceEnd::Aborted);
    assert!(ended[0].generation_tokens >= 1 && ended[0].generation_tokens < 100);
}
