//! The CPU storage of the paged KV cache: one K and one V tensor per layer.
//!
//! V is stored by head within each block, `[num_blocks, kv_heads, block_size, head_dim]`, so
//! the values one attention task reads from a block (one KV head's) are one contiguous run.
//! K is stored transposed within each block, `[num_blocks, kv_heads, head_dim, block_size]`,
//! so one vector load reads one dimension of up to 16 consecutive keys: attention computes 16
//! scores at once with no horizontal sums.

use half::bf16;
use rayon::prelude::*;

use super::element::{Fp8, KvDtype, KvElement};
use crate::memory::{Buffer, SharedMut};
use crate::EngineError;

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
    F32(Buffer<f32>),
    Bf16(Buffer<bf16>),
    Fp8(Buffer<Fp8>),
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

    /// Where tokens go in the cache, in row order: for each `(block table, position)`, the
    /// table's block for that position and the slot in it. Looked up and checked once per
    /// step, since every layer writes the same slots; an error if a table has no block, or
    /// one outside the pool, for its position.
    pub fn token_slots<'a>(
        &self,
        rows: impl IntoIterator<Item = (&'a [u32], usize)>,
    ) -> Result<TokenSlots, EngineError> {
        let l = self.layout;
        let slots = rows
            .into_iter()
            .map(|(table, pos)| match table.get(pos / l.block_size) {
                Some(&block) if (block as usize) < l.num_blocks => {
                    Ok((block as usize, pos % l.block_size))
                }
                _ => Err(EngineError::Internal(format!(
                    "no cache block for position {pos}"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut sorted = slots.clone();
        sorted.sort_unstable();
        let distinct = sorted.windows(2).all(|w| w[0] != w[1]);
        Ok(TokenSlots {
            layout: l,
            slots,
            distinct,
        })
    }

    /// Stores many tokens' K and V at once: row `r` of `k` and of `v` (each `kv_heads ×
    /// head_dim` floats) goes to the `r`-th of `slots`. Each token's key scatters over its
    /// block's rows (K is transposed), one cache line missed per two dimensions, so a step
    /// of 32 decodes spent tens of microseconds a layer here on one core while the others
    /// waited; rows are spread over the threads when no two name the same slot (they never
    /// should; if they do, the rows are written in order, the last winning, as one by one).
    pub fn write_rows(&mut self, layer: usize, slots: &TokenSlots, k: &[f32], v: &[f32]) {
        // The slots were checked against this pool's layout.
        assert_eq!(slots.layout, self.layout, "slots of another pool");
        let l = self.layout;
        match (&mut self.k[layer], &mut self.v[layer]) {
            (Store::F32(ks), Store::F32(vs)) => write_rows(l, ks, vs, slots, k, v),
            (Store::Bf16(ks), Store::Bf16(vs)) => write_rows(l, ks, vs, slots, k, v),
            (Store::Fp8(ks), Store::Fp8(vs)) => write_rows(l, ks, vs, slots, k, v),
            _ => unreachable!("K and V share one element type"),
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
    write_slot(l, keys, values, block, slot, k, v);
}

fn write_slot<T: KvElement>(
    l: KvLayout,
    keys: &mut [T],
    values: &mut [T],
    block: usize,
    slot: usize,
    k: &[f32],
    v: &[f32],
) {
    scatter(
        l,
        block,
        slot,
        k,
        v,
        |i, x| keys[i] = x,
        |i, x| values[i] = x,
    );
}

/// Where one token's K and V go: `put_key(index, value)` for each element of its key
/// (transposed within the block: a row of `block_size` per dimension), `put_value` for each
/// of its value (`head_dim` in a row), in the store's element type.
#[inline(always)]
fn scatter<T: KvElement>(
    l: KvLayout,
    block: usize,
    slot: usize,
    k: &[f32],
    v: &[f32],
    mut put_key: impl FnMut(usize, T),
    mut put_value: impl FnMut(usize, T),
) {
    for (head, k) in k.chunks_exact(l.head_dim).enumerate() {
        let base = l.key_index(block, slot, head);
        for (d, &x) in k.iter().enumerate() {
            put_key(base + d * l.block_size, T::from_f32(x));
        }
    }
    for (head, v) in v.chunks_exact(l.head_dim).enumerate() {
        let off = l.value_index(block, slot, head);
        for (i, &x) in v.iter().enumerate() {
            put_value(off + i, T::from_f32(x));
        }
    }
}

/// Rows a thread takes at least when token writes are spread over the threads.
const WRITE_ROWS_PER_TASK: usize = 4;

fn write_rows<T: KvElement>(
    l: KvLayout,
    keys: &mut [T],
    values: &mut [T],
    slots: &TokenSlots,
    k: &[f32],
    v: &[f32],
) {
    let stride = l.token_stride().max(1);
    let rows = &slots.slots;
    assert!(k.len() == rows.len() * l.token_stride() && v.len() == k.len());
    if !slots.distinct || rows.len() < 2 * WRITE_ROWS_PER_TASK {
        for ((&(block, slot), k), v) in rows.iter().zip(k.chunks(stride)).zip(v.chunks(stride)) {
            write_slot(l, keys, values, block, slot, k, v);
        }
        return;
    }
    assert!(keys.len() >= l.num_blocks * l.block_size * stride && values.len() == keys.len());
    let (kp, vp) = (SharedMut(keys.as_mut_ptr()), SharedMut(values.as_mut_ptr()));
    rows.par_iter()
        .zip(k.par_chunks(stride))
        .zip(v.par_chunks(stride))
        .with_min_len(WRITE_ROWS_PER_TASK)
        .for_each(|((&(block, slot), k), v)| {
            let (kp, vp) = (&kp, &vp);
            // Safety (both writes): in bounds (`token_slots` checked each block and slot
            // against this layout); no other row writes this slot's elements (the slots are
            // distinct), and nothing reads the store during the loop (`&mut` to it is held).
            scatter(
                l,
                block,
                slot,
                k,
                v,
                |i, x| unsafe { *kp.0.add(i) = x },
                |i, x| unsafe { *vp.0.add(i) = x },
            );
        });
}

/// A step's cache slots, one `(block, slot)` per row, from [`KvPool::token_slots`].
pub struct TokenSlots {
    /// The layout the slots were checked against.
    layout: KvLayout,
    slots: Vec<(usize, usize)>,
    /// No two rows name one slot, so the rows can be written on every thread.
    distinct: bool,
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

    /// Many tokens written at once, spread over the threads, leave the cache as writing them
    /// one by one does: decodes in blocks of their own, a prefill filling one block after
    /// another, and rows naming one slot twice (the last wins).
    #[test]
    fn rows_written_at_once_match_rows_written_one_by_one() {
        let l = KvLayout {
            num_blocks: 40,
            block_size: 16,
            kv_heads: 2,
            head_dim: 8,
        };
        let decodes: Vec<(usize, usize)> = (0..32).map(|i| (39 - i, (i * 7) % 16)).collect();
        let prefill: Vec<(usize, usize)> = (0..40).map(|p| (3 + p / 16, p % 16)).collect();
        let twice = vec![
            (5, 1),
            (6, 2),
            (5, 1),
            (7, 0),
            (8, 0),
            (9, 0),
            (10, 0),
            (11, 0),
            (12, 0),
        ];
        for dtype in EVERY_DTYPE {
            for slots in [&decodes, &prefill, &twice] {
                // Values every element type holds exactly.
                let rows: Vec<f32> = (0..slots.len() * 16).map(|i| (i % 13) as f32).collect();
                // Position `slot` of a one-block table: that block, that slot.
                let tables: Vec<[u32; 1]> = slots.iter().map(|&(b, _)| [b as u32]).collect();
                let rows_at = || tables.iter().zip(slots).map(|(t, &(_, s))| (&t[..], s));
                let mut at_once = KvPool::with_dtype(2, l, dtype);
                let checked = at_once.token_slots(rows_at()).unwrap();
                at_once.write_rows(1, &checked, &rows, &rows);
                let mut one_by_one = KvPool::with_dtype(2, l, dtype);
                for ((table, slot), row) in rows_at().zip(rows.chunks(16)) {
                    one_by_one.write(1, table, slot, row, row);
                }
                assert_eq!(
                    floats(at_once.layer(1)),
                    floats(one_by_one.layer(1)),
                    "{dtype:?}"
                );
                assert_eq!(
                    floats(at_once.layer(0)),
                    floats(one_by_one.layer(0)),
                    "{dtype:?}"
                );
            }
        }
    }

    /// A position its block table has no block for, or whose block is outside the pool, is
    /// an error, not a write out of bounds.
    #[test]
    fn a_position_without_a_block_in_the_pool_is_an_error() {
        let l = KvLayout {
            num_blocks: 4,
            block_size: 16,
            kv_heads: 1,
            head_dim: 8,
        };
        let pool = KvPool::new(1, l);
        let table = [3u32, 1];
        assert!(pool.token_slots([(&table[..], 31)]).is_ok());
        for (table, pos) in [(&table[..], 32), (&[4u32][..], 0), (&[][..], 0)] {
            let err = pool.token_slots([(table, pos)]).err();
            assert_eq!(
                err,
                Some(EngineError::Internal(format!(
                    "no cache block for position {pos}"
                )))
            );
        }
    }

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
