//! Tenants, models and licences as Cedar entities.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use rosetta_config::{Licence, ModelConfig, TenantConfig};

use super::PolicyError;

pub const TENANT: &str = "Rosetta::Tenant";
pub const MODEL: &str = "Rosetta::Model";
pub const LICENCE: &str = "Rosetta::Licence";
pub const ACTION: &str = "Rosetta::Action";

pub fn uid(kind: &str, id: &str) -> Result<EntityUid, PolicyError> {
    let kind = EntityTypeName::from_str(kind)
        .map_err(|e| PolicyError::Entities(format!("bad entity type `{kind}`: {e}")))?;
    let id = EntityId::new(id);
    Ok(EntityUid::from_type_name_and_id(kind, id))
}

fn strings<'a>(values: impl IntoIterator<Item = &'a String>) -> RestrictedExpression {
    RestrictedExpression::new_set(
        values
            .into_iter()
            .cloned()
            .map(RestrictedExpression::new_string),
    )
}

fn long(v: u64) -> RestrictedExpression {
    RestrictedExpression::new_long(i64::try_from(v).unwrap_or(i64::MAX))
}

fn entity(
    uid: EntityUid,
    attrs: HashMap<String, RestrictedExpression>,
    parents: HashSet<EntityUid>,
) -> Result<Entity, PolicyError> {
    let name = uid.to_string();
    Entity::new(uid, attrs, parents)
        .map_err(|e| PolicyError::Entities(format!("entity {name}: {e}")))
}

/// A tenant; its allowlist names models, aliases expanded by `expand`.
pub fn tenant(
    t: &TenantConfig,
    expand: impl Fn(&str) -> Vec<String>,
) -> Result<Entity, PolicyError> {
    let regions: Vec<String> = t
        .region
        .iter()
        .flat_map(|r| rosetta_config::regions_of(r))
        .collect();
    let mut attrs = HashMap::from([
        (
            "commercial".to_string(),
            RestrictedExpression::new_bool(t.commercial),
        ),
        (
            "accepted_licences".to_string(),
            strings(&t.accepted_licences),
        ),
        ("regions".to_string(), strings(&regions)),
        (
            "tier".to_string(),
            RestrictedExpression::new_string(t.tier.name().into()),
        ),
    ]);
    if let Some(mau) = t.monthly_active_users {
        attrs.insert("monthly_active_users".into(), long(mau));
    }
    if let Some(models) = &t.models {
        let expanded: Vec<String> = models.iter().flat_map(|m| expand(m)).collect();
        attrs.insert("model_allowlist".into(), strings(&expanded));
    }
    entity(uid(TENANT, &t.id)?, attrs, HashSet::new())
}

pub fn licence(l: &Licence) -> Result<Entity, PolicyError> {
    let attrs = HashMap::from([(
        "name".to_string(),
        RestrictedExpression::new_string(l.name.clone()),
    )]);
    entity(uid(LICENCE, &l.id)?, attrs, HashSet::new())
}

pub fn model(m: &ModelConfig, l: &Licence) -> Result<Entity, PolicyError> {
    let mut attrs = HashMap::from([
        (
            "id".to_string(),
            RestrictedExpression::new_string(m.id.clone()),
        ),
        (
            "licence".to_string(),
            RestrictedExpression::new_string(l.id.clone()),
        ),
        (
            "licence_name".to_string(),
            RestrictedExpression::new_string(l.name.clone()),
        ),
        (
            "commercial_use".to_string(),
            RestrictedExpression::new_bool(l.commercial_use),
        ),
        (
            "acceptance_required".to_string(),
            RestrictedExpression::new_bool(l.acceptance_required),
        ),
        (
            "attribution_required".to_string(),
            RestrictedExpression::new_bool(l.attribution_required),
        ),
        ("use_restrictions".to_string(), strings(&l.use_restrictions)),
        ("excluded_regions".to_string(), strings(&l.excluded_regions)),
        ("languages".to_string(), strings(&m.languages)),
    ]);
    if let Some(cap) = l.user_cap {
        attrs.insert("user_cap".into(), long(cap));
    }
    let parents = HashSet::from([uid(LICENCE, &l.id)?]);
    entity(uid(MODEL, &m.id)?, attrs, parents)
}
