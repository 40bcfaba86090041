//! Engine discovery over real DNS: the test serves a zone on a loopback port (hickory's own
//! message types over UDP), a gateway resolves `engines.test` there, and engine processes on
//! 127.0.0.1 and 127.0.0.2 join and leave as the zone's A records change, while requests
//! keep being answered. An address with no engine behind it never joins.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rosetta_tests::*;

const ENGINE: &str = r#"
server: { listen: 127.0.0.1:0, engine_token: "t0ken" }
cache_dir: "{cache}"
auth: { allow_unauthenticated: true }
models:
  - { id: m, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 256, engine: { kv_cache_bytes: 4194304 } }
"#;

/// Sends chats until `until` holds for the set of replicas that answered in the last
/// round of ten (or 30 s pass); every request must succeed.
async fn serve_until(
    gateway: &Server,
    what: &str,
    until: impl Fn(&BTreeSet<String>) -> bool,
) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = BTreeSet::new();
        for i in 0..10 {
            let r = gateway
                .post(
                    "/v1/chat/completions",
                    &json!({"model": "m", "messages": [{"role": "user", "content": format!("Jambo {i}")}], "max_tokens": 1}),
                )
                .await;
            assert_eq!(r.status, 200, "while waiting for {what}: {}", r.text);
            seen.insert(r.header("x-rosetta-replica").unwrap().to_string());
        }
        if until(&seen) {
            return seen;
        }
        assert!(Instant::now() < deadline, "{what}: still {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends one chat at a time until the answer is `want` (30 s at most); meanwhile every
/// answer must be `meanwhile`. Returns the `want` answer.
async fn poll_until(gateway: &Server, want: u16, meanwhile: u16, what: &str) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = gateway
            .post("/v1/chat/completions", &json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}))
            .await;
        if r.status == want {
            return r;
        }
        assert_eq!(r.status, meanwhile, "while waiting for {what}: {}", r.text);
        assert!(Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn replicas_join_and_leave_as_dns_changes_while_requests_flow() {
    let zone: Zone = Arc::new(Mutex::new(vec![Ipv4Addr::new(127, 0, 0, 1)]));
    let dns = dns_zone_server("engines.test.", zone.clone()).await;
    let port = free_port();
    let listen = |ip: &str| format!("{ip}:{port}");
    let _a = Server::start_with_args(ENGINE, &["--engine-only", "--listen", &listen("127.0.0.1")]);
    let _b = Server::start_with_args(ENGINE, &["--engine-only", "--listen", &listen("127.0.0.2")]);
    let gateway = Server::start(&format!(
        "server: {{ listen: 127.0.0.1:0 }}\ncache_dir: \"{{cache}}\"\nauth: {{ allow_unauthenticated: true }}\n\
         pool: {{ dns_servers: [\"{dns}\"], dns_refresh_ms: 100, health_interval_ms: 200 }}\n\
         models:\n  - {{ id: m, licence: apache-2.0, remote: [{{ dns: engines.test, port: {port}, api_key: t0ken, load_path: /load }}] }}\n"
    ));
    let a = format!("m/remote-0/127.0.0.1:{port}");
    let b = format!("m/remote-0/127.0.0.2:{port}");

    // Until the first resolution and health check, no replica: 503s, never a hang.
    poll_until(&gateway, 200, 503, "a replica discovered").await;
    // One record: one replica serves.
    let seen = serve_until(&gateway, "the first replica", |s| s.contains(&a)).await;
    assert_eq!(seen, BTreeSet::from([a.clone()]));

    // A second address, and one with no engine behind it: the engine joins, the empty
    // address never does (its health check fails), and no request fails meanwhile.
    zone.lock()
        .unwrap()
        .extend([Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)]);
    serve_until(&gateway, "both replicas", |s| {
        s.contains(&a) && s.contains(&b)
    })
    .await;

    // The first leaves DNS: it takes no more requests.
    zone.lock()
        .unwrap()
        .retain(|ip| *ip != Ipv4Addr::new(127, 0, 0, 1));
    let seen = serve_until(&gateway, "only the second", |s| !s.contains(&a)).await;
    assert!(seen.iter().all(|r| r == &b), "{seen:?}");
    let metrics = gateway.get("/metrics").await.text;
    assert!(
        !metrics.contains("127.0.0.3"),
        "the empty address joined: {metrics}"
    );

    // No records at all: 503, not a hang or a 500; then back.
    zone.lock().unwrap().clear();
    poll_until(&gateway, 503, 200, "every replica gone").await;
    zone.lock().unwrap().push(Ipv4Addr::new(127, 0, 0, 1));
    let back = poll_until(&gateway, 200, 503, "the replica back").await;
    assert_eq!(back.header("x-rosetta-replica"), Some(a.as_str()));
}
