//! Memory-mapped safetensors, single file or sharded with an index.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::matmul::{Matrix, WeightFormat};

use crate::EngineError;

pub struct Weights {
    tensors: MmapedSafetensors,
    device: Device,
}

impl Weights {
    /// Maps `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    pub fn open(dir: &Path, device: &Device) -> Result<Self, EngineError> {
        let files = safetensors_files(dir)?;
        // Safety: the files are mapped read-only; like every safetensors loader we rely on
        // nobody truncating model files while they are served.
        let tensors = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| {
            EngineError::load(format!("cannot map weights in {}: {e}", dir.display()))
        })?;
        Ok(Self {
            tensors,
            device: device.clone(),
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.get(name).is_ok()
    }

    /// Loads a tensor and checks its shape; a missing tensor is an error naming it.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, EngineError> {
        if !self.contains(name) {
            return Err(EngineError::load(format!(
                "missing tensor `{name}` in the model's safetensors"
            )));
        }
        let t = self
            .tensors
            .load(name, &self.device)
            .map_err(|e| EngineError::load(format!("cannot load tensor `{name}`: {e}")))?;
        if t.dims() != shape {
            return Err(EngineError::load(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                t.dims()
            )));
        }
        Ok(t)
    }

    /// A 1-D tensor as f32 values (norm weights, biases).
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, EngineError> {
        let t = self.tensor(name, &[n])?;
        Ok(t.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }

    /// Stacks 2-D tensors along their rows into one matrix held in `format`.
    pub fn matrix(
        &self,
        parts: &[Tensor],
        rows: usize,
        cols: usize,
        format: WeightFormat,
    ) -> Result<Matrix, EngineError> {
        let t = if parts.len() == 1 {
            parts[0].clone()
        } else {
            Tensor::cat(parts, 0)?
        };
        Ok(match format {
            WeightFormat::Bf16 => {
                let flat = t.to_dtype(DType::BF16)?.flatten_all()?;
                Matrix::bf16(rows, cols, flat.to_vec1::<half::bf16>()?)
            }
            WeightFormat::W16a16 => {
                let flat = t.to_dtype(DType::BF16)?.flatten_all()?;
                Matrix::w16a16(rows, cols, &flat.to_vec1::<half::bf16>()?)
            }
            WeightFormat::F32 => {
                let flat = t.to_dtype(DType::F32)?.flatten_all()?;
                Matrix::f32(rows, cols, flat.to_vec1::<f32>()?)
            }
            WeightFormat::Int8 => {
                let flat = t.to_dtype(DType::F32)?.flatten_all()?;
                Matrix::int8(rows, cols, &flat.to_vec1::<f32>()?)
            }
            WeightFormat::W8a8 => {
                let flat = t.to_dtype(DType::F32)?.flatten_all()?;
                Matrix::w8a8(rows, cols, &flat.to_vec1::<f32>()?)
            }
            WeightFormat::W4a8 => {
                let flat = t.to_dtype(DType::F32)?.flatten_all()?;
                Matrix::w4a8(rows, cols, &flat.to_vec1::<f32>()?)
            }
        })
    }
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, EngineError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .map_err(|e| EngineError::load(format!("cannot read {}: {e}", index.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::load(format!("invalid {}: {e}", index.display())))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| EngineError::load(format!("{} has no weight_map", index.display())))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|v| v.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        if let Some(missing) = files.iter().find(|f| !f.exists()) {
            return Err(EngineError::load(format!(
                "missing weight shard {}",
                missing.display()
            )));
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(EngineError::load(format!(
        "no model.safetensors or model.safetensors.index.json in {}",
        dir.display()
    )))
}
