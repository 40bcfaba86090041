//! GET /v1/models, /health, /ready, /tokenize and /detokenize.

use rosetta_tests::*;

#[tokio::test]
async fn models_list_has_every_configured_model() {
    let s = Server::start_default();
    let v = s.get("/v1/models").await.ok();
    assert_eq!(v["object"], "list", "{v}");
    let data = v["data"].as_array().expect("data");
    let mut ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().expect("id")).collect();
    ids.sort();
    assert_eq!(ids, vec!["tiny", "tiny-llama", "tiny-long"], "{v}");
    for m in data {
        assert_eq!(m["object"], "model", "{m}");
        check_created(m);
        assert!(
            m["owned_by"].as_str().is_some_and(|o| !o.is_empty()),
            "owned_by: {m}"
        );
    }
}

#[tokio::test]
async fn model_by_id() {
    let s = Server::start_default();
    let v = s.get("/v1/models/tiny-llama").await.ok();
    assert_eq!(v["id"], "tiny-llama");
    assert_eq!(v["object"], "model");
    check_created(&v);
    assert!(v["owned_by"].is_string());
    let listed = s.get("/v1/models").await.ok();
    let same = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "tiny-llama")
        .unwrap()
        .clone();
    assert_eq!(
        v, same,
        "GET /v1/models/{{id}} differs from its entry in the list"
    );
    s.get("/v1/models/gpt-4")
        .await
        .assert_error(404, None, Some("model_not_found"));
}

#[tokio::test]
async fn health_and_ready() {
    let s = Server::start_default();
    assert_eq!(s.get("/health").await.status, StatusCode::OK);
    assert_eq!(s.get("/ready").await.status, StatusCode::OK);
}

#[tokio::test]
async fn ready_is_503_until_the_models_are_loaded() {
    // A cache of its own: four demo models must be generated first (some tenths of a second),
    // during which the server is live (/health) but not ready (/ready).
    let s = Server::start_unready(
        r#"
cache_dir: "{tmp}/cache"
auth: { allow_unauthenticated: true, anonymous_tenant: local }
tenants: [{ id: local, accepted_licences: [llama3.1] }]
models:
  - { id: fresh, demo: { arch: llama, size: tiny, seed: 99 }, licence: llama3.1 }
  - { id: fresh-mistral, demo: { arch: mistral, size: tiny, seed: 99 }, licence: apache-2.0 }
  - { id: fresh-qwen2, demo: { arch: qwen2, size: tiny, seed: 99 }, licence: apache-2.0 }
  - { id: fresh-qwen3, demo: { arch: qwen3, size: tiny, seed: 99 }, licence: apache-2.0 }
"#,
        &["--listen", "127.0.0.1:0"],
    );
    let ready = s
        .raw_get_status("/ready")
        .expect("GET /ready right after listening");
    let health = s
        .raw_get_status("/health")
        .expect("GET /health right after listening");
    assert_eq!(
        health, 200,
        "/health must be 200 as soon as the server listens"
    );
    assert_eq!(
        ready, 503,
        "/ready must be 503 while the demo model is still being generated"
    );
    s.wait_ready(READY_TIMEOUT);
    assert_eq!(s.get("/ready").await.status, StatusCode::OK);
    assert!(
        s.dir().join("cache").is_dir(),
        "the demo model was not generated under cache_dir"
    );
    s.greedy_chat("fresh", "hi", 3).await;
}

#[tokio::test]
async fn tokenize_detokenize_round_trip_multilingual() {
    let s = Server::start_default();
    for model in ["tiny", "tiny-llama", "tiny-long"] {
        for text in [
            MULTILINGUAL,
            "Hello, world!",
            "  leading spaces\nand\ttabs ",
            "emoji 🙂👍🏽 and ñ é ü ß",
            "日本語のテキストです。",
        ] {
            let v = s
                .post(
                    "/tokenize",
                    &json!({"model": model, "prompt": text, "add_special_tokens": false}),
                )
                .await
                .ok();
            let toks = ids(&v["tokens"]);
            assert_eq!(
                v["count"],
                toks.len(),
                "{model}: count != tokens.len(): {v}"
            );
            assert!(!toks.is_empty());
            assert!(
                toks.iter().all(|&t| t < 2048),
                "{model}: token id outside the 2048 vocabulary: {v}"
            );
            let d = s
                .post("/detokenize", &json!({"model": model, "tokens": toks}))
                .await
                .ok();
            assert_eq!(d["prompt"], text, "{model}: detokenize(tokenize(x)) != x");
        }
    }
}

#[tokio::test]
async fn tokenize_reports_max_model_len() {
    let s = Server::start_default();
    for (model, len) in [("tiny", 256), ("tiny-llama", 256), ("tiny-long", 2048)] {
        let v = s
            .post("/tokenize", &json!({"model": model, "prompt": "x"}))
            .await
            .ok();
        assert_eq!(v["max_model_len"], len, "{model}: {v}");
    }
}

#[tokio::test]
async fn tokenize_messages_applies_the_chat_template() {
    let s = Server::start_default();
    let messages = json!([{"role": "user", "content": "Habari"}]);
    let with = s
        .post(
            "/tokenize",
            &json!({"model": "tiny", "messages": messages, "add_generation_prompt": true}),
        )
        .await
        .ok();
    let without = s
        .post(
            "/tokenize",
            &json!({"model": "tiny", "messages": messages, "add_generation_prompt": false}),
        )
        .await
        .ok();
    let w = ids(&with["tokens"]);
    let wo = ids(&without["tokens"]);
    assert!(
        w.len() > wo.len(),
        "the generation prompt adds tokens: {w:?} vs {wo:?}"
    );
    assert_eq!(&w[..wo.len()], &wo[..], "the generation prompt is appended");
    let plain = s.tokenize("tiny", "Habari", false).await;
    assert!(
        w.len() > plain.len() + 4,
        "the ChatML template (with its default system prompt) is applied: {w:?}"
    );
    // ChatML: the rendered prompt holds the default system prompt and ends with the
    // assistant header.
    let text = s
        .post("/detokenize", &json!({"model": "tiny", "tokens": w}))
        .await
        .ok();
    let text = text["prompt"].as_str().unwrap();
    assert!(text.contains("Habari"), "{text:?}");
    assert!(
        text.contains("You are Rosetta Demo"),
        "default system prompt missing: {text:?}"
    );
    assert!(
        text.trim_end().ends_with("assistant"),
        "generation prompt missing at the end: {text:?}"
    );
}

#[tokio::test]
async fn tokenize_add_special_tokens_defaults_to_true() {
    let s = Server::start_default();
    let default = s
        .post("/tokenize", &json!({"model": "tiny-llama", "prompt": "Hi"}))
        .await
        .ok();
    let with = s.tokenize("tiny-llama", "Hi", true).await;
    assert_eq!(ids(&default["tokens"]), with);
}

#[tokio::test]
async fn model_ids_with_slash_and_colon_work_everywhere() {
    // Config validation allows `- _ . : /` in ids (Hugging Face style `org/name`, tags `:v1`);
    // every endpoint that takes a model id must accept them.
    let s = Server::start(
        r#"
auth: { allow_unauthenticated: true, anonymous_tenant: local }
tenants: [{ id: local, accepted_licences: [llama3.1] }]
models:
  - { id: "rosetta/tiny-qwen2:v1", demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0 }
"#,
    );
    let id = "rosetta/tiny-qwen2:v1";
    let list = s.get("/v1/models").await.ok();
    assert_eq!(list["data"][0]["id"], id, "{list}");
    let v = s
        .chat(
            json!({"model": id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
        )
        .await;
    assert_eq!(v["model"], id);
    s.post("/tokenize", &json!({"model": id, "prompt": "hi"}))
        .await
        .ok();
    let r = s.get(&format!("/v1/models/{id}")).await;
    assert_eq!(r.status, StatusCode::OK, "GET /v1/models/{id}: {}", r.text);
    assert_eq!(r.json["id"], id, "{}", r.text);
    assert_eq!(r.json["object"], "model");
    // Clients that percent-encode the slash get the same.
    let r = s.get("/v1/models/rosetta%2Ftiny-qwen2:v1").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "GET /v1/models/rosetta%2Ftiny-qwen2:v1: {}",
        r.text
    );
    assert_eq!(r.json["id"], id, "{}", r.text);
    s.get("/v1/models/rosetta/nope")
        .await
        .assert_error(404, None, Some("model_not_found"));
}
