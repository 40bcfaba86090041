//! `GET /metrics`: every metric of this process, in the Prometheus text format, or in
//! OpenMetrics when the scraper's `Accept` asks for it.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::metrics::{Snapshot, OPENMETRICS_FORMAT, TEXT_FORMAT};
use crate::pool::breaker::BreakerState;
use crate::state::AppState;

pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.metrics_enabled() {
        return ApiError::not_found("Metrics are turned off (server.metrics.enabled).")
            .into_response();
    }
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let models = state.models().unwrap_or_default();
    let replicas: Vec<_> = state
        .configured()
        .iter()
        .flat_map(|m| state.pool().replicas(&m.id).to_vec())
        .filter(|r| r.remote().is_some())
        .collect();
    let snapshot = Snapshot {
        engines: models
            .iter()
            .map(|m| (m.id.as_str(), m.engine.load(), m.prefix_caching))
            .collect(),
        breakers: replicas
            .iter()
            .map(|r| {
                let state = match r.breaker.state() {
                    BreakerState::Closed => 0,
                    BreakerState::HalfOpen => 1,
                    BreakerState::Open => 2,
                };
                (r.name.as_str(), state)
            })
            .collect(),
    };
    let body = state.metrics().render(&snapshot, openmetrics);
    let content_type = if openmetrics {
        OPENMETRICS_FORMAT
    } else {
        TEXT_FORMAT
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
