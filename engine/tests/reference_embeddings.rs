//! The encoder's hidden states and pooled embeddings equal an independent dense
//! implementation's (tests/reference/encoder.rs, written from transformers' XLM-RoBERTa and
//! sentence-transformers' pooling), alone and in batches, within 1e-4 relative error; and an
//! input's embedding does not depend on the inputs batched with it.

mod reference;

use std::path::Path;

use rosetta_engine::demo::{self, Arch, DemoSpec, Size, StoredDtype};
use rosetta_engine::encoder::{EmbedRequest, Encoder, EncoderConfig, EncoderEngine, Pooling};
use rosetta_engine::model::WeightFormat;
use rosetta_engine::text::ModelTokenizer;
use rosetta_engine::Engine;

fn generate(dir: &Path, spec: &DemoSpec) {
    demo::generate(dir, spec, &mut |_, _| {}).expect("generate demo model");
}

/// max |a - b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn inputs(dir: &Path) -> Vec<Vec<u32>> {
    let tok = ModelTokenizer::from_dir(dir).expect("tokenizer");
    [
        "Habari ya asubuhi, rafiki yangu.",
        "今天天气很好。",
        "The quick brown fox jumps over the lazy dog, again and again, until the sun sets.",
        "x",
    ]
    .iter()
    .map(|t| tok.encode(t, true).expect("encode"))
    .collect()
}

fn check(spec: DemoSpec, dtype: WeightFormat) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    generate(&dir, &spec);
    let seqs = inputs(&dir);
    // XLM-RoBERTa's framing: `<s>` (0) first, `</s>` (2) last.
    assert!(
        seqs.iter().all(|s| s[0] == 0 && s[s.len() - 1] == 2),
        "{seqs:?}"
    );
    let reference = reference::encoder::ReferenceEncoder::load(&dir);
    let encoder = Encoder::load(&dir, dtype).expect("load encoder");
    let h = encoder.shape().hidden_size;
    let pooling = Pooling::from_dir(&dir).expect("pooling");
    let slices: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let (batched, spans) = encoder.forward(&slices);
    let mut worst = 0.0f32;
    for (seq, span) in seqs.iter().zip(&spans) {
        let want = reference.hidden_states(seq);
        let got = &batched[span.start * h..(span.start + span.len) * h];
        for (g, w) in got.chunks(h).zip(&want) {
            worst = worst.max(rel_err(g, w));
        }
        // Alone, bit for bit what it was in the batch.
        let (alone, _) = encoder.forward(&[seq]);
        assert_eq!(alone, got, "an input's states changed with its batch");
        let pooled = pooling.pool(got, h);
        let want_pooled = reference::encoder::pool(&want, "mean", true);
        worst = worst.max(rel_err(&pooled, &want_pooled));
    }
    eprintln!("{spec:?} {dtype:?}: worst relative error {worst:.2e}");
    assert!(worst < 1e-4, "relative error {worst} over 1e-4");
}

#[test]
fn xlm_roberta_matches_reference() {
    check(
        DemoSpec::new(Arch::XlmRoberta, Size::Tiny, 1),
        WeightFormat::F32,
    );
}

#[test]
fn xlm_roberta_bf16_sharded_matches_reference() {
    let spec = DemoSpec {
        dtype: StoredDtype::Bf16,
        shards: 2,
        ..DemoSpec::new(Arch::XlmRoberta, Size::Tiny, 2)
    };
    check(spec, WeightFormat::Bf16);
}

/// The engine batches requests together and splits long ones over several passes; each
/// answer equals the encoder's own result for its inputs.
#[tokio::test]
async fn the_engine_batches_and_answers_each_request() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    generate(&dir, &DemoSpec::new(Arch::XlmRoberta, Size::Tiny, 3));
    let seqs = inputs(&dir);
    let encoder = Encoder::load(&dir, WeightFormat::F32).unwrap();
    let pooling = Pooling::from_dir(&dir).unwrap();
    let h = encoder.shape().hidden_size;
    let expected: Vec<Vec<f32>> = seqs
        .iter()
        .map(|s| pooling.pool(&encoder.forward(&[s]).0, h))
        .collect();
    // A budget smaller than one request: its inputs go over several passes.
    let config = EncoderConfig {
        max_batch_tokens: 20,
        max_waiting: 8,
    };
    let engine = EncoderEngine::load(&dir, WeightFormat::F32, config).unwrap();
    let tickets: Vec<_> = (0..6)
        .map(|k| {
            let inputs: Vec<Vec<u32>> = (0..=k % seqs.len())
                .map(|i| seqs[(i + k) % seqs.len()].clone())
                .collect();
            let ticket = engine
                .embed(EmbedRequest {
                    inputs: inputs.clone(),
                })
                .unwrap();
            (k, inputs, ticket)
        })
        .collect();
    for (k, inputs, ticket) in tickets {
        let got = ticket.await.unwrap();
        assert_eq!(got.vectors.len(), inputs.len());
        assert_eq!(
            got.prompt_tokens,
            inputs.iter().map(Vec::len).sum::<usize>()
        );
        for (i, v) in got.vectors.iter().enumerate() {
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "not normalised: {norm}");
            assert_eq!(v, &expected[(i + k) % seqs.len()], "request {k} input {i}");
        }
    }
    // Wrong inputs are refused before they are queued.
    let long = vec![5u32; encoder.shape().max_tokens() + 1];
    assert!(engine.embed(EmbedRequest { inputs: vec![long] }).is_err());
    assert!(engine
        .embed(EmbedRequest {
            inputs: vec![vec![]]
        })
        .is_err());
    assert!(engine
        .embed(EmbedRequest {
            inputs: vec![vec![999_999]]
        })
        .is_err());
    // An encoder does not generate.
    assert!(engine
        .submit(rosetta_engine::GenerateRequest::new(vec![0, 5, 2], 4))
        .is_err());
}
