//! The mistral.rs backend (`backend: mistralrs`) through the real binary: the same generated
//! Llama folder served by the native engine and by mistral.rs gives the same greedy text on
//! chat and completions, streamed and whole; it goes through the same validation, policy and
//! output as any replica; what mistral.rs cannot honour is a 400, and in-situ quantisation
//! loads and answers.

use rosetta_tests::*;

const CONFIG: &str = r#"
cache_dir: "{cache}"
auth: { allow_unauthenticated: true }
models:
  - { id: native, demo: { arch: llama, size: tiny, seed: 4 }, licence: apache-2.0, max_context: 512 }
  - { id: mrs, demo: { arch: llama, size: tiny, seed: 4 }, licence: apache-2.0, max_context: 512, backend: mistralrs }
  - { id: mrs-q8, demo: { arch: llama, size: tiny, seed: 4 }, licence: apache-2.0, max_context: 512, backend: mistralrs, isq: Q8_0 }
"#;

const PROMPT: &str = "Habari ya asubuhi! Leo tunakwenda sokoni kununua matunda.";

#[tokio::test]
async fn mistralrs_gives_the_native_engines_greedy_output() {
    let s = Server::start(CONFIG);
    let native = s.greedy_chat("native", PROMPT, 16).await;
    let mrs = s.greedy_chat("mrs", PROMPT, 16).await;
    assert_eq!(mrs["model"], "mrs");
    assert_eq!(content(&mrs), content(&native), "chat: {mrs}\nvs {native}");
    assert_eq!(mrs["choices"][0]["finish_reason"], "length");
    assert_eq!(
        mrs["usage"]["prompt_tokens"],
        native["usage"]["prompt_tokens"]
    );

    let complete = |model: &str| {
        json!({"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0,
               "ignore_eos": true})
    };
    let a = s.complete(complete("native")).await;
    let b = s.complete(complete("mrs")).await;
    assert_eq!(text(&b), text(&a), "completions");

    // Streamed: the same text in chunks, then the finish reason.
    let mut body = json!({"model": "mrs", "messages": [{"role": "user", "content": PROMPT}],
                          "max_tokens": 16, "temperature": 0, "ignore_eos": true,
                          "stream": true, "stream_options": {"include_usage": true}});
    let chunks = s.stream("/v1/chat/completions", body.clone()).await;
    assert_eq!(stream_text(&chunks, 0), content(&native));
    assert_eq!(stream_finish_reason(&chunks, 0), "length");
    body["model"] = json!("mrs-q8");
    let q8 = s.stream("/v1/chat/completions", body).await;
    assert_eq!(stream_finish_reason(&q8, 0), "length");
    assert!(!stream_text(&q8, 0).is_empty(), "Q8_0 answered nothing");
}

#[tokio::test]
async fn mistralrs_replicas_validate_and_refuse_like_the_native_engine() {
    let s = Server::start(CONFIG);
    // The gateway's validation is the same for every backend: the same 400, byte for byte.
    let bad = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "x"}], "temperature": 7});
    let a = s.post("/v1/chat/completions", &bad("native")).await;
    let b = s.post("/v1/chat/completions", &bad("mrs")).await;
    a.assert_error(400, Some("invalid_request_error"), None);
    assert_eq!(a.text, b.text);
    // What mistral.rs cannot honour is said, not ignored.
    let r = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "mrs", "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 2, "logprobs": true}),
        )
        .await;
    r.assert_error(400, Some("invalid_request_error"), None);
    assert!(r.text.contains("mistral.rs"), "{}", r.text);
    // Structured output is enforced there too (the grammar goes to mistral.rs's llguidance).
    let v = s
        .chat(
            json!({"model": "mrs", "messages": [{"role": "user", "content": "Pick"}],
                     "max_tokens": 10, "temperature": 0,
                     "response_format": {"type": "json_schema", "json_schema": {"name": "c",
                        "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}},
                                   "required": ["ok"], "additionalProperties": false}}}}),
        )
        .await;
    let text = content(&v);
    if v["choices"][0]["finish_reason"] == "stop" {
        let parsed: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(parsed["ok"].is_boolean(), "{text}");
    } else {
        assert!(text.starts_with('{'), "{text}");
    }
    // The replica reports its load like any other.
    let load = s.get("/load").await.ok();
    assert!(load["models"]["mrs"]["running"].is_u64(), "{load}");
}
