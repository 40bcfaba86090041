//! Live configuration: tenants, keys, policies, limits and routes are reloaded without a
//! restart, on SIGHUP and when the config file or its `auth.keys_file` changes (Kubernetes
//! updates mounted ConfigMaps and Secrets in place). The new config is validated whole
//! first; a bad one is refused, logged and counted, and the old one keeps serving. Requests
//! in flight finish under the config they started with.
//!
//! Files are polled (content hashes every `server.config_poll_seconds`) rather than
//! watched: Kubernetes replaces mounted files by swapping a symlinked folder, which file
//! watchers see inconsistently, and a poll of two small files costs nothing.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rosetta_config::Config;

use crate::ratelimit::LimitClock;
use crate::router::Router;
use crate::state::AppState;

/// Watches `path` (the config `current` was loaded from) until the process ends.
pub fn spawn(state: AppState, path: PathBuf, current: Config, clock: LimitClock) {
    tokio::spawn(async move {
        let mut watcher = Watcher {
            fingerprint: fingerprint(&path, &current),
            path,
            current,
        };
        let poll = watcher.current.server.config_poll_seconds;
        let mut tick = (poll > 0.0).then(|| {
            let mut t = tokio::time::interval(Duration::from_secs_f64(poll.max(0.05)));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the config reloads only when its file changes");
                None
            }
        };
        loop {
            let forced = tokio::select! {
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
                _ = async { match tick.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending().await } } => false,
            };
            watcher.check(&state, &clock, forced);
        }
    });
}

struct Watcher {
    path: PathBuf,
    current: Config,
    fingerprint: u64,
}

impl Watcher {
    /// Reloads if asked to (SIGHUP) or if a file changed since the last attempt.
    fn check(&mut self, state: &AppState, clock: &LimitClock, forced: bool) {
        let now = fingerprint(&self.path, &self.current);
        if !forced && now == self.fingerprint {
            return;
        }
        self.fingerprint = now;
        let reloads = &state.metrics().gateway.config_reloads;
        match reload(state, &self.path, clock) {
            Ok(config) => {
                let restart = restart_sections(&self.current, &config);
                if restart.is_empty() {
                    tracing::info!(file = %self.path.display(), "config reloaded");
                } else {
                    tracing::warn!(file = %self.path.display(), needs_restart = ?restart, "config reloaded; these sections take effect only after a restart");
                }
                self.fingerprint = fingerprint(&self.path, &config);
                self.current = config;
                reloads.with_label_values(&["applied"]).inc();
            }
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %format!("{e:#}"), "config reload refused; the previous config keeps serving");
                reloads.with_label_values(&["refused"]).inc();
            }
        }
    }
}

/// Loads and validates the whole file, builds access control and routes from it, and puts
/// them in place.
fn reload(state: &AppState, path: &Path, clock: &LimitClock) -> anyhow::Result<Config> {
    let config = rosetta_config::load_file(path)?;
    let access = state.access().reloaded(&config, clock)?;
    let router = Router::new(&config);
    state.replace(access, router);
    Ok(config)
}

/// Sections read once at start: a change to them waits for a restart.
fn restart_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("server", old.server != new.server);
    check("models", old.models != new.models);
    check("pool", old.pool != new.pool);
    check("ratelimit", old.ratelimit != new.ratelimit);
    check("request_limits", old.request_limits != new.request_limits);
    check("cache_dir", old.cache_dir != new.cache_dir);
    changed
}

/// A hash of the config file's and the keys file's contents (missing files hash as empty).
fn fingerprint(path: &Path, config: &Config) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(path).unwrap_or_default().hash(&mut h);
    if let Some(keys) = &config.auth.keys_file {
        std::fs::read(keys).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}
