use tokio::sync::mpsc::UnboundedSender;

use crate::model::{LogitRows, SeqChunk};
use crate::sampler::Sampler;
use crate::text::{IncrementalDetokenizer, ModelTokenizer, StopMatcher};
use crate::{
    ChoiceDelta, EngineError, FinishReason, GenerateEvent, GenerateRequest, GeneratedToken, Usage,
};

/// The choices of one request, answered on one channel.
pub struct Group {
    pub events: UnboundedSender<Result<GenerateEvent, EngineError>>,
    /// Choices still generating.
    pub remaining: usize,
    pub usage: Usage,
}

impl Group {
    pub fn new(
        request: &GenerateRequest,
        events: UnboundedSender<Result<GenerateEvent, EngineError>>,
    ) -> Self {
        Self {
            events,
            remaining: request.n,
            usage: Usage {
                prompt_tokens: request.prompt.len(),
                completion_tokens: 0,
            },
        }
    }
}

/// One choice being generated: its tokens, its KV blocks and its text state.
pub struct Sequence {
    pub group: u64,
    index: usize,
    /// Prompt followed by generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose K/V are in the cache.
    computed: usize,
    blocks: Vec<u32>,
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
        req: &GenerateRequest,
        blocks: Vec<u32>,
        tok: &ModelTokenizer,
    ) -> Self {
        let mut stop_ids = req.stop_token_ids.clone();
        if !req.ignore_eos {
            stop_ids.extend(tok.special().eos_ids.iter().copied());
        }
        Self {
            group,
            index,
            tokens: req.prompt.clone(),
            prompt_len: req.prompt.len(),
            computed: 0,
            blocks,
            sampler: Sampler::new(req.sampling.clone(), &req.prompt, index as u64),
            detok: IncrementalDetokenizer::new(req.skip_special_tokens),
            stop: StopMatcher::new(req.stop.clone()),
            max_tokens: req.max_tokens,
            min_tokens: req.min_tokens,
            stop_ids,
        }
    }

    /// The tokens not yet in the KV cache: the whole prompt first, then one token a step.
    pub fn next_chunk(&self) -> SeqChunk<'_> {
        SeqChunk {
            tokens: &self.tokens[self.computed..],
            start_pos: self.computed,
            block_table: &self.blocks,
            logits: LogitRows::Last,
        }
    }

    pub fn mark_computed(&mut self) {
        self.computed = self.tokens.len();
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

    pub fn into_blocks(self) -> Vec<u32> {
        self.blocks
    }

    pub fn take_blocks(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.blocks)
    }
}
