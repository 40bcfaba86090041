//! Reading a config from YAML: the embedded default, files, and precise parse errors.

use std::path::{Path, PathBuf};

use crate::{Config, ConfigError};

/// The config `rosetta serve` uses when given none: the generated demo model, on loopback.
const EMBEDDED_DEFAULT: &str = include_str!("../examples/default.yaml");

/// Loads, parses and validates a config file. Relative model paths are resolved against
/// the file's folder, so a config works from any working directory.
pub fn load_file(file: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    let mut config = deserialize(&text, file)?;
    let base = file.parent().unwrap_or(Path::new("."));
    for model in &mut config.models {
        if let Some(p) = model.path.as_mut() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
    let paths = config
        .policies
        .files
        .iter_mut()
        .chain(config.audit.path.as_mut());
    for p in paths {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    if let Some(dir) = config.cache_dir.as_mut() {
        if dir.is_relative() {
            *dir = base.join(&*dir);
        }
    }
    if let Some(keys) = config.auth.keys_file.as_mut() {
        if keys.is_relative() {
            *keys = base.join(&*keys);
        }
        let keys = keys.clone();
        merge_keys_file(&mut config, &keys)?;
    }
    validated(config, file)
}

/// Adds the keys of `auth.keys_file` (tenant id → keys, e.g. a mounted Kubernetes Secret)
/// to the tenants they name.
fn merge_keys_file(config: &mut Config, path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    let keys: std::collections::BTreeMap<String, Vec<crate::ApiKeyConfig>> =
        parse_yaml(&text, path)?;
    let mut issues = Vec::new();
    for (tenant, keys) in keys {
        match config.tenants.iter_mut().find(|t| t.id == tenant) {
            Some(t) => t.keys.extend(keys),
            None => issues.push(crate::ValidationIssue {
                key: tenant.clone(),
                message: format!("names tenant `{tenant}`, which the config does not have"),
            }),
        }
    }
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            file: path.to_path_buf(),
            issues,
        })
    }
}

/// Parses and validates YAML text; `file` is only used in error messages.
pub fn parse_str(text: &str, file: &Path) -> Result<Config, ConfigError> {
    validated(deserialize(text, file)?, file)
}

fn deserialize(text: &str, file: &Path) -> Result<Config, ConfigError> {
    parse_yaml(text, file)
}

/// YAML into `T`, a mistake reported with the file, the key path and the line.
fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, file: &Path) -> Result<T, ConfigError> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = match err.path().to_string() {
            p if p == "." || p.is_empty() => "(top level)".to_string(),
            p => p,
        };
        let inner = err.into_inner();
        let location = inner
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        // serde_yaml appends its own "at line X column Y"; we print the location once.
        let message = inner.to_string();
        let message = match message.rfind(" at line ") {
            Some(i) => message[..i].to_string(),
            None => message,
        };
        // It may also prefix the path it knows ("models[0].engine: ..."); we print ours.
        let message = match message.split_once(": ") {
            Some((path, rest)) if !path.contains(' ') && key.starts_with(path) => rest.to_string(),
            _ => message,
        };
        ConfigError::Parse {
            file: file.to_path_buf(),
            key,
            location,
            message,
        }
    })
}

fn validated(config: Config, file: &Path) -> Result<Config, ConfigError> {
    let issues = config.validate();
    if issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            file: file.to_path_buf(),
            issues,
        })
    }
}

/// The embedded default config (see `config/examples/default.yaml`).
pub fn embedded_default() -> Config {
    parse_str(EMBEDDED_DEFAULT, &PathBuf::from("<embedded default>"))
        .expect("the embedded default config is valid; a test guards it")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "auth: { keys_file: keys.yaml }\ntenants: [{ id: acme }, { id: lab, keys: [{ hash: \"sha256:1111111111111111111111111111111111111111111111111111111111111111\" }] }]\nmodels: [{ id: m, demo: { size: tiny }, licence: mit }]\n";

    fn write(dir: &Path, config: &str, keys: Option<&str>) -> PathBuf {
        std::fs::write(dir.join("rosetta.yaml"), config).unwrap();
        if let Some(keys) = keys {
            std::fs::write(dir.join("keys.yaml"), keys).unwrap();
        }
        dir.join("rosetta.yaml")
    }

    #[test]
    fn a_keys_file_adds_keys_to_the_tenants_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let hash = format!("sha256:{}", "2".repeat(64));
        let lab = "4".repeat(64);
        let file = write(
            dir.path(),
            CONFIG,
            Some(&format!(
                "acme: [{{ hash: \"{hash}\", name: ci }}]\nlab: [{{ hash: \"sha256:{lab}\" }}]\n"
            )),
        );
        let config = load_file(&file).unwrap();
        let keys = |t: &str| {
            let tenant = config.tenants.iter().find(|x| x.id == t).unwrap();
            tenant
                .keys
                .iter()
                .map(|k| k.hash.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys("acme"), [hash]);
        assert_eq!(keys("lab").len(), 2, "added to the config's own");
    }

    #[test]
    fn a_keys_file_naming_an_unknown_tenant_or_a_bad_hash_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let hash = format!("sha256:{}", "3".repeat(64));
        let file = write(
            dir.path(),
            CONFIG,
            Some(&format!("nobody: [{{ hash: \"{hash}\" }}]\n")),
        );
        let e = load_file(&file).unwrap_err().to_string();
        assert!(e.contains("keys.yaml") && e.contains("nobody"), "{e}");
        let file = write(dir.path(), CONFIG, Some("acme: [{ hash: \"md5:0\" }]\n"));
        let e = load_file(&file).unwrap_err().to_string();
        assert!(e.contains("keys[0].hash"), "{e}");
        std::fs::remove_file(dir.path().join("keys.yaml")).unwrap();
        let e = load_file(&file).unwrap_err().to_string();
        assert!(e.contains("cannot read") && e.contains("keys.yaml"), "{e}");
    }
}
