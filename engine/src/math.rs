//! Elementwise functions of the forward pass, written so that scalar and vector code give
//! the same bits: libm's `expf` is a call per element, and has no vector twin to agree with.

/// e^x for x ≤ 0 (softmax's shifted scores, SiLU's e^−|g|), within a few ulp. Below −87 it
/// returns e^−87.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    // Adding 1.5 × 2^23 rounds to an integer, left in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    // ln 2 split so that n × LN2_HI is exact (Cody and Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    let t = x.mul_add(std::f32::consts::LOG2_E, SHIFTER);
    let n = t - SHIFTER;
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    // e^r on |r| ≤ ln 2 / 2 (Cephes' expf polynomial).
    let p = 1.987_569_1e-4f32
        .mul_add(r, 1.398_199_9e-3)
        .mul_add(r, 8.333_452e-3)
        .mul_add(r, 4.166_579_6e-2)
        .mul_add(r, 0.166_666_65)
        .mul_add(r, 0.5);
    let e = p.mul_add(r * r, r) + 1.0;
    // 2^n: n + 127 into the exponent field (n ≥ −126, so it stays a normal number).
    e * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

/// `silu(g) × u`, with σ(g) taken from e^−|g| so the exponential never overflows.
#[inline(always)]
fn silu_times(g: f32, u: f32) -> f32 {
    let e = exp_nonpositive(-g.abs());
    let sigmoid = if g >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    };
    g * sigmoid * u
}

/// The gated SiLU of a SwiGLU MLP: rows of `gate_up` are `[gate | up]` (`2 × inter` wide);
/// `out` gets `silu(gate) × up`, `inter` wide.
pub(crate) fn silu_gate(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    use rayon::prelude::*;
    let inter = inter.max(1);
    // Rows are independent: a large batch (a prefill chunk) is split across threads.
    if out.len() >= 1 << 15 {
        out.par_chunks_mut(inter)
            .zip(gate_up.par_chunks(2 * inter))
            .for_each(|(o, gu)| silu_row(gu, o));
    } else {
        for (o, gu) in out.chunks_mut(inter).zip(gate_up.chunks(2 * inter)) {
            silu_row(gu, o);
        }
    }
}

/// Compiled for the widest vectors the CPU has; every path computes the same operations per
/// element, so the same bits.
fn silu_row(gate_up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::has!(Avx512: "avx512f") {
            // Safety: the CPU has the features the function is compiled for.
            return unsafe { silu_row_avx512(gate_up, out) };
        }
        if crate::cpu::has!(Avx2: "avx2", "fma") {
            // Safety: as above.
            return unsafe { silu_row_avx2(gate_up, out) };
        }
    }
    silu_row_portable(gate_up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn silu_row_avx512(gate_up: &[f32], out: &mut [f32]) {
    silu_row_portable(gate_up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_row_avx2(gate_up: &[f32], out: &mut [f32]) {
    silu_row_portable(gate_up, out)
}

#[inline(always)]
fn silu_row_portable(gate_up: &[f32], out: &mut [f32]) {
    let (gate, up) = gate_up.split_at(out.len());
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu_times(g, u);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_libm() {
        for i in 0..=100_000 {
            let x = -90.0 * i as f32 / 100_000.0;
            let (got, want) = (exp_nonpositive(x), x.max(-87.0).exp());
            assert!(
                (got - want).abs() <= 4.0 * f32::EPSILON * want,
                "{x}: {got} vs {want}"
            );
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    #[test]
    fn silu_matches_its_definition_and_every_path_agrees() {
        let inter = 1000;
        let gate_up: Vec<f32> = (0..2 * inter)
            .map(|i| ((i * 7919) % 2001) as f32 / 20.0 - 50.0)
            .collect();
        let mut out = vec![0.0; inter];
        silu_gate(&gate_up, inter, &mut out);
        for (i, &o) in out.iter().enumerate() {
            let (g, u) = (gate_up[i] as f64, gate_up[inter + i] as f64);
            let want = g / (1.0 + (-g).exp()) * u;
            assert!(
                (o as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{g}: {o} vs {want}"
            );
        }
        let mut portable = vec![0.0; inter];
        silu_row_portable(&gate_up, &mut portable);
        assert_eq!(out, portable);
    }
}
