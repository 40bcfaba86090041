//! Logs and traces: the `tracing` subscriber (human-readable or JSON lines), and, when an
//! OTLP endpoint is configured, an OpenTelemetry exporter fed from the same spans. One span
//! per HTTP request carries the GenAI semantic-convention attributes; an incoming W3C
//! `traceparent` becomes its parent, and is passed on to remote replicas.

use std::sync::OnceLock;

use anyhow::Context as _;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use rosetta_config::{LogFormat, TracingConfig};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The exporter, while traces are on; flushed at shutdown.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported (then request spans get parents and trace ids from OTel).
pub fn tracing_enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Installs the global subscriber. With an OTLP endpoint (config or
/// `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), spans are exported;
/// must then run inside the Tokio runtime (the gRPC exporter's channel lives there).
pub fn init(format: LogFormat, config: &TracingConfig) -> anyhow::Result<()> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            // The request span (ids) as well as the child a line was logged in.
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    let otel = match exporter(config)? {
        Some(provider) => {
            let tracer = provider.tracer("rosetta");
            let _ = PROVIDER.set(provider);
            // Request spans and their children, whatever RUST_LOG says for the logs.
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(EnvFilter::new("rosetta_gateway=info")),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init()
        .context("cannot install the log subscriber")?;
    Ok(())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The OTLP exporter the environment or the config asks for; `None` when neither names an
/// endpoint. The `OTEL_*` variables win over the config.
fn exporter(config: &TracingConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    let from_env = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .is_some();
    if !from_env && config.otlp_endpoint.is_none() {
        return Ok(None);
    }
    let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .or_else(|| config.protocol.clone())
        .unwrap_or_else(|| "grpc".into());
    let exporter = match protocol.as_str() {
        "grpc" => {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let (false, Some(ep)) = (from_env, &config.otlp_endpoint) {
                b = b.with_endpoint(ep.clone());
            }
            b.build()
        }
        "http/protobuf" => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let (false, Some(ep)) = (from_env, &config.otlp_endpoint) {
                // As the environment variable's base endpoint is read: the signal's path added.
                let ep = ep.trim_end_matches('/');
                let ep = if ep.ends_with("/v1/traces") {
                    ep.to_string()
                } else {
                    format!("{ep}/v1/traces")
                };
                b = b.with_endpoint(ep);
            }
            b.build()
        }
        other => {
            anyhow::bail!("OTLP protocol `{other}` is not supported; use `grpc` or `http/protobuf`")
        }
    }
    .context("cannot build the OTLP span exporter")?;
    let service = env("OTEL_SERVICE_NAME")
        .or_else(|| config.service_name.clone())
        .unwrap_or_else(|| "rosetta".into());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource);
    // The SDK reads OTEL_TRACES_SAMPLER itself; the config's ratio only when it is unset.
    if env("OTEL_TRACES_SAMPLER").is_none() {
        let ratio = config.sample_ratio.unwrap_or(1.0).clamp(0.0, 1.0);
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    }
    Ok(Some(builder.build()))
}

/// Sends the spans still buffered (at shutdown).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(e) = provider.shutdown() {
            eprintln!("warning: could not flush traces: {e}");
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// An endpoint's name in metrics and span names: one of the served paths, never the raw
/// path (label values stay bounded).
pub fn endpoint(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/responses" => "/v1/responses",
        "/v1/embeddings" => "/v1/embeddings",
        "/v1/models" => "/v1/models",
        "/tokenize" => "/tokenize",
        "/detokenize" => "/detokenize",
        "/health" => "/health",
        "/ready" => "/ready",
        "/load" => "/load",
        "/metrics" => "/metrics",
        p if p.starts_with("/v1/models/") => "/v1/models/{id}",
        _ => "other",
    }
}

/// The span of one HTTP request, declaring every attribute the pipeline may record on it,
/// its parent taken from an incoming `traceparent`, and its trace id as a field (so every
/// log line of the request carries it).
pub fn request_span<B>(req: &Request<B>) -> tracing::Span {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{} {}", req.method(), endpoint(req.uri().path())),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        request_id,
        trace_id = tracing::field::Empty,
        http.request.method = %req.method(),
        url.path = %req.uri().path(),
        http.response.status_code = tracing::field::Empty,
        gen_ai.operation.name = tracing::field::Empty,
        gen_ai.provider.name = tracing::field::Empty,
        gen_ai.request.model = tracing::field::Empty,
        gen_ai.request.max_tokens = tracing::field::Empty,
        gen_ai.request.temperature = tracing::field::Empty,
        gen_ai.request.top_p = tracing::field::Empty,
        gen_ai.request.seed = tracing::field::Empty,
        gen_ai.request.choice.count = tracing::field::Empty,
        gen_ai.request.stream = tracing::field::Empty,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.response.id = tracing::field::Empty,
        gen_ai.response.finish_reasons = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        error.type = tracing::field::Empty,
        rosetta.language = tracing::field::Empty,
        rosetta.language.source = tracing::field::Empty,
        rosetta.tenant = tracing::field::Empty,
        rosetta.route = tracing::field::Empty,
        rosetta.replica = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
    let incoming = parent.span().span_context().clone();
    if tracing_enabled() {
        if incoming.is_valid() {
            let _ = span.set_parent(parent);
        }
        let cx = span.context();
        let id = cx.span().span_context().trace_id();
        if id != opentelemetry::trace::TraceId::INVALID {
            span.record("trace_id", id.to_string());
        }
    } else if incoming.is_valid() {
        span.record("trace_id", incoming.trace_id().to_string());
    }
    span
}

/// Records an attribute on a request span when traces are exported. Logs do not need the
/// GenAI attributes, and formatting each into the logged span's fields costs every request.
pub fn attribute<V: tracing::Value>(span: &tracing::Span, key: &'static str, value: V) {
    if tracing_enabled() {
        span.record(key, value);
    }
}

/// Renames the current request's span (`{operation} {model}`, known once its body is read).
/// The span has been started to learn its trace id, so only the OpenTelemetry span itself
/// can still take a new name.
pub fn rename_request_span(name: String) {
    if tracing_enabled() {
        tracing::Span::current().context().span().update_name(name);
    }
}

/// Adds the current span's `traceparent` (and `tracestate`) to a request to a replica.
pub fn inject_trace_context(headers: &mut HeaderMap) {
    if !tracing_enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// A child span of the request that happened in the engine (queue wait, prefill, decode),
/// sent with its real start and end.
pub fn engine_phase(
    request: &tracing::Span,
    name: &'static str,
    start: std::time::Instant,
    end: std::time::Instant,
) {
    use opentelemetry::trace::{Span as _, Tracer as _};
    let Some(provider) = PROVIDER.get() else {
        return;
    };
    let parent = request.context();
    let wall = |t: std::time::Instant| {
        let ago = std::time::Instant::now().saturating_duration_since(t);
        std::time::SystemTime::now() - ago
    };
    let tracer = provider.tracer("rosetta");
    let mut span = tracer
        .span_builder(name)
        .with_start_time(wall(start))
        .start_with_context(&tracer, &parent);
    span.end_with_timestamp(wall(end));
}
