//! Language routing over HTTP against the real binary: aliases, detected and stated
//! languages, `und`, policy-denied candidates and fallbacks.

use rosetta_tests::*;

const CONFIG: &str = r#"
server: { listen: 127.0.0.1:0, max_body_bytes: 65536 }
cache_dir: "{cache}"
auth: { allow_unauthenticated: true, anonymous_tenant: lab }
models:
  - { id: aya, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: cc-by-nc-4.0, languages: [sw, am], max_context: 256, engine: { kv_cache_bytes: 4194304 } }
  - { id: qwen, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0, languages: [zh, ja, ko], max_context: 256, engine: { kv_cache_bytes: 4194304 } }
  - { id: llama, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 256, engine: { kv_cache_bytes: 4194304 } }
routes:
  - alias: auto
    rules:
      - { languages: [sw, yo, ha, am], models: [aya] }
      - { languages: [zh, ja, ko], models: [qwen] }
    fallback: [llama]
  - alias: african-only
    rules:
      - { languages: [sw, am], models: [aya] }
tenants:
  - { id: lab, commercial: false, accepted_licences: [cc-by-nc-4.0] }
  - { id: acme, commercial: true, keys: [{ hash: "ACME_HASH" }] }
"#;

const AMHARIC: &str = "ዛሬ የአየሩ ሁኔታ በጣም ጥሩ ነው እና አብረን ወደ ገበያ እንሄዳለን።";
const JAPANESE: &str = "今日はとても良い天気なので、一緒に市場へ行きましょう。";
const ENGLISH: &str = "The weather is lovely today, so let us walk to the market together.";
const SWAHILI: &str = "Habari za asubuhi! Leo hali ya hewa ni nzuri sana.";
const YORUBA: &str = "Ẹ káàárọ̀! Ojú ọjọ́ dára gan-an lónìí, ẹ jẹ́ ká lọ sí ọjà.";

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 2})
}

/// (model answered, language reported) of a successful response.
fn served(r: Resp) -> (String, String) {
    let model = r.header("x-rosetta-model").unwrap_or_default().to_string();
    let language = r
        .header("x-rosetta-language")
        .unwrap_or_default()
        .to_string();
    assert_eq!(r.header("x-rosetta-replica"), Some("local"));
    let body = r.ok();
    assert_eq!(
        body["model"], model,
        "the body names the model that answered"
    );
    (model, language)
}

#[tokio::test]
async fn aliases_route_by_language_policy_and_fallback() {
    let (config, [acme_key]) = with_new_keys(CONFIG, ["ACME_HASH"]);
    let s = Server::start(&config);
    // The server says at start that keyless requests are served, and as whom.
    assert!(
        s.logs().contains("unauthenticated use is allowed"),
        "{}",
        s.logs()
    );
    let post = |body: Value| {
        let s = &s;
        async move { s.post("/v1/chat/completions", &body).await }
    };

    // Detected languages.
    assert_eq!(
        served(post(chat("auto", AMHARIC)).await),
        ("aya".into(), "am".into())
    );
    assert_eq!(
        served(post(chat("auto", JAPANESE)).await),
        ("qwen".into(), "ja".into())
    );
    assert_eq!(
        served(post(chat("auto", ENGLISH)).await),
        ("llama".into(), "en".into())
    );
    assert_eq!(
        served(post(chat("auto", SWAHILI)).await),
        ("aya".into(), "sw".into())
    );
    assert_eq!(
        served(post(chat("auto", YORUBA)).await),
        ("aya".into(), "yo".into())
    );
    // Too short to tell: und goes to the fallback.
    assert_eq!(
        served(post(chat("auto", "ok")).await),
        ("llama".into(), "und".into())
    );

    // A stated language wins over detection: header, then metadata.language.
    let r = s
        .client()
        .post(s.url("/v1/chat/completions"))
        .header("x-rosetta-language", "sw")
        .json(&chat("auto", ENGLISH))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-rosetta-model"], "aya");
    assert_eq!(r.headers()["x-rosetta-language"], "sw");
    assert_eq!(r.status(), 200);
    let mut body = chat("auto", ENGLISH);
    body["metadata"] = json!({"language": "ja-JP"});
    assert_eq!(served(post(body).await), ("qwen".into(), "ja".into()));
    let mut bad = chat("auto", ENGLISH);
    bad["metadata"] = json!({"language": "Japanese!"});
    post(bad)
        .await
        .assert_error(400, Some("invalid_request_error"), None);

    // A real model name is served by that model whatever the language.
    assert_eq!(
        served(post(chat("qwen", AMHARIC)).await),
        ("qwen".into(), "am".into())
    );
    // The legacy endpoint routes the same way.
    let c = s
        .post(
            "/v1/completions",
            &json!({"model": "auto", "prompt": AMHARIC, "max_tokens": 2}),
        )
        .await;
    assert_eq!(c.header("x-rosetta-model"), Some("aya"));
    c.ok();

    // A commercial tenant may not use the non-commercial Aya: the next candidate serves.
    let r = s
        .post_as(&acme_key, "/v1/chat/completions", &chat("auto", AMHARIC))
        .await;
    assert_eq!(served(r), ("llama".into(), "am".into()));
    // When every candidate is denied: 403 with the reasons.
    let r = s
        .post_as(
            &acme_key,
            "/v1/chat/completions",
            &chat("african-only", AMHARIC),
        )
        .await;
    r.assert_error(403, None, Some("model_access_denied"));
    let msg = r.json["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("african-only") && msg.contains("commercial"),
        "{msg}"
    );
    // An alias whose rules have nothing for the language and no fallback: 503, not a hang.
    let r = s
        .post("/v1/chat/completions", &chat("african-only", ENGLISH))
        .await;
    r.assert_error(503, None, None);
    // Unknown names are still 404.
    s.post("/v1/chat/completions", &chat("nope", ENGLISH))
        .await
        .assert_error(404, None, Some("model_not_found"));

    // Aliases are listed among the models, with the models they may route this caller to.
    let ids = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let lab = s.get("/v1/models").await.ok();
    assert_eq!(ids(&lab), ["aya", "qwen", "llama", "african-only", "auto"]);
    let auto = s.get("/v1/models/auto").await.ok();
    assert_eq!(auto["routes_to"], json!(["aya", "qwen", "llama"]));
    assert_eq!(
        auto["languages"],
        json!(["sw", "yo", "ha", "am", "zh", "ja", "ko"])
    );
    assert!(auto.get("licence").is_none(), "{auto}");
    // Acme may not use Aya: `auto` leaves it out, and `african-only` reaches nothing.
    let acme = s.get_as(&acme_key, "/v1/models").await.ok();
    assert_eq!(ids(&acme), ["qwen", "llama", "auto"]);
    let acme_auto = s.get_as(&acme_key, "/v1/models/auto").await.ok();
    assert_eq!(acme_auto["routes_to"], json!(["qwen", "llama"]));
    s.get_as(&acme_key, "/v1/models/african-only")
        .await
        .assert_error(404, None, Some("model_not_found"));
}

/// The seed's own models: Swahili goes to a generated Aya (Cohere architecture), Chinese to a
/// generated Mixtral (mixture of experts), the rest to Llama; each answers through the real
/// binary, streamed and whole.
#[tokio::test]
async fn swahili_goes_to_aya_and_chinese_to_mixtral() {
    let s = Server::start(
        r#"
server: { listen: 127.0.0.1:0 }
cache_dir: "{cache}"
auth: { allow_unauthenticated: true }
models:
  - { id: aya, demo: { arch: cohere, size: tiny, seed: 3 }, licence: apache-2.0, languages: [sw, yo], max_context: 512 }
  - { id: mixtral, demo: { arch: mixtral, size: tiny, seed: 3 }, licence: apache-2.0, languages: [zh], max_context: 512 }
  - { id: llama, demo: { arch: llama, size: tiny, seed: 3 }, licence: apache-2.0, max_context: 512 }
routes:
  - alias: auto
    rules:
      - { languages: [sw, yo], models: [aya] }
      - { languages: [zh], models: [mixtral] }
    fallback: [llama]
"#,
    );
    let chinese = "今天天气很好，我们一起去市场买水果和蔬菜吧。";
    for (text, model, language) in [
        (SWAHILI, "aya", "sw"),
        (chinese, "mixtral", "zh"),
        (ENGLISH, "llama", "en"),
    ] {
        let r = s.post("/v1/chat/completions", &chat("auto", text)).await;
        assert_eq!(served(r), (model.to_string(), language.to_string()));
        let mut body = chat("auto", text);
        body["max_tokens"] = json!(6);
        // Random weights may sample end-of-sequence early; the test is about the route.
        body["ignore_eos"] = json!(true);
        body["stream"] = json!(true);
        let events = s.stream("/v1/chat/completions", body).await;
        assert_eq!(stream_finish_reason(&events, 0), "length", "{model}");
        assert_eq!(events[0]["model"], model);
    }
}
