//! POST /v1/completions: prompt forms, shapes, usage, determinism, stop, logprobs.

use rosetta_tests::*;

fn greedy(prompt: Value, max_tokens: u32) -> Value {
    json!({
        "model": "tiny", "prompt": prompt, "temperature": 0,
        "max_tokens": max_tokens, "ignore_eos": true,
    })
}

#[tokio::test]
async fn completion_has_the_openai_shape() {
    let s = Server::start_default();
    let v = s
        .complete(greedy(json!("The capital of Kenya is"), 9))
        .await;
    assert_eq!(v["object"], "text_completion", "{v}");
    let id = v["id"].as_str().expect("id");
    assert!(id.starts_with("cmpl-") && id.len() > 5, "id {id}");
    check_created(&v);
    assert_eq!(v["model"], "tiny");
    assert!(
        v["system_fingerprint"].is_string(),
        "system_fingerprint: {v}"
    );
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["index"], 0);
    assert!(choices[0]["text"].is_string());
    assert!(
        choices[0]["logprobs"].is_null(),
        "logprobs not requested: {v}"
    );
    assert_eq!(choices[0]["finish_reason"], "length");
    let (p, c) = check_usage(&v["usage"]);
    assert_eq!(c, 9, "{v}");
    let ids = s.tokenize("tiny", "The capital of Kenya is", true).await;
    assert_eq!(
        p,
        ids.len() as u64,
        "usage.prompt_tokens != /tokenize count"
    );
}

#[tokio::test]
async fn greedy_completion_is_deterministic() {
    let s = Server::start_default();
    let a = s.complete(greedy(json!(MULTILINGUAL), 20)).await;
    let b = s.complete(greedy(json!(MULTILINGUAL), 20)).await;
    assert_eq!(text(&a), text(&b));
    assert!(!text(&a).is_empty());
}

#[tokio::test]
async fn token_id_prompt_equals_string_prompt() {
    let s = Server::start_default();
    let prompt = "Karibu sana, rafiki yangu";
    let ids = s.tokenize("tiny", prompt, true).await;
    let by_text = s.complete(greedy(json!(prompt), 12)).await;
    let by_ids = s.complete(greedy(json!(ids), 12)).await;
    assert_eq!(
        text(&by_text),
        text(&by_ids),
        "[int] prompt and string prompt differ"
    );
    assert_eq!(by_ids["usage"]["prompt_tokens"], ids.len(), "{by_ids}");
}

#[tokio::test]
async fn list_of_prompts_gives_one_choice_each_in_order() {
    let s = Server::start_default();
    let a = text(&s.complete(greedy(json!("Bonjour"), 6)).await);
    let b = text(&s.complete(greedy(json!("नमस्ते दुनिया"), 6)).await);
    let v = s
        .complete(greedy(json!(["Bonjour", "नमस्ते दुनिया"]), 6))
        .await;
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 2, "{v}");
    let by_index = |i: u64| {
        choices
            .iter()
            .find(|c| c["index"] == i)
            .unwrap_or_else(|| panic!("no choice with index {i}: {v}"))["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(by_index(0), a, "choice 0 must answer prompt 0");
    assert_eq!(by_index(1), b, "choice 1 must answer prompt 1");
    let (p, c) = check_usage(&v["usage"]);
    let pa = s.tokenize("tiny", "Bonjour", true).await.len() as u64;
    let pb = s.tokenize("tiny", "नमस्ते दुनिया", true).await.len() as u64;
    assert_eq!(p, pa + pb, "prompt_tokens must sum over the prompts: {v}");
    assert_eq!(c, 12, "completion_tokens must sum over the choices: {v}");
}

#[tokio::test]
async fn list_of_token_id_prompts_with_n_two() {
    let s = Server::start_default();
    let x = s.tokenize("tiny", "Hola amigo", true).await;
    let y = s.tokenize("tiny", "Привет, друг", true).await;
    let mut req = greedy(json!([x, y]), 4);
    req["n"] = json!(2);
    let v = s.complete(req).await;
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 4, "2 prompts x n=2: {v}");
    let mut idx: Vec<u64> = choices
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    idx.sort();
    assert_eq!(idx, vec![0, 1, 2, 3]);
    let tx = text(&s.complete(greedy(json!(x), 4)).await);
    let ty = text(&s.complete(greedy(json!(y), 4)).await);
    for c in choices {
        let i = c["index"].as_u64().unwrap();
        let want = if i < 2 { &tx } else { &ty };
        assert_eq!(
            c["text"].as_str().unwrap(),
            want,
            "choice {i}: index = prompt * n + k: {v}"
        );
    }
    assert_eq!(check_usage(&v["usage"]).1, 16, "{v}");
}

#[tokio::test]
async fn seed_makes_completions_reproducible() {
    let s = Server::start_default();
    let req = json!({
        "model": "tiny", "prompt": "Es war einmal", "temperature": 1.0, "top_p": 0.95,
        "seed": 1234, "max_tokens": 16, "ignore_eos": true,
    });
    let a = s.complete(req.clone()).await;
    let b = s.complete(req).await;
    assert_eq!(text(&a), text(&b));
}

#[tokio::test]
async fn stop_string_cuts_completion_right_before_it() {
    let s = Server::start_default();
    let base = text(&s.complete(greedy(json!("Érase una vez"), 40)).await);
    let chars: Vec<char> = base.chars().collect();
    assert!(chars.len() >= 8, "{base:?}");
    let mut i = chars.len() / 2;
    while i + 3 < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    let stop: String = chars[i..(i + 3).min(chars.len())].iter().collect();
    let expected = &base[..base.find(&stop).unwrap()];
    let mut req = greedy(json!("Érase una vez"), 40);
    req["stop"] = json!([stop]);
    let v = s.complete(req).await;
    assert_eq!(text(&v), expected, "stop {stop:?} (base {base:?})");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn completion_logprobs_have_the_legacy_shape() {
    let s = Server::start_default();
    let mut req = greedy(json!(MULTILINGUAL), 6);
    req["logprobs"] = json!(2);
    let v = s.complete(req).await;
    let lp = &v["choices"][0]["logprobs"];
    assert!(lp.is_object(), "choices[0].logprobs: {v}");
    let tokens = lp["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("logprobs.tokens: {v}"));
    let token_lps = lp["token_logprobs"]
        .as_array()
        .unwrap_or_else(|| panic!("logprobs.token_logprobs: {v}"));
    let tops = lp["top_logprobs"]
        .as_array()
        .unwrap_or_else(|| panic!("logprobs.top_logprobs: {v}"));
    let offsets = lp["text_offset"]
        .as_array()
        .unwrap_or_else(|| panic!("logprobs.text_offset: {v}"));
    assert_eq!(tokens.len(), 6, "{v}");
    assert_eq!(token_lps.len(), 6);
    assert_eq!(tops.len(), 6);
    assert_eq!(offsets.len(), 6);
    for (i, t) in tokens.iter().enumerate() {
        assert!(t.is_string(), "{t}");
        let l = token_lps[i]
            .as_f64()
            .unwrap_or_else(|| panic!("token_logprobs[{i}]: {v}"));
        assert!(l <= 0.0, "token logprob > 0: {v}");
        let top = tops[i]
            .as_object()
            .unwrap_or_else(|| panic!("top_logprobs[{i}] is not a token->logprob map: {v}"));
        assert!(
            !top.is_empty() && top.len() <= 3,
            "top_logprobs[{i}] has {} entries for logprobs=2: {v}",
            top.len()
        );
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(top.values().all(|x| x.as_f64().unwrap() <= 0.0));
        // Greedy: the chosen token is the most likely.
        assert!(
            (l - best).abs() < 1e-4,
            "greedy token logprob {l} != best {best}: {v}"
        );
    }
    let offs: Vec<u64> = offsets
        .iter()
        .map(|o| o.as_u64().expect("text_offset"))
        .collect();
    assert!(
        offs.windows(2).all(|w| w[0] <= w[1]),
        "text_offset not increasing: {offs:?}"
    );
}

#[tokio::test]
async fn llama_prompt_gets_bos_only_with_special_tokens() {
    let s = Server::start_default();
    let with = s.tokenize("tiny-llama", "Hello", true).await;
    let without = s.tokenize("tiny-llama", "Hello", false).await;
    assert_eq!(
        with.len(),
        without.len() + 1,
        "Llama-3 adds <|begin_of_text|>: {with:?} vs {without:?}"
    );
    assert_eq!(&with[1..], &without[..]);
    let v = s
        .complete(
            json!({"model": "tiny-llama", "prompt": "Hello", "max_tokens": 3, "temperature": 0}),
        )
        .await;
    assert_eq!(
        v["usage"]["prompt_tokens"],
        with.len(),
        "completions add the BOS like /tokenize: {v}"
    );
}
