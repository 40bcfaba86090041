//! Access control on the request path: authenticate the key, decide by policy whether its
//! tenant may use the model (audited), and admit the request within the tenant's limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rosetta_config::{Config, OnStoreError, RateLimitBackend};

use crate::auth::{AuthError, Authenticator, Principal};
use crate::metrics::Metrics;
use crate::policy::{audit, Action, AuditEntry, AuditLog, Decision, PolicyEngine};
use crate::ratelimit::{
    duration_text, Admission, LimitClock, RateState, Rejection, SharedStore, Sharing,
};
use crate::tenant::Tenant;

/// Why access was refused. The HTTP edge turns each into OpenAI's error (401, 403, 429).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccessError {
    /// A missing, malformed or unknown API key.
    #[error("{0}")]
    Unauthenticated(String),
    /// The tenant's policies do not allow the model.
    #[error("{0}")]
    Denied(String),
    /// The shared rate-limit store is unreachable and `ratelimit.on_store_error` is `deny`.
    #[error("The rate-limit store is unavailable; retry shortly.")]
    StoreUnavailable,
    /// Over a rate limit: `kind` is `requests` or `tokens`, as OpenAI's error type says.
    #[error("{message}")]
    RateLimited {
        kind: &'static str,
        message: String,
        retry_after: Option<std::time::Duration>,
        state: RateState,
    },
}

#[derive(Debug)]
pub struct Access {
    pub auth: Authenticator,
    pub policy: PolicyEngine,
    audit: AuditLog,
    /// When each (tenant, model, action) allowance of a model listing was last audited.
    listed: Mutex<HashMap<(String, String, &'static str), std::time::Instant>>,
    /// How often an allowed listing of one model to one tenant is audited again.
    list_interval: std::time::Duration,
    /// Engine-only mode: every request is allowed, unlimited and unaudited (the gateway in
    /// front has decided).
    open: bool,
    /// Counts refusals (rate limits, policy denials).
    metrics: Arc<Metrics>,
    /// Tenants by id with the config they were built from: a reload keeps a tenant (and its
    /// rate-limit state) whose tier and limits did not change.
    tenants: HashMap<String, (rosetta_config::TenantConfig, Arc<Tenant>)>,
    audit_path: Option<std::path::PathBuf>,
    sharing: Sharing,
}

impl Access {
    /// Builds access control from a config; fails on invalid policies or an unwritable
    /// audit log. `clock` drives the rate limits.
    pub fn from_config(config: &Config, clock: &LimitClock) -> anyhow::Result<Self> {
        Self::with_metrics(config, clock, Arc::new(Metrics::new(true)))
    }

    /// [`Access::from_config`], counting refusals (and the shared store's state) in `metrics`.
    pub fn with_metrics(
        config: &Config,
        clock: &LimitClock,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let sharing = sharing(config, &metrics)?;
        Self::build(config, clock, metrics, sharing, None)
    }

    /// Access for a new config that replaces this one (a reload): tenants whose tier and
    /// limits are unchanged keep their limiters (a reload does not refill anyone's limits),
    /// the audit log stays open if its path is the same, the shared store stays.
    pub fn reloaded(&self, config: &Config, clock: &LimitClock) -> anyhow::Result<Self> {
        Self::build(
            config,
            clock,
            self.metrics.clone(),
            self.sharing.clone(),
            Some(self),
        )
    }

    fn build(
        config: &Config,
        clock: &LimitClock,
        metrics: Arc<Metrics>,
        sharing: Sharing,
        previous: Option<&Access>,
    ) -> anyhow::Result<Self> {
        let tenant_configs = config.effective_tenants();
        let policy = PolicyEngine::new(config, &tenant_configs)?;
        let reuse = |t: &rosetta_config::TenantConfig| {
            let (old, tenant) = previous?.tenants.get(&t.id)?;
            (old.tier == t.tier && old.limits == t.limits).then(|| tenant.clone())
        };
        let tenants: HashMap<String, (rosetta_config::TenantConfig, Arc<Tenant>)> = tenant_configs
            .iter()
            .map(|t| {
                let tenant =
                    reuse(t).unwrap_or_else(|| Arc::new(Tenant::shared(t, clock, &sharing)));
                (t.id.clone(), (t.clone(), tenant))
            })
            .collect();
        let anonymous = config
            .anonymous_tenant_id()
            .and_then(|id| tenants.get(id).map(|t| t.1.clone()));
        let mut auth = Authenticator::new(anonymous);
        for t in &tenant_configs {
            for k in &t.keys {
                let tenant = tenants[&t.id].1.clone();
                if !auth.add_key(&k.hash, k.name.as_deref(), tenant) {
                    anyhow::bail!(
                        "tenant `{}` has a key hash that is not `sha256:<hex>`",
                        t.id
                    );
                }
            }
        }
        let audit = match (&config.audit.path, previous) {
            (path, Some(old)) if *path == old.audit_path => old.audit.clone(),
            (Some(p), _) => AuditLog::to_file(p)
                .with_context(|| format!("cannot open the audit log {}", p.display()))?,
            (None, _) => AuditLog::tracing_only(),
        };
        Ok(Self {
            auth,
            policy,
            audit,
            listed: Mutex::default(),
            list_interval: std::time::Duration::from_secs(config.audit.list_interval_seconds),
            open: false,
            metrics,
            tenants,
            audit_path: config.audit.path.clone(),
            sharing,
        })
    }

    fn count_rejection(&self, tenant: &str, r: &Rejection) {
        let kind = match r {
            Rejection::Requests { .. } => "requests",
            Rejection::Tokens { .. } | Rejection::TooLarge { .. } => "tokens",
            Rejection::Concurrency { .. } => "concurrency",
            Rejection::StoreUnavailable => "store_unavailable",
        };
        self.metrics
            .gateway
            .rate_limited
            .with_label_values(&[self.metrics.tenant(tenant), kind])
            .inc();
    }

    /// For `rosetta serve --engine-only`: no keys, policies, limits or audit here; the
    /// gateway in front of this process has applied them.
    pub fn open(config: &Config) -> anyhow::Result<Self> {
        let mut open = config.clone();
        open.auth = rosetta_config::AuthConfig {
            allow_unauthenticated: true,
            anonymous_tenant: None,
            keys_file: None,
        };
        open.tenants.clear();
        open.ratelimit = Default::default();
        open.policies.files.clear();
        open.audit.path = None;
        let mut access = Self::from_config(&open, &LimitClock::monotonic())?;
        access.open = true;
        Ok(access)
    }

    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Principal, AccessError> {
        self.auth
            .authenticate(authorization)
            .map_err(|e: AuthError| AccessError::Unauthenticated(e.message().to_string()))
    }

    /// Decides and records whether the caller may do `action` on `model`.
    pub fn decide(
        &self,
        who: &Principal,
        model: &str,
        action: Action,
        request_id: Option<&str>,
    ) -> Decision {
        self.decide_audited(who, model, action, request_id, true)
    }

    /// `decide` for listing models (`/v1/models`, which decides for every model on every
    /// call): a denial is always audited, an allowance once per tenant, model and action
    /// per `audit.list_interval_seconds`.
    pub fn decide_for_listing(
        &self,
        who: &Principal,
        model: &str,
        action: Action,
        request_id: Option<&str>,
    ) -> Decision {
        let key = (who.tenant.id.clone(), model.to_string(), action.name());
        let now = std::time::Instant::now();
        let mut seen = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        let due = seen
            .get(&key)
            .is_none_or(|&at| now.duration_since(at) >= self.list_interval);
        let decision = self.decide_audited(who, model, action, request_id, due);
        if due && decision.allowed {
            seen.insert(key, now);
        }
        decision
    }

    fn decide_audited(
        &self,
        who: &Principal,
        model: &str,
        action: Action,
        request_id: Option<&str>,
        audit_allowed: bool,
    ) -> Decision {
        if self.open {
            return Decision {
                allowed: true,
                policies: vec!["engine-only".into()],
                reasons: Vec::new(),
            };
        }
        let decision = self.policy.decide(&who.tenant.id, model, action);
        let licence = self
            .policy
            .model(model)
            .map(|m| m.licence_id.as_str())
            .unwrap_or("");
        if decision.allowed && !audit_allowed {
            return decision;
        }
        self.audit.record(&AuditEntry {
            ts: audit::timestamp(),
            request_id,
            tenant: &who.tenant.id,
            key: who.key_name.as_deref(),
            action: action.name(),
            model,
            licence,
            decision: if decision.allowed { "allow" } else { "deny" },
            policies: &decision.policies,
            reasons: &decision.reasons,
        });
        decision
    }

    /// `decide` for invoking a model, as a 403 naming the model, licence and reasons.
    pub fn authorize(
        &self,
        who: &Principal,
        model: &str,
        request_id: Option<&str>,
    ) -> Result<(), AccessError> {
        let decision = self.decide(who, model, Action::Invoke, request_id);
        if decision.allowed {
            return Ok(());
        }
        let licence_id = self
            .policy
            .model(model)
            .map_or("", |m| m.licence_id.as_str());
        let tenant = self.metrics.tenant(&who.tenant.id);
        // Once per denial, under its first deciding policy, so the series sum to denials.
        let policy = decision
            .policies
            .first()
            .map_or("default_deny", String::as_str);
        self.metrics
            .gateway
            .policy_denials
            .with_label_values(&[tenant, licence_id, policy])
            .inc();
        let licence = self
            .policy
            .model(model)
            .map(|m| format!(" (licence: {}, `{}`)", m.licence_name, m.licence_id))
            .unwrap_or_default();
        let policies = if decision.policies.is_empty() {
            String::new()
        } else {
            format!(" [policy: {}]", decision.policies.join(", "))
        };
        Err(AccessError::Denied(format!(
            "Tenant `{}` may not use the model `{model}`{licence}: {}.{policies}",
            who.tenant.id,
            decision.reasons.join("; "),
        )))
    }

    /// Writes out the audit log (at shutdown).
    pub fn close_audit(&self) {
        self.audit.close();
    }

    /// 429 before any prompt work when the tenant's limits would refuse the request anyway.
    pub async fn precheck(&self, who: &Principal, model: &str) -> Result<(), AccessError> {
        let limiter = &who.tenant.limiter;
        if self.open || limiter.is_unlimited() {
            return Ok(());
        }
        limiter.precheck(model).await.map_err(|r| {
            self.count_rejection(&who.tenant.id, &r);
            rejection_error(&who.tenant.id, r)
        })
    }

    /// Admits a request that may use up to `tokens` tokens within the tenant's limits.
    pub async fn admit(
        &self,
        who: &Principal,
        model: &str,
        tokens: u64,
    ) -> Result<Admission, AccessError> {
        let limiter = &who.tenant.limiter;
        if self.open || limiter.is_unlimited() {
            return Ok(Admission::unlimited());
        }
        limiter.admit(model, tokens).await.map_err(|r| {
            self.count_rejection(&who.tenant.id, &r);
            rejection_error(&who.tenant.id, r)
        })
    }
}

/// How limits are shared with other gateway replicas (`ratelimit`).
fn sharing(config: &Config, metrics: &Metrics) -> anyhow::Result<Sharing> {
    let rl = &config.ratelimit;
    let store = match (rl.backend, &rl.redis) {
        (RateLimitBackend::Redis, Some(redis)) => {
            let url = match (&redis.url, &redis.url_env) {
                (Some(u), _) => u.clone(),
                (None, Some(var)) => std::env::var(var)
                    .with_context(|| format!("ratelimit.redis.url_env: ${var} is not set"))?,
                (None, None) => anyhow::bail!("ratelimit.redis needs `url` or `url_env`"),
            };
            let gauge = metrics.gateway.store_up.with_label_values(&["redis"]);
            Some(Arc::new(SharedStore::new(
                &url,
                &redis.key_prefix,
                std::time::Duration::from_millis(redis.timeout_ms.max(1)),
                gauge,
            )?))
        }
        _ => None,
    };
    Ok(Sharing {
        store,
        replicas: rl.gateway_replicas.unwrap_or(1),
        deny_on_store_error: rl.on_store_error == OnStoreError::Deny,
    })
}

fn scope(tenant: &str, model: &Option<String>) -> String {
    match model {
        Some(m) => format!("tenant `{tenant}` on model `{m}`"),
        None => format!("tenant `{tenant}`"),
    }
}

/// A refusal in OpenAI's words (the edge adds Retry-After and the rate-limit headers).
fn rejection_error(tenant: &str, r: Rejection) -> AccessError {
    let limited = |kind, message, retry_after, state| AccessError::RateLimited {
        kind,
        message,
        retry_after,
        state,
    };
    match r {
        Rejection::Requests {
            limit,
            model,
            wait,
            state,
        } => limited(
            "requests",
            format!(
                "Rate limit reached for {} on requests per min (RPM): Limit {limit}. Please try again in {}.",
                scope(tenant, &model),
                duration_text(wait)
            ),
            Some(wait),
            state,
        ),
        Rejection::Tokens {
            limit,
            requested,
            model,
            wait,
            state,
        } => limited(
            "tokens",
            format!(
                "Rate limit reached for {} on tokens per min (TPM): Limit {limit}, Requested {requested}. Please try again in {}.",
                scope(tenant, &model),
                duration_text(wait)
            ),
            Some(wait),
            state,
        ),
        Rejection::TooLarge {
            limit,
            requested,
            model,
        } => limited(
            "tokens",
            format!(
                "Request too large for {} on tokens per min (TPM): Limit {limit}, Requested {requested} (prompt tokens plus max_tokens for each choice). Lower max_tokens or shorten the prompt.",
                scope(tenant, &model)
            ),
            None,
            Default::default(),
        ),
        Rejection::Concurrency { limit, state } => limited(
            "requests",
            format!(
                "Too many concurrent requests for {}: Limit {limit}. Please try again when one has finished.",
                scope(tenant, &None)
            ),
            Some(std::time::Duration::from_secs(1)),
            state,
        ),
        Rejection::StoreUnavailable => AccessError::StoreUnavailable,
    }
}
