//! Winograd's minimal filtering F(q, n) for a run of n consecutive taps: q output rows from α = n + q − 1
//! matrix products of 1/q of the rows instead of n products of all of them — F(2, n) for runs of 4–7 taps
//! (a run of 7 costs 8/14 of the multiply-adds: the seed net's 256-channel layers), F(4, 3) for runs of 3
//! (6/12), and below AVX-512 a run of 7 in two pieces, F(5, 4) + F(6, 3) (≈ 2.9/7, [`pieces`]) — for the
//! forward pass, the input gradient (the same correlation with the kernel reversed) and the weight gradient
//! (its transpose, [`Transforms::weight_gradient`]).
//!
//! With the run's taps W_0 … W_{n−1} (`[C_in, C_out]` each) and input rows d_r, output row r is
//! `y_r = Σ_j d_{r+j} · W_j`. Toom–Cook at the points 0, 1, −1, 2, −2, ½, −½ and ∞ (the first α − 1 of
//! them and ∞), written as Lavin & Gray (2016) do, gives for tile t, the rows qt … qt + q − 1:
//! `(y_qt+o)_o = Aᵀ [ (Bᵀ d)_i · V_i ]_i` with `V_i = Σ_k G_ik W_k` (the kernel transformed once) and
//! `(Bᵀ d)_i = Σ_j Bᵀ_ij d_{qt+j}` (a few additions per tile): one product `U_i · V_i` per point, over the tiles.
//! `G` and `Aᵀ` evaluate polynomials at the points, `Bᵀ` inverts the evaluation (computed here in f64).
//!
//! The rounding differs from the direct products (f32: within ≈ 10⁻⁵ of the exact values for the seed
//! net's layers, about six times the direct products' error), so it is used only where it pays: runs of
//! 4–7 taps between layers of at least [`MIN_CHANNELS`] channels, and below AVX-512 runs of 3 between layers of
//! at least [`MIN_CHANNELS_3`] (the gated PixelCNN's vertical stack). Tiles are processed in blocks of a fixed
//! size that depends on the number of rows only, each block by one task, so results do not depend on the
//! number of threads.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use candle_core::WithDType;
use gemm::Parallelism;
use rayon::prelude::*;

use super::panels::{self, Panels};
use super::shifted_conv::matmul_on;

/// The finite interpolation points, in the order they are taken (∞ comes last).
const POINTS: [f64; 7] = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5];

/// Runs of these lengths take Winograd (3 only below AVX-512: [`below_avx512`]).
pub const RUN_LENGTHS: std::ops::RangeInclusive<usize> = 3..=7;

/// Channels below which (on either side) the direct products are used. Only the seed net's 256 channels were
/// measured; narrower layers (the 64-channel ARM priors of the latent models) keep the direct products, and
/// with them the bits of their published figures.
pub const MIN_CHANNELS: usize = 128;

/// Runs of 3 taps (a row of a 3-wide 2-D kernel: the gated PixelCNN's vertical stack) take F(4, 3) — 6
/// products of a quarter of the rows for 4 × 3 — between layers of at least this many channels, where gemm
/// runs below AVX-512 ([`below_avx512`]).
pub const MIN_CHANNELS_3: usize = 64;

/// Whether gemm runs below AVX-512 here (an AVX2 CPU, a build without the `avx512` feature, or a CPU with
/// neither): then runs of 3 taps take Winograd, and a run of 7 takes the cheaper pieces of [`pieces`] (the
/// seed net's forward pass at batch 64 at AVX2: 34 → 27 ms on two threads, 66 → 48 ms on one). Runs of 3
/// were measured on the gated PixelCNN's train step at batch 64 (its vertical stack: 64 → 128 channels, two
/// runs of 3), one thread: F(2, 3) 9–10 % faster than the direct products at AVX2 (7 % at AVX-512), F(4, 3)
/// another 3–5 % (AVX2: 144–150 → 137–143 ms; on two threads within the noise). The published figures were
/// trained at AVX-512 with the direct products and F(2, 7), so that level keeps them and reproduces them bit
/// for bit; below it gemm blocks its sums differently (other kernels, other blocks), so its bits differ from
/// them already and the faster sums cost no reproducibility there.
pub fn below_avx512() -> bool {
    crate::nn::exact::best_simd() != crate::nn::exact::Simd::Avx512
}

/// Output rows below which the direct products are used when the kernel's transform has to be made for the
/// call (α·n multiply-adds per weight, each call): there it and the smaller products cost more than the
/// saved arithmetic. Measured on the seed net's forward pass (rows = batch × 70): level at batch 16 (1,120
/// rows, 5 % faster), 15–20 % faster from batch 32 on, slower at batch 1–4. A transform kept from an earlier
/// call (an evaluation pass, a sampler) costs nothing, and then F(2, n) pays at every batch (measured with
/// F(2, 7) at both levels; this and [`TILES`] were not measured again for the pieces below AVX-512): the seed net's
/// forward at batch 1, 2, 8 took 0.38 → 0.29, 0.75 → 0.49, 2.7 → 1.9 ms at AVX-512 and 0.77 → 0.49,
/// 1.4 → 0.9, 5.0 → 3.5 ms at AVX2 (2 threads).
pub const MIN_ROWS: usize = 1024;

/// Tiles (q output rows each) per task: a block's transformed input and products (48 rows of 256
/// channels: 48 KiB each) and its output rows stay in one core's L2 cache (48, 64, 96, 144 and 240 measured
/// on the seed net's forward pass at batch 64: 48 the fastest, by a few per cent).
const TILES: usize = 48;

/// Whether a run of `n` taps between `c_in` and `c_out` channels over `m` output rows takes Winograd;
/// `kept`: the kernel's transform is at hand from an earlier call, so any number of rows pays.
pub fn fits(n: usize, c_in: usize, c_out: usize, m: usize, kept: bool) -> bool {
    let channels = match n {
        3 if below_avx512() => MIN_CHANNELS_3,
        3 => return false,
        _ => MIN_CHANNELS,
    };
    RUN_LENGTHS.contains(&n) && c_in >= channels && c_out >= channels && (kept || m >= MIN_ROWS)
}

/// How a run of n taps is computed: as one F(q, n), or as consecutive pieces of it, each its own F(q, n_p)
/// whose sums add up. F(4, 3) for runs of 3; a run of 7 below AVX-512 ([`below_avx512`]) as F(5, 4) on
/// its first four taps and F(6, 3) on the last three — 8/5 + 8/6 ≈ 2.9 products of all the rows instead of
/// F(2, 7)'s 4 (direct: 7). Each piece takes at most the same eight points as F(2, 7), and rounds about as
/// much (f32 against f64 on the seed net's layer shapes, numpy: 1.8e-6 of the largest output, F(2, 7)
/// 1.6–1.9e-6), though not to the same bits; a single F(3, 7) would need a ninth point, and its error,
/// ≈ 6 times F(2, 7)'s, broke the PyTorch parity of the seed net's logits. F(2, n) otherwise. Returns
/// `(first tap, taps, output rows per tile)` for each piece.
fn pieces(n: usize, below_avx512: bool) -> Vec<(usize, usize, usize)> {
    match n {
        3 => vec![(0, 3, 4)],
        7 if below_avx512 => vec![(0, 4, 5), (4, 3, 6)],
        _ => vec![(0, n, 2)],
    }
}

/// The transforms of a run of n taps: F(q, n_p) for each of its pieces ([`pieces`]).
#[derive(Debug, Clone)]
pub struct Transforms {
    pieces: Vec<Piece>,
}

/// The three transforms of F(q, n) for the taps `k0 .. k0 + n` of a run, in f64.
#[derive(Debug, Clone)]
struct Piece {
    k0: usize,
    n: usize,
    /// Output rows per tile (q).
    outs: usize,
    /// `[α][n]`: V_i = Σ_k g[i][k] W_k.
    g: Vec<Vec<f64>>,
    /// `[α][α]`: U_i = Σ_j bt[i][j] d_j.
    bt: Vec<Vec<f64>>,
    /// `[outs][α]`: y_o = Σ_i at[o][i] M_i.
    at: Vec<Vec<f64>>,
}

impl Piece {
    fn new(k0: usize, n: usize, outs: usize) -> Self {
        let alpha = n + outs - 1;
        assert!(alpha <= POINTS.len() + 1, "F({outs}, {n}): too few points");
        // Row i of the evaluation of a polynomial with `len` coefficients: the powers of point i, or for ∞
        // (the last point) its leading coefficient.
        let eval = |len: usize, i: usize| -> Vec<f64> {
            if i == alpha - 1 {
                (0..len).map(|k| if k == len - 1 { 1.0 } else { 0.0 }).collect()
            } else {
                (0..len).map(|k| POINTS[i].powi(k as i32)).collect()
            }
        };
        let v: Vec<Vec<f64>> = (0..alpha).map(|i| eval(alpha, i)).collect();
        let inv = invert(v);
        Self {
            k0,
            n,
            outs,
            g: (0..alpha).map(|i| eval(n, i)).collect(),
            bt: (0..alpha).map(|i| (0..alpha).map(|j| inv[j][i]).collect()).collect(),
            at: (0..outs)
                .map(|o| (0..alpha).map(|i| eval(outs, i)[o]).collect())
                .collect(),
        }
    }

    fn alpha(&self) -> usize {
        self.n + self.outs - 1
    }

    /// Bᵀ and Aᵀ in `T`, for the loops over the tiles.
    fn input_and_output_in<T: WithDType>(&self) -> (Vec<Vec<T>>, Vec<Vec<T>>) {
        let cast = |row: &Vec<f64>| row.iter().map(|&c| T::from_f64(c)).collect::<Vec<T>>();
        (self.bt.iter().map(cast).collect(), self.at.iter().map(cast).collect())
    }
}

impl Transforms {
    /// For this machine's SIMD level (in tests, as [`tests::forced_pieces`] says on this thread).
    pub fn new(n: usize) -> Self {
        #[cfg(test)]
        let below = tests::PIECES.get().unwrap_or_else(below_avx512);
        #[cfg(not(test))]
        let below = below_avx512();
        Self::at_level(n, below)
    }

    /// For a CPU below AVX-512 or not (the tests take both on any machine).
    fn at_level(n: usize, below_avx512: bool) -> Self {
        assert!(RUN_LENGTHS.contains(&n), "Winograd for runs of {n} is not provided");
        Self {
            pieces: pieces(n, below_avx512)
                .into_iter()
                .map(|(k0, n, q)| Piece::new(k0, n, q))
                .collect(),
        }
    }

    /// Transformed matrices in all: the sum of the pieces' α.
    fn alpha(&self) -> usize {
        self.pieces.iter().map(Piece::alpha).sum()
    }

    /// The kernel transformed: `taps` holds the run's n matrices of `block` numbers each (`[C_in, C_out]`,
    /// one after another); returns, piece after piece, its α matrices `V_i = Σ_k G_ik W_{k0+k}` laid out the
    /// same way. In parallel over chunks of the matrices' elements, each task reading its chunk of every tap
    /// once.
    pub fn kernel<T: WithDType>(&self, taps: &[T], block: usize) -> Kernel<T> {
        let v = joined(
            self.pieces
                .iter()
                .map(|p| combine(&p.g, &taps[p.k0 * block..][..p.n * block], block)),
        );
        Kernel {
            v,
            panels: OnceLock::new(),
        }
    }

    /// The run's weight gradient `Σ_{r<m} src[r + j]ᵀ · gy[r]` for j < n, as n matrices `[C_in, C_out]` one
    /// after another: for each piece, with `L = Σ_r gy_r · y_r` and y by F(q, n), `∂L/∂W_k = Σ_i G_ik P_i`
    /// where `P_i = Σ_t (Bᵀ d)_{i,t}ᵀ · (Σ_o Aᵀ_oi gy_{qt+o})` — α products of C_in × C_out over the tiles
    /// instead of n over the rows. `src` holds rows of `c_in` numbers (at least m + n − 1; rows past its end
    /// read as zero), `gy` at least m rows of `c_out` (rows from m on are not read). Each P_i is summed over
    /// the tiles in a fixed order by one task (the points in parallel), so the result does not depend on the
    /// thread count.
    pub fn weight_gradient<T: WithDType>(&self, src: &[T], c_in: usize, gy: &[T], c_out: usize, m: usize) -> Vec<T> {
        let block = c_in * c_out;
        joined(self.pieces.iter().map(|piece| {
            let alpha = piece.alpha();
            let (bt, at) = piece.input_and_output_in();
            let mut p = Vec::<T>::with_capacity(alpha * block);
            let job = GradJob {
                src: src.get(piece.k0 * c_in..).unwrap_or_default(),
                c_in,
                gy,
                c_out,
                m,
                bt,
                at,
                outs: piece.outs,
                dst: super::shifted_conv::SharedMut(p.as_mut_ptr()),
            };
            // SAFETY: task i writes P_i, inside `p`'s capacity, alone.
            unsafe { run_tasks(&job, alpha, true) };
            // SAFETY: every P_i was written by its task.
            unsafe { p.set_len(alpha * block) };
            let gt: Vec<Vec<f64>> = (0..piece.n)
                .map(|k| (0..alpha).map(|i| piece.g[i][k]).collect())
                .collect();
            combine(&gt, &p, block)
        }))
    }

    /// `dst[r] (+)= Σ_{j<n} src[r + j] · W_j` for rows r < m, with `v` = [`Self::kernel`] of the W_j
    /// (`[C_in, C_out]` each). `src` holds rows of `c_in` numbers, at least m + n − 1 of them (rows past its
    /// end read as zero); `dst` rows of `c_out`, written without being read unless `accumulate` (the pieces
    /// after the first add to it).
    ///
    /// # Safety
    /// `dst` points to at least `m · c_out` elements, initialised if `accumulate`, that nothing else touches
    /// during the call.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn correlate<T: WithDType>(
        &self,
        src: &[T],
        c_in: usize,
        kernel: &Kernel<T>,
        c_out: usize,
        m: usize,
        dst: *mut T,
        accumulate: bool,
    ) {
        let v = &kernel.v[..];
        assert_eq!(v.len(), self.alpha() * c_in * c_out);
        // A fixed block size for a given m and piece (never the thread count): smaller for small m, so that
        // both cores get a share.
        let blocking = |p: &Piece| {
            let tiles = m.div_ceil(p.outs);
            let per_task = TILES.min(tiles.div_ceil(2)).max(1);
            (tiles, per_task, tiles - (tiles.div_ceil(per_task) - 1) * per_task)
        };
        // Below AVX-512, the products by our own kernel, V packed once for every block, and kept with the
        // kernel for its later calls (gemm's bits).
        let panels = (T::DTYPE == candle_core::DType::F32
            && self.pieces.iter().all(|p| {
                let (_, per_task, last) = blocking(p);
                [per_task, last].iter().all(|&rows| panels::applies(rows, c_out, c_in))
            }))
        .then(|| {
            kernel.panels.get_or_init(|| {
                // SAFETY: T is f32 (checked just above).
                let v = unsafe { std::slice::from_raw_parts(v.as_ptr() as *const f32, v.len()) };
                Panels::pack(v, self.alpha(), c_in, c_out)
            })
        });
        // Kept panels were packed for this kernel's shape (checked, as they are read without bounds).
        assert!(panels.is_none_or(|p| p.shape() == (self.alpha(), c_in, c_out)));
        let mut first_matrix = 0;
        for (i, piece) in self.pieces.iter().enumerate() {
            let (bt, at) = piece.input_and_output_in();
            let (tiles, per_task, _) = blocking(piece);
            let job = Job {
                src: src.get(piece.k0 * c_in..).unwrap_or_default(),
                c_in,
                v,
                first_matrix,
                c_out,
                m,
                dst: super::shifted_conv::SharedMut(dst),
                accumulate: accumulate || i > 0,
                bt,
                at,
                outs: piece.outs,
                per_task,
                panels,
            };
            let blocks = tiles.div_ceil(per_task);
            // SAFETY: each block writes its own rows of dst (the caller's promise covers them).
            unsafe { run_tasks(&job, blocks, blocks > 1) };
            first_matrix += piece.alpha();
        }
    }
}

/// The pieces' matrices one after another (a single piece's as they are, not copied).
fn joined<T>(mut parts: impl Iterator<Item = Vec<T>>) -> Vec<T> {
    let mut all = parts.next().expect("a run has a piece");
    for part in parts {
        all.extend(part);
    }
    all
}

/// A kernel ready for [`Transforms::correlate`]: its transform, α matrices `V_i = Σ_k G_ik W_k` (`[C_in, C_out]`
/// one after another), and the same laid out as [`Panels`] on the first call whose products take them (f32
/// below AVX-512) — once for a kernel kept across calls (an evaluation pass, a sampler: [`super::shifted_conv`]
/// keeps it). Packed again at every call instead, the seed net's forward pass at batch 1 (2 blocks of tiles
/// to share the packing) ran slower than gemm's products on V as it is.
pub struct Kernel<T> {
    v: Vec<T>,
    panels: OnceLock<Panels>,
}

/// Elements of the kernel's matrices per task of [`Transforms::kernel`].
const SPAN: usize = 1024;

/// Loops run as numbered tasks, each compiled for the widest SIMD level the CPU has (the codec's dispatch):
/// each element has its own operations and none is fused, so every level gives the same bits.
trait Wide: Sync {
    /// # Safety
    /// Task `i` runs once, and the caller's promises for the whole job hold.
    unsafe fn task(&self, i: usize);
}

/// Tasks `0..n` of `job`, in parallel if `parallel`.
///
/// # Safety
/// As [`Wide::task`].
unsafe fn run_tasks<W: Wide>(job: &W, n: usize, parallel: bool) {
    use crate::nn::exact::{simd_level, Simd};
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2<W: Wide>(job: &W, i: usize) {
        job.task(i)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512<W: Wide>(job: &W, i: usize) {
        job.task(i)
    }
    let level = simd_level();
    // SAFETY: simd_level() only returns a level the CPU supports; the rest is the caller's promise.
    let run = |i: usize| unsafe {
        match level {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => avx512(job, i),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => avx2(job, i),
            _ => job.task(i),
        }
    };
    if parallel && n > 1 {
        (0..n).into_par_iter().for_each(run);
    } else {
        (0..n).for_each(run);
    }
}

/// `out_r = Σ_k coef[r][k] · blocks_k` for the matrices `blocks_k` of `block` numbers each (one after
/// another), in parallel over spans of their elements: the span of every input is read into cache once and
/// gives the span of every result.
fn combine<T: WithDType>(coef: &[Vec<f64>], blocks: &[T], block: usize) -> Vec<T> {
    let n_out = coef.len();
    assert!(coef.iter().all(|row| blocks.len() == row.len() * block));
    let mut out = Vec::<T>::with_capacity(n_out * block);
    let job = Combine {
        blocks,
        block,
        coef: coef
            .iter()
            .map(|row| row.iter().map(|&c| T::from_f64(c)).collect())
            .collect(),
        dst: super::shifted_conv::SharedMut(out.as_mut_ptr()),
    };
    // SAFETY: the spans are disjoint and inside `out`'s capacity.
    unsafe { run_tasks(&job, block.div_ceil(SPAN), n_out * block >= super::PAR_MIN) };
    // SAFETY: the spans cover every element of every result, each written by its task.
    unsafe { out.set_len(n_out * block) };
    out
}

/// Point `bt`'s transform of the input for the tiles t0, t0 + 1, …: row t of `u` (`c_in` numbers) becomes
/// `Σ_j bt[j] · src[outs·(t0 + t) + j]`, rows past the end of `src` reading as zero.
#[inline(always)]
fn transform_input<T: WithDType>(bt: &[T], src: &[T], c_in: usize, outs: usize, t0: usize, u: &mut [T]) {
    for (t, row) in u.chunks_exact_mut(c_in).enumerate() {
        row.fill(T::zero());
        let base = outs * (t0 + t);
        for (j, &c) in bt.iter().enumerate() {
            let r = base + j;
            if c == T::zero() || (r + 1) * c_in > src.len() {
                continue;
            }
            for (o, &s) in row.iter_mut().zip(&src[r * c_in..(r + 1) * c_in]) {
                *o += c * s;
            }
        }
    }
}

/// One call of [`combine`].
struct Combine<'a, T> {
    blocks: &'a [T],
    block: usize,
    coef: Vec<Vec<T>>,
    dst: super::shifted_conv::SharedMut<T>,
}

impl<T: WithDType> Wide for Combine<'_, T> {
    /// Span `span` of every result.
    #[inline(always)]
    unsafe fn task(&self, span: usize) {
        let e0 = span * SPAN;
        let len = SPAN.min(self.block - e0);
        let mut acc = [T::zero(); SPAN];
        let acc = &mut acc[..len];
        for (r, row) in self.coef.iter().enumerate() {
            acc.fill(T::zero());
            for (k, &c) in row.iter().enumerate() {
                if c == T::zero() {
                    continue;
                }
                for (o, &w) in acc.iter_mut().zip(&self.blocks[k * self.block + e0..][..len]) {
                    *o += c * w;
                }
            }
            // SAFETY: elements (r, e0 .. e0 + len) are inside the result's capacity, written by this task only.
            unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), self.dst.at(r * self.block + e0), len) };
        }
    }
}

/// Tiles per product of [`Transforms::weight_gradient`]: the chunk's transformed input and gradient
/// (256 rows of 256 channels: 256 KiB each) stay in cache beside the task's P_i.
const GRAD_TILES: usize = 256;

/// One call of [`Transforms::weight_gradient`].
struct GradJob<'a, T> {
    src: &'a [T],
    c_in: usize,
    gy: &'a [T],
    c_out: usize,
    m: usize,
    bt: Vec<Vec<T>>,
    at: Vec<Vec<T>>,
    /// Output rows per tile.
    outs: usize,
    dst: super::shifted_conv::SharedMut<T>,
}

impl<T: WithDType> Wide for GradJob<'_, T> {
    /// P_i for point `i`, chunk by chunk of the tiles in order.
    #[inline(always)]
    unsafe fn task(&self, i: usize) {
        let (c_in, c_out, src, gy) = (self.c_in, self.c_out, self.src, self.gy);
        let tiles = self.m.div_ceil(self.outs);
        let mut u = vec![T::zero(); GRAD_TILES.min(tiles) * c_in];
        let mut z = vec![T::zero(); GRAD_TILES.min(tiles) * c_out];
        for (chunk, t0) in (0..tiles).step_by(GRAD_TILES).enumerate() {
            let ct = GRAD_TILES.min(tiles - t0);
            transform_input(&self.bt[i], src, c_in, self.outs, t0, &mut u[..ct * c_in]);
            for (t, row) in z[..ct * c_out].chunks_exact_mut(c_out).enumerate() {
                row.fill(T::zero());
                for (o, at) in self.at.iter().enumerate() {
                    let r = self.outs * (t0 + t) + o;
                    if at[i] == T::zero() || r >= self.m {
                        continue;
                    }
                    for (d, &g) in row.iter_mut().zip(&gy[r * c_out..(r + 1) * c_out]) {
                        *d += at[i] * g;
                    }
                }
            }
            // P_i (+)= Uᵀ · Z over the chunk's tiles, on this task's core.
            // SAFETY: P_i is c_in×c_out inside the result's capacity, this task's alone; u is ct×c_in (read
            // transposed: row stride 1, column stride c_in), z ct×c_out; the first chunk writes P_i unread.
            unsafe {
                matmul_on(
                    Parallelism::None,
                    (c_in, c_out, ct),
                    self.dst.at(i * c_in * c_out),
                    (c_out, 1),
                    chunk > 0,
                    u.as_ptr(),
                    (1, c_in),
                    z.as_ptr(),
                    (c_out, 1),
                );
            }
        }
    }
}

/// One call of [`Transforms::correlate`], shared by its tasks.
struct Job<'a, T> {
    src: &'a [T],
    c_in: usize,
    v: &'a [T],
    /// This piece's first matrix in `v` (and in the panels).
    first_matrix: usize,
    c_out: usize,
    m: usize,
    dst: super::shifted_conv::SharedMut<T>,
    accumulate: bool,
    bt: Vec<Vec<T>>,
    at: Vec<Vec<T>>,
    /// Output rows per tile.
    outs: usize,
    per_task: usize,
    /// The V_i as panels, where [`panels::product`] takes the products (T is f32 then).
    panels: Option<&'a Panels>,
}

impl<T: WithDType> Wide for Job<'_, T> {
    /// Block `b` of the tiles.
    ///
    /// # Safety
    /// As [`Transforms::correlate`]; no other task runs block `b`.
    #[inline(always)]
    unsafe fn task(&self, b: usize) {
        let (c_in, c_out, src) = (self.c_in, self.c_out, self.src);
        let t0 = b * self.per_task;
        let p = self.per_task.min(self.m.div_ceil(self.outs) - t0);
        let mut u = vec![T::zero(); p * c_in];
        let mut prod = Vec::<T>::with_capacity(p * c_out);
        for (i, bt) in self.bt.iter().enumerate() {
            // U_i for the block's tiles: tile t reads rows qt .. qt + α.
            transform_input(bt, src, c_in, self.outs, t0, &mut u);
            // M_i = U_i · V_i, on this task's core.
            // SAFETY: u is p×c_in, V_i c_in×c_out inside v, prod has room for p×c_out, all row-major; the
            // product writes every element of prod without reading it. Panels exist only for f32 on a CPU
            // with AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            let by_panels = self.panels.as_ref().map(|panels| unsafe {
                let u = std::slice::from_raw_parts(u.as_ptr() as *const f32, u.len());
                panels::product(p, u, panels, self.first_matrix + i, prod.as_mut_ptr() as *mut f32);
            });
            #[cfg(not(target_arch = "x86_64"))]
            let by_panels = None::<()>;
            if by_panels.is_none() {
                unsafe {
                    matmul_on(
                        Parallelism::None,
                        (p, c_out, c_in),
                        prod.as_mut_ptr(),
                        (c_out, 1),
                        false,
                        u.as_ptr(),
                        (c_in, 1),
                        self.v[(self.first_matrix + i) * c_in * c_out..].as_ptr(),
                        (c_out, 1),
                    );
                }
            }
            // SAFETY: either product wrote all p × c_out numbers.
            unsafe { prod.set_len(p * c_out) };
            // The q output rows of each tile take their shares of M_i.
            let first = i == 0 && !self.accumulate;
            for (t, mrow) in prod.chunks_exact(c_out).enumerate() {
                for (o, at) in self.at.iter().enumerate() {
                    let r = self.outs * (t0 + t) + o;
                    if r >= self.m {
                        continue;
                    }
                    let a = at[i];
                    // SAFETY: row r < m lies inside dst and belongs to this block alone; unless `first` it
                    // was written before (by the caller or the first point).
                    let out = self.dst.at(r * c_out) as *mut MaybeUninit<T>;
                    let out = unsafe { std::slice::from_raw_parts_mut(out, c_out) };
                    if first {
                        for (o, &mv) in out.iter_mut().zip(mrow) {
                            o.write(a * mv);
                        }
                    } else {
                        // SAFETY: written before, see above.
                        let out = unsafe { out.assume_init_mut() };
                        for (o, &mv) in out.iter_mut().zip(mrow) {
                            *o += a * mv;
                        }
                    }
                }
            }
            prod.clear();
        }
    }
}

/// The inverse of a small well-conditioned matrix, by Gauss–Jordan elimination with partial pivoting.
fn invert(mut a: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut inv: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| f64::from(u8::from(i == j))).collect())
        .collect();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))
            .expect("a non-empty column");
        a.swap(col, pivot);
        inv.swap(col, pivot);
        let d = a[col][col];
        for j in 0..n {
            a[col][j] /= d;
            inv[col][j] /= d;
        }
        for r in 0..n {
            if r != col {
                let f = a[r][col];
                if f != 0.0 {
                    for j in 0..n {
                        a[r][j] -= f * a[col][j];
                        inv[r][j] -= f * inv[col][j];
                    }
                }
            }
        }
    }
    inv
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    thread_local! {
        /// Whether [`Transforms::new`] takes the pieces of a CPU below AVX-512 (`Some(true)`: the callers'
        /// tests on AVX-512 machines too), those of AVX-512 (`Some(false)`), or as this machine does (`None`).
        pub static PIECES: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
    }

    /// Runs `f` with the pieces forced on or off on this thread (see [`PIECES`]).
    pub fn forced_pieces<R>(below_avx512: bool, f: impl FnOnce() -> R) -> R {
        crate::nn::kernels::overriding(&PIECES, below_avx512, f)
    }

    /// F(q, n) on scalars reproduces the direct sums: y_o = Σ_k d_{o+k} g_k, for every piece of every n
    /// provided; the pieces cover the run's taps in order.
    #[test]
    fn transforms_compute_q_outputs_of_the_filter() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (n, below_avx512) in RUN_LENGTHS.flat_map(|n| [(n, false), (n, true)]) {
            let tf = Transforms::at_level(n, below_avx512);
            let covered: Vec<usize> = tf.pieces.iter().flat_map(|p| p.k0..p.k0 + p.n).collect();
            assert_eq!(covered, (0..n).collect::<Vec<_>>(), "run of {n}");
            for p in &tf.pieces {
                let (alpha, n) = (p.alpha(), p.n);
                let g: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
                let d: Vec<f64> = (0..alpha).map(|_| rng.random_range(-1.0..1.0)).collect();
                let gt: Vec<f64> = (0..alpha).map(|i| (0..n).map(|k| p.g[i][k] * g[k]).sum()).collect();
                let dt: Vec<f64> = (0..alpha)
                    .map(|i| (0..alpha).map(|j| p.bt[i][j] * d[j]).sum())
                    .collect();
                for o in 0..p.outs {
                    let y: f64 = (0..alpha).map(|i| p.at[o][i] * gt[i] * dt[i]).sum();
                    let direct: f64 = (0..n).map(|k| d[o + k] * g[k]).sum();
                    assert!(
                        (y - direct).abs() < 1e-12,
                        "F({}, {n}) output {o}: {y} vs {direct}",
                        p.outs
                    );
                }
            }
        }
    }

    /// The weight gradient against the naive sum over rows, f64 and f32, odd m over several chunks of tiles;
    /// a run of 7 whole and in pieces (as below AVX-512).
    #[test]
    fn weight_gradient_matches_the_naive_sum() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for &(n, c_in, c_out, m, below_avx512) in &[
            (7usize, 128usize, 130usize, 601usize, false),
            (7, 128, 130, 601, true),
            (7, 40, 36, 1601, true),
            (7, 130, 128, 38, true),
            (4, 129, 128, 40, false),
            (3, 64, 128, 301, false),
        ] {
            let tf = Transforms::at_level(n, below_avx512);
            let src: Vec<f64> = (0..(m + n - 1) * c_in).map(|_| rng.random_range(-1.0..1.0)).collect();
            // Rows from m on must not be read: NaN there would show.
            let mut gy: Vec<f64> = (0..(m + 3) * c_out).map(|_| rng.random_range(-1.0..1.0)).collect();
            gy[m * c_out..].fill(f64::NAN);
            let mut want = vec![0.0; n * c_in * c_out];
            for j in 0..n {
                for r in 0..m {
                    for ci in 0..c_in {
                        let s = src[(r + j) * c_in + ci];
                        for co in 0..c_out {
                            want[(j * c_in + ci) * c_out + co] += s * gy[r * c_out + co];
                        }
                    }
                }
            }
            let got = tf.weight_gradient(&src, c_in, &gy, c_out, m);
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-10, "f64, n {n}, m {m}: {err}");
            let (src32, gy32): (Vec<f32>, Vec<f32>) = (
                src.iter().map(|&x| x as f32).collect(),
                gy.iter().map(|&x| x as f32).collect(),
            );
            let got32 = tf.weight_gradient(&src32, c_in, &gy32, c_out, m);
            let scale = (m as f64).sqrt();
            let err = got32
                .iter()
                .zip(&want)
                .map(|(&a, b)| (a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 3e-5 * scale, "f32, n {n}, m {m}: {err} (sums of size ≈ {scale})");
        }
    }

    /// The blocked, parallel correlation against a naive loop in f64 (exact up to rounding) and f32 (within
    /// the stated 10⁻⁵ scale), odd and even m, small and multi-block, written and accumulated; a run of 7
    /// whole and in pieces (as below AVX-512).
    #[test]
    fn correlate_matches_the_naive_sum() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut took = 0;
        for &(n, c_in, c_out, m, below_avx512) in &[
            (7usize, 128usize, 130usize, 9usize, false),
            (7, 128, 130, 9, true),
            (5, 131, 128, 400, false),
            (7, 128, 128, 250, false),
            (7, 128, 128, 250, true),
            (7, 128, 128, 731, true),
            (3, 64, 128, 333, false),
            (3, 128, 64, 96, false),
        ] {
            let tf = Transforms::at_level(n, below_avx512);
            let src: Vec<f64> = (0..(m + n - 1) * c_in).map(|_| rng.random_range(-1.0..1.0)).collect();
            let scale = 1.0 / ((n * c_in) as f64).sqrt();
            let taps: Vec<f64> = (0..n * c_in * c_out).map(|_| rng.random_range(-scale..scale)).collect();
            let old: Vec<f64> = (0..m * c_out).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut want = vec![0.0; m * c_out];
            for r in 0..m {
                for j in 0..n {
                    for ci in 0..c_in {
                        let s = src[(r + j) * c_in + ci];
                        for co in 0..c_out {
                            want[r * c_out + co] += s * taps[(j * c_in + ci) * c_out + co];
                        }
                    }
                }
            }
            let v = tf.kernel(&taps, c_in * c_out);
            let mut got = vec![f64::NAN; m * c_out];
            unsafe { tf.correlate(&src, c_in, &v, c_out, m, got.as_mut_ptr(), false) };
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-12, "f64, n {n}, m {m}: {err}");
            let mut acc = old.clone();
            unsafe { tf.correlate(&src, c_in, &v, c_out, m, acc.as_mut_ptr(), true) };
            let err = acc
                .iter()
                .zip(old.iter().zip(&want))
                .map(|(a, (o, w))| (a - o - w).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12, "f64 accumulated, n {n}, m {m}: {err}");
            let (src32, taps32): (Vec<f32>, Vec<f32>) = (
                src.iter().map(|&x| x as f32).collect(),
                taps.iter().map(|&x| x as f32).collect(),
            );
            let v32 = tf.kernel(&taps32, c_in * c_out);
            let mut got32 = vec![f32::NAN; m * c_out];
            unsafe { tf.correlate(&src32, c_in, &v32, c_out, m, got32.as_mut_ptr(), false) };
            // The products by panels (AVX2's, forced on here at any level) give gemm's bits, written and
            // accumulated (every shape here with c_out a multiple of 16 takes them).
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("fma") {
                let takes = |p| panels::tests::forced(true, || panels::applies(p, c_out, c_in));
                let takes = tf.pieces.iter().all(|p| {
                    let tiles = m.div_ceil(p.outs);
                    let per_task = TILES.min(tiles.div_ceil(2)).max(1);
                    takes(per_task) && takes(tiles - (tiles.div_ceil(per_task) - 1) * per_task)
                });
                took += usize::from(takes);
                for accumulate in [false, true] {
                    let run = |on| {
                        let mut out: Vec<f32> = old.iter().map(|&x| x as f32).collect();
                        panels::tests::forced(on, || unsafe {
                            tf.correlate(&src32, c_in, &v32, c_out, m, out.as_mut_ptr(), accumulate)
                        });
                        out
                    };
                    let (with, without) = (run(true), run(false));
                    let same = with.iter().zip(&without).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "n {n}, m {m}: panels ≠ gemm");
                }
                // Packed on the first call that took them, kept with the kernel for the later ones.
                let kept = v32.panels.get().is_some();
                assert_eq!(kept, takes, "n {n}, m {m}: panels kept {kept}");
            }
            let err = got32
                .iter()
                .zip(&want)
                .map(|(&a, b)| (a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 3e-5, "f32, n {n}, m {m}: {err}");
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("fma") {
            assert!(took >= 3, "only {took} shapes took the products by panels");
        }
    }
}
