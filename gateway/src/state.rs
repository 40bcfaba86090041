//! State shared by every request handler.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::access::Access;
use crate::api::error::ApiError;
use crate::registry::ServedModel;

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
    pub max_body_bytes: usize,
}

struct Inner {
    /// Set once every configured model has loaded; until then the server is alive, not ready.
    models: OnceLock<HashMap<String, Arc<ServedModel>>>,
    /// Configured model ids, in config order (for listing while loading is not needed).
    order: Vec<String>,
    fingerprint: String,
    access: Access,
}

impl AppState {
    pub fn new(model_ids: Vec<String>, max_body_bytes: usize, access: Access) -> Self {
        Self {
            inner: Arc::new(Inner {
                models: OnceLock::new(),
                order: model_ids,
                access,
                fingerprint: format!("fp_rosetta_{}", env!("CARGO_PKG_VERSION").replace('.', "")),
            }),
            max_body_bytes,
        }
    }

    /// Publishes the loaded models; the server becomes ready.
    pub fn set_models(&self, models: Vec<ServedModel>) {
        let map = models
            .into_iter()
            .map(|m| (m.id.clone(), Arc::new(m)))
            .collect();
        let _ = self.inner.models.set(map);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.models.get().is_some()
    }

    fn loaded(&self) -> Result<&HashMap<String, Arc<ServedModel>>, ApiError> {
        self.inner.models.get().ok_or_else(|| {
            ApiError::unavailable("The server is still loading its models; retry shortly.", 2)
        })
    }

    /// The model a request names: 503 while loading, 404 if unknown.
    pub fn model(&self, id: &str) -> Result<Arc<ServedModel>, ApiError> {
        self.loaded()?
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::model_not_found(id))
    }

    pub fn models(&self) -> Result<Vec<Arc<ServedModel>>, ApiError> {
        let loaded = self.loaded()?;
        Ok(self
            .inner
            .order
            .iter()
            .filter_map(|id| loaded.get(id).cloned())
            .collect())
    }

    pub fn access(&self) -> &Access {
        &self.inner.access
    }

    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }
}
