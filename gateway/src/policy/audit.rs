//! The audit log: one JSON line per access decision, appended to a file by a background
//! thread (requests never wait on the disk), and always logged under `rosetta::audit`.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry<'a> {
    pub ts: String,
    pub request_id: Option<&'a str>,
    pub tenant: &'a str,
    /// The name of the key used, if it has one.
    pub key: Option<&'a str>,
    pub action: &'a str,
    pub model: &'a str,
    pub licence: &'a str,
    pub decision: &'static str,
    pub policies: &'a [String],
    pub reasons: &'a [String],
}

#[derive(Debug, Clone)]
pub struct AuditLog {
    file: Option<mpsc::Sender<String>>,
}

impl AuditLog {
    /// Logs only through tracing.
    pub fn tracing_only() -> Self {
        Self { file: None }
    }

    /// Appends to `path` (created if missing) as well.
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = mpsc::channel::<String>();
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                while let Ok(line) = rx.recv() {
                    let mut batch = vec![line];
                    batch.extend(rx.try_iter());
                    let written = batch
                        .iter()
                        .try_for_each(|l| writeln!(out, "{l}"))
                        .and_then(|()| out.flush());
                    if let Err(e) = written {
                        tracing::error!(file = %shown, error = %e, "cannot write the audit log");
                    }
                }
            })?;
        Ok(Self { file: Some(tx) })
    }

    pub fn record(&self, entry: &AuditEntry<'_>) {
        tracing::info!(
            target: "rosetta::audit",
            tenant = entry.tenant,
            action = entry.action,
            model = entry.model,
            licence = entry.licence,
            decision = entry.decision,
            policies = ?entry.policies,
            "access decision"
        );
        if let Some(tx) = &self.file {
            match serde_json::to_string(entry) {
                Ok(line) => {
                    let _ = tx.send(line);
                }
                Err(e) => tracing::error!(error = %e, "cannot encode an audit entry"),
            }
        }
    }
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
