//! One request (a group of choices) and each of its choices (a sequence) inside the engine.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;

use crate::kv::BlockHash;
use crate::model::{LogitRows, SeqChunk};
use crate::observe::{ChoiceEnd, ChoiceStats, RequestTimes, StepStats};
use crate::sampler::Sampler;
use crate::text::{IncrementalDetokenizer, ModelTokenizer, StopMatcher};
use crate::{
    ChoiceDelta, EngineError, FinishReason, GenerateEvent, GenerateRequest, GeneratedToken,
    GenerationParams, Usage,
};

type Event = Result<GenerateEvent, EngineError>;

/// The choices of one request, answered on one bounded channel.
pub struct RequestState {
    events: Sender<Event>,
    /// Events the channel had no room for; while any wait here, the group is paused.
    backlog: VecDeque<Event>,
    /// Since when the reader has been too slow for the group to run.
    pub stalled_since: Option<Instant>,
    /// Tokens generated so far, shared with the request's stream (for rate-limit accounting).
    generated: Arc<AtomicU64>,
    pub request: Arc<GenerateRequest>,
    /// Choices still generating.
    pub remaining: usize,
    pub usage: Usage,
    /// Whether choice 0 has been forked into the other n - 1 (after its prompt was computed).
    pub forked: bool,
    pub deadline: Option<Instant>,
    /// Shared with the request's stream.
    pub times: Arc<RequestTimes>,
}

impl RequestState {
    pub fn new(
        request: Arc<GenerateRequest>,
        events: Sender<Event>,
        generated: Arc<AtomicU64>,
        times: Arc<RequestTimes>,
    ) -> Self {
        Self {
            events,
            backlog: VecDeque::new(),
            stalled_since: None,
            generated,
            remaining: request.params.n,
            usage: Usage {
                prompt_tokens: request.prompt.len(),
                completion_tokens: 0,
            },
            forked: request.params.n == 1,
            deadline: request.deadline,
            request,
            times,
        }
    }

    /// Queues an event for the reader; never blocks. A closed channel means the client left
    /// (the next step frees the request).
    pub fn send(&mut self, event: Event) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(event);
            return;
        }
        if let Err(TrySendError::Full(event)) = self.events.try_send(event) {
            self.backlog.push_back(event);
        }
    }

    /// Counts one generated token, whether or not the client ever reads it.
    pub fn count_token(&mut self) {
        self.usage.completion_tokens += 1;
        self.generated.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves held-back events into the channel as far as it has room.
    pub fn flush(&mut self) {
        while let Some(event) = self.backlog.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.backlog.push_front(event);
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    self.backlog.clear();
                    return;
                }
            }
        }
    }

    /// Whether the reader keeps up: a step may emit a delta for each running choice, plus
    /// one slot always kept for a final error.
    pub fn can_run(&self) -> bool {
        self.backlog.is_empty() && self.events.capacity() > self.remaining
    }

    pub fn is_gone(&self) -> bool {
        self.events.is_closed()
    }

    /// Ends the request with an error, using the slot `can_run` keeps free.
    pub fn fail(&mut self, error: EngineError) {
        self.backlog.clear();
        let _ = self.events.try_send(Err(error));
    }
}

/// One choice being generated: its tokens, its KV blocks and its text state.
pub struct Sequence {
    pub group: u64,
    pub index: usize,
    pub priority: u8,
    pub tenant: Arc<str>,
    /// Arrival order; preempted sequences keep theirs, so they go back ahead of newer ones.
    pub arrival: u64,
    /// Prompt followed by generated tokens.
    pub tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose K/V are in the cache.
    pub computed: usize,
    pub blocks: Vec<u32>,
    /// Root of this sequence's prefix-cache hash chain (per tenant).
    pub salt: BlockHash,
    /// Full blocks registered in the prefix cache, and the hash of the last one.
    pub hashed_blocks: usize,
    pub last_hash: BlockHash,
    sampler: Sampler,
    detok: IncrementalDetokenizer,
    stop: StopMatcher,
    max_tokens: usize,
    /// Shared with every other choice and prompt of the request.
    params: Arc<GenerationParams>,
    /// When its request arrived, first ran, and when this choice's first and latest tokens
    /// came (for metrics).
    pub arrived: Instant,
    pub scheduled_at: Option<Instant>,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
    /// The model's end-of-sequence ids, unless the request ignores them.
    eos_ids: Arc<[u32]>,
    /// Structured output: this choice's place in the request's grammar.
    matcher: Option<llguidance::Matcher>,
}

impl super::waiting::Queued for Sequence {
    fn priority(&self) -> u8 {
        self.priority
    }

    fn tenant(&self) -> &Arc<str> {
        &self.tenant
    }

    fn age(&self) -> (u64, u64, usize) {
        (self.arrival, self.group, self.index)
    }
}

impl Sequence {
    pub fn new(
        group: u64,
        index: usize,
        arrival: u64,
        req: &GenerateRequest,
        salt: BlockHash,
        tok: &ModelTokenizer,
    ) -> Self {
        let params = req.params.clone();
        let eos_ids: Arc<[u32]> = if params.ignore_eos {
            Arc::from([])
        } else {
            tok.special().eos_ids.iter().copied().collect()
        };
        Self {
            group,
            index,
            priority: req.priority,
            tenant: req.tenant.clone().unwrap_or_else(|| Arc::from("")),
            arrival,
            tokens: req.prompt.clone(),
            prompt_len: req.prompt.len(),
            computed: 0,
            blocks: Vec::new(),
            salt,
            hashed_blocks: 0,
            last_hash: salt,
            sampler: Sampler::for_request(params.clone(), &req.prompt, index as u64),
            detok: IncrementalDetokenizer::new(params.skip_special_tokens),
            stop: StopMatcher::new(params.stop.clone()),
            max_tokens: req.max_tokens,
            params,
            eos_ids,
            arrived: Instant::now(),
            scheduled_at: None,
            first_token_at: None,
            last_token_at: None,
            matcher: req.constraint.as_ref().map(|c| c.matcher()),
        }
    }

    /// Another choice of the same request sharing this one's computed prompt (and its blocks,
    /// whose references the caller takes).
    pub fn fork(&self, index: usize, req: &GenerateRequest, tok: &ModelTokenizer) -> Self {
        let mut s = Self::new(self.group, index, self.arrival, req, self.salt, tok);
        s.computed = self.computed;
        s.blocks = self.blocks.clone();
        s.hashed_blocks = self.hashed_blocks;
        s.last_hash = self.last_hash;
        s.arrived = self.arrived;
        s.scheduled_at = self.scheduled_at;
        s
    }

    /// Notes a token sampled at `now` in the step's measurements: the request's first token
    /// (once, by its first choice) with its prompt, or the time since this choice's last one.
    pub fn note_token(&mut self, now: Instant, times: &RequestTimes, step: &mut StepStats) {
        step.generation_tokens += 1;
        match self.last_token_at {
            Some(last) => step.inter_token.push(now.duration_since(last)),
            None if self.index == 0 => {
                step.prompt_tokens += self.prompt_len;
                step.time_to_first_token
                    .push(now.duration_since(self.arrived));
                times.mark_first_token(now);
            }
            None => {}
        }
        self.first_token_at.get_or_insert(now);
        self.last_token_at = Some(now);
    }

    /// This choice's measurements as it ends at `now`.
    pub fn stats(&self, end: ChoiceEnd, now: Instant) -> ChoiceStats {
        let since = |a: Option<Instant>, b: Option<Instant>| Some(b?.duration_since(a?));
        ChoiceStats {
            end,
            prompt_tokens: self.prompt_len,
            generation_tokens: self.generated(),
            n: self.params.n,
            max_tokens: self.max_tokens,
            e2e: now.duration_since(self.arrived),
            queued: since(Some(self.arrived), self.scheduled_at),
            prefill: since(self.scheduled_at, self.first_token_at),
            decode: since(self.first_token_at, self.last_token_at),
            inference: since(self.scheduled_at, Some(now)),
        }
    }

    /// The request's prompt.
    #[cfg(feature = "fault-injection")]
    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    /// Tokens still to run through the model (the prompt, or the last sampled token).
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    pub fn chunk(&self, len: usize) -> SeqChunk<'_> {
        let end = self.computed + len;
        SeqChunk {
            tokens: &self.tokens[self.computed..end],
            start_pos: self.computed,
            block_table: &self.blocks,
            logits: if end == self.tokens.len() {
                LogitRows::Last
            } else {
                LogitRows::None
            },
        }
    }

    /// Back to the queue after preemption: the blocks were taken, everything is recomputed.
    pub fn reset_for_recompute(&mut self) {
        self.computed = 0;
        self.blocks.clear();
        self.hashed_blocks = 0;
        self.last_hash = self.salt;
    }

    /// EOS (unless ignored) or one of the request's stop token ids.
    fn is_stop_token(&self, id: u32) -> bool {
        self.eos_ids.contains(&id) || self.params.stop_token_ids.binary_search(&id).is_ok()
    }

    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Samples the next token from `logits` and returns what the client should see; fails
    /// only if the request's grammar cannot go on.
    pub fn sample_next(
        &mut self,
        logits: &mut [f32],
        tok: &ModelTokenizer,
    ) -> Result<ChoiceDelta, EngineError> {
        // Under a grammar, the grammar alone decides where the output may end.
        let banned: [&[u32]; 2] =
            if self.generated() < self.params.min_tokens && self.matcher.is_none() {
                [&self.params.stop_token_ids, &self.eos_ids]
            } else {
                [&[], &[]]
            };
        if let Some(m) = self.matcher.as_mut() {
            mask_logits(m, logits)?;
        }
        let sampled = self.sampler.sample(logits, &banned);
        self.tokens.push(sampled.id);
        let mut grammar_done = false;
        if let Some(m) = self.matcher.as_mut() {
            m.consume_token(sampled.id)
                .map_err(|e| EngineError::Internal(format!("structured output: {e}")))?;
            // Complete: nothing more may follow (EOS, if the model sampled it, is the end).
            grammar_done = m.is_stopped();
        }
        let mut text = String::new();
        let mut finish = None;
        if self.is_stop_token(sampled.id) {
            // The stop token itself is never shown; flush what was held back.
            self.end(tok, FinishReason::Stop, &mut text, &mut finish);
        } else {
            let piece = self.detok.push(tok, sampled.id).unwrap_or_default();
            self.release(piece, &mut text, &mut finish);
            if finish.is_none() && grammar_done {
                self.end(tok, FinishReason::Stop, &mut text, &mut finish);
            }
            if finish.is_none() && self.generated() >= self.max_tokens {
                self.end(tok, FinishReason::Length, &mut text, &mut finish);
            }
        }
        Ok(ChoiceDelta {
            index: self.index,
            text,
            token: Some(GeneratedToken {
                id: sampled.id,
                logprob: sampled.logprob,
                top_logprobs: sampled.top_logprobs,
            }),
            finish_reason: finish,
        })
    }

    /// Ends the choice for `reason`: what the detokenizer and the stop matcher still hold
    /// goes out, unless a stop string in it ends the choice first.
    fn end(
        &mut self,
        tok: &ModelTokenizer,
        reason: FinishReason,
        text: &mut String,
        finish: &mut Option<FinishReason>,
    ) {
        let tail = self.detok.flush(tok).unwrap_or_default();
        self.release(tail, text, finish);
        if finish.is_none() {
            text.push_str(&self.stop.flush());
            *finish = Some(reason);
        }
    }

    /// Passes decoded text through the stop matcher. A piece that cannot be decoded is
    /// dropped rather than failing the stream.
    fn release(&mut self, piece: String, text: &mut String, finish: &mut Option<FinishReason>) {
        let check = self.stop.push(&piece);
        text.push_str(&check.text);
        if check.stopped {
            *finish = Some(FinishReason::Stop);
        }
    }
}

/// Sets every token the grammar does not allow next to -inf.
fn mask_logits(m: &mut llguidance::Matcher, logits: &mut [f32]) -> Result<(), EngineError> {
    let mask = m
        .compute_mask()
        .map_err(|e| EngineError::Internal(format!("structured output: {e}")))?;
    let mut any = false;
    for (i, l) in logits.iter_mut().enumerate() {
        if mask.is_allowed(i as u32) {
            any = true;
        } else {
            *l = f32::NEG_INFINITY;
        }
    }
    if any {
        Ok(())
    } else {
        Err(EngineError::Internal(
            "structured output: the grammar allows no token here".into(),
        ))
    }
}
