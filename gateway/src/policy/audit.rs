//! The audit log: one JSON line per access decision, appended to a file by a background
//! thread (requests never wait on the disk), and always logged under `rosetta::audit`.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

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

/// Decisions waiting for the writer; past this, a decision is counted as dropped and logged
/// as an error (never silently), rather than letting memory grow or requests wait on disk.
const QUEUE: usize = 65_536;

#[derive(Debug, Default)]
struct Writer {
    queue: Mutex<Option<mpsc::SyncSender<String>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dropped: AtomicU64,
    write_errors: Arc<AtomicU64>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditLog {
    file: Option<Arc<Writer>>,
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
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
        let shown = path.display().to_string();
        let write_errors = Arc::new(AtomicU64::new(0));
        let errors = write_errors.clone();
        let thread = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                // Ends when every sender is gone (at shutdown), after the last line.
                while let Ok(line) = rx.recv() {
                    let mut batch = vec![line];
                    batch.extend(rx.try_iter());
                    let written = batch
                        .iter()
                        .try_for_each(|l| writeln!(out, "{l}"))
                        .and_then(|()| out.flush());
                    if let Err(e) = written {
                        errors.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        tracing::error!(file = %shown, error = %e, lines = batch.len(), "cannot write the audit log");
                    }
                }
            })?;
        Ok(Self {
            file: Some(Arc::new(Writer {
                queue: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                dropped: AtomicU64::new(0),
                write_errors,
            })),
        })
    }

    /// Decisions not written: dropped on a full queue or after close, and failed writes.
    pub fn lost(&self) -> u64 {
        self.file.as_ref().map_or(0, |w| {
            w.dropped.load(Ordering::Relaxed) + w.write_errors.load(Ordering::Relaxed)
        })
    }

    /// Writes every queued decision and stops the writer (at shutdown). Later decisions
    /// are only logged through tracing, and counted as lost.
    pub fn close(&self) {
        let Some(w) = &self.file else { return };
        w.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = w.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("the audit log writer panicked");
            }
        }
        let lost = self.lost();
        if lost > 0 {
            tracing::error!(lost, "audit decisions were not written to the file");
        }
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
        let Some(w) = &self.file else { return };
        let line = match serde_json::to_string(entry) {
            Ok(line) => line,
            Err(e) => {
                w.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot encode an audit entry");
                return;
            }
        };
        let queue = w.queue.lock().unwrap_or_else(|p| p.into_inner());
        let sent = match queue.as_ref() {
            Some(tx) => tx.try_send(line).map_err(|e| match e {
                mpsc::TrySendError::Full(_) => "the audit queue is full",
                mpsc::TrySendError::Disconnected(_) => "the audit writer has stopped",
            }),
            None => Err("the audit log is closed"),
        };
        if let Err(why) = sent {
            w.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                tenant = entry.tenant,
                model = entry.model,
                decision = entry.decision,
                "audit decision not written: {why}"
            );
        }
    }
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
