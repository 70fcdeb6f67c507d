//! An f32 product for CPUs whose gemm runs its AVX2 kernel, with the right operand packed once and reused by
//! every call: the Winograd correlation multiplies each block of tiles by the same α kernel transforms
//! (the seed net's 256-channel layers at batch 64: 47 blocks × 8 products of 48 × 256 · 256 × 256 per call).
//! gemm reads that operand unpacked — 16 numbers of a row, then a row 1 KiB further, for every step of the
//! sum — and packs only the other; here it is laid out once per call as panels of 16 columns, each read
//! straight through. Measured alone (`48 × 256 · 256 × 256`, one thread, Zen 4 at AVX2): gemm 27–29 ms for
//! 47 × 8 products, this 22–23 ms, as fast as gemm's AVX-512 kernel on the same CPU.
//!
//! **gemm's bits.** Where gemm sums a product's whole depth in one block ([`super::binary_input::depth_block`]
//! says how it blocks a shape), each of its outputs is one multiply-add chain over the depth, in order, from
//! zero, written without being read (times `beta` = 1: the chain as it is). [`product`] makes the same
//! chain for every output — the register blocking only decides which chains run side by side — so it gives
//! gemm's bits exactly, and [`applies`] keeps it to those shapes. Tested bit for bit against gemm.

/// Columns per panel: two AVX2 vectors.
pub const WIDTH: usize = 16;

/// Rows of the left operand per step of the kernel: 6 × 2 accumulators, as gemm's AVX2 kernel.
const ROWS: usize = 6;

/// `count` matrices `[k, n]` (row-major, one after another, n a multiple of [`WIDTH`]) laid out as panels:
/// matrix i's panel q holds its columns `16q .. 16q + 16` of rows 0..k, row after row.
pub struct Panels {
    data: Vec<f32>,
    k: usize,
    n: usize,
}

impl Panels {
    /// Packs the matrices, in parallel over the panels.
    pub fn pack(matrices: &[f32], count: usize, k: usize, n: usize) -> Self {
        assert!(n.is_multiple_of(WIDTH) && matrices.len() == count * k * n);
        let per_panel = k * WIDTH;
        let panels = n / WIDTH;
        // SAFETY: each piece is one panel, every number of which the loop writes.
        let data = unsafe {
            super::par_build(count * n * k, per_panel, |i, piece| {
                let (mat, q) = (i / panels, i % panels);
                let src = &matrices[mat * k * n + q * WIDTH..];
                for (row, out) in piece.chunks_exact_mut(WIDTH).enumerate() {
                    for (o, &x) in out.iter_mut().zip(&src[row * n..row * n + WIDTH]) {
                        o.write(x);
                    }
                }
            })
        };
        Self { data, k, n }
    }

    /// How many matrices, and their shape `(k, n)`.
    pub fn shape(&self) -> (usize, usize, usize) {
        (
            self.data.len().checked_div(self.k * self.n).unwrap_or(0),
            self.k,
            self.n,
        )
    }
}

/// Whether [`product`] runs here and gives gemm's bits for `[m, k] · [k, n]` (row-major destination):
/// gemm runs its AVX2 kernel (below AVX-512, or a build without the `avx512` feature; at AVX-512 gemm's own
/// kernel is as fast), n is a multiple of [`WIDTH`], and gemm sums the whole depth in one block.
pub fn applies(m: usize, n: usize, k: usize) -> bool {
    use crate::nn::exact::{best_simd, Simd};
    #[cfg(target_arch = "x86_64")]
    let here = is_x86_feature_detected!("fma") && {
        #[cfg(test)]
        let level = tests::FORCED.get().unwrap_or(best_simd() == Simd::Avx2);
        #[cfg(not(test))]
        let level = best_simd() == Simd::Avx2;
        level
    };
    #[cfg(not(target_arch = "x86_64"))]
    let here = false;
    here && n.is_multiple_of(WIDTH) && sums_as_gemm(m, n, k)
}

/// gemm sums `[m, k] · [k, n]` into a row-major destination (it sees `[n, k] · [k, m]`) in one block of the
/// whole depth, by its general kernels.
fn sums_as_gemm(m: usize, n: usize, k: usize) -> bool {
    super::binary_input::depth_block(n, m, k).is_some_and(|depth| depth >= k)
}

/// `dst = lhs · panels[matrix]`: `lhs` `[m, k]` and `dst` `[m, n]` row-major; `dst` is written, not read.
///
/// # Safety
/// The CPU has AVX2 and FMA; `dst` points to `m · n` writable numbers that nothing else touches meanwhile;
/// `lhs` holds at least `m · k` numbers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn product(m: usize, lhs: &[f32], panels: &Panels, matrix: usize, dst: *mut f32) {
    let (k, n) = (panels.k, panels.n);
    assert!(lhs.len() >= m * k);
    let mat = &panels.data[matrix * k * n..][..k * n];
    for (q, panel) in mat.chunks_exact(k * WIDTH).enumerate() {
        let mut r0 = 0;
        while r0 < m {
            let rows = (m - r0).min(ROWS);
            let (lhs, dst) = (&lhs[r0 * k..], dst.add(r0 * n + q * WIDTH));
            // SAFETY: the rows r0 .. r0 + rows of lhs and dst lie inside them (the caller's promise).
            unsafe {
                match rows {
                    6 => rows_times_panel::<6>(lhs, k, panel, dst, n),
                    5 => rows_times_panel::<5>(lhs, k, panel, dst, n),
                    4 => rows_times_panel::<4>(lhs, k, panel, dst, n),
                    3 => rows_times_panel::<3>(lhs, k, panel, dst, n),
                    2 => rows_times_panel::<2>(lhs, k, panel, dst, n),
                    _ => rows_times_panel::<1>(lhs, k, panel, dst, n),
                }
            }
            r0 += rows;
        }
    }
}

/// R rows of `lhs` (`k` apart) times one panel, into R rows of 16 at `dst` (`n` apart): for each output, one
/// multiply-add chain over the depth in order, from zero.
///
/// # Safety
/// As [`product`], for these R rows and this panel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn rows_times_panel<const R: usize>(lhs: &[f32], k: usize, panel: &[f32], dst: *mut f32, n: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let (l, p) = (lhs.as_ptr(), panel.as_ptr());
    for d in 0..k {
        // SAFETY: d < k: row d of the panel (16 numbers) and column d of the R rows lie inside them.
        unsafe {
            let (a0, a1) = (_mm256_loadu_ps(p.add(d * WIDTH)), _mm256_loadu_ps(p.add(d * WIDTH + 8)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let b = _mm256_broadcast_ss(&*l.add(r * k + d));
                acc[0] = _mm256_fmadd_ps(a0, b, acc[0]);
                acc[1] = _mm256_fmadd_ps(a1, b, acc[1]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row r of the 16 destination columns (the caller's promise).
        unsafe {
            _mm256_storeu_ps(dst.add(r * n), acc[0]);
            _mm256_storeu_ps(dst.add(r * n + 8), acc[1]);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
pub(super) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    thread_local! {
        /// Whether [`applies`] lets the product run at any SIMD level (`Some(true)`: the callers' tests on
        /// AVX-512 machines too), at none (`Some(false)`: gemm's own products), or as in use (`None`).
        pub static FORCED: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
    }

    /// Runs `f` with the products forced on or off on this thread (see [`FORCED`]).
    pub fn forced<R>(on: bool, f: impl FnOnce() -> R) -> R {
        crate::nn::kernels::overriding(&FORCED, on, f)
    }

    /// Bit for bit gemm's product (whichever kernel gemm runs on this machine: each sums one chain per
    /// output where [`sums_as_gemm`]), for every row count of the last step, depths up to gemm's one block,
    /// several panels and matrices; and against a naive f64 loop within rounding.
    #[test]
    fn products_are_gemms_bits() {
        if !is_x86_feature_detected!("fma") {
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut checked = 0;
        for &(m, k, n) in &[
            (48usize, 256usize, 256usize),
            (47, 256, 256),
            (7, 128, 128),
            (13, 512, 32),
            (30, 3, 64),
            (96, 64, 128),
            (5, 300, 48),
        ] {
            if !sums_as_gemm(m, n, k) {
                continue;
            }
            let count = 2;
            let lhs: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let rhs: Vec<f32> = (0..count * k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let panels = Panels::pack(&rhs, count, k, n);
            for i in 0..count {
                let mut want = vec![f32::NAN; m * n];
                // SAFETY: the sizes as stated; gemm writes every element of `want`.
                unsafe {
                    super::super::shifted_conv::matmul_on(
                        gemm::Parallelism::None,
                        (m, n, k),
                        want.as_mut_ptr(),
                        (n, 1),
                        false,
                        lhs.as_ptr(),
                        (k, 1),
                        rhs[i * k * n..].as_ptr(),
                        (n, 1),
                    )
                };
                let mut got = vec![f32::NAN; m * n];
                // SAFETY: FMA checked above; the sizes as stated.
                unsafe { product(m, &lhs, &panels, i, got.as_mut_ptr()) };
                let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{m} × {k} · {k} × {n}, matrix {i}: not gemm's bits");
                for (r, row) in got.chunks_exact(n).enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        let exact: f64 = (0..k)
                            .map(|d| f64::from(lhs[r * k + d]) * f64::from(rhs[i * k * n + d * n + c]))
                            .sum();
                        assert!(
                            (f64::from(v) - exact).abs() < 1e-5 * k as f64,
                            "{r}, {c}: {v} vs {exact}"
                        );
                    }
                }
                checked += 1;
            }
        }
        assert!(checked >= 10, "only {checked} shapes sum as gemm here");
    }
}
