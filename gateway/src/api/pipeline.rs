//! The request pipeline, the same for every generation endpoint: language (stated or
//! detected) → route (model or alias → candidate models) → policy (audited) → replica choice
//! → admission → engine → the endpoint's rendering. An endpoint gives it one validated,
//! protocol-neutral request (a [`Generation`]) and renders the events that come back; the
//! pipeline never calls into an endpoint module by name. A request moves on to the next
//! replica or candidate only before anything has been sent to the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::Value;

use rosetta_engine::encoder::{EmbedRequest, Embeddings};
use rosetta_engine::EngineError;

use super::answer::{admit, error_type, replies, submit_admitted, with_rate_headers};
use super::authentication::Caller;
use super::error::ApiError;
use super::params::Sampling;
use super::sse;
use super::upstream_body::UpstreamRequest;
use crate::access::AccessError;
use crate::assistant::OutputParser;
use crate::language::{self, iso, Language};
use crate::metrics::GenerationMeasure;
use crate::pool::remote::{ForwardError, Forwarded, OnBehalf, RemoteClient};
use crate::pool::upstream_reply;
use crate::pool::{InFlight, Replica, ReplicaKind};
use crate::registry::LocalModel;
use crate::reply::{ReplyError, ReplyEvent};
use crate::router::Target;
use crate::state::AppState;

/// What an endpoint renders, whichever replica answered: the model's id, the prompts as text
/// where the endpoint echoes them and the engine does not, and the replies of all its prompts
/// and choices.
pub struct Answer<'a> {
    pub state: &'a AppState,
    pub model: String,
    pub echoes: Vec<String>,
    pub replies: BoxStream<'static, ReplyEvent>,
}

/// The endpoint's rendering; what can fail there is the answer (a whole one that broke off).
pub type Rendered<'a> = Pin<Box<dyn Future<Output = Result<Response, ReplyError>> + Send + 'a>>;

/// One validated generation request, whatever its endpoint: what the pipeline needs to route,
/// admit and run it, and how the endpoint turns the answer into its wire format.
pub trait Generation: Send + Sync {
    /// The model or route alias asked for.
    fn model(&self) -> &str;
    /// The endpoint's path.
    fn path(&self) -> &'static str;
    /// `gen_ai.operation.name`: `chat` or `text_completion`.
    fn operation(&self) -> &'static str;
    /// `metadata.language`, as sent.
    fn stated_language(&self) -> Option<&str>;
    /// The text whose language routes the request (and whose start picks a home replica).
    fn language_text(&self) -> String;
    /// Sampling parameters, shared by every prompt and choice.
    fn sampling(&self) -> &Sampling;
    /// How many prompts it holds.
    fn prompt_count(&self) -> usize;
    /// Its prompts rendered and tokenized for `model`.
    fn prompts(&self, model: &LocalModel) -> Result<Vec<Vec<u32>>, ApiError>;
    /// How `model`'s text is read into thinking, content and tool calls, for each choice.
    fn output_parser(&self, model: &LocalModel) -> OutputParser;
    /// Whether its answer starts with its prompts (a completion's `echo`).
    fn echoes(&self) -> bool {
        false
    }
    /// What a remote replica is sent.
    fn upstream(&self) -> UpstreamRequest;
    /// The endpoint's answer: chunks of a stream, or one JSON body.
    fn render<'a>(&'a self, answer: Answer<'a>) -> Rendered<'a>;
}

/// One validated embeddings request: its inputs, and how their vectors are rendered.
pub trait Embedding: Send + Sync {
    /// The model or route alias asked for.
    fn model(&self) -> &str;
    /// The text whose language routes the request.
    fn language_text(&self) -> String;
    /// Its inputs tokenized for `model`, each checked against it.
    fn inputs(&self, model: &LocalModel) -> Result<Vec<Vec<u32>>, ApiError>;
    /// Checks what the request asks of the vectors (`dimensions`) against `model`.
    fn check(&self, model: &LocalModel) -> Result<(), ApiError>;
    /// The endpoint's body for the model's vectors.
    fn render(&self, model: &LocalModel, embeddings: Embeddings) -> Response;
    /// What a remote replica is sent.
    fn upstream(&self) -> UpstreamRequest;
}

/// What a validated request asks of a model: text, or embeddings.
#[derive(Clone, Copy)]
pub enum Work<'a> {
    Generate(&'a dyn Generation),
    Embed(&'a dyn Embedding),
}

impl Work<'_> {
    fn model(&self) -> &str {
        match self {
            Work::Generate(g) => g.model(),
            Work::Embed(e) => e.model(),
        }
    }

    fn upstream(&self) -> UpstreamRequest {
        match self {
            Work::Generate(g) => g.upstream(),
            Work::Embed(e) => e.upstream(),
        }
    }

    fn operation(&self) -> &'static str {
        match self {
            Work::Generate(g) => g.operation(),
            Work::Embed(_) => "embeddings",
        }
    }

    fn stated_language(&self) -> Option<&str> {
        match self {
            Work::Generate(g) => g.stated_language(),
            // OpenAI's embeddings request has no metadata; the header states it.
            Work::Embed(_) => None,
        }
    }

    fn language_text(&self) -> String {
        match self {
            Work::Generate(g) => g.language_text(),
            Work::Embed(e) => e.language_text(),
        }
    }

    /// Its prompts or inputs, tokenized for `model`.
    fn prompts(&self, model: &LocalModel) -> Result<Vec<Vec<u32>>, ApiError> {
        match self {
            Work::Generate(g) => g.prompts(model),
            Work::Embed(e) => e.inputs(model),
        }
    }

    /// The most tokens it may generate: reserved beside the prompt on a remote replica.
    fn most_generated(&self) -> u64 {
        match self {
            Work::Generate(g) => max_completion_tokens(*g),
            Work::Embed(_) => 0,
        }
    }
}

/// An engine's error for an attempt: another replica may help only if it was overloaded or
/// shutting down.
fn engine_failure(e: EngineError) -> AttemptError {
    if e.is_retryable() {
        AttemptError::Retry(e.into())
    } else {
        AttemptError::Final(e.into())
    }
}

/// A whole answer that broke off before anything reached the client: another replica may
/// serve it, unless the native engine says otherwise.
fn reply_failure(e: ReplyError) -> AttemptError {
    match e {
        ReplyError::Engine(e) => engine_failure(e),
        e => AttemptError::Retry(ApiError::unavailable(e.to_string(), 1)),
    }
}

/// How one attempt on a replica ended without an answer.
enum AttemptError {
    /// Nothing reached the client; another replica may serve.
    Retry(ApiError),
    /// The answer for the client (a 4xx, a rate limit).
    Final(ApiError),
}

/// The stated language: header `x-rosetta-language`, else `metadata.language`.
fn stated_language(headers: &HeaderMap, call: Work<'_>) -> Result<Option<Language>, ApiError> {
    let header = headers
        .get("x-rosetta-language")
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string());
    let field = call.stated_language().map(str::to_string);
    let Some(tag) = header.or(field) else {
        return Ok(None);
    };
    iso::parse_stated(&tag)
        .map(|code| Some(Language::stated(code)))
        .ok_or_else(|| {
            ApiError::invalid_param(
                "metadata.language",
                format!("`{tag}` is not a language tag like `sw`, `pt-BR` or `und`."),
            )
        })
}

/// Runs a validated request to its answer. `raw` is the request body as received (a remote
/// replica is sent its validated fields).
pub async fn run(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    call: Work<'_>,
    raw: &Bytes,
) -> Result<Response, ApiError> {
    // Counted until the answer is out (a stream counts on its own while it lasts).
    let _active = state.drain().start().ok_or_else(sse::shutting_down)?;
    let started = Instant::now();
    describe_span(call);
    let text = call.language_text();
    let language = match stated_language(headers, call)? {
        Some(l) => l,
        None => language::detect(&text),
    };
    let source = language_source(&language);
    let span = tracing::Span::current();
    crate::telemetry::attribute(&span, "rosetta.language", language.code.as_str());
    crate::telemetry::attribute(&span, "rosetta.language.source", source);
    let target = state
        .router()
        .resolve(call.model(), &language.code)
        .ok_or_else(|| ApiError::model_not_found(call.model()))?;
    // Labels only once the name is known to the config: never a client's arbitrary string.
    let route = match &target {
        Target::Alias { alias, .. } => alias.as_str(),
        Target::Model(_) => "",
    };
    caller.facts.update(|l| {
        l.model = call.model().to_string();
        l.route = route.to_string();
        l.language = language.code.clone();
    });
    if !route.is_empty() {
        crate::telemetry::attribute(&span, "rosetta.route", route);
    }
    // Span names stay few: only a model or alias of the config names one.
    crate::telemetry::rename_request_span(format!("{} {}", call.operation(), call.model()));
    let candidates = {
        let _policy = tracing::info_span!("policy").entered();
        allowed_candidates(state, caller, &target, &language)?
    };
    let ctx = Context {
        started,
        language: &language,
        text: &text,
    };
    let gateway = &state.metrics().gateway;
    let mut attempts = 0u32;
    let affinity = state.pool().affinity_key(&text);
    let mut last_error = None;
    let mut full = 0;
    let mut open = 0;
    for model_id in &candidates {
        // The tenant's own limits first: a request they would refuse gets its 429 before
        // any replica is chosen or any prompt is rendered (and before a busy pool's 503).
        state.access().precheck(&caller.principal, model_id).await?;
        let local = state.loaded_model(model_id);
        let (plan, skipped) =
            state
                .pool()
                .plan(model_id, affinity, local.as_ref().map(|m| m.engine.load()));
        full += skipped.queue_full;
        open += skipped.circuit_open;
        for replica in plan {
            if matches!(replica.kind, ReplicaKind::Local)
                && local.as_ref().is_some_and(|m| !m.engine.is_healthy())
            {
                last_error = Some(ApiError::unavailable(
                    format!("the engine of {model_id} on this server has failed"),
                    5,
                ));
                continue;
            }
            if !replica.breaker.allow() {
                // Half-open, and another request has the probe.
                open += 1;
                continue;
            }
            if attempts > 0 {
                gateway
                    .retries
                    .with_label_values(&[model_id.as_str()])
                    .inc();
            }
            attempts += 1;
            let hold = replica.start();
            let outcome = match &replica.kind {
                ReplicaKind::Local => match call {
                    Work::Generate(g) => run_local(state, caller, g, model_id, hold, &ctx).await,
                    Work::Embed(e) => embed_local(state, caller, e, model_id, hold, &ctx).await,
                },
                ReplicaKind::Remote(remote) => {
                    run_remote(
                        state,
                        caller,
                        &replica.name,
                        remote,
                        call,
                        raw,
                        model_id,
                        hold,
                        &ctx,
                    )
                    .await
                }
            };
            match outcome {
                Ok(resp) => {
                    if replica.remote().is_some() {
                        replica.breaker.success();
                    }
                    let fallback = candidates.first() != Some(model_id);
                    gateway
                        .routing
                        .with_label_values(&[
                            route,
                            model_id.as_str(),
                            if fallback { "true" } else { "false" },
                            source,
                        ])
                        .inc();
                    crate::telemetry::attribute(
                        &span,
                        "rosetta.replica",
                        replica_id(&replica).as_str(),
                    );
                    return Ok(decorate(resp, model_id, &language, &replica));
                }
                Err(AttemptError::Retry(e)) => {
                    gateway
                        .replica_errors
                        .with_label_values(&[replica_id(&replica).as_str(), failure_reason(&e)])
                        .inc();
                    tracing::warn!(model = %model_id, replica = %replica.name, error = %e.body.message, "replica could not serve; trying the next");
                    if replica.remote().is_some() {
                        replica.breaker.failure();
                    }
                    last_error = Some(e);
                }
                Err(AttemptError::Final(e)) => {
                    // A client error says nothing of the replica's health.
                    replica.breaker.release_probe();
                    return Err(e);
                }
            }
        }
    }
    let names = candidates.join(", ");
    Err(match last_error {
        // A misconfigured upstream stays a 502 (the operator's to fix), not a retryable 503.
        Some(e) if full == 0 && e.status == axum::http::StatusCode::BAD_GATEWAY => e,
        // Every replica failed: say so, with the last reason.
        Some(e) if full == 0 => ApiError::unavailable(
            format!(
                "No replica of {names} could serve the request: {}",
                e.body.message
            ),
            e.retry_after_secs.unwrap_or(1),
        ),
        _ => ApiError::unavailable(
            format!(
                "Every replica of {names} is busy or unavailable ({full} past the queue bound, {open} with an open circuit breaker); retry shortly."
            ),
            1,
        ),
    })
}

/// What every attempt of a request shares: when it arrived, and its language.
struct Context<'a> {
    started: Instant,
    language: &'a Language,
    /// The text the language was read from.
    text: &'a str,
}

impl Context<'_> {
    /// The measurements of the answer `model_id` gives the request.
    fn measure(&self, state: &AppState, call: Work<'_>, model_id: &str) -> GenerationMeasure {
        GenerationMeasure::start(
            state.metrics().clone(),
            self.started,
            call.operation(),
            call.model(),
            model_id,
            &self.language.code,
        )
    }
}

/// The request's span: its GenAI name and request attributes.
fn describe_span(work: Work<'_>) {
    let span = tracing::Span::current();
    crate::telemetry::attribute(&span, "gen_ai.operation.name", work.operation());
    crate::telemetry::attribute(
        &span,
        "gen_ai.provider.name",
        crate::metrics::genai::PROVIDER,
    );
    crate::telemetry::attribute(&span, "gen_ai.request.model", work.model());
    let Work::Generate(call) = work else { return };
    let sampling = call.sampling();
    let s = &sampling.params.sampling;
    if let Some(max) = sampling.max_tokens {
        crate::telemetry::attribute(&span, "gen_ai.request.max_tokens", max as u64);
    }
    crate::telemetry::attribute(
        &span,
        "gen_ai.request.temperature",
        f64::from(s.temperature),
    );
    crate::telemetry::attribute(&span, "gen_ai.request.top_p", f64::from(s.top_p));
    if let Some(seed) = s.seed {
        crate::telemetry::attribute(&span, "gen_ai.request.seed", seed);
    }
    if sampling.params.n != 1 {
        crate::telemetry::attribute(
            &span,
            "gen_ai.request.choice.count",
            sampling.params.n as u64,
        );
    }
    crate::telemetry::attribute(&span, "gen_ai.request.stream", sampling.stream);
}

/// `language_source` label: stated, detected, or und (detection found no language).
fn language_source(language: &Language) -> &'static str {
    match language.source {
        _ if language.code == language::UND => "und",
        language::Source::Stated => "stated",
        language::Source::Detected => "detected",
    }
}

/// A replica's id in metrics and traces: `<model>/local` or `<model>/remote-<i>`.
fn replica_id(replica: &Replica) -> String {
    match replica.kind {
        ReplicaKind::Local => format!("{}/local", replica.model),
        ReplicaKind::Remote(_) => replica.name.clone(),
    }
}

/// Why an attempt could not be served, as a label.
fn failure_reason(e: &ApiError) -> &'static str {
    match e.status.as_u16() {
        502 => "bad_gateway",
        503 => "unavailable",
        504 => "timeout",
        _ => "error",
    }
}

/// The candidates the tenant may use, in order; 403 with every reason if none.
fn allowed_candidates(
    state: &AppState,
    caller: &Caller,
    target: &Target,
    language: &Language,
) -> Result<Vec<String>, ApiError> {
    let mut allowed = Vec::new();
    let mut denials: Vec<AccessError> = Vec::new();
    for m in target.candidates() {
        match state
            .access()
            .authorize(&caller.principal, &m, caller.request_id())
        {
            Ok(()) => allowed.push(m),
            Err(e) => denials.push(e),
        }
    }
    if !allowed.is_empty() {
        return Ok(allowed);
    }
    match (target, denials.len()) {
        (Target::Model(_), 1) => Err(denials.remove(0).into()),
        (Target::Alias { alias, .. }, 0) => Err(ApiError::unavailable(
            format!(
                "The alias `{alias}` routes `{}` requests to no model.",
                language.code
            ),
            5,
        )),
        (Target::Alias { alias, .. }, _) | (Target::Model(alias), _) => {
            let reasons: Vec<String> = denials.iter().map(ToString::to_string).collect();
            Err(ApiError::forbidden(format!(
                "No model that `{alias}` routes `{}` requests to is allowed for this tenant. {}",
                language.code,
                reasons.join(" ")
            )))
        }
    }
}

/// The model `model_id` as this process serves it, if it does what `work` asks: a
/// generation model for text, an embedding model for vectors.
fn local_model(
    state: &AppState,
    model_id: &str,
    work: Work<'_>,
) -> Result<Arc<LocalModel>, AttemptError> {
    // Not loaded (yet) here: another replica may have it.
    let model = state
        .model(model_id)
        .map_err(|e| AttemptError::Retry(e.into()))?;
    let wrong = match work {
        Work::Generate(_) if model.embeds() => {
            format!("`{}` is an embedding model; use /v1/embeddings.", model.id)
        }
        Work::Embed(_) if !model.embeds() => format!(
            "`{}` generates text and makes no embeddings; use /v1/chat/completions or /v1/completions.",
            model.id
        ),
        _ => return Ok(model),
    };
    Err(AttemptError::Final(ApiError::invalid_param("model", wrong)))
}

/// On this process's engine (the tenant's limits prechecked by the caller): the model's
/// checks, tokenization, admission, the engine, then the endpoint's rendering.
async fn run_local(
    state: &AppState,
    caller: &Caller,
    call: &dyn Generation,
    model_id: &str,
    hold: InFlight,
    ctx: &Context<'_>,
) -> Result<Response, AttemptError> {
    let model = local_model(state, model_id, Work::Generate(call))?;
    tracing::debug!(model = %model.id, path = call.path(), "generation");
    let refused = |e: AccessError| AttemptError::Final(e.into());
    let sampling = call.sampling();
    sampling
        .check_vocabulary(&model)
        .map_err(AttemptError::Final)?;
    let constraint = sampling.constraint(&model).map_err(AttemptError::Final)?;
    let prompts = call.prompts(&model).map_err(AttemptError::Final)?;
    let mut requests = prompts
        .iter()
        .map(|p| {
            sampling.request(&model, p.clone()).map(|mut r| {
                r.constraint = constraint.clone();
                r
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(AttemptError::Final)?;
    let admission = admit(state, caller, &model, &mut requests)
        .instrument(tracing::info_span!("admission"))
        .await
        .map_err(refused)?;
    let rate = admission.state();
    count_language_cost(state, &model, ctx, &prompts);
    let measure = ctx.measure(state, Work::Generate(call), &model.id);
    let echoes = if call.echoes() {
        prompts
            .iter()
            .map(|p| model.tokenizer.decode(p, true))
            .collect::<Result<Vec<_>, _>>()
            .map_err(engine_failure)?
    } else {
        Vec::new()
    };
    let items = submit_admitted(&model, requests, admission, hold, measure, &caller.facts)
        .map_err(engine_failure)?;
    let parsers = (0..prompts.len() * sampling.params.n)
        .map(|_| call.output_parser(&model))
        .collect();
    let top = sampling.params.sampling.logprobs;
    let answer = Answer {
        state,
        model: model.id.clone(),
        echoes,
        replies: Box::pin(replies(items, model.clone(), parsers, top)),
    };
    let response = call.render(answer).await.map_err(reply_failure)?;
    Ok(with_rate_headers(response, rate))
}

/// An embeddings request on this process's encoder (the tenant's limits prechecked by the
/// caller): the model's checks, tokenization, admission of the inputs' tokens, the engine,
/// then the endpoint's body. The inputs' tokens are charged once queued, as a prompt is.
async fn embed_local(
    state: &AppState,
    caller: &Caller,
    call: &dyn Embedding,
    model_id: &str,
    hold: InFlight,
    ctx: &Context<'_>,
) -> Result<Response, AttemptError> {
    let model = local_model(state, model_id, Work::Embed(call))?;
    call.check(&model).map_err(AttemptError::Final)?;
    let inputs = call.inputs(&model).map_err(AttemptError::Final)?;
    let tokens: u64 = inputs.iter().map(|i| i.len() as u64).sum();
    let admission = state
        .access()
        .admit(&caller.principal, &model.id, tokens)
        .instrument(tracing::info_span!("admission"))
        .await
        .map_err(|e| AttemptError::Final(e.into()))?;
    let rate = admission.state();
    count_language_cost(state, &model, ctx, &inputs);
    let mut measure = ctx.measure(state, Work::Embed(call), &model.id);
    let ticket = model
        .engine
        .embed(EmbedRequest { inputs })
        .inspect_err(|_| measure.discard())
        .map_err(engine_failure)?;
    admission.record_usage(tokens);
    let result = ticket.await;
    drop(hold);
    match result {
        Ok(embeddings) => {
            measure.usage(embeddings.prompt_tokens as u64, 0);
            measure.finished("stop");
            Ok(with_rate_headers(call.render(&model, embeddings), rate))
        }
        Err(e) => {
            measure.failed(error_type(&e));
            Err(engine_failure(e))
        }
    }
}

/// Characters of a request's text tokenized again to measure its language's cost.
const LANGUAGE_COST_SAMPLE_CHARS: usize = 4096;

/// What the language costs on this model: prompt tokens, and the language text's characters
/// and tokens by the model's own tokenizer.
fn count_language_cost(
    state: &AppState,
    model: &LocalModel,
    ctx: &Context<'_>,
    prompts: &[Vec<u32>],
) {
    let g = &state.metrics().gateway;
    let labels = [ctx.language.code.as_str(), model.id.as_str()];
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    g.prompt_tokens
        .with_label_values(&labels)
        .inc_by(prompt_tokens as u64);
    // The messages' own text, without the separators they were joined with; a sample of
    // its start is enough for the ratio and keeps the extra tokenization small.
    let text = ctx.text.trim();
    let text = text
        .char_indices()
        .nth(LANGUAGE_COST_SAMPLE_CHARS)
        .map_or(text, |(end, _)| &text[..end]);
    if let Ok(tokens) = model.tokenizer.encode(text, false) {
        g.text_characters
            .with_label_values(&labels)
            .inc_by(text.chars().count() as u64);
        g.text_tokens
            .with_label_values(&labels)
            .inc_by(tokens.len() as u64);
    }
}

/// On a remote replica: admission of the estimated tokens, the upstream's answer read as
/// replies (settling the tenant's tokens on its usage), then the endpoint's rendering.
#[allow(clippy::too_many_arguments)]
async fn run_remote(
    state: &AppState,
    caller: &Caller,
    replica: &str,
    remote: &RemoteClient,
    call: Work<'_>,
    raw: &Bytes,
    model_id: &str,
    hold: InFlight,
    ctx: &Context<'_>,
) -> Result<Response, AttemptError> {
    let upstream = call.upstream();
    // The prompt's tokens by the model's own tokenizer where this process has the model;
    // else about a token per 3 bytes of the body. Usage settles the difference either way.
    let prompt_estimate = state
        .loaded_model(model_id)
        .and_then(|m| call.prompts(&m).ok())
        .map(|p| p.iter().map(|p| p.len() as u64).sum())
        .unwrap_or(raw.len() as u64 / 3);
    let admission = state
        .access()
        .admit(
            &caller.principal,
            model_id,
            prompt_estimate.saturating_add(call.most_generated()),
        )
        .await
        .map_err(|e| AttemptError::Final(e.into()))?;
    let rate = admission.state();
    let who = OnBehalf {
        tenant: caller.scheduling_tenant(),
        priority: caller.priority(),
        cache_salt: state.salt_key().tenant_salt(caller.scheduling_tenant()),
    };
    // The body as sent only gives the extension fields a replica's config lists.
    let answer = match remote.forward(&upstream, raw, &who).await {
        Ok(answer) => answer,
        Err(ForwardError::Unavailable(why)) => {
            return Err(AttemptError::Retry(ApiError::unavailable(
                format!("replica {replica} is unavailable: {why}"),
                1,
            )))
        }
        // The gateway's own credentials or access were refused: the operator's fault, not
        // the client's; another replica may be configured right.
        Err(ForwardError::Unauthorized(status)) => {
            return Err(AttemptError::Retry(ApiError::bad_gateway(format!(
                "replica {replica} refused the gateway ({status}); check its api_key"
            ))))
        }
        Err(ForwardError::Refused(e)) => return Err(AttemptError::Final(e.into())),
    };
    // Measured once the replica has answered (an attempt that fails is not a generation).
    let mut measure = ctx.measure(state, call, model_id);
    let generation = match call {
        Work::Generate(g) => g,
        Work::Embed(_) => {
            let Forwarded::Json(mut body) = answer else {
                return Err(AttemptError::Retry(ApiError::unavailable(
                    format!("replica {replica} streamed an embeddings answer"),
                    1,
                )));
            };
            body["model"] = Value::String(model_id.to_string());
            let usage = &body["usage"];
            let prompt = usage["prompt_tokens"].as_u64().unwrap_or(prompt_estimate);
            admission.record_usage(usage["total_tokens"].as_u64().unwrap_or(prompt));
            measure.usage(prompt, 0);
            measure.finished("stop");
            drop(hold);
            return Ok(with_rate_headers(axum::Json(body).into_response(), rate));
        }
    };
    let replies: BoxStream<'static, ReplyEvent> = match answer {
        Forwarded::Json(body) => Box::pin(futures::stream::iter(upstream_reply::whole(&body))),
        Forwarded::Stream(first, rest) => Box::pin(upstream_reply::stream(first, rest)),
    };
    let mut steps = 0u64;
    let replies = replies.map(move |event| {
        // Both live as long as the answer.
        let _ = (&hold, &admission);
        match &event {
            ReplyEvent::Step(step) => {
                if !step.pieces.is_empty() {
                    measure.token(Instant::now());
                    steps += 1;
                    admission.record_usage(prompt_estimate.saturating_add(steps));
                }
                if let Some(f) = step.finish {
                    measure.finished(f.as_str());
                }
            }
            ReplyEvent::Done(u) => {
                // An upstream that reports no usage is counted a token per step.
                let prompt = if u.prompt_tokens > 0 {
                    u.prompt_tokens as u64
                } else {
                    prompt_estimate
                };
                measure.usage(prompt, u.completion_tokens as u64);
                admission.record_usage(prompt.saturating_add(u.completion_tokens as u64));
            }
            ReplyEvent::Error(_) => measure.failed("replica"),
        }
        event
    });
    let answer = Answer {
        state,
        model: model_id.to_string(),
        echoes: Vec::new(),
        replies: Box::pin(replies),
    };
    let response = generation.render(answer).await.map_err(reply_failure)?;
    Ok(with_rate_headers(response, rate))
}

/// The most completion tokens it may ask for: the reservation for a remote replica.
fn max_completion_tokens(call: &dyn Generation) -> u64 {
    let sampling = call.sampling();
    // Unset, a chat completion may run to the context's end; reserve OpenAI's usual 1,024.
    let max = sampling.max_tokens.unwrap_or(1024) as u64;
    max.saturating_mul(sampling.params.n as u64)
        .saturating_mul(call.prompt_count() as u64)
}

/// Says which model, language and replica served.
fn decorate(mut resp: Response, model: &str, language: &Language, replica: &Replica) -> Response {
    let h = resp.headers_mut();
    for (name, value) in [
        ("x-rosetta-model", model),
        ("x-rosetta-language", language.code.as_str()),
        ("x-rosetta-replica", replica.name.as_str()),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    resp
}
