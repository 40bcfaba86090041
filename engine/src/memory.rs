//! Large buffers the forward pass streams through (weight matrices, the KV cache) asked to be
//! backed by huge pages. With the kernel's transparent huge pages on `madvise` (a common
//! default) they otherwise get 4 KiB pages, and every page of a stream costs a TLB miss.

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

/// A zeroed buffer of `len` values, taken zeroed from the allocator (so its pages are only
/// backed when first written: an unused KV cache costs no memory) and advised to use huge
/// pages before it is first touched.
pub(crate) fn zeroed<T: ZeroBits>(len: usize) -> Vec<T> {
    let layout = std::alloc::Layout::array::<T>(len).expect("a buffer that fits in memory");
    if layout.size() == 0 {
        return Vec::new();
    }
    // Safety: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // Safety: allocated by the global allocator with this layout; zero bits are valid values
    // of T (`ZeroBits`), so all `len` elements are initialised.
    let v = unsafe { Vec::from_raw_parts(ptr, len, len) };
    advise_huge_pages(&v);
    v
}

/// Advises the kernel to back the whole 2 MiB pages inside `buf` with huge pages. A hint:
/// failure (an old kernel, huge pages off) changes nothing but speed.
pub(crate) fn advise_huge_pages<T>(buf: &[T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = buf.as_ptr() as usize;
        let end = start + std::mem::size_of_val(buf);
        let (first, last) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if last > first {
            // Safety: the range lies inside `buf`'s allocation; MADV_HUGEPAGE changes no
            // contents, only how the pages are backed.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// A buffer's base pointer shared by parallel tasks that each write their own elements of it
/// (a product's output tiles, a step's KV cache slots).
pub(crate) struct SharedMut<T>(pub(crate) *mut T);
// Safety: the tasks write disjoint elements, each user's contract (`Matrix::matmul`,
// `KvPool::write_rows`).
unsafe impl<T: Send> Sync for SharedMut<T> {}
