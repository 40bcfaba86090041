//! Licence-based access decisions with the Cedar policy engine: tenants are principals,
//! models are resources (members of their licence, carrying its attributes), actions are
//! `invoke` and `list`. Policies are the shipped defaults plus the user's files, validated
//! against config/policies/rosetta.cedarschema when the server starts.

pub mod audit;
mod entities;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, EntityUid, PolicyId, PolicySet,
    Request, Schema, ValidationMode, Validator,
};
use rosetta_config::{Config, TenantConfig};

pub use audit::{AuditEntry, AuditLog};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("policies do not match the Rosetta schema:\n{0}")]
    Invalid(String),
    #[error("the Cedar schema is invalid: {0}")]
    Schema(String),
    #[error("cannot describe tenants and models to the policy engine: {0}")]
    Entities(String),
}

/// What a policy is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Generate with the model.
    Invoke,
    /// See the model in /v1/models.
    List,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Invoke => "invoke",
            Action::List => "list",
        }
    }
}

/// The answer, with the policies that decided it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Ids of the deciding policies: the forbids that matched (deny) or the permits (allow).
    pub policies: Vec<String>,
    /// The `@reason` of each deciding forbid, in plain words.
    pub reasons: Vec<String>,
}

/// A model as the policy engine knows it.
#[derive(Debug, Clone)]
pub struct ModelFacts {
    uid: EntityUid,
    pub licence_id: String,
    pub licence_name: String,
}

pub struct PolicyEngine {
    authorizer: Authorizer,
    policies: PolicySet,
    entities: Entities,
    tenants: HashMap<String, (usize, EntityUid)>,
    models: HashMap<String, (usize, ModelFacts)>,
    /// Decisions per (tenant, model, action), made on first use. Policies, tenants and
    /// models are fixed for the process's life and requests carry no context yet, so a
    /// decision never changes; a context attribute (time, address) would have to join the key.
    decisions: Vec<OnceLock<Decision>>,
    invoke: EntityUid,
    list: EntityUid,
    reasons: HashMap<PolicyId, String>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("policies", &self.reasons.len())
            .field("tenants", &self.tenants.len())
            .field("models", &self.models.len())
            .finish()
    }
}

/// Parses one policy source; each policy is named by its `@id` annotation, else `file#n`.
fn parse_policies(source: &str, file: &str, into: &mut PolicySet) -> Result<(), PolicyError> {
    let parsed = PolicySet::from_str(source).map_err(|e| PolicyError::Parse {
        file: file.to_string(),
        message: describe_parse_errors(&e),
    })?;
    if parsed.templates().next().is_some() {
        return Err(PolicyError::Parse {
            file: file.to_string(),
            message: "policy templates are not supported; write plain policies".into(),
        });
    }
    for (n, p) in parsed.policies().enumerate() {
        let id = p
            .annotation("id")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{file}#{n}"));
        into.add(p.new_id(PolicyId::new(&id)))
            .map_err(|e| PolicyError::Parse {
                file: file.to_string(),
                message: format!("policy `{id}`: {e}"),
            })?;
    }
    Ok(())
}

/// Cedar's explanation of every problem, with where it is in the file.
fn describe_parse_errors(e: &cedar_policy::ParseErrors) -> String {
    use miette::Diagnostic;
    e.iter()
        .map(|pe| {
            let at = pe
                .labels()
                .and_then(|mut l| l.next())
                .map(|l| format!(" (at byte {})", l.offset()))
                .unwrap_or_default();
            let help = pe.help().map(|h| format!("; {h}")).unwrap_or_default();
            format!("{pe}{at}{help}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl PolicyEngine {
    /// Builds the engine from a config: loads and validates the policies, describes every
    /// tenant (`tenants` includes the built-in anonymous one when it is used) and model.
    pub fn new(config: &Config, tenants: &[TenantConfig]) -> Result<Self, PolicyError> {
        let (schema, _warnings) = Schema::from_cedarschema_str(rosetta_config::POLICY_SCHEMA)
            .map_err(|e| PolicyError::Schema(e.to_string()))?;
        let mut policies = PolicySet::new();
        if config.policies.default_policies {
            parse_policies(
                rosetta_config::DEFAULT_POLICIES,
                "config/policies/default.cedar",
                &mut policies,
            )?;
        }
        for file in &config.policies.files {
            let name = file.display().to_string();
            let text =
                std::fs::read_to_string(Path::new(file)).map_err(|source| PolicyError::Read {
                    file: name.clone(),
                    source,
                })?;
            parse_policies(&text, &name, &mut policies)?;
        }
        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !validation.validation_passed() {
            let errors: Vec<String> = validation
                .validation_errors()
                .map(|e| format!("  policy `{}`: {e}", e.policy_id()))
                .collect();
            return Err(PolicyError::Invalid(errors.join("\n")));
        }
        let reasons = policies
            .policies()
            .map(|p| {
                let reason = p
                    .annotation("reason")
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("policy `{}` forbids it", p.id()));
                (p.id().clone(), reason)
            })
            .collect();

        let catalogue = config.licence_catalogue();
        let mut all = Vec::new();
        for l in catalogue.values() {
            all.push(entities::licence(l)?);
        }
        let mut models = HashMap::new();
        for m in &config.models {
            let l = catalogue.get(&m.licence).ok_or_else(|| {
                PolicyError::Entities(format!(
                    "model `{}` names unknown licence `{}`",
                    m.id, m.licence
                ))
            })?;
            all.push(entities::model(m, l)?);
            let facts = ModelFacts {
                uid: entities::uid(entities::MODEL, &m.id)?,
                licence_id: l.id.clone(),
                licence_name: l.name.clone(),
            };
            models.insert(m.id.clone(), (models.len(), facts));
        }
        let mut tenant_uids = HashMap::new();
        for t in tenants {
            all.push(entities::tenant(t, |name| config.expand_model_name(name))?);
            let uid = entities::uid(entities::TENANT, &t.id)?;
            tenant_uids.insert(t.id.clone(), (tenant_uids.len(), uid));
        }
        let entities = Entities::from_entities(all, Some(&schema))
            .map_err(|e| PolicyError::Entities(e.to_string()))?;
        let decisions = (0..tenant_uids.len() * models.len() * 2)
            .map(|_| OnceLock::new())
            .collect();
        Ok(Self {
            decisions,
            authorizer: Authorizer::new(),
            policies,
            entities,
            tenants: tenant_uids,
            models,
            invoke: entities::uid(entities::ACTION, "invoke")?,
            list: entities::uid(entities::ACTION, "list")?,
            reasons,
        })
    }

    pub fn model(&self, id: &str) -> Option<&ModelFacts> {
        self.models.get(id).map(|(_, m)| m)
    }

    /// May `tenant` do `action` on `model`? Unknown tenants or models are denied.
    pub fn decide(&self, tenant: &str, model: &str, action: Action) -> Decision {
        let (Some((t, _)), Some((m, _))) = (self.tenants.get(tenant), self.models.get(model))
        else {
            return self.evaluate(tenant, model, action);
        };
        let a = match action {
            Action::Invoke => 0,
            Action::List => 1,
        };
        let cell = &self.decisions[(t * self.models.len() + m) * 2 + a];
        cell.get_or_init(|| self.evaluate(tenant, model, action))
            .clone()
    }

    /// `decide` without the memo: a full Cedar evaluation (for benchmarks).
    pub fn evaluate(&self, tenant: &str, model: &str, action: Action) -> Decision {
        let deny = |why: &str| Decision {
            allowed: false,
            policies: Vec::new(),
            reasons: vec![why.to_string()],
        };
        let (Some((_, principal)), Some((_, resource))) =
            (self.tenants.get(tenant), self.models.get(model))
        else {
            return deny("the tenant or the model is unknown to the policy engine");
        };
        let action_uid = match action {
            Action::Invoke => &self.invoke,
            Action::List => &self.list,
        };
        let request = match Request::new(
            principal.clone(),
            action_uid.clone(),
            resource.uid.clone(),
            Context::empty(),
            None,
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot build a policy request");
                return deny("the policy engine could not evaluate the request");
            }
        };
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, &self.entities);
        // Cedar skips a policy that errors. A skipped permit only fails to allow; a skipped
        // forbid would allow what it exists to forbid, so an erroring forbid denies.
        let mut failed_forbids: Vec<(String, String)> = Vec::new();
        for e in response.diagnostics().errors() {
            tracing::warn!(error = %e, tenant, model, "a policy failed to evaluate");
            let cedar_policy::AuthorizationError::PolicyEvaluationError(err) = e;
            let id = err.policy_id();
            if self
                .policies
                .policy(id)
                .is_some_and(|p| p.effect() == cedar_policy::Effect::Forbid)
            {
                failed_forbids.push((id.to_string(), err.inner().to_string()));
            }
        }
        if !failed_forbids.is_empty() {
            failed_forbids.sort();
            return Decision {
                allowed: false,
                policies: failed_forbids.iter().map(|(id, _)| id.clone()).collect(),
                reasons: failed_forbids
                    .iter()
                    .map(|(id, error)| {
                        format!("policy `{id}` could not be evaluated ({error}), so it denies")
                    })
                    .collect(),
            };
        }
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        policies.sort();
        let allowed = response.decision() == CedarDecision::Allow;
        let reasons = if allowed {
            Vec::new()
        } else if policies.is_empty() {
            vec!["no policy permits it".to_string()]
        } else {
            response
                .diagnostics()
                .reason()
                .filter_map(|id| self.reasons.get(id).cloned())
                .collect()
        };
        Decision {
            allowed,
            policies,
            reasons,
        }
    }
}
