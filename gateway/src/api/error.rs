//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the status
//! OpenAI uses.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rosetta_engine::EngineError;

use crate::access::AccessError;
use crate::pool::remote::UpstreamRefusal;
use crate::ratelimit::RateState;
use crate::state::ModelError;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    pub retry_after_secs: Option<u64>,
    /// Extra response headers (the `x-ratelimit-*` of a 429); boxed to keep errors small.
    pub headers: Box<HeaderMap>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                message: message.into(),
                kind,
                param: None,
                code: None,
            },
            retry_after_secs: None,
            headers: Box::default(),
        }
    }

    /// 401 for a missing, malformed or unknown API key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .with_code("invalid_api_key")
    }

    /// 403: the tenant may not use the model.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "invalid_request_error", message)
            .with_param("model")
            .with_code("model_access_denied")
    }

    /// 429 over a rate limit; `kind` is `requests` or `tokens`, as OpenAI's `type` says.
    pub fn rate_limited(
        kind: &'static str,
        message: impl Into<String>,
        retry_after: Option<Duration>,
        state: RateState,
    ) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, kind, message)
            .with_code("rate_limit_exceeded");
        if let Some(wait) = retry_after {
            // Whole seconds, rounded up, so a client that waits this long is admitted.
            e.retry_after_secs = Some(wait.as_millis().div_ceil(1000).max(1) as u64);
            if let Ok(v) = HeaderValue::from_str(&wait.as_millis().max(1).to_string()) {
                e.headers.insert("retry-after-ms", v);
            }
        }
        super::ratelimit_headers::insert(&mut e.headers, state);
        e
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// A 400 naming the offending parameter.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(message).with_param(param)
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    pub fn context_length_exceeded(message: impl Into<String>) -> Self {
        Self::invalid(message)
            .with_param("messages")
            .with_code("context_length_exceeded")
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body is larger than the server's limit of {limit} bytes."),
        )
        .with_code("request_too_large")
    }

    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message);
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    /// 502: an upstream replica failed in a way only the operator can fix.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "server_error", message).with_code("upstream_error")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.body.param = Some(param.to_string());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.body.code = Some(code);
        self
    }

    /// The JSON object sent in an error response or an SSE error event.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.body })
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Unauthenticated(m) => ApiError::unauthorized(m),
            AccessError::Denied(m) => ApiError::forbidden(m),
            AccessError::StoreUnavailable => {
                ApiError::unavailable(AccessError::StoreUnavailable.to_string(), 1)
            }
            AccessError::RateLimited {
                kind,
                message,
                retry_after,
                state,
            } => ApiError::rate_limited(kind, message, retry_after, state),
        }
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        match &e {
            ModelError::Loading => ApiError::unavailable(e.to_string(), 2),
            ModelError::NotFound(id) => ApiError::model_not_found(id),
        }
    }
}

impl From<UpstreamRefusal> for ApiError {
    fn from(e: UpstreamRefusal) -> Self {
        let mut error = ApiError::invalid(e.message);
        error.status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
        match &e.param {
            Some(p) => error.with_param(p),
            None => error,
        }
    }
}

impl From<crate::reply::ReplyError> for ApiError {
    fn from(e: crate::reply::ReplyError) -> Self {
        use crate::reply::ReplyError;
        match e {
            ReplyError::Engine(e) => e.into(),
            ReplyError::Cut(why) => ApiError::unavailable(why, 1),
            e @ ReplyError::Upstream(_) => ApiError::bad_gateway(e.to_string()),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::InvalidRequest(m) => ApiError::invalid(m),
            EngineError::Overloaded(m) => ApiError::unavailable(m, 1),
            EngineError::Shutdown => ApiError::unavailable("The model is shutting down.", 5),
            EngineError::DeadlineExceeded => {
                let mut e = ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    "The request did not finish in time.",
                );
                e.body.code = Some("timeout");
                e
            }
            EngineError::Stalled(secs) => {
                let mut e = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!("The stream was not read for {secs} s; the request was aborted and its tokens were charged."),
                );
                e.body.code = Some("stream_stalled");
                e
            }
            EngineError::Load(m) | EngineError::Internal(m) => {
                tracing::error!(error = %m, "engine error");
                ApiError::internal(
                    "The engine failed while generating; the request was not completed.",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.to_json())).into_response();
        resp.headers_mut().extend(*self.headers);
        if let Some(secs) = self.retry_after_secs {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
