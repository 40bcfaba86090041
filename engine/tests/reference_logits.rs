//! The engine's logits equal an independent dense implementation's (tests/reference) on
//! generated models of every supported architecture, within 1e-4 relative error.

mod forward;
mod reference;

use std::path::Path;

use rosetta_engine::demo::{self, Arch, DemoSpec, Size, StoredDtype};
use rosetta_engine::kv::{KvLayout, KvPool};
use rosetta_engine::model::{LogitRows, SeqChunk, Transformer, WeightFormat};

fn generate(dir: &Path, spec: &DemoSpec) {
    demo::generate(dir, spec, &mut |_, _| {}).expect("generate demo model");
}

/// max |a - b| / max |b| over a row: error relative to the logits' scale.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn engine_logits(
    dir: &Path,
    tokens: &[u32],
    block_size: usize,
    chunk: usize,
    dtype: WeightFormat,
) -> Vec<Vec<f32>> {
    let model = Transformer::load(dir, dtype, 4096).expect("load model");
    forward::logits(&model, tokens, block_size, chunk)
}

fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 11) % 2000 + 5).collect()
}

fn check(spec: DemoSpec) -> f32 {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    generate(&dir, &spec);
    let tokens = prompt(40);
    let want = reference::ReferenceModel::load(&dir).logits(&tokens);
    let mut worst = 0.0f32;
    // Whole prompt at once, and token by token (decode path), with different block sizes.
    // bf16 storage widens to f32 for arithmetic, so it matches too (exactly, on bf16 files).
    let dtype = if spec.dtype == StoredDtype::Bf16 {
        WeightFormat::Bf16
    } else {
        WeightFormat::F32
    };
    for (bs, chunk, dtype) in [
        (16, 40, WeightFormat::F32),
        (4, 1, WeightFormat::F32),
        (1, 7, dtype),
    ] {
        let got = engine_logits(&dir, &tokens, bs, chunk, dtype);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            worst = worst.max(rel_err(g, w));
        }
    }
    eprintln!("{spec:?}: worst relative error {worst:.2e}");
    assert!(worst < 1e-4, "{spec:?}: relative error {worst} over 1e-4");
    worst
}

#[test]
fn llama_with_llama3_rope_scaling_matches_reference() {
    check(DemoSpec::new(Arch::Llama, Size::Tiny, 1));
}

#[test]
fn mistral_with_sliding_window_matches_reference() {
    check(DemoSpec::new(Arch::Mistral, Size::Tiny, 2));
}

#[test]
fn qwen2_with_qkv_bias_matches_reference() {
    check(DemoSpec::new(Arch::Qwen2, Size::Tiny, 3));
}

#[test]
fn qwen3_with_qk_norm_matches_reference() {
    check(DemoSpec::new(Arch::Qwen3, Size::Tiny, 4));
}

#[test]
fn mixtral_with_top2_of_4_experts_matches_reference() {
    check(DemoSpec::new(Arch::Mixtral, Size::Tiny, 6));
}

#[test]
fn cohere_with_parallel_block_and_interleaved_rope_matches_reference() {
    check(DemoSpec::new(Arch::Cohere, Size::Tiny, 7));
}

/// Three sliding layers with a 12-token window and rotary, then a global layer without any
/// positional encoding, over a 40-token prompt.
#[test]
fn cohere2_with_sliding_rotary_and_global_nope_layers_matches_reference() {
    check(DemoSpec::new(Arch::Cohere2, Size::Tiny, 7));
}

#[test]
fn bloom_with_alibi_and_fused_per_head_qkv_matches_reference() {
    check(DemoSpec::new(Arch::Bloom, Size::Tiny, 12));
}

#[test]
fn bf16_sharded_checkpoint_matches_reference() {
    let spec = DemoSpec {
        dtype: StoredDtype::Bf16,
        shards: 3,
        ..DemoSpec::new(Arch::Qwen2, Size::Tiny, 5)
    };
    check(spec);
}

#[test]
fn same_seed_gives_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = DemoSpec::new(Arch::Qwen3, Size::Tiny, 9);
    generate(&tmp.path().join("a"), &spec);
    generate(&tmp.path().join("b"), &spec);
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors",
    ] {
        let a = std::fs::read(tmp.path().join("a").join(f)).unwrap();
        let b = std::fs::read(tmp.path().join("b").join(f)).unwrap();
        assert!(a == b, "{f} differs between two runs with the same seed");
    }
    let other = DemoSpec::new(Arch::Qwen3, Size::Tiny, 10);
    generate(&tmp.path().join("c"), &other);
    assert_ne!(
        std::fs::read(tmp.path().join("a/model.safetensors")).unwrap(),
        std::fs::read(tmp.path().join("c/model.safetensors")).unwrap()
    );
}

#[test]
fn missing_tensor_and_unknown_architecture_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    generate(&dir, &DemoSpec::new(Arch::Llama, Size::Tiny, 1));
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    let err = Transformer::load(&dir, WeightFormat::F32, 64)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("model.layers.2."), "{err}");
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"model_type\": \"llama\"", "\"model_type\": \"gpt_neox\""),
    )
    .unwrap();
    let err = Transformer::load(&dir, WeightFormat::F32, 64)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("unsupported architecture `gpt_neox`"), "{err}");
}

/// Batched and unbatched decoding agree bit for bit only if a row's logits do not depend on
/// which other rows share the forward pass; the scheduler's equality guarantees rest on this.
#[test]
fn logits_do_not_depend_on_batch_composition() {
    batch_invariant(DemoSpec::new(Arch::Llama, Size::Tiny, 8));
}

/// The same for a mixture of experts: each expert runs on the rows routed to it, however
/// many there are.
#[test]
fn mixtral_logits_do_not_depend_on_batch_composition() {
    batch_invariant(DemoSpec::new(Arch::Mixtral, Size::Tiny, 8));
}

/// And for Cohere's parallel block.
#[test]
fn cohere_logits_do_not_depend_on_batch_composition() {
    batch_invariant(DemoSpec::new(Arch::Cohere, Size::Tiny, 8));
}

/// And for Cohere2's mix of windowed and global layers.
#[test]
fn cohere2_logits_do_not_depend_on_batch_composition() {
    batch_invariant(DemoSpec::new(Arch::Cohere2, Size::Tiny, 8));
}

/// And for BLOOM's ALiBi attention.
#[test]
fn bloom_logits_do_not_depend_on_batch_composition() {
    batch_invariant(DemoSpec::new(Arch::Bloom, Size::Tiny, 8));
}

/// And for every weight format: bf16, the 8-bit ones, bf16 × bf16 and 4-bit, whose activations are
/// rounded (or quantized) per token, never per batch.
#[test]
fn every_weight_format_is_batch_invariant() {
    for format in [
        WeightFormat::Bf16,
        WeightFormat::Int8,
        WeightFormat::W8a8,
        WeightFormat::W16a16,
        WeightFormat::W4a8,
    ] {
        batch_invariant_as(DemoSpec::new(Arch::Llama, Size::Tiny, 8), format);
    }
}

fn batch_invariant(spec: DemoSpec) {
    batch_invariant_as(spec, WeightFormat::F32)
}

fn batch_invariant_as(spec: DemoSpec, format: WeightFormat) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    generate(&dir, &spec);
    let model = Transformer::load(&dir, format, 512).unwrap();
    let s = model.shape();
    let layout = KvLayout {
        num_blocks: 256,
        block_size: 4,
        kv_heads: s.num_kv_heads,
        head_dim: s.head_dim,
    };
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| prompt(5 + 7 * i)).collect();
    let tables: Vec<Vec<u32>> = (0..6u32).map(|i| (i * 40..i * 40 + 40).collect()).collect();
    // Alone: each prompt in its own pass, then one decode token.
    let mut kv = KvPool::new(s.num_layers, layout);
    let mut alone = Vec::new();
    for (p, t) in prompts.iter().zip(&tables) {
        let c = SeqChunk {
            tokens: p,
            start_pos: 0,
            block_table: t,
            logits: LogitRows::Last,
        };
        model.forward(&[c], &mut kv).unwrap();
        let c = SeqChunk {
            tokens: &[42],
            start_pos: p.len(),
            block_table: t,
            logits: LogitRows::Last,
        };
        alone.push(model.forward(&[c], &mut kv).unwrap().remove(0));
    }
    // Together: all prompts in one pass, then all decode tokens in one pass.
    let mut kv = KvPool::new(s.num_layers, layout);
    let chunks: Vec<SeqChunk> = prompts
        .iter()
        .zip(&tables)
        .map(|(p, t)| SeqChunk {
            tokens: p,
            start_pos: 0,
            block_table: t,
            logits: LogitRows::Last,
        })
        .collect();
    model.forward(&chunks, &mut kv).unwrap();
    let chunks: Vec<SeqChunk> = prompts
        .iter()
        .zip(&tables)
        .map(|(p, t)| SeqChunk {
            tokens: &[42],
            start_pos: p.len(),
            block_table: t,
            logits: LogitRows::Last,
        })
        .collect();
    let together = model.forward(&chunks, &mut kv).unwrap();
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert!(
            a == b,
            "{format:?} sequence {i}: logits differ between batched and alone (max diff {})",
            rel_err(a, b)
        );
    }
}

#[test]
fn generate_never_replaces_a_folder_it_did_not_write() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "keep me").unwrap();
    let err = demo::generate(
        tmp.path(),
        &DemoSpec::new(Arch::Llama, Size::Tiny, 1),
        &mut |_, _| {},
    );
    assert!(
        err.is_err(),
        "a folder with other files must not be replaced"
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("notes.txt")).unwrap(),
        "keep me"
    );
    // An earlier generated model may be regenerated in place.
    let dir = tmp.path().join("m");
    generate(&dir, &DemoSpec::new(Arch::Llama, Size::Tiny, 1));
    generate(&dir, &DemoSpec::new(Arch::Llama, Size::Tiny, 2));
}
