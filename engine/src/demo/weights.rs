//! Random weights for demo models, written as safetensors (optionally sharded).

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;

use super::{DemoShape, DemoSpec, StoredDtype};
use crate::EngineError;

/// Random values with the scale of a trained model's: norms near 1, projections scaled by
/// 1/sqrt(fan_in), so activations and logits stay in a realistic range.
fn values(rng: &mut ChaCha8Rng, name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    // XLM-RoBERTa spells its norms `LayerNorm`.
    let (mean, std) = if name.to_ascii_lowercase().ends_with("norm.weight") {
        (1.0, 0.1)
    } else if name.ends_with(".bias") {
        (0.0, 0.1)
    } else if name.ends_with("e_score_correction_bias") {
        // Small beside the sigmoid scores (0 to 1) it corrects.
        (0.0, 0.02)
    } else if name.contains("embed_tokens") {
        // Unit-norm rows: large embeddings would dominate the residual stream, and a tied
        // output head would then mostly repeat the last token.
        (0.0, 1.0 / (shape[1] as f32).sqrt())
    } else {
        (0.0, 1.0 / (shape[shape.len() - 1] as f32).sqrt())
    };
    let dist = Normal::new(mean, std).expect("std is positive");
    (0..n).map(|_| dist.sample(rng)).collect()
}

fn to_bytes(values: &[f32], dtype: StoredDtype) -> Vec<u8> {
    match dtype {
        StoredDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        StoredDtype::Bf16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

pub fn write(
    dir: &Path,
    shape: &DemoShape,
    spec: &DemoSpec,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), EngineError> {
    let tensors = shape.tensors();
    let elem = match spec.dtype {
        StoredDtype::F32 => 4,
        StoredDtype::Bf16 => 2,
    };
    let total: u64 = tensors
        .iter()
        .map(|(_, s)| (s.iter().product::<usize>() * elem) as u64)
        .sum();
    // One stream in a fixed order: the same seed always gives the same bytes.
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut done = 0u64;
    let mut data = Vec::with_capacity(tensors.len());
    // DeepSeek's routed experts, kept for their stacked copies.
    let mut experts = std::collections::HashMap::new();
    for (name, dims) in &tensors {
        let v = values(&mut rng, name, dims);
        let bytes = to_bytes(&v, spec.dtype);
        done += bytes.len() as u64;
        progress(done, total);
        data.push((name.clone(), dims.clone(), bytes));
        if shape.deepseek.is_some() && name.contains(".mlp.experts.") {
            experts.insert(name.clone(), v);
        }
    }
    if let Some(d) = &shape.deepseek {
        for (name, dims, v) in d.stacked(|n| experts.get(n).map(Vec::as_slice)) {
            data.push((name, dims, to_bytes(&v, spec.dtype)));
        }
    }
    let dtype = match spec.dtype {
        StoredDtype::F32 => Dtype::F32,
        StoredDtype::Bf16 => Dtype::BF16,
    };
    let err = |e: String| EngineError::Internal(format!("cannot write weights: {e}"));
    let meta = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    let shards = spec.shards.min(data.len());
    let mut weight_map = serde_json::Map::new();
    for s in 0..shards {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", s + 1, shards)
        };
        let views = data
            .iter()
            .enumerate()
            .filter(|(i, _)| i % shards == s)
            .map(|(_, (name, dims, bytes))| {
                weight_map.insert(name.clone(), json!(file));
                TensorView::new(dtype, dims.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| err(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::serialize_to_file(views, meta.clone(), &dir.join(&file))
            .map_err(|e| err(e.to_string()))?;
    }
    if shards > 1 {
        let total: usize = data.iter().map(|(_, _, bytes)| bytes.len()).sum();
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let text = serde_json::to_string_pretty(&index).map_err(|e| err(e.to_string()))?;
        std::fs::write(dir.join("model.safetensors.index.json"), text)
            .map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}
