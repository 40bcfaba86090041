//! GET /v1/models and /v1/models/{id}

use axum::extract::{Path, State};
use axum::Json;

use super::error::ApiError;
use super::types::{ModelList, ModelObject};
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

pub async fn list(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let data = state.models()?.iter().map(|m| object(m)).collect();
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    let model = state.model(&id)?;
    Ok(Json(object(&model)))
}
