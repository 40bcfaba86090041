//! The Helm chart, checked offline by Helm's own SDK and Kubernetes' schemas
//! (`tests/clients/chart_check.py`): strict lint, every rendered manifest valid for
//! Kubernetes 1.29 and the newest schema, wrong values refused by `values.schema.json`, the
//! configs its ConfigMap carries accepted by `rosetta config check` — and served: the
//! default release's engine and gateway configs, run by the real binary, answer a chat
//! request with the key the chart generated.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rosetta_tests::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs chart_check.py; the report and the folder holding each values file's configs.
fn check_chart() -> (Value, tempfile::TempDir) {
    let clients = repo().join("tests/clients");
    let python = clients.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh",
        python.display()
    );
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(python)
        .arg(clients.join("chart_check.py"))
        .arg(repo().join("charts/rosetta"))
        .arg(out.path())
        .output()
        .expect("run chart_check.py");
    assert!(
        run.status.success(),
        "chart_check.py failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    (serde_json::from_slice(&run.stdout).unwrap(), out)
}

#[tokio::test]
async fn the_chart_lints_renders_valid_manifests_and_its_configs_serve() {
    let (report, out) = check_chart();
    for (values, problems) in report["lint"].as_object().unwrap() {
        assert_eq!(problems, &json!([]), "helm lint --strict with {values}");
    }
    assert_eq!(report["invalid"], json!([]), "invalid manifests");
    assert_eq!(
        report["accepted_wrong"],
        json!([]),
        "values.schema.json accepted these"
    );
    let rendered = |values: &str| -> Vec<String> {
        serde_json::from_value(report["rendered"][values].clone()).unwrap()
    };
    // The GPU values: two models of two replicas, every optional object on.
    let gpu = rendered("gpu-values.yaml");
    for object in [
        "Deployment/rosetta-gateway",
        "Deployment/rosetta-engine-llama-3-1-8b-instruct",
        "Deployment/rosetta-engine-qwen2-5-7b-instruct",
        "Service/rosetta-engine-qwen2-5-7b-instruct-pods",
        "HorizontalPodAutoscaler/rosetta-gateway",
        "ScaledObject/rosetta-engine-llama-3-1-8b-instruct",
        "ServiceMonitor/rosetta-gateway",
        "PodMonitor/rosetta-engines",
        "PrometheusRule/rosetta",
        "ConfigMap/rosetta-dashboard",
        "NetworkPolicy/rosetta-engines",
        "Ingress/rosetta",
        "HTTPRoute/rosetta",
        "ServiceAccount/rosetta-extra",
    ] {
        assert!(gpu.contains(&object.to_string()), "{object} not in {gpu:?}");
    }
    // A model's tool and thinking formats reach its engine's config.
    let engine = std::fs::read_to_string(
        out.path()
            .join("gpu-values/engine-qwen2-5-7b-instruct.yaml"),
    )
    .expect("the qwen engine's rosetta.yaml");
    assert!(
        engine.contains("tool_parser: hermes") && engine.contains("reasoning_parser: none"),
        "{engine}"
    );
    // The mistral.rs backend and its quantisation reach the engine's config.
    let mistralrs = std::fs::read_to_string(out.path().join("cpu-values/engine-demo-qwen.yaml"))
        .expect("the demo-qwen engine's rosetta.yaml");
    assert!(
        mistralrs.contains("backend: mistralrs") && mistralrs.contains("isq: Q8_0"),
        "{mistralrs}"
    );
    // An existing Secret: the chart makes none.
    assert!(!gpu.iter().any(|o| o.starts_with("Secret/")), "{gpu:?}");
    let default = rendered("default");
    assert!(default.contains(&"Secret/rosetta-secrets".to_string()));

    // `rosetta config check` accepts what the ConfigMaps carry (model folders aside: those
    // live on volumes that exist only in a cluster).
    for config in [
        "default/gateway.yaml",
        "default/engine-rosetta-demo.yaml",
        "cpu-values/gateway.yaml",
        "cpu-values/engine-rosetta-demo.yaml",
        "gpu-values/gateway.yaml",
    ] {
        let path = out.path().join(config);
        let check = run_cli(
            &["config", "check", path.to_str().unwrap()],
            None,
            Duration::from_secs(30),
        );
        assert!(
            check.success(),
            "config check {config}: {}{}",
            check.stdout,
            check.stderr
        );
    }

    // The default release's configs, served: the engine (a tiny demo model here, and
    // loopback addresses), then the gateway in front of it with the generated key.
    let dir = out.path().join("default");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let token = read("engine-token");
    let engine_config = read("engine-rosetta-demo.yaml")
        .replace("size: small", "size: tiny")
        .replace("/var/cache/rosetta", "{cache}");
    let engine = Server::start_with_args_and_env(
        &engine_config,
        &["--engine-only", "--listen", "127.0.0.1:0"],
        &[("ROSETTA_ENGINE_TOKEN", token.as_str())],
    );
    // The gateway finds the engine as in a cluster: by its headless Service's DNS name,
    // here answered by a test DNS server with the engine's loopback address.
    let zone: Zone =
        std::sync::Arc::new(std::sync::Mutex::new(vec![std::net::Ipv4Addr::LOCALHOST]));
    let dns = dns_zone_server(
        "rosetta-engine-rosetta-demo-pods.ai.svc.cluster.local.",
        zone,
    )
    .await;
    let engine_port = engine.addr().port();
    let gateway_config = read("gateway.yaml")
        .replace("port: 8080", &format!("port: {engine_port}"))
        .replace(
            "pool: {}",
            &format!("pool: {{ dns_servers: [\"{dns}\"], dns_refresh_ms: 100 }}"),
        )
        .replace(
            "keys_file: keys.yaml",
            &format!("keys_file: {}", dir.join("keys.yaml").display()),
        );
    let gateway =
        Server::start_with_env(&gateway_config, &[("ROSETTA_ENGINE_TOKEN", token.as_str())]);
    let key = read("api-key");
    // Discovery takes a resolution and a health check.
    let body = json!({"model": "rosetta-demo", "messages": [{"role": "user", "content": "Habari!"}], "max_tokens": 2});
    gateway
        .post_until_ok(Some(&key), "/v1/chat/completions", &body)
        .await;
    let answer = gateway
        .post_as(
            &key,
            "/v1/chat/completions",
            &json!({"model": "rosetta-demo", "messages": [{"role": "user", "content": "Habari!"}], "max_tokens": 2}),
        )
        .await
        .ok();
    assert_eq!(answer["usage"]["completion_tokens"], 2);
    // Without the key: 401.
    gateway
        .post_as(
            "sk-wrong",
            "/v1/chat/completions",
            &json!({"model": "rosetta-demo", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await
        .assert_error(401, None, None);
}
