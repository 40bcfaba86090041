//! Continuous batching proofs: batched equals unbatched (chunked prefill on and off, with and
//! without preemption), prefix hits equal misses, choices share prompt blocks correctly,
//! priorities and tenant fairness order admission, and every block comes back.

mod common;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rosetta_engine::demo::{Arch, DemoSpec, Size};
use rosetta_engine::model::{ModelShape, Transformer, WeightFormat};
use rosetta_engine::text::ModelTokenizer;
use rosetta_engine::{
    Engine, EventStream, GenerateEvent, GenerateRequest, NativeEngine, NativeEngineConfig,
};

const CONTEXT: usize = 256;

fn model_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    common::generated_model(&DIR, DemoSpec::new(Arch::Qwen3, Size::Tiny, 21))
}

fn bytes_per_token() -> u64 {
    ModelShape::from_file(&model_dir().join("config.json"))
        .unwrap()
        .kv_bytes_per_token() as u64
}

fn start(cfg: NativeEngineConfig) -> NativeEngine {
    let dir = model_dir();
    let tok = Arc::new(ModelTokenizer::from_dir(dir).unwrap());
    let model = Transformer::load(dir, WeightFormat::F32, CONTEXT).unwrap();
    NativeEngine::start(model, tok, cfg).unwrap()
}

fn config(pool_tokens: usize, budget: usize, chunked: bool) -> NativeEngineConfig {
    NativeEngineConfig {
        block_size: 4,
        kv_cache_bytes: pool_tokens as u64 * bytes_per_token(),
        max_num_seqs: 64,
        max_num_batched_tokens: budget,
        chunked_prefill: chunked,
        prefix_caching: true,
        max_context: CONTEXT,
        stall_timeout: std::time::Duration::from_secs(60),
        prefix_salt_key: b"test".to_vec(),
        observer: Default::default(),
    }
}

use common::greedy;

/// Token ids per choice, from a whole event stream.
fn collect(mut rx: EventStream, n: usize) -> Vec<Vec<u32>> {
    let mut out = vec![Vec::new(); n];
    loop {
        match rx
            .blocking_recv()
            .expect("stream ended without Done")
            .expect("engine error")
        {
            GenerateEvent::Delta(d) => out[d.index].extend(d.token.map(|t| t.id)),
            GenerateEvent::Done(_) => return out,
        }
    }
}

fn wait_idle(engine: &NativeEngine) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = engine.load();
        if l.kv_blocks_used == 0 && l.running == 0 && l.waiting == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "engine did not return to idle: {l:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Submits `req` and waits until it runs (its first token is out).
fn submit_running(engine: &NativeEngine, req: GenerateRequest) -> EventStream {
    let mut rx = engine.submit(req).unwrap();
    assert!(matches!(
        rx.blocking_recv(),
        Some(Ok(GenerateEvent::Delta(_)))
    ));
    rx
}

/// Prompts of varied lengths (3 to ~120 tokens) from a fixed seed.
fn prompts(count: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let len = rng.random_range(3..120);
            (0..len).map(|_| rng.random_range(10..2000)).collect()
        })
        .collect()
}

/// Each prompt run on its own, one at a time: the reference outputs.
fn alone(prompts: &[Vec<u32>], max_tokens: usize) -> Vec<Vec<u32>> {
    let engine = start(config(4096, 4096, true));
    let out = prompts
        .iter()
        .map(|p| collect(engine.submit(greedy(p.clone(), max_tokens)).unwrap(), 1).remove(0))
        .collect();
    wait_idle(&engine);
    out
}

fn together(engine: &NativeEngine, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<Vec<u32>> {
    // Submit everything first so the requests really share steps.
    let streams: Vec<EventStream> = prompts
        .iter()
        .map(|p| engine.submit(greedy(p.clone(), max_tokens)).unwrap())
        .collect();
    streams
        .into_iter()
        .map(|rx| collect(rx, 1).remove(0))
        .collect()
}

#[test]
fn batched_equals_unbatched_in_every_mode() {
    let all = prompts(64, 5);
    let max_tokens = 24;
    let reference = alone(&all, max_tokens);
    for &count in &[1usize, 2, 7, 16, 64] {
        let batch = &all[..count];
        let want = &reference[..count];
        // Chunked prefill with a small step budget: prompts span several steps.
        let engine = start(config(8192, 64, true));
        assert_eq!(
            together(&engine, batch, max_tokens),
            want,
            "{count} sequences, chunked prefill"
        );
        wait_idle(&engine);
        // Whole prompts per step.
        let engine = start(config(8192, 4096, false));
        assert_eq!(
            together(&engine, batch, max_tokens),
            want,
            "{count} sequences, no chunking"
        );
        wait_idle(&engine);
    }
    // A pool that holds barely more than one full context: sequences must be preempted and
    // recomputed, and still produce the same tokens.
    for chunked in [true, false] {
        let engine = start(config(CONTEXT + 64, 256, chunked));
        assert_eq!(
            together(&engine, &all, max_tokens),
            reference,
            "tiny pool, chunked={chunked}"
        );
        let preemptions = engine.load().preemptions;
        assert!(
            preemptions > 0,
            "the tiny pool should have forced preemptions (chunked={chunked})"
        );
        wait_idle(&engine);
    }
}

#[test]
fn prefix_hits_give_identical_output_and_are_per_tenant() {
    let engine = start(config(4096, 512, true));
    let shared: Vec<u32> = (0..100).map(|i| (i * 13 + 7) % 1900 + 20).collect();
    let miss = collect(engine.submit(greedy(shared.clone(), 16)).unwrap(), 1);
    let before = engine.load();
    let hit = collect(engine.submit(greedy(shared.clone(), 16)).unwrap(), 1);
    let after = engine.load();
    assert_eq!(hit, miss, "a prefix hit must not change the output");
    // 99 computable prompt tokens -> 24 full blocks of 4 found in the cache.
    assert_eq!(after.prefix_hit_tokens - before.prefix_hit_tokens, 96);
    // Another tenant never reuses them.
    let mut other = greedy(shared.clone(), 16);
    other.tenant = Some("tenant-b".into());
    let before = engine.load();
    let other_out = collect(engine.submit(other).unwrap(), 1);
    assert_eq!(
        engine.load().prefix_hit_tokens,
        before.prefix_hit_tokens,
        "tenants must not share cache entries"
    );
    assert_eq!(other_out, miss);
    wait_idle(&engine);
}

#[test]
fn choices_share_the_prompt_and_copy_on_write() {
    let engine = start(config(4096, 512, true));
    // 37 tokens: the last prompt block is partly filled, so choices must copy it on write.
    let prompt: Vec<u32> = (0..37).map(|i| (i * 31 + 3) % 1900 + 20).collect();
    let one = collect(engine.submit(greedy(prompt.clone(), 20)).unwrap(), 1).remove(0);
    let mut req = greedy(prompt, 20);
    req.params_mut().n = 4;
    let four = collect(engine.submit(req).unwrap(), 4);
    for (i, c) in four.iter().enumerate() {
        assert_eq!(c, &one, "greedy choice {i} differs from the single answer");
    }
    wait_idle(&engine);
}

#[test]
fn higher_priority_is_admitted_first_and_tenants_share_fairly() {
    // One sequence at a time makes admission order visible as completion order.
    let mut cfg = config(4096, 512, true);
    cfg.max_num_seqs = 1;
    let engine = start(cfg);
    // Running before the next two arrive, so they queue behind it.
    let blocker = submit_running(&engine, greedy(vec![50; 8], 200));
    let mut low = greedy(vec![60; 8], 200);
    low.priority = 5;
    let low = engine.submit(low).unwrap();
    let mut high = greedy(vec![70; 8], 200);
    high.priority = 0;
    let high = engine.submit(high).unwrap();
    let order = finish_order(vec![("blocker", blocker), ("low", low), ("high", high)]);
    assert_eq!(order, ["blocker", "high", "low"]);

    // Tenant A's first request runs; A queues three more, then tenant B one: B goes next.
    let mut cfg = config(4096, 512, true);
    cfg.max_num_seqs = 1;
    let engine = start(cfg);
    let mut first = greedy(vec![80; 8], 200);
    first.tenant = Some("a".into());
    let a0 = submit_running(&engine, first);
    let mut streams = vec![("a0", a0)];
    for (i, label) in ["a1", "a2", "a3"].into_iter().enumerate() {
        let mut r = greedy(vec![81 + i as u32; 8], 200);
        r.tenant = Some("a".into());
        streams.push((label, engine.submit(r).unwrap()));
    }
    let mut r = greedy(vec![90; 8], 200);
    r.tenant = Some("b".into());
    streams.push(("b0", engine.submit(r).unwrap()));
    let order = finish_order(streams);
    assert_eq!(&order[..2], ["a0", "b0"], "order: {order:?}");
    wait_idle(&engine);
}

/// Labels in the order their requests finished, observed by one thread polling every stream.
/// With one sequence running at a time and 200 tokens each, completions are far enough apart
/// (tens of milliseconds even on a fast machine) for the poll to see them in order.
fn finish_order(mut streams: Vec<(&'static str, EventStream)>) -> Vec<&'static str> {
    let mut order = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !streams.is_empty() {
        assert!(Instant::now() < deadline, "requests did not finish");
        let mut i = 0;
        while i < streams.len() {
            match streams[i].1.try_recv() {
                Ok(Ok(GenerateEvent::Done(_))) => order.push(streams.remove(i).0),
                Ok(Ok(GenerateEvent::Delta(_))) => {}
                Ok(Err(e)) => panic!("{}: {e}", streams[i].0),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => i += 1,
                Err(e) => panic!("{}: {e}", streams[i].0),
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    order
}

#[test]
fn bounded_stress_with_random_aborts_ends_clean() {
    let engine = start(config(1024, 128, true));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let mut kept = Vec::new();
    let started = Instant::now();
    for round in 0..4 {
        let mut streams = Vec::new();
        for _ in 0..40 {
            let len = rng.random_range(1..150);
            let prompt: Vec<u32> = (0..len).map(|_| rng.random_range(10..2000)).collect();
            let mut req = GenerateRequest::new(prompt, rng.random_range(1..80));
            req.params_mut().n = rng.random_range(1..4);
            req.params_mut().sampling.seed = Some(round);
            let abort_after = rng.random_bool(0.3).then(|| rng.random_range(0..5));
            streams.push((req.n(), engine.submit(req).unwrap(), abort_after));
        }
        for (n, mut rx, abort_after) in streams {
            match abort_after {
                // Read a few events, then walk away mid-stream.
                Some(k) => {
                    for _ in 0..k {
                        if rx.blocking_recv().is_none() {
                            break;
                        }
                    }
                }
                None => kept.push(collect(rx, n)),
            }
        }
    }
    assert!(kept.len() > 80, "most requests were kept and answered");
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "stress took too long"
    );
    wait_idle(&engine);
}

#[test]
fn a_passed_deadline_aborts_with_an_error_and_frees_blocks() {
    let engine = start(config(4096, 512, true));
    let mut req = greedy(vec![42; 50], 200);
    // Already passed when the engine first sees it: aborted at its first step, whatever the
    // machine's speed.
    req.deadline = Some(Instant::now());
    let mut rx = engine.submit(req).unwrap();
    let outcome = loop {
        match rx.blocking_recv() {
            Some(Ok(GenerateEvent::Delta(_))) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(
            outcome,
            Some(Err(rosetta_engine::EngineError::DeadlineExceeded))
        ),
        "expected a deadline error, got {outcome:?}"
    );
    wait_idle(&engine);
}

#[test]
fn an_unread_stream_is_paused_then_aborted_without_holding_up_others() {
    let mut cfg = config(4096, 512, true);
    cfg.stall_timeout = Duration::from_millis(300);
    let engine = start(cfg);
    let mut unread = engine.submit(greedy(vec![50; 8], 240)).unwrap();
    // Another request runs to the end while the first is not read.
    let other = collect(engine.submit(greedy(vec![60; 8], 100)).unwrap(), 1);
    assert_eq!(other[0].len(), 100);
    // The unread one stopped at its channel's bound, then was aborted with its blocks freed.
    wait_idle(&engine);
    let generated = unread.generated_now();
    assert!(
        (1..100).contains(&generated),
        "generated {generated} tokens unread"
    );
    let mut events = 0;
    let last = loop {
        match unread.blocking_recv() {
            Some(Ok(GenerateEvent::Delta(_))) => events += 1,
            other => break other,
        }
    };
    assert_eq!(events, generated, "every generated token was delivered");
    assert!(
        matches!(last, Some(Err(rosetta_engine::EngineError::Stalled(_)))),
        "ends with a stall error: {last:?}"
    );
}

#[test]
fn fair_share_charges_a_request_for_all_its_choices() {
    // Two seats. Tenant a's first request takes both (n = 2); then a queues one more and b
    // two. Charged by its choices, a has had two shares: both of b's go before a's next.
    // (Charged one share per request, a's next would have gone before b's second.)
    let mut cfg = config(4096, 512, true);
    cfg.max_num_seqs = 2;
    let engine = start(cfg);
    let mut first = greedy(vec![80; 8], 200);
    first.params_mut().n = 2;
    first.tenant = Some("a".into());
    let a0 = submit_running(&engine, first);
    let mut streams = vec![("a0", a0)];
    for (label, tenant, token) in [("a1", "a", 81), ("b0", "b", 90), ("b1", "b", 91)] {
        let mut r = greedy(vec![token; 8], 200);
        r.tenant = Some(tenant.into());
        streams.push((label, engine.submit(r).unwrap()));
    }
    let order = finish_order(streams);
    assert_eq!(order[0], "a0", "order: {order:?}");
    assert_eq!(order[3], "a1", "order: {order:?}");
    wait_idle(&engine);
}
