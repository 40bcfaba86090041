//! Rotary position embeddings in the Hugging Face "rotate_half" layout (the two halves of a
//! head rotate together), or interleaved (adjacent pairs rotate together), as Cohere's
//! models use them.

use super::config::RopeScaling;

/// Precomputed cos/sin per position and frequency.
pub struct Rope {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
    interleaved: bool,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64, scaling: &RopeScaling, max_positions: usize) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|j| 1.0 / theta.powf(2.0 * j as f64 / head_dim as f64))
            .map(|f| scale_frequency(f, scaling))
            .collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in &inv_freq {
                // Angles in f64 then rounded, as transformers computes them in f32 from f32
                // frequencies; the difference is far below the 1e-4 tolerance.
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Self {
            half,
            cos,
            sin,
            interleaved: false,
        }
    }

    /// Rotates adjacent pairs (`x[2j]`, `x[2j + 1]`) by frequency `j` instead of the halves.
    pub fn interleaved(mut self, interleaved: bool) -> Self {
        self.interleaved = interleaved;
        self
    }

    /// The cos and sin tables, `[max_positions, head_dim / 2]` row-major, for devices that
    /// rotate on their own.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn tables(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    pub fn max_positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates one head's vector in place for position `pos`.
    #[inline]
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let h = self.half;
        let cos = &self.cos[pos * h..(pos + 1) * h];
        let sin = &self.sin[pos * h..(pos + 1) * h];
        if self.interleaved {
            for (j, pair) in x.chunks_exact_mut(2).enumerate() {
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0 * cos[j] - x1 * sin[j];
                pair[1] = x1 * cos[j] + x0 * sin[j];
            }
            return;
        }
        let (a, b) = x.split_at_mut(h);
        for j in 0..h {
            let (x0, x1) = (a[j], b[j]);
            a[j] = x0 * cos[j] - x1 * sin[j];
            b[j] = x1 * cos[j] + x0 * sin[j];
        }
    }
}

fn scale_frequency(f: f64, scaling: &RopeScaling) -> f64 {
    match *scaling {
        RopeScaling::None => f,
        RopeScaling::Linear { factor } => f / factor,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / factor
            } else {
                let smooth =
                    (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * f / factor + smooth * f
            }
        }
    }
}
