//! An independent reference forward pass for DeepSeek-V3 (`DeepseekV3ForCausalLM` in Hugging
//! Face transformers' `modular_deepseek_v3.py`), which Rosetta serves through mistral.rs: the
//! mistral.rs backend's tests compare its greedy output with this. Self-contained, since only
//! those tests (in another crate) include it; naive and f64-accumulating like `mod.rs`.
//!
//! What the forward pass does, for one sequence from position 0:
//! - embeddings, then per layer `h += attn(rms(h))`, `h += mlp(rms(h))` (`LlamaDecoderLayer`),
//!   then `norm` and the untied `lm_head`;
//! - attention (`DeepseekV3Attention`): `q = q_b(rms_q(q_a(x)))` when `q_lora_rank` is set
//!   (else `q_proj(x)`), per head `[nope | rope]`; `kv_a_proj_with_mqa(x)` splits into a
//!   compressed `c` (`kv_lora_rank`) and one rotary key shared by every head (`qk_rope`);
//!   `kv_b(rms_kv(c))` gives per head `[k_nope | v]`; with `rope_interleave` (the default) the
//!   rotary parts turn in adjacent pairs (2i, 2i + 1) by `pos / theta^(2i / qk_rope)` (the
//!   view/transpose before `rotate_half` is that, in a permuted order that q and k share);
//!   scores `[q_nope | q_rot] · [k_nope | k_rot]` scaled by `(nope + rope)^-1/2`, causal,
//!   softmax, times v; heads concatenated into `o_proj`. The two inner RMSNorms use eps 1e-6
//!   (`DeepseekV3RMSNorm`'s default), the layer norms `rms_norm_eps`;
//! - the MLP of layers below `first_k_dense_replace` is `down(silu(gate x) * up x)`; the others
//!   are `DeepseekV3MoE`: scores `sigmoid(router x)` (f32); for choosing, `s + bias`
//!   (`e_score_correction_bias`); each of `n_group` groups is scored by the sum of its two best
//!   choice scores; the `topk_group` best groups stay and the rest of the choice scores become 0;
//!   the `num_experts_per_tok` best choice scores pick the experts; their weights are the plain
//!   sigmoid scores, divided by their sum (+1e-20) when `norm_topk_prob`, times
//!   `routed_scaling_factor`; the output is the weighted sum of the chosen experts' SwiGLU MLPs
//!   (`mlp.experts.{e}.{gate,up,down}_proj`) plus the shared experts' MLP.
//!
//! Only the `noaux_tc` / `sigmoid` routing of V3 and no rope scaling are implemented; anything
//! else panics.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

fn load_tensors(dir: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("model.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("parse safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), Dtype::F32, "{name}: the reference reads f32");
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (view.shape().to_vec(), data))
        })
        .collect()
}

struct Weights(HashMap<String, (Vec<usize>, Vec<f32>)>);

impl Weights {
    fn get(&self, name: &str, shape: &[usize]) -> Vec<f32> {
        let (actual, data) = self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("missing tensor {name}"));
        assert_eq!(actual, shape, "{name}");
        data.clone()
    }
}

/// `y = x Wᵀ` for `rows` rows, W `[out, in]`.
fn linear(w: &[f32], x: &[f32], rows: usize, inp: usize, out: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; rows * out];
    for r in 0..rows {
        for o in 0..out {
            let mut acc = 0.0f64;
            for i in 0..inp {
                acc += f64::from(x[r * inp + i]) * f64::from(w[o * inp + i]);
            }
            y[r * out + o] = acc as f32;
        }
    }
    y
}

fn rms(x: &[f32], w: &[f32], eps: f64) -> Vec<f32> {
    let n = w.len();
    let mut y = vec![0.0f32; x.len()];
    for (row, out) in x.chunks(n).zip(y.chunks_mut(n)) {
        let ms = row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / n as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        for i in 0..n {
            out[i] = ((f64::from(row[i]) * inv) as f32) * w[i];
        }
    }
    y
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `down(silu(gate x) * up x)` for one row.
fn swiglu(gate: &[f32], up: &[f32], down: &[f32], x: &[f32], h: usize, i: usize) -> Vec<f32> {
    let g = linear(gate, x, 1, h, i);
    let u = linear(up, x, 1, h, i);
    let act: Vec<f32> = g.iter().zip(&u).map(|(g, u)| silu(*g) * u).collect();
    linear(down, &act, 1, i, h)
}

struct Shape {
    hidden: usize,
    layers: usize,
    heads: usize,
    vocab: usize,
    inter: usize,
    moe_inter: usize,
    q_lora: Option<usize>,
    kv_lora: usize,
    nope: usize,
    rope: usize,
    v: usize,
    experts: usize,
    shared: usize,
    top_k: usize,
    groups: usize,
    topk_groups: usize,
    first_dense: usize,
    norm_topk: bool,
    scaling_factor: f64,
    eps: f64,
    theta: f64,
}

pub struct DeepseekReference {
    s: Shape,
    w: Weights,
}

impl DeepseekReference {
    pub fn load(dir: &Path) -> Self {
        let text = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
        let c: Value = serde_json::from_str(&text).expect("config.json is JSON");
        let n = |k: &str| {
            c[k].as_u64()
                .unwrap_or_else(|| panic!("config.json: `{k}`")) as usize
        };
        assert_eq!(c["topk_method"], "noaux_tc", "only V3's noaux_tc routing");
        assert_eq!(c["scoring_func"], "sigmoid", "only V3's sigmoid scores");
        assert!(c["rope_scaling"].is_null(), "no rope scaling");
        assert_ne!(c["rope_interleave"], false, "only interleaved rotary");
        assert_ne!(c["attention_bias"], true, "no attention biases");
        let s = Shape {
            hidden: n("hidden_size"),
            layers: n("num_hidden_layers"),
            heads: n("num_attention_heads"),
            vocab: n("vocab_size"),
            inter: n("intermediate_size"),
            moe_inter: n("moe_intermediate_size"),
            q_lora: c["q_lora_rank"].as_u64().map(|r| r as usize),
            kv_lora: n("kv_lora_rank"),
            nope: n("qk_nope_head_dim"),
            rope: n("qk_rope_head_dim"),
            v: n("v_head_dim"),
            experts: n("n_routed_experts"),
            shared: n("n_shared_experts"),
            top_k: n("num_experts_per_tok"),
            groups: n("n_group"),
            topk_groups: n("topk_group"),
            first_dense: n("first_k_dense_replace"),
            norm_topk: c["norm_topk_prob"].as_bool().unwrap_or(true),
            scaling_factor: c["routed_scaling_factor"].as_f64().unwrap_or(1.0),
            eps: c["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            theta: c["rope_theta"].as_f64().unwrap_or(10000.0),
        };
        Self {
            s,
            w: Weights(load_tensors(dir)),
        }
    }

    /// Logits of every position of `tokens`.
    pub fn logits(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let (s, w) = (&self.s, &self.w);
        let (h, t) = (s.hidden, tokens.len());
        let embed = w.get("model.embed_tokens.weight", &[s.vocab, h]);
        let mut x: Vec<f32> = tokens
            .iter()
            .flat_map(|&id| embed[id as usize * h..(id as usize + 1) * h].to_vec())
            .collect();
        for l in 0..s.layers {
            let p = format!("model.layers.{l}");
            let normed = rms(
                &x,
                &w.get(&format!("{p}.input_layernorm.weight"), &[h]),
                s.eps,
            );
            let attn = self.attention(&p, &normed, t);
            for (xi, a) in x.iter_mut().zip(&attn) {
                *xi += a;
            }
            let normed = rms(
                &x,
                &w.get(&format!("{p}.post_attention_layernorm.weight"), &[h]),
                s.eps,
            );
            for r in 0..t {
                let row = &normed[r * h..(r + 1) * h];
                let out = if l < s.first_dense {
                    let m = |n: &str, shape: &[usize]| w.get(&format!("{p}.mlp.{n}.weight"), shape);
                    swiglu(
                        &m("gate_proj", &[s.inter, h]),
                        &m("up_proj", &[s.inter, h]),
                        &m("down_proj", &[h, s.inter]),
                        row,
                        h,
                        s.inter,
                    )
                } else {
                    self.moe(&p, row)
                };
                for (xi, o) in x[r * h..(r + 1) * h].iter_mut().zip(&out) {
                    *xi += o;
                }
            }
        }
        let normed = rms(&x, &w.get("model.norm.weight", &[h]), s.eps);
        let logits = linear(
            &w.get("lm_head.weight", &[s.vocab, h]),
            &normed,
            t,
            h,
            s.vocab,
        );
        logits.chunks(s.vocab).map(<[f32]>::to_vec).collect()
    }

    /// Greedy continuation of `prompt` by `n` tokens (the whole sequence is recomputed for
    /// each: this is a reference, not an engine).
    pub fn greedy(&self, prompt: &[u32], n: usize) -> Vec<u32> {
        let mut tokens = prompt.to_vec();
        let mut out = Vec::new();
        for _ in 0..n {
            let logits = self.logits(&tokens);
            let last = logits.last().expect("a prompt of at least one token");
            let best = (0..last.len())
                .max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a)))
                .unwrap_or(0) as u32;
            tokens.push(best);
            out.push(best);
        }
        out
    }

    /// Rotates adjacent pairs (2i, 2i + 1) of `x` by `pos / theta^(2i / len)`.
    fn rotate(&self, x: &mut [f32], pos: usize) {
        let d = x.len();
        for i in 0..d / 2 {
            let freq = 1.0 / self.s.theta.powf(2.0 * i as f64 / d as f64);
            let (sin, cos) = (pos as f64 * freq).sin_cos();
            let (a, b) = (f64::from(x[2 * i]), f64::from(x[2 * i + 1]));
            x[2 * i] = (a * cos - b * sin) as f32;
            x[2 * i + 1] = (b * cos + a * sin) as f32;
        }
    }

    fn attention(&self, p: &str, x: &[f32], t: usize) -> Vec<f32> {
        let (s, w) = (&self.s, &self.w);
        let (h, nh) = (s.hidden, s.heads);
        let qk = s.nope + s.rope;
        let a = |n: &str, shape: &[usize]| w.get(&format!("{p}.self_attn.{n}.weight"), shape);
        let q = match s.q_lora {
            Some(r) => {
                let c = linear(&a("q_a_proj", &[r, h]), x, t, h, r);
                let c = rms(&c, &a("q_a_layernorm", &[r]), 1e-6);
                linear(&a("q_b_proj", &[nh * qk, r]), &c, t, r, nh * qk)
            }
            None => linear(&a("q_proj", &[nh * qk, h]), x, t, h, nh * qk),
        };
        let kv_a = s.kv_lora + s.rope;
        let compressed = linear(&a("kv_a_proj_with_mqa", &[kv_a, h]), x, t, h, kv_a);
        let mut c = Vec::with_capacity(t * s.kv_lora);
        let mut k_rot = Vec::with_capacity(t * s.rope);
        for r in 0..t {
            let row = &compressed[r * kv_a..(r + 1) * kv_a];
            c.extend_from_slice(&row[..s.kv_lora]);
            let mut rot = row[s.kv_lora..].to_vec();
            self.rotate(&mut rot, r);
            k_rot.extend(rot);
        }
        let c = rms(&c, &a("kv_a_layernorm", &[s.kv_lora]), 1e-6);
        let per_head = s.nope + s.v;
        let kv = linear(
            &a("kv_b_proj", &[nh * per_head, s.kv_lora]),
            &c,
            t,
            s.kv_lora,
            nh * per_head,
        );
        let scale = 1.0 / (qk as f64).sqrt();
        let mut out = vec![0.0f32; t * nh * s.v];
        for head in 0..nh {
            // Each position's query and key for this head: [nope | rotated rope].
            let query = |r: usize| {
                let mut v = q[(r * nh + head) * qk..(r * nh + head + 1) * qk].to_vec();
                self.rotate(&mut v[s.nope..], r);
                v
            };
            let key = |r: usize| {
                let base = (r * nh + head) * per_head;
                let mut v = kv[base..base + s.nope].to_vec();
                v.extend_from_slice(&k_rot[r * s.rope..(r + 1) * s.rope]);
                v
            };
            let keys: Vec<Vec<f32>> = (0..t).map(key).collect();
            for i in 0..t {
                let qi = query(i);
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        qi.iter()
                            .zip(&keys[j])
                            .map(|(a, b)| f64::from(*a) * f64::from(*b))
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in 0..s.v {
                    let acc: f64 = (0..=i)
                        .map(|j| e[j] * f64::from(kv[(j * nh + head) * per_head + s.nope + d]))
                        .sum();
                    out[(i * nh + head) * s.v + d] = (acc / sum) as f32;
                }
            }
        }
        linear(&a("o_proj", &[h, nh * s.v]), &out, t, nh * s.v, h)
    }

    fn moe(&self, p: &str, x: &[f32]) -> Vec<f32> {
        let (s, w) = (&self.s, &self.w);
        let (h, e, i) = (s.hidden, s.experts, s.moe_inter);
        let m = format!("{p}.mlp");
        let logits = linear(&w.get(&format!("{m}.gate.weight"), &[e, h]), x, 1, h, e);
        let bias = w.get(&format!("{m}.gate.e_score_correction_bias"), &[e]);
        let scores: Vec<f32> = logits.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect();
        let choice: Vec<f32> = scores.iter().zip(&bias).map(|(s, b)| s + b).collect();
        let per_group = e / s.groups;
        let mut group_scores: Vec<(usize, f32)> = (0..s.groups)
            .map(|g| {
                let mut v = choice[g * per_group..(g + 1) * per_group].to_vec();
                v.sort_by(|a, b| b.total_cmp(a));
                (g, v.iter().take(2).sum())
            })
            .collect();
        group_scores.sort_by(|a, b| b.1.total_cmp(&a.1));
        let kept: Vec<usize> = group_scores
            .iter()
            .take(s.topk_groups)
            .map(|g| g.0)
            .collect();
        let masked: Vec<f32> = (0..e)
            .map(|id| {
                if kept.contains(&(id / per_group)) {
                    choice[id]
                } else {
                    0.0
                }
            })
            .collect();
        let mut order: Vec<usize> = (0..e).collect();
        order.sort_by(|&a, &b| masked[b].total_cmp(&masked[a]));
        let chosen = &order[..s.top_k];
        let mut weights: Vec<f64> = chosen.iter().map(|&x| f64::from(scores[x])).collect();
        if s.norm_topk {
            let sum: f64 = weights.iter().sum::<f64>() + 1e-20;
            weights.iter_mut().for_each(|w| *w /= sum);
        }
        let mut out = vec![0.0f64; h];
        for (&id, weight) in chosen.iter().zip(&weights) {
            let ex =
                |n: &str, shape: &[usize]| w.get(&format!("{m}.experts.{id}.{n}.weight"), shape);
            let y = swiglu(
                &ex("gate_proj", &[i, h]),
                &ex("up_proj", &[i, h]),
                &ex("down_proj", &[h, i]),
                x,
                h,
                i,
            );
            for (o, v) in out.iter_mut().zip(&y) {
                *o += weight * s.scaling_factor * f64::from(*v);
            }
        }
        let si = i * s.shared;
        let sh = |n: &str, shape: &[usize]| w.get(&format!("{m}.shared_experts.{n}.weight"), shape);
        let shared = swiglu(
            &sh("gate_proj", &[si, h]),
            &sh("up_proj", &[si, h]),
            &sh("down_proj", &[h, si]),
            x,
            h,
            si,
        );
        out.iter()
            .zip(&shared)
            .map(|(o, s)| *o as f32 + s)
            .collect()
    }
}
