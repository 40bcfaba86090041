//! The CUDA path (cargo feature `cuda`): the same Llama-family decoder as the CPU path, on
//! candle's CUDA tensors (cuBLAS products, candle-nn's fused RMSNorm, RoPE and SiLU kernels),
//! with vLLM's paged attention kernels as packaged by `mistralrs-paged-attn`:
//!
//! - each token's K and V go into the paged cache with `reshape_and_cache`, at the slot its
//!   sequence's block table gives;
//! - decode tokens (one per sequence) attend with `paged_attention`, reading K and V through
//!   the block tables in place;
//! - prefill chunks gather their sequence's context with `gather_kv_cache` and attend with a
//!   causal (and, for windowed layers, banded) mask; so do decodes of windowed layers, which
//!   the paged kernel does not bound, and decodes of head or block sizes it is not built for;
//! - copy-on-write of shared blocks uses `copy_blocks`.
//!
//! The scheduler, block manager and sampler are the CPU path's: only the forward pass and
//! where K and V live differ.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use mistralrs_paged_attn::{copy_blocks, gather_kv_cache, paged_attention, reshape_and_cache};

use super::rope::Rope;
use super::runner::{BlockCopy, ModelRunner, ModelWeights};
use super::weights::Weights;
use super::{MlpKind, ModelShape, NormKind, Positions, SeqChunk};
use crate::error::candle_message;
use crate::kv::KvLayout;
use crate::EngineError;

/// A projection: `x @ weight^T + bias`.
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

struct Layer {
    input_norm: Tensor,
    post_norm: Tensor,
    qkv: Linear,
    o: Linear,
    gate_up: Linear,
    down: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
}

/// A model loaded onto one CUDA device, before its KV cache exists.
pub struct CudaTransformer {
    shape: ModelShape,
    device: Device,
    dtype: DType,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    /// `[max_positions, head_dim / 2]`, in the activations' dtype as candle-nn's rope
    /// kernel takes them.
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
}

impl CudaTransformer {
    /// Loads a Hugging Face model folder onto GPU `ordinal`, weights and activations in
    /// `dtype` (bf16, f16 or f32).
    pub fn load(
        dir: &Path,
        ordinal: usize,
        dtype: DType,
        max_positions: usize,
    ) -> Result<Self, EngineError> {
        if !matches!(dtype, DType::BF16 | DType::F16 | DType::F32) {
            return Err(EngineError::load(format!(
                "the CUDA path runs bf16, f16 or f32, not {dtype:?}"
            )));
        }
        let device = open_device(ordinal)?;
        let shape = ModelShape::from_file(&dir.join("config.json"))?;
        // The CUDA pass is the Llama decoder's: RMSNorm, rotary halves, gated SiLU MLP.
        let llama_like = shape.experts.is_none()
            && !shape.parallel_block
            && shape.norm == NormKind::Rms
            && shape.positions == (Positions::Rope { interleaved: false })
            && shape.mlp == MlpKind::GatedSilu
            && !shape.embed_norm
            && !shape.qkv_fused_per_head
            && shape.layer_rotary.iter().all(|&r| r);
        if !llama_like {
            return Err(EngineError::load(
                "Mixtral, Cohere, Cohere2 and BLOOM models run on the CPU path only for now; use \
                 `engine.device: cpu`",
            ));
        }
        let w = Weights::open(dir, &device)?;
        let s = &shape;
        let (h, hd) = (s.hidden_size, s.head_dim);
        let (qd, kvd) = (s.num_heads * hd, s.num_kv_heads * hd);
        let load = |name: &str, dims: &[usize]| -> Result<Tensor, EngineError> {
            Ok(w.tensor(name, dims)?.to_dtype(dtype)?)
        };
        // Checkpoint projections stacked into one product, with a bias if any part has one.
        let stacked = |names: &[(String, usize)], inp: usize| -> Result<Linear, EngineError> {
            let mut weights = Vec::with_capacity(names.len());
            let mut biases = Vec::with_capacity(names.len());
            for (prefix, out) in names {
                weights.push(load(&format!("{prefix}.weight"), &[*out, inp])?);
                let bias_name = format!("{prefix}.bias");
                biases.push(if w.contains(&bias_name) {
                    Some(load(&bias_name, &[*out])?)
                } else {
                    None
                });
            }
            let bias = if biases.iter().any(Option::is_some) {
                let parts = names
                    .iter()
                    .zip(biases)
                    .map(|((_, out), b)| b.map_or_else(|| Tensor::zeros(*out, dtype, &device), Ok))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Some(Tensor::cat(&parts, 0)?)
            } else {
                None
            };
            Ok(Linear {
                weight: Tensor::cat(&weights, 0)?,
                bias,
            })
        };
        let names = s.weight_names(|name| w.contains(name));
        let mut layers = Vec::with_capacity(s.num_layers);
        for i in 0..s.num_layers {
            let n = names.layer(i);
            let head_norm = |name: &str| -> Result<Option<Tensor>, EngineError> {
                s.qk_norm
                    .then(|| load(&format!("{name}.weight"), &[hd]))
                    .transpose()
            };
            layers.push(Layer {
                input_norm: load(&format!("{}.weight", n.input_norm), &[h])?,
                post_norm: load(&format!("{}.weight", n.post_norm), &[h])?,
                qkv: stacked(&[(n.q, qd), (n.k, kvd), (n.v, kvd)], h)?,
                o: stacked(&[(n.o, h)], qd)?,
                gate_up: stacked(
                    &[(n.gate, s.intermediate_size), (n.up, s.intermediate_size)],
                    h,
                )?,
                down: stacked(&[(n.down, h)], s.intermediate_size)?,
                q_norm: head_norm(&n.q_norm)?,
                k_norm: head_norm(&n.k_norm)?,
            });
        }
        let embed = load(&format!("{}.weight", names.embed), &[s.vocab_size, h])?;
        let lm_head = if s.tie_word_embeddings && !w.contains(&format!("{}.weight", names.lm_head))
        {
            Linear {
                weight: embed.clone(),
                bias: None,
            }
        } else {
            stacked(&[(names.lm_head.to_string(), s.vocab_size)], h)?
        };
        let rope = Rope::new(hd, s.rope_theta, &s.rope_scaling, max_positions);
        let (cos, sin) = rope.tables();
        let table = |v: &[f32]| -> Result<Tensor, EngineError> {
            Ok(Tensor::from_slice(v, (max_positions, hd / 2), &device)?.to_dtype(dtype)?)
        };
        Ok(Self {
            cos: table(cos)?,
            sin: table(sin)?,
            norm: load(&format!("{}.weight", names.final_norm), &[h])?,
            embed,
            layers,
            lm_head,
            max_positions,
            device,
            dtype,
            shape,
        })
    }
}

impl CudaTransformer {
    /// Free memory on the model's GPU now (after its weights), for `kv_cache_fraction`.
    pub fn free_memory(&self) -> Result<u64, EngineError> {
        let Device::Cuda(cuda) = &self.device else {
            return Err(EngineError::load("not a CUDA device"));
        };
        cuda.cuda_stream()
            .context()
            .bind_to_thread()
            .map_err(|e| EngineError::load(format!("CUDA: {e}")))?;
        let (free, _) = candle_core::cuda_backend::cudarc::driver::result::mem_get_info()
            .map_err(|e| EngineError::load(format!("CUDA: {e}")))?;
        Ok(free as u64)
    }
}

impl ModelWeights for CudaTransformer {
    fn shape(&self) -> &ModelShape {
        &self.shape
    }

    fn kv_bytes_per_token(&self) -> usize {
        let s = &self.shape;
        2 * s.num_layers * s.num_kv_heads * s.head_dim * self.dtype.size_in_bytes()
    }

    fn into_runner(self: Box<Self>, layout: KvLayout) -> Result<Box<dyn ModelRunner>, EngineError> {
        // vLLM's cache layout: K as [blocks, kv_heads, head_dim / x, block_size, x] with x
        // elements making 16 bytes, V as [blocks, kv_heads, head_dim, block_size].
        let x = 16 / self.dtype.size_in_bytes();
        if !layout.head_dim.is_multiple_of(x) {
            return Err(EngineError::load(format!(
                "head_dim {} is not a multiple of {x}, as the paged attention kernels need",
                layout.head_dim
            )));
        }
        let k_shape = (
            layout.num_blocks,
            layout.kv_heads,
            layout.head_dim / x,
            layout.block_size,
            x,
        );
        let v_shape = (
            layout.num_blocks,
            layout.kv_heads,
            layout.head_dim,
            layout.block_size,
        );
        let mut k_cache = Vec::with_capacity(self.shape.num_layers);
        let mut v_cache = Vec::with_capacity(self.shape.num_layers);
        for _ in 0..self.shape.num_layers {
            k_cache.push(Tensor::zeros(k_shape, self.dtype, &self.device)?);
            v_cache.push(Tensor::zeros(v_shape, self.dtype, &self.device)?);
        }
        let paged = PAGED_HEAD_SIZES.contains(&layout.head_dim)
            && PAGED_BLOCK_SIZES.contains(&layout.block_size);
        if !paged {
            tracing::warn!(
                head_dim = layout.head_dim,
                block_size = layout.block_size,
                "the paged attention kernel has no build for this head size and block size; \
                 decodes attend through gathered K/V instead (slower)"
            );
        }
        Ok(Box::new(CudaRunner {
            model: *self,
            block_size: layout.block_size,
            paged,
            k_cache,
            v_cache,
        }))
    }
}

/// The head sizes and block sizes vLLM's paged attention kernel is compiled for; its wrapper
/// refuses other head sizes and the kernel silently does nothing for other block sizes, so
/// both take the gathered path.
const PAGED_HEAD_SIZES: [usize; 8] = [64, 80, 96, 112, 128, 192, 256, 512];
const PAGED_BLOCK_SIZES: [usize; 3] = [8, 16, 32];

struct CudaRunner {
    model: CudaTransformer,
    block_size: usize,
    /// Decodes use the paged kernel (else the gathered path, as prefill does).
    paged: bool,
    k_cache: Vec<Tensor>,
    v_cache: Vec<Tensor>,
}

/// Where each chunk's tokens are and how it attends.
struct ChunkPlan {
    first_token: usize,
    num_tokens: usize,
    start_pos: usize,
    /// Row of this chunk in the step's decode batch, if it is a one-token decode.
    decode_row: Option<usize>,
}

impl ModelRunner for CudaRunner {
    fn step(
        &mut self,
        copies: &[BlockCopy],
        chunks: &[SeqChunk<'_>],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        if !copies.is_empty() {
            // Whole blocks are copied; slots past `slots` are rewritten before they are read.
            let mut mapping: HashMap<usize, Vec<usize>> = HashMap::new();
            for c in copies {
                mapping
                    .entry(c.src as usize)
                    .or_default()
                    .push(c.dst as usize);
            }
            copy_blocks(
                self.k_cache.iter_mut().collect(),
                self.v_cache.iter_mut().collect(),
                &mapping,
            )?;
        }
        self.forward(chunks)
    }
}

impl CudaRunner {
    fn forward(&self, chunks: &[SeqChunk<'_>]) -> Result<Vec<Vec<f32>>, EngineError> {
        let m = &self.model;
        let s = &m.shape;
        let (nh, nkv, hd) = (s.num_heads, s.num_kv_heads, s.head_dim);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let dev = &m.device;
        let bs = self.block_size;

        let mut ids: Vec<u32> = Vec::new();
        let mut positions: Vec<u32> = Vec::new();
        let mut slots: Vec<i64> = Vec::new();
        let mut rows: Vec<u32> = Vec::new();
        let mut plans = Vec::with_capacity(chunks.len());
        let mut decode_tables: Vec<&[u32]> = Vec::new();
        let mut decode_lens: Vec<u32> = Vec::new();
        // Each decode's row among the step's tokens.
        let mut decode_tokens: Vec<u32> = Vec::new();
        for c in chunks {
            c.check(m.max_positions, s.vocab_size)?;
            let end = c.start_pos + c.tokens.len();
            let first = ids.len();
            rows.extend(c.logit_rows(first).map(|r| r as u32));
            for (t, &id) in c.tokens.iter().enumerate() {
                let pos = c.start_pos + t;
                ids.push(id);
                positions.push(pos as u32);
                let block = c.block_table[pos / bs] as usize;
                slots.push((block * bs + pos % bs) as i64);
            }
            let decode_row = (c.tokens.len() == 1).then(|| {
                decode_tables.push(c.block_table);
                decode_lens.push(end as u32);
                decode_tokens.push(first as u32);
                decode_lens.len() - 1
            });
            plans.push(ChunkPlan {
                first_token: first,
                num_tokens: c.tokens.len(),
                start_pos: c.start_pos,
                decode_row,
            });
        }
        let n = ids.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let ids_t = Tensor::from_vec(ids, n, dev)?;
        let pos_t = Tensor::from_vec(positions, n, dev)?;
        let slots_t = Tensor::from_vec(slots, n, dev)?;
        let cos = m.cos.index_select(&pos_t, 0)?.contiguous()?;
        let sin = m.sin.index_select(&pos_t, 0)?.contiguous()?;
        // The decode batch's block tables, padded to the longest.
        let decode = if decode_lens.is_empty() {
            None
        } else {
            let width = decode_tables.iter().map(|t| t.len()).max().unwrap_or(0);
            let mut table = vec![0u32; decode_tables.len() * width];
            for (row, t) in table.chunks_mut(width).zip(&decode_tables) {
                row[..t.len()].copy_from_slice(t);
            }
            let (count, max_len) = (decode_lens.len(), decode_lens.iter().max().copied());
            Some((
                Tensor::from_vec(table, (count, width), dev)?,
                Tensor::from_vec(decode_lens, count, dev)?,
                max_len.unwrap_or(0) as usize,
            ))
        };
        let decode_count = decode_tokens.len();
        let decode_index = Tensor::from_vec(decode_tokens, decode_count, dev)?;
        // What the gathered path needs of each chunk that takes it in some layer, made once
        // per step rather than once per layer: its block table, lengths and masks.
        let mut windows: Vec<Option<usize>> = Vec::new();
        for w in &s.layer_windows {
            if !windows.contains(w) {
                windows.push(*w);
            }
        }
        let any_window = windows.iter().any(Option::is_some);
        let contexts = plans
            .iter()
            .zip(chunks)
            .map(|(p, c)| {
                let gathered = p.decode_row.is_none() || !self.paged || any_window;
                gathered
                    .then(|| self.context(c.block_table, p.start_pos, p.num_tokens, &windows))
                    .transpose()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;

        let eps = s.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut x = m.embed.index_select(&ids_t, 0)?;
        for (li, layer) in m.layers.iter().enumerate() {
            let hidden = candle_nn::ops::rms_norm(&x, &layer.input_norm, eps)?;
            let qkv = layer.qkv.forward(&hidden)?;
            let mut q = qkv.narrow(1, 0, qd)?.reshape((n, nh, hd))?;
            let mut k = qkv.narrow(1, qd, kvd)?.reshape((n, nkv, hd))?;
            let v = qkv
                .narrow(1, qd + kvd, kvd)?
                .reshape((n, nkv, hd))?
                .contiguous()?;
            if let Some(w) = &layer.q_norm {
                q = candle_nn::ops::rms_norm(&q.contiguous()?, w, eps)?;
            }
            if let Some(w) = &layer.k_norm {
                k = candle_nn::ops::rms_norm(&k.contiguous()?, w, eps)?;
            }
            let q = rotate(&q, &cos, &sin)?;
            let k = rotate(&k, &cos, &sin)?;
            reshape_and_cache(
                &k,
                &v,
                None,
                None,
                &self.k_cache[li],
                &self.v_cache[li],
                &slots_t,
            )?;
            let window = s.layer_windows[li];
            let decoded = match (&decode, window) {
                (Some((table, lens, max_len)), None) if self.paged => Some(paged_attention(
                    &q.index_select(&decode_index, 0)?.contiguous()?,
                    None,
                    None,
                    &self.k_cache[li],
                    &self.v_cache[li],
                    table,
                    lens,
                    None,
                    *max_len,
                    scale,
                    1.0,
                    None,
                )?),
                _ => None,
            };
            let mut pieces = Vec::with_capacity(plans.len());
            for (plan, context) in plans.iter().zip(&contexts) {
                match (plan.decode_row, &decoded, context) {
                    (Some(row), Some(out), _) => pieces.push(out.narrow(0, row, 1)?),
                    (_, _, Some(context)) => pieces.push(self.dense_attention(
                        li,
                        &q.narrow(0, plan.first_token, plan.num_tokens)?,
                        context,
                        window,
                        scale,
                    )?),
                    (_, _, None) => {
                        return Err(EngineError::Internal(
                            "no gathered context for a chunk".into(),
                        ))
                    }
                }
            }
            let attn = Tensor::cat(&pieces, 0)?.reshape((n, qd))?;
            x = (x + layer.o.forward(&attn)?)?;
            let hidden = candle_nn::ops::rms_norm(&x, &layer.post_norm, eps)?;
            let gu = layer.gate_up.forward(&hidden)?;
            let inter = s.intermediate_size;
            let act =
                (candle_nn::ops::silu(&gu.narrow(1, 0, inter)?)? * gu.narrow(1, inter, inter)?)?;
            x = (x + layer.down.forward(&act)?)?;
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let row_count = rows.len();
        let rows_t = Tensor::from_vec(rows, row_count, dev)?;
        let picked = x.index_select(&rows_t, 0)?;
        let normed = candle_nn::ops::rms_norm(&picked, &m.norm, eps)?;
        let logits = m.lm_head.forward(&normed)?.to_dtype(DType::F32)?;
        Ok(logits.to_vec2::<f32>()?)
    }

    /// A chunk's context for the gathered path: its blocks, lengths, and a causal mask per
    /// distinct layer window (banded where the window is set).
    fn context(
        &self,
        block_table: &[u32],
        start_pos: usize,
        t: usize,
        windows: &[Option<usize>],
    ) -> candle_core::Result<Context> {
        let dev = &self.model.device;
        let ctx = start_pos + t;
        let blocks = ctx.div_ceil(self.block_size);
        let mut masks = Vec::with_capacity(windows.len());
        for &window in windows {
            let mut mask = vec![0f32; t * ctx];
            for (r, row) in mask.chunks_mut(ctx).enumerate() {
                let pos = start_pos + r;
                let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                for (j, m) in row.iter_mut().enumerate() {
                    if j > pos || j < lo {
                        *m = f32::NEG_INFINITY;
                    }
                }
            }
            masks.push((window, Tensor::from_vec(mask, (1, t, ctx), dev)?));
        }
        Ok(Context {
            len: ctx,
            table: Tensor::from_slice(&block_table[..blocks], (1, blocks), dev)?,
            cu_lens: Tensor::from_vec(vec![0u32, ctx as u32], 2, dev)?,
            masks,
        })
    }

    /// Attention of one chunk's queries `[t, heads, head_dim]` over its whole context, read
    /// back from the paged cache: causal, and banded for a windowed layer.
    fn dense_attention(
        &self,
        layer: usize,
        q: &Tensor,
        context: &Context,
        window: Option<usize>,
        scale: f32,
    ) -> candle_core::Result<Tensor> {
        let s = &self.model.shape;
        let (_, nh, hd) = q.dims3()?;
        let ctx = context.len;
        let (k, v) = gather_kv_cache(
            &self.k_cache[layer],
            &self.v_cache[layer],
            None,
            None,
            &context.table,
            &context.cu_lens,
            self.model.dtype,
        )?;
        // [ctx, kv_heads, hd] → [heads, ctx, hd], each KV head serving its group of queries.
        let group = nh / s.num_kv_heads;
        let expand = |x: Tensor| -> candle_core::Result<Tensor> {
            x.transpose(0, 1)?
                .unsqueeze(1)?
                .expand((s.num_kv_heads, group, ctx, hd))?
                .reshape((nh, ctx, hd))
        };
        let (k, v) = (expand(k)?, expand(v)?);
        let q = q.transpose(0, 1)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * f64::from(scale))?;
        let Some((_, mask)) = context.masks.iter().find(|(w, _)| *w == window) else {
            candle_core::bail!("no mask for window {window:?}");
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask)?)?
            .to_dtype(self.model.dtype)?;
        probs.matmul(&v.contiguous()?)?.transpose(0, 1)
    }
}

/// What the gathered path reads a chunk's context with (see `CudaRunner::context`).
struct Context {
    /// Positions in the context, this chunk's included.
    len: usize,
    table: Tensor,
    cu_lens: Tensor,
    masks: Vec<(Option<usize>, Tensor)>,
}

/// RoPE on `[tokens, heads, head_dim]` with per-token `cos`/`sin` rows `[tokens, head_dim / 2]`.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    // candle-nn's kernel takes [batch, heads, seq, dim]: one batch of all the step's tokens.
    let xt = x.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
    candle_nn::rotary_emb::rope(&xt, cos, sin)?
        .squeeze(0)?
        .transpose(0, 1)?
        .contiguous()
}

fn open_device(ordinal: usize) -> Result<Device, EngineError> {
    Device::new_cuda(ordinal).map_err(|e| {
        EngineError::load(format!(
            "cannot open CUDA device {ordinal}: {}",
            candle_message(&e)
        ))
    })
}
