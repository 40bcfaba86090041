//! State shared by every request handler.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use rosetta_config::{ModelConfig, RequestLimits};

use crate::access::Access;
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::registry::LocalModel;
use crate::router::Router;
use crate::secrets::SaltKey;

/// Why a local model cannot be had.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// Models are still loading; retry shortly.
    #[error("The server is still loading its models; retry shortly.")]
    Loading,
    /// No such model here.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    NotFound(String),
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
    pub max_body_bytes: usize,
}

/// The parts of the request path built from the config at start.
pub struct Services {
    /// Replaced whole by a config reload; a request keeps the one it started with.
    pub access: RwLock<Arc<Access>>,
    pub router: RwLock<Arc<Router>>,
    pub pool: Arc<Pool>,
    /// Serving only this process's engines for a gateway: no auth, policies or limits, and
    /// the tenant headers the gateway sends are trusted.
    pub engine_only: bool,
    /// Size limits checked right after parsing.
    pub request_limits: RequestLimits,
    /// Browser origins allowed by CORS; none by default.
    pub cors_origins: Vec<String>,
    /// Keys tenants' prefix-cache salts.
    pub salt_key: SaltKey,
    /// Engine-only mode: the bearer token gateways must send.
    pub engine_token: Option<String>,
    /// Every metric of this process (`GET /metrics`).
    pub metrics: Arc<Metrics>,
    /// Whether `GET /metrics` is served.
    pub metrics_enabled: bool,
}

struct Inner {
    /// Set once every local model has loaded; until then the server is alive, not ready.
    models: OnceLock<HashMap<String, Arc<LocalModel>>>,
    /// Every configured model, in config order.
    configured: Vec<ModelConfig>,
    fingerprint: String,
    services: Services,
    drain: Drain,
}

impl AppState {
    pub fn new(configured: Vec<ModelConfig>, max_body_bytes: usize, services: Services) -> Self {
        Self {
            inner: Arc::new(Inner {
                models: OnceLock::new(),
                configured,
                services,
                drain: Drain::default(),
                fingerprint: format!("fp_rosetta_{}", env!("CARGO_PKG_VERSION").replace('.', "")),
            }),
            max_body_bytes,
        }
    }

    /// Publishes the loaded models; the server becomes ready.
    pub fn set_models(&self, models: Vec<LocalModel>) {
        let map = models
            .into_iter()
            .map(|m| (m.id.clone(), Arc::new(m)))
            .collect();
        let _ = self.inner.models.set(map);
    }

    /// Every local model is loaded, its engine can serve, and the server is not draining.
    pub fn is_ready(&self) -> bool {
        !self.inner.drain.is_draining()
            && self
                .inner
                .models
                .get()
                .is_some_and(|m| m.values().all(|m| m.engine.is_healthy()))
    }

    /// Some local engine has died; this process cannot serve all its models any more.
    pub fn engines_failed(&self) -> bool {
        self.inner
            .models
            .get()
            .is_some_and(|m| m.values().any(|m| !m.engine.is_healthy()))
    }

    fn loaded(&self) -> Result<&HashMap<String, Arc<LocalModel>>, ModelError> {
        self.inner.models.get().ok_or(ModelError::Loading)
    }

    /// The local model a request names: 503 while loading, 404 if unknown here.
    pub fn model(&self, id: &str) -> Result<Arc<LocalModel>, ModelError> {
        self.loaded()?
            .get(id)
            .cloned()
            .ok_or_else(|| ModelError::NotFound(id.to_string()))
    }

    /// The local model, if it is loaded.
    pub fn loaded_model(&self, id: &str) -> Option<Arc<LocalModel>> {
        self.inner.models.get()?.get(id).cloned()
    }

    /// Local models, in config order.
    pub fn models(&self) -> Result<Vec<Arc<LocalModel>>, ModelError> {
        let loaded = self.loaded()?;
        Ok(self
            .inner
            .configured
            .iter()
            .filter_map(|m| loaded.get(&m.id).cloned())
            .collect())
    }

    /// Every configured model (local or remote), in config order.
    pub fn configured(&self) -> &[ModelConfig] {
        &self.inner.configured
    }

    /// Access control as the current config says (a request keeps the one it started with).
    pub fn access(&self) -> Arc<Access> {
        self.inner
            .services
            .access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn router(&self) -> Arc<Router> {
        self.inner
            .services
            .router
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts a reloaded config's access control and routes in place.
    pub fn replace(&self, access: Access, router: Router) {
        let s = &self.inner.services;
        *s.access.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(access);
        *s.router.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(router);
    }

    pub fn pool(&self) -> &Pool {
        &self.inner.services.pool
    }

    pub fn engine_only(&self) -> bool {
        self.inner.services.engine_only
    }

    pub fn drain(&self) -> &Drain {
        &self.inner.drain
    }

    pub fn request_limits(&self) -> &RequestLimits {
        &self.inner.services.request_limits
    }

    pub fn salt_key(&self) -> &SaltKey {
        &self.inner.services.salt_key
    }

    pub fn engine_token(&self) -> Option<&str> {
        self.inner.services.engine_token.as_deref()
    }

    pub fn cors_origins(&self) -> &[String] {
        &self.inner.services.cors_origins
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.services.metrics
    }

    pub fn metrics_enabled(&self) -> bool {
        self.inner.services.metrics_enabled
    }

    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }
}
