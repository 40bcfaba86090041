//! The CUDA path against the CPU path: the same steps (prefill chunks, a chunk continuing a
//! prompt, decodes, a copy-on-write of a shared block) give the same logits within float
//! tolerance. Needs the `cuda` feature and a GPU:
//!
//!     cargo test -p rosetta-engine --features cuda --test cuda -- --ignored
#![cfg(feature = "cuda")]

#[allow(dead_code)] // only the model generator is used here
mod common;

use std::sync::OnceLock;

use rosetta_engine::demo::{Arch, DemoSpec, Size};
use rosetta_engine::kv::KvLayout;
use rosetta_engine::model::cuda::CudaTransformer;
use rosetta_engine::model::{
    BlockCopy, LogitRows, ModelRunner, ModelWeights, SeqChunk, Transformer, WeightDtype,
    WeightFormat,
};

fn chunk<'a>(
    tokens: &'a [u32],
    start_pos: usize,
    table: &'a [u32],
    logits: LogitRows,
) -> SeqChunk<'a> {
    SeqChunk {
        tokens,
        start_pos,
        block_table: table,
        logits,
    }
}

fn assert_close(cpu: &[Vec<f32>], gpu: &[Vec<f32>], what: &str) {
    assert_eq!(cpu.len(), gpu.len(), "{what}: rows");
    for (r, (a, b)) in cpu.iter().zip(gpu).enumerate() {
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / x.abs().max(1.0))
            .fold(0.0f32, f32::max);
        assert!(worst < 2e-3, "{what}: row {r} differs by {worst}");
    }
}

/// Runs the same three steps on the CPU and CUDA runners of one model and compares logits.
fn compare(dir: &std::path::Path, block: usize, what: &str) {
    let cpu_model = Transformer::load(dir, WeightFormat::F32, 256).unwrap();
    let shape = cpu_model.shape().clone();
    let layout = KvLayout {
        num_blocks: 32,
        block_size: block,
        kv_heads: shape.num_kv_heads,
        head_dim: shape.head_dim,
    };
    let mut cpu: Box<dyn ModelRunner> = Box::new(cpu_model).into_runner(layout).unwrap();
    let gpu_model = CudaTransformer::load(dir, 0, WeightDtype::F32, 256).unwrap();
    let mut gpu: Box<dyn ModelRunner> = Box::new(gpu_model).into_runner(layout).unwrap();
    let mut both = |copies: &[BlockCopy], chunks: &[SeqChunk<'_>], step: &str| {
        let a = cpu.step(copies, chunks).unwrap();
        let b = gpu.step(copies, chunks).unwrap();
        assert_close(&a, &b, &format!("{what} {step}"));
    };

    let vocab = shape.vocab_size as u32;
    let a: Vec<u32> = (0..9).map(|i| (i * 37 + 11) % vocab).collect();
    let b: Vec<u32> = (0..13).map(|i| (i * 91 + 5) % vocab).collect();
    let table_a = [0u32, 1, 2, 3];
    let table_b = [10u32, 11, 12, 13];
    // Two prompts prefilling together; B only partly.
    both(
        &[],
        &[
            chunk(&a[..8], 0, &table_a, LogitRows::All),
            chunk(&b[..6], 0, &table_b, LogitRows::Last),
        ],
        "prefill",
    );
    // A decodes one token while B's prompt continues.
    both(
        &[],
        &[
            chunk(&a[8..9], 8, &table_a, LogitRows::Last),
            chunk(&b[6..], 6, &table_b, LogitRows::All),
        ],
        "decode + continued prefill",
    );
    // C shares A's first six positions (copy on write of the block holding the sixth), then
    // goes its own way, while A and B decode.
    let c = [a[6] ^ 1, a[7] ^ 1];
    let shared = 6 / block;
    let mut table_c: Vec<u32> = table_a[..shared].to_vec();
    table_c.extend([20, 21]);
    both(
        &[BlockCopy {
            src: table_a[shared],
            dst: 20,
            slots: 6 % block,
        }],
        &[
            chunk(&c, 6, &table_c, LogitRows::All),
            chunk(&[7], 9, &table_a, LogitRows::Last),
            chunk(&[9], 13, &table_b, LogitRows::Last),
        ],
        "copy on write + decodes",
    );
}

/// Tiny models (head sizes 16 and 32, 4-token blocks: the gathered path, Mistral's window,
/// Llama 3.1's rope scaling, Qwen3's head norms) and small ones (head size 64, 16-token
/// blocks: vLLM's paged kernel for decodes).
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_steps_give_the_cpu_logits() {
    static TINY: [OnceLock<tempfile::TempDir>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    for (slot, arch) in TINY.iter().zip(Arch::ALL) {
        let dir = common::generated_model(slot, DemoSpec::new(arch, Size::Tiny, 5));
        compare(dir, 4, &format!("tiny {arch:?}"));
    }
    static SMALL: [OnceLock<tempfile::TempDir>; 2] = [OnceLock::new(), OnceLock::new()];
    for (slot, arch) in SMALL.iter().zip([Arch::Llama, Arch::Qwen3]) {
        let dir = common::generated_model(slot, DemoSpec::new(arch, Size::Small, 5));
        compare(dir, 16, &format!("small {arch:?}"));
    }
}
