//! The CPU storage of the paged KV cache: one K and one V tensor per layer.

/// Shape of one layer's K (or V) storage: `[num_blocks, block_size, kv_heads, head_dim]`.
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

    /// Offset of the token at `pos` of a sequence whose blocks are `block_table`.
    #[inline]
    pub fn slot_offset(&self, block_table: &[u32], pos: usize) -> usize {
        let block = block_table[pos / self.block_size] as usize;
        (block * self.block_size + pos % self.block_size) * self.token_stride()
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
        let off = self.layout.slot_offset(block_table, pos);
        let n = self.layout.token_stride();
        self.k[layer][off..off + n].copy_from_slice(k);
        self.v[layer][off..off + n].copy_from_slice(v);
    }

    /// Copies the first `slots` token slots of block `src` into block `dst` in every layer
    /// (copy-on-write of a shared, partly filled block).
    pub fn copy_block_prefix(&mut self, src: u32, dst: u32, slots: usize) {
        let stride = self.layout.token_stride();
        let block = self.layout.block_size * stride;
        let (s, d) = (src as usize * block, dst as usize * block);
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            layer.copy_within(s..s + slots * stride, d);
        }
    }

    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }
}
