//! The authentication middleware: every protected route learns who is calling, or the client
//! gets 401. Responses to authenticated callers carry their token limits (OpenAI's
//! `x-ratelimit-*` headers) when the handler has not set fresher ones.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::Principal;
use crate::state::AppState;

/// Who is calling, and the request id for audit entries.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub request_id: Option<String>,
}

impl Caller {
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    pub fn tenant_id(&self) -> &str {
        &self.principal.tenant.id
    }
}

pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let authorization = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    let principal = match state.access().authenticate(authorization) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let tenant = principal.tenant.clone();
    req.extensions_mut().insert(Caller {
        principal,
        request_id,
    });
    let mut resp = next.run(req).await;
    if !resp.headers().contains_key("x-ratelimit-limit-tokens") {
        // Without a model, only the tenant-wide limit applies.
        let state = tenant.limiter.peek("");
        super::ratelimit_headers::insert(resp.headers_mut(), state);
    }
    resp
}
