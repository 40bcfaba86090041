//! The HTTP edge's measurements, taken once per request for every endpoint: requests by
//! endpoint, model, route, language, tenant and status (`rosetta_requests_total`), in-flight
//! requests, body bytes both ways, duration to the last byte; and the `Server-Timing` header.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

use crate::metrics::{Metrics, RequestFacts};
use crate::state::AppState;
use crate::telemetry::endpoint;

pub async fn measure(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let endpoint = endpoint(req.uri().path());
    let metrics = state.metrics().clone();
    let facts = RequestFacts::default();
    req.extensions_mut().insert(facts.clone());
    let in_flight = metrics.gateway.in_flight.with_label_values(&[endpoint]);
    in_flight.inc();
    let request_bytes = metrics.gateway.request_bytes.with_label_values(&[endpoint]);
    let req = req.map(|body| {
        Body::new(Counted {
            inner: body,
            on_end: None,
            bytes: 0,
            counter: Some(request_bytes),
        })
    });
    let resp = next.run(req).await;
    let status = resp.status();
    let mut resp = resp.map(|body| {
        let ended = Ended {
            metrics: metrics.clone(),
            facts: facts.clone(),
            endpoint,
            status,
            start,
            in_flight,
        };
        Body::new(Counted {
            inner: body,
            on_end: Some(ended),
            bytes: 0,
            counter: None,
        })
    });
    let timing = server_timing(start.elapsed(), &facts);
    if let Ok(v) = HeaderValue::from_str(&timing) {
        resp.headers_mut().insert("server-timing", v);
    }
    resp
}

/// W3C `Server-Timing`: the gateway's time to these headers, and the engine's queue and
/// prefill times where they are known by then (a whole answer; not yet for a stream).
fn server_timing(gateway: Duration, facts: &RequestFacts) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut parts = vec![format!("gateway;dur={:.1}", ms(gateway))];
    if let Some(times) = facts.engine_times() {
        if let Some(q) = times.queue_time() {
            parts.push(format!("queue;dur={:.1}", ms(q)));
        }
        if let Some(p) = times.prefill_time() {
            parts.push(format!("prefill;dur={:.1}", ms(p)));
        }
    }
    parts.join(", ")
}

/// Recorded once, when the response body ends or is dropped (a client that left).
struct Ended {
    metrics: Arc<Metrics>,
    facts: RequestFacts,
    endpoint: &'static str,
    status: StatusCode,
    start: Instant,
    in_flight: prometheus::IntGauge,
}

impl Ended {
    fn record(&self, bytes: u64) {
        let g = &self.metrics.gateway;
        let labels = self.facts.labels();
        let status = self.status.as_str();
        g.requests
            .with_label_values(&[
                self.endpoint,
                &labels.model,
                &labels.route,
                &labels.language,
                self.metrics.tenant(&labels.tenant),
                status,
            ])
            .inc();
        g.request_duration
            .with_label_values(&[self.endpoint, status])
            .observe(self.start.elapsed().as_secs_f64());
        g.response_bytes
            .with_label_values(&[self.endpoint])
            .inc_by(bytes);
        self.in_flight.dec();
    }
}

/// A body that counts its bytes and records when it ends.
struct Counted {
    inner: Body,
    on_end: Option<Ended>,
    bytes: u64,
    counter: Option<prometheus::IntCounter>,
}

impl Counted {
    fn finish(&mut self) {
        if let Some(ended) = self.on_end.take() {
            ended.record(self.bytes);
        }
        if let Some(c) = self.counter.take() {
            c.inc_by(self.bytes);
        }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.finish();
    }
}
