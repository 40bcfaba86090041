//! Closed-loop streaming benchmark of mistral.rs (crate `mistralrs` 0.8.1) on CPU.
//!
//! Loads a local Hugging Face model folder in f32 (no ISQ, no paged attention),
//! then for each concurrency level runs N concurrent streams, each sending
//! `--requests-per-stream` chat requests back to back, greedy, with exactly
//! `--max-tokens` output tokens (EOS tokens are masked out with a logits
//! processor because mistral.rs has no `ignore_eos` option).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mistralrs::core::TokenSource;
use mistralrs::{
    ChatCompletionChunkResponse, CustomLogitsProcessor, ModelDType, RequestBuilder, Response,
    Tensor, TextMessageRole, TextModelBuilder,
};

#[derive(Parser, Debug)]
#[command(name = "mistralrs-bench")]
struct Args {
    /// Local Hugging Face model folder (config.json, *.safetensors, tokenizer.json, ...).
    model_dir: PathBuf,
    /// Comma-separated concurrency levels (number of concurrent streams).
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Output tokens per request.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sequential requests per stream.
    #[arg(long, default_value_t = 2)]
    requests_per_stream: usize,
    /// Engine max_num_seqs (mistral.rs default is 32); raised to the largest level if smaller.
    #[arg(long, default_value_t = 32)]
    max_num_seqs: usize,
    /// Skip the single warm-up request before the measured levels.
    #[arg(long)]
    no_warmup: bool,
    /// Let EOS end generation (by default EOS token ids are masked so every request yields max-tokens).
    #[arg(long)]
    allow_eos: bool,
    /// Disable mistral.rs's prefix cache (default keeps 16 sequences).
    #[arg(long)]
    no_prefix_cache: bool,
    /// Enable mistral.rs logging.
    #[arg(long)]
    log: bool,
}

/// Sets the logits of the given token ids to -inf so they can never be sampled.
struct BanTokens {
    ids: Vec<usize>,
}

impl CustomLogitsProcessor for BanTokens {
    fn apply(&self, logits: &Tensor, _context: &[u32]) -> mistralrs::Result<Tensor> {
        let dtype = logits.dtype();
        let mut v: Vec<f32> = logits.to_dtype(mistralrs::DType::F32)?.flatten_all()?.to_vec1()?;
        for &id in &self.ids {
            if id < v.len() {
                v[id] = f32::NEG_INFINITY;
            }
        }
        Tensor::from_vec(v, logits.shape(), logits.device())?.to_dtype(dtype)
    }
}

const ALTERNATE_EOS: &[&str] = &[
    "<|im_end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "<|end|>",
    "<|eot_id|>",
];

fn read_json(path: &Path) -> Option<serde_json::Value> {
    let s = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&s).ok()
}

fn push_ids(v: &serde_json::Value, out: &mut BTreeSet<u32>) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(id) = n.as_u64() {
                out.insert(id as u32);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| push_ids(x, out)),
        _ => {}
    }
}

/// Token ids that mistral.rs may treat as end-of-sequence for this model folder:
/// generation_config/config `eos_token_id`, tokenizer_config `eos_token`, and the
/// alternate EOS strings mistral.rs recognises (if they are tokens of this tokenizer).
fn eos_token_ids(dir: &Path) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for f in ["generation_config.json", "config.json"] {
        if let Some(j) = read_json(&dir.join(f)) {
            if let Some(v) = j.get("eos_token_id") {
                push_ids(v, &mut ids);
            }
        }
    }
    let mut names: Vec<String> = ALTERNATE_EOS.iter().map(|s| s.to_string()).collect();
    if let Some(tc) = read_json(&dir.join("tokenizer_config.json")) {
        match tc.get("eos_token") {
            Some(serde_json::Value::String(s)) => names.push(s.clone()),
            Some(serde_json::Value::Object(o)) => {
                if let Some(serde_json::Value::String(s)) = o.get("content") {
                    names.push(s.clone());
                }
            }
            _ => {}
        }
    }
    if let Some(tok) = read_json(&dir.join("tokenizer.json")) {
        if let Some(added) = tok.get("added_tokens").and_then(|a| a.as_array()) {
            for t in added {
                if let (Some(id), Some(c)) = (
                    t.get("id").and_then(|x| x.as_u64()),
                    t.get("content").and_then(|x| x.as_str()),
                ) {
                    if names.iter().any(|n| n == c) {
                        ids.insert(id as u32);
                    }
                }
            }
        }
        if let Some(vocab) = tok.pointer("/model/vocab").and_then(|v| v.as_object()) {
            for n in &names {
                if let Some(id) = vocab.get(n).and_then(|x| x.as_u64()) {
                    ids.insert(id as u32);
                }
            }
        }
    }
    ids
}

const WORDS: &[&str] = &[
    "river", "mountain", "engine", "garden", "silver", "window", "quiet", "storm", "library",
    "candle", "harbor", "orange", "thunder", "pencil", "meadow", "rocket", "winter", "bridge",
    "forest", "coffee", "planet", "castle", "marble", "feather", "lantern", "ocean", "violin",
    "desert", "copper", "island", "shadow", "morning", "journey", "puzzle", "signal", "valley",
    "crystal", "market", "compass", "breeze", "circuit", "glacier", "harvest", "lighthouse",
    "mirror", "notebook", "orchard", "pepper", "quartz", "saddle", "tunnel", "umbrella",
];

/// A ~32-word user message, different for every (level, stream, request).
fn prompt(level: usize, stream: usize, req: usize) -> String {
    let mut x: u64 = (level as u64) * 1_000_003 + (stream as u64) * 10_007 + req as u64 + 1;
    let mut words = Vec::with_capacity(26);
    for _ in 0..26 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        words.push(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    format!(
        "Request {level}-{stream}-{req}: write a long story using these words: {}.",
        words.join(" ")
    )
}

struct ReqStats {
    ttft: Duration,
    /// false when the stream closed without a final chunk (no usage): mistral.rs 0.8.1 drops
    /// the final chunk when the last token decodes to an incomplete UTF-8 sequence.
    complete: bool,
    /// (last token time - first token time) / (tokens - 1), if tokens > 1.
    itl: Option<Duration>,
    tokens: usize,
    finish_reason: Option<String>,
}

async fn one_request(
    model: &mistralrs::Model,
    text: String,
    max_tokens: usize,
    ban: Option<Arc<BanTokens>>,
) -> Result<ReqStats> {
    let mut req = RequestBuilder::new()
        .add_message(TextMessageRole::User, text)
        .set_sampler_temperature(0.0)
        .set_sampler_topk(1)
        .set_sampler_max_len(max_tokens);
    if let Some(b) = ban.clone() {
        req = req.add_logits_processor(b);
    }
    let start = Instant::now();
    let eos_masked = ban.is_some();
    let mut stream = model.stream_chat_request(req).await?;
    let mut first: Option<Instant> = None;
    let mut last = start;
    let mut chunks = 0usize;
    let mut usage_tokens: Option<usize> = None;
    let mut finish_reason = None;
    while let Some(resp) = stream.next().await {
        match resp {
            Response::Chunk(ChatCompletionChunkResponse { choices, usage, .. }) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                chunks += 1;
                if let Some(u) = usage {
                    usage_tokens = Some(u.completion_tokens);
                }
                if let Some(fr) = choices.first().and_then(|c| c.finish_reason.clone()) {
                    finish_reason = Some(fr);
                    break;
                }
            }
            Response::Done(r) => {
                usage_tokens = Some(r.usage.completion_tokens);
                break;
            }
            Response::ModelError(e, _) => bail!("model error: {e}"),
            Response::InternalError(e) => bail!("internal error: {e}"),
            Response::ValidationError(e) => bail!("validation error: {e}"),
            _ => {}
        }
    }
    let first = first.context("no tokens streamed")?;
    let complete = usage_tokens.is_some();
    // Without usage the only possible stop reason (EOS masked, no stop strings, no tools)
    // is max_len, so the request produced max_tokens tokens; with EOS allowed fall back
    // to the number of chunks (a lower bound).
    let tokens = usage_tokens.unwrap_or(if eos_masked { max_tokens } else { chunks });
    let itl = (tokens > 1).then(|| (last - first) / (tokens as u32 - 1));
    Ok(ReqStats {
        ttft: first - start,
        itl,
        tokens,
        complete,
        finish_reason,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Never touch the network: the model id is a local folder path.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let dir = std::fs::canonicalize(&args.model_dir)
        .with_context(|| format!("model dir {}", args.model_dir.display()))?;
    let max_level = args.concurrency.iter().copied().max().unwrap_or(1);
    let max_num_seqs = args.max_num_seqs.max(max_level);

    let ban = if args.allow_eos {
        None
    } else {
        let ids = eos_token_ids(&dir);
        eprintln!("masking EOS token ids {ids:?}");
        Some(Arc::new(BanTokens {
            ids: ids.into_iter().map(|x| x as usize).collect(),
        }))
    };

    let t0 = Instant::now();
    let mut builder = TextModelBuilder::new(dir.to_string_lossy())
        .with_token_source(TokenSource::None)
        .with_dtype(ModelDType::F32)
        .with_force_cpu()
        .with_max_num_seqs(max_num_seqs);
    if args.no_prefix_cache {
        builder = builder.with_prefix_cache_n(None);
    }
    if args.log {
        builder = builder.with_logging();
    }
    let model = Arc::new(builder.build().await?);
    eprintln!(
        "loaded {} in {:.1}s (f32, CPU, no ISQ, no paged attention, max_num_seqs={max_num_seqs})",
        dir.display(),
        t0.elapsed().as_secs_f64()
    );

    if !args.no_warmup {
        let s = one_request(&model, prompt(0, 0, 0), 8, ban.clone()).await?;
        eprintln!("warm-up: {} tokens, ttft {:?}", s.tokens, s.ttft);
    }

    let mut rows = Vec::new();
    for &level in &args.concurrency {
        let start = Instant::now();
        let mut handles = Vec::new();
        for s in 0..level {
            let model = model.clone();
            let ban = ban.clone();
            let rps = args.requests_per_stream;
            let max_tokens = args.max_tokens;
            handles.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for r in 0..rps {
                    out.push(one_request(&model, prompt(level, s, r), max_tokens, ban.clone()).await?);
                }
                anyhow::Ok(out)
            }));
        }
        let mut stats = Vec::new();
        for h in handles {
            stats.extend(h.await??);
        }
        let wall = start.elapsed().as_secs_f64();
        let tokens: usize = stats.iter().map(|s| s.tokens).sum();
        let ttft = stats.iter().map(|s| s.ttft.as_secs_f64()).sum::<f64>() / stats.len() as f64;
        let itls: Vec<f64> = stats.iter().filter_map(|s| s.itl).map(|d| d.as_secs_f64()).collect();
        let itl = itls.iter().sum::<f64>() / itls.len().max(1) as f64;
        let short = stats.iter().filter(|s| s.tokens != args.max_tokens).count();
        let no_final = stats.iter().filter(|s| !s.complete).count();
        let mut reasons: Vec<String> = stats
            .iter()
            .map(|s| s.finish_reason.clone().unwrap_or_else(|| "-".into()))
            .collect();
        reasons.sort();
        reasons.dedup();
        eprintln!(
            "level {level}: {} requests, {tokens} output tokens, {wall:.2}s wall, {short} requests != max-tokens, {no_final} streams closed without final chunk/usage, finish reasons {reasons:?}",
            stats.len()
        );
        eprintln!(
            "level {level}: {:.1} tok/s, mean TTFT {:.1} ms, mean ITL {:.2} ms",
            tokens as f64 / wall,
            ttft * 1e3,
            itl * 1e3
        );
        rows.push((level, tokens as f64 / wall, ttft * 1e3, itl * 1e3, tokens, stats.len(), wall));
    }

    println!("| streams | output tok/s | mean TTFT ms | mean ITL ms | output tokens | requests | wall s |");
    println!("|--:|--:|--:|--:|--:|--:|--:|");
    for (level, tps, ttft, itl, tokens, n, wall) in rows {
        println!("| {level} | {tps:.1} | {ttft:.1} | {itl:.2} | {tokens} | {n} | {wall:.2} |");
    }
    Ok(())
}
