//! Test-only fault injection (cargo feature `fault-injection`, never in a release build):
//! a prompt holding the token id in `ROSETTA_FAULT_TOKEN` makes the forward pass panic, one
//! holding `ROSETTA_FATAL_TOKEN` kills the engine loop. End-to-end tests use them to prove
//! that one request's fault fails only that request, and that a dead engine is reported.

use std::sync::OnceLock;

use crate::model::SeqChunk;

fn token(var: &'static str, slot: &'static OnceLock<Option<u32>>) -> Option<u32> {
    *slot.get_or_init(|| std::env::var(var).ok().and_then(|v| v.parse().ok()))
}

/// Panics inside a forward pass when a chunk that starts a prompt holds the fault token
/// (generated tokens never count, so only the prompts a test writes fault).
pub fn check_step(chunks: &[SeqChunk<'_>]) {
    static FAULT: OnceLock<Option<u32>> = OnceLock::new();
    if let Some(t) = token("ROSETTA_FAULT_TOKEN", &FAULT) {
        if chunks
            .iter()
            .any(|c| c.start_pos == 0 && c.tokens.contains(&t))
        {
            panic!("injected fault: token {t} in a chunk");
        }
    }
}

/// Panics in the engine loop itself (outside any step) when a prompt holds the fatal token.
pub fn check_loop<'a>(mut prompts: impl Iterator<Item = &'a [u32]>) {
    static FATAL: OnceLock<Option<u32>> = OnceLock::new();
    if let Some(t) = token("ROSETTA_FATAL_TOKEN", &FATAL) {
        if prompts.any(|p| p.contains(&t)) {
            panic!("injected fatal fault: token {t} in a prompt");
        }
    }
}
