//! Rosetta's configuration: the typed schema, loading from YAML with precise errors,
//! validation, and the JSON Schema that `rosetta config schema` prints.
//!
//! Every field a user may leave out has a default here, so a config names only what differs.

mod access;
mod error;
mod licence;
mod load;
mod routing;
mod schema;

pub use access::*;
pub use error::{ConfigError, ValidationIssue};
pub use licence::{catalogue, regions_of, shipped_licences, Licence, EU_MEMBERS};
pub use load::{embedded_default, load_file, parse_str};
pub use routing::*;
pub use schema::*;

/// Rosetta's default access policies (config/policies/default.cedar).
pub const DEFAULT_POLICIES: &str = include_str!("../policies/default.cedar");
/// The Cedar schema policies are validated against (config/policies/rosetta.cedarschema).
pub const POLICY_SCHEMA: &str = include_str!("../policies/rosetta.cedarschema");

/// The JSON Schema of the config file, as pretty-printed JSON.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Config);
    serde_json::to_string_pretty(&schema).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
