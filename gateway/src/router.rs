//! Routes: a request names a model or an alias; an alias becomes an ordered list of candidate
//! models by the request's language (rules in order, then fallbacks).

use std::collections::{HashMap, HashSet};

use rosetta_config::{Config, RouteConfig};

#[derive(Debug, Default)]
pub struct Router {
    aliases: HashMap<String, RouteConfig>,
    models: HashSet<String>,
}

/// What a request's `model` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A model: only it may serve.
    Model(String),
    /// An alias and its candidates for the language, best first.
    Alias {
        alias: String,
        candidates: Vec<String>,
    },
}

impl Target {
    pub fn candidates(&self) -> Vec<String> {
        match self {
            Target::Model(m) => vec![m.clone()],
            Target::Alias { candidates, .. } => candidates.clone(),
        }
    }
}

impl Router {
    pub fn new(config: &Config) -> Self {
        Self {
            aliases: config
                .routes
                .iter()
                .map(|r| (r.alias.clone(), r.clone()))
                .collect(),
            models: config.models.iter().map(|m| m.id.clone()).collect(),
        }
    }

    /// No aliases; only the models served in this process (engine-only mode).
    pub fn local_models(config: &Config) -> Self {
        Self {
            aliases: HashMap::new(),
            models: config
                .models
                .iter()
                .filter(|m| m.source().is_some())
                .map(|m| m.id.clone())
                .collect(),
        }
    }

    pub fn is_alias(&self, name: &str) -> bool {
        self.aliases.contains_key(name)
    }

    pub fn aliases(&self) -> impl Iterator<Item = &str> {
        self.aliases.keys().map(String::as_str)
    }

    /// Every model an alias may route to (its rules' models in order, then the fallbacks),
    /// and the languages its rules name; `None` if `alias` is not one.
    pub fn alias_reach(&self, alias: &str) -> Option<(Vec<String>, Vec<String>)> {
        let route = self.aliases.get(alias)?;
        Some((route.models(), route.languages()))
    }

    /// The target of `name` for a request in `language`; `None` if it names nothing.
    pub fn resolve(&self, name: &str, language: &str) -> Option<Target> {
        if self.models.contains(name) {
            return Some(Target::Model(name.to_string()));
        }
        let route = self.aliases.get(name)?;
        let mut candidates: Vec<String> = Vec::new();
        let matching = route
            .rules
            .iter()
            .find(|r| r.languages.iter().any(|l| l == language));
        for m in matching
            .into_iter()
            .flat_map(|r| r.models.iter())
            .chain(route.fallback.iter())
        {
            if !candidates.contains(m) {
                candidates.push(m.clone());
            }
        }
        Some(Target::Alias {
            alias: name.to_string(),
            candidates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let yaml = r#"
auth: { allow_unauthenticated: true }
models:
  - { id: aya, path: /x, licence: cc-by-nc-4.0 }
  - { id: qwen, path: /x, licence: apache-2.0 }
  - { id: llama, path: /x, licence: llama3.1 }
routes:
  - alias: auto
    rules:
      - { languages: [sw, yo, ha, am], models: [aya] }
      - { languages: [zh, ja, ko], models: [qwen, aya] }
    fallback: [llama, qwen]
"#;
        Router::new(&rosetta_config::parse_str(yaml, std::path::Path::new("t")).unwrap())
    }

    #[test]
    fn aliases_route_by_language_with_fallbacks() {
        let r = router();
        let c = |lang: &str| r.resolve("auto", lang).unwrap().candidates();
        assert_eq!(c("sw"), ["aya", "llama", "qwen"]);
        assert_eq!(c("ja"), ["qwen", "aya", "llama"]);
        assert_eq!(c("en"), ["llama", "qwen"]);
        assert_eq!(c("und"), ["llama", "qwen"]);
        assert_eq!(r.resolve("qwen", "sw"), Some(Target::Model("qwen".into())));
        assert_eq!(r.resolve("nope", "sw"), None);
    }
}
