//! Keys, tenants and licence policies over HTTP against the real binary: every allow and
//! deny of the default policies, /v1/models filtering, 401s, and the audit log.

use std::collections::BTreeSet;

use rosetta_tests::*;

/// Five models with different licences (all the same tiny weights) and three tenants.
const CONFIG: &str = r#"
server: { listen: 127.0.0.1:0, max_body_bytes: 65536 }
cache_dir: "{cache}"
audit: { path: "{tmp}/audit.jsonl" }
models:
  - { id: open, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 256, engine: { kv_cache_bytes: 4194304 } }
  - { id: aya, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: cc-by-nc-4.0, max_context: 256, engine: { kv_cache_bytes: 4194304 } }
  - { id: llama, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: llama3.1, max_context: 256, engine: { kv_cache_bytes: 4194304 } }
  - { id: vision, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: llama3.2-vision, max_context: 256, engine: { kv_cache_bytes: 4194304 } }
  - { id: qwen, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: qwen, max_context: 256, engine: { kv_cache_bytes: 4194304 } }
tenants:
  - id: acme
    keys: [{ hash: "ACME_HASH", name: acme-prod }]
    commercial: true
    region: DE
    accepted_licences: [llama3.1, llama3.2-vision]
    monthly_active_users: 200000000
  - id: lab
    keys: [{ hash: "LAB_HASH" }]
    commercial: false
    region: US
    accepted_licences: [cc-by-nc-4.0, llama3.1, llama3.2-vision]
  - id: narrow
    keys: [{ hash: "NARROW_HASH" }]
    models: [open, llama]
    accepted_licences: [llama3.1]
"#;

struct Keys {
    acme: String,
    lab: String,
    narrow: String,
}

fn start() -> (Server, Keys) {
    let (config, [acme, lab, narrow]) =
        with_new_keys(CONFIG, ["ACME_HASH", "LAB_HASH", "NARROW_HASH"]);
    (Server::start(&config), Keys { acme, lab, narrow })
}

fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Habari"}], "max_tokens": 2})
}

/// (model, Some(words the 403 must contain)) or (model, None) for allowed.
type Expect = (&'static str, Option<&'static [&'static str]>);

#[tokio::test]
async fn licence_policies_decide_per_tenant_and_model() {
    let (s, keys) = start();
    let matrix: [(&str, &str, [Expect; 5]); 3] = [
        (
            "acme",
            &keys.acme,
            [
                ("open", None),
                (
                    "aya",
                    Some(&[
                        "cc-by-nc-4.0",
                        "does not allow commercial use",
                        "non-commercial-licence",
                        "licence-not-accepted",
                    ]),
                ),
                ("llama", None),
                (
                    "vision",
                    Some(&[
                        "llama3.2-vision",
                        "excludes the tenant's region",
                        "excluded-region",
                    ]),
                ),
                (
                    "qwen",
                    Some(&[
                        "Qwen License Agreement",
                        "more monthly active users",
                        "user-cap",
                    ]),
                ),
            ],
        ),
        (
            "lab",
            &keys.lab,
            [
                ("open", None),
                ("aya", None),
                ("llama", None),
                ("vision", None),
                ("qwen", None),
            ],
        ),
        (
            "narrow",
            &keys.narrow,
            [
                ("open", None),
                ("aya", Some(&["model-allowlist", "non-commercial-licence"])),
                ("llama", None),
                (
                    "vision",
                    Some(&["licence must be accepted", "model-allowlist"]),
                ),
                ("qwen", Some(&["may only use the models listed"])),
            ],
        ),
    ];
    for (tenant, key, expectations) in &matrix {
        let mut allowed = BTreeSet::new();
        for (model, expect) in expectations {
            let r = s
                .post_as(key, "/v1/chat/completions", &chat_body(model))
                .await;
            match expect {
                None => {
                    let body = r.ok();
                    assert_eq!(body["model"], *model);
                    allowed.insert(model.to_string());
                }
                Some(words) => {
                    r.assert_error(
                        403,
                        Some("invalid_request_error"),
                        Some("model_access_denied"),
                    );
                    let msg = r.json["error"]["message"].as_str().unwrap_or_default();
                    assert!(msg.contains(&format!("`{tenant}`")), "{msg}");
                    assert!(msg.contains(&format!("`{model}`")), "{msg}");
                    for w in *words {
                        assert!(
                            msg.contains(w),
                            "{tenant}/{model}: `{w}` missing from: {msg}"
                        );
                    }
                    assert_eq!(r.json["error"]["param"], "model");
                    // The legacy endpoint and the tokenizer are guarded the same way.
                    let c = s
                        .post_as(
                            key,
                            "/v1/completions",
                            &json!({"model": model, "prompt": "x", "max_tokens": 1}),
                        )
                        .await;
                    c.assert_error(403, None, Some("model_access_denied"));
                    let t = s
                        .post_as(key, "/tokenize", &json!({"model": model, "prompt": "x"}))
                        .await;
                    t.assert_error(403, None, Some("model_access_denied"));
                    // A model it may not use does not exist for it.
                    let g = s.get_as(key, &format!("/v1/models/{model}")).await;
                    g.assert_error(404, None, Some("model_not_found"));
                }
            }
        }
        // /v1/models lists exactly what the key may invoke.
        let list = s.get_as(key, "/v1/models").await.ok();
        let listed: BTreeSet<String> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(listed, allowed, "{tenant}");
    }

    // Every decision is in the audit log, with tenant, model, licence, decision and policy.
    // The last decision made is narrow's listing of qwen (the matrix's last tenant and model).
    let entries = wait_for_audit(&s, |e| {
        e["tenant"] == "narrow" && e["action"] == "list" && e["model"] == "qwen"
    })
    .await;
    let find = |tenant: &str, model: &str, action: &str| {
        entries
            .iter()
            .find(|e| e["tenant"] == tenant && e["model"] == model && e["action"] == action)
            .unwrap_or_else(|| panic!("no audit entry for {tenant}/{model}/{action}"))
            .clone()
    };
    let denied = find("acme", "aya", "invoke");
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["licence"], "cc-by-nc-4.0");
    assert_eq!(denied["key"], "acme-prod");
    let policies = denied["policies"].to_string();
    assert!(policies.contains("non-commercial-licence"), "{denied}");
    assert!(denied["request_id"].is_string(), "{denied}");
    assert!(
        denied["ts"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{denied}"
    );
    let allowed = find("lab", "aya", "invoke");
    assert_eq!(allowed["decision"], "allow");
    assert!(allowed["policies"].to_string().contains("allow-by-default"));
    assert_eq!(find("narrow", "qwen", "list")["decision"], "deny");
    // Keys never reach logs or the audit log.
    let audit = std::fs::read_to_string(s.dir().join("audit.jsonl")).unwrap();
    let logs = s.logs();
    for key in [&keys.acme, &keys.lab, &keys.narrow] {
        assert!(!audit.contains(key.as_str()) && !logs.contains(key.as_str()));
    }
}

/// The audit log is written in the background: wait until the entry `last` is there.
async fn wait_for_audit(s: &Server, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let path = s.dir().join("audit.jsonl");
    for _ in 0..100 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let entries: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
            .collect();
        if entries.iter().any(&last) {
            return entries;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "the audit log {} never got the expected entry",
        path.display()
    );
}

#[tokio::test]
async fn requests_without_a_valid_key_get_401() {
    let (s, keys) = start();
    assert!(s.logs().contains("API keys required"), "{}", s.logs());
    let body = chat_body("open");
    let none = s.post("/v1/chat/completions", &body).await;
    none.assert_error(401, Some("invalid_request_error"), Some("invalid_api_key"));
    assert!(none.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Authorization: Bearer"));
    let unknown = s
        .post_as("rsk-not-a-real-key", "/v1/chat/completions", &body)
        .await;
    unknown.assert_error(401, None, Some("invalid_api_key"));
    let malformed = s
        .client()
        .get(s.url("/v1/models"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 401);
    let models = s.get("/v1/models").await;
    models.assert_error(401, None, Some("invalid_api_key"));
    // Health and readiness stay open for probes.
    assert_eq!(s.get("/health").await.status, 200);
    assert_eq!(s.get("/ready").await.status, 200);
    // A valid key works, and the server never echoes or logs keys.
    s.post_as(&keys.lab, "/v1/chat/completions", &body)
        .await
        .ok();
    assert!(!s.logs().contains(&keys.lab));
}

#[test]
fn config_check_validates_policies_against_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let good = "permit (principal, action == Rosetta::Action::\"invoke\", resource)\n  when { principal.tier == \"high\" };\n";
    // A typo in an attribute name is caught by the schema, not at request time.
    let bad = "forbid (principal, action, resource) when { resource.comercial_use };\n";
    std::fs::write(dir.path().join("good.cedar"), good).unwrap();
    std::fs::write(dir.path().join("bad.cedar"), bad).unwrap();
    let config = |file: &str| {
        format!(
            "auth: {{ allow_unauthenticated: true }}\nmodels: [{{ id: m, demo: {{ size: tiny }}, licence: mit }}]\npolicies: {{ files: [{file}] }}\n"
        )
    };
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ok = write("ok.yaml", config("good.cedar"));
    let out = run_cli(
        &["config", "check", ok.to_str().unwrap()],
        None,
        std::time::Duration::from_secs(30),
    );
    assert!(out.success(), "{out:?}");
    let broken = write("broken.yaml", config("bad.cedar"));
    let out = run_cli(
        &["config", "check", broken.to_str().unwrap()],
        None,
        std::time::Duration::from_secs(30),
    );
    assert!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("comercial_use"), "{}", out.stderr);
    let missing = write("missing.yaml", config("nope.cedar"));
    let out = run_cli(
        &["config", "check", missing.to_str().unwrap()],
        None,
        std::time::Duration::from_secs(30),
    );
    assert!(
        !out.success() && out.stderr.contains("nope.cedar"),
        "{out:?}"
    );
    let syntax = write(
        "syntax.cedar",
        "permit (principal, action resource);".into(),
    );
    let _ = syntax;
    let bad_syntax = write("bs.yaml", config("syntax.cedar"));
    let out = run_cli(
        &["config", "check", bad_syntax.to_str().unwrap()],
        None,
        std::time::Duration::from_secs(30),
    );
    assert!(
        !out.success() && out.stderr.contains("syntax.cedar"),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_forbid_that_fails_to_evaluate_denies() {
    let dir = tempfile::Builder::new()
        .prefix("rosetta-e2e-")
        .tempdir()
        .unwrap();
    // Overflows for a tenant with 200 million users: Cedar skips an erroring policy, which
    // for a forbid would mean allowing what it forbids.
    std::fs::write(
        dir.path().join("overflow.cedar"),
        "@reason(\"no giants\")\nforbid (principal, action, resource)\n  when { principal has monthly_active_users && principal.monthly_active_users * 100000000000 > 0 };\n",
    )
    .unwrap();
    let config = CONFIG.replace("audit:", "policies: { files: [overflow.cedar] }\naudit:");
    let (config, [acme, lab, _]) = with_new_keys(&config, ["ACME_HASH", "LAB_HASH", "NARROW_HASH"]);
    let cwd = dir.path().to_path_buf();
    let s = Server::start_in(dir, &config, &cwd);
    let r = s
        .post_as(&acme, "/v1/chat/completions", &chat_body("open"))
        .await;
    r.assert_error(403, None, Some("model_access_denied"));
    assert!(r.text.contains("could not be evaluated"), "{}", r.text);
    assert!(r.text.contains("overflow"), "{}", r.text);
    // A tenant for whom the policy evaluates (no user count) is not affected.
    s.post_as(&lab, "/v1/chat/completions", &chat_body("open"))
        .await
        .ok();
    // The denial and its reason are in the audit log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let audit = std::fs::read_to_string(s.dir().join("audit.jsonl")).unwrap_or_default();
        let denied = audit.lines().any(|l| {
            l.contains("\"tenant\":\"acme\"")
                && l.contains("\"decision\":\"deny\"")
                && l.contains("could not be evaluated")
        });
        if denied {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit entry: {audit}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test]
async fn model_listings_audit_allowances_once_and_denials_always() {
    let (s, keys) = start();
    for _ in 0..3 {
        s.get_as(&keys.narrow, "/v1/models").await.ok();
    }
    let count = |audit: &str, model: &str, action: &str, decision: &str| {
        audit
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| {
                e["tenant"] == "narrow"
                    && e["model"] == model
                    && e["action"] == action
                    && e["decision"] == decision
            })
            .count()
    };
    // `narrow` may use only `open` and `llama`: `aya` is denied on every call.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let audit = loop {
        let audit = std::fs::read_to_string(s.dir().join("audit.jsonl")).unwrap_or_default();
        if count(&audit, "aya", "list", "deny") + count(&audit, "aya", "invoke", "deny") >= 3 {
            break audit;
        }
        assert!(std::time::Instant::now() < deadline, "{audit}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(count(&audit, "open", "list", "allow"), 1, "{audit}");
    assert_eq!(count(&audit, "open", "invoke", "allow"), 1, "{audit}");
}
