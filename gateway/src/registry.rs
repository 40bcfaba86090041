//! The models this process serves: loading them from config (generating demo models on first
//! use) and looking them up by id.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rosetta_config::{Backend, Dtype, EngineDevice, KvCacheDtype, ModelConfig, ModelSource};
use rosetta_engine::demo::{self, DemoSpec};
use rosetta_engine::encoder::{self, EncoderConfig, EncoderEngine};
use rosetta_engine::grammar::GrammarCompiler;
use rosetta_engine::kv::KvDtype;
use rosetta_engine::model::{ModelShape, Transformer, WeightFormat};
use rosetta_engine::text::{ChatTemplate, ModelTokenizer};
use rosetta_engine::{Engine, NativeEngine, NativeEngineConfig};

use crate::assistant::{self, ReasoningFormat, ToolFormat};

/// A model this process serves itself (not a remote replica's): its engine, tokenizer,
/// grammar compiler, tool and thinking formats, and what the config says of it.
pub struct LocalModel {
    pub id: String,
    pub created: u64,
    pub licence: String,
    pub languages: Vec<String>,
    pub tokenizer: Arc<ModelTokenizer>,
    pub engine: Arc<dyn Engine>,
    /// Longest prompt plus completion, in tokens.
    pub max_context: usize,
    /// Rows in the model's embedding table (may exceed the tokenizer's vocabulary).
    pub vocab_size: usize,
    /// Whether its engine reuses cached prompt prefixes (reported in `vllm:cache_config_info`).
    pub prefix_caching: bool,
    /// Compiles structured-output grammars for its tokenizer; `None` if that tokenizer
    /// cannot be prepared for them (such requests then get 400).
    pub grammar: Option<Arc<GrammarCompiler>>,
    /// How its tool calls are read out of its text; `None`: it cannot choose tools itself.
    pub tool_format: Option<ToolFormat>,
    /// How its thinking is split from its answer; `None`: it does not think.
    pub reasoning: Option<ReasoningFormat>,
    /// What its embeddings are, for an embedding model (which does not generate).
    pub embedding: Option<EmbeddingSpec>,
}

/// An embedding model's vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingSpec {
    /// Values per vector.
    pub dimensions: usize,
    /// Matryoshka-trained: `Some(vec![])` may be cut to any length, `Some(lengths)` to those.
    pub matryoshka: Option<Vec<usize>>,
    /// Its pooling normalises (a cut vector is then normalised again).
    pub normalized: bool,
}

impl LocalModel {
    /// Whether it makes embeddings rather than text.
    pub fn embeds(&self) -> bool {
        self.embedding.is_some()
    }
}

/// The default cache folder: `$XDG_CACHE_HOME/rosetta` or `~/.cache/rosetta`.
pub fn default_cache_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("rosetta")
}

/// Where a demo model lives in the cache; generated (with a progress bar) if it is not there.
pub fn ensure_demo_model(cache_dir: &Path, spec: &DemoSpec) -> anyhow::Result<PathBuf> {
    let dir = cache_dir.join("models").join(spec.slug());
    // config.json is written last into a temporary folder that is then renamed, so its
    // presence means the folder is complete.
    if dir.join("config.json").exists() {
        return Ok(dir);
    }
    tracing::info!(path = %dir.display(), "generating demo model (first start only)");
    let bar = ProgressBar::new(0).with_message(format!("generating demo model {}", spec.slug()));
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    demo::generate(&dir, spec, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("generating demo model into {}", dir.display()))?;
    bar.finish_with_message(format!("demo model ready in {}", dir.display()));
    Ok(dir)
}

/// Loads one configured model and starts its engine.
/// What every engine of this process shares, from the server's config.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// How long a stream may go unread before its request is aborted.
    pub stall_timeout: std::time::Duration,
    /// Keys tenants' prefix-cache salts.
    pub prefix_salt_key: Vec<u8>,
    /// Where each engine reports its measurements (vLLM's metrics).
    pub metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

pub fn load_model(
    cfg: &ModelConfig,
    cache_dir: &Path,
    options: &EngineOptions,
) -> anyhow::Result<LocalModel> {
    let dir = match cfg.source() {
        Some(ModelSource::Path(p)) => p,
        Some(ModelSource::Demo(d)) => {
            ensure_demo_model(cache_dir, &DemoSpec::new(d.arch, d.size, d.seed))?
        }
        None => anyhow::bail!("model `{}` names neither `path` nor `demo`", cfg.id),
    };
    let context = || format!("loading model `{}` from {}", cfg.id, dir.display());
    let config_path = dir.join("config.json");
    let config_text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))
        .with_context(context)?;
    let config_json: serde_json::Value = serde_json::from_str(&config_text)
        .with_context(|| format!("parsing {}", config_path.display()))
        .with_context(context)?;
    if encoder::is_encoder(&config_json) {
        return load_encoder(cfg, &dir).with_context(context);
    }
    let (trained_context, vocab_size) = match cfg.backend {
        Backend::Native => {
            let shape = ModelShape::from_json(&config_text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))
                .with_context(context)?;
            (shape.max_position_embeddings, shape.vocab_size)
        }
        // mistral.rs serves architectures the native engine does not (DeepSeek) and checks
        // their configs itself; the gateway needs only these two numbers.
        Backend::Mistralrs => {
            let number = |key: &str| config_json[key].as_u64().map(|v| v as usize);
            let vocab = number("vocab_size")
                .ok_or_else(|| anyhow::anyhow!("{} has no vocab_size", config_path.display()))
                .with_context(context)?;
            (number("max_position_embeddings").unwrap_or(4096), vocab)
        }
    };
    let max_context = cfg.max_context.unwrap_or(trained_context);
    if max_context > trained_context {
        tracing::warn!(
            model = %cfg.id,
            max_context,
            trained = trained_context,
            "max_context is longer than the model's max_position_embeddings"
        );
    }
    let tokenizer = Arc::new(ModelTokenizer::from_dir(&dir).with_context(context)?);
    let grammar = match GrammarCompiler::from_tokenizer_file(
        &dir.join("tokenizer.json"),
        &tokenizer
            .special()
            .eos_ids
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vocab_size,
    ) {
        Ok(g) => Some(Arc::new(g)),
        Err(e) => {
            tracing::warn!(model = %cfg.id, error = %e, "structured outputs are unavailable for this model");
            None
        }
    };
    let template = tokenizer.chat_template().map(ChatTemplate::source);
    let tool_format = assistant::tool_format(cfg.tool_parser, template);
    let reasoning = assistant::reasoning_format(cfg.reasoning_parser, template);
    let started = std::time::Instant::now();
    let observer = options
        .metrics
        .as_ref()
        .map(|m| m.engine_observer(&cfg.id, max_context))
        .unwrap_or_default();
    let engine_config = |kv_cache_bytes| NativeEngineConfig {
        block_size: cfg.engine.kv_block_size,
        kv_cache_bytes,
        max_num_seqs: cfg.engine.max_num_seqs,
        max_num_batched_tokens: cfg.engine.max_num_batched_tokens,
        chunked_prefill: cfg.engine.chunked_prefill,
        prefix_caching: cfg.engine.prefix_caching,
        max_context,
        stall_timeout: options.stall_timeout,
        prefix_salt_key: options.prefix_salt_key.clone(),
        observer: observer.clone(),
    };
    let engine: Arc<dyn Engine> = match cfg.backend {
        Backend::Native => start_native(&dir, cfg, max_context, tokenizer.clone(), engine_config)
            .with_context(context)?,
        Backend::Mistralrs => start_mistralrs(&dir, cfg, &tokenizer).with_context(context)?,
    };
    tracing::info!(model = %cfg.id, path = %dir.display(), max_context, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded");
    Ok(LocalModel {
        id: cfg.id.clone(),
        created: now_secs(),
        licence: cfg.licence.clone(),
        languages: cfg.languages.clone(),
        tokenizer,
        engine,
        max_context,
        vocab_size,
        prefix_caching: cfg.engine.prefix_caching,
        grammar,
        tool_format,
        reasoning,
        embedding: None,
    })
}

/// How the CPU path holds a model's weights.
fn cpu_format(dtype: Dtype) -> WeightFormat {
    match dtype {
        Dtype::Auto | Dtype::F32 => WeightFormat::F32,
        Dtype::Bf16 => WeightFormat::Bf16,
        Dtype::Int8 => WeightFormat::Int8,
        Dtype::W8a8 => WeightFormat::W8a8,
        Dtype::W16a16 => WeightFormat::W16a16,
        Dtype::W4a8 => WeightFormat::W4a8,
    }
}

/// Rosetta's own engine, on the CPU or a CUDA device.
fn start_native(
    dir: &Path,
    cfg: &ModelConfig,
    max_context: usize,
    tokenizer: Arc<ModelTokenizer>,
    engine_config: impl Fn(u64) -> NativeEngineConfig,
) -> Result<Arc<dyn Engine>, rosetta_engine::EngineError> {
    let engine = match cfg.engine.device {
        EngineDevice::Cpu => {
            // `auto` follows the weights, as on a GPU: exact with f32 weights, bf16 with
            // weights that are already bf16 or 8-bit (its drift is a hundredth of theirs).
            let kv = match (cfg.engine.kv_cache_dtype, cfg.dtype) {
                (KvCacheDtype::F32, _) | (KvCacheDtype::Auto, Dtype::Auto | Dtype::F32) => {
                    KvDtype::F32
                }
                (KvCacheDtype::Fp8, _) => KvDtype::Fp8,
                _ => KvDtype::Bf16,
            };
            let model = Transformer::load(dir, cpu_format(cfg.dtype), max_context)?
                .with_kv_dtype(kv)
                .with_kv_prefault(cfg.engine.kv_cache_prefault);
            let budget = cfg.engine.kv_cache_budget(available_memory());
            NativeEngine::start(model, tokenizer, engine_config(budget))
        }
        #[cfg(feature = "cuda")]
        EngineDevice::Cuda(ordinal) => {
            start_cuda(dir, ordinal, cfg, max_context, tokenizer, engine_config)
        }
        #[cfg(not(feature = "cuda"))]
        EngineDevice::Cuda(ordinal) => Err(rosetta_engine::EngineError::load(format!(
            "`engine.device: cuda:{ordinal}` needs a rosetta built with the CUDA path: \
             cargo build --release --features cuda"
        ))),
    }?;
    Ok(Arc::new(engine))
}

/// mistral.rs on the CPU (`backend: mistralrs`), sent the prompts this gateway renders.
#[cfg(feature = "mistralrs")]
fn start_mistralrs(
    dir: &Path,
    cfg: &ModelConfig,
    tokenizer: &ModelTokenizer,
) -> Result<Arc<dyn Engine>, rosetta_engine::EngineError> {
    use rosetta_mistralrs::{MistralRsEngine, MistralRsOptions};
    if matches!(
        cfg.dtype,
        Dtype::Int8 | Dtype::W8a8 | Dtype::W16a16 | Dtype::W4a8
    ) {
        return Err(rosetta_engine::EngineError::load(
            "`dtype: int8`, `w8a8`, `w16a16` and `w4a8` are the native engine's formats; \
             mistral.rs quantizes with `isq` (`Q8_0`, `Q4K`, ...) and computes `bf16` in bf16",
        ));
    }
    if cfg.engine.kv_cache_dtype != KvCacheDtype::Auto || cfg.engine.kv_cache_prefault {
        return Err(rosetta_engine::EngineError::load(
            "`engine.kv_cache_dtype` and `kv_cache_prefault` are the native engine's CPU \
             settings; remove them for mistral.rs",
        ));
    }
    let engine = MistralRsEngine::load(MistralRsOptions {
        dir: dir.to_path_buf(),
        isq: cfg.isq.clone(),
        gguf: cfg.gguf.clone(),
        bf16: cfg.dtype == Dtype::Bf16,
        max_running: cfg.engine.max_num_seqs.min(MISTRALRS_MAX_RUNNING),
        eos_ids: tokenizer.special().eos_ids.iter().copied().collect(),
    })?;
    Ok(Arc::new(engine))
}

/// mistral.rs 0.8.1's CPU batching panicked at 32 concurrent sequences: fewer run at once.
#[cfg(feature = "mistralrs")]
const MISTRALRS_MAX_RUNNING: usize = 16;

#[cfg(not(feature = "mistralrs"))]
fn start_mistralrs(
    _dir: &Path,
    _cfg: &ModelConfig,
    _tokenizer: &ModelTokenizer,
) -> Result<Arc<dyn Engine>, rosetta_engine::EngineError> {
    Err(rosetta_engine::EngineError::load(
        "`backend: mistralrs` needs a rosetta built with mistral.rs: \
         cargo build --release --features mistralrs",
    ))
}

/// An embedding model: its encoder on its own batching engine (CPU only).
fn load_encoder(cfg: &ModelConfig, dir: &Path) -> anyhow::Result<LocalModel> {
    if cfg.engine.device != EngineDevice::Cpu || cfg.backend != Backend::Native {
        anyhow::bail!(
            "embedding models run on the native engine's CPU path only; remove `engine.device` and `backend`"
        );
    }
    let started = std::time::Instant::now();
    let engine = EncoderEngine::load(
        dir,
        cpu_format(cfg.dtype),
        EncoderConfig {
            max_batch_tokens: cfg.engine.max_num_batched_tokens.max(1),
            max_waiting: cfg.engine.max_num_seqs.max(1),
        },
    )?;
    let tokenizer = Arc::new(ModelTokenizer::from_dir(dir)?);
    let shape = engine.shape().clone();
    let pooling = engine.pooling();
    tracing::info!(model = %cfg.id, path = %dir.display(), pooling = ?pooling.mode, normalized = pooling.normalize, elapsed_ms = started.elapsed().as_millis() as u64, "embedding model loaded");
    Ok(LocalModel {
        id: cfg.id.clone(),
        created: now_secs(),
        licence: cfg.licence.clone(),
        languages: cfg.languages.clone(),
        tokenizer,
        engine: Arc::new(engine),
        max_context: shape.max_tokens(),
        vocab_size: shape.vocab_size,
        prefix_caching: false,
        grammar: None,
        tool_format: None,
        reasoning: None,
        embedding: Some(EmbeddingSpec {
            dimensions: shape.hidden_size,
            matryoshka: shape.matryoshka.clone(),
            normalized: pooling.normalize,
        }),
    })
}

/// Loads the model onto a GPU and starts its engine (weights and KV in bf16 unless the
/// config says f32).
#[cfg(feature = "cuda")]
fn start_cuda(
    dir: &Path,
    ordinal: usize,
    cfg: &ModelConfig,
    max_context: usize,
    tokenizer: Arc<ModelTokenizer>,
    engine_config: impl Fn(u64) -> NativeEngineConfig,
) -> Result<NativeEngine, rosetta_engine::EngineError> {
    use rosetta_engine::model::cuda::CudaTransformer;
    use rosetta_engine::model::WeightDtype;
    if cfg.engine.kv_cache_dtype != KvCacheDtype::Auto || cfg.engine.kv_cache_prefault {
        return Err(rosetta_engine::EngineError::load(
            "on a GPU the KV cache has the weights' dtype and is allocated whole: remove \
             `engine.kv_cache_dtype` and `kv_cache_prefault`",
        ));
    }
    let dtype = match cfg.dtype {
        Dtype::Auto | Dtype::Bf16 => WeightDtype::BF16,
        Dtype::F32 => WeightDtype::F32,
        Dtype::Int8 | Dtype::W8a8 | Dtype::W16a16 | Dtype::W4a8 => {
            return Err(rosetta_engine::EngineError::load(
                "`dtype: int8`, `w8a8`, `w16a16` and `w4a8` are CPU weight formats; on a GPU \
                 use `bf16` or `f32`",
            ))
        }
    };
    let model = CudaTransformer::load(dir, ordinal, dtype, max_context)?;
    let budget = cfg.engine.kv_cache_budget(model.free_memory()?);
    NativeEngine::start(model, tokenizer, engine_config(budget))
}

/// Seconds since the Unix epoch (a model's `created`).
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Memory available to new allocations (Linux `MemAvailable`), for `kv_cache_fraction`.
fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(4 << 30, |kb| kb * 1024)
}
