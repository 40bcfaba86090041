//! The authentication middleware: every protected route learns who is calling, or the client
//! gets 401. Responses to authenticated callers carry their limits (OpenAI's `x-ratelimit-*`
//! headers) when the handler has not set fresher ones.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::auth::Principal;
use crate::metrics::RequestFacts;
use crate::secrets;
use crate::state::AppState;

/// Who is calling, and the request id for audit entries.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub request_id: Option<String>,
    /// In engine-only mode, the tenant and priority a gateway passed on
    /// (`x-rosetta-tenant`, `x-rosetta-priority`).
    pub on_behalf: Option<(String, u8)>,
    /// The request's metric labels, filled in on the way.
    pub facts: RequestFacts,
}

impl Caller {
    /// The engine scheduling priority of this caller's requests.
    pub fn priority(&self) -> u8 {
        match &self.on_behalf {
            Some((_, p)) => *p,
            None => self.principal.tenant.priority(),
        }
    }

    /// The tenant the engine schedules fairly and salts the prefix cache for.
    pub fn scheduling_tenant(&self) -> &str {
        match &self.on_behalf {
            Some((t, _)) => t,
            None => &self.principal.tenant.id,
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    pub fn tenant_id(&self) -> &str {
        &self.principal.tenant.id
    }
}

pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let authorization = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    if let Some(token) = state.engine_token() {
        if !secrets::bearer_matches(authorization, token) {
            return ApiError::unauthorized(
                "This engine serves only its gateways: send the engine token as a bearer token.",
            )
            .into_response();
        }
    }
    let principal = match state.access().authenticate(authorization) {
        Ok(p) => p,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let tenant = principal.tenant.clone();
    // Only an engine-only process (on a private network, behind a gateway) trusts these.
    let on_behalf = state.engine_only().then(|| {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let tenant = header("x-rosetta-tenant").map(str::to_string);
        let priority = header("x-rosetta-priority").and_then(|p| p.parse().ok());
        tenant.map(|t| (t, priority.unwrap_or(rosetta_engine::DEFAULT_PRIORITY)))
    });
    let facts = req
        .extensions()
        .get::<RequestFacts>()
        .cloned()
        .unwrap_or_default();
    // The configured tenant (never a header's): label values stay bounded.
    facts.update(|l| l.tenant = principal.tenant.id.clone());
    crate::telemetry::attribute(
        &tracing::Span::current(),
        "rosetta.tenant",
        principal.tenant.id.as_str(),
    );
    req.extensions_mut().insert(Caller {
        principal,
        request_id,
        on_behalf: on_behalf.flatten(),
        facts,
    });
    let mut resp = next.run(req).await;
    // Handlers set the headers of admitted (and refused) requests; every other response
    // gets the tenant-wide limits as they stand.
    let has = |name: &str| resp.headers().contains_key(name);
    if !(has("x-ratelimit-limit-requests") && has("x-ratelimit-limit-tokens")) {
        let mut state = tenant.limiter.peek("");
        if has("x-ratelimit-limit-requests") {
            state.requests = None;
        }
        if has("x-ratelimit-limit-tokens") {
            state.tokens = None;
        }
        super::ratelimit_headers::insert(resp.headers_mut(), state);
    }
    resp
}
