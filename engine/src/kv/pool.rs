//! The CPU storage of the paged KV cache: one K and one V tensor per layer.
//!
//! V is stored by head within each block, `[num_blocks, kv_heads, block_size, head_dim]`, so
//! the values one attention task reads from a block (one KV head's) are one contiguous run.
//! K is stored transposed within each block, `[num_blocks, kv_heads, head_dim, block_size]`,
//! so one vector load reads one dimension of up to 16 consecutive keys: attention computes 16
//! scores at once with no horizontal sums.

use half::bf16;

use super::element::{Fp8, KvDtype, KvElement};

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

    /// Offset of the value vector of `head` for the token at `slot` of `block`; the next
    /// slot's follows it.
    #[inline]
    pub fn value_index(&self, block: usize, slot: usize, head: usize) -> usize {
        ((block * self.kv_heads + head) * self.block_size + slot) * self.head_dim
    }

    /// Offset of dimension 0 of `head`'s key for the token at `slot` of `block`; dimension
    /// `d` is `d × block_size` further on.
    #[inline]
    pub fn key_index(&self, block: usize, slot: usize, head: usize) -> usize {
        (block * self.kv_heads + head) * self.head_dim * self.block_size + slot
    }
}

/// One layer's K and V storage, in the cache's element type.
enum Store {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    Fp8(Vec<Fp8>),
}

impl Store {
    fn new(dtype: KvDtype, len: usize) -> Self {
        // Zeroed allocations are lazily backed by the OS, so an unused pool costs no memory.
        match dtype {
            KvDtype::F32 => Store::F32(crate::memory::zeroed(len)),
            KvDtype::Bf16 => Store::Bf16(crate::memory::zeroed(len)),
            KvDtype::Fp8 => Store::Fp8(crate::memory::zeroed(len)),
        }
    }

    fn copy_within(&mut self, from: std::ops::Range<usize>, to: usize) {
        match self {
            Store::F32(v) => v.copy_within(from, to),
            Store::Bf16(v) => v.copy_within(from, to),
            Store::Fp8(v) => v.copy_within(from, to),
        }
    }
}

/// One layer's K and V as attention reads them.
pub enum KvLayer<'a> {
    F32 { k: &'a [f32], v: &'a [f32] },
    Bf16 { k: &'a [bf16], v: &'a [bf16] },
    Fp8 { k: &'a [Fp8], v: &'a [Fp8] },
}

/// K and V for every layer. Blocks are owned by sequences through their block tables; the
/// pool itself only stores values.
pub struct KvPool {
    layout: KvLayout,
    k: Vec<Store>,
    v: Vec<Store>,
}

impl KvPool {
    pub fn new(num_layers: usize, layout: KvLayout) -> Self {
        Self::with_dtype(num_layers, layout, KvDtype::F32)
    }

    pub fn with_dtype(num_layers: usize, layout: KvLayout, dtype: KvDtype) -> Self {
        let len = layout.num_blocks * layout.block_size * layout.token_stride();
        Self {
            layout,
            k: (0..num_layers).map(|_| Store::new(dtype, len)).collect(),
            v: (0..num_layers).map(|_| Store::new(dtype, len)).collect(),
        }
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// Writes one element of every 4 KiB page, so the system commits (and zeroes) the whole
    /// cache now rather than on the first write to each page while serving. The elements
    /// written are zeros already: the contents do not change.
    pub fn prefault(&mut self) {
        fn touch<T: Copy + Default>(v: &mut [T]) {
            let step = (4096 / std::mem::size_of::<T>()).max(1);
            for i in (0..v.len()).step_by(step) {
                // Safety: `i` is in bounds; volatile so the store is not elided.
                unsafe { std::ptr::write_volatile(v.as_mut_ptr().add(i), T::default()) };
            }
        }
        for store in self.k.iter_mut().chain(self.v.iter_mut()) {
            match store {
                Store::F32(v) => touch(v),
                Store::Bf16(v) => touch(v),
                Store::Fp8(v) => touch(v),
            }
        }
    }

    /// Stores one token's K and V (each `kv_heads * head_dim` floats) at `pos`.
    pub fn write(&mut self, layer: usize, block_table: &[u32], pos: usize, k: &[f32], v: &[f32]) {
        match (&mut self.k[layer], &mut self.v[layer]) {
            (Store::F32(ks), Store::F32(vs)) => write(self.layout, ks, vs, block_table, pos, k, v),
            (Store::Bf16(ks), Store::Bf16(vs)) => {
                write(self.layout, ks, vs, block_table, pos, k, v)
            }
            (Store::Fp8(ks), Store::Fp8(vs)) => write(self.layout, ks, vs, block_table, pos, k, v),
            _ => unreachable!("K and V share one element type"),
        }
    }

    /// Copies the first `slots` token slots of block `src` into block `dst` in every layer
    /// (copy-on-write of a shared, partly filled block).
    pub fn copy_block_prefix(&mut self, src: u32, dst: u32, slots: usize) {
        let l = self.layout;
        let (src, dst) = (src as usize, dst as usize);
        for head in 0..l.kv_heads {
            let (vs, vd) = (l.value_index(src, 0, head), l.value_index(dst, 0, head));
            for layer in &mut self.v {
                layer.copy_within(vs..vs + slots * l.head_dim, vd);
            }
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

    pub fn layer(&self, layer: usize) -> KvLayer<'_> {
        match (&self.k[layer], &self.v[layer]) {
            (Store::F32(k), Store::F32(v)) => KvLayer::F32 { k, v },
            (Store::Bf16(k), Store::Bf16(v)) => KvLayer::Bf16 { k, v },
            (Store::Fp8(k), Store::Fp8(v)) => KvLayer::Fp8 { k, v },
            _ => unreachable!("K and V share one element type"),
        }
    }
}

fn write<T: KvElement>(
    l: KvLayout,
    keys: &mut [T],
    values: &mut [T],
    block_table: &[u32],
    pos: usize,
    k: &[f32],
    v: &[f32],
) {
    let (block, slot) = (block_table[pos / l.block_size] as usize, pos % l.block_size);
    for (head, k) in k.chunks_exact(l.head_dim).enumerate() {
        let base = l.key_index(block, slot, head);
        for (d, &x) in k.iter().enumerate() {
            keys[base + d * l.block_size] = T::from_f32(x);
        }
    }
    for (head, v) in v.chunks_exact(l.head_dim).enumerate() {
        let off = l.value_index(block, slot, head);
        for (dst, &x) in values[off..off + l.head_dim].iter_mut().zip(v) {
            *dst = T::from_f32(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Touching the cache commits it without changing it: still all zeros, then written and
    /// read back as usual.
    #[test]
    fn a_prefaulted_cache_is_unchanged_and_usable() {
        let l = KvLayout {
            num_blocks: 300,
            block_size: 16,
            kv_heads: 2,
            head_dim: 64,
        };
        for dtype in EVERY_DTYPE {
            let mut pool = KvPool::with_dtype(2, l, dtype);
            pool.prefault();
            // Values every element type holds exactly.
            let k: Vec<f32> = (0..128).map(|i| (i % 16) as f32).collect();
            pool.write(1, &[299], 3, &k, &k);
            let (k0, v0) = floats(pool.layer(0));
            assert!(k0.iter().chain(&v0).all(|&x| x == 0.0), "{dtype:?}");
            let at = l.value_index(299, 3, 1);
            assert_eq!(floats(pool.layer(1)).1[at + 5], 5.0, "{dtype:?}");
        }
    }

    const EVERY_DTYPE: [KvDtype; 3] = [KvDtype::F32, KvDtype::Bf16, KvDtype::Fp8];

    /// A layer's K and V as f32.
    fn floats(layer: KvLayer<'_>) -> (Vec<f32>, Vec<f32>) {
        fn widen<T: KvElement>(x: &[T]) -> Vec<f32> {
            x.iter().map(|e| e.to_f32()).collect()
        }
        match layer {
            KvLayer::F32 { k, v } => (widen(k), widen(v)),
            KvLayer::Bf16 { k, v } => (widen(k), widen(v)),
            KvLayer::Fp8 { k, v } => (widen(k), widen(v)),
        }
    }

    /// A copied block prefix holds the same keys and values as its source, in every element
    /// type, and the slots after it are untouched.
    #[test]
    fn copied_prefixes_read_back_in_every_element_type() {
        for dtype in EVERY_DTYPE {
            let l = KvLayout {
                num_blocks: 4,
                block_size: 8,
                kv_heads: 2,
                head_dim: 3,
            };
            let mut pool = KvPool::with_dtype(1, l, dtype);
            // Values every element type holds exactly (integers up to 16).
            let token = |p: usize, base: f32| -> Vec<f32> {
                (0..6).map(|i| base + ((p * 6 + i) % 8) as f32).collect()
            };
            for p in 0..8 {
                pool.write(0, &[2], p, &token(p, 1.0), &token(p, 8.0));
            }
            pool.copy_block_prefix(2, 0, 5);
            let (k, v) = floats(pool.layer(0));
            {
                for slot in 0..8 {
                    for head in 0..2 {
                        for d in 0..3 {
                            let (kd, vd) = (
                                k[l.key_index(0, slot, head) + d * l.block_size],
                                v[l.value_index(0, slot, head) + d],
                            );
                            let i = head * 3 + d;
                            if slot < 5 {
                                assert_eq!(kd, token(slot, 1.0)[i], "{dtype:?}");
                                assert_eq!(vd, token(slot, 8.0)[i], "{dtype:?}");
                            } else {
                                assert_eq!((kd, vd), (0.0, 0.0), "{dtype:?}");
                            }
                        }
                    }
                }
            }
        }
    }
}
