//! `rosetta serve`: bind, report the address, load models in the background, serve until
//! interrupted.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rosetta_config::Config;

use crate::access::Access;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::ratelimit::LimitClock;
use crate::registry;
use crate::router::Router;
use crate::secrets::{self, SaltKey};
use crate::state::{AppState, Services};

/// Serves `config`; `source` is the file it came from (reloaded on SIGHUP or change).
pub async fn serve(
    mut config: Config,
    engine_only: bool,
    source: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let engine_token = secrets::engine_token(&config.server);
    if engine_only && engine_token.is_none() && !config.server.listen.ip().is_loopback() {
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], config.server.listen.port()));
        tracing::warn!(
            asked = %config.server.listen,
            listening = %loopback,
            "engine-only without an engine token (ROSETTA_ENGINE_TOKEN or server.engine_token): listening on loopback only"
        );
        config.server.listen = loopback;
    }
    let salt_key = SaltKey::from_config(&config.server);
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new(config.server.metrics.tenant_label));
    let (access, router) = if engine_only {
        tracing::info!("engine-only: serving this process's engines without auth, policies, limits or routes; keep it on a private network");
        (Access::open(&config)?, Router::local_models(&config))
    } else {
        announce_access(&config, addr);
        (
            Access::with_metrics(&config, &LimitClock::monotonic(), metrics.clone())?,
            Router::new(&config),
        )
    };
    let pool = Arc::new(Pool::new(&config, engine_only)?);
    pool.spawn_health_checks();
    // The detector's n-gram index takes a few milliseconds to build; not on the first request.
    rosetta_langid::warm_up();
    let services = Services {
        access: std::sync::RwLock::new(Arc::new(access)),
        router: std::sync::RwLock::new(Arc::new(router)),
        pool,
        engine_only,
        request_limits: config.request_limits.clone(),
        cors_origins: config.server.cors_origins.clone(),
        salt_key: salt_key.clone(),
        engine_token: engine_token.filter(|_| engine_only),
        metrics: metrics.clone(),
        metrics_enabled: config.server.metrics.enabled,
    };
    let state = AppState::new(
        config.models.clone(),
        config.server.max_body_bytes,
        services,
    );
    // One line on stdout, so scripts and tests can find a port chosen by the OS (`:0`).
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    tracing::info!(%addr, "listening; /health is live, /ready once models are loaded");

    if let (Some(path), false) = (source, engine_only) {
        crate::reload::spawn(state.clone(), path, config.clone(), LimitClock::monotonic());
    }

    let cache_dir = config
        .cache_dir
        .clone()
        .unwrap_or_else(registry::default_cache_dir);
    let loader_state = state.clone();
    let options = registry::EngineOptions {
        stall_timeout: std::time::Duration::from_secs_f64(config.server.stream_stall_timeout),
        prefix_salt_key: salt_key.bytes().to_vec(),
        metrics: Some(metrics),
    };
    // Remote-only models have nothing to load here.
    let models: Vec<_> = config
        .models
        .iter()
        .filter(|m| m.source().is_some())
        .cloned()
        .collect();
    tokio::task::spawn_blocking(move || {
        let loaded: anyhow::Result<Vec<_>> = models
            .iter()
            .map(|m| registry::load_model(m, Path::new(&cache_dir), &options))
            .collect();
        match loaded {
            Ok(models) => {
                loader_state.set_models(models);
                tracing::info!("all models loaded; ready");
            }
            Err(e) => {
                // A server that cannot serve what it was configured for should not pretend to.
                tracing::error!("{e:#}");
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        }
    });

    let grace = std::time::Duration::from_secs_f64(config.server.shutdown_grace_seconds);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let drain_state = state.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        drain_state.drain().run(grace).await;
        stop.send_replace(true);
    });
    let mut graceful = stopping.clone();
    let serve = axum::serve(listener, crate::api::router(state.clone())).with_graceful_shutdown(
        async move {
            let _ = graceful.wait_for(|s| *s).await;
        },
    );
    // A client that never reads can keep its connection open past the drain; it does not
    // keep the process alive for long.
    let mut forced = stopping;
    let served = tokio::select! {
        served = serve => served.context("server error"),
        () = async move {
            let _ = forced.wait_for(|s| *s).await;
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        } => {
            tracing::warn!("connections still open 5 s after the drain; closing them");
            Ok(())
        }
    };
    state.access().close_audit();
    tracing::info!("stopped");
    served
}

/// Says at start who may use the server.
fn announce_access(config: &Config, addr: std::net::SocketAddr) {
    let keys: usize = config.tenants.iter().map(|t| t.keys.len()).sum();
    match config.anonymous_tenant_id() {
        Some(tenant) if addr.ip().is_loopback() => tracing::info!(
            tenant,
            keys,
            "unauthenticated use is allowed (loopback only): requests without a configured key act as tenant `{tenant}`"
        ),
        Some(tenant) => tracing::warn!(
            tenant,
            keys,
            %addr,
            "unauthenticated use is allowed on a non-loopback address: anyone who can reach it acts as tenant `{tenant}`"
        ),
        None => tracing::info!(keys, tenants = config.tenants.len(), "API keys required"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
