//! The OpenAI-compatible HTTP API.

mod answer;
#[cfg(test)]
mod arbitrary;
pub mod authentication;
mod chat;
mod completions;
mod embeddings;
pub mod error;
mod extract;
mod models;
mod observe;
mod params;
mod pipeline;
mod prompts;
pub mod ratelimit_headers;
mod responses;
mod scrape;
mod sse;
mod tokenize;
mod tool_params;
pub mod types;
mod upstream_body;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::state::AppState;
use error::ApiError;

pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let limit = state.max_body_bytes;
    // Routes that need to know the caller (401 without a valid key).
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/responses", post(responses::create))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(models::list))
        // Ids may contain slashes (`org/name`), which SDKs put in the path unencoded.
        .route("/v1/models/{*id}", get(models::get))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authentication::authenticate,
        ));
    Router::new()
        .merge(protected)
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/load", get(models::load))
        .route("/metrics", get(scrape::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(cors(state.cors_origins()))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::measure,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(crate::telemetry::request_span)
                .on_response(record_status),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// The response status on the request's span; a 5xx marks the span as an error.
fn record_status(resp: &Response, latency: std::time::Duration, span: &tracing::Span) {
    crate::telemetry::attribute(span, "http.response.status_code", resp.status().as_u16());
    if resp.status().is_server_error() {
        crate::telemetry::attribute(span, "otel.status_code", "ERROR");
    }
    tracing::debug!(
        status = resp.status().as_u16(),
        latency_ms = latency.as_millis() as u64,
        "response"
    );
}

/// CORS for the configured origins only; with none, no CORS headers at all (browsers then
/// refuse cross-origin calls), so a key in a web page cannot be used from other sites.
fn cors(origins: &[String]) -> tower::util::Either<CorsLayer, tower::layer::util::Identity> {
    if origins.is_empty() {
        return tower::util::Either::Right(tower::layer::util::Identity::new());
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    tower::util::Either::Left(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
    )
}

/// Liveness: the process serves HTTP and no engine has failed for good.
async fn health(State(state): State<AppState>) -> Response {
    if state.engines_failed() {
        let body = serde_json::json!({ "status": "engine failed" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// Readiness: every configured model is loaded and its engine can serve.
async fn ready(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        let status = if state.engines_failed() {
            "engine failed"
        } else {
            "loading"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": status })),
        )
            .into_response()
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "Unknown path {}; see /v1/models, /v1/chat/completions, /v1/completions.",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    let mut e = ApiError::invalid(format!("Method {method} is not allowed on {}.", uri.path()));
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e
}

/// A bug must not drop the connection: answer with OpenAI's 500 body and log it.
fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown");
    tracing::error!(panic = detail, "request handler panicked");
    ApiError::internal("The server hit an internal error while handling this request.")
        .into_response()
}
