//! `GET /metrics` after real traffic, read with Prometheus's official parsers (Python
//! `prometheus_client`, both formats) and linted with `promtool check metrics`: each counter
//! and histogram moves by exactly what the traffic implies. Plus `Server-Timing`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rosetta_tests::*;

const CONFIG: &str = r#"
server: { listen: 127.0.0.1:0, max_body_bytes: 65536 }
cache_dir: "{cache}"
models:
  - { id: open, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 256, engine: { kv_cache_bytes: 4194304 } }
  - { id: aya, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: cc-by-nc-4.0, max_context: 256, engine: { kv_cache_bytes: 4194304 } }
routes:
  - alias: auto
    rules: [{ languages: [sw], models: [open] }]
    fallback: [open]
tenants:
  - id: acme
    keys: [{ hash: "ACME_HASH" }]
    commercial: true
  - id: few
    keys: [{ hash: "FEW_HASH" }]
    limits: { requests_per_minute: 1 }
"#;

/// One sample of a scrape, as the parser read it.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    family: String,
    kind: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The scrape parsed by `prometheus_client` (`text` or `openmetrics`).
fn parse(scrape: &str, format: &str) -> Vec<Sample> {
    let clients = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients");
    let python = clients.join(".venv").join("bin").join("python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh",
        python.display()
    );
    let mut child = Command::new(python)
        .arg(clients.join("parse_metrics.py"))
        .arg(format)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the parser");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected the {format} scrape: {}\n{scrape}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            Sample {
                name: v["name"].as_str().unwrap().to_string(),
                family: v["family"].as_str().unwrap().to_string(),
                kind: v["type"].as_str().unwrap().to_string(),
                labels: serde_json::from_value(v["labels"].clone()).unwrap(),
                value: v["value"].as_f64().unwrap(),
            }
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include `labels` (0 if none).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// `promtool check metrics` on a scrape: its complaints, one per line.
fn promtool(scrape: &str) -> Vec<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: scripts/test.sh installs it (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("error while linting"),
        "promtool could not parse the scrape: {text}"
    );
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// What promtool says of vLLM's own exposition too, and nothing else is allowed: its names
/// have colons, and `vllm:iteration_tokens_total` is a histogram (dashboards, autoscalers
/// and the inference extension's endpoint picker read exactly these names).
fn vllm_naming(complaint: &str) -> bool {
    complaint.starts_with("vllm:")
        && (complaint.ends_with("metric names should not contain ':'")
            || complaint
                == "vllm:iteration_tokens_total non-counter metrics should not have \"_total\" suffix")
}

async fn scrape(s: &Server) -> String {
    let r = s.get("/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.content_type.as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.text
}

struct Sent {
    status: u16,
    request_bytes: usize,
    response_bytes: usize,
    json: Value,
    server_timing: Option<String>,
}

async fn send(s: &Server, key: &str, path: &str, body: &Value) -> Sent {
    let bytes = serde_json::to_vec(body).unwrap();
    let r = s
        .client()
        .post(s.url(path))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let server_timing = r
        .headers()
        .get("server-timing")
        .map(|v| v.to_str().unwrap().to_string());
    let body = r.bytes().await.unwrap();
    let json = if body.starts_with(b"{") {
        serde_json::from_slice(&body).unwrap()
    } else {
        // A stream: its last event with usage.
        sse_json(&String::from_utf8_lossy(&body))
            .into_iter()
            .rev()
            .find(|e| !e["usage"].is_null())
            .unwrap_or(Value::Null)
    };
    Sent {
        status,
        request_bytes: bytes.len(),
        response_bytes: body.len(),
        json,
        server_timing,
    }
}

fn chat(model: &str, text: &str, max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "metadata": {"language": "fr"},
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
    })
}

fn completion(prompt: &str, max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": "open",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "metadata": {"language": "fr"},
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
    })
}

const SWAHILI: &str = "Habari ya asubuhi rafiki yangu, ninafurahi sana kukuona leo hapa sokoni.";

#[tokio::test]
async fn metrics_move_by_exactly_what_the_traffic_implies() {
    let (config, [acme, few]) = with_new_keys(CONFIG, ["ACME_HASH", "FEW_HASH"]);
    let s = Server::start(&config);
    let before = scrape(&s).await;
    let b = parse(&before, "text");
    // Every engine series exists before any traffic, at 0, as vLLM's do.
    for reason in ["stop", "length", "abort", "error"] {
        let labels = [
            ("model_name", "open"),
            ("engine", "0"),
            ("finished_reason", reason),
        ];
        assert!(
            b.iter().any(|x| x.name == "vllm:request_success_total"
                && labels
                    .iter()
                    .all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))),
            "no {reason} series before traffic"
        );
    }
    let info = b
        .iter()
        .find(|x| x.name == "vllm:cache_config_info" && x.labels["model_name"] == "open")
        .expect("vllm:cache_config_info");
    assert_eq!(info.labels["block_size"], "16");
    assert!(info.labels["num_gpu_blocks"].parse::<u64>().unwrap() > 0);

    // The traffic: chat and completions, streamed and not; an alias routed by a detected
    // language; a 403 by licence policy; a 429 by rate limit.
    let mut sent = vec![
        send(
            &s,
            &acme,
            "/v1/chat/completions",
            &chat("open", "Bonjour à tous", 4, false),
        )
        .await,
        send(
            &s,
            &acme,
            "/v1/chat/completions",
            &chat("open", "Salut, ça va ?", 3, true),
        )
        .await,
        send(
            &s,
            &acme,
            "/v1/completions",
            &completion("Il était une fois", 2, false),
        )
        .await,
        send(
            &s,
            &acme,
            "/v1/completions",
            &completion("La mer est", 2, true),
        )
        .await,
    ];
    let mut routed = chat("auto", SWAHILI, 1, false);
    routed.as_object_mut().unwrap().remove("metadata");
    let routed = send(&s, &acme, "/v1/chat/completions", &routed).await;
    let denied = send(
        &s,
        &acme,
        "/v1/chat/completions",
        &chat("aya", "Bonjour", 1, false),
    )
    .await;
    let first = send(
        &s,
        &few,
        "/v1/chat/completions",
        &chat("open", "Bonjour", 1, false),
    )
    .await;
    let limited = send(
        &s,
        &few,
        "/v1/chat/completions",
        &chat("open", "Bonjour", 1, false),
    )
    .await;
    for x in &sent {
        assert_eq!(x.status, 200, "{}", x.json);
    }
    assert_eq!(routed.status, 200, "{}", routed.json);
    assert_eq!(denied.status, 403, "{}", denied.json);
    assert_eq!(first.status, 200);
    assert_eq!(limited.status, 429);

    // Server-Timing: the gateway's time always; the engine's queue and prefill for a whole
    // answer (known by the time its headers go).
    let timing = sent[0].server_timing.clone().expect("Server-Timing");
    assert!(timing.starts_with("gateway;dur="), "{timing}");
    assert!(
        timing.contains("queue;dur=") && timing.contains("prefill;dur="),
        "{timing}"
    );
    assert!(denied
        .server_timing
        .as_deref()
        .unwrap()
        .starts_with("gateway;dur="));

    let after = scrape(&s).await;
    let a = parse(&after, "text");
    let delta =
        |name: &str, labels: &[(&str, &str)]| value(&a, name, labels) - value(&b, name, labels);

    // Usage as the clients were told it.
    let usage = |x: &Sent, k: &str| x.json["usage"][k].as_f64().unwrap();
    sent.push(first);
    let fr_prompt: f64 = sent.iter().map(|x| usage(x, "prompt_tokens")).sum();
    let fr_output: f64 = sent.iter().map(|x| usage(x, "completion_tokens")).sum();
    assert_eq!(fr_output, 4.0 + 3.0 + 2.0 + 2.0 + 1.0);
    let all_prompt = fr_prompt + usage(&routed, "prompt_tokens");
    let all_output = fr_output + usage(&routed, "completion_tokens");
    let open = [("model_name", "open"), ("engine", "0")];

    // The engine, under vLLM's names: six requests, each finished by length.
    assert_eq!(
        delta(
            "vllm:request_success_total",
            &[("model_name", "open"), ("finished_reason", "length")]
        ),
        6.0
    );
    assert_eq!(
        delta(
            "vllm:request_success_total",
            &[("model_name", "open"), ("finished_reason", "stop")]
        ),
        0.0
    );
    assert_eq!(
        delta("vllm:request_success_total", &[("model_name", "aya")]),
        0.0
    );
    assert_eq!(delta("vllm:prompt_tokens_total", &open), all_prompt);
    assert_eq!(delta("vllm:generation_tokens_total", &open), all_output);
    assert_eq!(delta("vllm:request_prompt_tokens_sum", &open), all_prompt);
    assert_eq!(
        delta("vllm:request_generation_tokens_sum", &open),
        all_output
    );
    assert_eq!(
        delta("vllm:request_params_max_tokens_sum", &open),
        all_output
    );
    for h in [
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
        "vllm:request_inference_time_seconds",
        "vllm:request_prompt_tokens",
        "vllm:request_params_n",
    ] {
        assert_eq!(delta(&format!("{h}_count"), &open), 6.0, "{h}");
        let inf = [open[0], open[1], ("le", "+Inf")];
        assert_eq!(delta(&format!("{h}_bucket"), &inf), 6.0, "{h}");
    }
    // One interval between each pair of tokens of a choice.
    assert_eq!(
        delta("vllm:inter_token_latency_seconds_count", &open),
        all_output - 6.0
    );
    assert_eq!(value(&a, "vllm:num_requests_running", &open), 0.0);
    assert_eq!(value(&a, "vllm:num_requests_waiting", &open), 0.0);
    // Every step ran at least one token; together they ran every prompt token not served
    // from the prefix cache, plus each sampled token but the last of each choice.
    let hits = delta("vllm:prefix_cache_hits_total", &open);
    assert_eq!(
        delta("vllm:iteration_tokens_total_sum", &open),
        all_prompt - hits + all_output - 6.0
    );
    assert!(delta("vllm:prefix_cache_queries_total", &open) >= hits);

    // The gateway.
    let requests = |endpoint: &str, model: &str, tenant: &str, status: &str, language: &str| {
        delta(
            "rosetta_requests_total",
            &[
                ("endpoint", endpoint),
                ("model", model),
                ("tenant", tenant),
                ("status", status),
                ("language", language),
            ],
        )
    };
    assert_eq!(
        requests("/v1/chat/completions", "open", "acme", "200", "fr"),
        2.0
    );
    assert_eq!(
        requests("/v1/completions", "open", "acme", "200", "fr"),
        2.0
    );
    assert_eq!(
        requests("/v1/chat/completions", "auto", "acme", "200", "sw"),
        1.0
    );
    assert_eq!(
        delta(
            "rosetta_requests_total",
            &[("model", "auto"), ("route", "auto")]
        ),
        1.0
    );
    assert_eq!(
        requests("/v1/chat/completions", "aya", "acme", "403", "fr"),
        1.0
    );
    assert_eq!(
        requests("/v1/chat/completions", "open", "few", "200", "fr"),
        1.0
    );
    assert_eq!(
        requests("/v1/chat/completions", "open", "few", "429", "fr"),
        1.0
    );
    assert_eq!(
        delta(
            "rosetta_rate_limited_total",
            &[("tenant", "few"), ("kind", "requests")]
        ),
        1.0
    );
    assert_eq!(delta("rosetta_rate_limited_total", &[]), 1.0);
    assert_eq!(
        delta(
            "rosetta_policy_denials_total",
            &[("tenant", "acme"), ("licence", "cc-by-nc-4.0")]
        ),
        1.0
    );
    let policy = a
        .iter()
        .find(|x| x.name == "rosetta_policy_denials_total")
        .map(|x| x.labels["policy"].clone())
        .unwrap();
    assert!(
        denied.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&policy),
        "{policy}"
    );
    assert_eq!(
        delta(
            "rosetta_routing_decisions_total",
            &[
                ("route", "auto"),
                ("model", "open"),
                ("fallback", "false"),
                ("language_source", "detected")
            ]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "rosetta_routing_decisions_total",
            &[("route", ""), ("language_source", "stated")]
        ),
        5.0
    );
    assert_eq!(delta("rosetta_retries_total", &[]), 0.0);
    let chats = [&sent[0], &sent[1], &sent[4], &routed, &denied, &limited];
    let total = |xs: &[&Sent], f: fn(&Sent) -> usize| xs.iter().map(|x| f(x) as f64).sum::<f64>();
    assert_eq!(
        delta(
            "rosetta_request_bytes_total",
            &[("endpoint", "/v1/chat/completions")]
        ),
        total(&chats, |x| x.request_bytes)
    );
    assert_eq!(
        delta(
            "rosetta_response_bytes_total",
            &[("endpoint", "/v1/chat/completions")]
        ),
        total(&chats, |x| x.response_bytes)
    );
    assert_eq!(
        delta(
            "rosetta_response_bytes_total",
            &[("endpoint", "/v1/completions")]
        ),
        (sent[2].response_bytes + sent[3].response_bytes) as f64
    );
    assert_eq!(
        value(
            &a,
            "rosetta_requests_in_flight",
            &[("endpoint", "/v1/chat/completions")]
        ),
        0.0
    );

    // Languages: French prompts and outputs, and the Swahili text's cost per character.
    let fr = [("language", "fr"), ("model", "open")];
    assert_eq!(
        delta("rosetta_language_prompt_tokens_total", &fr),
        fr_prompt
    );
    assert_eq!(
        delta("rosetta_language_generation_tokens_total", &fr),
        fr_output
    );
    let sw = [("language", "sw"), ("model", "open")];
    assert_eq!(
        delta("rosetta_language_text_characters_total", &sw),
        SWAHILI.chars().count() as f64
    );
    let tokenized = s
        .post_as(
            &acme,
            "/tokenize",
            &json!({"model": "open", "prompt": SWAHILI, "add_special_tokens": false}),
        )
        .await
        .ok();
    let sw_tokens = tokenized["tokens"].as_array().unwrap().len() as f64;
    assert_eq!(delta("rosetta_language_text_tokens_total", &sw), sw_tokens);

    // The OpenTelemetry GenAI metrics.
    let chat_open = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_request_model", "open"),
        ("error_type", ""),
    ];
    assert_eq!(
        delta("gen_ai_server_request_duration_seconds_count", &chat_open),
        3.0
    );
    assert_eq!(
        delta(
            "gen_ai_server_request_duration_seconds_count",
            &[
                ("gen_ai_request_model", "auto"),
                ("gen_ai_response_model", "open")
            ]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "gen_ai_server_time_to_first_token_seconds_count",
            &[("gen_ai_provider_name", "rosetta")]
        ),
        6.0
    );
    let output = [("gen_ai_token_type", "output")];
    assert_eq!(delta("gen_ai_client_token_usage_sum", &output), all_output);
    let input = [("gen_ai_token_type", "input")];
    assert_eq!(delta("gen_ai_client_token_usage_sum", &input), all_prompt);

    // promtool: nothing but vLLM's own naming.
    let complaints: Vec<String> = promtool(&after)
        .into_iter()
        .filter(|c| !vllm_naming(c))
        .collect();
    assert!(
        complaints.is_empty(),
        "promtool check metrics: {complaints:#?}"
    );
}

#[tokio::test]
async fn a_client_that_leaves_is_an_abort_and_leaves_nothing_in_flight() {
    let (config, [acme, _]) = with_new_keys(CONFIG, ["ACME_HASH", "FEW_HASH"]);
    let s = Server::start(&config);
    let b = parse(&scrape(&s).await, "text");
    let mut body = chat("open", "Raconte une longue histoire", 150, true);
    body["stream_options"] = Value::Null;
    let mut r = s
        .client()
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&acme)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.chunk().await);
    // Some of the answer (past the role chunk, which is sent before any token), then gone.
    let mut seen = String::new();
    while seen.matches("data:").count() < 2 {
        let chunk = r.chunk().await.unwrap().expect("more of the stream");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(r);
    let abort = [("model_name", "open"), ("finished_reason", "abort")];
    let deadline = Instant::now() + Duration::from_secs(20);
    let a = loop {
        let a = parse(&scrape(&s).await, "text");
        let done = value(&a, "vllm:request_success_total", &abort)
            - value(&b, "vllm:request_success_total", &abort)
            == 1.0
            && value(
                &a,
                "rosetta_requests_in_flight",
                &[("endpoint", "/v1/chat/completions")],
            ) == 0.0
            // The engine may notice the client is gone before the HTTP layer has dropped
            // the response body, which is when the request is recorded.
            && value(&a, "rosetta_requests_total", &[("endpoint", "/v1/chat/completions")])
                - value(&b, "rosetta_requests_total", &[("endpoint", "/v1/chat/completions")])
                == 1.0;
        if done {
            break a;
        }
        assert!(Instant::now() < deadline, "the abort was never counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let delta =
        |name: &str, labels: &[(&str, &str)]| value(&a, name, labels) - value(&b, name, labels);
    let open = [("model_name", "open"), ("engine", "0")];
    assert_eq!(
        delta(
            "vllm:request_success_total",
            &[("finished_reason", "length")]
        ),
        0.0
    );
    assert_eq!(value(&a, "vllm:num_requests_running", &open), 0.0);
    // What the engine made before it noticed, counted once everywhere.
    let made = delta("vllm:generation_tokens_total", &open);
    assert!((1.0..150.0).contains(&made), "{made}");
    assert_eq!(delta("vllm:request_generation_tokens_sum", &open), made);
    assert_eq!(
        delta(
            "rosetta_requests_total",
            &[
                ("endpoint", "/v1/chat/completions"),
                ("status", "200"),
                ("tenant", "acme")
            ]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "gen_ai_server_request_duration_seconds_count",
            &[("error_type", "client_disconnected")]
        ),
        1.0
    );
}

#[tokio::test]
async fn openmetrics_when_the_scraper_asks() {
    let (config, [acme, _]) = with_new_keys(CONFIG, ["ACME_HASH", "FEW_HASH"]);
    let s = Server::start(&config);
    send(
        &s,
        &acme,
        "/v1/chat/completions",
        &chat("open", "Bonjour", 2, false),
    )
    .await;
    let r = s
        .client()
        .get(s.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"));
    let om = parse(&text, "openmetrics");
    let plain = parse(&scrape(&s).await, "text");
    // The same families and values in both formats (counters named without `_total` in
    // OpenMetrics, their samples with it).
    let family = |samples: &[Sample], name: &str| {
        samples
            .iter()
            .find(|x| x.name == name)
            .map(|x| (x.family.clone(), x.kind.clone()))
    };
    assert_eq!(
        family(&om, "vllm:generation_tokens_total"),
        Some(("vllm:generation_tokens".into(), "counter".into()))
    );
    assert_eq!(
        family(&om, "vllm:iteration_tokens_total_bucket").map(|f| f.1),
        Some("histogram".into())
    );
    let open = [("model_name", "open")];
    for name in [
        "vllm:generation_tokens_total",
        "vllm:prompt_tokens_total",
        "vllm:e2e_request_latency_seconds_count",
        "gen_ai_client_token_usage_sum",
    ] {
        assert_eq!(
            value(&om, name, &open),
            value(&plain, name, &open),
            "{name}"
        );
    }
}

#[tokio::test]
async fn metrics_can_be_turned_off_and_the_tenant_label_dropped() {
    let no_tenants = CONFIG.replace(
        "max_body_bytes: 65536 }",
        "max_body_bytes: 65536, metrics: { tenant_label: false } }",
    );
    let (config, [acme, _]) = with_new_keys(&no_tenants, ["ACME_HASH", "FEW_HASH"]);
    let s = Server::start(&config);
    send(
        &s,
        &acme,
        "/v1/chat/completions",
        &chat("open", "Bonjour", 1, false),
    )
    .await;
    let a = parse(&scrape(&s).await, "text");
    let ours: Vec<&Sample> = a
        .iter()
        .filter(|x| x.name == "rosetta_requests_total")
        .collect();
    assert!(!ours.is_empty());
    assert!(ours
        .iter()
        .all(|x| x.labels.get("tenant").is_none_or(|t| t.is_empty())));
    drop(s);

    let off = CONFIG.replace(
        "max_body_bytes: 65536 }",
        "max_body_bytes: 65536, metrics: { enabled: false } }",
    );
    let (config, _) = with_new_keys(&off, ["ACME_HASH", "FEW_HASH"]);
    let s = Server::start(&config);
    s.get("/metrics").await.assert_error(404, None, None);
}

/// Metric names a PromQL expression reads (ours, the GenAI ones and vLLM's): identifiers
/// with those prefixes that are not label names (a label is followed by `=`, `!=` or `=~`).
fn queried_metrics(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !ident(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let next = chars[i..].iter().find(|c| !c.is_whitespace());
        let is_label = matches!(next, Some('=' | '!' | '~'));
        if !is_label
            && ["vllm:", "rosetta_", "gen_ai_"]
                .iter()
                .any(|p| word.starts_with(p))
        {
            names.push(word);
        }
    }
    names
}

#[tokio::test]
async fn the_dashboard_and_alert_rules_query_only_metrics_a_real_scrape_has() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // A model whose two remote replicas refuse connections: errors, a retry, breakers.
    let config = CONFIG.replace(
        "routes:",
        "  - { id: far, licence: apache-2.0, remote: [{ url: \"http://127.0.0.1:9\" }, { url: \"http://127.0.0.1:9\" }] }\n\
         pool: { health_interval_ms: 3600000, breaker_failures: 5 }\nroutes:",
    );
    let (config, [acme, few]) = with_new_keys(&config, ["ACME_HASH", "FEW_HASH"]);
    let s = Server::start(&config);
    let ok = send(
        &s,
        &acme,
        "/v1/chat/completions",
        &chat("open", "Bonjour", 2, false),
    )
    .await;
    assert_eq!(ok.status, 200);
    let routed = send(
        &s,
        &acme,
        "/v1/chat/completions",
        &chat("auto", SWAHILI, 1, false),
    )
    .await;
    assert_eq!(routed.status, 200);
    let denied = send(
        &s,
        &acme,
        "/v1/chat/completions",
        &chat("aya", "Bonjour", 1, false),
    )
    .await;
    assert_eq!(denied.status, 403);
    for expected in [200, 429] {
        let r = send(
            &s,
            &few,
            "/v1/chat/completions",
            &chat("open", "Bonjour", 1, false),
        )
        .await;
        assert_eq!(r.status, expected);
    }
    let far = send(
        &s,
        &acme,
        "/v1/chat/completions",
        &chat("far", "Bonjour", 1, false),
    )
    .await;
    assert_eq!(far.status, 503, "{}", far.json);
    let samples = parse(&scrape(&s).await, "text");
    let known: std::collections::BTreeSet<&str> = samples
        .iter()
        .flat_map(|x| [x.name.as_str(), x.family.as_str()])
        .collect();
    assert_eq!(
        value(
            &samples,
            "rosetta_replica_errors_total",
            &[("replica", "far/remote-0"), ("reason", "unavailable")]
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "rosetta_retries_total", &[("model", "far")]),
        1.0
    );

    // The dashboard: Grafana's structure, and every metric it plots exists.
    let path = root.join("charts/rosetta/files/dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "rosetta-overview");
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "model", "tenant"]);
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        assert!(p["title"].is_string() && p["gridPos"]["w"].is_u64() && p["gridPos"]["h"].is_u64());
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in &dashboard["templating"]["list"].as_array().unwrap()[1..] {
        exprs.push(v["definition"].as_str().unwrap().to_string());
    }
    // The alert rules (promtool checks their syntax), read the same way.
    let rules = root.join("charts/rosetta/files/alert-rules.yaml");
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    for line in std::fs::read_to_string(&rules).unwrap().lines() {
        if line.contains("vllm:") || line.contains("rosetta_") {
            exprs.push(line.to_string());
        }
    }
    let mut queried = std::collections::BTreeSet::new();
    for e in &exprs {
        queried.extend(queried_metrics(e));
    }
    assert!(queried.len() >= 20, "{queried:?}");
    let missing: Vec<&String> = queried
        .iter()
        .filter(|m| !known.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not in the scrape: {missing:?}"
    );
}
