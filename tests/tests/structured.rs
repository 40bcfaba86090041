//! Structured outputs, enforced by constrained decoding (llguidance): with random weights,
//! for 20 seeds and several schemas (nested objects, arrays, enums, `anyOf`, number ranges,
//! required and optional fields), every output parses and validates against its schema
//! (the `jsonschema` crate); streamed equals whole under greedy decoding; vLLM's
//! `guided_*` and `structured_outputs` forms; what cannot be compiled is a 400.

use rosetta_tests::*;

const CONFIG: &str = r#"
server: { listen: 127.0.0.1:0 }
cache_dir: "{cache}"
auth: { allow_unauthenticated: true }
models:
  - { id: chatml, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 1024, engine: { kv_cache_bytes: 16777216 } }
  - { id: llama3, demo: { arch: llama, size: tiny, seed: 1 }, licence: llama3.1, max_context: 1024, engine: { kv_cache_bytes: 16777216 } }
  - { id: mistral, demo: { arch: mistral, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 1024, engine: { kv_cache_bytes: 16777216 } }
  - { id: qwen3, demo: { arch: qwen3, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 1024, engine: { kv_cache_bytes: 16777216 } }
tenants: [{ id: anonymous, accepted_licences: [llama3.1] }]
"#;

/// Bounded schemas: every string, array and number has a limit, so that any output the
/// grammar allows ends well within max_tokens.
fn schemas() -> Vec<Value> {
    vec![
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 12},
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "address": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "maxLength": 10},
                        "zip": {"type": "string", "pattern": "^[0-9]{5}$"}
                    },
                    "required": ["city"],
                    "additionalProperties": false
                }
            },
            "required": ["name", "age", "address"],
            "additionalProperties": false
        }),
        json!({
            "type": "array",
            "items": {"enum": ["sw", "yo", "ha", "am"]},
            "minItems": 1,
            "maxItems": 4
        }),
        json!({
            "type": "object",
            "properties": {
                "answer": {"anyOf": [
                    {"type": "integer", "minimum": -50, "maximum": 50},
                    {"type": "string", "enum": ["unknown", "many"]}
                ]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1}
            },
            "required": ["answer"],
            "additionalProperties": false
        }),
        json!({
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "maxItems": 3,
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
                            "qty": {"type": "integer", "minimum": 1, "maximum": 9},
                            "gift": {"type": "boolean"}
                        },
                        "required": ["sku", "qty"],
                        "additionalProperties": false
                    }
                },
                "express": {"type": "boolean"}
            },
            "required": ["items", "express"],
            "additionalProperties": false
        }),
    ]
}

fn chat(model: &str, schema: &Value, seed: u64) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Reply in JSON."}],
        "max_tokens": 300,
        "seed": seed,
        "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": true}}
    })
}

#[tokio::test]
async fn every_output_validates_against_its_schema_for_every_seed() {
    let s = Server::start(CONFIG);
    let mut checked = 0;
    // One model of each template family.
    for model in ["chatml", "llama3", "mistral", "qwen3"] {
        for schema in schemas() {
            let validator = jsonschema::validator_for(&schema).unwrap();
            for seed in 0..20 {
                let r = s.chat(chat(model, &schema, seed)).await;
                let choice = &r["choices"][0];
                let text = choice["message"]["content"].as_str().unwrap();
                assert_eq!(
                    choice["finish_reason"], "stop",
                    "{model} seed {seed}: {text}"
                );
                let value: Value = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("{model} seed {seed}: not JSON ({e}): {text}"));
                let errors: Vec<String> = validator
                    .iter_errors(&value)
                    .map(|e| e.to_string())
                    .collect();
                assert!(errors.is_empty(), "{model} seed {seed}: {text}: {errors:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 4 * 4 * 20);
}

#[tokio::test]
async fn streamed_equals_whole_and_json_object_and_vllm_forms_hold() {
    let s = Server::start(CONFIG);
    let schema = &schemas()[0];
    // Greedy: the stream's deltas add up to the whole answer.
    let mut body = chat("chatml", schema, 0);
    body["temperature"] = json!(0);
    let whole = s.chat(body.clone()).await["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    body["stream"] = json!(true);
    let events = s.stream("/v1/chat/completions", body).await;
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, whole);
    serde_json::from_str::<Value>(&whole).unwrap();

    // json_object: any JSON object.
    for seed in 0..5 {
        let r = s
            .chat(json!({
                "model": "chatml", "seed": seed, "max_tokens": 300,
                "messages": [{"role": "user", "content": "JSON please"}],
                "response_format": {"type": "json_object"}
            }))
            .await;
        let text = r["choices"][0]["message"]["content"].as_str().unwrap();
        if r["choices"][0]["finish_reason"] == "stop" {
            let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(v.is_object(), "{text}");
        }
    }

    // vLLM's forms, on the completions endpoint too.
    let complete = |extra: Value| {
        let mut b = json!({"model": "chatml", "prompt": "Answer:", "max_tokens": 40, "seed": 3});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (extra, check) in [
        (
            json!({"guided_choice": ["oui", "non", "peut-être"]}),
            "choice",
        ),
        (
            json!({"structured_outputs": {"choice": ["ndiyo", "hapana"]}}),
            "so-choice",
        ),
        (json!({"guided_regex": "[0-9]{3}-[a-z]{2}"}), "regex"),
        (
            json!({"guided_json": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false}}),
            "json",
        ),
    ] {
        let r = s.complete(complete(extra)).await;
        let text = r["choices"][0]["text"].as_str().unwrap();
        assert_eq!(r["choices"][0]["finish_reason"], "stop", "{check}: {text}");
        match check {
            "choice" => assert!(["oui", "non", "peut-être"].contains(&text), "{text}"),
            "so-choice" => assert!(["ndiyo", "hapana"].contains(&text), "{text}"),
            "regex" => {
                let b = text.as_bytes();
                assert!(
                    b.len() == 6
                        && b[..3].iter().all(u8::is_ascii_digit)
                        && b[3] == b'-'
                        && b[4..].iter().all(u8::is_ascii_lowercase),
                    "{text}"
                );
            }
            _ => {
                let v: Value = serde_json::from_str(text).unwrap();
                assert!(v["ok"].is_boolean(), "{text}");
            }
        }
    }

    // A grammar that is complete ends the output even before `min_tokens`.
    let r = s
        .complete(complete(
            json!({"guided_choice": ["ja", "nein"], "min_tokens": 20}),
        ))
        .await;
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert!(["ja", "nein"].contains(&r["choices"][0]["text"].as_str().unwrap()));

    // max_tokens reached inside the JSON: `length`, as OpenAI says.
    let mut short = chat("chatml", schema, 1);
    short["max_tokens"] = json!(3);
    let r = s.chat(short).await;
    assert_eq!(r["choices"][0]["finish_reason"], "length");

    // What the engine cannot compile is a 400 naming it; two constraints at once too.
    let bad = chat(
        "chatml",
        &json!({"type": "string", "pattern": "(?<=a)b"}),
        0,
    );
    let e = s.post("/v1/chat/completions", &bad).await;
    e.assert_error(400, Some("invalid_request_error"), None);
    assert!(e.text.contains("look-around"), "{}", e.text);
    let mut both = chat("chatml", schema, 0);
    both["guided_regex"] = json!("a+");
    s.post("/v1/chat/completions", &both).await.assert_error(
        400,
        Some("invalid_request_error"),
        None,
    );
    let e = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "chatml", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}}),
        )
        .await;
    e.assert_error(400, Some("invalid_request_error"), None);
}
