//! Prometheus metrics at `GET /metrics`: the engine's under vLLM's names (`engine`), the
//! OpenTelemetry GenAI server metrics (`genai`), and the gateway's own (`gateway`), in one
//! registry. Each measurement is taken in one place on the request path; label values are
//! bounded (config ids and closed sets only).

pub mod buckets;
pub mod engine;
mod families;
pub mod gateway;
pub mod genai;
mod openmetrics;
pub mod request;

use std::sync::{Mutex, OnceLock};

use prometheus::{Encoder, Registry, TextEncoder};
use rosetta_engine::{EngineLoad, Observer};

use engine::EngineFamilies;
use gateway::GatewayFamilies;
use genai::GenAiFamilies;

pub use request::{GenerationMeasure, RequestFacts};

/// Content type of the Prometheus text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics, served when the scraper asks for it.
pub const OPENMETRICS_FORMAT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub struct Metrics {
    registry: Registry,
    /// Registered with the first local model: token-count buckets follow its context length.
    engine: OnceLock<EngineFamilies>,
    pub gateway: GatewayFamilies,
    pub genai: GenAiFamilies,
    tenant_label: bool,
    /// One scrape at a time: running totals are copied into counters while scraping.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// What a scrape reads from the server at that moment.
pub struct Snapshot<'a> {
    /// Each local model: its id, its engine's load, whether prefix caching is on.
    pub engines: Vec<(&'a str, EngineLoad, bool)>,
    /// Each remote replica: its name and breaker state (0 closed, 1 half-open, 2 open).
    pub breakers: Vec<(&'a str, i64)>,
}

impl Metrics {
    pub fn new(tenant_label: bool) -> Self {
        let registry = Registry::new();
        Self {
            gateway: GatewayFamilies::register(&registry),
            genai: GenAiFamilies::register(&registry),
            engine: OnceLock::new(),
            registry,
            tenant_label,
            scrape: Mutex::new(()),
        }
    }

    /// The observer a local model's engine reports to.
    pub fn engine_observer(&self, model: &str, max_model_len: usize) -> Observer {
        let families = self
            .engine
            .get_or_init(|| EngineFamilies::register(&self.registry, max_model_len));
        engine::handle(families.observer(model))
    }

    /// The tenant label's value: the tenant id, or nothing with `tenant_label: false`.
    pub fn tenant<'a>(&self, tenant: &'a str) -> &'a str {
        if self.tenant_label {
            tenant
        } else {
            ""
        }
    }

    /// Every family in the Prometheus text format, or OpenMetrics.
    pub fn render(&self, now: &Snapshot<'_>, openmetrics: bool) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(engine) = self.engine.get() {
            for (model, load, prefix) in &now.engines {
                engine.sync_load(model, load, *prefix);
            }
        }
        for (replica, state) in &now.breakers {
            self.gateway
                .breaker_state
                .with_label_values(&[*replica])
                .set(*state);
        }
        let families = self.registry.gather();
        if openmetrics {
            return openmetrics::encode(&families);
        }
        let mut out = Vec::new();
        // Only fails on a family without metrics or an I/O error, neither possible here.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
