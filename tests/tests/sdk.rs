//! The official OpenAI Python SDK against a real server (tests/clients/openai_client.py).
//! The virtual environment is made by scripts/test.sh.

use std::process::Command;
use std::time::Duration;

use rosetta_tests::*;

#[test]
fn openai_python_sdk() {
    let clients = tests_dir().join("clients");
    let python = clients.join(".venv").join("bin").join("python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test.sh (it creates tests/clients/.venv with the pinned \
         openai package from tests/clients/requirements.txt)",
        python.display()
    );
    let s = Server::start_default();
    let mut cmd = Command::new(&python);
    cmd.arg(clients.join("openai_client.py"))
        .args(["--base-url", s.base_url(), "--model", "tiny"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(180));
    println!("{}", out.stdout);
    assert!(
        out.success(),
        "openai_client.py failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}
