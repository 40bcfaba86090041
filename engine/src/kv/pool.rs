//! The CPU storage of the paged KV cache: one K and one V tensor per layer.
//!
//! V is stored by token, `[num_blocks, block_size, kv_heads, head_dim]`, so one token's
//! value vector is contiguous. K is stored transposed within each block,
//! `[num_blocks, kv_heads, head_dim, block_size]`, so one vector load reads one dimension of
//! up to 16 consecutive keys: attention computes 16 scores at once with no horizontal sums.

/// Shape of one layer's K (or V) storage: blocks of `block_size` tokens of `kv_heads ×
/// head_dim` floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub num_blocks: usize,
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvLayout {
    /// Floats one token occupies in one layer's K (or V).
    pub fn token_stride(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Offset of the value vector of `head` for the token at `slot` of `block`.
    #[inline]
    pub fn value_index(&self, block: usize, slot: usize, head: usize) -> usize {
        ((block * self.block_size + slot) * self.kv_heads + head) * self.head_dim
    }

    /// Offset of dimension 0 of `head`'s key for the token at `slot` of `block`; dimension
    /// `d` is `d × block_size` further on.
    #[inline]
    pub fn key_index(&self, block: usize, slot: usize, head: usize) -> usize {
        (block * self.kv_heads + head) * self.head_dim * self.block_size + slot
    }
}

/// K and V for every layer. Blocks are owned by sequences through their block tables; the
/// pool itself only stores floats.
pub struct KvPool {
    layout: KvLayout,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvPool {
    pub fn new(num_layers: usize, layout: KvLayout) -> Self {
        let len = layout.num_blocks * layout.block_size * layout.token_stride();
        // Zeroed allocations are lazily backed by the OS, so an unused pool costs no memory.
        Self {
            layout,
            k: (0..num_layers).map(|_| vec![0.0; len]).collect(),
            v: (0..num_layers).map(|_| vec![0.0; len]).collect(),
        }
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// Stores one token's K and V (each `kv_heads * head_dim` floats) at `pos`.
    pub fn write(&mut self, layer: usize, block_table: &[u32], pos: usize, k: &[f32], v: &[f32]) {
        let l = self.layout;
        let (block, slot) = (block_table[pos / l.block_size] as usize, pos % l.block_size);
        let keys = &mut self.k[layer];
        for (head, k) in k.chunks_exact(l.head_dim).enumerate() {
            let base = l.key_index(block, slot, head);
            for (d, &x) in k.iter().enumerate() {
                keys[base + d * l.block_size] = x;
            }
        }
        let off = l.value_index(block, slot, 0);
        self.v[layer][off..off + l.token_stride()].copy_from_slice(v);
    }

    /// Copies the first `slots` token slots of block `src` into block `dst` in every layer
    /// (copy-on-write of a shared, partly filled block).
    pub fn copy_block_prefix(&mut self, src: u32, dst: u32, slots: usize) {
        let l = self.layout;
        let (src, dst) = (src as usize, dst as usize);
        let (vs, vd) = (l.value_index(src, 0, 0), l.value_index(dst, 0, 0));
        for layer in &mut self.v {
            layer.copy_within(vs..vs + slots * l.token_stride(), vd);
        }
        // Each (head, dimension) row of a K block holds one value per slot.
        let (ks, kd) = (l.key_index(src, 0, 0), l.key_index(dst, 0, 0));
        for layer in &mut self.k {
            for row in 0..l.kv_heads * l.head_dim {
                let at = row * l.block_size;
                layer.copy_within(ks + at..ks + at + slots, kd + at);
            }
        }
    }

    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }
}
