//! A convolution whose input is binary and sparse — a one-hot encoding (the first layer of every one-hot
//! model), a binary image: each output is a sum of the kernel's rows at the ones, and each weight gradient a
//! sum of output-gradient rows, so the products' multiply-adds by zero can be skipped. In the gated
//! PixelCNN's first layer (17 one-hot channels, a 4×7 vertical kernel) that is a fifth of the forward
//! pass's multiply-adds.
//!
//! The same bits as the products ([`super::shifted_conv`]): there, each output element is a multiply-add chain
//! over the product's depth in order, from zero, in blocks of gemm's depth (the blocks' sums, and the runs'
//! products, added in turn). With inputs of 0 and 1 the chain's steps are exact no-ops (a + 0·w = a for a
//! finite w: the chain never holds −0) and exact additions (a + 1·w = a + w), so adding the rows at the ones, in the same
//! order and blocks, gives the same sums. The forward pass keeps to runs of at most [`MAX_DEPTH`] inputs (one
//! block on any CPU); the weight gradient (depth: the rows) asks gemm's own blocking ([`depth_block`]). The
//! tests check both bit for bit against the products (gemm's AVX-512 kernels by default, its AVX2 ones
//! without the `avx512` feature).

use rayon::prelude::*;

use super::min_len;
use super::shifted_conv::{finish_pixel, Geometry, Run};
use crate::nn::exact::{simd_level, Simd};
use candle_core::WithDType;

/// A run's inputs at most: gemm sums up to 512 in one block whatever the cache (more would be split into
/// blocks added in turn, an order this path does not reproduce).
const MAX_DEPTH: usize = 512;

/// Take this path when at most one input in `SPARSE` is a one.
const SPARSE: usize = 4;

/// The ones of a binary input `[pixels, C_in]`: for each pixel, its channels holding a 1, in order.
pub(super) struct Ones {
    start: Vec<u32>, // pixel p's channels are channel[start[p]..start[p + 1]]
    channel: Vec<u32>,
}

impl Ones {
    /// `None` unless every value is 0 or 1 and few are 1. Gives up at the first other value, so a layer's
    /// usual (real-valued) input costs a look at its first few numbers.
    pub(super) fn of<T: WithDType>(x: &[T], c_in: usize) -> Option<Self> {
        #[cfg(test)]
        if tests::PRODUCTS_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        if c_in == 0 || x.len() / c_in > u32::MAX as usize {
            return None;
        }
        let (zero, one) = (T::zero(), T::from_f64(1.0));
        let mut ones = Self {
            start: Vec::with_capacity(x.len() / c_in + 1),
            channel: vec![],
        };
        for pixel in x.chunks_exact(c_in) {
            ones.start.push(ones.channel.len() as u32);
            for (ci, &v) in pixel.iter().enumerate() {
                if v == one {
                    ones.channel.push(ci as u32);
                } else if v != zero {
                    return None;
                }
            }
            if ones.channel.len() * SPARSE > x.len() {
                return None;
            }
        }
        ones.start.push(ones.channel.len() as u32);
        Some(ones)
    }

    fn at(&self, pixel: usize) -> &[u32] {
        &self.channel[self.start[pixel] as usize..self.start[pixel + 1] as usize]
    }
}

/// Whether the products of this geometry sum the way this path does: every run of at most [`MAX_DEPTH`]
/// inputs and none by Winograd (`winograd` says which would be), and a product large enough for gemm's
/// general kernels (its matrix–vector and tiny-product paths sum in other orders).
pub(super) fn applies(g: &Geometry, runs: &[Run], winograd: impl Fn(Run) -> bool) -> bool {
    let m = g.m();
    g.c_out >= 2 && m >= 2 && m * g.c_out > 256 && runs.iter().all(|&r| r.n * g.c_in <= MAX_DEPTH && !winograd(r))
}

/// The forward pass `[B, H, W, C_out]` from the ones of x, the kernel packed tap-major (`[N_k, C_in, C_out]`)
/// and the runs in the products' order; bias and activation as [`finish_pixel`] adds them.
pub(super) fn forward<T: WithDType>(
    ones: &Ones,
    packed: &[T],
    bias: &[T],
    g: &Geometry,
    runs: &[Run],
    slope: Option<T>,
) -> Vec<T> {
    let c_out = g.c_out;
    let plan = &g.plan;
    // Each run's taps, (dy, dx) in the padded image, in the run's order.
    let taps: Vec<Vec<(usize, usize)>> = runs
        .iter()
        .map(|r| {
            (r.k0..r.k0 + r.n)
                .map(|k| {
                    let t = plan.taps.iter().find(|t| t.k == k).expect("a run's weights are taps");
                    (t.dy, t.dx)
                })
                .collect()
        })
        .collect();
    let mut out = vec![T::zero(); g.b * g.h * g.w * c_out];
    let image = g.h * g.w * c_out;
    let job = Image {
        ones,
        packed,
        bias,
        g,
        runs,
        taps: &taps,
        slope,
    };
    out.par_chunks_mut(image)
        .with_min_len(min_len(image * 8))
        .enumerate()
        .for_each_with(vec![T::zero(); c_out], |acc, (b, out)| match simd_level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: simd_level() only returns a level the CPU supports.
            Simd::Avx512 => unsafe { job.sums_avx512(b, out, acc) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Simd::Avx2 => unsafe { job.sums_avx2(b, out, acc) },
            _ => job.sums(b, out, acc),
        });
    out
}

/// What every image's sums read.
struct Image<'a, T> {
    ones: &'a Ones,
    packed: &'a [T],
    bias: &'a [T],
    g: &'a Geometry,
    runs: &'a [Run],
    taps: &'a [Vec<(usize, usize)>],
    slope: Option<T>,
}

impl<T: WithDType> Image<'_, T> {
    /// Image b's outputs `[H, W, C_out]`, `acc` a buffer of C_out.
    #[inline(always)]
    fn sums(&self, b: usize, out: &mut [T], acc: &mut [T]) {
        let (g, c_in, c_out) = (self.g, self.g.c_in, self.g.c_out);
        for (p, px) in out.chunks_exact_mut(c_out).enumerate() {
            let (y, x) = (p / g.w, p % g.w);
            for (i, (run, taps)) in self.runs.iter().zip(self.taps).enumerate() {
                acc.fill(T::zero());
                for (j, &(dy, dx)) in taps.iter().enumerate() {
                    // The input pixel this tap reads; outside the image the padding's zeros.
                    let (Some(sy), Some(sx)) = (
                        (y + dy).checked_sub(g.plan.pad_top),
                        (x + dx).checked_sub(g.plan.pad_left),
                    ) else {
                        continue;
                    };
                    if sy >= g.h || sx >= g.w {
                        continue;
                    }
                    for &ci in self.ones.at((b * g.h + sy) * g.w + sx) {
                        let row = &self.packed[((run.k0 + j) * c_in + ci as usize) * c_out..][..c_out];
                        acc.iter_mut().zip(row).for_each(|(a, &w)| *a += w);
                    }
                }
                if i == 0 {
                    px.copy_from_slice(acc);
                } else {
                    px.iter_mut().zip(acc.iter()).for_each(|(o, &a)| *o += a);
                }
            }
            finish_pixel(px, self.bias, self.slope);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn sums_avx2(&self, b: usize, out: &mut [T], acc: &mut [T]) {
        self.sums(b, out, acc)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn sums_avx512(&self, b: usize, out: &mut [T], acc: &mut [T]) {
        self.sums(b, out, acc)
    }
}

/// The depth gemm sums an f32 product of (m × k) · (k × n) in, as its kernels for this CPU block it
/// (`m`, `n` as gemm sees them: transposed when the destination is row-major); `None` where gemm would take
/// a path summing otherwise (a matrix–vector or tiny product) or a kernel this does not know.
pub(super) fn depth_block(m: usize, n: usize, k: usize) -> Option<usize> {
    // (MR, NR) of gemm-f32's microkernels: AVX-512 4 × 16 rows by 6, FMA (AVX2) 2 × 8 rows by 6.
    #[cfg(target_arch = "x86_64")]
    let (mr, nr) = if cfg!(feature = "avx512") && is_x86_feature_detected!("avx512f") {
        (64, 6)
    } else if is_x86_feature_detected!("fma") {
        (16, 6)
    } else {
        return None;
    };
    #[cfg(not(target_arch = "x86_64"))]
    return None;
    if m < 2 || n < 2 || k <= 2 || m * n <= 256 {
        return None;
    }
    Some(if m <= 64 && n <= 64 {
        k.min(512)
    } else {
        gemm_common::cache::kernel_params(m, n, k, mr, nr, std::mem::size_of::<f32>()).kc
    })
}

/// A run's weight gradient, `[n, C_in, C_out]` (tap-major, like the packed kernel), from the ones of x and
/// the output gradient in the padded row layout (`gfull`, rows of C_out, row r for output row r < m): for tap
/// j, Σ_r x[r + offset + j] ⊗ G[r] — the sum the product (depth m) makes, in its order: each block of
/// `depth` rows summed from zero, the blocks added in turn.
pub(super) fn weight_gradient<T: WithDType>(
    ones: &Ones,
    g: &Geometry,
    run: &Run,
    gfull: &[T],
    m: usize,
    depth: usize,
    out: &mut [T],
) {
    let block = g.c_in * g.c_out;
    out.par_chunks_mut(block).enumerate().for_each(|(j, out)| {
        let tap = Tap {
            ones,
            g,
            lag: run.offset + j,
            gfull,
            m,
            depth,
        };
        match simd_level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: simd_level() only returns a level the CPU supports.
            Simd::Avx512 => unsafe { tap.gradient_avx512(out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Simd::Avx2 => unsafe { tap.gradient_avx2(out) },
            _ => tap.gradient(out),
        }
    });
}

/// One tap's share of a weight gradient: output row r reads input row r + lag.
struct Tap<'a, T> {
    ones: &'a Ones,
    g: &'a Geometry,
    lag: usize,
    gfull: &'a [T],
    m: usize,
    depth: usize,
}

impl<T: WithDType> Tap<'_, T> {
    /// The tap's gradient `[C_in, C_out]` into `out`.
    #[inline(always)]
    fn gradient(&self, out: &mut [T]) {
        let (g, c_out, wp) = (self.g, self.g.c_out, self.g.wp());
        out.fill(T::zero());
        let mut acc = vec![T::zero(); out.len()];
        let mut current = 0; // the depth block being summed
        for b in 0..g.b {
            for y in 0..g.h {
                for x in 0..g.w {
                    // Input pixel (b, y, x) is padded row s; output row r = s − lag reads it through this tap.
                    let s = b * g.image_rows() + (y + g.plan.pad_top) * wp + x + g.plan.pad_left;
                    let Some(r) = s.checked_sub(self.lag).filter(|&r| r < self.m) else {
                        continue;
                    };
                    if r / self.depth != current {
                        out.iter_mut().zip(&acc).for_each(|(o, &a)| *o += a);
                        acc.fill(T::zero());
                        current = r / self.depth;
                    }
                    let grad = &self.gfull[r * c_out..][..c_out];
                    for &ci in self.ones.at((b * g.h + y) * g.w + x) {
                        let acc = &mut acc[ci as usize * c_out..][..c_out];
                        acc.iter_mut().zip(grad).for_each(|(a, &v)| *a += v);
                    }
                }
            }
        }
        out.iter_mut().zip(&acc).for_each(|(o, &a)| *o += a);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn gradient_avx2(&self, out: &mut [T]) {
        self.gradient(out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn gradient_avx512(&self, out: &mut [T]) {
        self.gradient(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::shifted_conv::{backward, by_products, Packed, TapPlan};
    use super::*;
    use crate::nn::masked_conv2d::{horizontal_plan, masked_plan, vertical_plan};
    use crate::nn::ConvType;
    use rand::{Rng, SeedableRng};

    /// One-hot pixels of `c` channels, a few all zero and a few with two ones.
    fn one_hot<T: WithDType>(pixels: usize, c: usize, rng: &mut impl Rng) -> Vec<T> {
        let mut x = vec![T::zero(); pixels * c];
        for px in x.chunks_exact_mut(c) {
            match rng.random_range(0..20) {
                0 => {}
                1 => {
                    px[rng.random_range(0..c)] = T::from_f64(1.0);
                    px[rng.random_range(0..c)] = T::from_f64(1.0);
                }
                _ => px[rng.random_range(0..c)] = T::from_f64(1.0),
            }
        }
        x
    }

    fn check<T: WithDType>(seed: u64) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let plans = [
            (vertical_plan(7), 7 * 7),
            (horizontal_plan(7, ConvType::A), 4),
            (masked_plan(7, ConvType::A), 7 * 7),
            (masked_plan(3, ConvType::B), 9),
            (TapPlan::causal_1d(5, 1, 5), 5),
            (TapPlan::causal_1d(3, 2, 4), 3),
        ];
        // The gated PixelCNN's first layer (17 one-hot channels → 128) at batch 64 and 4, and odd sizes.
        for (b, h, w, c_in, c_out) in [
            (64, 8, 8, 17, 128),
            (4, 8, 8, 17, 128),
            (3, 5, 9, 5, 33),
            (2, 1, 300, 6, 7),
        ] {
            for (plan, n_k) in &plans {
                let one_row = plan.taps.iter().all(|t| t.dy == 0);
                let (h, w) = if h == 1 && !one_row { (10, 30) } else { (h, w) };
                let g = Geometry {
                    b,
                    h,
                    w,
                    c_in,
                    c_out,
                    n_k: *n_k,
                    plan: plan.clone(),
                };
                let x = one_hot::<T>(b * h * w, c_in, &mut rng);
                let wt: Vec<T> = (0..c_out * c_in * n_k)
                    .map(|_| T::from_f64(rng.random_range(-1.0..1.0)))
                    .collect();
                let bias: Vec<T> = (0..c_out).map(|_| T::from_f64(rng.random_range(-1.0..1.0))).collect();
                let packed = Packed::new(&wt, c_out, c_in, *n_k);
                let runs = g.runs();
                assert!(applies(&g, &runs, |_| false), "{g:?}");
                let ones = Ones::of(&x, c_in).expect("one-hot input is binary and sparse");
                for slope in [None, Some(T::from_f64(0.01))] {
                    let fast = forward(&ones, &packed.taps, &bias, &g, &runs, slope);
                    let want = by_products(&x, &packed, &bias, &g, &runs, slope);
                    assert_eq!(fast.len(), want.len());
                    let differ = fast
                        .iter()
                        .zip(&want)
                        .filter(|(a, b)| a.to_f64().to_bits() != b.to_f64().to_bits())
                        .count();
                    assert_eq!(
                        differ,
                        0,
                        "{g:?}, leaky {}: {differ} of {} outputs differ in their bits",
                        slope.is_some(),
                        want.len()
                    );
                }
            }
        }
    }

    /// The sums of kernel rows are the products' sums, bit for bit, in f32 and f64: the gated PixelCNN's first
    /// layer, masked kernels (several runs), 1-D causal kernels (dilated: runs of one tap), with and without
    /// the fused LeakyReLU. A change of order (a run added before the previous one, a skipped padding
    /// check) fails it.
    #[test]
    fn sums_of_rows_are_the_products_bit_for_bit() {
        let _one_at_a_time = SERIAL.lock();
        check::<f32>(1);
        check::<f64>(2);
    }

    /// Set while a test computes its reference by the products (the tests here take turns; a test elsewhere
    /// that runs meanwhile takes the products too, which give the same bits).
    pub(super) static PRODUCTS_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// The weight gradient of a one-hot input (f32) as sums of gradient rows is the products', bit for bit:
    /// the gated PixelCNN's first layer at batch 64 (≈ 7,700 rows: several of gemm's depth blocks) and 4,
    /// masked and 1-D kernels. Summing all rows in one block (the depth ignored) fails it.
    #[test]
    fn weight_gradient_is_the_products_bit_for_bit() {
        let _one_at_a_time = SERIAL.lock();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let plans = [
            (vertical_plan(7), 49),
            (horizontal_plan(7, ConvType::A), 4),
            (masked_plan(5, ConvType::A), 25),
            (TapPlan::causal_1d(5, 1, 5), 5),
        ];
        let mut blocks = 0;
        for (b, h, w, c_in, c_out) in [(64, 8, 8, 17, 128), (4, 8, 8, 17, 128), (8, 6, 7, 9, 40)] {
            for (plan, n_k) in &plans {
                let g = Geometry {
                    b,
                    h,
                    w,
                    c_in,
                    c_out,
                    n_k: *n_k,
                    plan: plan.clone(),
                };
                let x = one_hot::<f32>(b * h * w, c_in, &mut rng);
                let wt: Vec<f32> = (0..c_out * c_in * n_k).map(|_| rng.random_range(-1.0..1.0)).collect();
                let go: Vec<f32> = (0..b * h * w * c_out).map(|_| rng.random_range(-1.0..1.0)).collect();
                let (_, fast, _) = backward(&x, &wt, &go, &g, false);
                PRODUCTS_ONLY.store(true, std::sync::atomic::Ordering::Relaxed);
                let (_, want, _) = backward(&x, &wt, &go, &g, false);
                PRODUCTS_ONLY.store(false, std::sync::atomic::Ordering::Relaxed);
                let differ = fast
                    .iter()
                    .zip(&want)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(
                    differ,
                    0,
                    "{g:?}: {differ} of {} weight gradients differ in their bits",
                    want.len()
                );
                let depth = depth_block(c_out, 7 * c_in, g.m()).expect("an x86 CPU with FMA");
                blocks = blocks.max(g.m().div_ceil(depth));
            }
        }
        assert!(blocks >= 3, "the largest product spans {blocks} depth blocks");
    }

    /// Real values, dense ones, and a size too small for gemm's general kernels take the products.
    #[test]
    fn only_binary_sparse_inputs_of_general_products_take_this_path() {
        let _one_at_a_time = SERIAL.lock();
        assert!(Ones::of(&[0.0f32, 1.0, 0.0, 0.0], 4).is_some());
        assert!(Ones::of(&[0.0f32, 0.5, 0.0, 0.0], 4).is_none());
        assert!(Ones::of(&[1.0f32, 1.0, 0.0, 0.0], 4).is_none()); // half of them ones
        assert!(Ones::of(&[-1.0f32, 0.0, 0.0, 0.0], 4).is_none());
        let g = |b: usize, c_in: usize| Geometry {
            b,
            h: 8,
            w: 8,
            c_in,
            c_out: 4,
            n_k: 49,
            plan: vertical_plan(7),
        };
        assert!(applies(&g(4, 17), &g(4, 17).runs(), |_| false));
        assert!(!applies(&g(4, 17), &g(4, 17).runs(), |_| true)); // Winograd sums otherwise
        assert!(!applies(&g(4, 100), &g(4, 100).runs(), |_| false)); // 700 inputs a run: two depth blocks
        let tiny = Geometry { h: 1, w: 3, ..g(1, 17) };
        assert!(!applies(&tiny, &tiny.runs(), |_| false));
    }
}
