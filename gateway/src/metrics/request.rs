//! What one request contributes to the metrics and its trace: the labels the pipeline learns
//! on the way (model, route, language, tenant), and a generation's measurements, recorded
//! once when it ends.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rosetta_engine::RequestTimes;

use super::genai::PROVIDER;
use super::Metrics;

/// Labels of a request's `rosetta_requests_total` series, filled in as the request goes:
/// shared by the HTTP layer (which records the series when the response ends) and the
/// pipeline (which knows the model, route and language).
#[derive(Debug, Clone, Default)]
pub struct RequestFacts(Arc<Mutex<Facts>>);

#[derive(Debug, Default)]
struct Facts {
    labels: Labels,
    /// The engine's times of the request's first prompt (for `Server-Timing`).
    engine_times: Option<Arc<RequestTimes>>,
}

#[derive(Debug, Clone, Default)]
pub struct Labels {
    pub model: String,
    pub route: String,
    pub language: String,
    pub tenant: String,
}

impl RequestFacts {
    pub fn update(&self, f: impl FnOnce(&mut Labels)) {
        if let Ok(mut facts) = self.0.lock() {
            f(&mut facts.labels);
        }
    }

    pub fn labels(&self) -> Labels {
        self.0.lock().map(|f| f.labels.clone()).unwrap_or_default()
    }

    pub fn set_engine_times(&self, times: Option<Arc<RequestTimes>>) {
        if let Ok(mut facts) = self.0.lock() {
            facts.engine_times = times;
        }
    }

    pub fn engine_times(&self) -> Option<Arc<RequestTimes>> {
        self.0.lock().ok()?.engine_times.clone()
    }
}

/// One generation's measurements as its answer streams out; recorded (GenAI metrics, the
/// language's generated tokens, the trace span's usage attributes) when it is dropped.
pub struct GenerationMeasure {
    metrics: Arc<Metrics>,
    start: Instant,
    operation: &'static str,
    request_model: String,
    response_model: String,
    language: String,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    /// Tokens seen in the answer's events.
    tokens_seen: u64,
    usage: Option<(u64, u64)>,
    finish_reasons: Vec<&'static str>,
    error: Option<&'static str>,
    /// The engine's times of the first prompt (local replicas).
    engine_times: Option<Arc<RequestTimes>>,
    discarded: bool,
    span: tracing::Span,
}

impl GenerationMeasure {
    pub fn start(
        metrics: Arc<Metrics>,
        start: Instant,
        operation: &'static str,
        request_model: &str,
        response_model: &str,
        language: &str,
    ) -> Self {
        Self {
            metrics,
            start,
            operation,
            request_model: request_model.to_string(),
            response_model: response_model.to_string(),
            language: language.to_string(),
            first_token: None,
            last_token: None,
            tokens_seen: 0,
            usage: None,
            finish_reasons: Vec::new(),
            error: None,
            engine_times: None,
            discarded: false,
            span: tracing::Span::current(),
        }
    }

    /// A token (or a content chunk) reached the client.
    pub fn token(&mut self, now: Instant) {
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        self.tokens_seen += 1;
    }

    pub fn finished(&mut self, reason: &'static str) {
        self.finish_reasons.push(reason);
    }

    /// The answer's usage: prompt and completion tokens.
    pub fn usage(&mut self, input: u64, output: u64) {
        self.usage = Some((input, output));
    }

    /// The answer ended in an error (`error.type`).
    pub fn failed(&mut self, kind: &'static str) {
        self.error = Some(kind);
    }

    /// Records nothing: the attempt is not the request's answer.
    pub fn discard(&mut self) {
        self.discarded = true;
    }

    pub fn engine_times(&mut self, times: Option<Arc<RequestTimes>>) {
        self.engine_times = times;
    }
}

impl Drop for GenerationMeasure {
    fn drop(&mut self) {
        if self.discarded {
            return;
        }
        let end = self.last_token.unwrap_or_else(Instant::now);
        let labels = [
            self.operation,
            PROVIDER,
            self.request_model.as_str(),
            self.response_model.as_str(),
        ];
        let genai = &self.metrics.genai;
        // A stream its client left ends without usage: what reached it is what it got.
        let complete = self.usage.is_some();
        let (input, output) = self.usage.unwrap_or((0, self.tokens_seen));
        let error = match (self.error, complete) {
            (Some(e), _) => e,
            (None, true) => "",
            (None, false) => "client_disconnected",
        };
        genai
            .request_duration
            .with_label_values(&[labels[0], labels[1], labels[2], labels[3], error])
            .observe(end.duration_since(self.start).as_secs_f64());
        if error.is_empty() {
            if let Some(first) = self.first_token {
                genai
                    .time_to_first_token
                    .with_label_values(&labels)
                    .observe(first.duration_since(self.start).as_secs_f64());
                if output > 1 {
                    let per = end.duration_since(first).as_secs_f64() / (output - 1) as f64;
                    genai
                        .time_per_output_token
                        .with_label_values(&labels)
                        .observe(per);
                }
            }
            for (kind, n) in [("input", input), ("output", output)] {
                genai
                    .token_usage
                    .with_label_values(&[labels[0], labels[1], labels[2], labels[3], kind])
                    .observe(n as f64);
            }
        }
        self.metrics
            .gateway
            .generation_tokens
            .with_label_values(&[self.language.as_str(), self.response_model.as_str()])
            .inc_by(output);
        let span = &self.span;
        crate::telemetry::attribute(span, "gen_ai.response.model", self.response_model.as_str());
        if complete {
            crate::telemetry::attribute(span, "gen_ai.usage.input_tokens", input);
            crate::telemetry::attribute(span, "gen_ai.usage.output_tokens", output);
        }
        if !self.finish_reasons.is_empty() {
            // A string array in the convention; tracing fields are scalars, so JSON.
            let reasons = serde_json::to_string(&self.finish_reasons).unwrap_or_default();
            crate::telemetry::attribute(span, "gen_ai.response.finish_reasons", reasons.as_str());
        }
        if !error.is_empty() {
            crate::telemetry::attribute(span, "error.type", error);
        }
        if let Some(t) = &self.engine_times {
            if let Some(scheduled) = t.scheduled() {
                crate::telemetry::engine_phase(span, "queue", t.arrived, scheduled);
                if let Some(first) = t.first_token() {
                    crate::telemetry::engine_phase(span, "prefill", scheduled, first);
                    crate::telemetry::engine_phase(span, "decode", first, end);
                }
            }
        }
    }
}
