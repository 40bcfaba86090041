//! What a KV cache element is stored as: f32 (exact), bf16 (half the memory and half the
//! bytes attention reads per step; K and V rounded to nearest even, widened exactly on load),
//! or fp8 (a quarter: OCP FP8 E4M3, as vLLM's `kv_cache_dtype: fp8`).

use half::bf16;

/// The element type of the CPU KV cache (`engine.kv_cache_dtype`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvDtype {
    #[default]
    F32,
    Bf16,
    /// [`Fp8`]: E4M3 with no scale, a quarter of f32's memory and lossy (see its doc).
    Fp8,
}

impl KvDtype {
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::Bf16 => 2,
            KvDtype::Fp8 => 1,
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
    /// Loads 8 consecutive elements as f32.
    ///
    /// # Safety
    /// The 8 elements are readable; the CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256;
}

/// Loads elements `0..len` (`len` ≤ 8) of `ptr` as f32, the other lanes 0 and not read:
/// [`KvElement::load8`] when all 8 are there, else widened one by one (the same values).
///
/// # Safety
/// The `len` elements are readable; the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn load_up_to8<T: KvElement>(
    len: usize,
    ptr: *const T,
) -> std::arch::x86_64::__m256 {
    if len == 8 {
        // Safety: passed on from the caller.
        return unsafe { T::load8(ptr) };
    }
    let mut lanes = [0.0f32; 8];
    for (i, lane) in lanes.iter_mut().enumerate().take(len) {
        // Safety: element i < len is readable.
        *lane = unsafe { *ptr.add(i) }.to_f32();
    }
    // Safety: the CPU has AVX (implied by AVX2); `lanes` holds 8 floats.
    unsafe { std::arch::x86_64::_mm256_loadu_ps(lanes.as_ptr()) }
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

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256 {
        // Safety: passed on from the caller.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(ptr) }
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

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // As `load16`, 8 lanes.
        // Safety: passed on from the caller.
        unsafe {
            let halves = _mm_loadu_si128(ptr as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves)))
        }
    }
}

/// An OCP FP8 E4M3 ("E4M3FN") number: a sign, 4 exponent bits (bias 7) and 3 mantissa bits;
/// finite from -448 to 448, no infinities. The KV cache's `fp8` element: written with
/// round-to-nearest-even and saturation to ±448 (CUDA's `__nv_cvt_float_to_fp8` with
/// `__NV_SATFINITE`, and vLLM's fp8 cache with its default scale of 1), read back exactly.
///
/// Not the `float8` crate's type: the cache reads 16 at a time with a few AVX-512 integer
/// operations ([`KvElement::load16`]), and the scalar reading here is the same arithmetic, so
/// the vector and portable attention paths agree bit for bit. The crate checks it in tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Fp8(pub u8);

impl Fp8 {
    /// 2^120: moves an E4M3 exponent (bias 7) placed in an f32's exponent field (bias 127).
    const REBIAS: f32 = f32::from_bits((120 + 127) << 23);
    /// Sign, then E4M3's 4 exponent and 3 mantissa bits, where f32 keeps them (see `to_f32`).
    const FIELDS: u32 = 0x87FF_FFFF;
}

impl KvElement for Fp8 {
    fn from_f32(x: f32) -> Self {
        let sign = ((x.to_bits() >> 24) & 0x80) as u8;
        let a = x.abs();
        let code = if a.is_nan() {
            0x7F
        } else if a >= 464.0 {
            // 464 is halfway between 448 and 480 (the NaN code), and rounds to the even 448.
            0x7E
        } else if a < 1.0 / 64.0 {
            // Subnormals: multiples of 2^-9, 0 to 8 (8 is the smallest normal, 2^-6).
            (a * 512.0).round_ties_even() as u8
        } else {
            // Round the f32 mantissa to 3 bits, to nearest even (a carry moves the exponent
            // up, as it should), then take E4M3's exponent bias instead of f32's.
            let b = a.to_bits();
            let rounded = (b + 0x7_FFFF + ((b >> 20) & 1)) >> 20;
            (rounded - (120 << 3)) as u8
        };
        Fp8(sign | code)
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        // Sign-extended and shifted by 20, the sign lands in bit 31 (and 27..=30, cleared)
        // and the exponent and mantissa in f32's low exponent and top mantissa bits; times
        // 2^120 that is the value, subnormals included. The NaN code reads as 480.
        let bits = ((self.0 as i8 as i32) << 20) as u32 & Self::FIELDS;
        f32::from_bits(bits) * Self::REBIAS
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(mask: u16, ptr: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // `to_f32`, 16 lanes at a time.
        // Safety: passed on from the caller.
        unsafe {
            let bytes = if mask == u16::MAX {
                _mm_loadu_si128(ptr as *const __m128i)
            } else {
                _mm_maskz_loadu_epi8(mask, ptr as *const i8)
            };
            let bits = _mm512_and_si512(
                _mm512_slli_epi32::<20>(_mm512_cvtepi8_epi32(bytes)),
                _mm512_set1_epi32(Self::FIELDS as i32),
            );
            _mm512_mul_ps(_mm512_castsi512_ps(bits), _mm512_set1_ps(Self::REBIAS))
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // As `load16`, 8 lanes.
        // Safety: passed on from the caller.
        unsafe {
            let bytes = _mm_loadl_epi64(ptr as *const __m128i);
            let bits = _mm256_and_si256(
                _mm256_slli_epi32::<20>(_mm256_cvtepi8_epi32(bytes)),
                _mm256_set1_epi32(Self::FIELDS as i32),
            );
            _mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(Self::REBIAS))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code reads back as the `float8` crate reads it (but the NaN code), and every f32
    /// tried is written as the crate writes it: round to nearest even, saturating.
    #[test]
    fn fp8_matches_the_float8_crate() {
        for code in 0..=255u8 {
            let ours = Fp8(code).to_f32();
            let theirs = float8::F8E4M3::from_bits(code).to_f32();
            if code & 0x7F == 0x7F {
                assert!(theirs.is_nan());
                assert_eq!(ours.abs(), 480.0);
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "code {code:#x}");
            }
        }
        let mut tried = 0;
        // Every f32 bit pattern with a stride that hits all exponents and many mantissas,
        // plus the values around each code's rounding boundaries.
        let boundaries = (0..=0x7Eu8).flat_map(|c| {
            let (lo, hi) = (Fp8(c).to_f32(), Fp8(c + 1).to_f32());
            let mid = (lo + hi) / 2.0;
            [
                mid,
                f32::from_bits(mid.to_bits() - 1),
                f32::from_bits(mid.to_bits() + 1),
                lo,
            ]
        });
        let sweep = (0..u32::MAX).step_by(9973).map(f32::from_bits);
        for x in boundaries
            .chain(sweep)
            .chain([448.0, 463.9, 464.0, 470.0, 1e9, f32::INFINITY])
        {
            for x in [x, -x] {
                let ours = Fp8::from_f32(x).0;
                let theirs = float8::F8E4M3::from_f32(x).to_bits();
                assert_eq!(ours, theirs, "{x:e}");
                tried += 1;
            }
        }
        assert!(tried > 800_000);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fp8_vector_reads_match_scalar_reads() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")) {
            return;
        }
        let codes: Vec<Fp8> = (0..=255u8).map(Fp8).collect();
        for chunk in codes.chunks_exact(16) {
            for mask in [u16::MAX, 0x00FF, 0x8001] {
                let mut out = [0.0f32; 16];
                // Safety: the CPU has the features; 16 codes are readable.
                unsafe {
                    let v = Fp8::load16(mask, chunk.as_ptr());
                    std::arch::x86_64::_mm512_storeu_ps(out.as_mut_ptr(), v);
                }
                for (i, (o, c)) in out.iter().zip(chunk).enumerate() {
                    let want = if mask >> i & 1 == 1 { c.to_f32() } else { 0.0 };
                    assert_eq!(o.to_bits(), want.to_bits(), "{:#x} mask {mask:#x}", c.0);
                }
            }
        }
    }
}
