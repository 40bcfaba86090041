//! The gateway's own metrics (`rosetta_*`): what no engine can tell — who was refused and
//! why, where requests were routed, which languages arrive and what each costs in tokens.
//! Every label value comes from the config or from closed sets (endpoints, language codes,
//! reasons), never from raw input.

use prometheus::{IntCounterVec, IntGaugeVec, Registry};

use super::families::{counter, gauge, histogram};

pub struct GatewayFamilies {
    pub requests: IntCounterVec,
    pub request_duration: prometheus::HistogramVec,
    pub in_flight: IntGaugeVec,
    pub request_bytes: IntCounterVec,
    pub response_bytes: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub policy_denials: IntCounterVec,
    pub routing: IntCounterVec,
    pub retries: IntCounterVec,
    pub replica_errors: IntCounterVec,
    pub breaker_state: IntGaugeVec,
    pub store_up: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub prompt_tokens: IntCounterVec,
    pub generation_tokens: IntCounterVec,
    pub text_characters: IntCounterVec,
    pub text_tokens: IntCounterVec,
}

impl GatewayFamilies {
    pub fn register(r: &Registry) -> Self {
        Self {
            requests: counter(
                r,
                "rosetta_requests_total",
                "HTTP requests answered, by endpoint, model or alias asked for, route alias, language, tenant and status.",
                &["endpoint", "model", "route", "language", "tenant", "status"],
            ),
            request_duration: histogram(
                r,
                "rosetta_request_duration_seconds",
                "Time from a request's arrival to the end of its response body (a stream's last event).",
                &["endpoint", "status"],
                super::buckets::GENAI_REQUEST_DURATION.to_vec(),
            ),
            in_flight: gauge(
                r,
                "rosetta_requests_in_flight",
                "Requests being answered now (a stream until its last event).",
                &["endpoint"],
            ),
            request_bytes: counter(
                r,
                "rosetta_request_bytes_total",
                "Bytes of request bodies received.",
                &["endpoint"],
            ),
            response_bytes: counter(
                r,
                "rosetta_response_bytes_total",
                "Bytes of response bodies sent.",
                &["endpoint"],
            ),
            rate_limited: counter(
                r,
                "rosetta_rate_limited_total",
                "Requests refused by a tenant's rate limits, by limit kind (requests, tokens, concurrency).",
                &["tenant", "kind"],
            ),
            policy_denials: counter(
                r,
                "rosetta_policy_denials_total",
                "Invocations denied by access policy, by tenant, the model's licence and the first deciding policy (default_deny when no policy permitted it).",
                &["tenant", "licence", "policy"],
            ),
            routing: counter(
                r,
                "rosetta_routing_decisions_total",
                "Requests served, by route alias (empty for a model asked by name), the model chosen, whether it was a fallback (not the first candidate), and where the language came from.",
                &["route", "model", "fallback", "language_source"],
            ),
            retries: counter(
                r,
                "rosetta_retries_total",
                "Times a request moved on to another replica or candidate model before anything was sent to its client.",
                &["model"],
            ),
            replica_errors: counter(
                r,
                "rosetta_replica_errors_total",
                "Attempts a replica could not serve, by replica and reason.",
                &["replica", "reason"],
            ),
            breaker_state: gauge(
                r,
                "rosetta_breaker_state",
                "Circuit breaker of each remote replica: 0 closed, 1 half-open, 2 open.",
                &["replica"],
            ),
            store_up: gauge(
                r,
                "rosetta_ratelimit_store_up",
                "Whether the shared rate-limit store answered the last limit check (1) or limits are judged locally (0).",
                &["backend"],
            ),
            config_reloads: counter(
                r,
                "rosetta_config_reloads_total",
                "Config reloads (SIGHUP or a changed file) by result: applied, or refused (the old config keeps serving).",
                &["result"],
            ),
            prompt_tokens: counter(
                r,
                "rosetta_language_prompt_tokens_total",
                "Prompt tokens (after the chat template) by request language and model.",
                &["language", "model"],
            ),
            generation_tokens: counter(
                r,
                "rosetta_language_generation_tokens_total",
                "Generated tokens by request language and model.",
                &["language", "model"],
            ),
            text_characters: counter(
                r,
                "rosetta_language_text_characters_total",
                "Characters of the text the language was read from, by language and model.",
                &["language", "model"],
            ),
            text_tokens: counter(
                r,
                "rosetta_language_text_tokens_total",
                "The same text's tokens by the model's tokenizer: divided by rosetta_language_text_characters_total it is what the tokenizer charges per character in each language.",
                &["language", "model"],
            ),
        }
    }
}
