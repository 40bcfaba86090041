//! Rate limits over HTTP against the real binary: requests per minute, tokens per minute
//! settling to real usage, concurrency caps, the `x-ratelimit-*` headers, and what the
//! official openai SDK makes of a 429. (The exact arithmetic under an injected clock is in
//! the gateway's ratelimit unit tests.)

use std::process::Command;
use std::time::{Duration, Instant};

use rosetta_tests::*;

const CONFIG: &str = r#"
server: { listen: 127.0.0.1:0, max_body_bytes: 65536 }
cache_dir: "{cache}"
models:
  - { id: open, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 256, engine: { kv_cache_bytes: 4194304 } }
  - { id: aya, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: cc-by-nc-4.0, max_context: 256, engine: { kv_cache_bytes: 4194304 } }
tenants:
  - id: few-requests
    keys: [{ hash: "RPM_HASH" }]
    limits: { requests_per_minute: 3 }
  - id: few-tokens
    keys: [{ hash: "TPM_HASH" }]
    limits: { tokens_per_minute: 6000 }
  - id: one-at-a-time
    keys: [{ hash: "CONC_HASH" }]
    limits: { max_concurrent: 1 }
"#;

struct Keys {
    rpm: String,
    tpm: String,
    conc: String,
}

fn start() -> (Server, Keys) {
    let (config, [rpm, tpm, conc]) = with_new_keys(CONFIG, ["RPM_HASH", "TPM_HASH", "CONC_HASH"]);
    (Server::start(&config), Keys { rpm, tpm, conc })
}

fn chat(max_tokens: u64) -> Value {
    json!({
        "model": "open",
        "messages": [{"role": "user", "content": "Bonjour"}],
        "max_tokens": max_tokens,
        "ignore_eos": true
    })
}

#[tokio::test]
async fn requests_per_minute_admit_the_burst_then_429() {
    let (s, keys) = start();
    for expect_remaining in [2, 1, 0] {
        let r = s.post_as(&keys.rpm, "/v1/chat/completions", &chat(1)).await;
        assert_eq!(r.header_u64("x-ratelimit-limit-requests"), Some(3));
        assert_eq!(
            r.header_u64("x-ratelimit-remaining-requests"),
            Some(expect_remaining)
        );
        assert!(r.header("x-ratelimit-reset-requests").is_some());
        r.ok();
    }
    let r = s.post_as(&keys.rpm, "/v1/chat/completions", &chat(1)).await;
    r.assert_error(429, Some("requests"), Some("rate_limit_exceeded"));
    // One request comes back every 20 s; the full burst 40 s after that.
    let retry = r.header_u64("retry-after").unwrap();
    assert!((15..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(r.header_u64("x-ratelimit-remaining-requests"), Some(0));
    assert!(r.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("requests per min (RPM): Limit 3"));
    // Every other response carries the window too: here the 0 left by the burst.
    let models = s.get_as(&keys.rpm, "/v1/models").await;
    assert_eq!(models.header_u64("x-ratelimit-limit-requests"), Some(3));
    assert_eq!(models.header_u64("x-ratelimit-remaining-requests"), Some(0));
    assert!(models.header("x-ratelimit-reset-requests").is_some());
    models.ok();
    // Other tenants are not affected.
    s.post_as(&keys.tpm, "/v1/chat/completions", &chat(1))
        .await
        .ok();
}

#[tokio::test]
async fn tokens_per_minute_reserve_then_settle_to_real_usage() {
    let (s, keys) = start();
    let started = Instant::now();
    let complete = |max_tokens: u64, stop: Option<&str>| {
        let mut body = json!({"model": "open", "prompt": "Bonjour", "max_tokens": max_tokens, "temperature": 0});
        if let Some(stop) = stop {
            body["stop"] = json!([stop]);
        }
        body
    };
    // Greedy output is deterministic: its first 8 tokens' text, used as a stop string, makes
    // a later request with max_tokens 200 end after about 8 tokens.
    let learn = s
        .post_as(&keys.tpm, "/v1/completions", &complete(8, None))
        .await
        .ok();
    let stop = learn["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(!stop.is_empty());
    let prompt = learn["usage"]["prompt_tokens"].as_u64().unwrap();
    let spent = learn["usage"]["total_tokens"].as_u64().unwrap();

    let first = s
        .post_as(&keys.tpm, "/v1/completions", &complete(200, Some(&stop)))
        .await;
    let after_admit = first.header_u64("x-ratelimit-remaining-tokens").unwrap();
    assert_eq!(first.header_u64("x-ratelimit-limit-tokens"), Some(6000));
    let first = first.ok();
    let used = first["usage"]["total_tokens"].as_u64().unwrap();
    assert!(
        used < prompt + 20,
        "the stop string did not end it early: {first}"
    );
    // Refills run at 100 tokens a second; allow for the time the test took.
    let refill = || (started.elapsed().as_secs_f64() * 100.0).ceil() as u64;
    let within = |remaining: u64, expected: u64| {
        let slack = refill();
        assert!(
            remaining >= expected && remaining <= expected + slack,
            "remaining {remaining}, expected {expected} (+ up to {slack} refilled)"
        );
    };
    // At admission it reserved its worst case, prompt + 200...
    within(after_admit, 6000 - spent - (prompt + 200));
    // ...and when it ended it kept only what it used: the next request sees that.
    let small = s
        .post_as(&keys.tpm, "/v1/completions", &complete(1, None))
        .await;
    let remaining = small.header_u64("x-ratelimit-remaining-tokens").unwrap();
    within(remaining, 6000 - spent - used - (prompt + 1));
    small.ok();
    // A request that could never fit is refused outright.
    let huge = s
        .post_as(
            &keys.tpm,
            "/v1/completions",
            &json!({"model": "open", "prompt": "x", "max_tokens": 200, "n": 40}),
        )
        .await;
    huge.assert_error(429, Some("tokens"), Some("rate_limit_exceeded"));
    assert!(huge.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Request too large"));
    // Draining the bucket gives a tokens 429 with a Retry-After.
    let mut saw_429 = false;
    for _ in 0..40 {
        let r = s
            .post_as(&keys.tpm, "/v1/completions", &json!({"model": "open", "prompt": "x", "max_tokens": 200, "n": 4, "ignore_eos": true}))
            .await;
        if r.status == 429 {
            r.assert_error(429, Some("tokens"), Some("rate_limit_exceeded"));
            assert!(r
                .header_u64("retry-after")
                .is_some_and(|s| (1..=60).contains(&s)));
            assert!(r.header_u64("x-ratelimit-remaining-tokens").is_some());
            saw_429 = true;
            break;
        }
        r.ok();
    }
    assert!(saw_429, "6000 tokens per minute never ran out");
}

#[tokio::test]
async fn a_concurrency_cap_refuses_while_a_stream_runs() {
    let (s, keys) = start();
    // A stream that holds its slot while we read slowly.
    let mut stream = s
        .client()
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&keys.conc)
        .json(&json!({"model": "open", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let _first = stream.chunk().await.unwrap();
    let r = s
        .post_as(&keys.conc, "/v1/chat/completions", &chat(1))
        .await;
    r.assert_error(429, Some("requests"), Some("rate_limit_exceeded"));
    assert!(r.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("concurrent"));
    // Dropping the stream (client gone) frees the slot.
    drop(stream);
    s.post_until_ok(Some(&keys.conc), "/v1/chat/completions", &chat(1))
        .await;
}

#[test]
fn the_openai_sdk_sees_rate_limit_and_permission_errors() {
    let clients = tests_dir().join("clients");
    let python = clients.join(".venv").join("bin").join("python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test.sh",
        python.display()
    );
    let (s, keys) = start();
    let mut cmd = Command::new(&python);
    cmd.arg(clients.join("openai_limits.py")).args([
        "--base-url",
        s.base_url(),
        "--key",
        &keys.rpm,
        "--model",
        "open",
        "--rpm",
        "3",
        "--denied-model",
        "aya",
    ]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
    println!("{}", out.stdout);
    assert!(
        out.success(),
        "openai_limits.py failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}
