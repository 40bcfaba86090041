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
    let mut config = parse_str(&text, file)?;
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
    Ok(config)
}

/// Parses and validates YAML text; `file` is only used in error messages.
pub fn parse_str(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|err| {
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
    })?;
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
