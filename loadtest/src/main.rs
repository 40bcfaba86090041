//! rosetta-bench: streams chat completions at fixed concurrency against one or more
//! OpenAI-compatible servers, in one run, and prints throughput, time to first token and
//! inter-token latency per level, with ratios against the first target.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::StreamExt;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "rosetta-bench",
    about = "Load generator for OpenAI-compatible servers"
)]
struct Args {
    /// NAME=URL=MODEL, repeatable; the first is the baseline the others are compared to.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Concurrent streams per level.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Requests each stream sends one after another at each level.
    #[arg(long, default_value_t = 2)]
    requests_per_stream: usize,
    /// Output tokens per request (EOS ignored, so every request yields exactly this many).
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Also measure time to first token for a prompt sharing a prefix of about this many
    /// tokens with an earlier one (prefix-cache hit against miss), on the first target.
    #[arg(long)]
    prefix_test: Option<usize>,
    /// Instead of the throughput levels: send this many small requests (1 output token, not
    /// streamed) to each target in turn, interleaved, and print latency percentiles and what
    /// each target adds over the first (for example a gateway over the replica it fronts).
    #[arg(long)]
    overhead: Option<usize>,
    /// Instead of the throughput levels: time to first token of one prompt of about this many
    /// tokens at a time on an idle server, per target, three rounds interleaved (new text
    /// each time, so no prefix-cache hits), with the median and ratios against the first; and
    /// the time per token of the 64-token decode that follows, at that context.
    #[arg(long)]
    long_prompt: Option<usize>,
    /// Send `Authorization: Bearer KEY` to every target (servers that need API keys).
    #[arg(long, env = "ROSETTA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

struct Target {
    name: String,
    url: String,
    model: String,
    /// Structured output: every request of this target carries this JSON schema.
    schema: Option<serde_json::Value>,
}

#[derive(Default, Clone, Copy)]
struct Level {
    tokens_per_s: f64,
    ttft_ms: f64,
    itl_ms: f64,
    /// Percentiles: time to first token over requests, gaps between tokens over every gap.
    ttft_p50_ms: f64,
    ttft_p99_ms: f64,
    itl_p50_ms: f64,
    itl_p99_ms: f64,
    prompt_tokens: f64,
    /// KV use while streams ran (Rosetta's /load only).
    kv: Option<KvSample>,
}

/// Means over /load samples taken while a level ran.
#[derive(Default, Clone, Copy)]
struct KvSample {
    /// Share of slots in allocated blocks that hold no token.
    unused: f64,
    /// Tokens held per running sequence: with lazily allocated blocks of size b the unused
    /// share cannot fall below about (b - 1) / 2 over this plus that.
    tokens_per_seq: f64,
}

struct RequestStats {
    ttft: Duration,
    itl: Option<Duration>,
    /// Time between consecutive chunks that carried tokens.
    gaps: Vec<Duration>,
    completion_tokens: usize,
    prompt_tokens: usize,
}

const SENTENCES: &[&str] = &[
    "Habari ya asubuhi, rafiki yangu.",
    "Le marché ouvre tôt le samedi matin.",
    "Der Zug nach Berlin fährt um acht Uhr.",
    "¿Dónde está la biblioteca más cercana?",
    "明天的天气怎么样？",
    "यह किताब बहुत दिलचस्प है।",
    "Погода сегодня очень хорошая.",
    "今日はとても良い天気ですね。",
    "The river flows quietly past the old mill.",
    "مرحبا، كيف حالك اليوم؟",
    "Ninapenda kusoma vitabu vya historia.",
    "Il pleut depuis trois jours sans arrêt.",
];

/// A user message of roughly 32 tokens, different for every (stream, request).
fn prompt(stream: usize, request: usize) -> String {
    // Unique per request across levels, targets and runs: no prefix-cache hits between
    // requests beyond the chat template's own opening.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static RUN: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() % 1_000_000_007)
    });
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let start = (stream * 7 + request * 3) % SENTENCES.len();
    let mut text = format!("Request {run}-{id}: ");
    for i in 0..3 {
        text.push_str(SENTENCES[(start + i * 5) % SENTENCES.len()]);
        text.push(' ');
    }
    text
}

/// NAME=URL=MODEL, or NAME=URL=MODEL=SCHEMA.json to send every request with
/// `response_format: json_schema` (constrained decoding's cost).
fn parse_target(s: &str) -> anyhow::Result<Target> {
    let mut parts = s.splitn(4, '=');
    let (Some(name), Some(url), Some(model)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("--target must be NAME=URL=MODEL[=SCHEMA.json], got {s}");
    };
    let schema = match parts.next() {
        None => None,
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the schema {file}"))?;
            Some(serde_json::from_str(&text).with_context(|| format!("{file} is not JSON"))?)
        }
    };
    Ok(Target {
        name: name.into(),
        url: url.trim_end_matches('/').into(),
        model: model.into(),
        schema,
    })
}

async fn stream_chat(
    client: &reqwest::Client,
    t: &Target,
    content: &str,
    max_tokens: usize,
) -> anyhow::Result<RequestStats> {
    let mut body = json!({
        "model": t.model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
        "ignore_eos": true,
        "min_tokens": max_tokens,
    });
    if let Some(schema) = &t.schema {
        body["response_format"] =
            json!({"type": "json_schema", "json_schema": {"name": "bench", "schema": schema}});
    }
    // A fresh connection per request (`Connection: close`): servers differ in how they end
    // keep-alive connections, and llama.cpp's sometimes drops one it was handed; such
    // attempts were never processed, so they are retried and the answered one is timed.
    let mut attempt = 0;
    let (start, resp) = loop {
        let start = Instant::now();
        let request = client
            .post(format!("{}/v1/chat/completions", t.url))
            .header(reqwest::header::CONNECTION, "close")
            .json(&body);
        match request.send().await {
            Ok(resp) => break (start, resp),
            Err(e) if attempt < 3 && !e.is_timeout() => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if !resp.status().is_success() {
        bail!(
            "{}: HTTP {}: {}",
            t.name,
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    let mut bytes = resp.bytes_stream();
    let mut buf = Vec::new();
    let (mut first, mut last, mut chunks) = (None, None, 0usize);
    let mut gaps = Vec::new();
    let (mut completion, mut prompt) = (None, 0);
    while let Some(piece) = bytes.next().await {
        buf.extend_from_slice(&piece?);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            for line in text.lines() {
                let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                    continue;
                };
                if data == "[DONE]" {
                    continue;
                }
                let v: Value =
                    serde_json::from_str(data).with_context(|| format!("bad chunk {data}"))?;
                if let Some(e) = v.get("error") {
                    bail!("{}: stream error {e}", t.name);
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    completion = u["completion_tokens"].as_u64().map(|c| c as usize);
                    prompt = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
                }
                let has_token = v["choices"].as_array().is_some_and(|c| {
                    c.iter().any(|c| {
                        c["delta"]["content"]
                            .as_str()
                            .is_some_and(|s| !s.is_empty())
                    })
                });
                if has_token {
                    let now = Instant::now();
                    first.get_or_insert(now);
                    if let Some(prev) = last {
                        gaps.push(now.duration_since(prev));
                    }
                    last = Some(now);
                    chunks += 1;
                }
            }
        }
    }
    // An answer whose tokens carried no text (random weights can give only partial UTF-8
    // sequences) still counts, with its whole duration as its time to first token, rather
    // than ending the run.
    let first = match first {
        Some(first) => first,
        None if completion.is_some_and(|c| c > 0) => {
            eprintln!(
                "{}: an answer carried no text; its TTFT is its whole duration",
                t.name
            );
            Instant::now()
        }
        None => bail!("{}: no token arrived", t.name),
    };
    let tokens = completion.unwrap_or(chunks);
    let itl =
        (tokens > 1).then(|| last.unwrap_or(first).duration_since(first) / (tokens as u32 - 1));
    Ok(RequestStats {
        ttft: first.duration_since(start),
        itl,
        gaps,
        completion_tokens: tokens,
        prompt_tokens: prompt,
    })
}

/// Polls Rosetta's /load while a level runs; None for servers without it.
async fn sample_kv(
    client: reqwest::Client,
    url: String,
    model: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Option<KvSample> {
    let mut samples = Vec::new();
    while !*stop.borrow() {
        let v: Option<Value> = match client.get(format!("{url}/load")).send().await {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            _ => return None,
        };
        let m = v.as_ref().map(|v| &v["models"][&model])?;
        let (used, bs, unused, running) = (
            m["kv_blocks_used"].as_f64()?,
            m["kv_block_size"].as_f64()?,
            m["kv_slots_unused"].as_f64()?,
            m["running"].as_f64()?,
        );
        if used > 0.0 && running > 0.0 && m["waiting"].as_u64() == Some(0) {
            let slots = used * bs;
            samples.push(KvSample {
                unused: unused / slots,
                tokens_per_seq: (slots - unused) / running,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = samples.len() as f64;
    (n > 0.0).then(|| KvSample {
        unused: samples.iter().map(|s| s.unused).sum::<f64>() / n,
        tokens_per_seq: samples.iter().map(|s| s.tokens_per_seq).sum::<f64>() / n,
    })
}

async fn run_level(
    client: &reqwest::Client,
    t: &Target,
    streams: usize,
    per_stream: usize,
    max_tokens: usize,
) -> anyhow::Result<Level> {
    // Warm up once so model loading and first-request effects stay out of the numbers.
    stream_chat(client, t, "warm up", 4).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(sample_kv(
        client.clone(),
        t.url.clone(),
        t.model.clone(),
        stop_rx,
    ));
    let start = Instant::now();
    let mut handles = Vec::new();
    for s in 0..streams {
        let client = client.clone();
        let target = Target {
            name: t.name.clone(),
            url: t.url.clone(),
            model: t.model.clone(),
            schema: t.schema.clone(),
        };
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for r in 0..per_stream {
                out.push(stream_chat(&client, &target, &prompt(s, r), max_tokens).await?);
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    let wall = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let kv = sampler.await.ok().flatten();
    let n = all.len() as f64;
    let tokens: usize = all.iter().map(|r| r.completion_tokens).sum();
    let itls: Vec<f64> = all
        .iter()
        .filter_map(|r| r.itl.map(|d| d.as_secs_f64()))
        .collect();
    let ttfts: Vec<f64> = all.iter().map(|r| r.ttft.as_secs_f64() * 1e3).collect();
    let gaps: Vec<f64> = all
        .iter()
        .flat_map(|r| r.gaps.iter().map(|d| d.as_secs_f64() * 1e3))
        .collect();
    Ok(Level {
        tokens_per_s: tokens as f64 / wall,
        ttft_p50_ms: percentile(&ttfts, 0.50),
        ttft_p99_ms: percentile(&ttfts, 0.99),
        itl_p50_ms: percentile(&gaps, 0.50),
        itl_p99_ms: percentile(&gaps, 0.99),
        ttft_ms: all.iter().map(|r| r.ttft.as_secs_f64()).sum::<f64>() / n * 1e3,
        itl_ms: itls.iter().sum::<f64>() / itls.len().max(1) as f64 * 1e3,
        prompt_tokens: all.iter().map(|r| r.prompt_tokens as f64).sum::<f64>() / n,
        kv,
    })
}

/// The `q` quantile of `values` (nearest rank); 0 for none.
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n => v[((q * n as f64).ceil() as usize).clamp(1, n) - 1],
    }
}

/// Tokens in `text` by the server's /tokenize (Rosetta's and vLLM's shape), if it has one.
async fn count_tokens(client: &reqwest::Client, t: &Target, text: &str) -> Option<usize> {
    let body = json!({"model": t.model, "prompt": text, "add_special_tokens": false});
    let v: Value = client
        .post(format!("{}/tokenize", t.url))
        .json(&body)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["count"].as_u64().map(|c| c as usize)
}

/// TTFT of a long prompt, then of another sharing its prefix (a cache hit on Rosetta).
async fn prefix_test(
    client: &reqwest::Client,
    t: &Target,
    prefix_tokens: usize,
) -> anyhow::Result<(f64, f64)> {
    let (mut miss, mut hit) = (0.0, 0.0);
    let rounds = 3;
    for round in 0..rounds {
        // Each round its own prefix, sized with the server's /tokenize where it has one.
        let text = |words: usize| filler(round, words);
        let per_word = count_tokens(client, t, &text(100))
            .await
            .map_or(2.0, |n| n as f64 / 100.0);
        let prefix = text((prefix_tokens as f64 / per_word) as usize);
        let a = stream_chat(client, t, &format!("{prefix} first question?"), 1).await?;
        let b = stream_chat(client, t, &format!("{prefix} second question?"), 1).await?;
        miss += a.ttft.as_secs_f64();
        hit += b.ttft.as_secs_f64();
        eprintln!(
            "prefix round {round}: prompt {} tokens, miss {:.1} ms, hit {:.1} ms",
            a.prompt_tokens,
            a.ttft.as_secs_f64() * 1e3,
            b.ttft.as_secs_f64() * 1e3
        );
    }
    Ok((miss / rounds as f64 * 1e3, hit / rounds as f64 * 1e3))
}

/// Words that differ with `seed`, `count` of them (about two tokens each).
fn filler(seed: usize, count: usize) -> String {
    (0..count)
        .map(|i| format!("w{seed}x{}", (i * 7919 + seed * 31) % 10007))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Time to first token of a long prompt, alone, per target, and the time per token of the
/// decode that follows it at that context (see `--long-prompt`).
async fn long_prompt(
    client: &reqwest::Client,
    targets: &[Target],
    tokens: usize,
) -> anyhow::Result<()> {
    const ROUNDS: usize = 3;
    // Sized with the first target's /tokenize; every target gets text of the same shape.
    let per_word = count_tokens(client, &targets[0], &filler(1, 100))
        .await
        .map_or(2.0, |n| n as f64 / 100.0);
    let words = (tokens as f64 / per_word) as usize;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| (d.as_secs() % 100_000) as usize);
    let mut ttft = vec![Vec::new(); targets.len()];
    let mut itl = vec![Vec::new(); targets.len()];
    let mut prompt_tokens = vec![0; targets.len()];
    for round in 0..ROUNDS {
        for (i, t) in targets.iter().enumerate() {
            // A unique opening: no prefix-cache hits; the words themselves stay one size.
            let seed = round * targets.len() + i;
            let text = format!("{run}-{seed}: {}", filler(seed, words));
            // Several tokens, not one: with random weights the first greedy tokens may carry
            // no text (partial UTF-8 sequences; four once gave none from llama.cpp), and the
            // time to the first text is what is measured. 64 also time one stream's decode
            // at this context, where attention reads the whole prompt's keys and values.
            let r = stream_chat(client, t, &text, 64).await?;
            let per_token = r.itl.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
            eprintln!(
                "{}: prompt {} tokens, TTFT {:.1} ms, then {per_token:.2} ms a token",
                t.name,
                r.prompt_tokens,
                r.ttft.as_secs_f64() * 1e3
            );
            ttft[i].push(r.ttft.as_secs_f64() * 1e3);
            itl[i].push(per_token);
            prompt_tokens[i] = r.prompt_tokens;
        }
    }
    let medians: Vec<f64> = ttft.iter().map(|v| percentile(v, 0.5)).collect();
    let decode: Vec<f64> = itl.iter().map(|v| percentile(v, 0.5)).collect();
    println!(
        "| target | prompt tokens | TTFT median ms ({ROUNDS} rounds) | min / max ms | TTFT vs {0} \
         | then ms per token (median) | per token vs {0} |",
        targets[0].name
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, t) in targets.iter().enumerate() {
        let (min, max) = ttft[i]
            .iter()
            .fold((f64::MAX, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
        println!(
            "| {} | {} | {:.0} | {min:.0} / {max:.0} | {:.2}x | {:.2} | {:.2}x |",
            t.name,
            prompt_tokens[i],
            medians[i],
            medians[i] / medians[0],
            decode[i],
            decode[i] / decode[0]
        );
    }
    Ok(())
}

/// Latency of small requests per target, interleaved so every target sees the same load.
async fn overhead(targets: &[Target], n: usize) -> anyhow::Result<()> {
    // Keep-alive connections, as a gateway and its clients use them.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(n); targets.len()];
    for i in 0..n + 20 {
        for (t, out) in targets.iter().zip(times.iter_mut()) {
            let body = json!({
                "model": t.model,
                "messages": [{"role": "user", "content": format!("Ping {}", i % 7)}],
                "max_tokens": 1,
            });
            let start = Instant::now();
            let resp = client
                .post(format!("{}/v1/chat/completions", t.url))
                .json(&body)
                .send()
                .await?;
            let status = resp.status();
            resp.bytes().await?;
            if !status.is_success() {
                bail!("{} answered {status}", t.name);
            }
            // The first 20 rounds warm connections and caches.
            if i >= 20 {
                out.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    let base: Vec<f64> = {
        let v = &mut times[0].clone();
        vec![pct(v, 0.5), pct(v, 0.99)]
    };
    println!("\n| target | p50 ms | p99 ms | added p50 ms | added p99 ms |");
    println!("|---|---|---|---|---|");
    for (t, v) in targets.iter().zip(times.iter_mut()) {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        println!(
            "| {} | {p50:.2} | {p99:.2} | {:+.2} | {:+.2} |",
            t.name,
            p50 - base[0],
            p99 - base[1]
        );
    }
    println!("({n} requests per target, 1 output token each, interleaved)");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let targets: Vec<Target> = args
        .targets
        .iter()
        .map(|s| parse_target(s))
        .collect::<anyhow::Result<_>>()?;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &args.api_key {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .context("the API key is not a valid header value")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(1800))
        .pool_max_idle_per_host(0)
        .build()?;
    if let Some(n) = args.overhead {
        return overhead(&targets, n).await;
    }
    if let Some(n) = args.long_prompt {
        return long_prompt(&client, &targets, n).await;
    }
    let mut results: Vec<Vec<Level>> = Vec::new();
    for t in &targets {
        let mut levels = Vec::new();
        for &c in &args.concurrency {
            eprintln!(
                "{}: {c} streams x {} requests x {} tokens",
                t.name, args.requests_per_stream, args.max_tokens
            );
            let l = run_level(&client, t, c, args.requests_per_stream, args.max_tokens).await?;
            eprintln!(
                "  {:.1} tok/s, TTFT {:.1} ms, ITL {:.1} ms",
                l.tokens_per_s, l.ttft_ms, l.itl_ms
            );
            levels.push(l);
        }
        results.push(levels);
    }
    println!("| target | streams | output tok/s | mean TTFT ms | mean ITL ms | TTFT p50 / p99 ms | ITL p50 / p99 ms | prompt tokens | KV unused (tokens/seq) | tok/s vs {} |", targets[0].name);
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (t, levels) in targets.iter().zip(&results) {
        for (i, (l, &c)) in levels.iter().zip(&args.concurrency).enumerate() {
            let base = results[0][i].tokens_per_s;
            let kv = l.kv.map_or("-".to_string(), |k| {
                format!("{:.1}% ({:.0})", k.unused * 100.0, k.tokens_per_seq)
            });
            println!(
                "| {} | {c} | {:.1} | {:.1} | {:.1} | {:.0} / {:.0} | {:.1} / {:.1} | {:.0} | {kv} | {:.2}x |",
                t.name,
                l.tokens_per_s,
                l.ttft_ms,
                l.itl_ms,
                l.ttft_p50_ms,
                l.ttft_p99_ms,
                l.itl_p50_ms,
                l.itl_p99_ms,
                l.prompt_tokens,
                l.tokens_per_s / base
            );
        }
    }
    if let Some(p) = args.prefix_test {
        let (miss, hit) = prefix_test(&client, &targets[0], p).await?;
        println!(
            "\nprefix cache on {}: TTFT miss {miss:.1} ms, hit {hit:.1} ms, miss/hit {:.1}x",
            targets[0].name,
            miss / hit
        );
    }
    Ok(())
}
