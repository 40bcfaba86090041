//! Routing by language to models, and the replicas that serve each model.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Is `code` shaped like an ISO 639 code: two or three lower-case ASCII letters (`en`,
/// `swh`)? Used for model languages, route rules and client-stated languages.
pub fn is_language_code(code: &str) -> bool {
    (2..=3).contains(&code.len()) && code.chars().all(|c| c.is_ascii_lowercase())
}

/// A model alias (for example `auto`) routed by the request's language.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The name clients send as `model`; must not be a model id.
    pub alias: String,
    /// Tried in order; the first whose languages contain the request's language gives the
    /// candidate models, in order.
    #[serde(default)]
    pub rules: Vec<RouteRule>,
    /// Models tried after the matching rule's (or when none matches, also for `und`).
    #[serde(default)]
    pub fallback: Vec<String>,
}

impl RouteConfig {
    /// Every model this alias may route to, once each: its rules' models in order, then the
    /// fallbacks.
    pub fn models(&self) -> Vec<String> {
        let all = self.rules.iter().flat_map(|r| r.models.iter());
        unique(all.chain(self.fallback.iter()))
    }

    /// The languages its rules name, once each, in order.
    pub fn languages(&self) -> Vec<String> {
        unique(self.rules.iter().flat_map(|r| r.languages.iter()))
    }
}

fn unique<'a>(items: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// ISO 639-1 (or 639-3) codes.
    pub languages: Vec<String>,
    /// Candidate model ids, best first.
    pub models: Vec<String>,
}

/// An OpenAI-compatible upstream serving a model: another `rosetta` (for example
/// `rosetta serve --engine-only`), vLLM, TGI or llama.cpp's server.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteReplica {
    /// Base URL, for example `http://10.0.0.5:8080` (a trailing `/v1` is accepted). Or,
    /// instead, `dns` and `port`.
    #[serde(default)]
    pub url: String,
    /// A DNS name whose every address is a replica (e.g. a Kubernetes headless Service,
    /// `rosetta-engine-qwen-pods.ai.svc.cluster.local`), resolved every
    /// `pool.dns_refresh_ms`: new addresses join after a passing health check, vanished
    /// ones stop taking requests (those running finish).
    #[serde(default)]
    pub dns: Option<String>,
    /// With `dns`: the replicas' port.
    #[serde(default)]
    pub port: Option<u16>,
    /// With `dns`: `http` or `https`.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// The model name the upstream knows. Default: the model's id.
    #[serde(default)]
    pub model: Option<String>,
    /// Sent as `Authorization: Bearer …`. Default: none.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Or: the environment variable holding the key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Milliseconds to establish a connection.
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// Milliseconds until the response starts (headers and, when streaming, the first chunk).
    #[serde(default = "default_first_token_ms")]
    pub first_token_timeout_ms: u64,
    /// Milliseconds for the whole request.
    #[serde(default = "default_request_ms")]
    pub request_timeout_ms: u64,
    /// Path of the health check (GET, expects 2xx).
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// Where the upstream reports its own load, read with each health check: `/load` for a
    /// `rosetta` upstream, `/metrics` for vLLM (its Prometheus gauges). Default: none; the
    /// gateway then judges a remote by the requests it has in flight there.
    #[serde(default)]
    pub load_path: Option<String>,
    /// Extension fields passed on to this upstream besides the OpenAI fields Rosetta has
    /// validated, e.g. `[priority, chat_template_kwargs]` for a vLLM upstream. Default:
    /// none; anything else a client sends stays at the gateway.
    #[serde(default)]
    pub forward_fields: Vec<String>,
    /// Send vLLM's `cache_salt`: a keyed hash of the tenant (see `server.secret`), so that
    /// tenants never share the upstream's prefix cache. For vLLM upstreams (0.9 and later).
    #[serde(default)]
    pub cache_salt: bool,
}

fn default_scheme() -> String {
    "http".into()
}

fn default_connect_ms() -> u64 {
    2_000
}
fn default_first_token_ms() -> u64 {
    60_000
}
fn default_request_ms() -> u64 {
    600_000
}
fn default_health_path() -> String {
    "/health".into()
}

/// How replicas are chosen and watched.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// A replica with this many requests queued (local: waiting in the engine; remote:
    /// in flight from this gateway) takes no more; when every replica of every candidate is
    /// past it, requests get 503 at once.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// Milliseconds between health checks of remote replicas.
    #[serde(default = "default_health_ms")]
    pub health_interval_ms: u64,
    /// Consecutive failures that open a replica's circuit breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// Milliseconds an open breaker keeps a replica out before one probe may close it.
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
    /// Requests whose first this-many prompt characters match prefer the same replica (its
    /// prefix cache hits)...
    #[serde(default = "default_affinity_chars")]
    pub affinity_prefix_chars: usize,
    /// ...unless it has this many more requests in flight than the least busy replica.
    #[serde(default = "default_affinity_slack")]
    pub affinity_max_imbalance: usize,
    /// Milliseconds between resolutions of `remote[].dns` names.
    #[serde(default = "default_dns_refresh_ms")]
    pub dns_refresh_ms: u64,
    /// Name servers for `remote[].dns` (`ip:port`), instead of the system's (resolv.conf).
    #[serde(default)]
    pub dns_servers: Vec<String>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_queue: default_max_queue(),
            health_interval_ms: default_health_ms(),
            breaker_failures: default_breaker_failures(),
            breaker_open_ms: default_breaker_open_ms(),
            affinity_prefix_chars: default_affinity_chars(),
            affinity_max_imbalance: default_affinity_slack(),
            dns_refresh_ms: default_dns_refresh_ms(),
            dns_servers: Vec::new(),
        }
    }
}

fn default_dns_refresh_ms() -> u64 {
    5_000
}

fn default_max_queue() -> usize {
    256
}
fn default_health_ms() -> u64 {
    5_000
}
fn default_breaker_failures() -> u32 {
    3
}
fn default_breaker_open_ms() -> u64 {
    10_000
}
fn default_affinity_chars() -> usize {
    512
}
fn default_affinity_slack() -> usize {
    4
}
