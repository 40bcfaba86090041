//! Memory-mapped safetensors, single file or sharded with an index.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::EngineError;

pub struct Weights {
    tensors: MmapedSafetensors,
    dtype: DType,
    device: Device,
}

impl Weights {
    /// Maps `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self, EngineError> {
        let files = safetensors_files(dir)?;
        // Safety: the files are mapped read-only; like every safetensors loader we rely on
        // nobody truncating model files while they are served.
        let tensors = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| {
            EngineError::load(format!("cannot map weights in {}: {e}", dir.display()))
        })?;
        Ok(Self {
            tensors,
            dtype,
            device: device.clone(),
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.get(name).is_ok()
    }

    /// Loads a tensor converted to the compute dtype; a missing tensor is an error naming it.
    pub fn get(&self, name: &str) -> Result<Tensor, EngineError> {
        if !self.contains(name) {
            return Err(EngineError::load(format!(
                "missing tensor `{name}` in the model's safetensors"
            )));
        }
        self.tensors
            .load(name, &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(|e| EngineError::load(format!("cannot load tensor `{name}`: {e}")))
    }

    /// Like [`Weights::get`], but checks the shape too.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor, EngineError> {
        let t = self.get(name)?;
        if t.dims() != shape {
            return Err(EngineError::load(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                t.dims()
            )));
        }
        Ok(t)
    }

    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>, EngineError> {
        if self.contains(name) {
            self.get_shaped(name, shape).map(Some)
        } else {
            Ok(None)
        }
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
