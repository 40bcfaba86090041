//! The engine pool end to end: a gateway process in front of two `rosetta --engine-only`
//! processes as remote replicas, all on loopback. Load spreads over both; when one dies,
//! requests that had not started streaming still succeed on the other; a stream it was
//! serving ends with an error event, not a hang; when every replica is past the queue bound,
//! requests get 503 at once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rosetta_tests::*;

const ENGINE: &str = r#"
server: { listen: 127.0.0.1:0, max_body_bytes: 65536 }
cache_dir: "{cache}"
auth: { allow_unauthenticated: true }
models:
  - { id: m, demo: { arch: qwen3, size: tiny, seed: 1 }, licence: apache-2.0, engine: { kv_cache_bytes: 8388608 } }
"#;

fn gateway_config(urls: &[&str], max_queue: usize) -> String {
    let remotes: Vec<String> = urls
        .iter()
        .map(|u| format!("{{ url: \"{u}\", first_token_timeout_ms: 20000, load_path: /load }}"))
        .collect();
    format!(
        "server: {{ listen: 127.0.0.1:0 }}\nauth: {{ allow_unauthenticated: true }}\npool: {{ max_queue: {max_queue}, health_interval_ms: 300, breaker_failures: 2, breaker_open_ms: 3000 }}\nmodels:\n  - {{ id: m, licence: apache-2.0, remote: [{}] }}\n",
        remotes.join(", ")
    )
}

fn chat(max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": "m",
        "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "stream": stream,
    })
}

/// Starts a 1,500-token stream and returns it once it has answered 200.
async fn long_stream(g: &Server) -> reqwest::Response {
    let resp = g
        .client()
        .post(g.url("/v1/chat/completions"))
        .json(&chat(1500, true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

#[tokio::test]
async fn remote_replicas_share_load_and_survive_a_failure() {
    let mut a = Server::start_with_args(ENGINE, &["--listen", "127.0.0.1:0", "--engine-only"]);
    let mut b = Server::start_with_args(ENGINE, &["--listen", "127.0.0.1:0", "--engine-only"]);
    let (url_a, url_b) = (a.base_url().to_string(), b.base_url().to_string());
    let g = Server::start(&gateway_config(&[&url_a, &url_b], 64));

    // Load spreads: 16 concurrent requests use both replicas.
    let answers = futures::future::join_all((0..16).map(|i| {
        let mut body = chat(4, false);
        // Different prompts: no prefix affinity pulling them to one replica.
        body["messages"][0]["content"] = json!(format!("Question number {i}: what is {i} + {i}?"));
        let g = &g;
        async move { g.post("/v1/chat/completions", &body).await }
    }))
    .await;
    let mut replicas = BTreeSet::new();
    for r in answers {
        replicas.insert(r.header("x-rosetta-replica").unwrap().to_string());
        let body = r.ok();
        assert_eq!(body["model"], "m");
        assert_eq!(body["usage"]["completion_tokens"], 4);
    }
    // Replicas are named by id, never by URL.
    let (name_a, name_b) = ("m/remote-0".to_string(), "m/remote-1".to_string());
    assert_eq!(replicas, BTreeSet::from([name_a.clone(), name_b.clone()]));

    // Streaming through a remote passes chunks on and keeps usage.
    let mut body = chat(5, true);
    body["stream_options"] = json!({"include_usage": true});
    let chunks = g.stream("/v1/chat/completions", body).await;
    assert!(chunks.iter().all(|c| c["model"] == "m"), "{chunks:?}");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 5);

    // A long stream; kill the replica serving it once it has started.
    let resp = long_stream(&g).await;
    let serving = resp.headers()["x-rosetta-replica"]
        .to_str()
        .unwrap()
        .to_string();
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let survivor = if serving == name_a {
        a.kill();
        name_b.clone()
    } else {
        b.kill();
        name_a.clone()
    };
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => rest.extend_from_slice(&c),
                Err(_) => break,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the stream hung after its replica died");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("\"error\""),
        "no error event at the end: {}",
        &text[text.len().saturating_sub(300)..]
    );
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "no [DONE] after the error"
    );

    // Requests that had not started go to the survivor: every one succeeds.
    for i in 0..8 {
        let mut body = chat(2, i % 2 == 0);
        body["messages"][0]["content"] = json!(format!("After the failure, request {i}."));
        let r = g.post("/v1/chat/completions", &body).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text);
        assert_eq!(r.header("x-rosetta-replica"), Some(survivor.as_str()));
    }
}

#[tokio::test]
async fn past_the_queue_bound_requests_get_503_at_once() {
    let engine = Server::start_with_args(ENGINE, &["--listen", "127.0.0.1:0", "--engine-only"]);
    let g = Server::start(&gateway_config(&[engine.base_url()], 1));
    // One long stream occupies the only replica's single queue slot.
    let resp = long_stream(&g).await;
    let started = Instant::now();
    let r = g.post("/v1/chat/completions", &chat(2, false)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "503 must come at once"
    );
    r.assert_error(503, Some("server_error"), None);
    assert!(r.header_u64("retry-after").is_some());
    assert!(r.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("queue bound"));
    drop(resp);
    // With the stream gone (client disconnected), the slot comes back.
    g.post_until_ok(None, "/v1/chat/completions", &chat(2, false))
        .await;
}
