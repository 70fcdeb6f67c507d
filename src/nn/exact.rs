//! Exact arithmetic for the codec: network outputs that come out bit for bit the same on every machine, with
//! any thread count, batch size or SIMD level, so that a decoder recomputes exactly the probabilities its
//! encoder used (Ballé et al. 2019, "Integer networks for data compression", explain why that matters).
//!
//! Three things can make f32 results differ between runs of the same program:
//! - the order of a sum (gemm blocks a product by size, threads and the SIMD width it picks at run time);
//! - fused multiply-adds (one rounding instead of two) where a kernel uses them on some CPUs only;
//! - the platform's maths library (`exp` differs between libcs, and glibc picks an FMA variant by CPU).
//!
//! So in [`Arithmetic::Exact`] every output element is `bias + Σ_k w_k·t_k` summed in increasing k, one
//! rounded multiply and one rounded add per term (Rust never contracts `a * b + c` into an FMA, nor reorders
//! float sums), each row on its own (a batch is any number of independent rows), and exponentials are
//! computed in plain f32 arithmetic ([`exp`]) or by `libm`, a pure-Rust port of musl's maths: the same code
//! and the same bits everywhere. SIMD only runs
//! several output elements side by side, each with the same operations in the same order, so the portable
//! build, AVX2 and AVX-512 agree to the bit (tested, with [`force_simd`] to pick the level).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// How a stepped network computes: the default fast path (gemm, the platform's `exp`), or the codec's exact
/// path (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arithmetic {
    #[default]
    Fast,
    Exact,
}

impl Arithmetic {
    /// The gated unit over rows of 2C numbers, `[R][2C]` → `[R][C]`, in this arithmetic.
    pub fn gate_rows(self, x: &[f32], c: usize) -> Vec<f32> {
        match self {
            Arithmetic::Fast => super::step::gate_rows(x, c),
            Arithmetic::Exact => gate_rows(x, c),
        }
    }
}

/// The SIMD level the exact kernel runs at; every level gives the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    /// What the compiler emits for the baseline target (SSE2 on x86-64), no run-time dispatch.
    Portable,
    /// The same loops compiled for AVX2 (x86-64 only).
    Avx2,
    /// The same loops compiled for AVX-512F (x86-64 only).
    Avx512,
}

/// 0: pick the best the CPU has; otherwise 1 + the forced level.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// Forces the exact kernel's SIMD level for the whole process (`None`: the best the CPU has). For tests and
/// benchmarks: the results do not change, only the speed. A level the CPU lacks falls back to `Portable`.
pub fn force_simd(level: Option<Simd>) {
    let v = match level {
        None => 0,
        Some(Simd::Portable) => 1,
        Some(Simd::Avx2) => 2,
        Some(Simd::Avx512) => 3,
    };
    FORCED.store(v, Ordering::Relaxed);
}

/// The level the exact kernel runs at now: the one forced by [`force_simd`], else by the environment variable
/// `ARMORY_SIMD` (`portable`, `avx2` or `avx512`), else the best the CPU has (see [`best_simd`]).
pub fn simd_level() -> Simd {
    let wanted = match FORCED.load(Ordering::Relaxed) {
        1 => return Simd::Portable,
        2 => Simd::Avx2,
        3 => Simd::Avx512,
        _ => from_env().unwrap_or_else(best_simd),
    };
    if supports(wanted) {
        wanted
    } else {
        Simd::Portable
    }
}

fn from_env() -> Option<Simd> {
    static ENV: OnceLock<Option<Simd>> = OnceLock::new();
    *ENV.get_or_init(|| match std::env::var("ARMORY_SIMD").ok()?.as_str() {
        "portable" => Some(Simd::Portable),
        "avx2" => Some(Simd::Avx2),
        "avx512" => Some(Simd::Avx512),
        _ => None,
    })
}

/// The best level the CPU has; AVX-512 only with the `avx512` feature (without it the whole build is held
/// to AVX2, as an AVX2 machine would run it) — the level gemm's kernels run at too.
pub fn best_simd() -> Simd {
    if cfg!(feature = "avx512") && supports(Simd::Avx512) {
        Simd::Avx512
    } else if supports(Simd::Avx2) {
        Simd::Avx2
    } else {
        Simd::Portable
    }
}

/// Whether this CPU can run `level`.
pub fn supports(level: Simd) -> bool {
    match level {
        Simd::Portable => true,
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => is_x86_feature_detected!("avx2"),
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => is_x86_feature_detected!("avx512f"),
        #[cfg(not(target_arch = "x86_64"))]
        _ => false,
    }
}

/// The portable tile: output columns computed side by side (16 SSE registers of 4 lanes: 4 × 8 sums), and rows
/// sharing each load of the taps. Any tile gives the same bits (each element has its own sum).
const BLOCK: usize = 8;
const ROWS: usize = 4;

/// bias `[n]` + window `[m, k]` · taps `[k, n]` → `[m, n]`, every element summed in increasing k from the
/// bias, with one rounding per multiply and per add. Zero window entries are skipped (their terms would add
/// ±0, which changes nothing but the sign of an exact zero sum; skipping depends only on the data, so the
/// encoder and the decoder skip alike).
pub fn matmul_bias(window: &[f32], taps: &[f32], bias: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    assert!(
        window.len() >= m * k && taps.len() >= k * n && bias.len() >= n,
        "matmul_bias: short operands"
    );
    let mut out = vec![0f32; m * n];
    match simd_level() {
        Simd::Portable => kernel(window, taps, bias, &mut out, m, n, k),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: simd_level() only returns a level the CPU supports.
        Simd::Avx2 => unsafe { kernel_avx2(window, taps, bias, &mut out, m, n, k) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Simd::Avx512 => unsafe { kernel_avx512(window, taps, bias, &mut out, m, n, k) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => kernel(window, taps, bias, &mut out, m, n, k),
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn kernel_avx2(window: &[f32], taps: &[f32], bias: &[f32], out: &mut [f32], m: usize, n: usize, k: usize) {
    // 16 registers of 8 lanes: a tile of 4 rows × 16 columns (8 registers of sums).
    tiled::<16, 4>(window, taps, bias, out, m, n, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512(window: &[f32], taps: &[f32], bias: &[f32], out: &mut [f32], m: usize, n: usize, k: usize) {
    // 32 registers: a tile of 8 rows × 32 columns (16 registers of sums).
    tiled::<32, 8>(window, taps, bias, out, m, n, k)
}

/// The one definition of the exact product, inlined into each SIMD level's copy. A tile of [`ROWS`] rows ×
/// [`BLOCK`] output columns keeps its sums in registers while k runs, so each block of taps is loaded once
/// per tile; leftover rows and columns take the plain loop. Every element sums the same terms in the same
/// order either way.
#[inline(always)]
fn kernel(window: &[f32], taps: &[f32], bias: &[f32], out: &mut [f32], m: usize, n: usize, k: usize) {
    tiled::<BLOCK, ROWS>(window, taps, bias, out, m, n, k)
}

/// [`kernel`] with a `ROWS` × `BLOCK` tile (the tile only changes the speed).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tiled<const BLOCK: usize, const ROWS: usize>(
    window: &[f32],
    taps: &[f32],
    bias: &[f32],
    out: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
) {
    let mut start = 0;
    while start < n {
        let width = BLOCK.min(n - start);
        let mut r = 0;
        if width == BLOCK {
            while r + ROWS <= m {
                let mut acc = [[0f32; BLOCK]; ROWS];
                for a in acc.iter_mut() {
                    a.copy_from_slice(&bias[start..start + BLOCK]);
                }
                for kk in 0..k {
                    let t: &[f32; BLOCK] = taps[kk * n + start..kk * n + start + BLOCK].try_into().unwrap();
                    for (i, a) in acc.iter_mut().enumerate() {
                        let w = window[(r + i) * k + kk];
                        if w == 0.0 {
                            continue;
                        }
                        for j in 0..BLOCK {
                            a[j] += w * t[j];
                        }
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    out[(r + i) * n + start..(r + i) * n + start + BLOCK].copy_from_slice(a);
                }
                r += ROWS;
            }
        }
        for r in r..m {
            let row = &window[r * k..(r + 1) * k];
            let dst = &mut out[r * n + start..r * n + start + width];
            dst.copy_from_slice(&bias[start..start + width]);
            for (kk, &w) in row.iter().enumerate() {
                if w == 0.0 {
                    continue;
                }
                let t = &taps[kk * n + start..kk * n + start + width];
                for j in 0..width {
                    dst[j] += w * t[j];
                }
            }
        }
        start += width;
    }
}

/// e^x in plain f32 arithmetic, the same bits everywhere and vectorisable (Cephes' `expf`): x = n·ln 2 + r
/// with n rounded to the nearest integer by the 1.5·2^23 trick and ln 2 split in two (Cody–Waite), a
/// degree-7 polynomial in r, and 2^n built from its exponent bits. x is clamped to [−87, 88] first, so the
/// result is a normal float (e^−87 ≈ 1.6e−38 for anything below); a NaN stays NaN. About 1 ulp from e^x.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer (|x·log2 e| < 2^22)
    let nan = x.is_nan();
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + SHIFT;
    let n = shifted - SHIFT;
    let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
    let z = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65)
        * r
        + 0.5)
        * z
        + r
        + 1.0;
    // 2^n from its exponent bits. n (in −126..=127) is read from `shifted`'s low bits (1.5·2^23 + n, one unit
    // per ulp) rather than by `n as i32`: Rust's saturating conversion does not vectorise (a compare and
    // conversion per lane, which made the gate loops compute-bound); the same integer either way.
    let pow2n = f32::from_bits(shifted.to_bits().wrapping_sub(SHIFT.to_bits()).wrapping_add(127) << 23);
    if nan {
        x
    } else {
        p * pow2n
    }
}

/// σ(x) = 1 / (1 + e^(−x)) with [`exp`].
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// tanh(a) · σ(b), the gated unit, in the training op's form (tanh(a) = 2σ(2a) − 1) with [`sigmoid`].
#[inline(always)]
pub fn gate_value(a: f32, b: f32) -> f32 {
    (2.0 * sigmoid(2.0 * a) - 1.0) * sigmoid(b)
}

/// The gated unit over rows of 2C numbers, `[R][2C]` → `[R][C]`, with [`gate_value`], at the SIMD level of
/// [`simd_level`] (every level gives the same bits: each element has its own operations).
pub fn gate_rows(x: &[f32], c: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len() / 2];
    match simd_level() {
        Simd::Portable => gates(x, c, &mut out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: simd_level() only returns a level the CPU supports.
        Simd::Avx2 => unsafe { gates_avx2(x, c, &mut out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Simd::Avx512 => unsafe { gates_avx512(x, c, &mut out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => gates(x, c, &mut out),
    }
    out
}

#[inline(always)]
fn gates(x: &[f32], c: usize, out: &mut [f32]) {
    for (o, row) in out.chunks_mut(c.max(1)).zip(x.chunks(2 * c.max(1))) {
        let (a, b) = row.split_at(c);
        for j in 0..c {
            o[j] = gate_value(a[j], b[j]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gates_avx2(x: &[f32], c: usize, out: &mut [f32]) {
    gates(x, c, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gates_avx512(x: &[f32], c: usize, out: &mut [f32]) {
    gates(x, c, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The plainest possible loop, in f32, summing from the bias in increasing k.
    fn reference(window: &[f32], taps: &[f32], bias: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let mut acc = bias[c];
                for kk in 0..k {
                    let w = window[r * k + kk];
                    if w != 0.0 {
                        acc += w * taps[kk * n + c];
                    }
                }
                out[r * n + c] = acc;
            }
        }
        out
    }

    /// Every SIMD level gives the reference loop's bits, for shapes with and without a partial block, with
    /// zeros in the window; one row alone gives the same bits as inside a batch.
    #[test]
    fn every_simd_level_matches_the_reference_loop_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 17, 5),
            (5, 64, 40),
            (4, 100, 300),
            (2, 32, 0),
            (9, 70, 33),
        ] {
            let mut window: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            window.iter_mut().step_by(3).for_each(|v| *v = 0.0);
            let taps: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let want = reference(&window, &taps, &bias, m, n, k);
            for level in [Simd::Portable, Simd::Avx2, Simd::Avx512] {
                let mut out = vec![0f32; m * n];
                match level {
                    Simd::Portable => kernel(&window, &taps, &bias, &mut out, m, n, k),
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx2 if supports(level) => unsafe { kernel_avx2(&window, &taps, &bias, &mut out, m, n, k) },
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx512 if supports(level) => unsafe {
                        kernel_avx512(&window, &taps, &bias, &mut out, m, n, k)
                    },
                    _ => continue,
                }
                let same = out.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{level:?} differs from the reference at {m}×{n}×{k}");
            }
            if m > 1 {
                let one = matmul_bias(&window[k..2 * k], &taps, &bias, 1, n, k);
                assert_eq!(
                    one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want[n..2 * n].iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
            }
        }
    }

    /// The exact exponential is within 2 ulp-ish of the library's over its range, saturates outside it, and
    /// keeps NaN.
    #[test]
    fn exact_exp_is_exp() {
        for i in -19_700..20_000 {
            let x = i as f32 * 0.0044;
            let (ours, std) = (exp(x), x.exp());
            assert!((ours - std).abs() <= 2.5e-7 * std, "{x}: {ours} vs {std}");
        }
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(-1000.0) > 0.0 && exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    /// 2^n read from the shifted sum's bits is `n as i32`'s: the same e^x, bit for bit, as the conversion gave
    /// (a copy of the function with it), over every 61st bit pattern of f32 — NaNs, infinities, subnormals,
    /// both signs — and every float in the unclamped range's neighbourhood at a step of 2^−12.
    #[test]
    fn exponent_bits_are_the_conversion() {
        fn exp_by_conversion(x: f32) -> f32 {
            const SHIFT: f32 = 12_582_912.0;
            let nan = x.is_nan();
            let x = x.clamp(-87.0, 88.0);
            let n = (x * std::f32::consts::LOG2_E + SHIFT) - SHIFT;
            let r = (x - n * 0.693_359_4) - n * -2.121_944_4e-4;
            let z = r * r;
            let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
                + 0.166_666_65)
                * r
                + 0.5)
                * z
                + r
                + 1.0;
            let pow2n = f32::from_bits(((n as i32 + 127) as u32) << 23);
            if nan {
                x
            } else {
                p * pow2n
            }
        }
        let same = |x: f32| {
            let (a, b) = (exp(x), exp_by_conversion(x));
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{x}: {a} vs {b}"
            );
        };
        (0..u32::MAX).step_by(61).for_each(|bits| same(f32::from_bits(bits)));
        (-90 * 4096..90 * 4096).for_each(|i| same(i as f32 / 4096.0));
    }

    /// The gates give the same bits at every SIMD level.
    #[test]
    fn gates_are_the_same_at_every_simd_level() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let c = 37;
        let x: Vec<f32> = (0..5 * 2 * c).map(|_| rng.random_range(-12.0f32..12.0)).collect();
        let mut want = vec![0f32; 5 * c];
        gates(&x, c, &mut want);
        for level in [Simd::Avx2, Simd::Avx512] {
            if !supports(level) {
                continue;
            }
            let mut out = vec![0f32; 5 * c];
            match level {
                #[cfg(target_arch = "x86_64")]
                Simd::Avx2 => unsafe { gates_avx2(&x, c, &mut out) },
                #[cfg(target_arch = "x86_64")]
                Simd::Avx512 => unsafe { gates_avx512(&x, c, &mut out) },
                _ => continue,
            }
            let same = out.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{level:?}");
        }
    }

    /// The exact gate agrees with the fast one to f32 precision (only the exponential's last bits may differ).
    #[test]
    fn exact_gate_is_the_gate() {
        for i in -40..40 {
            let (a, b) = (i as f32 * 0.37, 1.5 - i as f32 * 0.21);
            let fast = crate::nn::activation::gate_value(a, b);
            assert!((gate_value(a, b) - fast).abs() < 1e-6, "{a} {b}");
        }
    }
}
