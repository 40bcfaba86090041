//! Tool calls and reasoning through the real binary, with generated models of each template
//! family (Qwen2.5/Hermes, Llama 3.1 JSON, Mistral, Qwen3 with thinking): a required or
//! named call's arguments always validate against the tool's schema (constrained decoding,
//! whatever the random weights); the answer has OpenAI's shape, whole and streamed, and both
//! agree under greedy decoding; history with calls and results renders; thinking comes back
//! apart from the answer.

use rosetta_tests::*;

const CONFIG: &str = r#"
server: { listen: 127.0.0.1:0 }
cache_dir: "{cache}"
auth: { allow_unauthenticated: true }
models:
  - { id: hermes, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 4096, engine: { kv_cache_bytes: 67108864 } }
  - { id: llama3, demo: { arch: llama, size: tiny, seed: 1 }, licence: llama3.1, max_context: 4096, engine: { kv_cache_bytes: 67108864 } }
  - { id: mistral, demo: { arch: mistral, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 4096, engine: { kv_cache_bytes: 67108864 } }
  - { id: thinker, demo: { arch: qwen3, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 4096, engine: { kv_cache_bytes: 67108864 } }
  - { id: no-tools, demo: { arch: qwen2, size: tiny, seed: 1 }, licence: apache-2.0, max_context: 4096, tool_parser: none, engine: { kv_cache_bytes: 67108864 } }
tenants: [{ id: anonymous, accepted_licences: [llama3.1] }]
"#;

const FAMILIES: [&str; 4] = ["hermes", "llama3", "mistral", "thinker"];

/// Two tools with bounded arguments: any output the grammar allows ends within max_tokens.
fn tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 12},
                    "unit": {"enum": ["celsius", "fahrenheit"]}
                },
                "required": ["city", "unit"],
                "additionalProperties": false
            }
        }},
        {"type": "function", "function": {
            "name": "convert",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "integer", "minimum": 0, "maximum": 1000},
                    "to": {"type": "string", "pattern": "^[A-Z]{3}$"}
                },
                "required": ["amount", "to"],
                "additionalProperties": false
            }
        }}
    ])
}

fn request(model: &str, choice: Value, seed: u64) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Hali ya hewa Nairobi ni gani?"}],
        "tools": tools(),
        "tool_choice": choice,
        "max_tokens": 200,
        "seed": seed,
    })
}

/// Every call names a tool and its arguments validate against that tool's schema.
fn check_calls(r: &Value, context: &str) -> Vec<(String, String)> {
    check_calls_until(r, context, false)
}

/// As [`check_calls`]; with `may_run_long`, a list of parallel calls may also have reached
/// the length limit (random weights need not close it), and its complete calls are checked.
fn check_calls_until(r: &Value, context: &str, may_run_long: bool) -> Vec<(String, String)> {
    let choice = &r["choices"][0];
    let finish = choice["finish_reason"].as_str().unwrap();
    assert!(
        finish == "tool_calls" || (may_run_long && finish == "length"),
        "{context}: {r}"
    );
    let message = &choice["message"];
    assert!(message["content"].is_null(), "{context}: {r}");
    let calls = message["tool_calls"].as_array().expect("tool_calls");
    assert!(!calls.is_empty(), "{context}: {r}");
    let tools = tools();
    calls
        .iter()
        .map(|c| {
            assert_eq!(c["type"], "function", "{context}: {c}");
            let id = c["id"].as_str().unwrap();
            assert!(id.starts_with("call_") && id.len() == 29, "{context}: {id}");
            let name = c["function"]["name"].as_str().unwrap();
            let args = c["function"]["arguments"].as_str().unwrap();
            let tool = tools
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["function"]["name"] == name)
                .unwrap_or_else(|| panic!("{context}: unknown tool {name}"));
            let value: Value = serde_json::from_str(args)
                .unwrap_or_else(|e| panic!("{context}: arguments not JSON ({e}): {args}"));
            let validator = jsonschema::validator_for(&tool["function"]["parameters"]).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{context}: {args}: {errors:?}");
            (name.to_string(), args.to_string())
        })
        .collect()
}

#[tokio::test]
async fn required_and_named_calls_validate_for_every_family_and_seed() {
    let s = Server::start(CONFIG);
    let mut checked = 0;
    for model in FAMILIES {
        for seed in 0..20 {
            // Parallel calls allowed on odd seeds: a list of any length.
            let mut body = request(model, json!("required"), seed);
            let parallel = seed % 2 == 1;
            body["parallel_tool_calls"] = json!(parallel);
            let r = s.chat(body).await;
            let calls = check_calls_until(&r, &format!("{model} required seed {seed}"), parallel);
            assert!(parallel || calls.len() == 1, "{model} seed {seed}: {r}");
            let named = json!({"type": "function", "function": {"name": "convert"}});
            let r = s.chat(request(model, named, seed)).await;
            let calls = check_calls(&r, &format!("{model} named seed {seed}"));
            assert_eq!(calls.len(), 1);
            assert_eq!(calls[0].0, "convert");
            checked += 2;
        }
    }
    assert_eq!(checked, 4 * 20 * 2);
}

#[tokio::test]
async fn streamed_calls_have_openais_deltas_and_agree_with_the_whole_answer() {
    let s = Server::start(CONFIG);
    for (model, choice) in [
        ("hermes", json!("required")),
        ("llama3", json!("required")),
        (
            "mistral",
            json!({"type": "function", "function": {"name": "get_weather"}}),
        ),
    ] {
        let mut body = request(model, choice, 0);
        body["temperature"] = json!(0);
        body["parallel_tool_calls"] = json!(false);
        let whole = s.chat(body.clone()).await;
        let expected: Vec<(String, String)> = check_calls(&whole, model);
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let events = s.stream("/v1/chat/completions", body).await;
        let mut calls: Vec<(String, String)> = Vec::new();
        for e in &events {
            for d in e["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let index = d["index"].as_u64().expect("index on every tool-call delta") as usize;
                if index == calls.len() {
                    assert!(
                        d["id"].as_str().is_some_and(|i| i.starts_with("call_")),
                        "{d}"
                    );
                    assert_eq!(d["type"], "function", "{d}");
                    calls.push((
                        d["function"]["name"].as_str().unwrap().to_string(),
                        String::new(),
                    ));
                } else {
                    assert!(
                        d.get("id").is_none() && d["function"].get("name").is_none(),
                        "{d}"
                    );
                }
                calls[index]
                    .1
                    .push_str(d["function"]["arguments"].as_str().unwrap());
            }
        }
        assert_eq!(calls, expected, "{model}");
        assert_eq!(stream_finish_reason(&events, 0), "tool_calls", "{model}");
        let usage = &events.last().unwrap()["usage"];
        assert_eq!(
            usage["completion_tokens"], whole["usage"]["completion_tokens"],
            "{model}"
        );
    }
}

#[tokio::test]
async fn history_with_calls_and_results_renders_for_every_family() {
    let s = Server::start(CONFIG);
    for model in FAMILIES {
        let plain = s
            .chat(json!({"model": model, "max_tokens": 3,
                "messages": [{"role": "user", "content": "Hali ya hewa Nairobi ni gani?"}]}))
            .await;
        let r = s
            .chat(json!({
                "model": model, "max_tokens": 3, "tools": tools(),
                "messages": [
                    {"role": "user", "content": "Hali ya hewa Nairobi ni gani?"},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\": \"Nairobi\", \"unit\": \"celsius\"}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}
                ]
            }))
            .await;
        assert_eq!(r["object"], "chat.completion", "{model}: {r}");
        let longer = r["usage"]["prompt_tokens"].as_u64().unwrap();
        let shorter = plain["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!(
            longer > shorter + 20,
            "{model}: tools, call and result rendered ({shorter} → {longer})"
        );
        // `auto` lets the model choose: whatever it wrote comes back in OpenAI's shape.
        let r = s.chat(request(model, json!("auto"), 1)).await;
        let m = &r["choices"][0]["message"];
        assert!(
            m["content"].is_string() || m["tool_calls"].is_array(),
            "{model}: {r}"
        );
    }
}

#[tokio::test]
async fn tool_requests_that_cannot_be_served_are_400s_naming_the_field() {
    let s = Server::start(CONFIG);
    let cases = [
        (
            request(
                "hermes",
                json!({"type": "function", "function": {"name": "nope"}}),
                0,
            ),
            "tool_choice",
        ),
        (request("hermes", json!("sometimes"), 0), "tool_choice"),
        (request("no-tools", json!("auto"), 0), "tool_choice"),
        (
            json!({"model": "hermes", "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "web_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "hermes", "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "has space"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"model": "hermes", "messages": [{"role": "user", "content": "x"}],
                "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"model": "hermes", "messages": [{"role": "user", "content": "x"}], "tools": tools(),
                "tool_choice": "required", "response_format": {"type": "json_object"}}),
            "tool_choice",
        ),
        (
            json!({"model": "hermes", "messages": [{"role": "user", "content": "x"}],
                "reasoning_effort": "extreme"}),
            "reasoning_effort",
        ),
    ];
    for (body, param) in cases {
        let r = s.post("/v1/chat/completions", &body).await;
        r.assert_error(400, Some("invalid_request_error"), None);
        assert_eq!(r.json["error"]["param"], param, "{}", r.text);
    }
    // A model without a tool format can still be made to call: the grammar writes the call.
    let r = s.chat(request("no-tools", json!("required"), 0)).await;
    check_calls(&r, "no-tools required");
}

#[tokio::test]
async fn thinking_comes_back_apart_from_the_answer() {
    let s = Server::start(CONFIG);
    // The regex makes the random-weight model write a thinking block, then an answer.
    let body = |stream: bool| {
        json!({
            "model": "thinker", "max_tokens": 80, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": "Fikiria kwanza."}],
            "structured_outputs": {"regex": "<think>\n[a-z]{3,10}( [a-z]{3,10}){0,3}\n</think>\n\n[a-z]{3,10}( [a-z]{3,10}){0,3}"}
        })
    };
    let r = s.chat(body(false)).await;
    let m = &r["choices"][0]["message"];
    let reasoning = m["reasoning_content"]
        .as_str()
        .expect("reasoning_content")
        .to_string();
    let content = m["content"].as_str().unwrap().to_string();
    assert!(
        !reasoning.contains("think>") && !content.contains("think>"),
        "{r}"
    );
    assert!(reasoning.trim().len() >= 3 && content.len() >= 3, "{r}");
    assert!(!content.starts_with('\n'), "{r}");
    let events = s.stream("/v1/chat/completions", body(true)).await;
    let streamed_reasoning: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(streamed_reasoning, reasoning);
    assert_eq!(stream_text(&events, 0), content);

    // enable_thinking: false (or reasoning_effort: none) closes an empty block in the prompt.
    let prompt_tokens = |extra: Value| {
        let mut b = json!({"model": "thinker", "max_tokens": 1,
            "messages": [{"role": "user", "content": "Fikiria kwanza."}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        let s = &s;
        async move { s.chat(b).await["usage"]["prompt_tokens"].as_u64().unwrap() }
    };
    let thinking = prompt_tokens(json!({})).await;
    let off = prompt_tokens(json!({"chat_template_kwargs": {"enable_thinking": false}})).await;
    let none = prompt_tokens(json!({"reasoning_effort": "none"})).await;
    assert!(off > thinking, "{thinking} {off}");
    assert_eq!(none, off);
    // A model whose template does not think returns no reasoning_content.
    let r = s
        .chat(json!({"model": "hermes", "max_tokens": 4,
        "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert!(
        r["choices"][0]["message"]
            .get("reasoning_content")
            .is_none(),
        "{r}"
    );
}

#[tokio::test]
async fn deprecated_functions_are_answered_as_function_call() {
    let s = Server::start(CONFIG);
    let functions: Vec<Value> = tools()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"].clone())
        .collect();
    let r = s
        .chat(json!({
            "model": "hermes", "max_tokens": 100, "seed": 2,
            "messages": [{"role": "user", "content": "Hali ya hewa?"}],
            "functions": functions, "function_call": {"name": "get_weather"}
        }))
        .await;
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "function_call", "{r}");
    let call = &choice["message"]["function_call"];
    assert_eq!(call["name"], "get_weather", "{r}");
    serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap();
    assert!(choice["message"].get("tool_calls").is_none(), "{r}");
    // Its result comes back as a `function` message.
    let r = s
        .chat(json!({
            "model": "hermes", "max_tokens": 3, "functions": functions,
            "messages": [
                {"role": "user", "content": "Hali ya hewa?"},
                {"role": "assistant", "content": null, "function_call": call},
                {"role": "function", "name": "get_weather", "content": "21C"}
            ]
        }))
        .await;
    assert_eq!(r["object"], "chat.completion", "{r}");
}

#[tokio::test]
async fn models_report_their_context_and_capabilities() {
    let s = Server::start(CONFIG);
    let list = s.get("/v1/models").await.ok();
    let model = |id: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap()
    };
    for (id, auto, reasoning) in [
        ("hermes", true, false),
        ("llama3", true, false),
        ("mistral", true, false),
        ("thinker", true, true),
        ("no-tools", false, false),
    ] {
        let m = model(id);
        assert_eq!(m["context_length"], 4096, "{m}");
        let c = &m["capabilities"];
        assert_eq!(c["tools"], true, "{m}");
        assert_eq!(c["structured_outputs"], true, "{m}");
        assert_eq!(c["tool_choice_auto"], auto, "{m}");
        assert_eq!(c["reasoning"], reasoning, "{m}");
        let params: Vec<&str> = m["supported_parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(
            params.contains(&"tools") && params.contains(&"response_format"),
            "{m}"
        );
    }
}

/// vLLM's /tokenize takes the tools and template variables too, and counts the prompt the
/// chat request runs.
#[tokio::test]
async fn tokenize_counts_the_prompt_chat_renders_with_tools() {
    let s = Server::start(CONFIG);
    let messages = json!([{"role": "user", "content": "Hali ya hewa Nairobi ni gani?"}]);
    for model in FAMILIES {
        let counted = s
            .post(
                "/tokenize",
                &json!({"model": model, "messages": messages, "tools": tools(),
                        "chat_template_kwargs": {"enable_thinking": false}}),
            )
            .await
            .ok();
        let r = s
            .chat(
                json!({"model": model, "messages": messages, "tools": tools(), "max_tokens": 1,
                         "chat_template_kwargs": {"enable_thinking": false}}),
            )
            .await;
        assert_eq!(counted["count"], r["usage"]["prompt_tokens"], "{model}");
    }
}
