//! GET /v1/models and /v1/models/{id}: the models and route aliases a caller may use.

use axum::extract::{Path, State};
use axum::{Extension, Json};

use super::authentication::Caller;
use super::error::ApiError;
use super::types::{Capabilities, ModelList, ModelObject};
use crate::policy::Action;
use crate::registry::LocalModel;
use crate::state::AppState;
use rosetta_config::ModelConfig;

fn object(config: &ModelConfig, local: Option<&LocalModel>) -> ModelObject {
    ModelObject {
        id: config.id.clone(),
        object: "model",
        created: local.map_or(0, |m| m.created),
        owned_by: "rosetta".into(),
        licence: Some(config.licence.clone()),
        languages: config.languages.clone(),
        routes_to: None,
        max_model_len: local.map(|m| m.max_context),
        context_length: local.map(|m| m.max_context),
        capabilities: local.map(capabilities),
        supported_parameters: local.map(supported_parameters),
    }
}

fn capabilities(m: &LocalModel) -> Capabilities {
    let grammar = m.grammar.is_some();
    Capabilities {
        tools: grammar || m.tool_format.is_some(),
        tool_choice_auto: m.tool_format.is_some(),
        structured_outputs: grammar,
        reasoning: m.reasoning.is_some(),
        embeddings: m.embeds(),
    }
}

fn supported_parameters(m: &LocalModel) -> Vec<&'static str> {
    if let Some(e) = &m.embedding {
        let mut p = vec!["encoding_format"];
        if e.matryoshka.is_some() {
            p.push("dimensions");
        }
        return p;
    }
    let c = capabilities(m);
    let mut p = vec![
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "stop",
        "seed",
        "n",
        "frequency_penalty",
        "presence_penalty",
        "repetition_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
    ];
    if c.tools {
        p.extend(["tools", "tool_choice", "parallel_tool_calls"]);
    }
    if c.structured_outputs {
        p.extend(["response_format", "structured_outputs"]);
    }
    if c.reasoning {
        p.extend(["reasoning", "reasoning_effort"]);
    }
    p
}

/// A route alias as a model the caller can name, if it may reach at least one of its models.
fn alias_object(state: &AppState, caller: &Caller, alias: &str) -> Option<ModelObject> {
    let (models, languages) = state.router().alias_reach(alias)?;
    let reachable: Vec<String> = models
        .into_iter()
        .filter(|m| visible(state, caller, m))
        .collect();
    (!reachable.is_empty()).then(|| ModelObject {
        id: alias.to_string(),
        object: "model",
        created: 0,
        owned_by: "rosetta".into(),
        licence: None,
        languages,
        routes_to: Some(reachable),
        max_model_len: None,
        context_length: None,
        capabilities: None,
        supported_parameters: None,
    })
}

/// May the caller see this model? Only models it may both list and invoke are shown.
fn visible(state: &AppState, caller: &Caller, model: &str) -> bool {
    let access = state.access();
    let who = &caller.principal;
    access
        .decide_for_listing(who, model, Action::List, caller.request_id())
        .allowed
        && access
            .decide_for_listing(who, model, Action::Invoke, caller.request_id())
            .allowed
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ModelList>, ApiError> {
    // 503 while local models load.
    state.models()?;
    let mut data: Vec<ModelObject> = state
        .configured()
        .iter()
        .filter(|m| visible(&state, &caller, &m.id))
        .map(|m| object(m, state.loaded_model(&m.id).as_deref()))
        .collect();
    // Route aliases are names a client may use too (as LiteLLM lists its model groups).
    let router = state.router();
    let mut aliases: Vec<&str> = router.aliases().collect();
    aliases.sort_unstable();
    data.extend(
        aliases
            .into_iter()
            .filter_map(|a| alias_object(&state, &caller, a)),
    );
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
    state.models()?;
    let Some(config) = state.configured().iter().find(|m| m.id == id) else {
        return alias_object(&state, &caller, &id)
            .map(Json)
            .ok_or_else(|| ApiError::model_not_found(&id));
    };
    // Like OpenAI: a model the caller may not use does not exist for it.
    if !visible(&state, &caller, &config.id) {
        return Err(ApiError::model_not_found(&id));
    }
    Ok(Json(object(config, state.loaded_model(&id).as_deref())))
}

/// GET /load: each model's engine load (running, waiting, KV blocks, preemptions, prefix-cache
/// hits), for operators and benchmarks until the Prometheus endpoint exists.
pub async fn load(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    // An engine with a token tells prefix-cache figures (which say something about other
    // tenants' prompts) only to its gateways.
    let detailed = state.engine_token().is_none_or(|token| {
        let authorization = headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        crate::secrets::bearer_matches(authorization, token)
    });
    let mut models = serde_json::Map::new();
    for m in state.models()? {
        let l = m.engine.load();
        let mut entry = serde_json::json!({
            "running": l.running,
            "waiting": l.waiting,
            "kv_blocks_used": l.kv_blocks_used,
            "kv_blocks_total": l.kv_blocks_total,
            "kv_block_size": l.kv_block_size,
            "kv_slots_unused": l.kv_slots_unused,
            "preemptions": l.preemptions,
            "forward_seconds": l.forward_ns as f64 / 1e9,
            "experts_seconds": l.experts_ns as f64 / 1e9,
        });
        if detailed {
            entry["prefix_queried_tokens"] = l.prefix_queried_tokens.into();
            entry["prefix_hit_tokens"] = l.prefix_hit_tokens.into();
        }
        models.insert(m.id.clone(), entry);
    }
    Ok(Json(serde_json::json!({ "models": models })))
}
