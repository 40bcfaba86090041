//! Who may use the server: API keys, tenants, their limits, access policies and the audit log.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How requests prove who they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Serve requests that carry no configured API key (no `Authorization` header, or an
    /// unknown key, as SDKs send placeholder keys) as the anonymous tenant. Keys that are
    /// configured still map to their tenants. Off by default: every request needs a key.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// The tenant unauthenticated requests act as. Default: a built-in `anonymous` tenant
    /// (commercial, no accepted licences, no limits).
    #[serde(default)]
    pub anonymous_tenant: Option<String>,
    /// A YAML file of more API keys, tenant id → `[{hash, name}]`, added to those tenants
    /// (for key hashes kept in a Kubernetes Secret). Relative to the config file.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub keys_file: Option<std::path::PathBuf>,
}

/// The built-in tenant unauthenticated requests use when `auth.anonymous_tenant` is not set.
pub const ANONYMOUS_TENANT: &str = "anonymous";

/// A customer, team or application: what it is entitled to and how much it may use.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// Its API keys, stored as hashes (`rosetta keys new` prints a key and its hash).
    #[serde(default)]
    pub keys: Vec<ApiKeyConfig>,
    /// Scheduling tier of its requests in the engines.
    #[serde(default)]
    pub tier: Tier,
    /// Does it use models commercially? Non-commercial licences are denied when true.
    #[serde(default = "default_true")]
    pub commercial: bool,
    /// Licence ids it has accepted (for licences with `acceptance_required`).
    #[serde(default)]
    pub accepted_licences: Vec<String>,
    /// Where it is: an ISO 3166-1 alpha-2 country (`DE`) or a region (`EU`).
    #[serde(default)]
    pub region: Option<String>,
    /// Its monthly active users, checked against licences' user caps.
    #[serde(default)]
    pub monthly_active_users: Option<u64>,
    /// If given, the only models (ids or aliases) it may use.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub limits: Limits,
}

/// One API key of a tenant.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// `sha256:` and the hex SHA-256 of the key. The key itself is never stored.
    pub hash: String,
    /// A label for logs and audit entries, for example `ci` or `alice-laptop`.
    #[serde(default)]
    pub name: Option<String>,
}

/// Scheduling tiers: `high` requests are served first and preempted last.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    High,
    #[default]
    Normal,
    Low,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::High => "high",
            Tier::Normal => "normal",
            Tier::Low => "low",
        }
    }
}

/// A tenant's rate limits; every limit is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute (bursts up to this many at once).
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute: a request reserves its prompt tokens plus `max_tokens` (times `n`)
    /// when admitted and gives back what it did not use when it ends.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight at once.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Limits for single models, by model id, on top of the tenant's.
    #[serde(default)]
    pub models: BTreeMap<String, ModelLimits>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
}

/// Access policies (Cedar).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Use the shipped policies (config/policies/default.cedar).
    #[serde(default = "default_true")]
    pub default_policies: bool,
    /// More Cedar policy files, validated against the schema in
    /// config/policies/rosetta.cedarschema. Relative paths are resolved against the config.
    #[serde(default)]
    pub files: Vec<PathBuf>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            default_policies: true,
            files: Vec::new(),
        }
    }
}

/// Where access decisions are recorded.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Append each decision as a JSON line to this file. Decisions are always also logged
    /// under the `rosetta::audit` tracing target.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `/v1/models` decides for every model on every call: an allowance there is audited
    /// once per tenant, model and action in this many seconds (denials always).
    #[serde(default = "default_list_interval")]
    pub list_interval_seconds: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: None,
            list_interval_seconds: default_list_interval(),
        }
    }
}

fn default_list_interval() -> u64 {
    300
}

fn default_true() -> bool {
    true
}

/// Is `hash` of the form `sha256:` + 64 lowercase hex digits?
pub fn is_key_hash(hash: &str) -> bool {
    hash.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl TenantConfig {
    /// A tenant with every default: commercial, no accepted licences, no limits.
    pub fn with_defaults(id: &str) -> Self {
        Self {
            id: id.to_string(),
            keys: Vec::new(),
            tier: Tier::default(),
            commercial: true,
            accepted_licences: Vec::new(),
            region: None,
            monthly_active_users: None,
            models: None,
            limits: Limits::default(),
        }
    }
}

impl crate::Config {
    /// The configured tenants, plus the built-in anonymous one when unauthenticated requests
    /// use it.
    pub fn effective_tenants(&self) -> Vec<TenantConfig> {
        let mut tenants = self.tenants.clone();
        let builtin = self.auth.allow_unauthenticated
            && self.auth.anonymous_tenant.is_none()
            && !tenants.iter().any(|t| t.id == ANONYMOUS_TENANT);
        if builtin {
            tenants.push(TenantConfig::with_defaults(ANONYMOUS_TENANT));
        }
        tenants
    }

    /// The tenant unauthenticated requests act as, if they are allowed.
    pub fn anonymous_tenant_id(&self) -> Option<&str> {
        self.auth.allow_unauthenticated.then(|| {
            self.auth
                .anonymous_tenant
                .as_deref()
                .unwrap_or(ANONYMOUS_TENANT)
        })
    }
}
