//! The official OpenAI Python SDK against a real server (tests/clients/openai_client.py).
//! The virtual environment is made by scripts/test.sh.

use std::process::Command;
use std::time::Duration;

use rosetta_tests::*;

fn run_client(config: &str, model: &str) {
    run_script("openai_client.py", config, model);
}

fn run_script(script: &str, config: &str, model: &str) {
    let clients = tests_dir().join("clients");
    let python = clients.join(".venv").join("bin").join("python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test.sh (it creates tests/clients/.venv with the pinned \
         openai package from tests/clients/requirements.txt)",
        python.display()
    );
    let s = Server::start(config);
    let mut cmd = Command::new(&python);
    cmd.arg(clients.join(script))
        .args(["--base-url", s.base_url(), "--model", model]);
    passes(&mut cmd, script);
}

/// Runs a client script to its end (3 minutes at most); it must exit 0.
fn passes(cmd: &mut Command, script: &str) {
    let out = run_with_timeout(cmd, Duration::from_secs(180));
    println!("{}", out.stdout);
    assert!(
        out.success(),
        "{script} failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn openai_python_sdk() {
    run_client(DEFAULT_CONFIG, "tiny");
}

/// Hugging Face style ids (`org/name`): the SDK puts them into paths unencoded
/// (`GET /v1/models/org/name`).
#[test]
fn openai_python_sdk_with_an_org_slash_model_id() {
    run_client(
        r#"
auth: { allow_unauthenticated: true, anonymous_tenant: local }
tenants: [{ id: local, accepted_licences: [llama3.1] }]
models:
  - { id: "rosetta/tiny-qwen2", demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0 }
"#,
        "rosetta/tiny-qwen2",
    );
}

/// `client.embeddings.create` on a generated XLM-RoBERTa encoder: the SDK's default base64,
/// floats, `dimensions`, and its exceptions (tests/clients/openai_embeddings.py).
#[test]
fn openai_python_sdk_embeddings() {
    run_script(
        "openai_embeddings.py",
        r#"
cache_dir: "{cache}"
auth: { allow_unauthenticated: true }
models:
  - { id: e5, demo: { arch: xlm-roberta, size: tiny, seed: 1 }, licence: mit }
"#,
        "e5",
    );
}

/// A model whose template thinks (Qwen3's) and one of Llama 3.1's family, with room for
/// rendered tools.
const AGENT_CONFIG: &str = r#"
cache_dir: "{cache}"
auth: { allow_unauthenticated: true, anonymous_tenant: local }
tenants: [{ id: local, accepted_licences: [llama3.1] }]
models:
  - { id: qwen3, demo: { arch: qwen3, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 4096, engine: { kv_cache_bytes: 67108864 } }
  - { id: llama, demo: { arch: llama, size: tiny, seed: 1 }, licence: llama3.1, max_context: 4096, engine: { kv_cache_bytes: 67108864 } }
  - { id: e5, demo: { arch: xlm-roberta, size: tiny, seed: 1 }, licence: mit }
"#;

/// Agents' use of the SDK: function tools, `parse` with pydantic, the stream helper with tool
/// calls, and the Responses API with its streaming events (tests/clients/openai_agents.py),
/// on a model whose template thinks (Qwen3's) and one of Llama 3.1's family.
#[test]
fn openai_python_sdk_as_agents_use_it() {
    run_script("openai_agents.py", AGENT_CONFIG, "qwen3");
    run_script("openai_agents.py", AGENT_CONFIG, "llama");
}

/// The `openai` npm package (tools, the Responses stream, embeddings in its default base64)
/// and the Vercel AI SDK (`generateObject` with a zod schema, `generateText` with a tool loop): tests/clients/js/agents.mjs, installed by
/// scripts/test.sh with `npm ci`.
#[test]
fn openai_npm_package_and_vercel_ai_sdk() {
    let js = tests_dir().join("clients").join("js");
    assert!(
        js.join("node_modules").join("ai").is_dir(),
        "{} is missing: run scripts/test.sh (it runs `npm ci` there)",
        js.join("node_modules").display()
    );
    let s = Server::start(AGENT_CONFIG);
    let mut cmd = Command::new("node");
    cmd.current_dir(&js)
        .arg("agents.mjs")
        .args([s.base_url(), "qwen3", "e5"]);
    passes(&mut cmd, "agents.mjs");
}
