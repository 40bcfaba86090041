//! The licence catalogue: what each model licence allows, as the access policies read it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The catalogue shipped with Rosetta (config/licences.yaml).
const SHIPPED_CATALOGUE: &str = include_str!("../licences.yaml");

/// One licence's access-relevant attributes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Licence {
    /// The id models name in `licence`, for example `llama3.1`.
    pub id: String,
    /// Its full name, shown in denials.
    pub name: String,
    #[serde(default)]
    pub url: Option<String>,
    /// May a commercial tenant use it?
    pub commercial_use: bool,
    /// Must a tenant accept it (list it in `accepted_licences`) before use?
    #[serde(default)]
    pub acceptance_required: bool,
    /// Must products built on it credit the model?
    #[serde(default)]
    pub attribution_required: bool,
    /// Named use restrictions (acceptable use policies), for custom policies.
    #[serde(default)]
    pub use_restrictions: Vec<String>,
    /// Regions (ISO 3166-1 alpha-2 countries, or `EU`) the licence grants no rights to.
    #[serde(default)]
    pub excluded_regions: Vec<String>,
    /// Monthly active users above which the licence requires a separate agreement.
    #[serde(default)]
    pub user_cap: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    licences: Vec<Licence>,
}

/// The shipped catalogue, in file order.
pub fn shipped_licences() -> Vec<Licence> {
    serde_yaml::from_str::<CatalogueFile>(SHIPPED_CATALOGUE)
        .map(|f| f.licences)
        .expect("config/licences.yaml is valid; a test guards it")
}

/// The shipped catalogue with a config's own entries added; an entry with a shipped id
/// replaces it.
pub fn catalogue(extra: &[Licence]) -> BTreeMap<String, Licence> {
    shipped_licences()
        .into_iter()
        .chain(extra.iter().cloned())
        .map(|l| (l.id.clone(), l))
        .collect()
}

/// Countries that are members of the European Union (ISO 3166-1 alpha-2), so a tenant in
/// `DE` is also in `EU` for licences that exclude the EU.
pub const EU_MEMBERS: [&str; 27] = [
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV",
    "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
];

/// A region and the regions that contain it: `DE` → [`DE`, `EU`].
pub fn regions_of(region: &str) -> Vec<String> {
    let code = region.to_ascii_uppercase();
    let mut out = vec![code.clone()];
    if EU_MEMBERS.contains(&code.as_str()) {
        out.push("EU".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_catalogue_has_the_licences_models_use() {
        let cat = catalogue(&[]);
        for id in [
            "apache-2.0",
            "mit",
            "llama2",
            "llama3",
            "llama3.1",
            "llama3.2",
            "llama3.2-vision",
            "llama4",
            "gemma",
            "qwen",
            "deepseek",
            "mistral-research",
            "cc-by-nc-4.0",
            "bigscience-openrail-m",
        ] {
            assert!(cat.contains_key(id), "catalogue lacks {id}");
        }
        assert!(!cat["cc-by-nc-4.0"].commercial_use);
        assert!(cat["llama3.2-vision"]
            .excluded_regions
            .contains(&"EU".into()));
        assert_eq!(cat["llama3.1"].user_cap, Some(700_000_000));
    }

    #[test]
    fn config_entries_add_and_replace() {
        let mut mine = catalogue(&[])["mit"].clone();
        mine.commercial_use = false;
        let cat = catalogue(&[mine]);
        assert!(!cat["mit"].commercial_use);
    }

    #[test]
    fn eu_countries_are_in_the_eu() {
        assert_eq!(regions_of("de"), vec!["DE", "EU"]);
        assert_eq!(regions_of("US"), vec!["US"]);
        assert_eq!(regions_of("EU"), vec!["EU"]);
    }
}
