//! How token states become one embedding: sentence-transformers' `Pooling` and `Normalize`
//! modules, read from the model folder (`modules.json`, `1_Pooling/config.json`).

use std::path::Path;

use serde_json::Value;

use crate::EngineError;

/// One pooling mode of sentence-transformers' `Pooling` module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first token's state (`<s>`, BERT's `[CLS]`): bge-m3.
    Cls,
    /// The mean over the input's tokens: multilingual-e5.
    Mean,
    /// The element-wise maximum over the tokens.
    Max,
    /// The sum divided by the square root of the length.
    MeanSqrtLen,
    /// The last token's state.
    LastToken,
}

/// The model's pooling, and whether the result is L2-normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pooling {
    pub mode: PoolingMode,
    pub normalize: bool,
}

impl Pooling {
    /// Read from the sentence-transformers files; without them, the first token's state,
    /// normalised (vLLM's default for encoder embedding models).
    pub fn from_dir(dir: &Path) -> Result<Self, EngineError> {
        let read = |p: &Path| -> Result<Option<Value>, EngineError> {
            match std::fs::read_to_string(p) {
                Ok(text) => serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| EngineError::load(format!("invalid {}: {e}", p.display()))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(EngineError::load(format!(
                    "cannot read {}: {e}",
                    p.display()
                ))),
            }
        };
        let Some(modules) = read(&dir.join("modules.json"))? else {
            return Ok(Self {
                mode: PoolingMode::Cls,
                normalize: true,
            });
        };
        let modules = modules.as_array().cloned().unwrap_or_default();
        let kind = |m: &Value| {
            m["type"]
                .as_str()
                .and_then(|t| t.rsplit('.').next())
                .unwrap_or("")
                .to_string()
        };
        let mut mode = None;
        let mut normalize = false;
        for m in &modules {
            match kind(m).as_str() {
                "Transformer" => {}
                "Normalize" => normalize = true,
                "Pooling" => {
                    let path = dir
                        .join(m["path"].as_str().unwrap_or(""))
                        .join("config.json");
                    let config = read(&path)?
                        .ok_or_else(|| EngineError::load(format!("missing {}", path.display())))?;
                    mode = Some(Self::mode(&config)?);
                }
                other => {
                    return Err(EngineError::load(format!(
                        "sentence-transformers module `{other}` is not supported (only \
                         Transformer, Pooling and Normalize)"
                    )))
                }
            }
        }
        Ok(Self {
            mode: mode.unwrap_or(PoolingMode::Cls),
            normalize,
        })
    }

    fn mode(config: &Value) -> Result<PoolingMode, EngineError> {
        let on: Vec<PoolingMode> = [
            ("pooling_mode_cls_token", PoolingMode::Cls),
            ("pooling_mode_mean_tokens", PoolingMode::Mean),
            ("pooling_mode_max_tokens", PoolingMode::Max),
            (
                "pooling_mode_mean_sqrt_len_tokens",
                PoolingMode::MeanSqrtLen,
            ),
            ("pooling_mode_lasttoken", PoolingMode::LastToken),
        ]
        .into_iter()
        .filter(|(k, _)| config[*k].as_bool() == Some(true))
        .map(|(_, m)| m)
        .collect();
        match on.as_slice() {
            [one] => Ok(*one),
            [] => Err(EngineError::load(
                "the Pooling module names no pooling mode",
            )),
            _ => Err(EngineError::load(
                "the Pooling module concatenates several modes; only one is supported",
            )),
        }
    }

    /// One embedding from a sequence's token states (`[len, hidden]`, row-major).
    pub fn pool(&self, states: &[f32], hidden: usize) -> Vec<f32> {
        let len = states.len() / hidden;
        let rows = || states.chunks_exact(hidden);
        let sum = || {
            let mut acc = vec![0.0f64; hidden];
            for r in rows() {
                acc.iter_mut().zip(r).for_each(|(a, &v)| *a += f64::from(v));
            }
            acc
        };
        let mut out: Vec<f32> = match self.mode {
            PoolingMode::Cls => states[..hidden].to_vec(),
            PoolingMode::LastToken => states[(len - 1) * hidden..].to_vec(),
            PoolingMode::Mean => sum().iter().map(|v| (v / len as f64) as f32).collect(),
            PoolingMode::MeanSqrtLen => {
                let d = (len as f64).sqrt();
                sum().iter().map(|v| (v / d) as f32).collect()
            }
            PoolingMode::Max => {
                let mut m = vec![f32::NEG_INFINITY; hidden];
                for r in rows() {
                    m.iter_mut().zip(r).for_each(|(m, &v)| *m = m.max(v));
                }
                m
            }
        };
        if self.normalize {
            normalize(&mut out);
        }
        out
    }
}

/// Scales to unit L2 norm (sentence-transformers' `Normalize`, eps 1e-12 as torch's).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let d = norm.max(1e-12);
    v.iter_mut().for_each(|x| *x = (f64::from(*x) / d) as f32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_as_sentence_transformers_does() {
        let states = [1.0, 2.0, 3.0, 6.0];
        let p = |mode, normalize| Pooling { mode, normalize }.pool(&states, 2);
        assert_eq!(p(PoolingMode::Cls, false), [1.0, 2.0]);
        assert_eq!(p(PoolingMode::LastToken, false), [3.0, 6.0]);
        assert_eq!(p(PoolingMode::Mean, false), [2.0, 4.0]);
        assert_eq!(p(PoolingMode::Max, false), [3.0, 6.0]);
        let n = p(PoolingMode::Mean, true);
        assert!(
            (n[0] - 2.0 / 20f32.sqrt()).abs() < 1e-7 && (n[1] - 4.0 / 20f32.sqrt()).abs() < 1e-7
        );
    }

    #[test]
    fn several_modes_at_once_are_refused() {
        let both =
            serde_json::json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true});
        assert!(Pooling::mode(&both).is_err());
        assert!(Pooling::mode(&serde_json::json!({})).is_err());
    }
}
