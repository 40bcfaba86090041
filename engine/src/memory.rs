//! Large buffers the forward pass streams through (weight matrices, the KV cache) asked to be
//! backed by huge pages. With the kernel's transparent huge pages on `madvise` (a common
//! default) they otherwise get 4 KiB pages, and every page of a stream costs a TLB miss (two
//! levels of page tables to walk in a virtual machine).

use std::sync::{Arc, Mutex};

/// Types whose all-zero bit pattern is the value zero.
///
/// # Safety
/// Implement only for such types: `zeroed` hands out zeroed memory as initialised values.
pub(crate) unsafe trait ZeroBits: Copy {}
// Safety: zero bits are 0.0, 0 and bf16 0.0.
unsafe impl ZeroBits for f32 {}
unsafe impl ZeroBits for half::bf16 {}
unsafe impl ZeroBits for i8 {}
unsafe impl ZeroBits for u8 {}
// Safety: the zero code of FP8 E4M3 is +0.0.
unsafe impl ZeroBits for crate::kv::Fp8 {}

/// Buffers from this size up get a mapping of their own, advised to use huge pages.
const HUGE: usize = 2 << 20;
/// Smaller buffers are carved, in order, out of mappings of this size, advised likewise: most
/// of a small model's matrices are below 2 MiB (the demo's largest per layer is 1.8 MB).
const CHUNK: usize = 32 << 20;
/// Where each carved buffer starts: a cache line.
const ALIGN: usize = 64;

/// A zeroed buffer of `len` values in memory advised to use huge pages before it is first
/// touched: from 2 MiB up an anonymous mapping of its own, below that a piece of a shared
/// one. Pages are backed only where first written (an unused KV cache costs no memory).
///
/// Memory from the allocator would not do: buffers below its mapping threshold (up to 32
/// MiB in glibc) come from heaps that earlier buffers already backed with 4 KiB pages, and
/// with the kernel's huge pages on `madvise` (a common default) the demo model's weights
/// got huge pages for 24 of their 136 MB (benchmarks/README.md).
pub(crate) fn zeroed<T: ZeroBits>(len: usize) -> Buffer<T> {
    let bytes = std::mem::size_of::<T>()
        .checked_mul(len)
        .expect("a buffer that fits in memory");
    let store = if bytes == 0 {
        None
    } else if bytes >= HUGE {
        mapping(bytes).map(|map| Backing::Mapped(map, 0))
    } else {
        carve(bytes)
    };
    let store = store.unwrap_or_else(|| {
        let mut heap = Vec::with_capacity(len);
        heap.resize(len, zero::<T>());
        Backing::Heap(heap)
    });
    Buffer {
        store,
        len,
        _values: std::marker::PhantomData,
    }
}

/// A fresh anonymous mapping of `bytes`, advised to use huge pages; none if the system
/// refuses one (the caller falls back to the heap).
fn mapping(bytes: usize) -> Option<Arc<memmap2::MmapRaw>> {
    let map = memmap2::MmapOptions::new().len(bytes).map_anon().ok()?;
    // A hint: where huge pages are off or unknown, nothing changes but speed.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Some(Arc::new(map.into()))
}

/// The shared mapping small buffers are being carved from, and how much of it is taken.
static CARVING: Mutex<Option<(Arc<memmap2::MmapRaw>, usize)>> = Mutex::new(None);

/// `bytes` (below `HUGE`) of the shared mapping, never handed out before (so still zero);
/// a new mapping when the current one is full. A full mapping is unmapped when the last
/// buffer carved from it is dropped; the space of one dropped earlier is not reused (at most
/// one 32 MiB mapping, the one being carved, outlives its buffers).
fn carve<T>(bytes: usize) -> Option<Backing<T>> {
    let mut carving = CARVING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let room = |c: &Option<(Arc<memmap2::MmapRaw>, usize)>| {
        c.as_ref()
            .is_some_and(|(map, used)| used + bytes <= map.len())
    };
    if !room(&carving) {
        *carving = Some((mapping(CHUNK)?, 0));
    }
    let (map, used) = carving.as_mut()?;
    let at = *used;
    *used = (at + bytes).next_multiple_of(ALIGN);
    Some(Backing::Mapped(map.clone(), at))
}

/// The value with all bits zero.
fn zero<T: ZeroBits>() -> T {
    // Safety: zero bits are a valid value of T (`ZeroBits`).
    unsafe { std::mem::zeroed() }
}

/// A fixed-length buffer of plain values from [`zeroed`]: a slice, in a mapping (its own or
/// a piece of a shared one) or on the heap.
pub(crate) struct Buffer<T> {
    store: Backing<T>,
    len: usize,
    _values: std::marker::PhantomData<T>,
}

enum Backing<T> {
    /// The buffer's bytes start this far into the mapping; no other buffer uses them.
    Mapped(Arc<memmap2::MmapRaw>, usize),
    Heap(Vec<T>),
}

impl<T: ZeroBits> std::ops::Deref for Buffer<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &self.store {
            // Safety: the buffer's `len × size_of::<T>()` bytes at `at` lie inside the
            // mapping, aligned for T (the mapping is page-aligned and `at` a multiple of 64),
            // and belong to this buffer alone; they started zeroed and are written only as
            // T, so every element is a valid T (`ZeroBits`).
            Backing::Mapped(map, at) => unsafe {
                std::slice::from_raw_parts(map.as_ptr().add(*at) as *const T, self.len)
            },
            Backing::Heap(v) => v,
        }
    }
}

impl<T: ZeroBits> std::ops::DerefMut for Buffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.store {
            // Safety: as in `deref`; `&mut self` makes the borrow unique, as no other buffer
            // shares these bytes.
            Backing::Mapped(map, at) => unsafe {
                std::slice::from_raw_parts_mut(map.as_mut_ptr().add(*at) as *mut T, self.len)
            },
            Backing::Heap(v) => v,
        }
    }
}

/// A buffer's base pointer shared by parallel tasks that each write their own elements of it
/// (a product's output tiles, a step's KV cache slots).
pub(crate) struct SharedMut<T>(pub(crate) *mut T);
// Safety: the tasks write disjoint elements, each user's contract (`Matrix::matmul`,
// `KvPool::write_rows`).
unsafe impl<T: Send> Sync for SharedMut<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers of every size come zeroed and hold what is written to them, each its own: many
    /// small ones (more than two shared mappings' worth, so carved from several), just below
    /// and above the size that gets its own mapping, written with patterns of their own, all
    /// read back intact.
    #[test]
    fn buffers_start_zeroed_and_never_overlap() {
        let mut buffers: Vec<Buffer<f32>> = Vec::new();
        // About 2.4 MB carved a round: two and a half shared mappings' worth in all.
        for round in 0..(2 * CHUNK / HUGE) {
            let f32s = HUGE / 4;
            for len in [0, 1, 63, 64, 65, 4096, 100_000 + round] {
                buffers.push(zeroed(len));
            }
            // Just below the size that gets a mapping of its own, and at or above it.
            buffers.push(zeroed(f32s - 1 - round % 3));
            buffers.push(zeroed(f32s + round % 3));
        }
        buffers.push(zeroed(HUGE));
        for (i, b) in buffers.iter_mut().enumerate() {
            assert!(b.iter().all(|&v| v == 0.0), "buffer {i} starts zeroed");
            for (j, v) in b.iter_mut().enumerate() {
                *v = (i * 7 + j % 5) as f32;
            }
        }
        for (i, b) in buffers.iter().enumerate() {
            assert!(
                b.iter()
                    .enumerate()
                    .all(|(j, &v)| v == (i * 7 + j % 5) as f32),
                "buffer {i} holds its own pattern"
            );
            assert_eq!(b.as_ptr() as usize % std::mem::align_of::<f32>(), 0);
        }
        // Dropping them all and taking more gives zeroed memory again.
        drop(buffers);
        let again: Buffer<u8> = zeroed(HUGE / 2);
        assert!(again.iter().all(|&v| v == 0));
    }
}
