//! What a KV cache element is stored as: f32 (exact), or bf16 (half the memory and half the
//! bytes attention reads per step; K and V rounded to nearest even, widened exactly on load).

use half::bf16;

/// The element type of the CPU KV cache (`engine.kv_cache_dtype`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvDtype {
    #[default]
    F32,
    Bf16,
}

impl KvDtype {
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::Bf16 => 2,
        }
    }
}

/// A KV cache element: stored from f32, read back as f32.
pub trait KvElement: Copy + Default + Send + Sync + 'static {
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// Loads the lanes of `mask` from 16 consecutive elements as f32 (the others are 0 and
    /// not read).
    ///
    /// # Safety
    /// The masked lanes are readable; the CPU has AVX-512F, AVX-512BW and AVX-512VL.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(mask: u16, ptr: *const Self) -> std::arch::x86_64::__m512;
}

impl KvElement for f32 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(mask: u16, ptr: *const Self) -> std::arch::x86_64::__m512 {
        // Safety: passed on from the caller.
        unsafe { std::arch::x86_64::_mm512_maskz_loadu_ps(mask, ptr) }
    }
}

impl KvElement for bf16 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(mask: u16, ptr: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // bf16 is the top half of an f32: widen to 32 bits and shift into place (exact).
        // Safety: passed on from the caller.
        unsafe {
            let halves = if mask == u16::MAX {
                _mm256_loadu_si256(ptr as *const __m256i)
            } else {
                _mm256_maskz_loadu_epi16(mask, ptr as *const i16)
            };
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
        }
    }
}
