//! Errors of loading and validating a config file, with the file, key and position.

use std::fmt;
use std::path::PathBuf;

/// One problem found while validating a parsed config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationIssue {
    /// Dotted path to the offending key, for example `models[1].engine.kv_block_size`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ValidationIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed or a value has the wrong type or an unknown key.
    #[error("{}: at `{key}`{location}: {message}", file.display())]
    Parse {
        file: PathBuf,
        key: String,
        location: String,
        message: String,
    },
    #[error("{}: {}", file.display(), issues.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid {
        file: PathBuf,
        issues: Vec<ValidationIssue>,
    },
}
