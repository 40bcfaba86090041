//! The config file's typed schema, its defaults and the checks types alone cannot make.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::access::{is_key_hash, AuditConfig, AuthConfig, Limits, PolicyConfig, TenantConfig};
use crate::licence::{catalogue, Licence};
use crate::routing::{is_language_code, PoolConfig, RemoteReplica, RouteConfig};
use crate::ValidationIssue;

/// A Rosetta config file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP server settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where generated demo models are kept. Default: the user's cache folder
    /// (`$XDG_CACHE_HOME/rosetta` or `~/.cache/rosetta`).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// The models this server serves; at least one.
    pub models: Vec<ModelConfig>,
    /// How requests authenticate.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Tenants: their keys, entitlements and limits.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Licences added to the shipped catalogue (config/licences.yaml); an entry with a
    /// shipped id replaces it.
    #[serde(default)]
    pub licences: Vec<Licence>,
    /// Access policies.
    #[serde(default)]
    pub policies: PolicyConfig,
    /// The audit log of access decisions.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Model aliases routed by language.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Replica choice, health checks and admission.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Size limits every request is checked against right after parsing, before any other
    /// work; a request over one gets 400 naming the parameter and the limit.
    #[serde(default)]
    pub request_limits: RequestLimits,
    /// Where tenants' rate limits are kept: in this process, or in Redis, shared by every
    /// gateway replica.
    #[serde(default)]
    pub ratelimit: RateLimitConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `local` (each process its own limits) or `redis` (requests and tokens per minute
    /// shared by every gateway using the same Redis).
    #[serde(default)]
    pub backend: RateLimitBackend,
    /// With `backend: redis`.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// How many gateway replicas share the limits: concurrency caps, and the local limits
    /// used while Redis is unreachable, are divided by it. Default 1.
    #[serde(default)]
    pub gateway_replicas: Option<u32>,
    /// While Redis is unreachable: `fallback` to local limits (divided by
    /// `gateway_replicas`) and keep serving, or `deny` with 503.
    #[serde(default)]
    pub on_store_error: OnStoreError,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitBackend {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    #[default]
    Fallback,
    Deny,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`, or `rediss://` for TLS.
    #[serde(default)]
    pub url: Option<String>,
    /// Or: the environment variable holding the URL (keeps the password out of the file).
    #[serde(default)]
    pub url_env: Option<String>,
    /// Prefix of every key Rosetta writes.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
    /// Milliseconds a limit check may wait for Redis before the request is judged locally
    /// (or refused, with `on_store_error: deny`).
    #[serde(default = "default_redis_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_redis_prefix() -> String {
    "rosetta".into()
}

fn default_redis_timeout_ms() -> u64 {
    250
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on.
    #[serde(default = "default_listen")]
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Browser origins allowed to call the API (CORS), e.g. `https://app.example.com`, or
    /// `*` for any. Default: none (no CORS headers; browsers refuse cross-origin calls).
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Seconds a stream may go unread before it is aborted and its KV blocks freed. While a
    /// client does not read, its sequences are paused (not scheduled, their KV kept).
    #[serde(default = "default_stream_stall_timeout")]
    pub stream_stall_timeout: f64,
    /// Seconds running answers get to finish after SIGTERM. Meanwhile `/ready` says 503,
    /// new generation requests get 503 and the listener still accepts; streams still open
    /// then end with an error event and `[DONE]`.
    #[serde(default = "default_shutdown_grace_seconds")]
    pub shutdown_grace_seconds: f64,
    /// Keys the per-tenant salts of prefix caches (this process's, and `cache_salt` sent to
    /// vLLM upstreams). Better given by the `ROSETTA_SECRET` environment variable, which
    /// wins. Default: random at each start, so caches are not shared across restarts or
    /// gateway replicas; give every replica the same secret to share them.
    #[serde(default)]
    pub secret: Option<String>,
    /// `serve --engine-only`: the bearer token gateways must send (also
    /// `ROSETTA_ENGINE_TOKEN`, which wins). Without one, an engine-only server listens on
    /// loopback only.
    #[serde(default)]
    pub engine_token: Option<String>,
    /// `GET /metrics` (Prometheus).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Log lines on stderr: `text` (human-readable) or `json` (one object per line, with the
    /// request id and trace id of the request it belongs to).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Seconds between checks of the config file (and `auth.keys_file`) for changes; a
    /// changed file is reloaded as on SIGHUP. 0: only on SIGHUP.
    #[serde(default = "default_config_poll_seconds")]
    pub config_poll_seconds: f64,
    /// OpenTelemetry traces over OTLP. The standard `OTEL_EXPORTER_OTLP_*`,
    /// `OTEL_SERVICE_NAME` and `OTEL_TRACES_SAMPLER*` variables win over these.
    #[serde(default)]
    pub tracing: TracingConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `GET /metrics`. It needs no API key (like vLLM's); keep the port private or
    /// turn it off.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Label gateway metrics with the tenant. Turn off with many tenants: every tenant adds
    /// a series per label combination.
    #[serde(default = "default_true")]
    pub tenant_label: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tenant_label: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Where to send spans, e.g. `http://otel-collector:4317` (gRPC) or
    /// `http://otel-collector:4318` (HTTP). Unset (and no `OTEL_EXPORTER_OTLP_ENDPOINT`):
    /// no traces, at no cost.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (`OTEL_EXPORTER_OTLP_PROTOCOL`). Default: grpc.
    #[serde(default)]
    pub protocol: Option<String>,
    /// `service.name` of the spans (`OTEL_SERVICE_NAME`). Default: rosetta.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Fraction of new traces sampled, 0 to 1 (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`
    /// with `OTEL_TRACES_SAMPLER_ARG`). A sampled incoming `traceparent` is always followed.
    /// Default: 1.
    #[serde(default)]
    pub sample_ratio: Option<f64>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            cors_origins: Vec::new(),
            stream_stall_timeout: default_stream_stall_timeout(),
            shutdown_grace_seconds: default_shutdown_grace_seconds(),
            secret: None,
            engine_token: None,
            metrics: MetricsConfig::default(),
            log_format: LogFormat::default(),
            config_poll_seconds: default_config_poll_seconds(),
            tracing: TracingConfig::default(),
        }
    }
}

fn default_config_poll_seconds() -> f64 {
    5.0
}

fn default_stream_stall_timeout() -> f64 {
    60.0
}

fn default_shutdown_grace_seconds() -> f64 {
    30.0
}

/// Size limits of one request. Defaults follow OpenAI's published limits where there is one
/// (4 stop sequences, 300 logit_bias entries, 2048 messages, 128 tools).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestLimits {
    /// Most choices in one request: prompts × n.
    #[serde(default = "default_max_choices")]
    pub max_choices: usize,
    /// Most entries in `stop_token_ids`.
    #[serde(default = "default_max_stop_token_ids")]
    pub max_stop_token_ids: usize,
    /// Most entries in `logit_bias`.
    #[serde(default = "default_max_logit_bias")]
    pub max_logit_bias: usize,
    /// Most stop strings.
    #[serde(default = "default_max_stop_sequences")]
    pub max_stop_sequences: usize,
    /// Most bytes in one stop string.
    #[serde(default = "default_max_stop_bytes")]
    pub max_stop_bytes: usize,
    /// Most chat messages.
    #[serde(default = "default_max_messages")]
    pub max_messages: usize,
    /// Most content parts over all messages.
    #[serde(default = "default_max_content_parts")]
    pub max_content_parts: usize,
    /// Most tools.
    #[serde(default = "default_max_tools")]
    pub max_tools: usize,
    /// Most tokens in a prompt given as token ids, and most ids sent to /detokenize.
    #[serde(default = "default_max_prompt_tokens")]
    pub max_prompt_tokens: usize,
    /// Most inputs in one embeddings request (OpenAI's limit).
    #[serde(default = "default_max_embedding_inputs")]
    pub max_embedding_inputs: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_choices: default_max_choices(),
            max_stop_token_ids: default_max_stop_token_ids(),
            max_logit_bias: default_max_logit_bias(),
            max_stop_sequences: default_max_stop_sequences(),
            max_stop_bytes: default_max_stop_bytes(),
            max_messages: default_max_messages(),
            max_content_parts: default_max_content_parts(),
            max_tools: default_max_tools(),
            max_prompt_tokens: default_max_prompt_tokens(),
            max_embedding_inputs: default_max_embedding_inputs(),
        }
    }
}

fn default_max_embedding_inputs() -> usize {
    2048
}

fn default_max_choices() -> usize {
    128
}
fn default_max_stop_token_ids() -> usize {
    256
}
fn default_max_logit_bias() -> usize {
    300
}
fn default_max_stop_sequences() -> usize {
    4
}
fn default_max_stop_bytes() -> usize {
    256
}
fn default_max_messages() -> usize {
    2048
}
fn default_max_content_parts() -> usize {
    4096
}
fn default_max_tools() -> usize {
    128
}
fn default_max_prompt_tokens() -> usize {
    131_072
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}

/// One served model. Exactly one of `path` (a Hugging Face model folder) or `demo`
/// (a generated random-weight model) says where its weights come from.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients use in the `model` field.
    pub id: String,
    /// A Hugging Face model folder: config.json, tokenizer.json, tokenizer_config.json,
    /// *.safetensors. Relative paths are resolved against the config file's folder.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A demo model generated on first start into the cache folder, then reused.
    #[serde(default)]
    pub demo: Option<DemoModel>,
    /// The model's licence id, for example `apache-2.0` or `llama3.1`.
    pub licence: String,
    /// Languages this model serves well, as ISO 639-1 codes (used by routing).
    #[serde(default)]
    pub languages: Vec<String>,
    /// Weight dtype in memory: `auto` is f32 on the CPU and bf16 on a GPU; `bf16` halves the
    /// bytes per token; `int8` (CPU) quarters them, quantized at load.
    #[serde(default)]
    pub dtype: Dtype,
    /// Longest prompt plus completion, in tokens. Default: the model's
    /// `max_position_embeddings`.
    #[serde(default)]
    pub max_context: Option<usize>,
    /// Engine settings for this model.
    #[serde(default)]
    pub engine: EngineSettings,
    /// Remote replicas: OpenAI-compatible upstreams serving this model. A model with
    /// neither `path` nor `demo` is served by its remote replicas only.
    #[serde(default)]
    pub remote: Vec<RemoteReplica>,
    /// How tool calls are read back out of the model's text (vLLM's `--tool-call-parser`
    /// names). `auto` picks by the chat template: `<tool_call>` → hermes, `[TOOL_CALLS]` →
    /// mistral, Llama 3.1's `"parameters"` JSON → llama3_json, else none.
    #[serde(default)]
    pub tool_parser: ToolParser,
    /// How thinking is split from the answer into `reasoning_content`. `auto`: qwen3 when
    /// the template knows `<think>`, deepseek_r1 when its generation prompt opens one.
    #[serde(default)]
    pub reasoning_parser: ReasoningParser,
    /// Which engine serves it in this process: Rosetta's own (`native`), or mistral.rs
    /// (`mistralrs`, in a rosetta built with `--features mistralrs`).
    #[serde(default)]
    pub backend: Backend,
    /// mistral.rs only: quantise the weights at load (its names: `Q4K`, `Q8_0`, `Q4_0`, ...).
    #[serde(default)]
    pub isq: Option<String>,
    /// mistral.rs only: serve this GGUF file (a name in `path`, which also holds the
    /// tokenizer and config.json the gateway reads; `rosetta model gguf` writes such a folder).
    #[serde(default)]
    pub gguf: Option<String>,
}

/// The engine a model runs on in this process.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Rosetta's engine: paged KV, continuous batching, prefix cache, CPU or CUDA.
    #[default]
    Native,
    /// mistral.rs 0.8.1 on the CPU: the Hugging Face folders it supports, with in-situ
    /// quantisation (`isq`).
    Mistralrs,
}

/// Tool-call formats, by template family.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ToolParser {
    #[default]
    Auto,
    /// Hermes / Qwen2.5 / Qwen3: `<tool_call>{"name", "arguments"}</tool_call>`.
    Hermes,
    /// Llama 3.1+: `{"name", "parameters"}` JSON, several separated by `;`.
    Llama3Json,
    /// Mistral: `[TOOL_CALLS] [{"name", "arguments"}, ...]`.
    Mistral,
    /// The model cannot call tools; `tools` with `tool_choice: auto` is a 400.
    None,
}

/// Thinking formats.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningParser {
    #[default]
    Auto,
    /// Thinking only when the output opens `<think>`; it ends at `</think>`.
    Qwen3,
    /// The prompt opened `<think>`: thinking from the first token to `</think>`.
    DeepseekR1,
    None,
}

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    Path(PathBuf),
    Demo(DemoModel),
}

impl ModelConfig {
    /// The model's source; `None` only for an unvalidated config naming neither.
    pub fn source(&self) -> Option<ModelSource> {
        match (&self.path, &self.demo) {
            (Some(p), _) => Some(ModelSource::Path(p.clone())),
            (None, Some(d)) => Some(ModelSource::Demo(d.clone())),
            (None, None) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    Auto,
    F32,
    Bf16,
    /// 8-bit weights with an f32 scale per output row, quantized at load from the model's
    /// f32/bf16 safetensors, times activations quantized to 24-bit integers per token (each
    /// off by at most a 16-millionth of its row's largest magnitude), summed exactly in
    /// integers with AVX-512 VNNI where the CPU has it (the native engine's CPU path).
    Int8,
    /// int8 weights as `int8`, times activations quantized to int8 per token, summed in
    /// int32 with AVX-512 VNNI where the CPU has it (CPU path).
    W8a8,
    /// bf16 weights times activations rounded to bf16 as they arrive, summed in f32 with
    /// AVX-512 BF16 (`vdpbf16ps`) where the CPU has it, as llama.cpp and vLLM compute bf16
    /// on a CPU (CPU path). `bf16` keeps f32 activations and is exact to f32 arithmetic on
    /// the bf16 weights; this trades the activations' low bits for speed.
    W16a16,
    /// 4-bit weights with an f32 scale per block of 32 weights (llama.cpp's Q4_0 rounding),
    /// quantized at load, times activations quantized to int8 per token as in `w8a8`, each
    /// block summed in int32 with AVX-512 VNNI where the CPU has it (CPU path): 0.625 bytes
    /// per weight, the fewest bytes read per token.
    W4a8,
}

/// A generated random-weight model in Hugging Face format.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct DemoModel {
    #[serde(default)]
    pub arch: Arch,
    #[serde(default)]
    pub size: Size,
    #[serde(default)]
    pub seed: u64,
}

/// Architectures the demo generator can write.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[default]
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    /// A sparse mixture of experts (top-2 of the experts per token), on the CPU path.
    Mixtral,
    /// Cohere's decoder (Aya, Command R): parallel block, LayerNorm, interleaved rotary; on
    /// the CPU path.
    Cohere,
    /// Cohere's second decoder (Command R7B, Command A): Cohere's block with three sliding-
    /// window layers with rotary to every global layer without positions; on the CPU path.
    Cohere2,
    /// BLOOM: ALiBi, fused per-head query_key_value, LayerNorms with bias, GELU; on the CPU
    /// path.
    Bloom,
    /// DeepSeek-V3's decoder (multi-head latent attention, routed and shared experts), served
    /// by the mistral.rs backend (`backend: mistralrs`), not natively.
    Deepseek,
    /// XLM-RoBERTa's encoder (multilingual-e5, bge-m3): an embedding model for
    /// `/v1/embeddings`, with sentence-transformers' pooling.
    #[serde(rename = "xlm-roberta")]
    XlmRoberta,
}

impl Arch {
    pub const ALL: [Arch; 10] = [
        Arch::Llama,
        Arch::Mistral,
        Arch::Qwen2,
        Arch::Qwen3,
        Arch::Mixtral,
        Arch::Cohere,
        Arch::Cohere2,
        Arch::Bloom,
        Arch::Deepseek,
        Arch::XlmRoberta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Mixtral => "mixtral",
            Arch::Cohere => "cohere",
            Arch::Cohere2 => "cohere2",
            Arch::Bloom => "bloom",
            Arch::Deepseek => "deepseek",
            Arch::XlmRoberta => "xlm-roberta",
        }
    }

    /// An encoder makes embeddings; every other architecture generates text.
    pub fn is_encoder(self) -> bool {
        self == Arch::XlmRoberta
    }
}

/// Demo model sizes: `tiny` for tests, `small` with SmolLM2-135M's exact shape for benchmarks.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Tiny,
    #[default]
    Small,
}

impl Size {
    pub fn name(self) -> &'static str {
        match self {
            Size::Tiny => "tiny",
            Size::Small => "small",
        }
    }
}

/// How the engine runs a model.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// Tokens per KV cache block.
    #[serde(default = "default_kv_block_size")]
    pub kv_block_size: usize,
    /// Memory for the KV cache, in bytes. It must hold at least one full context.
    /// Default: 1 GiB, unless `kv_cache_fraction` is given.
    #[serde(default)]
    pub kv_cache_bytes: Option<u64>,
    /// Instead of `kv_cache_bytes`: this fraction of the memory available at start.
    #[serde(default)]
    pub kv_cache_fraction: Option<f64>,
    /// Most sequences running at once.
    #[serde(default = "default_max_num_seqs")]
    pub max_num_seqs: usize,
    /// Most tokens per engine step (decodes plus prefill chunks); at least max_num_seqs.
    #[serde(default = "default_max_num_batched_tokens")]
    pub max_num_batched_tokens: usize,
    /// Split long prompts across steps so running decodes are not held up.
    #[serde(default = "default_true")]
    pub chunked_prefill: bool,
    /// Reuse the KV cache of earlier prompts' shared prefixes (never across tenants).
    #[serde(default = "default_true")]
    pub prefix_caching: bool,
    /// What the KV cache stores (CPU path): `f32` (exact), or `bf16`, which halves the
    /// cache's memory per token (twice the tokens in the same `kv_cache_bytes`) and the bytes
    /// attention reads, with K and V rounded to bf16 as they are written, or `fp8` (FP8 E4M3
    /// with no scale, as vLLM's `fp8`), a quarter of f32's. `auto` follows the weights: f32
    /// with f32 weights, bf16 with `dtype: bf16` or any of the CPU formats. On a GPU the cache
    /// has the weights' dtype; set `auto` there.
    #[serde(default)]
    pub kv_cache_dtype: KvCacheDtype,
    /// Touch the whole KV cache at load (CPU path), as llama.cpp and vLLM do: the system
    /// commits its memory then, so a cache the machine cannot hold fails at start rather
    /// than mid-request, and requests never wait on the first touch of a page (about 10%
    /// of throughput at 32 streams until a lazily touched cache has been used once). Off by
    /// default: the cache's memory is then taken as it is first used.
    #[serde(default)]
    pub kv_cache_prefault: bool,
    /// Where the model runs: `cpu` (default), `cuda` (GPU 0) or `cuda:N`. CUDA needs a
    /// `rosetta` built with `--features cuda`; there `kv_cache_fraction` is of the GPU's
    /// free memory and `dtype: auto` means bf16.
    #[serde(default)]
    #[schemars(with = "String", regex(pattern = r"^(cpu|cuda(:[0-9]+)?)$"))]
    pub device: EngineDevice,
}

/// What a KV cache element is stored as.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KvCacheDtype {
    #[default]
    Auto,
    F32,
    Bf16,
    /// FP8 E4M3, saturating at ±448 (vLLM's `fp8` and `fp8_e4m3`).
    #[serde(alias = "fp8_e4m3")]
    Fp8,
}

/// The device an engine runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum EngineDevice {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl TryFrom<String> for EngineDevice {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a device: use `cpu`, `cuda` or `cuda:N`");
        match s.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(bad),
        }
    }
}

impl From<EngineDevice> for String {
    fn from(d: EngineDevice) -> String {
        match d {
            EngineDevice::Cpu => "cpu".into(),
            EngineDevice::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

impl EngineSettings {
    /// The KV cache budget in bytes, given the memory available now.
    pub fn kv_cache_budget(&self, available_bytes: u64) -> u64 {
        match (self.kv_cache_bytes, self.kv_cache_fraction) {
            (Some(b), _) => b,
            (None, Some(f)) => (available_bytes as f64 * f) as u64,
            (None, None) => DEFAULT_KV_CACHE_BYTES,
        }
    }
}

const DEFAULT_KV_CACHE_BYTES: u64 = 1 << 30;

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            kv_block_size: default_kv_block_size(),
            kv_cache_bytes: None,
            kv_cache_fraction: None,
            max_num_seqs: default_max_num_seqs(),
            max_num_batched_tokens: default_max_num_batched_tokens(),
            chunked_prefill: true,
            prefix_caching: true,
            kv_cache_dtype: KvCacheDtype::Auto,
            kv_cache_prefault: false,
            device: EngineDevice::Cpu,
        }
    }
}

fn default_kv_block_size() -> usize {
    16
}

fn default_max_num_batched_tokens() -> usize {
    256
}

fn default_true() -> bool {
    true
}

fn default_max_num_seqs() -> usize {
    64
}

impl Config {
    /// Checks what types alone cannot: ids unique, exactly one source per model, sane numbers.
    pub fn validate(&self) -> Vec<ValidationIssue> {
        let mut issues = Vec::new();
        let mut issue =
            |key: String, message: String| issues.push(ValidationIssue { key, message });
        if self.models.is_empty() {
            issue("models".into(), "at least one model is required".into());
        }
        let mut seen = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            let key = |k: &str| format!("models[{i}].{k}");
            if m.id.is_empty()
                || !m
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
            {
                issue(
                    key("id"),
                    format!(
                        "`{}` is not a valid model id: use letters, digits and - _ . : /",
                        m.id
                    ),
                );
            }
            if !seen.insert(m.id.as_str()) {
                issue(key("id"), format!("model id `{}` is used twice", m.id));
            }
            match (&m.path, &m.demo) {
                (Some(_), Some(_)) => {
                    issue(key("path"), "give either `path` or `demo`, not both".into())
                }
                (None, None) if m.remote.is_empty() => issue(
                    key("path"),
                    "give `path` (a Hugging Face model folder), `demo`, or `remote` replicas"
                        .into(),
                ),
                _ => {}
            }
            if m.licence.trim().is_empty() {
                issue(key("licence"), "a licence id is required".into());
            }
            for lang in &m.languages {
                if !is_language_code(lang) {
                    issue(
                        key("languages"),
                        format!("`{lang}` is not an ISO 639 code like `en` or `swh`"),
                    );
                }
            }
            if m.max_context == Some(0) {
                issue(key("max_context"), "must be at least 1".into());
            }
            if m.gguf.is_some() && (m.backend != Backend::Mistralrs || m.path.is_none()) {
                issue(
                    key("gguf"),
                    "a GGUF file is served by `backend: mistralrs`, from the folder `path` names"
                        .into(),
                );
            }
            if m.gguf.is_some() && m.isq.is_some() {
                issue(
                    key("isq"),
                    "a GGUF file is already quantised; remove `isq`".into(),
                );
            }
            if m.isq.is_some() && m.backend != Backend::Mistralrs {
                issue(
                    key("isq"),
                    "in-situ quantisation is mistral.rs's: set `backend: mistralrs`".into(),
                );
            }
            if m.backend == Backend::Mistralrs && m.engine.device != EngineDevice::Cpu {
                issue(
                    key("engine.device"),
                    "the mistralrs backend runs on the CPU here".into(),
                );
            }
            let bs = m.engine.kv_block_size;
            if !(1..=256).contains(&bs) || !bs.is_power_of_two() {
                issue(
                    key("engine.kv_block_size"),
                    format!("{bs} is not a power of two between 1 and 256"),
                );
            }
            if m.engine.max_num_seqs == 0 {
                issue(key("engine.max_num_seqs"), "must be at least 1".into());
            }
            match (m.engine.kv_cache_bytes, m.engine.kv_cache_fraction) {
                (Some(_), Some(_)) => issue(
                    key("engine.kv_cache_fraction"),
                    "give kv_cache_bytes or kv_cache_fraction, not both".into(),
                ),
                (Some(0), _) => issue(key("engine.kv_cache_bytes"), "must be more than 0".into()),
                (_, Some(f)) if !(f > 0.0 && f <= 1.0) => issue(
                    key("engine.kv_cache_fraction"),
                    format!("{f} is not in (0, 1]"),
                ),
                _ => {}
            }
            if m.engine.max_num_batched_tokens < m.engine.max_num_seqs {
                issue(
                    key("engine.max_num_batched_tokens"),
                    format!(
                        "{} is less than max_num_seqs ({}): every running sequence needs a token each step",
                        m.engine.max_num_batched_tokens, m.engine.max_num_seqs
                    ),
                );
            }
        }
        if self.server.max_body_bytes == 0 {
            issue("server.max_body_bytes".into(), "must be more than 0".into());
        }
        for (key, secs) in [
            ("stream_stall_timeout", self.server.stream_stall_timeout),
            ("shutdown_grace_seconds", self.server.shutdown_grace_seconds),
        ] {
            if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
                issue(
                    format!("server.{key}"),
                    format!("{secs} is not a positive number of seconds"),
                );
            }
        }
        if self.request_limits.max_choices == 0 {
            issue(
                "request_limits.max_choices".into(),
                "must be at least 1".into(),
            );
        }
        issues.extend(self.validate_access());
        issues.extend(self.validate_routing());
        issues
    }

    /// Routes name real models; aliases are not model ids; remote URLs are http(s).
    fn validate_routing(&self) -> Vec<ValidationIssue> {
        let mut issues = Vec::new();
        let mut issue =
            |key: String, message: String| issues.push(ValidationIssue { key, message });
        let model_ids: HashSet<&str> = self.models.iter().map(|m| m.id.as_str()).collect();
        let mut aliases = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            if model_ids.contains(r.alias.as_str()) {
                issue(key("alias"), format!("`{}` is already a model id", r.alias));
            }
            if !aliases.insert(r.alias.as_str()) {
                issue(
                    key("alias"),
                    format!("alias `{}` is defined twice", r.alias),
                );
            }
            if r.rules.is_empty() && r.fallback.is_empty() {
                issue(key("rules"), "give at least one rule or fallback".into());
            }
            for (j, rule) in r.rules.iter().enumerate() {
                for lang in &rule.languages {
                    if !is_language_code(lang) {
                        issue(
                            key(&format!("rules[{j}].languages")),
                            format!("`{lang}` is not an ISO 639 code like `sw`"),
                        );
                    }
                }
                for m in &rule.models {
                    if !model_ids.contains(m.as_str()) {
                        issue(
                            key(&format!("rules[{j}].models")),
                            format!("no model `{m}`"),
                        );
                    }
                }
            }
            for m in &r.fallback {
                if !model_ids.contains(m.as_str()) {
                    issue(key("fallback"), format!("no model `{m}`"));
                }
            }
        }
        for (i, m) in self.models.iter().enumerate() {
            for (j, r) in m.remote.iter().enumerate() {
                let at = |k: &str| format!("models[{i}].remote[{j}].{k}");
                match (&r.dns, r.url.is_empty()) {
                    (Some(_), false) => issue(at("dns"), "give `url` or `dns`, not both".into()),
                    (Some(name), true) => {
                        if name.trim().is_empty() {
                            issue(at("dns"), "is empty".into());
                        }
                        if r.port.is_none() {
                            issue(at("port"), "`dns` needs the replicas' `port`".into());
                        }
                        if r.scheme != "http" && r.scheme != "https" {
                            issue(at("scheme"), format!("`{}` is not http or https", r.scheme));
                        }
                    }
                    (None, _)
                        if !(r.url.starts_with("http://") || r.url.starts_with("https://")) =>
                    {
                        issue(
                            at("url"),
                            format!("`{}` is not an http:// or https:// URL", r.url),
                        );
                    }
                    (None, _) => {}
                }
            }
        }
        if self.ratelimit.backend == RateLimitBackend::Redis {
            match &self.ratelimit.redis {
                None => issue(
                    "ratelimit.redis".into(),
                    "`backend: redis` needs `redis: { url: redis://host:6379 }`".into(),
                ),
                Some(r) if r.url.is_none() && r.url_env.is_none() => issue(
                    "ratelimit.redis.url".into(),
                    "give `url` or `url_env`".into(),
                ),
                Some(r) => {
                    if let Some(u) = &r.url {
                        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                            issue(
                                "ratelimit.redis.url".into(),
                                "expected redis://… or rediss://…".into(),
                            );
                        }
                    }
                }
            }
        }
        if self.ratelimit.gateway_replicas == Some(0) {
            issue(
                "ratelimit.gateway_replicas".into(),
                "must be at least 1".into(),
            );
        }
        for (i, s) in self.pool.dns_servers.iter().enumerate() {
            if s.parse::<std::net::SocketAddr>().is_err() {
                issue(
                    format!("pool.dns_servers[{i}]"),
                    format!("`{s}` is not an ip:port address"),
                );
            }
        }
        if self.pool.dns_refresh_ms == 0 {
            issue("pool.dns_refresh_ms".into(), "must be at least 1".into());
        }
        if self.pool.breaker_failures == 0 {
            issue("pool.breaker_failures".into(), "must be at least 1".into());
        }
        issues
    }

    /// The models a tenant allowlist entry stands for: a model id itself, or every model an
    /// alias can route to.
    pub fn expand_model_name(&self, name: &str) -> Vec<String> {
        match self.routes.iter().find(|r| r.alias == name) {
            Some(r) => r.models(),
            None => vec![name.to_string()],
        }
    }

    /// The licence catalogue this config sees: shipped entries plus its own.
    pub fn licence_catalogue(&self) -> std::collections::BTreeMap<String, Licence> {
        catalogue(&self.licences)
    }

    /// Licences, tenants, keys and limits.
    fn validate_access(&self) -> Vec<ValidationIssue> {
        let mut issues = Vec::new();
        let mut issue =
            |key: String, message: String| issues.push(ValidationIssue { key, message });
        let catalogue = self.licence_catalogue();
        let known_licences = || catalogue.keys().cloned().collect::<Vec<_>>().join(", ");
        let mut seen = HashSet::new();
        for (i, l) in self.licences.iter().enumerate() {
            if l.id.trim().is_empty() {
                issue(
                    format!("licences[{i}].id"),
                    "a licence id is required".into(),
                );
            }
            if !seen.insert(l.id.as_str()) {
                issue(
                    format!("licences[{i}].id"),
                    format!("licence `{}` is defined twice", l.id),
                );
            }
        }
        for (i, m) in self.models.iter().enumerate() {
            if !m.licence.trim().is_empty() && !catalogue.contains_key(&m.licence) {
                issue(
                    format!("models[{i}].licence"),
                    format!(
                        "unknown licence `{}`; known: {}; add it under `licences:`",
                        m.licence,
                        known_licences()
                    ),
                );
            }
        }
        let model_ids: HashSet<&str> = self.models.iter().map(|m| m.id.as_str()).collect();
        let mut tenant_ids = HashSet::new();
        let mut hashes = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let key = |k: &str| format!("tenants[{i}].{k}");
            if t.id.trim().is_empty() {
                issue(key("id"), "a tenant id is required".into());
            }
            if !tenant_ids.insert(t.id.as_str()) {
                issue(key("id"), format!("tenant `{}` is defined twice", t.id));
            }
            for (j, k) in t.keys.iter().enumerate() {
                if !is_key_hash(&k.hash) {
                    issue(
                        key(&format!("keys[{j}].hash")),
                        "expected `sha256:` and 64 hex digits, as `rosetta keys new` prints (never the key itself)".into(),
                    );
                } else if !hashes.insert(k.hash.as_str()) {
                    issue(
                        key(&format!("keys[{j}].hash")),
                        "this key is configured twice".into(),
                    );
                }
            }
            for l in &t.accepted_licences {
                if !catalogue.contains_key(l) {
                    issue(
                        key("accepted_licences"),
                        format!("unknown licence `{l}`; known: {}", known_licences()),
                    );
                }
            }
            if let Some(r) = &t.region {
                let ok = r.len() == 2 && r.chars().all(|c| c.is_ascii_alphabetic());
                if !ok {
                    issue(
                        key("region"),
                        format!("`{r}` is not an ISO 3166-1 alpha-2 country like `DE` or the region `EU`"),
                    );
                }
            }
            for m in t.models.iter().flatten() {
                let alias = self.routes.iter().any(|r| &r.alias == m);
                if !model_ids.contains(m.as_str()) && !alias {
                    issue(
                        key("models"),
                        format!("no model or alias `{m}` is configured"),
                    );
                }
            }
            check_limits(&t.limits, &model_ids, &key("limits"), &mut issue);
        }
        let keys = self.tenants.iter().map(|t| t.keys.len()).sum::<usize>();
        if !self.auth.allow_unauthenticated && keys == 0 {
            issue(
                "auth".into(),
                "no API keys are configured and `auth.allow_unauthenticated` is false, so no request could be served; add keys to a tenant (`rosetta keys new`) or allow unauthenticated use".into(),
            );
        }
        if let Some(t) = &self.auth.anonymous_tenant {
            if !tenant_ids.contains(t.as_str()) {
                issue(
                    "auth.anonymous_tenant".into(),
                    format!("no tenant `{t}` is defined"),
                );
            }
        }
        issues
    }
}

fn check_limits(
    limits: &Limits,
    model_ids: &HashSet<&str>,
    at: &str,
    issue: &mut impl FnMut(String, String),
) {
    let positive = |v: Option<u64>| v != Some(0);
    if !positive(limits.requests_per_minute.map(u64::from)) {
        issue(
            format!("{at}.requests_per_minute"),
            "must be at least 1".into(),
        );
    }
    if !positive(limits.tokens_per_minute) {
        issue(
            format!("{at}.tokens_per_minute"),
            "must be at least 1".into(),
        );
    }
    if !positive(limits.max_concurrent.map(u64::from)) {
        issue(format!("{at}.max_concurrent"), "must be at least 1".into());
    }
    for (model, l) in &limits.models {
        if !model_ids.contains(model.as_str()) {
            issue(
                format!("{at}.models"),
                format!("no model `{model}` is configured"),
            );
        }
        if !positive(l.requests_per_minute.map(u64::from)) {
            issue(
                format!("{at}.models.{model}.requests_per_minute"),
                "must be at least 1".into(),
            );
        }
        if !positive(l.tokens_per_minute) {
            issue(
                format!("{at}.models.{model}.tokens_per_minute"),
                "must be at least 1".into(),
            );
        }
    }
}
