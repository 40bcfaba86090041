//! The CUDA path against the CPU path: the same steps (prefill chunks, a chunk continuing a
//! prompt, decodes, a copy-on-write of a shared block) give the same logits within float
//! tolerance, for every demo architecture (Mistral's has a sliding window). Needs the `cuda`
//! feature and a GPU:
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
    BlockCopy, LoadedModel, LogitRows, ModelRunner, SeqChunk, Transformer, WeightDtype,
};

const BLOCK: usize = 4;

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

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_steps_give_the_cpu_logits() {
    static DIRS: [OnceLock<tempfile::TempDir>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    for (slot, arch) in DIRS.iter().zip(Arch::ALL) {
        let dir = common::generated_model(slot, DemoSpec::new(arch, Size::Tiny, 5));
        let cpu_model = Transformer::load(dir, None, 256).unwrap();
        let shape = cpu_model.shape().clone();
        let layout = KvLayout {
            num_blocks: 32,
            block_size: BLOCK,
            kv_heads: shape.num_kv_heads,
            head_dim: shape.head_dim,
        };
        let mut cpu: Box<dyn ModelRunner> = Box::new(cpu_model).into_runner(layout).unwrap();
        let gpu_model = CudaTransformer::load(dir, 0, WeightDtype::F32, 256).unwrap();
        let mut gpu: Box<dyn ModelRunner> = Box::new(gpu_model).into_runner(layout).unwrap();
        let mut both = |copies: &[BlockCopy], chunks: &[SeqChunk<'_>], what: &str| {
            let a = cpu.step(copies, chunks).unwrap();
            let b = gpu.step(copies, chunks).unwrap();
            assert_close(&a, &b, &format!("{arch:?} {what}"));
        };

        let a: Vec<u32> = (0..9).map(|i| (i * 37 + 11) % 2048).collect();
        let b: Vec<u32> = (0..13).map(|i| (i * 91 + 5) % 2048).collect();
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
        // C shares A's first block and half of its second (copy on write), then goes its own
        // way, while A and B decode.
        let c = [a[6] ^ 1, a[7] ^ 1];
        let table_c = [0u32, 20, 21];
        both(
            &[BlockCopy {
                src: 1,
                dst: 20,
                slots: 2,
            }],
            &[
                chunk(&c, 6, &table_c, LogitRows::All),
                chunk(&[7], 9, &table_a, LogitRows::Last),
                chunk(&[9], 13, &table_b, LogitRows::Last),
            ],
            "copy on write + decodes",
        );
    }
}
