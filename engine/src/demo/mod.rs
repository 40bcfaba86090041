//! Writes complete Hugging Face model folders with random weights and a real byte-level BPE
//! tokenizer trained on the multilingual corpus the repo ships, so that tests, benchmarks and
//! the demo run without any network. The same spec and seed give the same bytes.

mod corpus;
mod deepseek;
mod shapes;
pub mod templates;
mod tokenizer;
mod weights;

use std::path::Path;

pub use rosetta_config::{Arch, Size};
pub use shapes::DemoShape;

use crate::EngineError;

/// Bumped whenever the same spec would write different files (revision 2: chat templates
/// that render tools and thinking).
const REVISION: u32 = 2;

/// Stored weight precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoredDtype {
    #[default]
    F32,
    Bf16,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSpec {
    pub arch: Arch,
    pub size: Size,
    pub seed: u64,
    pub dtype: StoredDtype,
    /// Split the weights over this many files with an index (1 = a single model.safetensors).
    pub shards: usize,
}

impl DemoSpec {
    pub fn new(arch: Arch, size: Size, seed: u64) -> Self {
        Self {
            arch,
            size,
            seed,
            dtype: StoredDtype::F32,
            shards: 1,
        }
    }

    /// A folder name that identifies the spec and the generator's revision, for caches (a
    /// cached model of an older revision is not reused).
    pub fn slug(&self) -> String {
        let dtype = match self.dtype {
            StoredDtype::F32 => "f32",
            StoredDtype::Bf16 => "bf16",
        };
        format!(
            "{}-{}-seed{}-{dtype}-{}shard-r{REVISION}",
            self.arch.name(),
            self.size.name(),
            self.seed,
            self.shards
        )
    }
}

/// Generates the model folder. `progress(done, total)` is called as weight bytes are written.
/// The folder is written under a temporary name and renamed at the end, so an interrupted
/// run never leaves a half-written model that looks complete.
pub fn generate(
    dir: &Path,
    spec: &DemoSpec,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), EngineError> {
    if spec.shards == 0 {
        return Err(EngineError::InvalidRequest(
            "shards must be at least 1".into(),
        ));
    }
    refuse_to_replace_foreign(dir)?;
    let shape = DemoShape::new(spec.arch, spec.size);
    let io = |e: std::io::Error| {
        EngineError::Internal(format!(
            "cannot write the demo model to {}: {e}",
            dir.display()
        ))
    };
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io)?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io)?;
    }
    std::fs::create_dir_all(&tmp).map_err(io)?;
    let write = |file: &str, json: &serde_json::Value| -> Result<(), EngineError> {
        let text =
            serde_json::to_string_pretty(json).map_err(|e| EngineError::Internal(e.to_string()))?;
        std::fs::write(tmp.join(file), text + "\n").map_err(io)
    };
    let tok = tokenizer::train(spec.arch, shape.vocab_size)?;
    std::fs::write(tmp.join("tokenizer.json"), &tok.tokenizer_json).map_err(io)?;
    write("tokenizer_config.json", &tok.tokenizer_config)?;
    write("generation_config.json", &tok.generation_config)?;
    write("config.json", &shape.config_json(spec, &tok))?;
    if spec.arch.is_encoder() {
        write_sentence_transformers(&tmp, &shape)?;
    }
    weights::write(&tmp, &shape, spec, progress)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io)?;
    }
    std::fs::rename(&tmp, dir).map_err(io)?;
    Ok(())
}

/// sentence-transformers' files beside an encoder, as multilingual-e5 ships them: mean
/// pooling, then L2 normalisation.
fn write_sentence_transformers(dir: &Path, shape: &DemoShape) -> Result<(), EngineError> {
    let io = |e: std::io::Error| EngineError::Internal(format!("cannot write the demo model: {e}"));
    let files = [
        (
            "modules.json",
            serde_json::json!([
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
            ]),
        ),
        (
            "sentence_bert_config.json",
            serde_json::json!({"max_seq_length": 512, "do_lower_case": false}),
        ),
        (
            "1_Pooling/config.json",
            serde_json::json!({
                "word_embedding_dimension": shape.hidden,
                "pooling_mode_cls_token": false,
                "pooling_mode_mean_tokens": true,
                "pooling_mode_max_tokens": false,
                "pooling_mode_mean_sqrt_len_tokens": false
            }),
        ),
    ];
    std::fs::create_dir_all(dir.join("1_Pooling")).map_err(io)?;
    std::fs::create_dir_all(dir.join("2_Normalize")).map_err(io)?;
    for (file, json) in files {
        let text = serde_json::to_string_pretty(&json)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        std::fs::write(dir.join(file), text + "\n").map_err(io)?;
    }
    Ok(())
}

/// Only an empty folder or an earlier generated model may be replaced: `generate` must never
/// delete a user's files because of a mistyped path.
fn refuse_to_replace_foreign(dir: &Path) -> Result<(), EngineError> {
    let Ok(mut entries) = std::fs::read_dir(dir) else {
        return Ok(()); // does not exist (or is not a folder: the write will say so)
    };
    if entries.next().is_none() {
        return Ok(());
    }
    let generated = std::fs::read_to_string(dir.join("config.json"))
        .is_ok_and(|c| c.contains("\"rosetta_demo\""));
    if generated {
        Ok(())
    } else {
        Err(EngineError::InvalidRequest(format!(
            "{} exists and is not a generated demo model; choose a new or empty folder",
            dir.display()
        )))
    }
}
