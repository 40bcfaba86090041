//! Server-sent events: chunk shapes, [DONE], usage chunk, stream == non-stream.

use rosetta_tests::*;

fn chat_req(prompt: &str, max_tokens: u32) -> Value {
    json!({
        "model": "tiny", "messages": [{"role": "user", "content": prompt}],
        "temperature": 0, "max_tokens": max_tokens, "ignore_eos": true,
    })
}

fn with(mut v: Value, extra: Value) -> Value {
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

#[tokio::test]
async fn chat_stream_has_openai_chunks_and_matches_non_streaming() {
    let s = Server::start_default();
    let full = s.chat(chat_req(MULTILINGUAL, 20)).await;
    let chunks = s
        .stream(
            "/v1/chat/completions",
            with(chat_req(MULTILINGUAL, 20), json!({"stream": true})),
        )
        .await;
    assert!(chunks.len() >= 2, "{chunks:?}");
    let id = chunks[0]["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("chatcmpl-"), "chunk id {id}");
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(c["id"], id.as_str(), "every chunk carries the same id: {c}");
        assert_eq!(c["created"], chunks[0]["created"], "{c}");
        assert_eq!(c["model"], "tiny", "{c}");
        assert!(c["choices"].is_array(), "{c}");
        assert!(
            c["usage"].is_null(),
            "usage only with stream_options.include_usage: {c}"
        );
    }
    check_created(&chunks[0]);
    assert_eq!(
        chunks[0]["choices"][0]["delta"]["role"], "assistant",
        "first delta carries the role: {}",
        chunks[0]
    );
    assert_eq!(
        stream_text(&chunks, 0),
        content(&full),
        "streamed text != non-streamed text"
    );
    assert_eq!(stream_finish_reason(&chunks, 0), "length");
    let last_choice_chunk = chunks
        .iter()
        .rev()
        .find(|c| !c["choices"].as_array().unwrap().is_empty())
        .unwrap();
    assert_eq!(
        last_choice_chunk["choices"][0]["finish_reason"], "length",
        "the finish_reason comes in the last chunk"
    );
}

#[tokio::test]
async fn include_usage_adds_a_final_usage_chunk() {
    let s = Server::start_default();
    let chunks = s
        .stream(
            "/v1/chat/completions",
            with(
                chat_req("Jambo", 9),
                json!({"stream": true, "stream_options": {"include_usage": true}}),
            ),
        )
        .await;
    let last = chunks.last().unwrap();
    assert_eq!(
        last["choices"],
        json!([]),
        "the usage chunk has empty choices: {last}"
    );
    let (_, c) = check_usage(&last["usage"]);
    assert_eq!(c, 9, "{last}");
    for ch in &chunks[..chunks.len() - 1] {
        assert!(
            ch["usage"].is_null(),
            "usage is null on every other chunk: {ch}"
        );
    }
    let full = s.chat(chat_req("Jambo", 9)).await;
    assert_eq!(
        last["usage"], full["usage"],
        "stream usage != non-stream usage"
    );
}

#[tokio::test]
async fn include_usage_false_sends_no_usage_chunk() {
    let s = Server::start_default();
    let chunks = s
        .stream(
            "/v1/chat/completions",
            with(
                chat_req("Jambo", 4),
                json!({"stream": true, "stream_options": {"include_usage": false}}),
            ),
        )
        .await;
    assert!(chunks
        .iter()
        .all(|c| c["usage"].is_null() && !c["choices"].as_array().unwrap().is_empty()));
}

#[tokio::test]
async fn completion_stream_matches_non_streaming() {
    let s = Server::start_default();
    let req = json!({"model": "tiny", "prompt": "Once upon a time", "temperature": 0, "max_tokens": 16, "ignore_eos": true});
    let full = s.complete(req.clone()).await;
    let chunks = s
        .stream(
            "/v1/completions",
            with(
                req,
                json!({"stream": true, "stream_options": {"include_usage": true}}),
            ),
        )
        .await;
    for c in &chunks {
        assert_eq!(c["object"], "text_completion", "{c}");
        assert!(c["id"].as_str().unwrap().starts_with("cmpl-"), "{c}");
        assert_eq!(c["id"], chunks[0]["id"]);
    }
    assert_eq!(stream_text(&chunks, 0), text(&full));
    assert_eq!(stream_finish_reason(&chunks, 0), "length");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{last}");
    assert_eq!(last["usage"], full["usage"]);
}

#[tokio::test]
async fn stream_with_n_two_interleaves_both_choices() {
    let s = Server::start_default();
    let req = with(
        chat_req("Salut", 8),
        json!({"n": 2, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let chunks = s.stream("/v1/chat/completions", req).await;
    let single = content(&s.chat(chat_req("Salut", 8)).await);
    for i in 0..2 {
        assert_eq!(stream_text(&chunks, i), single, "choice {i}");
        assert_eq!(stream_finish_reason(&chunks, i), "length");
    }
    assert_eq!(check_usage(&chunks.last().unwrap()["usage"]).1, 16);
}

#[tokio::test]
async fn stop_string_in_a_stream_is_never_sent() {
    let s = Server::start_default();
    let base = content(&s.chat(chat_req("Once upon a time", 40)).await);
    let chars: Vec<char> = base.chars().collect();
    assert!(chars.len() >= 8, "{base:?}");
    let mut i = chars.len() / 2;
    while i + 3 < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    let stop: String = chars[i..(i + 3).min(chars.len())].iter().collect();
    let expected = &base[..base.find(&stop).unwrap()];
    let chunks = s
        .stream(
            "/v1/chat/completions",
            with(
                chat_req("Once upon a time", 40),
                json!({"stream": true, "stop": stop}),
            ),
        )
        .await;
    assert_eq!(
        stream_text(&chunks, 0),
        expected,
        "stop {stop:?}; base {base:?}"
    );
    assert_eq!(stream_finish_reason(&chunks, 0), "stop");
}

#[tokio::test]
async fn stream_with_logprobs_carries_them_per_chunk() {
    let s = Server::start_default();
    let chunks = s
        .stream(
            "/v1/chat/completions",
            with(
                chat_req("Hi", 5),
                json!({"stream": true, "logprobs": true, "top_logprobs": 2}),
            ),
        )
        .await;
    let entries: Vec<Value> = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter_map(|ch| ch["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(
        entries.len(),
        5,
        "one logprobs entry per token across the stream: {chunks:?}"
    );
    for e in &entries {
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(e["top_logprobs"].as_array().unwrap().len(), 2);
    }
}

#[tokio::test]
async fn multibyte_text_streams_as_whole_characters() {
    // Every chunk is a JSON string, so it must be valid UTF-8 on its own; the concatenation
    // must equal the non-streamed text even for CJK / Devanagari output.
    let s = Server::start_default();
    for prompt in ["你好，世界。今天天气很好。", "नमस्ते, आप कैसे हैं?"]
    {
        let full = content(&s.chat(chat_req(prompt, 30)).await);
        let chunks = s
            .stream(
                "/v1/chat/completions",
                with(chat_req(prompt, 30), json!({"stream": true})),
            )
            .await;
        let streamed = stream_text(&chunks, 0);
        assert_eq!(streamed, full, "{prompt}");
    }
}

#[tokio::test]
async fn errors_before_streaming_are_plain_json() {
    let s = Server::start_default();
    let r = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}], "stream": true}),
        )
        .await;
    r.assert_error(404, None, Some("model_not_found"));
    let r = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": true, "temperature": 5}),
        )
        .await;
    r.assert_invalid();
    let r = s
        .post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "x", "stream": true, "max_tokens": 0}),
        )
        .await;
    r.assert_invalid();
}

#[tokio::test]
async fn text_held_back_for_a_partial_stop_match_is_flushed_at_the_end() {
    // A stop string whose beginning matches the end of the output, but which never completes:
    // the text held back while it might still match must be sent when generation ends.
    let s = Server::start_default();
    let base = content(&s.chat(chat_req("Once upon a time", 20)).await);
    let tail: String = {
        let c: Vec<char> = base.chars().collect();
        c[c.len().saturating_sub(2)..].iter().collect()
    };
    let stop = format!("{tail}QQQ");
    let req = with(chat_req("Once upon a time", 20), json!({"stop": [stop]}));
    let v = s.chat(req.clone()).await;
    assert_eq!(content(&v), base, "non-streaming, stop {stop:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let chunks = s
        .stream("/v1/chat/completions", with(req, json!({"stream": true})))
        .await;
    assert_eq!(stream_text(&chunks, 0), base, "streaming, stop {stop:?}");
    assert_eq!(stream_finish_reason(&chunks, 0), "length");
}

#[tokio::test]
async fn seeded_n_three_stream_matches_non_streaming() {
    let s = Server::start_default();
    let req = json!({
        "model": "tiny", "messages": [{"role": "user", "content": "Tell"}], "n": 3, "seed": 5,
        "temperature": 0.8, "max_tokens": 30, "ignore_eos": true,
    });
    let full = s.chat(req.clone()).await;
    let chunks = s
        .stream(
            "/v1/chat/completions",
            with(
                req,
                json!({"stream": true, "stream_options": {"include_usage": true}}),
            ),
        )
        .await;
    for c in full["choices"].as_array().unwrap() {
        let i = c["index"].as_u64().unwrap();
        assert_eq!(
            stream_text(&chunks, i),
            c["message"]["content"].as_str().unwrap(),
            "choice {i}"
        );
    }
    assert_eq!(chunks.last().unwrap()["usage"], full["usage"]);
}

#[tokio::test]
async fn stream_usage_with_a_stop_string_matches_non_streaming() {
    let s = Server::start_default();
    let base = content(&s.chat(chat_req("Tell", 30)).await);
    let c: Vec<char> = base.chars().collect();
    let stop: String = c[c.len() / 2..c.len() / 2 + 2].iter().collect();
    let req = with(chat_req("Tell", 30), json!({"stop": stop}));
    let full = s.chat(req.clone()).await;
    let chunks = s
        .stream(
            "/v1/chat/completions",
            with(
                req,
                json!({"stream": true, "stream_options": {"include_usage": true}}),
            ),
        )
        .await;
    assert_eq!(stream_text(&chunks, 0), content(&full));
    assert_eq!(chunks.last().unwrap()["usage"], full["usage"]);
}
