//! The engine pool: each model's replicas (the in-process engine and remote upstreams), the
//! choice among them by load with prefix affinity, health checks and circuit breakers.

pub mod breaker;
mod discovery;
pub mod remote;
pub mod upstream_reply;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use rosetta_config::{Config, PoolConfig};
use rosetta_engine::EngineLoad;

use breaker::Breaker;
use remote::RemoteClient;

#[derive(Debug)]
pub enum ReplicaKind {
    /// The engine in this process (its load comes from the engine's snapshot).
    Local,
    Remote(Box<RemoteClient>),
}

#[derive(Debug)]
pub struct Replica {
    /// `local`, or `<model>/remote-<i>` (never a URL, which may carry credentials); reported
    /// in `x-rosetta-replica` and in error messages.
    pub name: String,
    pub model: String,
    pub kind: ReplicaKind,
    pub breaker: Breaker,
    in_flight: AtomicUsize,
}

/// One request in flight on a replica; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight(Arc<Replica>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Replica {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    pub fn remote(&self) -> Option<&RemoteClient> {
        match &self.kind {
            ReplicaKind::Remote(r) => Some(r),
            ReplicaKind::Local => None,
        }
    }
}

/// How busy a replica is, for choosing, and whether it is past the queue bound.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Busy {
    score: f64,
    queued: usize,
}

/// Why no replica of a model was chosen.
#[derive(Debug, Default, Clone, Copy)]
pub struct Skipped {
    pub circuit_open: usize,
    pub queue_full: usize,
}

#[derive(Debug)]
pub struct Pool {
    /// Each model's replicas now: fixed ones from the config, and those DNS discovery
    /// adds and removes (a request holds its replica while it runs).
    models: HashMap<String, RwLock<Arc<Vec<Arc<Replica>>>>>,
    /// `remote[].dns` entries, resolved by [`discovery`].
    discovered: Vec<discovery::DnsTarget>,
    config: PoolConfig,
}

impl Pool {
    /// Replicas from the config: `local` for models with weights here (unless `remote_only`
    /// is asked for nothing), then each remote. `engine_only` ignores remotes.
    pub fn new(config: &Config, engine_only: bool) -> anyhow::Result<Self> {
        let breaker = || {
            Breaker::new(
                config.pool.breaker_failures,
                Duration::from_millis(config.pool.breaker_open_ms),
            )
        };
        let mut models = HashMap::new();
        let mut discovered = Vec::new();
        for m in &config.models {
            let mut replicas = Vec::new();
            if m.source().is_some() {
                replicas.push(Arc::new(Replica {
                    name: "local".into(),
                    model: m.id.clone(),
                    kind: ReplicaKind::Local,
                    breaker: breaker(),
                    in_flight: AtomicUsize::new(0),
                }));
            }
            if !engine_only {
                for (i, r) in m.remote.iter().enumerate() {
                    if let Some(target) = discovery::DnsTarget::from_config(&m.id, i, r) {
                        discovered.push(target);
                        continue;
                    }
                    let client = RemoteClient::new(r, &m.id)?;
                    replicas.push(Arc::new(Replica {
                        name: format!("{}/remote-{i}", m.id),
                        model: m.id.clone(),
                        kind: ReplicaKind::Remote(Box::new(client)),
                        breaker: breaker(),
                        in_flight: AtomicUsize::new(0),
                    }));
                }
            }
            models.insert(m.id.clone(), RwLock::new(Arc::new(replicas)));
        }
        Ok(Self {
            models,
            discovered,
            config: config.pool.clone(),
        })
    }

    /// `model`'s replicas at this moment.
    pub fn replicas(&self, model: &str) -> Arc<Vec<Arc<Replica>>> {
        self.models
            .get(model)
            .map(|r| r.read().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }

    /// Replaces the replicas of `model` that `keep` rejects and adds `join` (DNS discovery).
    fn update(&self, model: &str, keep: impl Fn(&Replica) -> bool, join: Vec<Arc<Replica>>) {
        let Some(members) = self.models.get(model) else {
            return;
        };
        let mut members = members.write().unwrap_or_else(|p| p.into_inner());
        let mut next: Vec<Arc<Replica>> = members.iter().filter(|r| keep(r)).cloned().collect();
        next.extend(join);
        *members = Arc::new(next);
    }

    fn breaker(&self) -> Breaker {
        Breaker::new(
            self.config.breaker_failures,
            Duration::from_millis(self.config.breaker_open_ms),
        )
    }

    /// The affinity key of a prompt: its first `affinity_prefix_chars` characters.
    pub fn affinity_key(&self, prompt: &str) -> u64 {
        let end = prompt
            .char_indices()
            .nth(self.config.affinity_prefix_chars)
            .map_or(prompt.len(), |(i, _)| i);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        prompt[..end].hash(&mut h);
        h.finish()
    }

    /// `model`'s replicas to try, in order: the prefix-affine one first unless it is much
    /// busier than the least busy, then the rest by load. Replicas with an open breaker or
    /// past the queue bound are left out (and counted).
    pub fn plan(
        &self,
        model: &str,
        affinity: u64,
        local_load: Option<EngineLoad>,
    ) -> (Vec<Arc<Replica>>, Skipped) {
        let mut skipped = Skipped::default();
        let mut ready: Vec<(Arc<Replica>, Busy)> = Vec::new();
        for r in self.replicas(model).iter() {
            let busy = match (&r.kind, &local_load) {
                (ReplicaKind::Local, Some(l)) => {
                    let kv = if l.kv_blocks_total > 0 {
                        l.kv_blocks_used as f64 / l.kv_blocks_total as f64
                    } else {
                        0.0
                    };
                    Busy {
                        score: (l.running + l.waiting).max(r.in_flight()) as f64 + kv,
                        queued: l.waiting,
                    }
                }
                // Still loading: it can take requests once ready; the handler answers 503.
                (ReplicaKind::Local, None) => Busy {
                    score: r.in_flight() as f64,
                    queued: 0,
                },
                // Its own report, where it gives one, also counts other gateways' traffic.
                (ReplicaKind::Remote(remote), _) => match remote.upstream_load() {
                    Some(u) => Busy {
                        score: (u.running + u.waiting).max(r.in_flight()) as f64 + u.kv_usage,
                        queued: u.waiting.max(r.in_flight().saturating_sub(u.running)),
                    },
                    None => Busy {
                        score: r.in_flight() as f64,
                        queued: r.in_flight(),
                    },
                },
            };
            if busy.queued >= self.config.max_queue {
                skipped.queue_full += 1;
                continue;
            }
            // Only looked at here: the half-open probe is taken by the replica actually tried.
            if r.breaker.state() == breaker::BreakerState::Open {
                skipped.circuit_open += 1;
                continue;
            }
            ready.push((r.clone(), busy));
        }
        ready.sort_by(|a, b| a.1.score.total_cmp(&b.1.score));
        // Rendezvous hashing: the replica with the highest hash of (prompt prefix, name) is
        // the prompt's home, so its prefix cache keeps hitting while replicas come and go.
        let home = ready
            .iter()
            .enumerate()
            .max_by_key(|(_, (r, _))| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (affinity, &r.name).hash(&mut h);
                h.finish()
            })
            .map(|(i, _)| i);
        if let (Some(i), Some(least)) = (home, ready.first().map(|x| x.1.score)) {
            if ready[i].1.score <= least + self.config.affinity_max_imbalance as f64 {
                let chosen = ready.remove(i);
                ready.insert(0, chosen);
            }
        }
        (ready.into_iter().map(|(r, _)| r).collect(), skipped)
    }

    /// Checks every remote replica periodically, feeding its breaker, and starts resolving
    /// the `dns` entries.
    pub fn spawn_health_checks(self: &Arc<Self>) {
        for members in self.models.values() {
            let members = members.read().unwrap_or_else(|p| p.into_inner()).clone();
            for r in members.iter().filter(|r| r.remote().is_some()) {
                self.watch(r);
            }
        }
        if self.discovered.is_empty() {
            return;
        }
        match discovery::resolver(&self.config) {
            Ok(resolver) => {
                let resolver = Arc::new(resolver);
                for target in &self.discovered {
                    tokio::spawn(discovery::run(
                        Arc::downgrade(self),
                        target.clone(),
                        resolver.clone(),
                    ));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot set up DNS resolution; `dns` replicas stay empty")
            }
        }
    }

    /// Health-checks one remote replica until it leaves the pool.
    fn watch(&self, replica: &Arc<Replica>) {
        let interval = Duration::from_millis(self.config.health_interval_ms.max(100));
        let replica: Weak<Replica> = Arc::downgrade(replica);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                // Gone from the pool and no request holds it: stop.
                let Some(r) = replica.upgrade() else { return };
                let Some(remote) = r.remote() else { return };
                if remote.check_health().await {
                    remote.refresh_load().await;
                    if r.breaker.state() != breaker::BreakerState::Closed {
                        tracing::info!(replica = %r.name, model = %r.model, "replica healthy again");
                    }
                    r.breaker.success();
                } else {
                    tracing::warn!(replica = %r.name, model = %r.model, "health check failed");
                    r.breaker.failure();
                }
            }
        });
    }
}
