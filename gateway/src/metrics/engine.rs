//! The engine's metrics under vLLM's names, types, labels and buckets (`vllm:*`, checked
//! against `vllm/v1/metrics/loggers.py`), so vLLM dashboards, autoscalers and the Gateway API
//! Inference Extension's endpoint picker read a Rosetta engine as they read vLLM.

use std::sync::Arc;

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use rosetta_engine::{ChoiceEnd, ChoiceStats, EngineLoad, EngineObserver, FinishReason, StepStats};

use super::buckets;
use super::families::{counter, gauge, histogram};

/// vLLM's `engine` label: the data-parallel engine index; one engine per model here.
const ENGINE: &str = "0";
const LABELS: &[&str] = &["model_name", "engine"];
/// vLLM creates a series for every reason at start; so do we.
const REASONS: [ChoiceEnd; 4] = [
    ChoiceEnd::Finished(FinishReason::Stop),
    ChoiceEnd::Finished(FinishReason::Length),
    ChoiceEnd::Aborted,
    ChoiceEnd::Failed,
];

pub struct EngineFamilies {
    running: IntGaugeVec,
    waiting: IntGaugeVec,
    kv_usage: prometheus::GaugeVec,
    cache_info: IntGaugeVec,
    preemptions: IntCounterVec,
    prefix_queries: IntCounterVec,
    prefix_hits: IntCounterVec,
    prompt_tokens: IntCounterVec,
    generation_tokens: IntCounterVec,
    success: IntCounterVec,
    ttft: HistogramVec,
    itl: HistogramVec,
    tpot: HistogramVec,
    e2e: HistogramVec,
    queue: HistogramVec,
    inference: HistogramVec,
    prefill: HistogramVec,
    decode: HistogramVec,
    request_prompt_tokens: HistogramVec,
    request_generation_tokens: HistogramVec,
    iteration_tokens: HistogramVec,
    params_n: HistogramVec,
    params_max_tokens: HistogramVec,
}

impl EngineFamilies {
    /// Registers the families; token-count buckets run 1-2-5 up to `max_model_len`, as
    /// vLLM's do.
    pub fn register(r: &Registry, max_model_len: usize) -> Self {
        let tokens = buckets::one_two_five(max_model_len);
        let latency = || buckets::REQUEST_LATENCY.to_vec();
        let kv_usage = prometheus::GaugeVec::new(
            Opts::new(
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
            ),
            LABELS,
        )
        .expect("a valid metric");
        r.register(Box::new(kv_usage.clone()))
            .expect("registered once");
        let mut success_labels = LABELS.to_vec();
        success_labels.push("finished_reason");
        Self {
            running: gauge(
                r,
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                LABELS,
            ),
            waiting: gauge(
                r,
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                LABELS,
            ),
            kv_usage,
            cache_info: gauge(
                r,
                "vllm:cache_config_info",
                "Information of the LLMEngine CacheConfig",
                &[
                    "model_name",
                    "engine",
                    "block_size",
                    "num_gpu_blocks",
                    "enable_prefix_caching",
                ],
            ),
            preemptions: counter(
                r,
                "vllm:num_preemptions_total",
                "Cumulative number of preemption from the engine.",
                LABELS,
            ),
            prefix_queries: counter(
                r,
                "vllm:prefix_cache_queries_total",
                "Prefix cache queries, in terms of number of queried tokens.",
                LABELS,
            ),
            prefix_hits: counter(
                r,
                "vllm:prefix_cache_hits_total",
                "Prefix cache hits, in terms of number of cached tokens.",
                LABELS,
            ),
            prompt_tokens: counter(
                r,
                "vllm:prompt_tokens_total",
                "Number of prefill tokens processed.",
                LABELS,
            ),
            generation_tokens: counter(
                r,
                "vllm:generation_tokens_total",
                "Number of generation tokens processed.",
                LABELS,
            ),
            success: counter(
                r,
                "vllm:request_success_total",
                "Count of successfully processed requests.",
                &success_labels,
            ),
            ttft: histogram(
                r,
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                LABELS,
                buckets::TIME_TO_FIRST_TOKEN.to_vec(),
            ),
            itl: histogram(
                r,
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                LABELS,
                buckets::INTER_TOKEN_LATENCY.to_vec(),
            ),
            tpot: histogram(
                r,
                "vllm:request_time_per_output_token_seconds",
                "Histogram of time_per_output_token_seconds per request.",
                LABELS,
                buckets::INTER_TOKEN_LATENCY.to_vec(),
            ),
            e2e: histogram(
                r,
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                LABELS,
                latency(),
            ),
            queue: histogram(
                r,
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                LABELS,
                latency(),
            ),
            inference: histogram(
                r,
                "vllm:request_inference_time_seconds",
                "Histogram of time spent in RUNNING phase for request.",
                LABELS,
                latency(),
            ),
            prefill: histogram(
                r,
                "vllm:request_prefill_time_seconds",
                "Histogram of time spent in PREFILL phase for request.",
                LABELS,
                latency(),
            ),
            decode: histogram(
                r,
                "vllm:request_decode_time_seconds",
                "Histogram of time spent in DECODE phase for request.",
                LABELS,
                latency(),
            ),
            request_prompt_tokens: histogram(
                r,
                "vllm:request_prompt_tokens",
                "Number of prefill tokens processed.",
                LABELS,
                tokens.clone(),
            ),
            request_generation_tokens: histogram(
                r,
                "vllm:request_generation_tokens",
                "Number of generation tokens processed.",
                LABELS,
                tokens.clone(),
            ),
            iteration_tokens: histogram(
                r,
                "vllm:iteration_tokens_total",
                "Histogram of number of tokens per engine_step.",
                LABELS,
                buckets::ITERATION_TOKENS.to_vec(),
            ),
            params_n: histogram(
                r,
                "vllm:request_params_n",
                "Histogram of the n request parameter.",
                LABELS,
                buckets::REQUEST_PARAMS_N.to_vec(),
            ),
            params_max_tokens: histogram(
                r,
                "vllm:request_params_max_tokens",
                "Histogram of the max_tokens request parameter.",
                LABELS,
                tokens,
            ),
        }
    }

    /// The observer a model's engine reports to, every series of the model created now (so
    /// they read 0 before any traffic, as vLLM's do).
    pub fn observer(&self, model: &str) -> ModelObserver {
        let l = [model, ENGINE];
        for reason in REASONS {
            self.success
                .with_label_values(&[model, ENGINE, reason.as_str()]);
        }
        for c in [&self.preemptions, &self.prefix_queries, &self.prefix_hits] {
            c.with_label_values(&l);
        }
        self.running.with_label_values(&l);
        self.waiting.with_label_values(&l);
        self.kv_usage.with_label_values(&l);
        ModelObserver {
            model: model.to_string(),
            prompt_tokens: self.prompt_tokens.with_label_values(&l),
            generation_tokens: self.generation_tokens.with_label_values(&l),
            ttft: self.ttft.with_label_values(&l),
            itl: self.itl.with_label_values(&l),
            tpot: self.tpot.with_label_values(&l),
            e2e: self.e2e.with_label_values(&l),
            queue: self.queue.with_label_values(&l),
            inference: self.inference.with_label_values(&l),
            prefill: self.prefill.with_label_values(&l),
            decode: self.decode.with_label_values(&l),
            request_prompt_tokens: self.request_prompt_tokens.with_label_values(&l),
            request_generation_tokens: self.request_generation_tokens.with_label_values(&l),
            iteration_tokens: self.iteration_tokens.with_label_values(&l),
            params_n: self.params_n.with_label_values(&l),
            params_max_tokens: self.params_max_tokens.with_label_values(&l),
            success: REASONS.map(|r| self.success.with_label_values(&[model, ENGINE, r.as_str()])),
        }
    }

    /// Copies an engine's current load into the gauges and its running totals into the
    /// counters (read at scrape time; the engine keeps the totals).
    pub fn sync_load(&self, model: &str, load: &EngineLoad, prefix_caching: bool) {
        let l = [model, ENGINE];
        self.running
            .with_label_values(&l)
            .set(gauge_value(load.running));
        self.waiting
            .with_label_values(&l)
            .set(gauge_value(load.waiting));
        let usage = if load.kv_blocks_total == 0 {
            0.0
        } else {
            load.kv_blocks_used as f64 / load.kv_blocks_total as f64
        };
        self.kv_usage.with_label_values(&l).set(usage);
        self.cache_info
            .with_label_values(&[
                model,
                ENGINE,
                &load.kv_block_size.to_string(),
                &load.kv_blocks_total.to_string(),
                if prefix_caching { "True" } else { "False" },
            ])
            .set(1);
        set_total(&self.preemptions.with_label_values(&l), load.preemptions);
        set_total(
            &self.prefix_queries.with_label_values(&l),
            load.prefix_queried_tokens,
        );
        set_total(
            &self.prefix_hits.with_label_values(&l),
            load.prefix_hit_tokens,
        );
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Sets a counter to a running total kept elsewhere (only ever forward).
fn set_total(c: &IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

/// One model's engine series, resolved once so the engine thread only touches atomics.
pub struct ModelObserver {
    model: String,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    ttft: Histogram,
    itl: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    queue: Histogram,
    inference: Histogram,
    prefill: Histogram,
    decode: Histogram,
    request_prompt_tokens: Histogram,
    request_generation_tokens: Histogram,
    iteration_tokens: Histogram,
    params_n: Histogram,
    params_max_tokens: Histogram,
    success: [IntCounter; 4],
}

impl EngineObserver for ModelObserver {
    fn step(&self, step: &StepStats) {
        self.iteration_tokens.observe(step.scheduled_tokens as f64);
        self.prompt_tokens.inc_by(step.prompt_tokens as u64);
        self.generation_tokens.inc_by(step.generation_tokens as u64);
        for t in &step.time_to_first_token {
            self.ttft.observe(t.as_secs_f64());
        }
        for t in &step.inter_token {
            self.itl.observe(t.as_secs_f64());
        }
    }

    fn choice_ended(&self, c: &ChoiceStats) {
        if let Some(i) = REASONS.iter().position(|r| *r == c.end) {
            self.success[i].inc();
        }
        self.e2e.observe(c.e2e.as_secs_f64());
        let observe = |h: &Histogram, d: Option<std::time::Duration>| {
            if let Some(d) = d {
                h.observe(d.as_secs_f64());
            }
        };
        observe(&self.queue, c.queued);
        observe(&self.inference, c.inference);
        observe(&self.prefill, c.prefill);
        observe(&self.decode, c.decode);
        if let Some(decode) = c.decode.filter(|_| c.generation_tokens > 1) {
            self.tpot
                .observe(decode.as_secs_f64() / (c.generation_tokens - 1) as f64);
        }
        self.request_prompt_tokens.observe(c.prompt_tokens as f64);
        self.request_generation_tokens
            .observe(c.generation_tokens as f64);
        self.params_n.observe(c.n as f64);
        self.params_max_tokens.observe(c.max_tokens as f64);
    }
}

impl std::fmt::Debug for ModelObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModelObserver({})", self.model)
    }
}

/// The engine observer handle for a model.
pub fn handle(observer: ModelObserver) -> rosetta_engine::Observer {
    rosetta_engine::Observer(Arc::new(observer))
}
