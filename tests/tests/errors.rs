//! Bad requests get OpenAI error bodies with the right status, type and code; never a 500.
//!
//! Each test runs a table of cases and reports every mismatch at once.

use rosetta_tests::*;

enum Body {
    Json(Value),
    Raw(&'static str),
}

struct Case {
    label: &'static str,
    path: &'static str,
    body: Body,
    status: u16,
    typ: Option<&'static str>,
    code: Option<&'static str>,
}

fn bad(label: &'static str, path: &'static str, body: Value) -> Case {
    Case {
        label,
        path,
        body: Body::Json(body),
        status: 400,
        typ: Some("invalid_request_error"),
        code: None,
    }
}

fn raw(label: &'static str, path: &'static str, body: &'static str) -> Case {
    Case {
        label,
        path,
        body: Body::Raw(body),
        status: 400,
        typ: Some("invalid_request_error"),
        code: None,
    }
}

async fn run(s: &Server, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in &cases {
        let r = match &c.body {
            Body::Json(v) => s.post(c.path, v).await,
            Body::Raw(t) => s.post_raw(c.path, *t, "application/json").await,
        };
        if let Err(e) = r.check_error(c.status, c.typ, c.code) {
            failures.push(format!("[{}] {e}", c.label));
        }
    }
    // The server survives all of it.
    assert_eq!(
        s.get("/health").await.status,
        StatusCode::OK,
        "server unhealthy after bad requests"
    );
    s.greedy_chat("tiny", "still alive?", 2).await;
    assert!(
        failures.is_empty(),
        "{} of {} error cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn msgs() -> Value {
    json!([{"role": "user", "content": "hi"}])
}

/// A chat request with one field replaced (or removed, for `null`).
fn chat_with(key: &str, value: Value) -> Value {
    let mut v = json!({"model": "tiny", "messages": msgs(), "max_tokens": 4});
    if value.is_null() {
        v.as_object_mut().unwrap().remove(key);
    } else {
        v[key] = value;
    }
    v
}

fn completion_with(key: &str, value: Value) -> Value {
    let mut v = json!({"model": "tiny", "prompt": "hi", "max_tokens": 4});
    if value.is_null() {
        v.as_object_mut().unwrap().remove(key);
    } else {
        v[key] = value;
    }
    v
}

const CHAT: &str = "/v1/chat/completions";
const COMP: &str = "/v1/completions";

#[tokio::test]
async fn malformed_and_mistyped_bodies_are_400() {
    let s = Server::start_default();
    run(
        &s,
        vec![
            raw("chat: not JSON", CHAT, "{not json"),
            raw(
                "chat: truncated JSON",
                CHAT,
                r#"{"model": "tiny", "messages": [{"role": "user""#,
            ),
            raw("chat: empty body", CHAT, ""),
            raw("chat: JSON array body", CHAT, "[]"),
            raw("chat: JSON null body", CHAT, "null"),
            raw("completions: not JSON", COMP, "model=tiny&prompt=hi"),
            bad(
                "chat: messages is a string",
                CHAT,
                chat_with("messages", json!("hi")),
            ),
            bad(
                "chat: model is a number",
                CHAT,
                chat_with("model", json!(5)),
            ),
            bad(
                "chat: max_tokens is a string",
                CHAT,
                chat_with("max_tokens", json!("ten")),
            ),
            bad(
                "chat: temperature is a string",
                CHAT,
                chat_with("temperature", json!("hot")),
            ),
            bad("chat: n is fractional", CHAT, chat_with("n", json!(1.5))),
            bad("chat: stop is a number", CHAT, chat_with("stop", json!(5))),
            bad(
                "chat: stream is a string",
                CHAT,
                chat_with("stream", json!("yes")),
            ),
            bad(
                "chat: logprobs is a string",
                CHAT,
                chat_with("logprobs", json!("yes")),
            ),
            bad(
                "chat: seed is a string",
                CHAT,
                chat_with("seed", json!("x")),
            ),
            bad(
                "chat: content is a number",
                CHAT,
                chat_with("messages", json!([{"role": "user", "content": 5}])),
            ),
            bad(
                "chat: message is a string",
                CHAT,
                chat_with("messages", json!(["hi"])),
            ),
            bad("chat: missing model", CHAT, chat_with("model", Value::Null)),
            bad(
                "chat: missing messages",
                CHAT,
                chat_with("messages", Value::Null),
            ),
            bad(
                "chat: message without role",
                CHAT,
                chat_with("messages", json!([{"content": "hi"}])),
            ),
            bad(
                "completions: missing prompt",
                COMP,
                completion_with("prompt", Value::Null),
            ),
            bad(
                "completions: missing model",
                COMP,
                completion_with("model", Value::Null),
            ),
            bad(
                "completions: prompt is an object",
                COMP,
                completion_with("prompt", json!({"a": 1})),
            ),
            bad(
                "completions: prompt mixes strings and ints",
                COMP,
                completion_with("prompt", json!(["a", 1])),
            ),
            bad(
                "completions: max_tokens is a string",
                COMP,
                completion_with("max_tokens", json!("5")),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn empty_and_unknown_things_are_400() {
    let s = Server::start_default();
    run(
        &s,
        vec![
            bad(
                "chat: empty messages",
                CHAT,
                chat_with("messages", json!([])),
            ),
            bad(
                "chat: unknown role",
                CHAT,
                chat_with("messages", json!([{"role": "wizard", "content": "hi"}])),
            ),
            bad(
                "chat: role is empty",
                CHAT,
                chat_with("messages", json!([{"role": "", "content": "hi"}])),
            ),
            bad(
                "completions: empty prompt list",
                COMP,
                completion_with("prompt", json!([])),
            ),
            bad(
                "completions: empty token list",
                COMP,
                completion_with("prompt", json!([[]])),
            ),
            bad(
                "completions: token id past the vocabulary",
                COMP,
                completion_with("prompt", json!([1, 2, 2048])),
            ),
            bad(
                "completions: huge token id",
                COMP,
                completion_with("prompt", json!([[5, 4_000_000_000u64]])),
            ),
            bad(
                "completions: negative token id",
                COMP,
                completion_with("prompt", json!([5, -1])),
            ),
            bad(
                "detokenize: token id past the vocabulary",
                "/detokenize",
                json!({"model": "tiny", "tokens": [1, 999999]}),
            ),
            bad(
                "detokenize: negative token id",
                "/detokenize",
                json!({"model": "tiny", "tokens": [-3]}),
            ),
            bad(
                "tokenize: neither prompt nor messages",
                "/tokenize",
                json!({"model": "tiny"}),
            ),
            bad(
                "tokenize: unknown role",
                "/tokenize",
                json!({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn out_of_range_parameters_are_400() {
    let s = Server::start_default();
    run(
        &s,
        vec![
            bad(
                "temperature 2.5",
                CHAT,
                chat_with("temperature", json!(2.5)),
            ),
            bad(
                "temperature -0.5",
                CHAT,
                chat_with("temperature", json!(-0.5)),
            ),
            bad("top_p 1.5", CHAT, chat_with("top_p", json!(1.5))),
            bad("top_p -0.1", CHAT, chat_with("top_p", json!(-0.1))),
            bad("n 0", CHAT, chat_with("n", json!(0))),
            bad("n -1", CHAT, chat_with("n", json!(-1))),
            bad("max_tokens 0", CHAT, chat_with("max_tokens", json!(0))),
            bad("max_tokens -5", CHAT, chat_with("max_tokens", json!(-5))),
            bad(
                "max_completion_tokens 0",
                CHAT,
                chat_with("max_completion_tokens", json!(0)),
            ),
            bad("top_logprobs 21", CHAT, {
                let mut v = chat_with("logprobs", json!(true));
                v["top_logprobs"] = json!(21);
                v
            }),
            bad("top_logprobs -1", CHAT, {
                let mut v = chat_with("logprobs", json!(true));
                v["top_logprobs"] = json!(-1);
                v
            }),
            bad(
                "presence_penalty 2.5",
                CHAT,
                chat_with("presence_penalty", json!(2.5)),
            ),
            bad(
                "presence_penalty -2.5",
                CHAT,
                chat_with("presence_penalty", json!(-2.5)),
            ),
            bad(
                "frequency_penalty 3",
                CHAT,
                chat_with("frequency_penalty", json!(3)),
            ),
            bad(
                "frequency_penalty -2.1",
                CHAT,
                chat_with("frequency_penalty", json!(-2.1)),
            ),
            bad(
                "five stop strings",
                CHAT,
                chat_with("stop", json!(["a", "b", "c", "d", "e"])),
            ),
            bad("min_p 1.5", CHAT, chat_with("min_p", json!(1.5))),
            bad(
                "repetition_penalty 0",
                CHAT,
                chat_with("repetition_penalty", json!(0)),
            ),
            bad(
                "repetition_penalty -1",
                CHAT,
                chat_with("repetition_penalty", json!(-1)),
            ),
            bad("min_tokens > max_tokens", CHAT, {
                let mut v = chat_with("min_tokens", json!(10));
                v["max_tokens"] = json!(5);
                v
            }),
            bad(
                "completions: temperature 3",
                COMP,
                completion_with("temperature", json!(3)),
            ),
            bad("completions: n 0", COMP, completion_with("n", json!(0))),
            bad(
                "completions: max_tokens 0",
                COMP,
                completion_with("max_tokens", json!(0)),
            ),
            bad(
                "completions: logprobs 21",
                COMP,
                completion_with("logprobs", json!(21)),
            ),
            bad(
                "completions: logprobs -1",
                COMP,
                completion_with("logprobs", json!(-1)),
            ),
            bad(
                "completions: top_p 2",
                COMP,
                completion_with("top_p", json!(2)),
            ),
            bad(
                "completions: five stop strings",
                COMP,
                completion_with("stop", json!(["a", "b", "c", "d", "e"])),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn unknown_model_is_404_model_not_found() {
    let s = Server::start_default();
    let nf = |label, path, body| Case {
        label,
        path,
        body: Body::Json(body),
        status: 404,
        typ: None,
        code: Some("model_not_found"),
    };
    run(
        &s,
        vec![
            nf("chat", CHAT, chat_with("model", json!("gpt-4o"))),
            nf("chat stream", CHAT, {
                let mut v = chat_with("model", json!("gpt-4o"));
                v["stream"] = json!(true);
                v
            }),
            nf(
                "completions",
                COMP,
                completion_with("model", json!("no-such-model")),
            ),
            nf(
                "tokenize",
                "/tokenize",
                json!({"model": "nope", "prompt": "x"}),
            ),
            nf(
                "detokenize",
                "/detokenize",
                json!({"model": "nope", "tokens": [1]}),
            ),
        ],
    )
    .await;
    s.get("/v1/models/no-such-model")
        .await
        .assert_error(404, None, Some("model_not_found"));
}

#[tokio::test]
async fn context_length_is_enforced_at_max_context() {
    // `tiny` has max_context 256.
    let s = Server::start_default();
    let id = s.tokenize("tiny", "hello", false).await[0];
    let prompt = |n: usize| json!(vec![id; n]);
    let cle = |label, body| Case {
        label,
        path: COMP,
        body: Body::Json(body),
        status: 400,
        typ: Some("invalid_request_error"),
        code: Some("context_length_exceeded"),
    };
    let long_text = "Habari ya asubuhi, rafiki yangu mpendwa. ".repeat(60);
    assert!(s.tokenize("tiny", &long_text, true).await.len() > 256);
    run(
        &s,
        vec![
            cle("prompt of 300 tokens", json!({"model": "tiny", "prompt": prompt(300), "max_tokens": 1})),
            cle("prompt 256 + max_tokens 1", json!({"model": "tiny", "prompt": prompt(256), "max_tokens": 1})),
            cle("prompt 200 + max_tokens 100", json!({"model": "tiny", "prompt": prompt(200), "max_tokens": 100})),
            cle("one of two prompts too long", json!({"model": "tiny", "prompt": [prompt(10), prompt(300)], "max_tokens": 1})),
            cle("text prompt too long", json!({"model": "tiny", "prompt": long_text, "max_tokens": 1})),
            Case {
                label: "chat prompt too long",
                path: CHAT,
                body: Body::Json(json!({"model": "tiny", "messages": [{"role": "user", "content": long_text}], "max_tokens": 1})),
                status: 400,
                typ: Some("invalid_request_error"),
                code: Some("context_length_exceeded"),
            },
            Case {
                label: "chat max_tokens past the context",
                path: CHAT,
                body: Body::Json(json!({"model": "tiny", "messages": msgs(), "max_tokens": 100000})),
                status: 400,
                typ: Some("invalid_request_error"),
                code: Some("context_length_exceeded"),
            },
        ],
    )
    .await;
    // Exactly at the limit is fine: 255 + 1 = 256.
    let v = s
        .complete(
            json!({"model": "tiny", "prompt": prompt(255), "max_tokens": 1, "ignore_eos": true}),
        )
        .await;
    assert_eq!(v["usage"]["total_tokens"], 256, "{v}");
    // Without max_tokens the completion fits in what is left.
    let v = s
        .chat(json!({"model": "tiny", "messages": msgs(), "temperature": 0, "ignore_eos": true}))
        .await;
    let total = v["usage"]["total_tokens"].as_u64().unwrap();
    assert!(
        total <= 256,
        "no max_tokens: total_tokens {total} > max_context 256: {v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
}

#[tokio::test]
async fn body_over_max_body_bytes_is_413() {
    // max_body_bytes is 65536 in the default config.
    let s = Server::start_default();
    let big = "a ".repeat(40_000);
    let body =
        json!({"model": "tiny", "messages": [{"role": "user", "content": big}], "max_tokens": 1});
    let r = s.post(CHAT, &body).await;
    r.assert_error(413, None, None);
    let r = s
        .post(
            COMP,
            &json!({"model": "tiny", "prompt": big, "max_tokens": 1}),
        )
        .await;
    r.assert_error(413, None, None);
    // Just under the limit is parsed (and then rejected for its length, not its size).
    let under = "a ".repeat(30_000);
    let r = s
        .post(
            COMP,
            &json!({"model": "tiny", "prompt": under, "max_tokens": 1}),
        )
        .await;
    assert_ne!(
        r.status.as_u16(),
        413,
        "a 60 kB body is under max_body_bytes: {}",
        r.text
    );
    assert!(r.status.as_u16() < 500, "{}", r.text);
    assert_eq!(s.get("/health").await.status, StatusCode::OK);
}
