//! Helpers shared by the engine's integration tests.

use std::path::Path;
use std::sync::OnceLock;

use rosetta_engine::demo::{self, DemoSpec};
use rosetta_engine::{GenerateRequest, SamplingParams};

/// Generates the model once per test binary into a folder that lives as long as the process.
pub fn generated_model(
    slot: &'static OnceLock<tempfile::TempDir>,
    spec: DemoSpec,
) -> &'static Path {
    slot.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        demo::generate(&dir.path().join("m"), &spec, &mut |_, _| {}).expect("generate demo model");
        dir
    })
    .path()
    .join("m")
    .leak()
}

/// A greedy request that ignores EOS, so it yields exactly `max_tokens` tokens.
pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    let mut r = GenerateRequest::new(prompt, max_tokens);
    r.params_mut().sampling = SamplingParams {
        temperature: 0.0,
        ..Default::default()
    };
    r.params_mut().ignore_eos = true;
    r
}
