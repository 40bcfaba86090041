//! Schemathesis (property-based fuzzing) against the real server, driven by OpenAI's own
//! OpenAPI spec for createChatCompletion, createCompletion, listModels and retrieveModel
//! (tests/clients/openapi/openai-subset.yaml, cut from the full spec by trim_openapi.py there).
//!
//! Positive mode (requests valid by OpenAI's schema) and negative mode (requests that break
//! it), each with a bounded number of examples per operation and a fixed seed. The only
//! requirement is robustness: no 5xx, no dropped or hung connection, and the server alive
//! and serving afterwards. 4xx for what Rosetta does not support or rejects is fine, so
//! schemathesis's conformance checks (response schemas, status codes, ...) stay off.
//!
//! The virtual environment with the pinned schemathesis is made by scripts/test.sh from
//! tests/clients/requirements.txt.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rosetta_tests::*;

/// Examples per operation and mode for the fuzzing phase (schemathesis `-n`); its examples
/// and coverage phases add their own cases on top (see the printed counts).
const MAX_EXAMPLES: u32 = 250;
/// Fixed, so a failure reproduces run after run.
const SEED: u32 = 1;
/// Per request: a request that does not finish in time is a failure (a hang).
const REQUEST_TIMEOUT_S: u32 = 30;
/// For one whole schemathesis run.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// One tiny model with a small context, so any request, however many tokens (or choices) it
/// asks for, finishes quickly; plus aliases with OpenAI model names that the spec's examples
/// and enums use, so some generated requests get past "unknown model" as they are.
/// tests/clients/schemathesis_hooks.py points most positive requests at `tiny` itself.
const CONFIG: &str = r#"
server: { listen: 127.0.0.1:0, max_body_bytes: 65536 }
cache_dir: "{cache}"
auth: { allow_unauthenticated: true, anonymous_tenant: local }
tenants: [{ id: local }]
models:
  - id: tiny
    demo: { arch: qwen2, size: tiny, seed: 1 }
    licence: apache-2.0
    max_context: 256
    engine: { kv_block_size: 16, kv_cache_bytes: 16777216, max_num_seqs: 64 }
  - { id: e5, demo: { arch: xlm-roberta, size: tiny, seed: 1 }, licence: mit }
routes:
  - { alias: gpt-5.4, fallback: [tiny] }
  - { alias: gpt-4o-mini, fallback: [tiny] }
  - { alias: gpt-3.5-turbo-instruct, fallback: [tiny] }
  - { alias: text-embedding-3-small, fallback: [e5] }
"#;

fn clients_dir() -> PathBuf {
    tests_dir().join("clients")
}

fn schemathesis_bin() -> PathBuf {
    let bin = clients_dir().join(".venv").join("bin").join("schemathesis");
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/test.sh (it creates tests/clients/.venv with the pinned \
         schemathesis package from tests/clients/requirements.txt)",
        bin.display()
    );
    bin
}

/// The schemathesis command line for one mode, run from `work` (a scratch folder, so nothing
/// such as a config file or an example database is read from or written to the repository).
fn schemathesis_command(base_url: &str, mode: &str, work: &Path, report: &Path) -> Command {
    let clients = clients_dir();
    let spec = clients.join("openapi").join("openai-subset.yaml");
    let mut cmd = Command::new(schemathesis_bin());
    cmd.arg("run")
        .arg(&spec)
        // The spec's servers are `/v1`: the paths resolve to the server's /v1/... .
        .args(["--url", &format!("{base_url}/v1")])
        .args(["--mode", mode])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--seed", &SEED.to_string()])
        // Not `stateful`: these operations create nothing, so it would only chain
        // GET /models into GET /models/{model} some thousand times more.
        .args(["--phases", "examples,coverage,fuzzing"])
        // Only 5xx fail a response; network errors and timeouts fail the run by themselves.
        .args(["--checks", "not_a_server_error"])
        .args(["--request-timeout", &REQUEST_TIMEOUT_S.to_string()])
        .args(["--request-retries", "0"])
        .args(["--max-redirects", "0"])
        .args(["--workers", "2"])
        // Hypothesis's own health checks (too slow on a loaded machine, ...) are not the
        // server's fault.
        .args(["--suppress-health-check", "all"])
        .args(["--generation-database", "none"])
        // The spec's security scheme; anonymous use is allowed, the key is never checked.
        .args(["-H", "Authorization: Bearer unused"])
        // Reproduction curls as sent (the default hides fields such as max_tokens).
        .args(["--output-sanitize", "false"])
        .args(["--report", "ndjson"])
        .arg("--report-ndjson-path")
        .arg(report)
        .arg("--no-color")
        .current_dir(work)
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", &clients)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("ROSETTA_TEST_MODEL", "tiny")
        .env("ROSETTA_TEST_EMBEDDING_MODEL", "e5")
        // Loopback only, never through a proxy.
        .env("NO_PROXY", "*")
        .env("no_proxy", "*");
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// What was sent, from the NDJSON report: `(phase, operation, status)` -> count, where the
/// status is `none` for a request that got no response (a network error or timeout).
fn tally(report: &Path) -> BTreeMap<(String, String, String), usize> {
    let text = std::fs::read_to_string(report)
        .unwrap_or_else(|e| panic!("read {}: {e}", report.display()));
    let mut counts = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let event: Value = serde_json::from_str(line).expect("an NDJSON line");
        let Some(scenario) = event.get("ScenarioFinished") else {
            continue;
        };
        let phase = scenario["phase"].as_str().unwrap_or("?").to_string();
        let Some(interactions) = scenario["recorder"]["interactions"].as_object() else {
            continue;
        };
        for interaction in interactions.values() {
            let req = &interaction["request"];
            let method = req["method"].as_str().unwrap_or("?");
            let uri = req["uri"].as_str().unwrap_or("?");
            let path = uri.split_once("/v1").map_or(uri, |(_, p)| p);
            let path = path.split('?').next().unwrap_or(path);
            let path = if path.starts_with("/models/") {
                "/models/{model}"
            } else {
                path
            };
            let status = interaction["response"]["status_code"]
                .as_u64()
                .map_or_else(|| "none".to_string(), |s| s.to_string());
            *counts
                .entry((phase.clone(), format!("{method} {path}"), status))
                .or_insert(0) += 1;
        }
    }
    counts
}

fn run_mode(s: &mut Server, mode: &str) {
    let work = tempfile::Builder::new()
        .prefix("rosetta-schemathesis-")
        .tempdir()
        .expect("tempdir");
    let report = work.path().join(format!("{mode}.ndjson"));
    let mut cmd = schemathesis_command(s.base_url(), mode, work.path(), &report);
    println!("$ {cmd:?}");
    let start = Instant::now();
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    let took = start.elapsed();
    let counts = if report.is_file() {
        tally(&report)
    } else {
        BTreeMap::new()
    };
    let total: usize = counts.values().sum();
    println!("schemathesis --mode {mode}: {total} requests in {took:.1?}");
    let mut by_phase: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_op: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for ((phase, op, status), n) in &counts {
        *by_phase.entry(phase).or_default() += n;
        *by_op.entry(op).or_default().entry(status).or_default() += n;
    }
    println!("  by phase: {by_phase:?}");
    for (op, statuses) in &by_op {
        let statuses: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        println!("  {op:<26} {}", statuses.join(", "));
    }
    if !out.success() {
        // Keep the NDJSON report (every request and response) for whoever debugs this.
        let kept = work.keep();
        println!("kept {}", kept.display());
    }
    assert!(
        out.success(),
        "schemathesis --mode {mode} failed (exit {:?}): a 5xx, a dropped connection or a \
         timeout; its reproduction curls are below.\n{}\n{}\nserver log (tail):\n{}",
        out.code,
        out.stdout,
        out.stderr,
        tail(&s.logs(), 8000)
    );
    // Its summary (and warnings, such as the share of valid-by-OpenAI requests Rosetta
    // rejects, which is information, not failure).
    let summary = ["=== WARNINGS", "=== SUMMARY"]
        .iter()
        .find_map(|m| out.stdout.find(m))
        .map_or("", |i| {
            &out.stdout[out.stdout[..i].rfind('\n').map_or(0, |j| j + 1)..]
        });
    println!("{summary}");
    let server_errors: Vec<_> = counts
        .iter()
        .filter(|((_, _, status), _)| status == "none" || status.starts_with('5'))
        .collect();
    assert!(
        server_errors.is_empty(),
        "--mode {mode}: {server_errors:?}\n{}",
        out.stdout
    );
    assert!(
        s.is_running(),
        "the server exited during --mode {mode}:\n{}",
        s.logs()
    );
    if mode == "positive" {
        // The hooks worked: generation itself (not only validation) was fuzzed.
        for op in ["POST /chat/completions", "POST /completions"] {
            let ok: usize = counts
                .iter()
                .filter(|((_, o, status), _)| o == op && status == "200")
                .map(|(_, n)| n)
                .sum();
            assert!(
                ok > 0,
                "no positive {op} reached the model:\n{}",
                out.stdout
            );
        }
    }
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[tokio::test]
async fn schemathesis_openai_spec_no_5xx_no_dropped_connection() {
    schemathesis_bin();
    let mut s = Server::start(CONFIG);
    for mode in ["positive", "negative"] {
        run_mode(&mut s, mode);
    }

    // Alive and serving afterwards: liveness, and a real generation.
    assert!(s.is_running(), "the server exited:\n{}", s.logs());
    assert_eq!(
        s.raw_get_status("/health").expect("GET /health"),
        200,
        "{}",
        s.logs()
    );
    let r = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "tiny", "messages": [{"role": "user", "content": "Hello"}],
                    "max_tokens": 4}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}
