//! GET /v1/models and /v1/models/{id}

use axum::extract::{Path, State};
use axum::{Extension, Json};

use super::caller::Caller;
use super::error::ApiError;
use super::types::{ModelList, ModelObject};
use crate::policy::Action;
use crate::registry::ServedModel;
use crate::state::AppState;

fn object(m: &ServedModel) -> ModelObject {
    ModelObject {
        id: m.id.clone(),
        object: "model",
        created: m.created,
        owned_by: "rosetta".into(),
        licence: m.licence.clone(),
        languages: m.languages.clone(),
        max_model_len: m.max_context,
    }
}

/// May the caller see this model? Only models it may both list and invoke are shown.
fn visible(state: &AppState, caller: &Caller, model: &str) -> bool {
    let access = state.access();
    let who = &caller.principal;
    access
        .decide(who, model, Action::List, caller.request_id())
        .allowed
        && access
            .decide(who, model, Action::Invoke, caller.request_id())
            .allowed
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ModelList>, ApiError> {
    let data = state
        .models()?
        .iter()
        .filter(|m| visible(&state, &caller, &m.id))
        .map(|m| object(m))
        .collect();
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    let model = state.model(&id)?;
    // Like OpenAI: a model the caller may not use does not exist for it.
    if !visible(&state, &caller, &model.id) {
        return Err(ApiError::model_not_found(&id));
    }
    Ok(Json(object(&model)))
}

/// GET /load: each model's engine load (running, waiting, KV blocks, preemptions, prefix-cache
/// hits), for operators and benchmarks until the Prometheus endpoint exists.
pub async fn load(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut models = serde_json::Map::new();
    for m in state.models()? {
        let l = m.engine.load();
        models.insert(
            m.id.clone(),
            serde_json::json!({
                "running": l.running,
                "waiting": l.waiting,
                "kv_blocks_used": l.kv_blocks_used,
                "kv_blocks_total": l.kv_blocks_total,
                "kv_block_size": l.kv_block_size,
                "kv_slots_unused": l.kv_slots_unused,
                "preemptions": l.preemptions,
                "prefix_queried_tokens": l.prefix_queried_tokens,
                "prefix_hit_tokens": l.prefix_hit_tokens,
            }),
        );
    }
    Ok(Json(serde_json::json!({ "models": models })))
}
