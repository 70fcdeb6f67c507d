//! Blocked transposes for moving kernels between PyTorch's layout and the products' (tap-major): 8×8 tiles
//! through AVX registers where the CPU has them, the same loops on plain numbers elsewhere. Pure data
//! movement, so every path gives the same bits (tested against the element-by-element definition).

use candle_core::{DType, WithDType};

use super::shifted_conv::SharedMut;
use crate::nn::exact::{simd_level, Simd};

/// Rows and columns of one tile.
const TILE: usize = 8;

/// `dst[dst_rows[c] + r] = src[src_rows[r] + c]` for every r < `src_rows.len()`, c < `dst_rows.len()`: row r
/// of the source (numbers consecutive in c from `src_rows[r]`) becomes column r of the destination (rows
/// consecutive in r from `dst_rows[c]`). The offsets come as tables, built by the caller without a division.
/// A tile at a time: 8 source rows read, 8 destination rows written, each 8 numbers long.
///
/// # Safety
/// Every `dst_rows[c] + r` is inside the live buffer behind `dst`, and no other thread touches those
/// elements while this runs.
pub(super) unsafe fn transpose<T: WithDType>(src: &[T], src_rows: &[usize], dst: SharedMut<T>, dst_rows: &[usize]) {
    let avx = cfg!(target_arch = "x86_64") && T::DTYPE == DType::F32 && simd_level() != Simd::Portable;
    let (n_r, n_c) = (src_rows.len(), dst_rows.len());
    for &f in src_rows {
        assert!(f + n_c <= src.len(), "transpose: a source row runs past the end");
    }
    for r0 in (0..n_r).step_by(TILE) {
        let nr = TILE.min(n_r - r0);
        for c0 in (0..n_c).step_by(TILE) {
            let nc = TILE.min(n_c - c0);
            if avx && nr == TILE && nc == TILE {
                let from: [usize; TILE] = std::array::from_fn(|i| src_rows[r0 + i] + c0);
                let to: [usize; TILE] = std::array::from_fn(|j| dst_rows[c0 + j] + r0);
                // SAFETY: T is f32 (its DTYPE), the sources are inside `src` (asserted), the destinations are
                // the caller's promise, and the CPU has AVX (AVX2 or AVX-512F implies it). (A call per tile
                // measured 10 % faster than the tiles inlined into one loop compiled for AVX.)
                #[cfg(target_arch = "x86_64")]
                tile_avx(src.as_ptr().cast::<f32>(), &from, dst.at(0).cast::<f32>(), &to);
            } else {
                for r in r0..r0 + nr {
                    for (j, &v) in src[src_rows[r] + c0..][..nc].iter().enumerate() {
                        dst.write(dst_rows[c0 + j] + r, v);
                    }
                }
            }
        }
    }
}

/// One 8×8 tile of f32 through AVX registers, `dst[to[j] + i] = src[from[i] + j]`: the rows interleaved in
/// pairs, then pairs of pairs, then 128-bit halves (the classic 8×8 transpose).
///
/// # Safety
/// As [`transpose`], and the CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn tile_avx(src: *const f32, from: &[usize; TILE], dst: *mut f32, to: &[usize; TILE]) {
    use std::arch::x86_64::*;
    let r = [
        _mm256_loadu_ps(src.add(from[0])),
        _mm256_loadu_ps(src.add(from[1])),
        _mm256_loadu_ps(src.add(from[2])),
        _mm256_loadu_ps(src.add(from[3])),
        _mm256_loadu_ps(src.add(from[4])),
        _mm256_loadu_ps(src.add(from[5])),
        _mm256_loadu_ps(src.add(from[6])),
        _mm256_loadu_ps(src.add(from[7])),
    ];
    let t = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    ];
    let u = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    for j in 0..4 {
        _mm256_storeu_ps(dst.add(to[j]), _mm256_permute2f128_ps::<0x20>(u[j], u[j + 4]));
        _mm256_storeu_ps(dst.add(to[j + 4]), _mm256_permute2f128_ps::<0x31>(u[j], u[j + 4]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::exact::force_simd;

    /// Every element lands where the definition puts it, for sizes with and without whole tiles, rows and
    /// columns out of order, at every SIMD level, f32 and f64; elements outside the rows untouched.
    #[test]
    fn transpose_is_the_definition_at_every_level() {
        fn check<T: WithDType + std::fmt::Debug>(n_r: usize, n_c: usize) {
            let ld = n_c + 5; // source rows longer than the columns read
            let src: Vec<T> = (0..(n_r + 1) * ld).map(|i| T::from_f64(i as f64 + 0.5)).collect();
            let src_rows: Vec<usize> = (0..n_r).map(|r| (n_r - r) * ld + 1).collect(); // rows in reverse, offset
            let stride = n_r + 2; // destination rows longer than the source's row count
            let dst_rows: Vec<usize> = (0..n_c).map(|c| (n_c - 1 - c) * stride).collect();
            let mut dst = vec![T::from_f64(-1.0); n_c * stride];
            // SAFETY: dst_rows[c] + r < n_c · stride; single-threaded.
            unsafe { transpose(&src, &src_rows, SharedMut(dst.as_mut_ptr()), &dst_rows) };
            for c in 0..n_c {
                for r in 0..stride {
                    let got = dst[dst_rows[c] + r];
                    let want = if r < n_r {
                        src[src_rows[r] + c]
                    } else {
                        T::from_f64(-1.0)
                    };
                    assert_eq!(got, want, "r {r}, c {c} of {n_r} × {n_c}");
                }
            }
        }
        for level in [Simd::Portable, Simd::Avx2, Simd::Avx512] {
            force_simd(Some(level));
            for (n_r, n_c) in [(8, 8), (16, 24), (17, 29), (5, 3), (1, 64), (64, 1)] {
                check::<f32>(n_r, n_c);
                check::<f64>(n_r, n_c);
            }
        }
        force_simd(None);
    }
}
