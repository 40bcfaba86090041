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

/// The project's converter writes a Llama folder as GGUF (`rosetta model gguf`); mistral.rs
/// serves the f32 file with the native engine's greedy tokens, and the Q8_0 file answers.
/// SmolLM2-135M's shape: the tiny Llama has Llama 3.1 rope scaling, which GGUF's llama does
/// not carry.
#[tokio::test]
async fn gguf_written_by_the_converter_answers_as_the_safetensors_do() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("small");
    let long = std::time::Duration::from_secs(120);
    let run = |args: &[&str]| {
        let out = run_cli(args, None, long);
        assert!(out.success(), "rosetta {args:?}: {out:?}");
    };
    let hf_s = hf.to_str().unwrap();
    run(&[
        "model", "generate", hf_s, "--arch", "llama", "--size", "small", "--seed", "0",
    ]);
    let f32_dir = tmp.path().join("gguf-f32");
    let q8_dir = tmp.path().join("gguf-q8");
    run(&[
        "model",
        "gguf",
        hf_s,
        f32_dir.to_str().unwrap(),
        "--type",
        "f32",
    ]);
    run(&[
        "model",
        "gguf",
        hf_s,
        q8_dir.to_str().unwrap(),
        "--type",
        "q8_0",
    ]);
    assert!(f32_dir.join("model-f32.gguf").is_file());
    let s = Server::start(&format!(
        r#"
auth: {{ allow_unauthenticated: true }}
models:
  - {{ id: native, path: "{hf}", licence: apache-2.0, max_context: 1024 }}
  - {{ id: gguf, path: "{f32}", gguf: model-f32.gguf, backend: mistralrs, licence: apache-2.0, max_context: 1024 }}
  - {{ id: q8, path: "{q8}", gguf: model-q8_0.gguf, backend: mistralrs, licence: apache-2.0, max_context: 1024 }}
"#,
        hf = hf.display(),
        f32 = f32_dir.display(),
        q8 = q8_dir.display(),
    ));
    let complete = |model: &str| {
        json!({"model": model, "prompt": "Habari ya asubuhi, rafiki", "max_tokens": 12,
               "temperature": 0, "ignore_eos": true})
    };
    let native = s.complete(complete("native")).await;
    let gguf = s.complete(complete("gguf")).await;
    // mistral.rs's GGUF path drops the text's leading space when it detokenizes; the
    // tokens are the same (and so is every character after it).
    assert_eq!(text(&gguf).trim_start(), text(&native).trim_start());
    assert_eq!(gguf["usage"], native["usage"]);
    let q8 = s.complete(complete("q8")).await;
    assert_eq!(q8["choices"][0]["finish_reason"], "length");
    assert_eq!(q8["usage"]["completion_tokens"], 12);
}

/// The converter also writes Qwen2 (q/k/v biases, rotary halves), Qwen3 (q/k norms, a head
/// wider than hidden / heads) and Mixtral (router and experts, under `llama`); mistral.rs serves
/// each f32 file with the native engine's greedy tokens on the same weights. What GGUF or
/// mistral.rs cannot carry is refused by name: a sliding window (the tiny Mistral's), Cohere's
/// block.
#[tokio::test]
async fn gguf_of_qwen2_qwen3_and_mixtral_answers_as_the_native_engine_does() {
    let tmp = tempfile::tempdir().unwrap();
    let long = std::time::Duration::from_secs(120);
    let mut models = String::new();
    for arch in ["qwen2", "qwen3", "mixtral"] {
        let hf = tmp.path().join(arch);
        let out = tmp.path().join(format!("{arch}-gguf"));
        let (hf_s, out_s) = (hf.to_str().unwrap(), out.to_str().unwrap());
        let generate = [
            "model", "generate", hf_s, "--arch", arch, "--size", "tiny", "--seed", "5",
        ];
        assert!(run_cli(&generate, None, long).success(), "generate {arch}");
        let convert = run_cli(&["model", "gguf", hf_s, out_s, "--type", "f32"], None, long);
        assert!(convert.success(), "{arch}: {convert:?}");
        models += &format!(
            "  - {{ id: {arch}, path: \"{hf_s}\", licence: apache-2.0, max_context: 512 }}\n  \
             - {{ id: {arch}-gguf, path: \"{out_s}\", gguf: model-f32.gguf, backend: mistralrs, \
             licence: apache-2.0, max_context: 512 }}\n"
        );
    }
    for (arch, missing) in [("mistral", "sliding windows"), ("cohere", "Cohere")] {
        let hf = tmp.path().join(arch);
        let hf_s = hf.to_str().unwrap();
        let generate = [
            "model", "generate", hf_s, "--arch", arch, "--size", "tiny", "--seed", "5",
        ];
        assert!(run_cli(&generate, None, long).success(), "generate {arch}");
        let out = tmp.path().join(format!("{arch}-gguf"));
        let refused = run_cli(&["model", "gguf", hf_s, out.to_str().unwrap()], None, long);
        assert!(!refused.success(), "{arch} was converted");
        assert!(refused.stderr.contains(missing), "{arch}: {refused:?}");
    }
    let s = Server::start(&format!(
        "auth: {{ allow_unauthenticated: true }}\nmodels:\n{models}"
    ));
    for arch in ["qwen2", "qwen3", "mixtral"] {
        let complete = |model: &str| {
            json!({"model": model, "prompt": "Habari ya asubuhi, rafiki", "max_tokens": 12,
                   "temperature": 0, "ignore_eos": true})
        };
        let native = s.complete(complete(arch)).await;
        let gguf = s.complete(complete(&format!("{arch}-gguf"))).await;
        // mistral.rs's GGUF path drops the text's leading space when it detokenizes.
        assert_eq!(
            text(&gguf).trim_start(),
            text(&native).trim_start(),
            "{arch}"
        );
        assert_eq!(gguf["usage"], native["usage"], "{arch}");
    }
}

/// DeepSeek-V3 (latent attention, routed and shared experts), which only the mistral.rs
/// backend serves, from a generated folder: chat, a stream and a completion through the real
/// binary, deterministic when greedy. (That its tokens are transformers' is proven against the
/// independent reference in backends/mistralrs/tests/deepseek.rs.) The native engine refuses
/// it, naming the backend that serves it.
#[tokio::test]
async fn deepseek_v3_is_served_by_the_mistralrs_backend() {
    let s = Server::start(
        r#"
auth: { allow_unauthenticated: true }
models:
  - { id: deepseek, demo: { arch: deepseek, size: tiny, seed: 3 }, licence: mit, max_context: 512, backend: mistralrs }
"#,
    );
    let a = s.greedy_chat("deepseek", PROMPT, 12).await;
    let b = s.greedy_chat("deepseek", PROMPT, 12).await;
    assert_eq!(content(&a), content(&b), "not deterministic");
    assert_eq!(a["model"], "deepseek");
    assert_eq!(a["usage"]["completion_tokens"], 12, "{a}");
    let body = json!({"model": "deepseek", "messages": [{"role": "user", "content": PROMPT}],
                      "max_tokens": 12, "temperature": 0, "ignore_eos": true, "stream": true});
    let chunks = s.stream("/v1/chat/completions", body).await;
    assert_eq!(stream_text(&chunks, 0), content(&a));
    assert_eq!(stream_finish_reason(&chunks, 0), "length");
    let done = s
        .complete(
            json!({"model": "deepseek", "prompt": PROMPT, "max_tokens": 6,
                          "temperature": 0, "ignore_eos": true}),
        )
        .await;
    assert_eq!(done["usage"]["completion_tokens"], 6, "{done}");
    assert!(!text(&done).is_empty(), "{done}");

    let tmp = tempfile::tempdir().unwrap();
    let native = run_cli(
        &[
            "model",
            "generate",
            tmp.path().join("d").to_str().unwrap(),
            "--arch",
            "deepseek",
            "--size",
            "tiny",
        ],
        None,
        std::time::Duration::from_secs(60),
    );
    assert!(native.success(), "{native:?}");
    let refused = serve_once(
        &tmp.path().join("native.yaml"),
        &format!(
            "auth: {{ allow_unauthenticated: true }}\nmodels:\n  - {{ id: d, path: \"{}\", licence: mit }}\n",
            tmp.path().join("d").display()
        ),
        std::time::Duration::from_secs(60),
    );
    assert!(
        !refused.success(),
        "the native engine loaded DeepSeek: {refused:?}"
    );
    let message = &refused.stderr;
    assert!(message.contains("backend: mistralrs"), "{message}");
}

/// A panic inside mistral.rs (a logits processor the fault-injection build of scripts/test.sh
/// makes panic for prompts holding token 41) fails the requests it held with an OpenAI error,
/// while the process and the native replica go on; later mistral.rs requests are answered or
/// clearly refused.
#[tokio::test]
async fn a_panic_inside_mistralrs_fails_its_request_not_the_process() {
    let s = Server::start_with_env(CONFIG, &[("ROSETTA_FAULT_TOKEN", "41")]);
    let faulty = json!({"model": "mrs", "prompt": [5, 41, 7], "max_tokens": 4});
    let r = s.post("/v1/completions", &faulty).await;
    assert!(r.status.is_server_error(), "{} {}", r.status, r.text);
    let body: Value = serde_json::from_str(&r.text).unwrap();
    assert!(body["error"]["message"].is_string(), "{}", r.text);

    let fine = |model: &str| {
        json!({"model": model, "prompt": [5, 6, 7], "max_tokens": 4, "temperature": 0,
               "ignore_eos": true})
    };
    let native = s.complete(fine("native")).await;
    assert_eq!(native["usage"]["completion_tokens"], 4);
    // Afterwards the replica answers again: at once when mistral.rs's own restart of its
    // engine thread held, or once the backend has loaded the model afresh. Meanwhile it is
    // refused at once as unavailable (a 503 in OpenAI's shape), never a hang.
    serves_again(&s, &fine("mrs")).await;
    let native = s.complete(fine("native")).await;
    assert_eq!(native["usage"]["completion_tokens"], 4);
    // A stream that meets the panic ends with an error (before its first byte, as a 5xx
    // with an OpenAI error body; after it, as an error event), not a hang.
    let mut streamed = faulty.clone();
    streamed["stream"] = json!(true);
    let r = s.post("/v1/completions", &streamed).await;
    if r.status.is_success() {
        let events = sse_json(&r.text);
        assert!(
            events.iter().any(|c| c.get("error").is_some()),
            "{}",
            r.text
        );
    } else {
        assert!(r.status.is_server_error(), "{} {}", r.status, r.text);
    }
    serves_again(&s, &fine("mrs")).await;
}

/// Asks `s` for `request` on its mistral.rs replica until it answers (4 tokens), within two
/// minutes; meanwhile each refusal must be an immediate 503 in OpenAI's shape.
async fn serves_again(s: &Server, request: &Value) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let again = s.post("/v1/completions", request).await;
        if again.status.is_success() {
            let v: Value = serde_json::from_str(&again.text).unwrap();
            assert_eq!(v["usage"]["completion_tokens"], 4, "{}", again.text);
            return;
        }
        again.assert_error(503, Some("server_error"), None);
        assert!(
            std::time::Instant::now() < deadline,
            "the mistral.rs replica did not come back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The native engine's CPU cache settings are refused for a mistral.rs model, by name, at
/// start; a native model with its cache committed at load serves as usual.
#[tokio::test]
async fn cpu_cache_settings_are_refused_for_mistralrs_and_prefault_serves_natively() {
    let tmp = tempfile::tempdir().unwrap();
    for setting in ["kv_cache_prefault: true", "kv_cache_dtype: bf16"] {
        let refused = serve_once(
            &tmp.path().join("mrs.yaml"),
            &format!(
                "cache_dir: \"{}\"\nauth: {{ allow_unauthenticated: true }}\nmodels:\n  - {{ id: m, \
                 demo: {{ arch: llama, size: tiny, seed: 4 }}, licence: apache-2.0, backend: \
                 mistralrs, engine: {{ {setting} }} }}\n",
                tmp.path().join("cache").display()
            ),
            std::time::Duration::from_secs(120),
        );
        assert!(!refused.success(), "{setting} was accepted: {refused:?}");
        let name = setting.split(':').next().unwrap();
        assert!(refused.stderr.contains(name), "{setting}: {refused:?}");
    }
    let s = Server::start(
        r#"
auth: { allow_unauthenticated: true }
models:
  - { id: native, demo: { arch: llama, size: tiny, seed: 4 }, licence: apache-2.0, max_context: 512, engine: { kv_cache_prefault: true, kv_cache_bytes: 67108864 } }
"#,
    );
    let v = s
        .complete(json!({"model": "native", "prompt": PROMPT, "max_tokens": 4,
                         "temperature": 0, "ignore_eos": true}))
        .await;
    assert_eq!(v["usage"]["completion_tokens"], 4, "{v}");
}

/// Writes `yaml` to `config` and runs `rosetta serve` on it, for a config it must refuse at
/// start (a command that does not end within `timeout` fails the test).
fn serve_once(config: &std::path::Path, yaml: &str, timeout: std::time::Duration) -> CliOutput {
    std::fs::write(config, yaml).unwrap();
    run_cli(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        None,
        timeout,
    )
}
