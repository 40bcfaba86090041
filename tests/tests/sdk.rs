//! The official OpenAI Python SDK against a real server (tests/clients/openai_client.py).
//! The virtual environment is made by scripts/test.sh.

use std::process::Command;
use std::time::Duration;

use rosetta_tests::*;

fn run_client(config: &str, model: &str) {
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
    cmd.arg(clients.join("openai_client.py"))
        .args(["--base-url", s.base_url(), "--model", model]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(180));
    println!("{}", out.stdout);
    assert!(
        out.success(),
        "openai_client.py failed:\n{}\n{}",
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
