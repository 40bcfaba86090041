//! A gateway in front of remote replicas, over real HTTP: an engine-only process guarded by
//! its engine token (the gateway without it gets 502 naming the replica by id, never its
//! URL), the same 400 for a bad request whether the model is served here or remotely, and
//! what reaches an upstream (validated fields, configured extensions, a per-tenant
//! `cache_salt`), observed by a fake upstream that records request bodies. A remote replica's
//! answer is read into the same replies as the native engine's and rendered by the same
//! endpoint code: greedy answers (content, logprobs, echo) are identical through a local and a
//! remote replica of the same weights, and an upstream's streamed thinking and tool calls come
//! out as each endpoint's own events.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use rosetta_tests::*;

const ENGINE: &str = r#"
server: { listen: 127.0.0.1:0, engine_token: "t0ken-for-gateways" }
cache_dir: "{cache}"
auth: { allow_unauthenticated: true }
models:
  - { id: m, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0, engine: { kv_cache_bytes: 8388608 } }
"#;

fn gateway(url: &str, api_key: Option<&str>) -> String {
    let key = api_key.map_or(String::new(), |k| format!(", api_key: \"{k}\""));
    format!(
        "server: {{ listen: 127.0.0.1:0 }}\ncache_dir: \"{{cache}}\"\nauth: {{ allow_unauthenticated: true }}\n\
         pool: {{ health_interval_ms: 300 }}\nmodels:\n  - {{ id: m, licence: apache-2.0, remote: [{{ url: \"{url}\"{key}, load_path: /load }}] }}\n  \
         - {{ id: here, demo: {{ arch: qwen2, size: tiny, seed: 1 }}, licence: apache-2.0, engine: {{ kv_cache_bytes: 8388608 }} }}\n"
    )
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Jambo"}], "max_tokens": 3})
}

#[tokio::test]
async fn an_engine_token_guards_the_engine_and_a_wrong_key_is_a_502_naming_no_url() {
    let engine = Server::start_with_args(ENGINE, &["--listen", "127.0.0.1:0", "--engine-only"]);
    let url = engine.base_url().to_string();
    // The engine refuses callers without its token, and keeps prefix-cache figures to them.
    engine
        .post("/v1/chat/completions", &chat("m"))
        .await
        .assert_error(401, None, None);
    let load = engine.get("/load").await.ok();
    assert!(
        load["models"]["m"].get("prefix_hit_tokens").is_none(),
        "{load}"
    );
    let load = engine.get_as("t0ken-for-gateways", "/load").await.ok();
    assert!(
        load["models"]["m"].get("prefix_hit_tokens").is_some(),
        "{load}"
    );

    // A gateway without the token: the operator's mistake, a 502 naming the replica's id.
    let g = Server::start(&gateway(&url, None));
    let r = g.post("/v1/chat/completions", &chat("m")).await;
    r.assert_error(502, Some("server_error"), Some("upstream_error"));
    assert!(r.text.contains("m/remote-0"), "{}", r.text);
    let port = url.rsplit(':').next().unwrap();
    assert!(!r.text.contains(port), "the body names the URL: {}", r.text);
    for (name, value) in &r.headers {
        assert!(
            !value.to_str().unwrap_or("").contains(port),
            "{name} names the URL"
        );
    }
    drop(g);

    // With the token it serves.
    let g = Server::start(&gateway(&url, Some("t0ken-for-gateways")));
    let r = g.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(r.header("x-rosetta-replica"), Some("m/remote-0"));
    r.ok();
}

#[tokio::test]
async fn a_bad_request_gets_the_same_400_from_a_local_and_a_remote_model() {
    let engine = Server::start_with_args(ENGINE, &["--listen", "127.0.0.1:0", "--engine-only"]);
    let g = Server::start(&gateway(engine.base_url(), Some("t0ken-for-gateways")));
    let bad: Vec<Value> = vec![
        json!({"temperature": 5}),
        json!({"n": 0}),
        json!({"messages": []}),
        json!({"messages": [{"role": "wizard", "content": "x"}]}),
        json!({"logit_bias": {"5": 1, "005": 2}}),
        json!({"stop": ["a", "b", "c", "d", "e"]}),
        json!({"max_tokens": 0}),
        json!({"stream_options": {"include_usage": true}}),
        json!({"top_logprobs": 3}),
        json!({"tools": [{"type": "function"}]}),
    ];
    for extra in bad {
        let mut local = chat("here");
        let mut remote = chat("m");
        for (k, v) in extra.as_object().unwrap() {
            local[k] = v.clone();
            remote[k] = v.clone();
        }
        let a = g.post("/v1/chat/completions", &local).await;
        let b = g.post("/v1/chat/completions", &remote).await;
        a.assert_invalid();
        assert_eq!(a.text, b.text, "{extra}: local and remote differ");
        assert_eq!(a.status, b.status);
    }
}

#[test]
fn an_engine_only_server_without_a_token_listens_on_loopback_only() {
    let config = ENGINE.replace(", engine_token: \"t0ken-for-gateways\"", "");
    let s = Server::start_with_args(&config, &["--listen", "0.0.0.0:0", "--engine-only"]);
    assert!(s.base_url().starts_with("http://127.0.0.1:"));
    assert!(s.logs().contains("loopback only"), "{}", s.logs());
}

/// One HTTP/1.1 request from a fake upstream's connection: its request line and body; `None`
/// once the client has closed it.
fn read_request(reader: &mut BufReader<std::net::TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return None;
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    Some((request_line, body))
}

/// A fake OpenAI-compatible upstream (for tests about the gateway): answers every chat
/// request with a fixed completion reporting `total_tokens` used, and records the bodies it
/// received.
fn fake_upstream(total_tokens: u64) -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let Some((request_line, body)) = read_request(&mut reader) else {
                        return;
                    };
                    let answer = if request_line.starts_with("POST") {
                        seen.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        json!({"id": "x", "object": "chat.completion", "created": 1, "model": "up",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                            "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": total_tokens - 1, "completion_tokens": 1,
                                "total_tokens": total_tokens}})
                    } else {
                        json!({})
                    };
                    let answer = answer.to_string();
                    write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    )
                    .unwrap();
                }
            });
        }
    });
    (url, bodies)
}

#[tokio::test]
async fn an_upstream_gets_validated_fields_listed_extensions_and_a_tenant_salt() {
    let (url, bodies) = fake_upstream(4);
    let config = format!(
        "server: {{ listen: 127.0.0.1:0, secret: \"s\" }}\nauth: {{ allow_unauthenticated: true }}\n\
         tenants:\n  - {{ id: a, keys: [{{ hash: \"A_HASH\" }}] }}\n  - {{ id: b, keys: [{{ hash: \"B_HASH\" }}] }}\n\
         models:\n  - {{ id: m, licence: apache-2.0, remote: [{{ url: \"{url}\", cache_salt: true, forward_fields: [chat_template_kwargs] }}] }}\n"
    );
    let (config, [key_a, key_b]) = with_new_keys(&config, ["A_HASH", "B_HASH"]);
    let g = Server::start(&config);
    let mut body = chat("m");
    body["priority"] = json!(-100);
    body["cache_salt"] = json!("chosen-by-the-client");
    body["chat_template"] = json!("{{ secrets }}");
    body["guided_json"] = json!({"type": "object"});
    body["guided_decoding_backend"] = json!("outlines");
    body["chat_template_kwargs"] = json!({"enable_thinking": false});
    g.post_as(&key_a, "/v1/chat/completions", &body).await.ok();
    g.post_as(&key_b, "/v1/chat/completions", &body).await.ok();
    let seen = bodies.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for b in &seen {
        for dropped in ["priority", "chat_template", "guided_decoding_backend"] {
            assert!(
                b.get(dropped).is_none(),
                "{dropped} reached the upstream: {b}"
            );
        }
        assert_eq!(b["chat_template_kwargs"], json!({"enable_thinking": false}));
        // A structured-output constraint Rosetta validated goes on, as OpenAI's
        // `response_format`: dropping it would make the upstream answer unconstrained.
        assert_eq!(
            b["response_format"]["json_schema"]["schema"],
            json!({"type": "object"})
        );
        assert!(b.get("guided_json").is_none(), "{b}");
        assert_eq!(b["max_tokens"], 3);
        let salt = b["cache_salt"].as_str().unwrap();
        assert_eq!(salt.len(), 32, "{b}");
        assert_ne!(salt, "chosen-by-the-client");
    }
    assert_ne!(
        seen[0]["cache_salt"], seen[1]["cache_salt"],
        "tenants share a salt"
    );
}

#[tokio::test]
async fn upstream_usage_beyond_the_reservation_is_charged_as_debt() {
    // The upstream reports 1,500 tokens for a request the gateway reserved ~30 for.
    let (url, _) = fake_upstream(1500);
    let config = format!(
        "server: {{ listen: 127.0.0.1:0 }}\nauth: {{ allow_unauthenticated: true }}\n\
         tenants:\n  - {{ id: a, keys: [{{ hash: \"A_HASH\" }}], limits: {{ tokens_per_minute: 1200 }} }}\n\
         models:\n  - {{ id: m, licence: apache-2.0, remote: [{{ url: \"{url}\" }}] }}\n"
    );
    let (config, [key]) = with_new_keys(&config, ["A_HASH"]);
    let g = Server::start(&config);
    g.post_as(&key, "/v1/chat/completions", &chat("m"))
        .await
        .ok();
    // 300 tokens of debt: nothing is left, and the next request waits for the refill.
    let r = g.post_as(&key, "/v1/chat/completions", &chat("m")).await;
    r.assert_error(429, Some("tokens"), Some("rate_limit_exceeded"));
    assert_eq!(
        r.header_u64("x-ratelimit-remaining-tokens"),
        Some(0),
        "{:?}",
        r.headers
    );
    let wait = r.header_u64("retry-after").unwrap();
    assert!(
        wait >= 10,
        "a debt of ~300 at 20 tokens/s: retry-after {wait}"
    );
}

/// The same request, greedy, through this process's engine and through an engine-only
/// replica of the same weights.
#[tokio::test]
async fn local_and_remote_replicas_of_the_same_weights_answer_alike() {
    let engine = Server::start_with_args(ENGINE, &["--listen", "127.0.0.1:0", "--engine-only"]);
    let g = Server::start(&gateway(engine.base_url(), Some("t0ken-for-gateways")));
    let ask = |model: &str, extra: Value| {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": "Habari ya asubuhi"}],
            "temperature": 0, "max_tokens": 6, "ignore_eos": true, "logprobs": true, "top_logprobs": 2});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let strip = |mut v: Value| {
        for k in ["id", "created", "model", "system_fingerprint"] {
            v.as_object_mut().unwrap().remove(k);
        }
        v
    };
    let local = g
        .post("/v1/chat/completions", &ask("here", json!({})))
        .await
        .ok();
    let remote = g
        .post("/v1/chat/completions", &ask("m", json!({})))
        .await
        .ok();
    assert_eq!(remote["model"], "m");
    assert_eq!(
        local["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert_eq!(strip(local), strip(remote));

    let streamed = json!({"stream": true, "stream_options": {"include_usage": true}});
    let local = g
        .stream("/v1/chat/completions", ask("here", streamed.clone()))
        .await;
    let remote = g.stream("/v1/chat/completions", ask("m", streamed)).await;
    let local: Vec<Value> = local.into_iter().map(strip).collect();
    let remote: Vec<Value> = remote.into_iter().map(strip).collect();
    assert_eq!(local, remote);

    // A completion's echo and logprobs in the legacy layout.
    let completion = |model: &str| {
        json!({"model": model, "prompt": "Jambo", "echo": true, "temperature": 0,
            "max_tokens": 4, "ignore_eos": true})
    };
    let local = g.post("/v1/completions", &completion("here")).await.ok();
    let remote = g.post("/v1/completions", &completion("m")).await.ok();
    assert!(local["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("Jambo"));
    assert_eq!(strip(local), strip(remote));
    let logprobs = |model: &str| {
        json!({"model": model, "prompt": "Jambo", "logprobs": 2, "temperature": 0,
            "max_tokens": 4, "ignore_eos": true, "stream": true})
    };
    let local = g.stream("/v1/completions", logprobs("here")).await;
    let remote = g.stream("/v1/completions", logprobs("m")).await;
    let local: Vec<Value> = local.into_iter().map(strip).collect();
    let remote: Vec<Value> = remote.into_iter().map(strip).collect();
    assert_eq!(local, remote);
}

/// Each request's path and body, as an upstream received them.
type Requests = Arc<Mutex<Vec<(String, Value)>>>;

/// A fake OpenAI-compatible upstream (for tests about the gateway) that streams `chunks` to
/// every POST as SSE, and records each request's path and body.
fn fake_streaming_upstream(chunks: Vec<Value>) -> (String, Requests) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (seen, chunks) = (seen.clone(), chunks.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let Some((request_line, body)) = read_request(&mut reader) else {
                    return;
                };
                if !request_line.starts_with("POST") {
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                    );
                    return;
                }
                let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                seen.lock()
                    .unwrap()
                    .push((path, serde_json::from_slice(&body).unwrap()));
                let mut events: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
                events.push_str("data: [DONE]\n\n");
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{events}",
                    events.len()
                );
            });
        }
    });
    (url, requests)
}

#[tokio::test]
async fn an_upstreams_thinking_and_tool_calls_come_out_as_each_endpoints_events() {
    let delta = |d: Value, finish: Value| {
        json!({"id": "up", "object": "chat.completion.chunk", "created": 1,
        "model": "theirs", "choices": [{"index": 0, "delta": d, "finish_reason": finish}]})
    };
    let chunks = vec![
        delta(json!({"role": "assistant", "content": ""}), Value::Null),
        delta(
            json!({"reasoning_content": "Weather needs a city."}),
            Value::Null,
        ),
        delta(
            json!({"tool_calls": [{"index": 0, "id": "call_up1", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
        ),
        delta(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Nairobi\"}"}}]}),
            Value::Null,
        ),
        delta(json!({}), json!("tool_calls")),
        json!({"id": "up", "object": "chat.completion.chunk", "created": 1, "model": "theirs",
            "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}}),
    ];
    let (url, requests) = fake_streaming_upstream(chunks);
    let g = Server::start(&format!(
        "server: {{ listen: 127.0.0.1:0 }}\nauth: {{ allow_unauthenticated: true }}\n\
         models:\n  - {{ id: m, licence: apache-2.0, remote: [{{ url: \"{url}\" }}] }}\n"
    ));
    let tool = json!({"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}});

    // The Responses API, streamed: the upstream is asked for a chat.
    // Its events end with `response.completed`, without `[DONE]`.
    let r = g
        .post(
            "/v1/responses",
            &json!({"model": "m", "input": "Weather in Nairobi?", "tools": [tool], "stream": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events: Vec<Value> = sse_data(&r.text)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(
        kinds.contains(&"response.reasoning_text.delta"),
        "{kinds:?}"
    );
    let done = events
        .iter()
        .find(|e| e["type"] == "response.function_call_arguments.done")
        .unwrap_or_else(|| panic!("{kinds:?}"));
    assert_eq!(done["arguments"], "{\"city\": \"Nairobi\"}");
    let completed = events.last().unwrap();
    assert_eq!(completed["type"], "response.completed", "{completed}");
    assert_eq!(completed["response"]["model"], "m");
    assert_eq!(completed["response"]["usage"]["output_tokens"], 9);
    let call = completed["response"]["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap();
    assert_eq!(
        (call["name"].as_str(), call["call_id"].as_str()),
        (Some("get_weather"), Some("call_up1"))
    );
    {
        let seen = requests.lock().unwrap();
        let (path, body) = &seen[0];
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": "Weather in Nairobi?"}])
        );
        assert_eq!(body["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(body["stream_options"]["include_usage"], true);
    }

    // The deprecated `functions`, whole: answered as `function_call`, as OpenAI does.
    let r = g
        .post(
            "/v1/chat/completions",
            &json!({"model": "m", "messages": [{"role": "user", "content": "Weather?"}],
                "functions": [{"name": "get_weather", "parameters": tool["parameters"]}],
                "stream": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let chunks = sse_json(&r.text);
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&json!("function_call")]);
    assert_eq!(
        chunks
            .iter()
            .filter(|c| c["choices"][0]["delta"]["function_call"]["name"] == "get_weather")
            .count(),
        1
    );
    let seen = requests.lock().unwrap();
    assert_eq!(
        seen[1].1["tools"][0]["function"]["name"], "get_weather",
        "{:?}",
        seen[1].1
    );
    assert!(seen[1].1.get("functions").is_none());
}

/// An upstream that answers a stream request with one JSON body (it does not stream) still
/// gives a streaming client its chunks.
#[tokio::test]
async fn a_non_streaming_upstream_still_answers_a_streaming_client() {
    let (url, bodies) = fake_upstream(4);
    let g = Server::start(&format!(
        "server: {{ listen: 127.0.0.1:0 }}\nauth: {{ allow_unauthenticated: true }}\n\
         models:\n  - {{ id: m, licence: apache-2.0, remote: [{{ url: \"{url}\" }}] }}\n"
    ));
    let mut body = chat("m");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let chunks = g.stream("/v1/chat/completions", body).await;
    assert_eq!(stream_text(&chunks, 0), "ok");
    assert_eq!(stream_finish_reason(&chunks, 0), "stop");
    assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 4);
    assert_eq!(bodies.lock().unwrap()[0]["stream"], true);
}
