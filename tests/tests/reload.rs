//! Live configuration against the real binary: the config file changes (a new key beside an
//! old one, a tenant removed, a new policy) and takes effect without a restart; a broken file
//! is refused, counted, and the old config keeps serving; SIGHUP reloads at once.

use std::process::Command;
use std::time::{Duration, Instant};

use rosetta_tests::*;

const MODELS: &str = r#"
cache_dir: "{cache}"
models:
  - { id: m, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 256, engine: { kv_cache_bytes: 4194304 } }
"#;

fn config(server: &str, tenants: &str, policies: &str) -> String {
    format!("server: {{ listen: 127.0.0.1:0, {server} }}\n{MODELS}tenants:\n{tenants}{policies}")
}

fn chat() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "Jambo"}], "max_tokens": 1})
}

/// Rewrites the server's config file (placeholders filled as at start).
fn rewrite(s: &Server, text: &str) {
    let text = text.replace("{cache}", &shared_cache_dir().display().to_string());
    std::fs::write(s.config_path(), text).unwrap();
}

/// Polls until `key` gets `status` on a chat request (20 s at most).
async fn until_status(s: &Server, key: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = s.post_as(key, "/v1/chat/completions", &chat()).await;
        if r.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never {status} (last {}: {})",
            r.status,
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reloads(metrics: &str, result: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "rosetta_config_reloads_total{{result=\"{result}\"}}"
            ))
        })
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_changed_file_reloads_tenants_keys_and_policies_and_a_broken_one_is_refused() {
    let server = "config_poll_seconds: 0.1";
    let [(old, old_hash), (gone, gone_hash), (new, new_hash), (late, late_hash)] =
        [(); 4].map(|()| new_key());
    let before = config(
        server,
        &format!("  - {{ id: acme, keys: [{{ hash: \"{old_hash}\" }}] }}\n  - {{ id: gone, keys: [{{ hash: \"{gone_hash}\" }}] }}\n"),
        "",
    );
    let s = Server::start(&before);
    s.post_as(&old, "/v1/chat/completions", &chat()).await.ok();
    s.post_as(&gone, "/v1/chat/completions", &chat()).await.ok();

    // Key rotation: acme holds the old key and a new one; tenant `gone` is removed; a
    // policy forbids acme the model... for a tenant added now.
    let policy = s.dir().join("extra.cedar");
    std::fs::write(
        &policy,
        "@id(\"no-m-for-late\")\n@reason(\"late tenants may not use m\")\nforbid (principal == Rosetta::Tenant::\"late\", action, resource == Rosetta::Model::\"m\");\n",
    )
    .unwrap();
    let after = config(
        server,
        &format!(
            "  - {{ id: acme, keys: [{{ hash: \"{old_hash}\" }}, {{ hash: \"{new_hash}\" }}] }}\n  - {{ id: late, keys: [{{ hash: \"{late_hash}\" }}] }}\n"
        ),
        &format!("policies: {{ files: [\"{}\"] }}\n", policy.display()),
    );
    rewrite(&s, &after);
    until_status(&s, &new, 200).await;
    s.post_as(&old, "/v1/chat/completions", &chat()).await.ok();
    s.post_as(&gone, "/v1/chat/completions", &chat())
        .await
        .assert_error(401, None, None);
    let denied = s.post_as(&late, "/v1/chat/completions", &chat()).await;
    denied.assert_error(403, None, None);
    assert!(denied.text.contains("no-m-for-late"), "{}", denied.text);
    let metrics = s.get("/metrics").await.text;
    assert_eq!(reloads(&metrics, "applied"), 1, "{metrics}");

    // A broken file: refused, counted, and the config before it keeps serving.
    rewrite(
        &s,
        &after.replace("licence: apache-2.0", "licence: no-such-licence"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while reloads(&s.get("/metrics").await.text, "refused") < 1 {
        assert!(
            Instant::now() < deadline,
            "the broken file was never refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.post_as(&new, "/v1/chat/completions", &chat()).await.ok();
    s.post_as(&late, "/v1/chat/completions", &chat())
        .await
        .assert_error(403, None, None);
    assert!(s.logs().contains("config reload refused"), "{}", s.logs());
}

#[tokio::test]
async fn sighup_reloads_at_once() {
    let server = "config_poll_seconds: 0";
    let [(old, old_hash), (new, new_hash)] = [(); 2].map(|()| new_key());
    let before = config(
        server,
        &format!("  - {{ id: acme, keys: [{{ hash: \"{old_hash}\" }}] }}\n"),
        "",
    );
    let s = Server::start(&before);
    let after = config(
        server,
        &format!(
            "  - {{ id: acme, keys: [{{ hash: \"{old_hash}\" }}, {{ hash: \"{new_hash}\" }}] }}\n"
        ),
        "",
    );
    rewrite(&s, &after);
    // Without polling nothing happens...
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.post_as(&new, "/v1/chat/completions", &chat())
        .await
        .assert_error(401, None, None);
    // ...until SIGHUP.
    let kill = Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    until_status(&s, &new, 200).await;
    s.post_as(&old, "/v1/chat/completions", &chat()).await.ok();
}
