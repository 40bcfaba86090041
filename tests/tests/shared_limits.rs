//! Rate limits shared by two gateway processes through a real Redis (Debian's
//! `redis-server`, started here on a free loopback port): a tenant's requests and tokens per
//! minute hold across both; with Redis stopped both keep serving on local limits (their
//! share, `gateway_replicas: 2`), never a 5xx; with Redis back they share again.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rosetta_tests::*;

struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start(port: u16) -> Redis {
        Self::start_with(port, &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(extra)
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is missing: scripts/test.sh installs it (Debian package redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(redis_port: u16) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
cache_dir: "{{cache}}"
models:
  - {{ id: m, demo: {{ arch: qwen2, size: tiny, seed: 1 }}, licence: apache-2.0, max_context: 256, engine: {{ kv_cache_bytes: 4194304 }} }}
tenants:
  - {{ id: rpm, keys: [{{ hash: "RPM_HASH" }}], limits: {{ requests_per_minute: 10 }} }}
  - {{ id: tpm, keys: [{{ hash: "TPM_HASH" }}], limits: {{ tokens_per_minute: 110 }} }}
ratelimit:
  backend: redis
  redis: {{ url: "redis://127.0.0.1:{redis_port}", key_prefix: "test-{redis_port}" }}
  gateway_replicas: 2
"#
    )
}

/// A request costing exactly 20 tokens: a 10-token prompt and 10 generated.
fn twenty_tokens() -> Value {
    json!({"model": "m", "prompt": (100..110).collect::<Vec<u32>>(), "max_tokens": 10, "ignore_eos": true})
}

fn one_request() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "Jambo"}], "max_tokens": 1})
}

/// Sends `n` requests, every `every`-th to the second gateway and the rest to the first;
/// (admitted, refused) per gateway. Anything but 200 or 429 fails the test.
async fn interleave(
    gateways: [&Server; 2],
    every: usize,
    key: &str,
    path: &str,
    body: &Value,
    n: usize,
) -> [(usize, usize); 2] {
    let mut counts = [(0, 0); 2];
    for i in 0..n {
        let g = usize::from(i % every == every - 1);
        let r = gateways[g].post_as(key, path, body).await;
        match r.status.as_u16() {
            200 => counts[g].0 += 1,
            429 => counts[g].1 += 1,
            other => panic!("request {i} got {other}: {}", r.text),
        }
    }
    counts
}

async fn store_up(g: &Server) -> Option<String> {
    let text = g.get("/metrics").await.text;
    text.lines()
        .find(|l| l.starts_with("rosetta_ratelimit_store_up{backend=\"redis\"}"))
        .and_then(|l| l.split_whitespace().last().map(str::to_string))
}

#[tokio::test]
async fn two_gateways_share_limits_through_redis_and_fall_back_without_it() {
    let port = free_port();
    let redis = Redis::start(port);
    let (config, [rpm, tpm]) = with_new_keys(&config(redis.port), ["RPM_HASH", "TPM_HASH"]);
    let g1 = Server::start(&config);
    let g2 = Server::start(&config);
    let both = [&g1, &g2];
    // Two requests to the first gateway for each to the second: shared limits pass the
    // first N in arrival order, wherever they land (local shares would pass 5 on each).
    // 30 requests against 10 a minute: exactly the first 10 pass (7 at the first gateway).
    let c = interleave(both, 3, &rpm, "/v1/chat/completions", &one_request(), 30).await;
    assert_eq!(c, [(7, 13), (3, 7)], "{c:?}");
    // 110 tokens a minute at 20 a request: exactly the first 5 pass (the 6th would wait
    // about 5 s).
    let c = interleave(both, 3, &tpm, "/v1/completions", &twenty_tokens(), 12).await;
    assert_eq!(c, [(4, 4), (1, 3)], "{c:?}");
    assert_eq!(store_up(&g1).await.as_deref(), Some("1"));

    // Redis gone: each gateway serves on its local share (5 requests, 55 tokens), no 5xx.
    drop(redis);
    let c = interleave(both, 2, &rpm, "/v1/chat/completions", &one_request(), 16).await;
    assert_eq!(c, [(5, 3), (5, 3)], "{c:?}");
    let c = interleave(both, 2, &tpm, "/v1/completions", &twenty_tokens(), 8).await;
    assert_eq!(c, [(2, 2), (2, 2)], "{c:?}");
    assert_eq!(store_up(&g1).await.as_deref(), Some("0"));
    assert_eq!(store_up(&g2).await.as_deref(), Some("0"));

    // Redis back (empty): after at most a second the gateways share it again.
    let _redis = Redis::start(port);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let c = interleave(both, 3, &rpm, "/v1/chat/completions", &one_request(), 30).await;
    assert_eq!(c, [(7, 13), (3, 7)], "{c:?}");
    let c = interleave(both, 3, &tpm, "/v1/completions", &twenty_tokens(), 12).await;
    assert_eq!(c, [(4, 4), (1, 3)], "{c:?}");
    assert_eq!(store_up(&g1).await.as_deref(), Some("1"));
    assert_eq!(store_up(&g2).await.as_deref(), Some("1"));
}

#[tokio::test]
async fn a_password_from_the_environment_and_deny_when_redis_is_gone() {
    let port = free_port();
    let redis = Redis::start_with(port, &["--requirepass", "s3cret-pass"]);
    let config = format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
cache_dir: "{{cache}}"
models:
  - {{ id: m, demo: {{ arch: qwen2, size: tiny, seed: 1 }}, licence: apache-2.0, max_context: 256, engine: {{ kv_cache_bytes: 4194304 }} }}
tenants:
  - {{ id: rpm, keys: [{{ hash: "RPM_HASH" }}], limits: {{ requests_per_minute: 2 }} }}
ratelimit:
  backend: redis
  redis: {{ url_env: TEST_REDIS_URL, key_prefix: "deny-{port}" }}
  on_store_error: deny
"#
    );
    let (config, [key]) = with_new_keys(&config, ["RPM_HASH"]);
    let url = format!("redis://:s3cret-pass@127.0.0.1:{port}");
    let g = Server::start_with_env(&config, &[("TEST_REDIS_URL", url.as_str())]);
    let c = interleave([&g, &g], 2, &key, "/v1/chat/completions", &one_request(), 3).await;
    assert_eq!(c[0].0 + c[1].0, 2);
    // Authenticated: the limits are Redis's.
    assert_eq!(store_up(&g).await.as_deref(), Some("1"));
    assert!(
        !g.logs().contains("s3cret-pass"),
        "the password reached the logs"
    );

    // Redis gone, `deny`: a clear 503, not a 500 and not unlimited service.
    drop(redis);
    let r = g
        .post_as(&key, "/v1/chat/completions", &one_request())
        .await;
    r.assert_error(503, None, None);
    assert!(
        r.text.contains("rate-limit store is unavailable"),
        "{}",
        r.text
    );
    assert_eq!(store_up(&g).await.as_deref(), Some("0"));
}
