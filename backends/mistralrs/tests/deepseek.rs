//! DeepSeek-V3, which the native engine does not run, served by mistral.rs from a generated
//! folder in transformers' layout: its greedy answer equals the independent reference's
//! (engine/tests/reference/deepseek.rs, written from transformers' `modular_deepseek_v3.py`),
//! so the generator's layout and mistral.rs's reading of it agree with transformers.

#[path = "../../../engine/tests/reference/deepseek.rs"]
mod deepseek;

use rosetta_engine::demo::{self, Arch, DemoSpec, Size};
use rosetta_engine::{Engine, GenerateEvent, GenerateRequest};
use rosetta_mistralrs::{MistralRsEngine, MistralRsOptions};

#[test]
fn deepseek_v3_greedy_output_equals_the_reference() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let dir = tmp.path().join("deepseek");
    demo::generate(
        &dir,
        &DemoSpec::new(Arch::Deepseek, Size::Tiny, 3),
        &mut |_, _| {},
    )
    .expect("generate the model");
    // A prompt long enough for the rotary keys and the expert routing to matter.
    let prompt: Vec<u32> = (0..24u32).map(|i| (i * 53 + 17) % 2000 + 10).collect();
    let steps = 10;
    let want = deepseek::DeepseekReference::load(&dir).greedy(&prompt, steps);

    let engine = MistralRsEngine::load(MistralRsOptions {
        dir: dir.clone(),
        isq: None,
        gguf: None,
        bf16: false,
        max_running: 2,
        eos_ids: Vec::new(),
    })
    .expect("mistral.rs loads the model");
    let mut request = GenerateRequest::new(prompt, steps);
    request.params_mut().sampling.temperature = 0.0;
    request.params_mut().ignore_eos = true;
    let mut events = engine.submit(request).expect("submitted");
    let mut text = String::new();
    let mut done = false;
    while let Some(event) = events.blocking_recv() {
        match event.expect("mistral.rs answers") {
            GenerateEvent::Delta(d) => text += &d.text,
            GenerateEvent::Done(usage) => {
                assert_eq!(usage.completion_tokens, steps);
                done = true;
            }
        }
    }
    assert!(done, "the answer did not finish");
    let tokenizer =
        tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer.json");
    let expected = tokenizer.decode(&want, false).expect("decode");
    assert_eq!(text, expected, "reference tokens {want:?}");
}
