//! Replicas from DNS: a `remote[].dns` name (e.g. a Kubernetes headless Service) resolved
//! every `pool.dns_refresh_ms`; each address is a replica with its own health checks, breaker
//! and load. A new address joins after a passing health check; one that vanishes stops
//! taking requests (those running on it finish).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Weak};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use rosetta_config::{PoolConfig, RemoteReplica};

use super::remote::RemoteClient;
use super::{Pool, Replica, ReplicaKind};

/// One `dns` entry of a model.
#[derive(Debug, Clone)]
pub struct DnsTarget {
    model: String,
    /// The entry's place in `remote`, in its replicas' names.
    index: usize,
    name: String,
    port: u16,
    remote: RemoteReplica,
}

impl DnsTarget {
    pub fn from_config(model: &str, index: usize, remote: &RemoteReplica) -> Option<Self> {
        Some(Self {
            model: model.to_string(),
            index,
            name: remote.dns.clone()?,
            port: remote.port?,
            remote: remote.clone(),
        })
    }

    /// Its replicas' names: `<model>/remote-<i>/<ip>:<port>`.
    fn prefix(&self) -> String {
        format!("{}/remote-{}/", self.model, self.index)
    }

    fn replica_name(&self, addr: SocketAddr) -> String {
        format!("{}{addr}", self.prefix())
    }
}

/// The resolver: `pool.dns_servers` when given, else the system's configuration.
pub fn resolver(config: &PoolConfig) -> anyhow::Result<TokioResolver> {
    let builder = if config.dns_servers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let servers = config
            .dns_servers
            .iter()
            .filter_map(|s| s.parse::<SocketAddr>().ok())
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    Ok(builder.build()?)
}

/// Resolves `target` until the pool is dropped, keeping its replicas in step with DNS.
pub async fn run(pool: Weak<Pool>, target: DnsTarget, resolver: Arc<TokioResolver>) {
    let interval = {
        let Some(p) = pool.upgrade() else { return };
        Duration::from_millis(p.config.dns_refresh_ms.max(1))
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        // Answers are wanted as they are now, not as cached.
        resolver.clear_cache();
        let found: BTreeSet<SocketAddr> = match resolver.lookup_ip(target.name.as_str()).await {
            Ok(ips) => {
                failing = false;
                ips.iter()
                    .map(|ip: IpAddr| SocketAddr::new(ip, target.port))
                    .collect()
            }
            // No such name (yet): no replicas; other failures keep the replicas there are.
            Err(e) if e.is_no_records_found() => BTreeSet::new(),
            Err(e) => {
                if !failing {
                    tracing::warn!(name = %target.name, error = %e, "DNS resolution failed; keeping the known replicas");
                }
                failing = true;
                continue;
            }
        };
        let Some(pool) = pool.upgrade() else { return };
        refresh(&pool, &target, &found).await;
    }
}

/// Removes the replicas whose address vanished; adds each new address that passes a health
/// check (one that fails is tried again at the next refresh).
async fn refresh(pool: &Arc<Pool>, target: &DnsTarget, found: &BTreeSet<SocketAddr>) {
    let prefix = target.prefix();
    let current: BTreeSet<String> = pool
        .replicas(&target.model)
        .iter()
        .filter(|r| r.name.starts_with(&prefix))
        .map(|r| r.name.clone())
        .collect();
    let wanted: BTreeSet<String> = found.iter().map(|a| target.replica_name(*a)).collect();
    let mut join = Vec::new();
    for addr in found {
        let name = target.replica_name(*addr);
        if current.contains(&name) {
            continue;
        }
        let mut remote = target.remote.clone();
        remote.url = format!("{}://{addr}", target.remote.scheme);
        let client = match RemoteClient::new(&remote, &target.model) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(replica = %name, error = %e, "cannot make a client for a discovered replica");
                continue;
            }
        };
        if !client.check_health().await {
            tracing::debug!(replica = %name, "discovered replica not healthy yet");
            continue;
        }
        client.refresh_load().await;
        tracing::info!(replica = %name, model = %target.model, "replica joined (DNS)");
        join.push(Arc::new(Replica {
            name,
            model: target.model.clone(),
            kind: ReplicaKind::Remote(Box::new(client)),
            breaker: pool.breaker(),
            in_flight: AtomicUsize::new(0),
        }));
    }
    for gone in current.difference(&wanted) {
        tracing::info!(replica = %gone, model = %target.model, "replica left (DNS); its running requests finish");
    }
    if join.is_empty() && current.is_subset(&wanted) {
        return;
    }
    for r in &join {
        pool.watch(r);
    }
    pool.update(
        &target.model,
        |r| !r.name.starts_with(&prefix) || wanted.contains(&r.name),
        join,
    );
}
