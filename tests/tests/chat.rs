//! POST /v1/chat/completions: shapes, usage, determinism, n, stop, logprobs, extensions.

use rosetta_tests::*;

fn user(prompt: &str) -> Value {
    json!([{"role": "user", "content": prompt}])
}

#[tokio::test]
async fn chat_completion_has_the_openai_shape() {
    let s = Server::start_default();
    let v = s
        .chat(json!({
            "model": "tiny",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Habari ya asubuhi"}
            ],
            "max_tokens": 12,
            "temperature": 0,
            "user": "user-1234",
        }))
        .await;
    assert_eq!(v["object"], "chat.completion", "{v}");
    let id = v["id"].as_str().expect("id");
    assert!(
        id.starts_with("chatcmpl-") && id.len() > "chatcmpl-".len(),
        "id {id}"
    );
    check_created(&v);
    assert_eq!(v["model"], "tiny", "{v}");
    assert!(
        v["system_fingerprint"].is_string(),
        "system_fingerprint: {v}"
    );
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 1, "{v}");
    let c = &choices[0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert!(c["message"]["content"].is_string(), "{v}");
    let fr = c["finish_reason"].as_str().expect("finish_reason");
    assert!(fr == "stop" || fr == "length", "finish_reason {fr}");
    assert!(
        c["logprobs"].is_null(),
        "logprobs not requested but present: {v}"
    );
    let (_, completion) = check_usage(&v["usage"]);
    assert!(completion <= 12, "{v}");
    if fr == "length" {
        assert_eq!(
            completion, 12,
            "finish_reason length but completion_tokens != max_tokens: {v}"
        );
    }
}

#[tokio::test]
async fn two_requests_get_distinct_ids() {
    let s = Server::start_default();
    let a = s.greedy_chat("tiny", "hello", 2).await;
    let b = s.greedy_chat("tiny", "hello", 2).await;
    assert_ne!(a["id"], b["id"], "two completions share an id");
}

#[tokio::test]
async fn ignore_eos_runs_to_max_tokens_with_finish_reason_length() {
    let s = Server::start_default();
    for model in ["tiny", "tiny-llama", "tiny-long"] {
        let v = s.greedy_chat(model, "Bonjour, comment ça va ?", 10).await;
        assert_eq!(v["choices"][0]["finish_reason"], "length", "{model}: {v}");
        let (_, c) = check_usage(&v["usage"]);
        assert_eq!(
            c, 10,
            "{model}: completion_tokens != max_tokens with ignore_eos: {v}"
        );
        assert_eq!(v["model"], model);
    }
}

#[tokio::test]
async fn max_completion_tokens_limits_like_max_tokens() {
    let s = Server::start_default();
    let v = s
        .chat(json!({
            "model": "tiny", "messages": user("Hola"), "temperature": 0,
            "max_completion_tokens": 7, "ignore_eos": true,
        }))
        .await;
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(check_usage(&v["usage"]).1, 7, "{v}");
    let by_max_tokens = s.greedy_chat("tiny", "Hola", 7).await;
    assert_eq!(
        content(&v),
        content(&by_max_tokens),
        "max_completion_tokens and max_tokens differ"
    );
}

#[tokio::test]
async fn greedy_is_deterministic() {
    let s = Server::start_default();
    for model in ["tiny", "tiny-llama"] {
        let a = s.greedy_chat(model, MULTILINGUAL, 24).await;
        let b = s.greedy_chat(model, MULTILINGUAL, 24).await;
        assert_eq!(content(&a), content(&b), "{model}: greedy outputs differ");
        assert!(
            !content(&a).is_empty(),
            "{model}: 24 tokens decoded to nothing: {a}"
        );
    }
}

#[tokio::test]
async fn prompt_tokens_match_tokenize_of_the_same_messages() {
    let s = Server::start_default();
    let messages = json!([
        {"role": "system", "content": "Réponds en français."},
        {"role": "user", "content": MULTILINGUAL},
    ]);
    for model in ["tiny", "tiny-llama"] {
        let t = s
            .post(
                "/tokenize",
                &json!({"model": model, "messages": messages, "add_generation_prompt": true}),
            )
            .await
            .ok();
        let v = s
            .chat(json!({"model": model, "messages": messages, "max_tokens": 1, "temperature": 0}))
            .await;
        assert_eq!(
            v["usage"]["prompt_tokens"], t["count"],
            "{model}: chat usage.prompt_tokens != /tokenize count for the same messages: {v} vs {t}"
        );
    }
}

#[tokio::test]
async fn seed_makes_sampling_reproducible() {
    let s = Server::start_default();
    let req = |seed: u64| {
        json!({
            "model": "tiny", "messages": user("Tell me a story"),
            "temperature": 1.0, "seed": seed, "max_tokens": 16, "ignore_eos": true,
        })
    };
    let a = s.chat(req(42)).await;
    let b = s.chat(req(42)).await;
    assert_eq!(content(&a), content(&b), "same seed, different text");
    // 16 tokens sampled at temperature 1 from a 2048-token vocabulary: other seeds must not
    // all reproduce the same text.
    let mut others = Vec::new();
    for seed in [1, 2, 3] {
        others.push(content(&s.chat(req(seed)).await));
    }
    assert!(
        others.iter().any(|o| *o != content(&a)),
        "seeds 1, 2, 3 and 42 all gave the same text: seed is ignored? {others:?}"
    );
}

#[tokio::test]
async fn n_three_gives_indices_0_to_2_and_summed_usage() {
    let s = Server::start_default();
    let v = s
        .chat(json!({
            "model": "tiny", "messages": user("Привет"), "n": 3,
            "temperature": 0, "max_tokens": 5, "ignore_eos": true,
        }))
        .await;
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 3, "{v}");
    let mut idx: Vec<u64> = choices
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    idx.sort();
    assert_eq!(idx, vec![0, 1, 2], "{v}");
    // Greedy: every choice is the same text, equal to n=1.
    let single = content(&s.greedy_chat("tiny", "Привет", 5).await);
    for c in choices {
        assert_eq!(
            c["message"]["content"],
            single.as_str(),
            "greedy choice differs from n=1: {v}"
        );
        assert_eq!(c["finish_reason"], "length");
    }
    let (_, completion) = check_usage(&v["usage"]);
    assert_eq!(
        completion, 15,
        "completion_tokens must count all 3 choices: {v}"
    );
}

#[tokio::test]
async fn n_with_sampling_and_seed_is_reproducible() {
    let s = Server::start_default();
    let req = json!({
        "model": "tiny", "messages": user("Write"), "n": 3, "seed": 7,
        "temperature": 1.0, "max_tokens": 12, "ignore_eos": true,
    });
    let a = s.chat(req.clone()).await;
    let b = s.chat(req).await;
    let texts = |v: &Value| {
        let mut t: Vec<(u64, String)> = v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["index"].as_u64().unwrap(),
                    c["message"]["content"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        t.sort();
        t
    };
    assert_eq!(texts(&a), texts(&b), "n=3 with a seed is not reproducible");
    let t = texts(&a);
    assert!(
        t[0].1 != t[1].1 || t[1].1 != t[2].1,
        "n=3 sampled choices are all identical: the choices share one random stream? {t:?}"
    );
}

/// Picks a stop string of a few characters from the middle of `text`.
fn stop_from_middle(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    assert!(
        chars.len() >= 8,
        "greedy text too short to pick a stop string from: {text:?}"
    );
    let mut i = chars.len() / 2;
    // Prefer a start that is not whitespace, so the stop string is visible.
    while i + 3 < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    chars[i..(i + 3).min(chars.len())].iter().collect()
}

#[tokio::test]
async fn stop_string_cuts_output_right_before_it() {
    let s = Server::start_default();
    let base = content(&s.greedy_chat("tiny", "Once upon a time", 40).await);
    let stop = stop_from_middle(&base);
    let expected = &base[..base.find(&stop).unwrap()];
    let v = s
        .chat(json!({
            "model": "tiny", "messages": user("Once upon a time"), "temperature": 0,
            "max_tokens": 40, "ignore_eos": true, "stop": stop,
        }))
        .await;
    let got = content(&v);
    assert!(
        !got.contains(&stop),
        "output contains the stop string {stop:?}: {got:?}"
    );
    assert_eq!(
        got, expected,
        "stop {stop:?}: output not cut right before the stop string (base {base:?})"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    check_usage(&v["usage"]);
}

#[tokio::test]
async fn stop_list_cuts_at_the_earliest_match() {
    let s = Server::start_default();
    let base = content(&s.greedy_chat("tiny", "Il était une fois", 40).await);
    let chars: Vec<char> = base.chars().collect();
    assert!(chars.len() >= 12, "{base:?}");
    let late: String = chars[chars.len() * 3 / 4..chars.len() * 3 / 4 + 2]
        .iter()
        .collect();
    let early = stop_from_middle(&base);
    let cut = base.find(&late).unwrap().min(base.find(&early).unwrap());
    let v = s
        .chat(json!({
            "model": "tiny", "messages": user("Il était une fois"), "temperature": 0,
            "max_tokens": 40, "ignore_eos": true,
            "stop": [late, "ZZZZ-never-ZZZZ", early],
        }))
        .await;
    assert_eq!(
        content(&v),
        &base[..cut],
        "stop list {late:?} / {early:?} (base {base:?})"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn stop_string_that_never_appears_changes_nothing() {
    let s = Server::start_default();
    let base = s.greedy_chat("tiny", "Guten Morgen", 16).await;
    let v = s
        .chat(json!({
            "model": "tiny", "messages": user("Guten Morgen"), "temperature": 0,
            "max_tokens": 16, "ignore_eos": true, "stop": ["ZZZZ-never-ZZZZ"],
        }))
        .await;
    assert_eq!(content(&v), content(&base));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"], base["usage"]);
}

#[tokio::test]
async fn logprobs_have_the_openai_shape() {
    let s = Server::start_default();
    let v = s
        .chat(json!({
            "model": "tiny", "messages": user(MULTILINGUAL), "temperature": 0,
            "max_tokens": 8, "ignore_eos": true, "logprobs": true, "top_logprobs": 3,
        }))
        .await;
    let content_lp = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("choices[0].logprobs.content missing: {v}"));
    let (_, completion) = check_usage(&v["usage"]);
    assert_eq!(
        content_lp.len() as u64,
        completion,
        "one logprobs entry per generated token: {v}"
    );
    let mut all_bytes = Vec::new();
    for e in content_lp {
        assert!(e["token"].is_string(), "token: {e}");
        let lp = e["logprob"]
            .as_f64()
            .unwrap_or_else(|| panic!("logprob: {e}"));
        assert!(lp <= 0.0, "logprob > 0: {e}");
        let bytes: Vec<u8> = e["bytes"]
            .as_array()
            .unwrap_or_else(|| panic!("bytes: {e}"))
            .iter()
            .map(|b| u8::try_from(b.as_u64().expect("byte")).expect("byte > 255"))
            .collect();
        all_bytes.extend_from_slice(&bytes);
        let top = e["top_logprobs"]
            .as_array()
            .unwrap_or_else(|| panic!("top_logprobs: {e}"));
        assert_eq!(top.len(), 3, "top_logprobs: 3 requested: {e}");
        let tl: Vec<f64> = top
            .iter()
            .map(|t| t["logprob"].as_f64().expect("top logprob"))
            .collect();
        for t in top {
            assert!(
                t["token"].is_string() && t["bytes"].is_array(),
                "top entry: {t}"
            );
        }
        assert!(
            tl.windows(2).all(|w| w[0] >= w[1]),
            "top_logprobs not sorted descending: {e}"
        );
        assert!(tl.iter().all(|&x| x <= 0.0), "top logprob > 0: {e}");
        // Greedy: the chosen token is the most likely one.
        assert!(
            (lp - tl[0]).abs() < 1e-4,
            "greedy token logprob {lp} != best top logprob {}: {e}",
            tl[0]
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&all_bytes),
        content(&v),
        "the tokens' bytes do not concatenate to the content"
    );
}

#[tokio::test]
async fn logprobs_without_top_logprobs() {
    let s = Server::start_default();
    let v = s
        .chat(json!({
            "model": "tiny", "messages": user("Hi"), "temperature": 0,
            "max_tokens": 4, "ignore_eos": true, "logprobs": true,
        }))
        .await;
    let lp = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(lp.len(), 4);
    for e in lp {
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
        let top = &e["top_logprobs"];
        assert!(
            top.is_null() || top.as_array().is_some_and(|a| a.is_empty()),
            "{e}"
        );
    }
}

#[tokio::test]
async fn a_tool_message_that_answers_no_call_is_a_400() {
    let s = Server::start_default();
    // As OpenAI: a `tool` turn must answer a call an earlier assistant turn made.
    let r = s
        .post(
            "/v1/chat/completions",
            &json!({
                "model": "tiny-llama",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "tool", "content": "42", "tool_call_id": "call_1"},
                ],
                "max_tokens": 4,
            }),
        )
        .await;
    r.assert_invalid();
    assert_eq!(
        r.json["error"]["param"], "messages[1].tool_call_id",
        "{}",
        r.text
    );
    // And the server is fine afterwards.
    s.greedy_chat("tiny-llama", "hi", 2).await;
}

#[tokio::test]
async fn llama_template_accepts_system_user_assistant() {
    let s = Server::start_default();
    let v = s
        .chat(json!({
            "model": "tiny-llama",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hallo"},
                {"role": "assistant", "content": "Hallo!"},
                {"role": "user", "content": "Wie geht's?"},
            ],
            "max_tokens": 4, "temperature": 0,
        }))
        .await;
    check_usage(&v["usage"]);
}

#[tokio::test]
async fn top_k_one_and_min_p_one_equal_greedy() {
    let s = Server::start_default();
    let greedy = content(&s.greedy_chat("tiny", "Sawubona", 16).await);
    for extra in [json!({"top_k": 1}), json!({"min_p": 1.0})] {
        let mut req = json!({
            "model": "tiny", "messages": user("Sawubona"), "temperature": 1.0, "seed": 3,
            "max_tokens": 16, "ignore_eos": true,
        });
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        let v = s.chat(req).await;
        assert_eq!(
            content(&v),
            greedy,
            "{extra} at temperature 1 should pick the argmax every time"
        );
    }
}

#[tokio::test]
async fn min_tokens_is_honoured() {
    let s = Server::start_default();
    let v = s
        .chat(json!({
            "model": "tiny", "messages": user("Hi"), "temperature": 0,
            "max_tokens": 20, "min_tokens": 12,
        }))
        .await;
    let (_, c) = check_usage(&v["usage"]);
    assert!(c >= 12, "min_tokens 12 but completion_tokens {c}: {v}");
}

#[tokio::test]
async fn repetition_penalty_is_accepted_and_changes_nothing_at_one() {
    let s = Server::start_default();
    let greedy = content(&s.greedy_chat("tiny", "Ciao", 16).await);
    let v = s
        .chat(json!({
            "model": "tiny", "messages": user("Ciao"), "temperature": 0,
            "max_tokens": 16, "ignore_eos": true, "repetition_penalty": 1.0,
        }))
        .await;
    assert_eq!(content(&v), greedy);
    let v = s
        .chat(json!({
            "model": "tiny", "messages": user("Ciao"), "temperature": 0,
            "max_tokens": 16, "ignore_eos": true, "repetition_penalty": 1.3,
            "presence_penalty": 0.5, "frequency_penalty": 0.5,
        }))
        .await;
    check_usage(&v["usage"]);
}

#[tokio::test]
async fn stop_token_ids_end_generation_before_that_token() {
    let s = Server::start_default();
    let v = s
        .chat(json!({
            "model": "tiny", "messages": user("Hej"), "temperature": 0,
            "max_tokens": 24, "ignore_eos": true, "logprobs": true,
        }))
        .await;
    let toks = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .clone();
    let bytes_of = |e: &Value| -> Vec<u8> {
        e["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect()
    };
    // Find a generated token (past the first) whose text tokenizes back to exactly one id.
    let mut picked = None;
    for (i, e) in toks.iter().enumerate().skip(2) {
        let b = bytes_of(e);
        let Ok(t) = String::from_utf8(b.clone()) else {
            continue;
        };
        let ids = s.tokenize("tiny", &t, false).await;
        if ids.len() == 1 {
            picked = Some((i, b, ids[0]));
            break;
        }
    }
    let (_, picked_bytes, id) = picked.expect("no generated token round-trips through /tokenize");
    let first = toks
        .iter()
        .position(|e| bytes_of(e) == picked_bytes)
        .unwrap();
    let expected: Vec<u8> = toks[..first].iter().flat_map(bytes_of).collect();
    let r = s
        .chat(json!({
            "model": "tiny", "messages": user("Hej"), "temperature": 0,
            "max_tokens": 24, "ignore_eos": true, "stop_token_ids": [id],
        }))
        .await;
    assert_eq!(
        r["choices"][0]["finish_reason"], "stop",
        "stop_token_ids [{id}]: {r}"
    );
    assert_eq!(
        content(&r),
        String::from_utf8_lossy(&expected),
        "stop_token_ids [{id}]: {r}"
    );
}

#[tokio::test]
async fn every_architecture_answers() {
    let s = Server::start(
        r#"
auth: { allow_unauthenticated: true, anonymous_tenant: local }
tenants: [{ id: local, accepted_licences: [llama3.1] }]
models:
  - { id: llama, demo: { arch: llama, size: tiny, seed: 2 }, licence: llama3.1 }
  - { id: mistral, demo: { arch: mistral, size: tiny, seed: 2 }, licence: apache-2.0 }
  - { id: qwen2, demo: { arch: qwen2, size: tiny, seed: 2 }, licence: apache-2.0 }
  - { id: qwen3, demo: { arch: qwen3, size: tiny, seed: 2 }, licence: apache-2.0 }
  - { id: mixtral, demo: { arch: mixtral, size: tiny, seed: 2 }, licence: apache-2.0 }
  - { id: cohere, demo: { arch: cohere, size: tiny, seed: 2 }, licence: apache-2.0 }
  - { id: cohere2, demo: { arch: cohere2, size: tiny, seed: 2 }, licence: apache-2.0 }
  - { id: bloom, demo: { arch: bloom, size: tiny, seed: 2 }, licence: apache-2.0 }
"#,
    );
    // Mistral's tiny model has a 16-token sliding window and Cohere2's a 12-token one: a
    // prompt longer than that exercises them.
    let long = "Jambo! Habari gani? Nzuri sana, asante. Karibu Rosetta, karibu sana. ".repeat(3);
    for model in [
        "llama", "mistral", "qwen2", "qwen3", "mixtral", "cohere", "cohere2", "bloom",
    ] {
        let a = s.greedy_chat(model, &long, 12).await;
        let b = s.greedy_chat(model, &long, 12).await;
        assert_eq!(content(&a), content(&b), "{model}: not deterministic");
        assert_eq!(check_usage(&a["usage"]).1, 12, "{model}: {a}");
        assert!(
            a["usage"]["prompt_tokens"].as_u64().unwrap() > 16,
            "{model}: prompt not past the window"
        );
    }
    // /load says where the forward passes spent their time: Mixtral's partly in its experts.
    let load = s.get("/load").await.ok();
    let seconds = |model: &str, key: &str| load["models"][model][key].as_f64().unwrap();
    let (forward, experts) = (
        seconds("mixtral", "forward_seconds"),
        seconds("mixtral", "experts_seconds"),
    );
    assert!(experts > 0.0 && experts < forward, "{load}");
    assert!(seconds("llama", "forward_seconds") > 0.0, "{load}");
    assert_eq!(seconds("llama", "experts_seconds"), 0.0, "{load}");
}

#[tokio::test]
async fn assistant_turn_without_content_is_accepted_in_history() {
    let s = Server::start_default();
    let v = s
        .chat(json!({
            "model": "tiny",
            "messages": [
                {"role": "user", "content": "Hola"},
                {"role": "assistant", "content": null},
                {"role": "user", "content": "¿Qué tal?"}
            ],
            "max_tokens": 4,
        }))
        .await;
    assert_eq!(v["object"], "chat.completion", "{v}");
}

#[tokio::test]
async fn stream_options_without_stream_is_rejected() {
    let s = Server::start_default();
    let r = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "tiny", "messages": user("x"), "max_tokens": 2,
                    "stream_options": {"include_usage": true}}),
        )
        .await;
    r.assert_error(400, Some("invalid_request_error"), None);
    assert_eq!(r.json["error"]["param"], "stream_options", "{}", r.text);
}

/// Every field of OpenAI's chat request is accepted; those that have no effect here (listed
/// in the README) are ignored, never a 400.
#[tokio::test]
async fn every_field_of_the_spec_is_accepted() {
    let s = Server::start_default();
    let v = s
        .chat(json!({
            "model": "tiny",
            "messages": [{"role": "user", "content": "Habari"}],
            "max_completion_tokens": 3,
            "store": true,
            "service_tier": "auto",
            "prediction": {"type": "content", "content": "Habari yako"},
            "web_search_options": {"search_context_size": "low"},
            "audio": null,
            "modalities": ["text"],
            "moderation": null,
            "prompt_cache_key": "session-1",
            "prompt_cache_retention": "24h",
            "safety_identifier": "user-hash",
            "verbosity": "low",
            "user": "someone",
            "metadata": {"team": "sw"},
            "parallel_tool_calls": true,
            "reasoning_effort": "low",
            "frequency_penalty": 0.1,
            "presence_penalty": 0.1,
            "logprobs": false,
            "n": 1,
            "seed": 4,
            "stop": null,
            "stream": false,
            "temperature": 0.5,
            "top_p": 0.9,
            "tool_choice": "none",
            "tools": [],
            "response_format": {"type": "text"},
            "logit_bias": {},
        }))
        .await;
    assert_eq!(v["object"], "chat.completion", "{v}");
}
