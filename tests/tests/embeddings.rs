//! POST /v1/embeddings through the real binary: a generated XLM-RoBERTa encoder (the
//! architecture of multilingual-e5 and bge-m3) with mean pooling and normalisation, every
//! input shape, base64, `dimensions`, the context limit, the tenant's policy and token
//! limits, routing by language, and the GenAI metrics.

use rosetta_tests::*;

const CONFIG: &str = r#"
cache_dir: "{cache}"
auth: { allow_unauthenticated: true, anonymous_tenant: local }
models:
  - { id: e5, demo: { arch: xlm-roberta, size: tiny, seed: 1 }, licence: mit, languages: [sw, en] }
  - { id: e5-nc, demo: { arch: xlm-roberta, size: tiny, seed: 2 }, licence: cc-by-nc-4.0 }
  - { id: tiny, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0 }
routes:
  - alias: embed
    rules: [{ languages: [sw], models: [e5] }]
    fallback: [e5-nc]
tenants:
  - { id: local, commercial: false, accepted_licences: [cc-by-nc-4.0] }
  - id: few-tokens
    keys: [{ hash: "TPM_HASH" }]
    limits: { tokens_per_minute: 40 }
"#;

fn start() -> (Server, String) {
    let (config, [tpm]) = with_new_keys(CONFIG, ["TPM_HASH"]);
    (Server::start(&config), tpm)
}

fn embed(input: Value) -> Value {
    json!({"model": "e5", "input": input})
}

fn vectors(v: &Value) -> Vec<Vec<f32>> {
    v["data"]
        .as_array()
        .expect("data")
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["object"], "embedding", "{d}");
            assert_eq!(d["index"], i, "{d}");
            d["embedding"]
                .as_array()
                .expect("float embedding")
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

const SWAHILI: &str = "Habari za asubuhi! Leo tunakwenda sokoni kununua matunda na mboga.";
const ENGLISH: &str = "Good morning! Today we are going to the market to buy fruit.";

#[tokio::test]
async fn embeddings_have_openai_shape_and_every_input_form_agrees() {
    let (s, _) = start();
    let one = s.post("/v1/embeddings", &embed(json!(SWAHILI))).await.ok();
    assert_eq!(one["object"], "list", "{one}");
    assert_eq!(one["model"], "e5");
    let v = vectors(&one);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].len(), 64, "the tiny encoder's hidden size");
    assert!(
        (norm(&v[0]) - 1.0).abs() < 1e-5,
        "normalised: {}",
        norm(&v[0])
    );
    let ids = s.tokenize("e5", SWAHILI, true).await;
    assert_eq!(ids[0], 0, "starts with <s>");
    assert_eq!(*ids.last().unwrap(), 2, "ends with </s>");
    assert_eq!(one["usage"]["prompt_tokens"], ids.len());
    assert_eq!(one["usage"]["total_tokens"], ids.len());

    // A batch keeps its order, and each vector is what the input gives alone.
    let many = s
        .post("/v1/embeddings", &embed(json!([ENGLISH, SWAHILI, ENGLISH])))
        .await
        .ok();
    let m = vectors(&many);
    assert_eq!(m.len(), 3);
    assert_eq!(m[1], v[0], "an input's vector changed with its batch");
    assert_eq!(m[0], m[2]);
    assert_ne!(m[0], m[1]);
    // Token ids, alone and as a list, give the same vectors as the text.
    let by_ids = s.post("/v1/embeddings", &embed(json!(ids))).await.ok();
    assert_eq!(vectors(&by_ids)[0], v[0]);
    let lists = s
        .post("/v1/embeddings", &embed(json!([ids, ids])))
        .await
        .ok();
    assert_eq!(vectors(&lists), vec![v[0].clone(), v[0].clone()]);

    // base64: the same floats, little-endian, as the SDKs decode them.
    let mut body = embed(json!(SWAHILI));
    body["encoding_format"] = json!("base64");
    let b = s.post("/v1/embeddings", &body).await.ok();
    let text = b["data"][0]["embedding"].as_str().expect("a base64 string");
    let bytes = base64_decode(text);
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(floats, v[0]);

    // dimensions: the first values, normalised again (the demo is Matryoshka-trained).
    let mut body = embed(json!(SWAHILI));
    body["dimensions"] = json!(16);
    let short = vectors(&s.post("/v1/embeddings", &body).await.ok())[0].clone();
    assert_eq!(short.len(), 16);
    assert!((norm(&short) - 1.0).abs() < 1e-5);
    let scale = norm(&v[0][..16]);
    for (a, b) in short.iter().zip(&v[0][..16]) {
        assert!((a - b / scale).abs() < 1e-6, "{a} vs {}", b / scale);
    }

    // The model says what it is.
    let model = s.get("/v1/models/e5").await.ok();
    assert_eq!(model["capabilities"]["embeddings"], true, "{model}");
    assert_eq!(model["context_length"], 512);
    assert_eq!(
        model["supported_parameters"],
        json!(["encoding_format", "dimensions"])
    );
}

/// Decodes standard base64 (the test's own few lines, to check the server's bytes).
fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .expect("base64 alphabet") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn bad_embedding_requests_get_clear_errors() {
    let (s, _) = start();
    let param = |r: &Resp| r.json["error"]["param"].as_str().unwrap_or("").to_string();
    for (body, field) in [
        (embed(json!("")), "input"),
        (embed(json!([])), "input"),
        (embed(json!(["a", 1])), "input"),
        (embed(json!([[0, 5, 2], []])), "input"),
        (embed(json!([0, 5, 999_999])), "input"),
        (
            json!({"model": "e5", "input": "a", "encoding_format": "int8"}),
            "encoding_format",
        ),
        (
            json!({"model": "e5", "input": "a", "dimensions": 0}),
            "dimensions",
        ),
        (
            json!({"model": "e5", "input": "a", "dimensions": 65}),
            "dimensions",
        ),
        // A generation model makes no embeddings, and an encoder does not chat.
        (json!({"model": "tiny", "input": "a"}), "model"),
    ] {
        let r = s.post("/v1/embeddings", &body).await;
        r.assert_error(400, Some("invalid_request_error"), None);
        assert_eq!(param(&r), field, "{body}: {}", r.text);
    }
    let r = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "e5", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    r.assert_error(400, Some("invalid_request_error"), None);
    assert_eq!(param(&r), "model", "{}", r.text);
    // Past the encoder's 512 positions: 400 with OpenAI's code, naming the input.
    let long = "habari ".repeat(600);
    let r = s
        .post("/v1/embeddings", &embed(json!(["short", long])))
        .await;
    r.assert_error(
        400,
        Some("invalid_request_error"),
        Some("context_length_exceeded"),
    );
    assert!(r.text.contains("input[1]"), "{}", r.text);
    s.post("/v1/embeddings", &json!({"model": "nope", "input": "a"}))
        .await
        .assert_error(404, None, Some("model_not_found"));
    // The server still answers.
    s.post("/v1/embeddings", &embed(json!("baada"))).await.ok();
}

#[tokio::test]
async fn embeddings_are_routed_licensed_limited_and_measured() {
    let (s, tpm_key) = start();
    // Swahili goes to e5 by the alias's rule; English falls back.
    let r = s
        .post(
            "/v1/embeddings",
            &json!({"model": "embed", "input": SWAHILI}),
        )
        .await;
    assert_eq!(r.header("x-rosetta-model"), Some("e5"));
    assert_eq!(r.header("x-rosetta-language"), Some("sw"));
    r.ok();
    let r = s
        .post(
            "/v1/embeddings",
            &json!({"model": "embed", "input": ENGLISH}),
        )
        .await;
    assert_eq!(r.header("x-rosetta-model"), Some("e5-nc"), "{}", r.text);
    r.ok();

    // A tenant that has not accepted the non-commercial licence is refused.
    s.post_as(
        &tpm_key,
        "/v1/embeddings",
        &json!({"model": "e5-nc", "input": "a"}),
    )
    .await
    .assert_error(403, None, None);
    // Tokens count against the tenant's minute: 40 here.
    let r = s
        .post_as(&tpm_key, "/v1/embeddings", &embed(json!(SWAHILI)))
        .await;
    let used = r.json["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        r.header_u64("x-ratelimit-limit-tokens") == Some(40),
        "{:?}",
        r.header("x-ratelimit-limit-tokens")
    );
    r.ok();
    assert!(used > 10, "{used}");
    let mut refused = false;
    for _ in 0..4 {
        let r = s
            .post_as(&tpm_key, "/v1/embeddings", &embed(json!(SWAHILI)))
            .await;
        if r.status == 429 {
            r.assert_error(429, Some("tokens"), Some("rate_limit_exceeded"));
            refused = true;
            break;
        }
        r.ok();
    }
    assert!(refused, "tokens per minute were not enforced");

    let metrics = s.get("/metrics").await.text;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("gen_ai_client_token_usage_count")
                && l.contains("gen_ai_operation_name=\"embeddings\"")
                && l.contains("gen_ai_token_type=\"input\"")
        })
        .unwrap_or_else(|| panic!("no embeddings token usage in:\n{metrics}"));
    assert!(!line.ends_with(" 0"), "{line}");
}

/// A gateway in front of a `rosetta --engine-only` serving the encoder: the same vectors as
/// from the engine itself, the gateway's model name, its usage; and the same 400 for a bad
/// request whether the encoder is here or remote.
#[tokio::test]
async fn embeddings_through_a_remote_replica_are_the_engines_own() {
    let engine = Server::start_with_args(
        r#"
server: { listen: 127.0.0.1:0 }
cache_dir: "{cache}"
auth: { allow_unauthenticated: true }
models:
  - { id: e5, demo: { arch: xlm-roberta, size: tiny, seed: 1 }, licence: mit }
"#,
        &["--listen", "127.0.0.1:0", "--engine-only"],
    );
    let gateway = Server::start(&format!(
        "cache_dir: \"{{cache}}\"\nauth: {{ allow_unauthenticated: true }}\nmodels:\n  \
         - {{ id: far-e5, licence: mit, remote: [{{ url: \"{}\", model: e5 }}] }}\n  \
         - {{ id: e5, demo: {{ arch: xlm-roberta, size: tiny, seed: 1 }}, licence: mit }}\n",
        engine.base_url()
    ));
    let body = |model: &str| json!({"model": model, "input": [SWAHILI, ENGLISH], "dimensions": 32});
    let direct = engine.post("/v1/embeddings", &body("e5")).await.ok();
    let r = gateway.post("/v1/embeddings", &body("far-e5")).await;
    assert_ne!(r.header("x-rosetta-replica"), Some("local"));
    let far = r.ok();
    assert_eq!(far["model"], "far-e5");
    assert_eq!(vectors(&far), vectors(&direct));
    assert_eq!(vectors(&far)[0].len(), 32);
    assert_eq!(far["usage"], direct["usage"]);
    // Validation happens at the gateway, the same for both replicas.
    let bad = |model: &str| json!({"model": model, "input": [], "encoding_format": "int8"});
    let here = gateway.post("/v1/embeddings", &bad("e5")).await;
    let there = gateway.post("/v1/embeddings", &bad("far-e5")).await;
    here.assert_error(400, Some("invalid_request_error"), None);
    assert_eq!(here.text, there.text);
}
