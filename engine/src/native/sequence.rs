use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::kv::BlockHash;
use crate::model::{LogitRows, SeqChunk};
use crate::sampler::Sampler;
use crate::text::{IncrementalDetokenizer, ModelTokenizer, StopMatcher};
use crate::{
    ChoiceDelta, EngineError, FinishReason, GenerateEvent, GenerateRequest, GeneratedToken, Usage,
};

/// The choices of one request, answered on one channel.
pub struct Group {
    pub events: UnboundedSender<Result<GenerateEvent, EngineError>>,
    pub request: Arc<GenerateRequest>,
    /// Choices still generating.
    pub remaining: usize,
    pub usage: Usage,
    /// Whether choice 0 has been forked into the other n - 1 (after its prompt was computed).
    pub forked: bool,
    pub deadline: Option<Instant>,
}

impl Group {
    pub fn new(
        request: Arc<GenerateRequest>,
        events: UnboundedSender<Result<GenerateEvent, EngineError>>,
    ) -> Self {
        Self {
            events,
            remaining: request.n,
            usage: Usage {
                prompt_tokens: request.prompt.len(),
                completion_tokens: 0,
            },
            forked: request.n == 1,
            deadline: request.deadline,
            request,
        }
    }

    pub fn send(&self, event: Result<GenerateEvent, EngineError>) {
        // A closed channel means the client left; the next step frees the request.
        let _ = self.events.send(event);
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
    min_tokens: usize,
    /// Ids that end generation: the model's EOS (unless ignored) and stop_token_ids.
    stop_ids: Vec<u32>,
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
        let mut stop_ids = req.stop_token_ids.clone();
        if !req.ignore_eos {
            stop_ids.extend(tok.special().eos_ids.iter().copied());
        }
        Self {
            group,
            index,
            priority: req.priority,
            tenant: Arc::from(req.tenant.as_deref().unwrap_or("")),
            arrival,
            tokens: req.prompt.clone(),
            prompt_len: req.prompt.len(),
            computed: 0,
            blocks: Vec::new(),
            salt,
            hashed_blocks: 0,
            last_hash: salt,
            sampler: Sampler::new(req.sampling.clone(), &req.prompt, index as u64),
            detok: IncrementalDetokenizer::new(req.skip_special_tokens),
            stop: StopMatcher::new(req.stop.clone()),
            max_tokens: req.max_tokens,
            min_tokens: req.min_tokens,
            stop_ids,
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
        s
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

    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Samples the next token from `logits` and returns what the client should see.
    pub fn sample_next(&mut self, logits: &mut [f32], tok: &ModelTokenizer) -> ChoiceDelta {
        let banned: &[u32] = if self.generated() < self.min_tokens {
            &self.stop_ids
        } else {
            &[]
        };
        let sampled = self.sampler.sample(logits, banned);
        self.tokens.push(sampled.id);
        let mut text = String::new();
        let mut finish = None;
        if self.stop_ids.contains(&sampled.id) {
            // The stop token itself is never shown; flush what was held back.
            let tail = self.detok.flush(tok).unwrap_or_default();
            self.release(tail, &mut text, &mut finish);
            text.push_str(&self.stop.flush());
            finish = Some(FinishReason::Stop);
        } else {
            let piece = self.detok.push(tok, sampled.id).unwrap_or_default();
            self.release(piece, &mut text, &mut finish);
            if finish.is_none() && self.generated() >= self.max_tokens {
                let tail = self.detok.flush(tok).unwrap_or_default();
                self.release(tail, &mut text, &mut finish);
                if finish.is_none() {
                    text.push_str(&self.stop.flush());
                    finish = Some(FinishReason::Length);
                }
            }
        }
        ChoiceDelta {
            index: self.index,
            text,
            token: Some(GeneratedToken {
                id: sampled.id,
                logprob: sampled.logprob,
                top_logprobs: sampled.top_logprobs,
            }),
            finish_reason: finish,
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
