//! The widest vector instruction set the kernels may use: what the CPU has, capped by the
//! operator's `ROSETTA_MAX_CPU_ISA` (`avx512`, `avx2` or `portable`), as oneDNN's
//! `ONEDNN_MAX_CPU_ISA` caps its own. The AVX2 kernels compute the AVX-512 kernels' bits, as
//! do the portable integer ones (each path is tested against the others), so a cap to AVX2
//! changes speed, never a result; the portable f32 and bf16 products round after each
//! multiply (a CPU without FMA), so they agree to rounding. It serves hosts where AVX-512
//! slows the clock, and measuring the AVX2 kernels on a CPU that has AVX-512.
//!
//! Each kernel's dispatch asks [`has!`] for its level and the exact features it is compiled
//! for.

use std::sync::OnceLock;

/// The environment variable that caps the instruction set.
pub const ENV: &str = "ROSETTA_MAX_CPU_ISA";

/// Levels of vector code, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, no explicit vector code.
    Portable,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512 and its extensions (VNNI, BF16).
    Avx512,
}

impl std::str::FromStr for Isa {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "avx512" => Ok(Isa::Avx512),
            "avx2" => Ok(Isa::Avx2),
            "portable" => Ok(Isa::Portable),
            other => Err(format!(
                "{ENV}={other:?} is not an instruction set: use avx512, avx2 or portable"
            )),
        }
    }
}

/// The operator's cap: none when the variable is unset or empty, an error when it names no
/// level (for the server to refuse at startup).
pub fn cap_from_env() -> Result<Option<Isa>, String> {
    match std::env::var(ENV) {
        Ok(v) if !v.trim().is_empty() => v.parse().map(Some),
        _ => Ok(None),
    }
}

/// Whether kernels of `level` may run. Read once: the dispatch asks on every call. An
/// unreadable cap (which the server refuses before loading a model) caps nothing.
#[inline]
pub fn allows(level: Isa) -> bool {
    static CAP: OnceLock<Isa> = OnceLock::new();
    level <= *CAP.get_or_init(|| cap_from_env().ok().flatten().unwrap_or(Isa::Avx512))
}

/// Whether kernels of `level` may run here: no cap forbids them and the CPU has every named
/// feature, e.g. `has!(Avx2: "avx2", "fma")`. Every dispatch asks this one question, so no
/// kernel can skip the operator's cap.
#[cfg(target_arch = "x86_64")]
macro_rules! has {
    ($level:ident: $($feature:tt),+ $(,)?) => {
        $crate::cpu::allows($crate::cpu::Isa::$level)
            $(&& std::is_x86_feature_detected!($feature))+
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use has;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(" AVX2 ".parse::<Isa>(), Ok(Isa::Avx2));
        assert_eq!("avx512".parse::<Isa>(), Ok(Isa::Avx512));
        assert_eq!("portable".parse::<Isa>(), Ok(Isa::Portable));
        let err = "sse4".parse::<Isa>().unwrap_err();
        assert!(err.contains(ENV) && err.contains("avx2"), "{err}");
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
    }
}
