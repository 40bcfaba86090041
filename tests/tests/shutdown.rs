//! SIGTERM against the real binary, as Kubernetes stops a pod: `/ready` turns 503 at once
//! while the listener still accepts, new generation requests get 503 with Retry-After,
//! running streams finish, a stream still open after the grace period ends with an error
//! event and `[DONE]`, every audit decision is on disk, and the process exits 0.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use rosetta_tests::*;

const CONFIG: &str = r#"
server: { listen: 127.0.0.1:0, shutdown_grace_seconds: 3 }
cache_dir: "{cache}"
auth: { allow_unauthenticated: true, anonymous_tenant: local }
tenants: [{ id: local }]
audit: { path: "{tmp}/audit.jsonl" }
models:
  - id: tiny
    demo: { arch: qwen2, size: tiny, seed: 1 }
    licence: apache-2.0
    max_context: 512
    engine: { kv_cache_bytes: 16777216 }
"#;

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": "Hujambo"}],
        "stream": true,
        "ignore_eos": true
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test]
async fn sigterm_drains_then_exits_zero_with_every_audit_entry_on_disk() {
    let mut s = Server::start(CONFIG);
    // A stream whose client does not read: it cannot finish within the grace period.
    let unread_body =
        chat(json!({"n": 32, "max_tokens": 400, "logprobs": true, "top_logprobs": 20})).to_string();
    let mut unread = s.connect_unread();
    write!(
        unread,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{unread_body}",
        unread_body.len()
    )
    .unwrap();
    // A stream that is read as it comes and finishes well within the grace period.
    let running = s
        .client()
        .post(s.url("/v1/chat/completions"))
        .json(&chat(json!({"max_tokens": 200})))
        .send()
        .await
        .unwrap();
    assert_eq!(running.status(), 200);
    let reader = tokio::spawn(running.text());

    s.terminate();
    let terminated = Instant::now();
    // Not ready at once; the port still accepts and answers.
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.get("/ready").await.status != 503 {
        assert!(Instant::now() < deadline, "/ready stayed 200 after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = s
        .post("/v1/chat/completions", &chat(json!({"max_tokens": 2})))
        .await;
    refused.assert_error(503, Some("server_error"), Some("server_shutting_down"));
    assert!(refused.headers.get("retry-after").is_some());

    // The running stream completes normally, within the grace period.
    let text = reader.await.unwrap().unwrap();
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");

    // The unread one is cut when the 3 s grace period is over: read from then on, it ends
    // with an error event, then [DONE].
    tokio::time::sleep(Duration::from_millis(3500).saturating_sub(terminated.elapsed())).await;
    unread
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut raw = Vec::new();
    let _ = unread.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw);
    let tail: Vec<String> = sse_data(&raw).into_iter().rev().take(2).collect();
    assert_eq!(
        tail.first().map(String::as_str),
        Some("[DONE]"),
        "{raw:.400}"
    );
    assert!(
        tail.get(1)
            .is_some_and(|e| e.contains("server_shutting_down")),
        "{tail:?}"
    );

    let status = s
        .wait_exit(Duration::from_secs(20))
        .expect("the server exits");
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        s.logs()
    );
    // Both admitted requests were decided and audited; the refused one never reached policy.
    let audit = std::fs::read_to_string(s.dir().join("audit.jsonl")).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{audit}");
    assert!(lines.iter().all(|l| l["decision"] == "allow"), "{audit}");
}
