//! OpenTelemetry traces from the real binary into a real OTLP receiver run by the test: the
//! collector's own gRPC service (opentelemetry-proto behind tonic), and OTLP/HTTP with
//! protobuf bodies. One server span per request with the GenAI attributes, children for
//! policy, admission, queue, prefill and decode, an incoming `traceparent` honoured and
//! passed on to a remote replica, and JSON log lines carrying the request and trace ids.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use rosetta_tests::*;

/// A span as received, with its service and attributes as strings.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

impl Collector {
    fn take(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for rs in request.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: s.name,
                        kind: s.kind,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        attributes: s
                            .attributes
                            .into_iter()
                            .map(|kv| {
                                (
                                    kv.key,
                                    text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                                )
                            })
                            .collect(),
                    });
                }
            }
        }
    }

    /// Waits (up to 20 s) for a span that `pick` accepts.
    async fn wait_for(&self, what: &str, pick: impl Fn(&Received) -> bool) -> Received {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.0.lock().unwrap().iter().find(|s| pick(s)) {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no span {what} arrived; got {:#?}",
                self.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn children(&self, of: &Received) -> Vec<Received> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.parent == of.span_id && s.trace_id == of.trace_id)
            .cloned()
            .collect()
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: Option<&Any>) -> String {
    match v {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// The gRPC receiver on a free loopback port.
async fn grpc_collector() -> (Collector, String) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (collector, format!("http://{addr}"))
}

/// An OTLP/HTTP receiver: POST /v1/traces with a protobuf body, answered 200.
async fn http_collector() -> (Collector, String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let collector = Collector::default();
    let paths = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (c, p) = (collector.clone(), paths.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (c, p) = (c.clone(), p.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n");
                    if let Some(end) = end {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            let body = buf[end + 4..end + 4 + length].to_vec();
                            buf.drain(..end + 4 + length);
                            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                            p.lock().unwrap().push(path);
                            if let Ok(req) = ExportTraceServiceRequest::decode(body.as_slice()) {
                                c.take(req);
                            }
                            let _ = conn
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                                .await;
                            continue;
                        }
                    }
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (collector, format!("http://{addr}"), paths)
}

const CONFIG: &str = r#"
server: { listen: 127.0.0.1:0, log_format: json }
cache_dir: "{cache}"
auth: { allow_unauthenticated: true, anonymous_tenant: local }
tenants: [{ id: local }]
models:
  - { id: open, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 256, engine: { kv_cache_bytes: 4194304 } }
"#;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const SECRET_TEXT: &str = "Le mot de passe est papillon-violet-42";

fn env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("OTEL_SERVICE_NAME", "rosetta-under-test".into()),
        ("RUST_LOG", "info,rosetta_gateway=debug".into()),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn request_spans_over_grpc_follow_the_genai_conventions() {
    let (collector, endpoint) = grpc_collector().await;
    let env = env(&endpoint);
    let s = Server::start_with_env(CONFIG, &env_refs(&env));
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let r = s
        .client()
        .post(s.url("/v1/chat/completions"))
        .header("traceparent", &traceparent)
        .json(&json!({
            "model": "open",
            "messages": [{"role": "user", "content": SECRET_TEXT}],
            "max_tokens": 3,
            "ignore_eos": true,
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 7,
            "metadata": {"language": "fr"},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    let completion = s
        .post(
            "/v1/completions",
            &json!({"model": "open", "prompt": "Il était une fois", "max_tokens": 2}),
        )
        .await
        .ok();

    let chat = collector
        .wait_for("`chat open`", |s| s.name == "chat open")
        .await;
    assert_eq!(chat.service, "rosetta-under-test");
    assert_eq!(chat.kind, 2, "SERVER");
    assert_eq!(chat.trace_id, TRACE, "the incoming traceparent's trace");
    assert_eq!(chat.parent, PARENT, "the incoming traceparent's span");
    let a = &chat.attributes;
    let usage = &body["usage"];
    for (key, want) in [
        ("gen_ai.operation.name", "chat".to_string()),
        ("gen_ai.provider.name", "rosetta".into()),
        ("gen_ai.request.model", "open".into()),
        ("gen_ai.request.max_tokens", "3".into()),
        ("gen_ai.request.temperature", "0.5".into()),
        ("gen_ai.request.seed", "7".into()),
        ("gen_ai.response.model", "open".into()),
        ("gen_ai.response.id", body["id"].as_str().unwrap().into()),
        ("gen_ai.response.finish_reasons", "[\"length\"]".into()),
        (
            "gen_ai.usage.input_tokens",
            usage["prompt_tokens"].to_string(),
        ),
        (
            "gen_ai.usage.output_tokens",
            usage["completion_tokens"].to_string(),
        ),
        ("rosetta.language", "fr".into()),
        ("rosetta.language.source", "stated".into()),
        ("rosetta.tenant", "local".into()),
        ("rosetta.replica", "open/local".into()),
        ("http.response.status_code", "200".into()),
    ] {
        assert_eq!(a.get(key), Some(&want), "{key} in {a:#?}");
    }
    let top_p: f64 = a["gen_ai.request.top_p"].parse().unwrap();
    assert!((top_p - 0.9).abs() < 1e-6, "{top_p}");
    // Message content is never recorded.
    let everything = format!("{:?}", collector.0.lock().unwrap());
    assert!(
        !everything.contains("papillon"),
        "the prompt reached a span"
    );

    // Children: policy and admission as they ran, and the engine's phases with their times.
    let deadline = Instant::now() + Duration::from_secs(20);
    let names = loop {
        let mut names: Vec<String> = collector
            .children(&chat)
            .into_iter()
            .map(|c| c.name)
            .collect();
        names.sort();
        if names.len() >= 5 || Instant::now() > deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(names, ["admission", "decode", "policy", "prefill", "queue"]);

    // Without a traceparent: a trace of its own, no parent.
    let text = collector
        .wait_for("`text_completion open`", |s| {
            s.name == "text_completion open"
        })
        .await;
    assert_ne!(text.trace_id, TRACE);
    assert!(text.parent.is_empty(), "{text:?}");
    assert_eq!(
        text.attributes
            .get("gen_ai.response.id")
            .map(String::as_str),
        completion["id"].as_str()
    );

    // JSON logs: the request's lines carry its request id and trace id.
    let logs = s.logs();
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // Each line lists its spans, outermost (the request's) first.
    let of_request: Vec<&Value> = lines
        .iter()
        .filter(|l| l["spans"][0]["request_id"] == json!(request_id))
        .collect();
    assert!(
        !of_request.is_empty(),
        "no log line of the request in {logs}"
    );
    for line in &of_request {
        assert_eq!(line["spans"][0]["trace_id"], json!(TRACE), "{line}");
    }
    // Lines logged in a child span (the audit of the policy decision) too.
    assert!(
        of_request
            .iter()
            .any(|l| l["spans"].as_array().unwrap().len() > 1),
        "{logs}"
    );
}

#[tokio::test]
async fn spans_over_http_protobuf_and_the_trace_goes_on_to_a_remote_replica() {
    let (collector, endpoint, paths) = http_collector().await;
    let mut env = env(&endpoint);
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()));
    let engine_config = r#"
server: { listen: 127.0.0.1:0, engine_token: "t0ken" }
cache_dir: "{cache}"
auth: { allow_unauthenticated: true }
models:
  - { id: m, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 256, engine: { kv_cache_bytes: 4194304 } }
"#;
    let mut engine_env = env.clone();
    engine_env.push(("OTEL_SERVICE_NAME", "rosetta-engine".into()));
    engine_env.retain(|(k, v)| *k != "OTEL_SERVICE_NAME" || v == "rosetta-engine");
    let engine = Server::start_with_args_and_env(
        engine_config,
        &["--listen", "127.0.0.1:0", "--engine-only"],
        &env_refs(&engine_env),
    );
    let gateway_config = format!(
        "server: {{ listen: 127.0.0.1:0 }}\ncache_dir: \"{{cache}}\"\nauth: {{ allow_unauthenticated: true }}\n\
         models:\n  - {{ id: m, licence: apache-2.0, remote: [{{ url: \"{}\", api_key: t0ken }}] }}\n",
        engine.base_url()
    );
    let g = Server::start_with_env(&gateway_config, &env_refs(&env));
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let r = g
        .client()
        .post(g.url("/v1/chat/completions"))
        .header("traceparent", &traceparent)
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "Bonjour"}], "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let at_gateway = collector
        .wait_for("at the gateway", |s| {
            s.service == "rosetta-under-test" && s.name == "chat m"
        })
        .await;
    assert_eq!(at_gateway.trace_id, TRACE);
    assert_eq!(at_gateway.parent, PARENT);
    assert_eq!(
        at_gateway
            .attributes
            .get("rosetta.replica")
            .map(String::as_str),
        Some("m/remote-0")
    );
    // The engine's span continues the same trace, under the gateway's.
    let at_engine = collector
        .wait_for("at the engine", |s| {
            s.service == "rosetta-engine" && s.name == "chat m"
        })
        .await;
    assert_eq!(at_engine.trace_id, TRACE);
    assert_eq!(at_engine.parent, at_gateway.span_id);
    assert!(paths.lock().unwrap().iter().all(|p| p == "/v1/traces"));
}
