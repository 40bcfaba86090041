//! /v1/responses through the real binary: the same keys, licence policies, limits, language
//! routing and metrics as chat; and what it cannot do without stored responses is a 400.
//! (Its shapes and streaming events are driven by the official SDK in sdk.rs.)

use rosetta_tests::*;

const CONFIG: &str = r#"
server: { listen: 127.0.0.1:0 }
cache_dir: "{cache}"
models:
  - { id: open, demo: { arch: qwen3, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 1024, engine: { kv_cache_bytes: 16777216 } }
  - { id: research, demo: { arch: qwen3, size: tiny, seed: 1 }, licence: cc-by-nc-4.0, max_context: 1024, engine: { kv_cache_bytes: 16777216 } }
routes:
  - alias: auto
    rules:
      - { languages: [sw], models: [research, open] }
    fallback: [open]
tenants:
  - id: acme
    keys: [{ hash: "ACME_HASH" }]
    commercial: true
    limits: { requests_per_minute: 3 }
"#;

#[tokio::test]
async fn responses_get_the_gateways_keys_policies_limits_routing_and_metrics() {
    let (config, [key]) = with_new_keys(CONFIG, ["ACME_HASH"]);
    let s = Server::start(&config);
    let body = |model: &str| json!({"model": model, "input": "Habari ya asubuhi, rafiki yangu", "max_output_tokens": 3});

    let r = s.post("/v1/responses", &body("open")).await;
    r.assert_error(401, None, None);

    // A commercial tenant may not use a non-commercial licence.
    let r = s.post_as(&key, "/v1/responses", &body("research")).await;
    r.assert_error(403, None, None);

    // Swahili prefers `research`; the policy leaves `open`.
    let r = s.post_as(&key, "/v1/responses", &body("auto")).await;
    let v = r.ok();
    assert_eq!(v["object"], "response", "{v}");
    assert_eq!(v["model"], "open", "{v}");

    s.post_as(&key, "/v1/responses", &body("open")).await.ok();
    s.post_as(&key, "/v1/responses", &body("open")).await.ok();
    // Three requests a minute: the fourth is refused.
    let r = s.post_as(&key, "/v1/responses", &body("open")).await;
    r.assert_error(429, None, None);

    let metrics = s.get("/metrics").await.text;
    let served: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("rosetta_requests_total{")
                && l.contains("endpoint=\"/v1/responses\"")
                && l.contains("status=\"200\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(served, 3.0, "{metrics}");
}
