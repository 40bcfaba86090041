//! The `rosetta` command line: config check, config schema, model generate, serve.

use std::path::Path;
use std::time::Duration;

use rosetta_tests::*;

const T: Duration = Duration::from_secs(120);

const VALID: &str = r#"
server: { listen: 127.0.0.1:0, max_body_bytes: 65536 }
cache_dir: ./cache
auth: { allow_unauthenticated: true, anonymous_tenant: local }
tenants: [{ id: local, accepted_licences: [llama3.1] }]
models:
  - id: tiny
    demo: { arch: qwen2, size: tiny, seed: 1 }
    licence: apache-2.0
    max_context: 256
    engine: { kv_block_size: 16, kv_cache_bytes: 16777216, max_num_seqs: 64 }
"#;

/// `ok`, possibly followed by details (`ok: FILE (1 model(s))`).
fn says_ok(stdout: &str) -> bool {
    let t = stdout.trim();
    t == "ok" || t.starts_with("ok:") || t.starts_with("ok ")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn config_check_accepts_a_valid_config() {
    let d = tempfile::tempdir().unwrap();
    let f = write(d.path(), "ok.yaml", VALID);
    let out = run_cli(&["config", "check", &f], None, T);
    assert!(
        out.success(),
        "config check on a valid config failed: {out:?}"
    );
    assert!(says_ok(&out.stdout), "config check must print ok: {out:?}");
}

#[test]
fn config_check_accepts_the_shipped_examples() {
    let examples = tests_dir()
        .parent()
        .unwrap()
        .join("config")
        .join("examples");
    let mut n = 0;
    for e in std::fs::read_dir(&examples).unwrap() {
        let p = e.unwrap().path();
        // Examples that point at real weights (`path:`) only validate where those exist.
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let needs_weights = text
            .lines()
            .any(|l| l.trim_start().trim_start_matches("- ").starts_with("path:"));
        if p.extension().is_some_and(|x| x == "yaml" || x == "yml") && !needs_weights {
            let out = run_cli(&["config", "check", &p.display().to_string()], None, T);
            assert!(out.success(), "{} is rejected: {out:?}", p.display());
            assert!(says_ok(&out.stdout), "{out:?}");
            n += 1;
        }
    }
    assert!(n > 0, "no examples found in {}", examples.display());
}

#[test]
fn config_check_rejects_invalid_configs_naming_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown-key.yaml",
            VALID.replace(
                "licence: apache-2.0",
                "licence: apache-2.0\n    colour: blue",
            ),
            "colour",
        ),
        (
            "bad-block.yaml",
            VALID.replace("kv_block_size: 16", "kv_block_size: 3"),
            "kv_block_size",
        ),
        (
            "wrong-type.yaml",
            VALID.replace("max_context: 256", "max_context: lots"),
            "max_context",
        ),
        ("no-models.yaml", "models: []\n".to_string(), "models"),
        (
            "both-sources.yaml",
            VALID.replace(
                "licence: apache-2.0",
                "licence: apache-2.0\n    path: /tmp/x",
            ),
            "path",
        ),
        (
            "bad-arch.yaml",
            VALID.replace("arch: qwen2", "arch: gpt5"),
            "arch",
        ),
        (
            "duplicate-id.yaml",
            format!(
                "{VALID}  - {{ id: tiny, demo: {{ arch: llama, size: tiny }}, licence: mit }}\n"
            ),
            "id",
        ),
        (
            "bad-listen.yaml",
            VALID.replace("listen: 127.0.0.1:0", "listen: not-an-address"),
            "listen",
        ),
        ("not-yaml.yaml", "models: [ {".to_string(), ""),
    ];
    let mut failures = Vec::new();
    for (name, text, key) in &cases {
        let f = write(d.path(), name, text);
        let out = run_cli(&["config", "check", &f], None, T);
        let all = format!("{}{}", out.stdout, out.stderr);
        if out.success() {
            failures.push(format!(
                "{name}: exit 0 for an invalid config; output {all:?}"
            ));
        } else if !all.contains(name) {
            failures.push(format!("{name}: message does not name the file: {all:?}"));
        } else if !all.contains(key) {
            failures.push(format!(
                "{name}: message does not name the key `{key}`: {all:?}"
            ));
        } else if says_ok(&out.stdout) {
            failures.push(format!("{name}: prints ok: {all:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn config_check_on_a_missing_file_fails_naming_it() {
    let out = run_cli(
        &["config", "check", "/nonexistent/rosetta-missing.yaml"],
        None,
        T,
    );
    assert!(!out.success(), "{out:?}");
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("rosetta-missing.yaml"),
        "{out:?}"
    );
}

#[test]
fn config_schema_is_a_json_schema_for_the_config() {
    let out = run_cli(&["config", "schema"], None, T);
    assert!(out.success(), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("schema is not JSON ({e}): {}", out.stdout));
    assert!(v.is_object(), "{v}");
    assert!(v.get("$schema").is_some(), "no $schema key");
    let props = &v["properties"];
    for key in ["server", "models", "cache_dir"] {
        assert!(
            props.get(key).is_some(),
            "schema has no property {key}: {props}"
        );
    }
    assert!(
        v["required"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == "models")),
        "models must be required"
    );
}

fn generate(dir: &Path, seed: &str) -> CliOutput {
    run_cli(
        &[
            "model",
            "generate",
            &dir.display().to_string(),
            "--arch",
            "qwen2",
            "--size",
            "tiny",
            "--seed",
            seed,
        ],
        None,
        T,
    )
}

const MODEL_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "model.safetensors",
];

#[test]
fn model_generate_writes_a_hf_folder_deterministically() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a");
    let b = d.path().join("b");
    let c = d.path().join("c");
    for (dir, seed) in [(&a, "1"), (&b, "1"), (&c, "2")] {
        let out = generate(dir, seed);
        assert!(
            out.success(),
            "model generate {} failed: {out:?}",
            dir.display()
        );
    }
    for f in MODEL_FILES {
        let pa = a.join(f);
        assert!(pa.is_file(), "{f} not written");
        let ba = std::fs::read(&pa).unwrap();
        assert!(!ba.is_empty(), "{f} is empty");
        assert!(
            ba == std::fs::read(b.join(f)).unwrap(),
            "{f} differs between two runs with seed 1"
        );
        if f.ends_with(".json") {
            serde_json::from_slice::<Value>(&ba).unwrap_or_else(|e| panic!("{f} is not JSON: {e}"));
        }
    }
    assert!(
        std::fs::read(a.join("model.safetensors")).unwrap()
            != std::fs::read(c.join("model.safetensors")).unwrap(),
        "seeds 1 and 2 give the same weights"
    );
    let config: Value =
        serde_json::from_slice(&std::fs::read(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "qwen2");
    assert_eq!(config["vocab_size"], 2048);
    let tc: Value =
        serde_json::from_slice(&std::fs::read(a.join("tokenizer_config.json")).unwrap()).unwrap();
    assert!(
        tc["chat_template"].is_string(),
        "tokenizer_config.json has no chat_template"
    );
    // No leftover temporary folders next to the model.
    let names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec!["a", "b", "c"],
        "unexpected files next to the generated models"
    );
}

#[tokio::test]
async fn serve_a_generated_path_model_the_same_as_the_demo() {
    // A `path:` model, given relative to the config file's folder, must serve the same
    // weights as the `demo:` model with the same arch, size and seed.
    let models = tempfile::tempdir().unwrap();
    let out = generate(&models.path().join("qwen2-tiny-1"), "1");
    assert!(out.success(), "{out:?}");
    // Copy the model next to where the config will be written: <config dir>/models/qwen2-tiny-1.
    let yaml = r#"
auth: { allow_unauthenticated: true, anonymous_tenant: local }
tenants: [{ id: local, accepted_licences: [llama3.1] }]
models:
  - id: from-path
    path: models/qwen2-tiny-1
    licence: apache-2.0
  - id: from-demo
    demo: { arch: qwen2, size: tiny, seed: 1 }
    licence: apache-2.0
"#;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("models").join("qwen2-tiny-1");
    std::fs::create_dir_all(&target).unwrap();
    for f in MODEL_FILES {
        std::fs::copy(models.path().join("qwen2-tiny-1").join(f), target.join(f)).unwrap();
    }
    // Serve from a different working directory so that only the config's folder can resolve it.
    let cwd = tempfile::tempdir().unwrap();
    let s = Server::start_in(dir, yaml, cwd.path());
    let m = s.get("/v1/models").await.ok();
    assert_eq!(m["data"].as_array().unwrap().len(), 2, "{m}");
    for prompt in [MULTILINGUAL, "Hello"] {
        let a = s.greedy_chat("from-path", prompt, 16).await;
        let b = s.greedy_chat("from-demo", prompt, 16).await;
        assert_eq!(
            content(&a),
            content(&b),
            "path model and demo model (same seed) answer differently"
        );
        assert_eq!(a["usage"], b["usage"]);
    }
}

#[tokio::test]
async fn serve_uses_the_config_listen_address_without_listen_flag() {
    let s = Server::start_with_args(
        r#"
server: { listen: "127.0.0.1:0" }
auth: { allow_unauthenticated: true, anonymous_tenant: local }
tenants: [{ id: local, accepted_licences: [llama3.1] }]
models:
  - { id: tiny, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0 }
"#,
        &[],
    );
    assert_eq!(s.get("/health").await.status, StatusCode::OK);
}

#[test]
fn serve_with_an_invalid_config_exits_non_zero() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "bad.yaml",
        &VALID.replace("kv_block_size: 16", "kv_block_size: 3"),
    );
    let out = run_cli(
        &["serve", "--config", &f, "--listen", "127.0.0.1:0"],
        None,
        Duration::from_secs(30),
    );
    assert!(!out.success(), "serve accepted an invalid config: {out:?}");
    assert!(!out.stdout.contains("listening on"), "{out:?}");
    assert!(
        out.stderr.contains("kv_block_size"),
        "the error names the key: {out:?}"
    );
}

#[test]
fn serve_with_a_missing_model_path_exits_non_zero() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "missing.yaml",
        "auth: { allow_unauthenticated: true }\nmodels:\n  - { id: m, path: ./does-not-exist, licence: mit }\n",
    );
    let out = run_cli(
        &["serve", "--config", &f, "--listen", "127.0.0.1:0"],
        None,
        Duration::from_secs(30),
    );
    // Either it refuses to start, or it starts and never becomes ready; it must not hang
    // forever with a half-loaded model: here we only accept a clean exit.
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("does-not-exist"),
        "the error names the path: {out:?}"
    );
}

/// The test suite runs the default (CPU-only) build: a model placed on a GPU is refused at
/// start with the way to get the CUDA path, not served on the CPU behind the user's back.
#[test]
fn a_cuda_device_without_the_cuda_build_exits_with_the_fix() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "gpu.yaml",
        &VALID.replace(
            "max_num_seqs: 64 }",
            "max_num_seqs: 64, device: \"cuda:1\" }",
        ),
    );
    let out = run_cli(
        &["serve", "--config", &f, "--listen", "127.0.0.1:0"],
        None,
        Duration::from_secs(60),
    );
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("engine.device: cuda:1")
            && out.stderr.contains("cargo build --release --features cuda"),
        "{out:?}"
    );
}

#[test]
fn serve_with_an_unknown_cpu_isa_cap_exits_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let f = write(d.path(), "ok.yaml", VALID);
    let out = run_with_timeout(
        rosetta_cmd()
            .args(["serve", "--config", &f, "--listen", "127.0.0.1:0"])
            .env("ROSETTA_MAX_CPU_ISA", "sse4"),
        Duration::from_secs(30),
    );
    assert!(!out.success(), "{out:?}");
    assert!(!out.stdout.contains("listening on"), "{out:?}");
    assert!(
        out.stderr.contains("ROSETTA_MAX_CPU_ISA=\"sse4\"")
            && out.stderr.contains("avx512, avx2 or portable"),
        "the error names the variable and the choices: {out:?}"
    );
}

/// Every token's chosen and top-5 log-probabilities, in order.
fn logprobs(reply: &Value) -> Vec<f64> {
    let tokens = reply["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no logprobs: {reply}"));
    tokens
        .iter()
        .flat_map(|t| {
            let top = t["top_logprobs"].as_array().cloned().unwrap_or_default();
            std::iter::once(t["logprob"].clone())
                .chain(top.into_iter().map(|e| e["logprob"].clone()))
        })
        .map(|l| l.as_f64().unwrap_or_else(|| panic!("logprob {l}")))
        .collect()
}

/// Capping the kernels' instruction set (`ROSETTA_MAX_CPU_ISA`) changes no answer in any
/// weight format: the AVX2 kernels compute the AVX-512 kernels' bits, and so do the portable
/// integer ones (int8, w8a8, w4a8) and w16a16's; the portable f32 and bf16 products round
/// after each multiply (no FMA), so they agree to rounding. (Where the CPU lacks AVX-512 or
/// AVX2, a cap above what it has changes nothing, and the servers agree trivially.)
#[tokio::test]
async fn capping_the_cpu_instruction_set_changes_no_answer() {
    let formats = ["f32", "bf16", "int8", "w8a8", "w16a16", "w4a8"];
    let mut yaml = String::from(
        "auth: { allow_unauthenticated: true, anonymous_tenant: local }\n\
         tenants: [{ id: local, accepted_licences: [apache-2.0] }]\nmodels:\n",
    );
    for f in formats {
        yaml += &format!(
            "  - {{ id: {f}, demo: {{ arch: qwen2, size: tiny, seed: 1 }}, licence: apache-2.0, \
             dtype: {f} }}\n"
        );
    }
    let widest = Server::start(&yaml);
    for cap in ["avx2", "portable"] {
        let capped = Server::start_with_env(&yaml, &[("ROSETTA_MAX_CPU_ISA", cap)]);
        assert!(
            capped.logs().contains("CPU kernels capped"),
            "{}",
            capped.logs()
        );
        for f in formats {
            for prompt in [MULTILINGUAL, "Hello"] {
                // Each token's log-probabilities, printed in full: any bit that differs in
                // the logits shows, not only a different greedy token.
                let body = json!({
                    "model": f,
                    "messages": [{"role": "user", "content": prompt}],
                    "temperature": 0, "max_tokens": 12, "ignore_eos": true,
                    "logprobs": true, "top_logprobs": 5,
                });
                let a = widest.chat(body.clone()).await;
                let b = capped.chat(body).await;
                let what = format!("{f} capped at {cap}: {prompt}");
                assert_eq!(content(&a), content(&b), "{what}");
                let (la, lb) = (logprobs(&a), logprobs(&b));
                assert_eq!(la.len(), 12 * 6, "{a}");
                if cap == "portable" && matches!(f, "f32" | "bf16") {
                    // Without FMA these round after each multiply: equal to rounding only.
                    for (x, y) in la.iter().zip(&lb) {
                        assert!((x - y).abs() < 1e-3, "{what}: {la:?} against {lb:?}");
                    }
                } else {
                    assert_eq!(la, lb, "{what}");
                }
            }
        }
    }
}

#[test]
fn help_lists_the_commands() {
    let out = run_cli(&["--help"], None, T);
    assert!(out.success(), "{out:?}");
    for cmd in ["serve", "config", "model", "keys"] {
        assert!(
            out.stdout.contains(cmd),
            "--help does not mention `{cmd}`: {}",
            out.stdout
        );
    }
}

/// `rosetta serve` with no config: the embedded default generates the small demo model into
/// the cache folder on first start, then serves it as `rosetta-demo`.
#[tokio::test]
async fn serve_without_config_serves_the_generated_demo_model() {
    use std::io::BufRead;
    let cache = tempfile::tempdir().unwrap();
    let mut child = rosetta_cmd()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("XDG_CACHE_HOME", cache.path())
        .env_remove("ROSETTA_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn rosetta");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let child = Kill(child);
    let line = std::io::BufReader::new(stdout)
        .lines()
        .next()
        .expect("a line")
        .expect("stdout");
    let base = line
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let ready = client
            .get(format!("{base}/ready"))
            .send()
            .await
            .map(|r| r.status());
        if ready.is_ok_and(|s| s == StatusCode::OK) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the default model never became ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let model_dir = cache
        .path()
        .join("rosetta/models/llama-small-seed0-f32-1shard-r2");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(
            model_dir.join(f).exists(),
            "{f} missing from {}",
            model_dir.display()
        );
    }
    let v: Value = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "rosetta-demo", "messages": [{"role": "user", "content": "Jambo!"}], "max_tokens": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["model"], "rosetta-demo", "{v}");
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    let completion = v["usage"]["completion_tokens"].as_u64().expect("usage");
    assert!((1..=2).contains(&completion), "{v}");
    drop(child);
}
