//! The output processor: from a choice's logits row, its next token (sampled under its
//! grammar), the text it adds (detokenized, stop strings matched) and the event its request
//! is sent. A panic here fails only that request.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use super::sequence::{RequestState, Sequence};
use crate::observe::StepStats;
use crate::text::ModelTokenizer;
use crate::{EngineError, FinishReason, GenerateEvent};

/// What a step's sampling left for the scheduler to settle: choices that finished, and
/// requests that failed.
#[derive(Default)]
pub struct StepOutcome {
    pub finished: Vec<(u64, usize, FinishReason)>,
    pub failed: HashSet<u64>,
}

/// Samples one choice's next token and sends it; a panic while sampling or detokenizing
/// fails only this request.
pub fn sample_into(
    seq: &mut Sequence,
    group: &mut RequestState,
    row: &mut [f32],
    tok: &ModelTokenizer,
    outcome: &mut StepOutcome,
    step: &mut StepStats,
) {
    let StepOutcome { finished, failed } = outcome;
    match catch_unwind(AssertUnwindSafe(|| seq.sample_next(row, tok))) {
        Ok(Err(e)) => {
            tracing::warn!(request = seq.group, error = %e, "failing the request");
            group.fail(e);
            failed.insert(seq.group);
        }
        Ok(Ok(delta)) => {
            group.count_token();
            seq.note_token(Instant::now(), &group.times, step);
            if let Some(reason) = delta.finish_reason {
                finished.push((seq.group, seq.index, reason));
            }
            group.send(Ok(GenerateEvent::Delta(delta)));
        }
        Err(panic) => {
            let message = panic_message(&panic);
            tracing::error!(request = seq.group, error = %message, "sampling failed; failing the request");
            group.fail(EngineError::Internal(message));
            failed.insert(seq.group);
        }
    }
}

/// The text of a caught panic.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    format!("panic in the engine: {detail}")
}
