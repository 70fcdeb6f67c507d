//! The project's own convolution kernel for causal and masked convolutions, 1-D and 2-D: a candle
//! `CustomOp3` (input, weight, bias) with forward and backward on the CPU, built on the `gemm` crate.
//!
//! Why our own: candle 0.11.1's CPU conv1d backward is wrong (the weight gradient reads the wrong storage
//! for a non-contiguous kernel; the input gradient goes through a matmul that folds the batch), and its
//! forward runs im2col on one core.
//!
//! The idea: channels-last, a convolution is a sum of *shifted* matrix products. Each image `[H, W, C]` is
//! zero-padded (rows on top, columns left and right) into `Hp·Wp` rows of `C` numbers, and all images are
//! stacked into one matrix `xpad: [B·Hp·Wp, C_in]`. Output pixel (y, x) is row `r = y·Wp + x` of its image,
//! and kernel tap t at (dy, dx) of the padded window reads row `r + dy·Wp + dx`: the same offset for every
//! pixel. So `out = Σ_t xpad[offset_t ..] · W_t` over one big matrix (M ≈ B·H·W rows) per tap, with no
//! im2col copy; rows that fall in padding columns are computed and thrown away. A mask (PixelCNN's A/B,
//! causal type A) is simply a shorter tap list. Taps at consecutive offsets with consecutive weight indices
//! (a 1-D dilation-1 kernel, a full row of a 2-D kernel) form a *run*: their `n` rows are `n·C_in`
//! consecutive numbers, so a run is one product over an overlapping view of `xpad` (row stride `C_in`).
//!
//! Shapes: x `[B, H, W, C_in]`, w `[C_out, C_in, N_k]` (PyTorch's layout, 2-D kernels flattened row-major:
//! k = ky·KW + kx), bias `[C_out]` → `[B, H, W, C_out]`.

use std::any::Any;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;

use super::binary_input::{self, Ones};
use super::transpose::transpose;
use super::winograd::{self, Kernel, Transforms};
use super::{contiguous_data, min_len, CHUNK, PAR_MIN};

/// One kernel tap: it reads padded pixel (y + dy, x + dx) for output (y, x), with weights `w[:, :, k]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tap {
    pub dy: usize,
    pub dx: usize,
    pub k: usize,
}

/// Which taps a convolution uses and how its input is padded. Output (y, x) reads input pixel
/// (y + dy − pad_top, x + dx − pad_left), zero outside the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapPlan {
    pub taps: Vec<Tap>,
    pub pad_top: usize,
    pub pad_left: usize,
    pub pad_right: usize,
}

impl TapPlan {
    /// A causal 1-D convolution of kernel `k` and dilation `d` over a row: output t reads t + j·d − pad.
    pub fn causal_1d(k: usize, dilation: usize, pad: usize) -> Self {
        let taps = (0..k)
            .map(|j| Tap {
                dy: 0,
                dx: j * dilation,
                k: j,
            })
            .collect();
        Self {
            taps,
            pad_top: 0,
            pad_left: pad,
            pad_right: 0,
        }
    }
}

/// Geometry of one call: the plan applied to a concrete batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub b: usize,
    pub h: usize,
    pub w: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub n_k: usize,
    pub plan: TapPlan,
}

/// Taps at consecutive offsets with consecutive weight indices, done as one product.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    pub(super) offset: usize,
    pub(super) k0: usize,
    pub(super) n: usize,
}

impl Run {
    /// Whether this run is every tap of `g`'s kernel (a 1-D kernel of dilation 1): its Winograd transform is
    /// then the kernel's, and a kept kernel keeps it.
    fn is_whole(&self, g: &Geometry) -> bool {
        self.k0 == 0 && self.n == g.n_k
    }
}

impl Geometry {
    /// Right padding actually laid out. A tap that reaches past a row's end reads on into the next row, whose
    /// first `pad_left` columns are zeros too, so only the part of `pad_right` beyond `pad_left` is needed:
    /// a 3×3 kernel on 8-pixel rows computes rows of 9 instead of 10 (a 7×7 one 11 instead of 14).
    fn pad_right(&self) -> usize {
        self.plan.pad_right.saturating_sub(self.plan.pad_left)
    }
    pub(super) fn wp(&self) -> usize {
        self.w + self.plan.pad_left + self.pad_right()
    }
    pub(super) fn image_rows(&self) -> usize {
        (self.h + self.plan.pad_top) * self.wp()
    }
    /// Rows of the padded input: the images, then the zero rows the last image's right-most taps read.
    fn rows(&self) -> usize {
        self.b * self.image_rows() + (self.plan.pad_right - self.pad_right())
    }
    fn offset(&self, t: &Tap) -> usize {
        t.dy * self.wp() + t.dx
    }
    /// Output rows computed: every valid pixel lies below this, and every tap stays inside `xpad`.
    pub(super) fn m(&self) -> usize {
        self.rows() - self.plan.taps.iter().map(|t| self.offset(t)).max().unwrap_or(0)
    }
    /// The taps grouped into runs: with the kernel packed tap-major, a run's weights are one contiguous
    /// matrix, so a run is always one product (fewer, larger products; each output row written once).
    pub(super) fn runs(&self) -> Vec<Run> {
        let mut taps: Vec<(usize, usize)> = self.plan.taps.iter().map(|t| (self.offset(t), t.k)).collect();
        taps.sort_unstable();
        let mut runs: Vec<Run> = vec![];
        for (offset, k) in taps {
            match runs.last_mut() {
                Some(r) if r.offset + r.n == offset && r.k0 + r.n == k => r.n += 1,
                _ => runs.push(Run { offset, k0: k, n: 1 }),
            }
        }
        runs
    }
    /// No padding at all (a 1×1 convolution): the padded layout is the images' own, so nothing is copied.
    fn unpadded(&self) -> bool {
        self.plan.pad_top == 0 && self.plan.pad_left == 0 && self.plan.pad_right == 0
    }
    /// Row of output pixel (b, y, x) in the padded layout.
    fn out_row(&self, b: usize, y: usize, x: usize) -> usize {
        b * self.image_rows() + y * self.wp() + x
    }
}

/// Whether gemm splits an (m × k) · (k × n) product across the threads. Splitting a tiny product costs more
/// than it saves; between 4 and 16 MFLOP it pays only over many rows (measured: the gated PixelCNN's products
/// at batch 4, 200–350 rows, made its train step 7 % faster split; a cached step's, 16 rows, 15 % slower).
fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    let flops = 2 * m * n * k;
    if flops >= 16_000_000 || (flops >= 4_000_000 && m >= 128) {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    }
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]`, every operand given by (pointer, row stride, column stride); split
/// across the threads when it is large enough to pay.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul<T: 'static + WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_strides: (usize, usize),
    accumulate: bool,
    lhs: *const T,
    lhs_strides: (usize, usize),
    rhs: *const T,
    rhs_strides: (usize, usize),
) {
    let par = parallelism(m, n, k);
    matmul_on(
        par,
        (m, n, k),
        dst,
        dst_strides,
        accumulate,
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
    )
}

/// [`matmul`] with the parallelism given (`Parallelism::None`: on the calling thread).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul_on<T: 'static + WithDType>(
    par: Parallelism,
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const T,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const T,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        T::from_f64(1.0),
        T::from_f64(1.0),
        false,
        false,
        false,
        par,
    )
}

/// Lays images `[B, H, W, C]` out as padded rows behind `front` zero rows: row y of image b goes to row
/// `front + b·Hp·Wp + (y + top)·Wp + left`; every other row of the `front + rows` is zero. Each element is
/// written once (no zero fill first), in parallel over images.
/// Without padding (and `front` 0) that is `x` itself, borrowed.
fn pad_rows<'a, T: WithDType>(
    x: &'a [T],
    g: &Geometry,
    c: usize,
    front: usize,
    (top, left): (usize, usize),
) -> Cow<'a, [T]> {
    if g.unpadded() && front == 0 {
        return Cow::Borrowed(x);
    }
    let (image, n) = (g.image_rows() * c, (front + g.rows()) * c);
    let mut v = Vec::with_capacity(n);
    let (head, rest) = v.spare_capacity_mut()[..n].split_at_mut(front * c);
    let (images, tail) = rest.split_at_mut(g.b * image);
    put_zeros(head);
    put_zeros(tail);
    images
        .par_chunks_exact_mut(image)
        .zip(x.par_chunks_exact(g.h * g.w * c))
        .with_min_len(min_len(image))
        .for_each(|(dst, src)| {
            let mut done = 0;
            for (y, row) in src.chunks_exact(g.w * c).enumerate() {
                let start = ((y + top) * g.wp() + left) * c;
                put_zeros(&mut dst[done..start]);
                dst[start..start + row.len()].write_copy_of_slice(row);
                done = start + row.len();
            }
            put_zeros(&mut dst[done..]);
        });
    // SAFETY: head, tail and every image's rows (data and padding, in order) were written above.
    unsafe { v.set_len(n) };
    Cow::Owned(v)
}

/// Writes zeros into `dst`.
fn put_zeros<T: WithDType>(dst: &mut [MaybeUninit<T>]) {
    dst.fill(MaybeUninit::new(T::zero()));
}

/// The inverse of `pad_rows` for a result with `c` channels: the rows of real pixels, `f` applied to each
/// pixel. Without padding that is `full` itself, `f` applied in place.
fn unpad_rows<T: WithDType>(
    mut full: Vec<T>,
    g: &Geometry,
    c: usize,
    top: usize,
    left: usize,
    f: impl Fn(&mut [T]) + Sync,
) -> Vec<T> {
    let n = g.b * g.h * g.w * c;
    if g.unpadded() {
        full.truncate(n);
        full.par_chunks_mut((c * CHUNK.div_ceil(c.max(1))).max(1))
            .with_min_len(min_len(CHUNK))
            .for_each(|px| px.chunks_exact_mut(c).for_each(&f));
        return full;
    }
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_exact_mut(g.h * g.w * c)
        .with_min_len(min_len(g.h * g.w * c))
        .enumerate()
        .for_each(|(b, dst)| {
            for (y, row) in dst.chunks_exact_mut(g.w * c).enumerate() {
                let src = g.out_row(b, y + top, left) * c;
                let row = row.write_copy_of_slice(&full[src..src + g.w * c]);
                row.chunks_exact_mut(c).for_each(&f);
            }
        });
    // SAFETY: every row of every image was written above.
    unsafe { out.set_len(n) };
    out
}

/// A raw pointer that tasks writing disjoint elements may share.
#[derive(Clone, Copy)]
pub(super) struct SharedMut<T>(pub(super) *mut T);
// SAFETY: only used by tasks that write disjoint elements of one live buffer (see the callers).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// Writes `v` at element `i`.
    ///
    /// # Safety
    /// `i` is inside the buffer, which is alive, and no other task touches element `i`.
    pub(super) unsafe fn write(&self, i: usize, v: T) {
        *self.0.add(i) = v;
    }
    /// The pointer to element `i`.
    ///
    /// # Safety
    /// `i` is inside the buffer (or one past its end).
    pub(super) unsafe fn at(&self, i: usize) -> *mut T {
        self.0.add(i)
    }
}

/// Output channels per transposition task: 16 floats are one cache line of each output row.
const CO_TILE: usize = 16;

/// Kernels of at least this many numbers are moved on every core — a lower threshold than the passes over
/// memory's [`PAR_MIN`], under which the gated PixelCNN's kernels (8–49 k numbers) were moved on one thread
/// while the other waited — 1.6 ms of its train step at batch 64 (`perf script` by thread); on both, that step took 59.5 →
/// 57.8 ms and the 8-layer step at batch 4 8.8 → 8.3 ms (medians of 5–6 interleaved rounds, 2 threads).
const TRANSPOSE_PAR_MIN: usize = 1 << 14;

/// The kernel tap-major, `[N_k, C_in, C_out]`: tap k's matrix W_k[ci, co] = w[co, ci, k] is one contiguous
/// block, and a run of taps k0..k0+n is one contiguous `[(j, ci), co]` matrix. The transpose of w as a
/// `[C_out, (C_in, N_k)]` matrix with its rows (ci, k) placed at (k, ci), in parallel over tiles of output
/// channels.
pub fn pack_tap_major<T: WithDType>(w: &[T], c_out: usize, c_in: usize, n_k: usize) -> Vec<T> {
    let cols = c_in * n_k;
    let src_rows: Vec<usize> = (0..c_out).map(|co| co * cols).collect();
    let dst_rows = tap_major_rows(c_in, n_k, c_out);
    by_tiles_of_output_channels(c_out, cols, |cos, dst| {
        // SAFETY: row (k, ci) gets this tile's output channels only, inside the buffer of c_out · cols.
        unsafe { transpose(w, &src_rows[cos.clone()], SharedMut(dst.at(cos.start)), &dst_rows) }
    })
}

/// The offset of row (k, ci) of a tap-major kernel (rows of `len` numbers), in the order (ci, k).
fn tap_major_rows(c_in: usize, n_k: usize, len: usize) -> Vec<usize> {
    (0..c_in)
        .flat_map(|ci| (0..n_k).map(move |k| (k * c_in + ci) * len))
        .collect()
}

/// The inverse of [`pack_tap_major`]: `[N_k, C_in, C_out]` back to PyTorch's `[C_out, C_in, N_k]`, in
/// parallel over tiles of output channels (each task writes its own rows).
fn unpack_tap_major<T: WithDType>(packed: &[T], c_out: usize, c_in: usize, n_k: usize) -> Vec<T> {
    let rows = c_in * n_k;
    let src_rows = tap_major_rows(c_in, n_k, c_out);
    let dst_rows: Vec<usize> = (0..c_out).map(|co| co * rows).collect();
    by_tiles_of_output_channels(c_out, rows, |cos, dst| {
        // SAFETY: this tile's rows co · (C_in · N_k) + (ci, k) only, inside the buffer.
        unsafe { transpose(&packed[cos.start..], &src_rows, dst, &dst_rows[cos]) }
    })
}

/// A vector of `c_out · per` numbers written by `fill(output channels, buffer)` for tiles of [`CO_TILE`]
/// output channels, in parallel when large; `fill` must write every element of its tile's share, and only
/// those.
fn by_tiles_of_output_channels<T: WithDType>(
    c_out: usize,
    per: usize,
    fill: impl Fn(Range<usize>, SharedMut<T>) + Sync,
) -> Vec<T> {
    let n = c_out * per;
    let mut out = Vec::<T>::with_capacity(n);
    let dst = SharedMut(out.as_mut_ptr());
    let task = |tile: usize| fill(tile * CO_TILE..((tile + 1) * CO_TILE).min(c_out), dst);
    let tiles = c_out.div_ceil(CO_TILE);
    if n < TRANSPOSE_PAR_MIN {
        (0..tiles).for_each(task);
    } else {
        (0..tiles).into_par_iter().for_each(task);
    }
    // SAFETY: the tiles cover every output channel, and each wrote all of its elements.
    unsafe { out.set_len(n) };
    out
}

/// A run's weights for the input gradient, `[(n−1−j, co), ci]` (the run reversed, each tap transposed), in
/// parallel over tiles of output channels: for each co, the transpose of w[co, :, k0..k0 + n] with its rows
/// j placed at n−1−j.
fn pack_run_reversed<T: WithDType>(w: &[T], g: &Geometry, run: Run) -> Vec<T> {
    let (c_in, c_out, n_k, n) = (g.c_in, g.c_out, g.n_k, run.n);
    let src_rows: Vec<usize> = (0..c_in).map(|ci| ci * n_k).collect();
    let dst_rows: Vec<usize> = (0..n).map(|j| (n - 1 - j) * c_out * c_in).collect();
    by_tiles_of_output_channels(c_out, n * c_in, |cos, dst| {
        for co in cos {
            let w_co = &w[co * c_in * n_k + run.k0..];
            // SAFETY: rows (·, co) only, written by the task owning `co`, inside the buffer of c_out · n · c_in.
            unsafe { transpose(w_co, &src_rows, SharedMut(dst.at(co * c_in)), &dst_rows) }
        }
    })
}

/// A kernel ready for the forward products: tap-major ([`pack_tap_major`]), and, made on first use, the
/// Winograd transform of a kernel whose taps are all one run (a 1-D kernel of dilation 1).
pub(super) struct Packed<T> {
    pub(super) taps: Vec<T>,
    winograd: OnceLock<Kernel<T>>,
    /// Kept for later calls (by [`evaluating`] or [`with_frozen_weights`]): its transform is made once.
    kept: bool,
}

impl<T: WithDType> Packed<T> {
    /// For this call only.
    pub(super) fn new(w: &[T], c_out: usize, c_in: usize, n_k: usize) -> Self {
        Self {
            taps: pack_tap_major(w, c_out, c_in, n_k),
            winograd: OnceLock::new(),
            kept: false,
        }
    }

    /// For this call and later ones.
    fn kept(w: &[T], c_out: usize, c_in: usize, n_k: usize) -> Self {
        Self {
            kept: true,
            ..Self::new(w, c_out, c_in, n_k)
        }
    }

    /// Whether `run` of geometry `g` takes Winograd in the forward pass: a run that is the whole kernel (its
    /// transform kept with it) over any number of rows when the kernel is kept, else as [`winograd::fits`].
    pub(super) fn winograd(&self, run: Run, g: &Geometry) -> bool {
        winograd::fits(run.n, g.c_in, g.c_out, g.m(), self.kept && run.is_whole(g))
    }
}

/// The forward pass on plain slices: x `[B, H, W, C_in]`, w `[C_out, C_in, N_k]`, bias `[C_out]` →
/// `[B, H, W, C_out]`.
pub fn forward<T: WithDType>(x: &[T], w: &[T], bias: &[T], g: &Geometry) -> Vec<T> {
    forward_packed(x, &Packed::new(w, g.c_out, g.c_in, g.n_k), bias, g, None)
}

/// Runs `f` on a worker of the current rayon pool. Called from outside a pool (a library user's thread),
/// each parallel loop inside a kernel would hand its work to the pool and wait for it, a wake-up each time
/// (a 256-channel layer ran 28 % slower, batch 1 twice as slow); one hand-off for the whole kernel instead.
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::join(f, || ()).0
    }
}

/// The forward pass with the kernel already packed tap-major (`[N_k, C_in, C_out]`), and a LeakyReLU of
/// slope `leaky` applied on the way out if given (LeakyReLU's own rule: v if v > 0, else v·slope).
fn forward_packed<T: WithDType>(x: &[T], packed: &Packed<T>, bias: &[T], g: &Geometry, leaky: Option<f64>) -> Vec<T> {
    on_worker(|| forward_on_worker(x, packed, bias, g, leaky))
}

fn forward_on_worker<T: WithDType>(
    x: &[T],
    packed: &Packed<T>,
    bias: &[T],
    g: &Geometry,
    leaky: Option<f64>,
) -> Vec<T> {
    let slope = leaky.map(T::from_f64);
    let runs = g.runs();
    // A one-hot (binary, sparse) input: the kernel's rows at the ones added up, the same sums as the products.
    if binary_input::applies(g, &runs, |run| packed.winograd(run, g)) {
        if let Some(ones) = Ones::of(x, g.c_in) {
            return binary_input::forward(&ones, &packed.taps, bias, g, &runs, slope);
        }
    }
    by_products(x, packed, bias, g, &runs, slope)
}

/// The forward pass as products over overlapping views of the padded input, one per run.
pub(super) fn by_products<T: WithDType>(
    x: &[T],
    packed: &Packed<T>,
    bias: &[T],
    g: &Geometry,
    runs: &[Run],
    slope: Option<T>,
) -> Vec<T> {
    let (c_in, c_out) = (g.c_in, g.c_out);
    let (m, n) = (g.m(), g.rows() * c_out);
    let xpad = pad_rows(x, g, c_in, 0, (g.plan.pad_top, g.plan.pad_left));
    // Rows below m are written by the first product (which does not read them); the rest are zeroed.
    let mut full = Vec::with_capacity(n);
    put_zeros(&mut full.spare_capacity_mut()[m * c_out..n]);
    let block = c_in * c_out;
    for (i, &run) in runs.iter().enumerate() {
        let taps = &packed.taps[run.k0 * block..][..run.n * block];
        if packed.winograd(run, g) {
            // The same sum by Winograd, from the kernel's transform (made once for a kept kernel).
            let tf = Transforms::new(run.n);
            let own;
            let v = if run.is_whole(g) {
                packed.winograd.get_or_init(|| tf.kernel(taps, block))
            } else {
                own = tf.kernel(taps, block);
                &own
            };
            // SAFETY: `full` has room for m ≤ rows rows of C_out; xpad from the run's offset holds m + n − 1
            // rows (m's definition).
            unsafe { tf.correlate(&xpad[run.offset * c_in..], c_in, v, c_out, m, full.as_mut_ptr(), i > 0) };
            continue;
        }
        // out[r] (+)= xpad[r + offset .. + n rows] · W[k0..k0+n]: an overlapping view of xpad (row stride
        // C_in) times a contiguous block of the packed kernel.
        let lhs = xpad[run.offset * c_in..].as_ptr();
        let rhs = taps.as_ptr();
        // SAFETY: lhs rows r < m read xpad[(r + offset)·C_in .. + n·C_in] ⊂ xpad (m + offset + n − 1 ≤ rows,
        // by m's definition); rhs is n·C_in rows of C_out inside `packed`; dst is `full`, m ≤ rows.
        unsafe {
            matmul(
                (m, c_out, run.n * c_in),
                full.as_mut_ptr(),
                (c_out, 1),
                i > 0,
                lhs,
                (c_in, 1),
                rhs,
                (c_out, 1),
            );
        }
    }
    // SAFETY: rows < m were written by the first run's product (there is one: a plan has taps), the rest above.
    unsafe { full.set_len(n) };
    // Keep the rows of real pixels, adding the bias (and the activation) on the way.
    unpad_rows(full, g, c_out, 0, 0, |px| finish_pixel(px, bias, slope))
}

/// The output pass of one pixel's sums: the bias added, then a LeakyReLU of `slope` if given (its own rule:
/// v if v > 0, else v·slope).
#[inline]
pub(super) fn finish_pixel<T: WithDType>(px: &mut [T], bias: &[T], slope: Option<T>) {
    match slope {
        None => px.iter_mut().zip(bias).for_each(|(o, &b)| *o += b),
        Some(slope) => {
            for (o, &b) in px.iter_mut().zip(bias) {
                // Both sides computed, then chosen: a select the compiler vectorises, where a branch on the
                // sign (random here) was mispredicted half the time (a fifth of the seed net's forward pass).
                let v = *o + b;
                let scaled = v * slope;
                *o = if v > T::zero() { v } else { scaled };
            }
        }
    }
}

/// The backward pass on plain slices: given `grad_out [B, H, W, C_out]`, returns
/// `(grad_x [B, H, W, C_in], grad_w [C_out, C_in, N_k], grad_bias [C_out])`; grad_x is empty unless
/// `need_gx`. Weights no tap uses (masked ones) get a zero gradient.
pub fn backward<T: WithDType>(
    x: &[T],
    w: &[T],
    grad_out: &[T],
    g: &Geometry,
    need_gx: bool,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    on_worker(|| backward_on_worker(x, w, grad_out, g, need_gx))
}

fn backward_on_worker<T: WithDType>(
    x: &[T],
    w: &[T],
    grad_out: &[T],
    g: &Geometry,
    need_gx: bool,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (c_in, c_out, n_k) = (g.c_in, g.c_out, g.n_k);
    let (m, rows) = (g.m(), g.rows());
    let runs = g.runs();
    let xpad = pad_rows(x, g, c_in, 0, (g.plan.pad_top, g.plan.pad_left));
    // The output gradient in the padded row layout, behind `front` zero rows (the transposed products below
    // read up to n−1 rows before row 0). Thrown-away rows get zero gradient, so they contribute nothing.
    let front = runs.iter().map(|r| r.n).max().unwrap_or(1) - 1;
    let gpad = pad_rows(grad_out, g, c_out, front, (0, 0));
    let gfull = &gpad[front * c_out..];
    let gb = column_sums(grad_out, c_out);
    let block = c_in * c_out;
    // A one-hot input (f32): the weight gradient as sums of gradient rows, the products' sums (binary_input.rs).
    let ones = match std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        true => Ones::of(x, c_in),
        false => None,
    };
    // The weight gradient and the input gradient read the same inputs and write different buffers: computed
    // side by side (each by the same products as one after the other, so the same bits) they keep both cores
    // busy where gemm splits the products poorly or not at all (a batch of 4).
    let weight_gradient = || {
        // grad W tap-major, [N_k, C_in, C_out] like the packed kernel (taps no run uses stay zero).
        let mut gw_packed = vec![T::from_f64(0.0); n_k * block];
        for run in &runs {
            let x_run = &xpad[run.offset * c_in..];
            if winograd::fits(run.n, c_in, c_out, m, false) {
                // grad W for the run by Winograd (see winograd.rs), into its contiguous block.
                let gw = Transforms::new(run.n).weight_gradient(x_run, c_in, gfull, c_out, m);
                gw_packed[run.k0 * block..][..run.n * block].copy_from_slice(&gw);
                continue;
            }
            // The product below as gemm blocks it (transposed: its destination is row-major).
            if let (Some(ones), Some(depth)) = (&ones, binary_input::depth_block(c_out, run.n * c_in, m)) {
                let out = &mut gw_packed[run.k0 * block..][..run.n * block];
                binary_input::weight_gradient(ones, g, run, gfull, m, depth, out);
                continue;
            }
            // grad W for the run, [(j, ci), co] = (overlapping view of xpad)ᵀ · G: one contiguous block.
            // SAFETY: the overlapping view stays inside xpad (m + offset + n − 1 ≤ rows), and the run's block
            // lies inside gw_packed.
            unsafe {
                matmul(
                    (run.n * c_in, c_out, m),
                    gw_packed[run.k0 * block..].as_mut_ptr(),
                    (c_out, 1),
                    false,
                    x_run.as_ptr(),
                    (1, c_in),
                    gfull.as_ptr(),
                    (c_out, 1),
                )
            };
        }
        unpack_tap_major(&gw_packed, c_out, c_in, n_k)
    };
    let input_gradient = || {
        if !need_gx {
            return vec![];
        }
        // grad xpad: the first run (the smallest offset: runs are sorted) writes every row from its offset on,
        // so only the rows before it start as zeros.
        let first_offset = runs.first().map_or(rows, |r| r.offset);
        let mut gxpad = Vec::<T>::with_capacity(rows * c_in);
        put_zeros(&mut gxpad.spare_capacity_mut()[..first_offset * c_in]);
        for (i, run) in runs.iter().enumerate() {
            // grad xpad[s] += Σ_j G[s − offset − j]·W_jᵀ: a product over the overlapping view of G (with n−1
            // zero rows in front) and the run's weights in reverse order — by Winograd where that pays, as in
            // the forward pass.
            let wr = pack_run_reversed(w, g, *run);
            // SAFETY: the run's rows lie inside gxpad's capacity.
            let dst = unsafe { gxpad.as_mut_ptr().add(run.offset * c_in) };
            let src = &gpad[(front + 1 - run.n) * c_out..];
            let rows_out = rows - run.offset;
            // SAFETY (both products): the overlapping view of G stays inside gpad (`front` ≥ n − 1 zero rows
            // precede gfull), and the destination rows inside gxpad.
            if winograd::fits(run.n, c_out, c_in, rows_out, false) {
                let tf = Transforms::new(run.n);
                unsafe { tf.correlate(src, c_out, &tf.kernel(&wr, c_out * c_in), c_in, rows_out, dst, i > 0) };
                continue;
            }
            unsafe {
                matmul(
                    (rows_out, c_in, run.n * c_out),
                    dst,
                    (c_in, 1),
                    i > 0,
                    src.as_ptr(),
                    (c_out, 1),
                    wr.as_ptr(),
                    (c_in, 1),
                )
            };
        }
        // SAFETY: rows before the first run's offset were zeroed, the first product wrote every row after it.
        unsafe { gxpad.set_len(rows * c_in) };
        unpad_rows(gxpad, g, c_in, g.plan.pad_top, g.plan.pad_left, |_| {})
    };
    // Side by side only for layers under 1 GFLOP: the gated PixelCNN's at batch 4 (≈ 35 MFLOP per gradient,
    // its train step 4 % faster) and at batch 64 (0.6 GFLOP: nothing gained on a Zen 4, its step 2 % faster
    // on an Intel Xeon with AVX-512 — 71.8 → 70.3 ms), not the seed net's 256-channel ones at batch 64
    // (3.7 GFLOP, already split by gemm and Winograd: 5 % slower with both at once).
    let flops = 2 * m * c_in * c_out * g.plan.taps.len();
    let (gw, gx) = if flops < 1 << 30 {
        rayon::join(weight_gradient, input_gradient)
    } else {
        (weight_gradient(), input_gradient())
    };
    (gx, gw, gb)
}

/// Σ over rows of a `[rows, c]` matrix: partial sums over fixed blocks of rows, in parallel, then added left
/// to right, so the result has the same bits for any number of threads (a parallel `reduce` would add the
/// blocks in an order that depends on which thread stole what).
fn column_sums<T: WithDType>(m: &[T], c: usize) -> Vec<T> {
    const ROWS: usize = 256;
    let add = |mut a: Vec<T>, b: &[T]| {
        for (x, y) in a.iter_mut().zip(b) {
            *x += *y;
        }
        a
    };
    let partials: Vec<Vec<T>> = m
        .par_chunks(c * ROWS)
        .with_min_len(min_len(c * ROWS))
        .map(|rows| rows.chunks_exact(c).fold(vec![T::from_f64(0.0); c], add))
        .collect();
    partials.iter().fold(vec![T::from_f64(0.0); c], |a, p| add(a, p))
}

/// The candle op on (x, w, bias). Its inputs must be contiguous (the wrapper makes them so). `packed` is
/// the kernel already packed tap-major, when the weights are frozen (see [`with_frozen_weights`]).
/// `leaky` fuses a LeakyReLU of that slope (≥ 0) into the output pass.
#[derive(Clone)]
pub struct ShiftedConvOp {
    pub plan: TapPlan,
    packed: Option<Arc<dyn Any + Send + Sync>>,
    leaky: Option<f64>,
}

impl ShiftedConvOp {
    fn geometry(&self, x: &Shape, w: &Shape, b: &Shape) -> Result<Geometry> {
        let (b_size, h, wd, c_in) = x.dims4()?;
        let (c_out, c_in_w, n_k) = w.dims3()?;
        if c_in != c_in_w {
            candle_core::bail!("shifted conv: input has {c_in} channels, the kernel expects {c_in_w}");
        }
        if b.dims() != [c_out] {
            candle_core::bail!("shifted conv: bias has shape {:?}, expected [{c_out}]", b.dims());
        }
        if b_size * h * wd == 0 {
            candle_core::bail!(
                "shifted conv: empty input {:?} (no examples or no pixels)",
                (b_size, h, wd)
            );
        }
        let p = &self.plan;
        if p.taps.is_empty() {
            candle_core::bail!("shifted conv: no taps");
        }
        for t in &p.taps {
            if t.k >= n_k || t.dy > p.pad_top || t.dx > p.pad_left + p.pad_right {
                candle_core::bail!(
                    "shifted conv: tap {t:?} is outside the kernel ({n_k} weights) or the padding {p:?}"
                );
            }
        }
        Ok(Geometry {
            b: b_size,
            h,
            w: wd,
            c_in,
            c_out,
            n_k,
            plan: p.clone(),
        })
    }
}

/// Runs `f` on the tensor's contiguous CPU data without copying it.
pub(crate) fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => Ok(f(contiguous_data::<T>(cpu, layout, "shifted conv")?)),
        _ => candle_core::bail!("shifted conv: the CPU kernel got a tensor on another device"),
    }
}

impl CustomOp3 for ShiftedConvOp {
    fn name(&self) -> &'static str {
        "shifted-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(l1.shape(), l2.shape(), l3.shape())?;
        fn run<T: WithDType>(
            s: [(&CpuStorage, &Layout); 3],
            g: &Geometry,
            packed: Option<&(dyn Any + Send + Sync)>,
            leaky: Option<f64>,
        ) -> Result<Vec<T>> {
            let (x, w, b) = (
                contiguous_data::<T>(s[0].0, s[0].1, "shifted conv")?,
                contiguous_data::<T>(s[1].0, s[1].1, "shifted conv")?,
                contiguous_data::<T>(s[2].0, s[2].1, "shifted conv")?,
            );
            Ok(match packed.and_then(|p| p.downcast_ref::<Packed<T>>()) {
                Some(p) => forward_packed(x, p, b, g, leaky),
                None => forward_packed(x, &Packed::new(w, g.c_out, g.c_in, g.n_k), b, g, leaky),
            })
        }
        let args = [(s1, l1), (s2, l2), (s3, l3)];
        let packed = self.packed.as_deref();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(run(args, &g, packed, self.leaky)?)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(run(args, &g, packed, self.leaky)?)
            }
            _ => candle_core::bail!("shifted conv: supports f32 and f64 with matching dtypes"),
        };
        Ok((out, Shape::from((g.b, g.h, g.w, g.c_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geometry(x.shape(), w.shape(), b.shape())?;
        // Through the fused LeakyReLU first: its derivative is 1 where the output is > 0 and the slope
        // elsewhere (with slope ≥ 0 the output is > 0 exactly where the input is, as PyTorch's rule asks).
        let grad = match self.leaky {
            Some(slope) => &crate::nn::activation::leaky_relu_backward(res, grad, slope)?,
            None => grad,
        };
        type Grads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);
        fn run<T: WithDType>(x: &Tensor, w: &Tensor, b: &Tensor, grad: &Tensor, g: &Geometry) -> Result<Grads> {
            // The input of a first layer is data: no gradient needed (nor computed).
            let need_gx = x.track_op();
            let (gx, gw, gb) = with_slice::<T, _>(x, |xs| {
                with_slice::<T, _>(w, |ws| with_slice::<T, _>(grad, |gs| backward(xs, ws, gs, g, need_gx)))
            })???;
            let gx = if need_gx {
                Some(Tensor::from_vec(gx, x.shape(), x.device())?)
            } else {
                None
            };
            Ok((
                gx,
                Some(Tensor::from_vec(gw, w.shape(), w.device())?),
                Some(Tensor::from_vec(gb, b.shape(), b.device())?),
            ))
        }
        match x.dtype() {
            candle_core::DType::F32 => run::<f32>(x, w, b, grad, &g),
            candle_core::DType::F64 => run::<f64>(x, w, b, grad, &g),
            dt => candle_core::bail!("shifted conv: unsupported dtype {dt:?}"),
        }
    }
}

/// x `[B, H, W, C_in]`, w `[C_out, C_in, N_k]`, bias `[C_out]` → `[B, H, W, C_out]`:
/// `out[b, y, x] = bias + Σ_taps w[:, :, k] · x[b, y + dy − pad_top, x + dx − pad_left]` (zero outside).
/// Differentiable in all three.
pub fn shifted_conv(x: &Tensor, w: &Tensor, bias: &Tensor, plan: &TapPlan) -> Result<Tensor> {
    conv_op(x, w, bias, plan, None)
}

/// [`shifted_conv`] followed by a LeakyReLU of `slope` (≥ 0), in one pass over the output: the same
/// values and gradients as `leaky_relu(&shifted_conv(…), slope)`.
pub fn shifted_conv_leaky(x: &Tensor, w: &Tensor, bias: &Tensor, plan: &TapPlan, slope: f64) -> Result<Tensor> {
    if slope.is_nan() || slope < 0.0 {
        return crate::nn::leaky_relu(&shifted_conv(x, w, bias, plan)?, slope);
    }
    conv_op(x, w, bias, plan, Some(slope))
}

fn conv_op(x: &Tensor, w: &Tensor, bias: &Tensor, plan: &TapPlan, leaky: Option<f64>) -> Result<Tensor> {
    let w = w.contiguous()?;
    let packed = frozen_packed(&w).or_else(|| reused_packed(&w));
    x.contiguous()?.apply_op3(
        &w,
        &bias.contiguous()?,
        ShiftedConvOp {
            plan: plan.clone(),
            packed,
            leaky,
        },
    )
}

/// Kernels packed tap-major, by the weight's storage, while [`with_frozen_weights`] runs. Each entry keeps
/// its weight tensor alive, so no other tensor can take its memory (and its key) meanwhile.
type FrozenCache = HashMap<Key, (Tensor, Arc<dyn Any + Send + Sync>)>;

thread_local! {
    /// Per thread: a promise that weights are constant holds for the code that made it, not for a training
    /// loop running on another thread.
    static FROZEN: RefCell<Option<FrozenCache>> = const { RefCell::new(None) };
}

/// Runs `f` with the weights declared constant: each convolution packs its kernel on first use and reuses
/// it for every later call inside `f` (the naive and predictive samplers run the network D times, an
/// evaluation once per batch). Nothing inside `f` may change a weight in place — an optimizer step, an
/// EMA swap, `Var::set` — or later calls would use the old kernel. Nested calls share the outer cache.
pub fn with_frozen_weights<R>(f: impl FnOnce() -> R) -> R {
    let outer = FROZEN.with(|c| {
        let mut cache = c.borrow_mut();
        let outer = cache.is_some();
        if !outer {
            *cache = Some(HashMap::new());
        }
        outer
    });
    // Clear the cache on the way out, also if `f` unwinds.
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            if !self.0 {
                FROZEN.with(|c| *c.borrow_mut() = None);
            }
        }
    }
    let _reset = Reset(outer);
    f()
}

/// Kernels packed by earlier evaluation passes on this thread, by the weight's storage.
type ReuseCache = HashMap<Key, Reusable>;

/// A kernel of the reuse cache: a copy of the weights it was packed from, the packed kernel, and the tensor
/// (its id) whose numbers were last found equal to the copy, with [`candle_core::storage_writes`] then.
#[derive(Clone)]
struct Reusable {
    copy: Arc<dyn Any + Send + Sync>,
    packed: Arc<dyn Any + Send + Sync>,
    checked: (candle_core::TensorId, u64),
}

/// Weights (numbers) the reuse cache keeps copies of at most (in f32 64 MB, and as much again packed); past
/// that it starts again.
const REUSE_MAX: usize = 1 << 24;

thread_local! {
    static EVALUATING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static REUSE: RefCell<ReuseCache> = RefCell::new(HashMap::new());
    /// Kernels packed for evaluation passes on this thread (for the tests).
    #[cfg(test)]
    static REUSE_PACKED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Weights compared in full with their cached copy on this thread (for the tests).
    #[cfg(test)]
    static REUSE_COMPARED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `f` as an evaluation pass (a forward pass in [`crate::nn::Mode::Eval`]): a convolution whose weights
/// are, bit for bit, those it packed its kernel from on an earlier evaluation pass on this thread reuses that
/// kernel, so a model evaluated again and again (a forward pass at batch 1 in a loop, scoring) packs each
/// kernel once. The weights are compared in full unless they are the same tensor as at the last check and
/// no tensor has been written in place since (changed in place — an optimizer step, an EMA swap,
/// `Var::set` — they are packed again), so unlike [`with_frozen_weights`] this promises nothing.
pub fn evaluating<R>(f: impl FnOnce() -> R) -> R {
    let outer = EVALUATING.with(|e| e.replace(true));
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            EVALUATING.with(|e| e.set(self.0));
        }
    }
    let _reset = Reset(outer);
    f()
}

/// Whether two slices hold the same bits (compared in pieces on every core when large).
fn same_bits<T: WithDType>(a: &[T], b: &[T]) -> bool {
    let bytes = |v: &[T]| {
        // SAFETY: f32 and f64 (the only types stored) have no padding: every byte of the slice is initialised.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
    };
    let (a, b) = (bytes(a), bytes(b));
    if a.len() != b.len() {
        return false;
    }
    if a.len() < PAR_MIN {
        return a == b;
    }
    a.par_chunks(CHUNK * 4)
        .zip(b.par_chunks(CHUNK * 4))
        .all(|(p, q)| p == q)
}

/// The kernel of `w` packed on an earlier evaluation pass from the same bits, else packed now (and kept);
/// `None` outside [`evaluating`] or for a tensor that is not an f32/f64 CPU tensor. The bits are not
/// compared again for the tensor they were last found equal in (its id: a tensor keeps its storage for life)
/// while no tensor has been written in place since (an optimizer step, `Var::set`; the count of those
/// writes is read under the weights' read lock). A weight made anew for each pass (a colour mask applied, a
/// reshaped view) has a new id each time: its bits are compared, as they always were.
fn reused_packed(w: &Tensor) -> Option<Arc<dyn Any + Send + Sync>> {
    if !EVALUATING.with(|e| e.get()) {
        return None;
    }
    fn reuse<T: WithDType>(
        w: &Tensor,
        v: &[T],
        (c_out, c_in, n_k): (usize, usize, usize),
        key: Key,
    ) -> Arc<dyn Any + Send + Sync> {
        let now = (w.id(), candle_core::storage_writes());
        // Compared with no borrow held: while it waits for the pool, this thread may run other work that
        // convolves.
        if let Some(entry) = REUSE.with(|c| c.borrow().get(&key).cloned()) {
            if entry.checked == now {
                return entry.packed;
            }
            #[cfg(test)]
            REUSE_COMPARED.with(|n| n.set(n.get() + 1));
            if entry
                .copy
                .downcast_ref::<Vec<T>>()
                .is_some_and(|copy| same_bits(copy, v))
            {
                REUSE.with(|c| {
                    if let Some(e) = c.borrow_mut().get_mut(&key) {
                        e.checked = now;
                    }
                });
                return entry.packed;
            }
        }
        #[cfg(test)]
        REUSE_PACKED.with(|n| n.set(n.get() + 1));
        let packed: Arc<dyn Any + Send + Sync> = Arc::new(Packed::kept(v, c_out, c_in, n_k));
        REUSE.with(|c| {
            let mut cache = c.borrow_mut();
            cache.remove(&key);
            let kept: usize = cache
                .values()
                .map(|e| e.copy.downcast_ref::<Vec<T>>().map_or(0, Vec::len))
                .sum();
            if kept + v.len() > REUSE_MAX {
                cache.clear();
            }
            let entry = Reusable {
                copy: Arc::new(v.to_vec()),
                packed: packed.clone(),
                checked: now,
            };
            cache.insert(key, entry);
        });
        packed
    }
    with_weights(w, |weights, dims, key| match weights {
        Weights::F32(v) => reuse(w, v, dims, key),
        Weights::F64(v) => reuse(w, v, dims, key),
    })
}

/// The packed kernel of `w` from the frozen cache (packing and storing it on first use), or `None` when no
/// [`with_frozen_weights`] is running or `w` is not an f32/f64 CPU tensor.
fn frozen_packed(w: &Tensor) -> Option<Arc<dyn Any + Send + Sync>> {
    let (key, p, new) = with_weights(w, |weights, dims, key| {
        let cached = FROZEN.with(|c| c.borrow().as_ref().map(|cache| cache.get(&key).map(|(_, p)| p.clone())));
        match cached? {
            Some(p) => Some((key, p, false)), // packed before
            // Packed with no borrow held: while it waits for the pool, this thread may run other work that
            // convolves.
            None => Some((key, weights.pack(dims), true)),
        }
    })??;
    if new {
        FROZEN.with(|c| {
            if let Some(cache) = c.borrow_mut().as_mut() {
                cache.entry(key).or_insert_with(|| (w.clone(), p.clone()));
            }
        });
    }
    Some(p)
}

/// A kernel cache's key: where the weights' numbers start, how many there are, the weight's dims.
type Key = (usize, usize, Vec<usize>);

/// A convolution's weights `[C_out, C_in, N_k]`, as the kernel caches read them.
enum Weights<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl Weights<'_> {
    fn pack(&self, (c_out, c_in, n_k): (usize, usize, usize)) -> Arc<dyn Any + Send + Sync> {
        match *self {
            Weights::F32(v) => Arc::new(Packed::kept(v, c_out, c_in, n_k)),
            Weights::F64(v) => Arc::new(Packed::kept(v, c_out, c_in, n_k)),
        }
    }
}

/// `f` on the numbers of `w`, its shape (C_out, C_in, N_k) and its cache key, its storage read meanwhile;
/// `None` unless `w` is a contiguous f32/f64 CPU tensor of three dimensions.
fn with_weights<R>(w: &Tensor, f: impl FnOnce(Weights, (usize, usize, usize), Key) -> R) -> Option<R> {
    let dims = w.dims3().ok()?;
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return None;
    };
    let (start, end) = layout.contiguous_offsets()?;
    let (weights, ptr) = match cpu {
        CpuStorage::F32(v) => (Weights::F32(&v[start..end]), v[start..].as_ptr() as usize),
        CpuStorage::F64(v) => (Weights::F64(&v[start..end]), v[start..].as_ptr() as usize),
        _ => return None,
    };
    Some(f(weights, dims, (ptr, end - start, w.dims().to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The definition, as a naive loop.
    fn naive(x: &[f64], w: &[f64], bias: &[f64], g: &Geometry) -> Vec<f64> {
        let mut out = vec![0.0; g.b * g.h * g.w * g.c_out];
        for b in 0..g.b {
            for y in 0..g.h {
                for xx in 0..g.w {
                    for co in 0..g.c_out {
                        let mut s = bias[co];
                        for t in &g.plan.taps {
                            let (sy, sx) = (
                                (y + t.dy) as isize - g.plan.pad_top as isize,
                                (xx + t.dx) as isize - g.plan.pad_left as isize,
                            );
                            if sy < 0 || sx < 0 || sx >= g.w as isize {
                                continue;
                            }
                            let src = ((b * g.h + sy as usize) * g.w + sx as usize) * g.c_in;
                            for ci in 0..g.c_in {
                                s += w[(co * g.c_in + ci) * g.n_k + t.k] * x[src + ci];
                            }
                        }
                        out[((b * g.h + y) * g.w + xx) * g.c_out + co] = s;
                    }
                }
            }
        }
        out
    }

    fn random(n: usize, rng: &mut impl Rng) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// 2-D masked 3×3 kernels (type A and B), a vertical-stack kernel, and 1-D causal kernels, on sizes
    /// small enough for single taps and large enough (M ≥ 1024) for runs.
    fn geometries() -> Vec<Geometry> {
        let masked = |a: bool| {
            let mut taps = vec![];
            for ky in 0..3 {
                for kx in 0..3 {
                    if ky < 1 || (ky == 1 && (kx < 1 || (kx == 1 && !a))) {
                        taps.push(Tap {
                            dy: ky,
                            dx: kx,
                            k: ky * 3 + kx,
                        });
                    }
                }
            }
            TapPlan {
                taps,
                pad_top: 1,
                pad_left: 1,
                pad_right: 1,
            }
        };
        let vertical = TapPlan {
            taps: (0..2)
                .flat_map(|ky| {
                    (0..3).map(move |kx| Tap {
                        dy: ky,
                        dx: kx,
                        k: ky * 3 + kx,
                    })
                })
                .collect(),
            pad_top: 2,
            pad_left: 1,
            pad_right: 1,
        };
        let mut v = vec![];
        for &(b, h, w, c_in, c_out) in &[(2, 4, 5, 2, 3), (3, 1, 7, 3, 2), (1, 40, 30, 2, 2)] {
            for plan in [
                masked(true),
                masked(false),
                vertical.clone(),
                TapPlan::causal_1d(3, 2, 5),
                TapPlan::causal_1d(2, 1, 1),
            ] {
                v.push(Geometry {
                    b,
                    h,
                    w,
                    c_in,
                    c_out,
                    n_k: 9,
                    plan,
                });
            }
        }
        v
    }

    /// The tap-major packing puts w[co, ci, k] at (k, ci, co), and unpacking inverts it, on the sequential
    /// (small) and parallel (large, above PAR_MIN) paths, with whole and partial tiles; the reversed run layout
    /// puts it at (n−1−j, co, ci).
    #[test]
    fn packing_moves_every_weight_where_the_products_expect_it() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (c_out, c_in, n_k) in [(5, 3, 4), (130, 96, 7), (141, 130, 8)] {
            let w = random(c_out * c_in * n_k, &mut rng);
            let p = pack_tap_major(&w, c_out, c_in, n_k);
            for co in 0..c_out {
                for ci in 0..c_in {
                    for k in 0..n_k {
                        assert_eq!(p[(k * c_in + ci) * c_out + co], w[(co * c_in + ci) * n_k + k]);
                    }
                }
            }
            assert_eq!(unpack_tap_major(&p, c_out, c_in, n_k), w);
            let g = Geometry {
                b: 1,
                h: 1,
                w: 4,
                c_in,
                c_out,
                n_k,
                plan: TapPlan::causal_1d(n_k, 1, n_k - 1),
            };
            let run = Run {
                offset: 0,
                k0: 1,
                n: n_k - 1,
            };
            let r = pack_run_reversed(&w, &g, run);
            for j in 0..run.n {
                for co in 0..c_out {
                    for ci in 0..c_in {
                        let want = w[(co * c_in + ci) * n_k + run.k0 + j];
                        assert_eq!(r[((run.n - 1 - j) * c_out + co) * c_in + ci], want);
                    }
                }
            }
        }
    }

    #[test]
    fn forward_matches_naive_loop() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for g in geometries() {
            let x = random(g.b * g.h * g.w * g.c_in, &mut rng);
            let w = random(g.c_out * g.c_in * g.n_k, &mut rng);
            let bias = random(g.c_out, &mut rng);
            let fast = forward(&x, &w, &bias, &g);
            let err = fast
                .iter()
                .zip(&naive(&x, &w, &bias, &g))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12, "{g:?}: max err {err}");
        }
    }

    /// The backward pass is the exact adjoint of the (linear) forward, checked one unit direction at a time.
    #[test]
    fn backward_is_the_adjoint_of_the_naive_loop() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        for g in geometries().into_iter().filter(|g| g.h * g.w < 100) {
            let x = random(g.b * g.h * g.w * g.c_in, &mut rng);
            let w = random(g.c_out * g.c_in * g.n_k, &mut rng);
            let go = random(g.b * g.h * g.w * g.c_out, &mut rng);
            let zero = vec![0.0; g.c_out];
            let (gx, gw, gb) = backward(&x, &w, &go, &g, true);
            for (co, v) in gb.iter().enumerate() {
                let want: f64 = go.iter().skip(co).step_by(g.c_out).sum();
                assert!((v - want).abs() < 1e-12, "{g:?} grad_bias[{co}]");
            }
            for i in 0..x.len() {
                let mut e = vec![0.0; x.len()];
                e[i] = 1.0;
                let want = dot(&go, &naive(&e, &w, &zero, &g));
                assert!((gx[i] - want).abs() < 1e-12, "{g:?} grad_x[{i}]: {} vs {want}", gx[i]);
            }
            for i in 0..w.len() {
                let mut e = vec![0.0; w.len()];
                e[i] = 1.0;
                let want = dot(&go, &naive(&x, &e, &zero, &g));
                assert!((gw[i] - want).abs() < 1e-12, "{g:?} grad_w[{i}]: {} vs {want}", gw[i]);
            }
            assert!(backward(&x, &w, &go, &g, false).0.is_empty());
        }
    }

    /// Shared padding across row ends: kernels wider than the image, asymmetric padding (right beyond left),
    /// and a single-column image, forward against the naive loop and backward as its adjoint.
    #[test]
    fn kernels_reaching_across_row_ends_match_the_naive_loop() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let asymmetric = TapPlan {
            taps: (0..2)
                .flat_map(|dy| (0..4).map(move |dx| Tap { dy, dx, k: dy * 4 + dx }))
                .collect(),
            pad_top: 1,
            pad_left: 1,
            pad_right: 2,
        };
        let cases = [
            (
                crate::nn::masked_conv2d::masked_plan(7, crate::nn::ConvType::A),
                49,
                (2, 3, 2),
            ),
            (crate::nn::masked_conv2d::vertical_plan(5), 25, (3, 4, 1)),
            (asymmetric, 8, (2, 3, 5)),
        ];
        for (plan, n_k, (b, h, w)) in cases {
            let g = Geometry {
                b,
                h,
                w,
                c_in: 2,
                c_out: 3,
                n_k,
                plan,
            };
            let x = random(b * h * w * 2, &mut rng);
            let wt = random(3 * 2 * n_k, &mut rng);
            let bias = random(3, &mut rng);
            let go = random(b * h * w * 3, &mut rng);
            check_forward_and_adjoint(&g, (&x, &wt, &bias), &go, 1e-12);
        }
    }

    /// The forward pass against the naive loop (max error below `tol`), and the backward as its adjoint:
    /// <go, f(x; w)> = <∂x, x> = <∂w, w> for the linear map (relative 1e-9).
    fn check_forward_and_adjoint(g: &Geometry, (x, w, bias): (&[f64], &[f64], &[f64]), go: &[f64], tol: f64) {
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        let err = forward(x, w, bias, g)
            .iter()
            .zip(&naive(x, w, bias, g))
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max);
        assert!(err < tol, "{g:?}: forward max err {err}");
        let (gx, gw, _) = backward(x, w, go, g, true);
        let lhs = dot(go, &naive(x, w, &vec![0.0; g.c_out], g));
        assert!((lhs - dot(&gx, x)).abs() < 1e-9 * lhs.abs().max(1.0), "{g:?}: grad x");
        assert!((lhs - dot(&gw, w)).abs() < 1e-9 * lhs.abs().max(1.0), "{g:?}: grad w");
    }

    /// Runs of 4–7 taps between wide layers over many rows take Winograd (winograd.rs: F(2, n); a run of 7 in
    /// pieces below AVX-512, here forced both ways), forward and input gradient (and runs of 3 below AVX-512):
    /// against the naive loop, and the backward as its adjoint (f64, where both are exact up to rounding).
    #[test]
    fn winograd_path_matches_the_naive_loop_and_its_adjoint() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        for (b, n_k, c_in, c_out) in [(16, 7, 128, 130), (21, 5, 129, 128)] {
            let g = Geometry {
                b,
                h: 1,
                w: 64,
                c_in,
                c_out,
                n_k,
                plan: TapPlan::causal_1d(n_k, 1, n_k - 1),
            };
            let (m, rows_out) = (g.m(), g.rows() - g.runs()[0].offset);
            assert!(winograd::fits(n_k, c_in, c_out, m, false) && winograd::fits(n_k, c_out, c_in, rows_out, false));
            let x = random(b * 64 * c_in, &mut rng);
            let scale = 1.0 / ((n_k * c_in) as f64).sqrt();
            let w: Vec<f64> = random(c_out * c_in * n_k, &mut rng).iter().map(|v| v * scale).collect();
            let bias = random(c_out, &mut rng);
            let go = random(b * 64 * c_out, &mut rng);
            check_forward_and_adjoint(&g, (&x, &w, &bias), &go, 1e-11);
            // A run of 7 in the pieces a CPU below AVX-512 takes, and whole as at AVX-512, on any machine: on
            // one worker, where the forced choice (a thread-local) holds for every call.
            if n_k == 7 {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
                for below in [true, false] {
                    pool.install(|| {
                        winograd::tests::forced_pieces(below, || {
                            check_forward_and_adjoint(&g, (&x, &w, &bias), &go, 1e-11)
                        })
                    });
                }
            }
        }
        // The gated PixelCNN's vertical stack (two runs of 3 over 8×8 images, 64 → 128 channels): F(4, 3)
        // below AVX-512, the direct products at it (the published figures' bits).
        let g = Geometry {
            b: 20,
            h: 8,
            w: 8,
            c_in: 64,
            c_out: 128,
            n_k: 6,
            plan: crate::nn::masked_conv2d::vertical_plan(3),
        };
        let (m, rows_out) = (g.m(), g.rows() - g.runs()[0].offset);
        assert_eq!(g.runs().iter().map(|r| r.n).collect::<Vec<_>>(), [3, 3]);
        let here = winograd::below_avx512();
        assert_eq!(
            winograd::fits(3, 64, 128, m, false) && winograd::fits(3, 128, 64, rows_out, false),
            here
        );
        assert_eq!(here, crate::nn::exact::best_simd() != crate::nn::exact::Simd::Avx512);
        let x = random(g.b * 64 * 64, &mut rng);
        let w: Vec<f64> = random(128 * 64 * 6, &mut rng).iter().map(|v| v / 20.0).collect();
        let (bias, go) = (random(128, &mut rng), random(g.b * 64 * 128, &mut rng));
        check_forward_and_adjoint(&g, (&x, &w, &bias), &go, 1e-11);
    }

    /// A kept kernel (evaluation passes, samplers) takes F(2, n) over few rows too — the seed net's layers at
    /// batch 1 and 3 — and matches the naive loop; a kernel packed for one call keeps the direct products
    /// there, and a 2-D kernel's runs (no transform kept) too.
    #[test]
    fn kept_kernels_take_winograd_over_few_rows() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        for b in [1, 3] {
            let g = Geometry {
                b,
                h: 1,
                w: 64,
                c_in: 256,
                c_out: 256,
                n_k: 7,
                plan: TapPlan::causal_1d(7, 1, 6),
            };
            let run = g.runs()[0];
            assert!(g.m() < winograd::MIN_ROWS && run.n == 7);
            let x = random(b * 64 * 256, &mut rng);
            let w: Vec<f64> = random(256 * 256 * 7, &mut rng).iter().map(|v| v / 42.0).collect();
            let bias = random(256, &mut rng);
            let (kept, fresh) = (Packed::kept(&w, 256, 256, 7), Packed::new(&w, 256, 256, 7));
            assert!(kept.winograd(run, &g) && !fresh.winograd(run, &g));
            let exact = naive(&x, &w, &bias, &g);
            let by_kept = forward_packed(&x, &kept, &bias, &g, None);
            let by_fresh = forward_packed(&x, &fresh, &bias, &g, None);
            let err = |y: &[f64]| y.iter().zip(&exact).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
            assert!(
                err(&by_kept) < 1e-11 && err(&by_fresh) < 1e-11,
                "{b}: {} {}",
                err(&by_kept),
                err(&by_fresh)
            );
            assert_ne!(by_kept, by_fresh, "the kept kernel sums otherwise (by F(2, 7))");
            assert!(kept.winograd.get().is_some(), "its transform is kept");
            assert_eq!(forward_packed(&x, &kept, &bias, &g, None), by_kept, "and reused");
        }
        let g = Geometry {
            b: 1,
            h: 8,
            w: 8,
            c_in: 256,
            c_out: 256,
            n_k: 6,
            plan: crate::nn::masked_conv2d::vertical_plan(3),
        };
        let kept = Packed::kept(&vec![0.0f64; 256 * 256 * 6], 256, 256, 6);
        assert!(g.runs().iter().all(|&run| !kept.winograd(run, &g)));
    }

    /// Large sizes take the run path (M ≥ 1024): its gradients against the single-tap path's, via a
    /// random projection (the adjoint identity <G, f(x)> = <∂x, x> for the linear map).
    #[test]
    fn run_path_gradients_satisfy_the_adjoint_identity() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        let mut with_runs = 0;
        for g in geometries().into_iter().filter(|g| g.h * g.w >= 100) {
            assert!(g.m() >= 1024, "{g:?} should be large");
            with_runs += usize::from(g.runs().iter().any(|r| r.n > 1));
            let x = random(g.b * g.h * g.w * g.c_in, &mut rng);
            let w = random(g.c_out * g.c_in * g.n_k, &mut rng);
            let go = random(g.b * g.h * g.w * g.c_out, &mut rng);
            let zero = vec![0.0; g.c_out];
            let (gx, gw, _) = backward(&x, &w, &go, &g, true);
            let y = forward(&x, &w, &zero, &g);
            // f is bilinear in (x, w): <G, f(x, w)> = <∂x, x> = <∂w, w>.
            let lhs = dot(&go, &y);
            assert!((lhs - dot(&gx, &x)).abs() < 1e-9 * lhs.abs().max(1.0), "{g:?}");
            assert!((lhs - dot(&gw, &w)).abs() < 1e-9 * lhs.abs().max(1.0), "{g:?}");
        }
        assert_eq!(with_runs, 4, "the masked, vertical and dilation-1 plans run as runs");
    }

    proptest::proptest! {
        /// Any 1-D causal geometry, including lengths shorter than the kernel's reach and the run path
        /// (≥ 1024 rows), matches the naive loop.
        #[test]
        fn causal_1d_matches_naive_loop_for_any_geometry(
            b in 1usize..4, l in 1usize..20, c_in in 1usize..5, c_out in 1usize..5,
            k in 1usize..5, d in 1usize..4, a in 0usize..2, long in proptest::bool::ANY, seed in 0u64..1000,
        ) {
            let w_len = if long { l + 400 } else { l };
            let plan = TapPlan::causal_1d(k, d, (k - 1) * d + a);
            let g = Geometry { b, h: 1, w: w_len, c_in, c_out, n_k: k, plan };
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let x = random(b * w_len * c_in, &mut rng);
            let w = random(c_out * c_in * k, &mut rng);
            let bias = random(c_out, &mut rng);
            let err = forward(&x, &w, &bias, &g).iter().zip(&naive(&x, &w, &bias, &g)).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
            proptest::prop_assert!(err < 1e-10, "{:?}: max err {}", g, err);
        }
    }

    /// Inside `with_frozen_weights` each kernel is packed once and the results are bitwise those of the
    /// plain op, for several weights of one shape (also temporaries, which the cache keeps alive so their
    /// memory cannot pass to another kernel); after it, a changed weight is seen again.
    #[test]
    fn frozen_weights_give_the_same_results_and_expire() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let plan = TapPlan::causal_1d(3, 1, 3);
        let x = Tensor::randn(0f32, 1., (2, 1, 9, 4), &dev)?;
        let bias = Tensor::zeros(5, candle_core::DType::F32, &dev)?;
        let w = candle_core::Var::randn(0f32, 1., (5, 4, 3), &dev)?;
        let plain = |w: &Tensor| -> Result<Vec<f32>> { shifted_conv(&x, w, &bias, &plan)?.flatten_all()?.to_vec1() };
        let want = plain(&w)?;
        let (inside, temps) = with_frozen_weights(|| -> Result<_> {
            let a = plain(&w)?;
            let b = plain(&w)?;
            // Temporaries of the same shape, each dropped after use.
            let temps: Vec<(Vec<f32>, Vec<f32>)> = (0..4)
                .map(|i| -> Result<_> {
                    let t = ((w.as_tensor() * (i as f64 + 2.0))? + 1.0)?;
                    Ok((plain(&t)?, with_frozen_weights(|| plain(&t))?))
                })
                .collect::<Result<_>>()?;
            assert!(FROZEN.with(|c| c.borrow().as_ref().is_some_and(|c| c.len() == 5)));
            Ok(((a, b), temps))
        })?;
        assert_eq!(inside.0, want);
        assert_eq!(inside.1, want);
        for (a, b) in temps {
            assert_eq!(a, b, "a temporary kernel took another's packing");
        }
        assert!(FROZEN.with(|c| c.borrow().is_none()), "the cache outlived its scope");
        w.set(&(w.as_tensor() * 2.0)?)?;
        assert_ne!(plain(&w)?, want, "a changed weight is seen after the scope");
        Ok(())
    }

    /// The fused convolution + LeakyReLU gives bitwise the values and gradients of the two ops composed, with
    /// exact zeros in the pre-activation (the derivative there is the slope, as PyTorch's).
    #[test]
    fn fused_leaky_relu_equals_the_composition() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let plan = TapPlan::causal_1d(3, 1, 3);
        let x = candle_core::Var::randn(0f64, 1., (2, 1, 9, 4), &dev)?;
        let w = candle_core::Var::randn(0f64, 1., (5, 4, 3), &dev)?;
        let b = candle_core::Var::randn(0f64, 1., 5, &dev)?;
        // Zero the first position's input: its outputs are the bias alone, which we set to 0 for two channels.
        let mut bias = b.as_tensor().to_vec1::<f64>()?;
        bias[0] = 0.0;
        bias[3] = 0.0;
        b.set(&Tensor::new(bias, &dev)?)?;
        let g = Tensor::randn(0f64, 1., (2, 1, 9, 5), &dev)?;
        let run = |fused: bool| -> Result<Vec<Vec<f64>>> {
            let y = if fused {
                shifted_conv_leaky(&x, &w, &b, &plan, 0.01)?
            } else {
                crate::nn::leaky_relu(&shifted_conv(&x, &w, &b, &plan)?, 0.01)?
            };
            let grads = (y.clone() * &g)?.sum_all()?.backward()?;
            let mut out = vec![y.flatten_all()?.to_vec1::<f64>()?];
            for v in [&x, &w, &b] {
                out.push(grads.get(v).expect("a gradient").flatten_all()?.to_vec1::<f64>()?);
            }
            Ok(out)
        };
        let (fused, composed) = (run(true)?, run(false)?);
        assert!(
            fused[0].iter().filter(|&&v| v == 0.0).count() >= 4,
            "exact zeros are exercised"
        );
        assert_eq!(fused, composed);
        Ok(())
    }

    /// The op agrees with candle's own conv2d forward (which is correct) on a full 3×3 kernel, in f32.
    #[test]
    fn op_matches_candle_conv2d_forward() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let (b, h, w, c_in, c_out) = (2, 9, 7, 5, 6);
        let x = Tensor::randn(0f32, 1., (b, h, w, c_in), &dev)?;
        let wt = Tensor::randn(0f32, 1., (c_out, c_in, 3, 3), &dev)?;
        let bias = Tensor::randn(0f32, 1., c_out, &dev)?;
        let taps = (0..3)
            .flat_map(|ky| {
                (0..3).map(move |kx| Tap {
                    dy: ky,
                    dx: kx,
                    k: ky * 3 + kx,
                })
            })
            .collect();
        let plan = TapPlan {
            taps,
            pad_top: 2,
            pad_left: 1,
            pad_right: 1,
        };
        let ours = shifted_conv(&x, &wt.reshape((c_out, c_in, 9))?, &bias, &plan)?;
        // The same window: rows y−2..y, columns x−1..x+1.
        let xs = x
            .permute((0, 3, 1, 2))?
            .pad_with_zeros(2, 2, 0)?
            .pad_with_zeros(3, 1, 1)?
            .contiguous()?;
        let theirs = xs
            .conv2d(&wt, 0, 1, 1, 1)?
            .broadcast_add(&bias.reshape((1, c_out, 1, 1))?)?
            .permute((0, 2, 3, 1))?;
        let err = (ours - theirs)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(err < 1e-4, "max err {err}");
        Ok(())
    }

    /// Evaluation passes reuse a kernel packed from the same bits (no packing the second time, the same
    /// output bits as a pass that packs), and pack again when the weights change in place (`Var::set`: the
    /// same storage, new values), giving the new weights' output. Reusing a stale kernel fails it.
    #[test]
    fn evaluation_passes_reuse_a_kernel_only_for_the_same_weights() -> Result<()> {
        use candle_core::{Device, Var};
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut random = |n: usize| random(n, &mut rng).into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        let plan = TapPlan::causal_1d(7, 1, 6);
        // Weights large enough to be compared in pieces.
        let x = Tensor::from_vec(random(2 * 40 * 300), (2, 1, 40, 300), &dev)?;
        let w = Var::from_tensor(&Tensor::from_vec(random(64 * 300 * 7), (64, 300, 7), &dev)?)?;
        let b = Tensor::from_vec(random(64), 64, &dev)?;
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(f32::to_bits)
                .collect())
        };
        let packed = || REUSE_PACKED.with(|n| n.get());
        let plain = bits(&shifted_conv(&x, w.as_tensor(), &b, &plan)?)?;
        let before = packed();
        let first = evaluating(|| shifted_conv(&x, w.as_tensor(), &b, &plan))?;
        let second = evaluating(|| shifted_conv(&x, w.as_tensor(), &b, &plan))?;
        assert_eq!(packed(), before + 1, "packed once for two passes");
        assert_eq!(bits(&first)?, plain);
        assert_eq!(bits(&second)?, plain);
        // With no tensor written in place between two passes, the second does not compare the weights.
        // Other tests write tensors meanwhile (the count is the process's), so a pass counts only when the
        // count stood still across it; one such pass of 1,000 tries is plenty.
        let compared = || REUSE_COMPARED.with(|n| n.get());
        let quiet_pass_compared = (0..1000).find_map(|_| {
            let (writes, was) = (candle_core::storage_writes(), compared());
            evaluating(|| shifted_conv(&x, w.as_tensor(), &b, &plan)).ok()?;
            (candle_core::storage_writes() == writes).then(|| compared() > was)
        });
        assert_eq!(
            quiet_pass_compared,
            Some(false),
            "a pass with no write between compared the weights"
        );
        // Another tensor over the same numbers (a view: a new id) is compared, found the same, and reuses it.
        let view = w.as_tensor().reshape((64, 300, 7))?;
        let was = compared();
        let by_view = evaluating(|| shifted_conv(&x, &view, &b, &plan))?;
        assert!(compared() > was, "a new tensor's numbers are compared");
        assert_eq!(packed(), before + 1, "the same numbers: not packed again");
        assert_eq!(bits(&by_view)?, plain);
        // Another tensor written in place: the weights are compared, found the same, and not packed again.
        let other = Var::zeros(4, candle_core::DType::F32, &dev)?;
        other.set(&Tensor::ones(4, candle_core::DType::F32, &dev)?)?;
        let was = compared();
        let again = evaluating(|| shifted_conv(&x, w.as_tensor(), &b, &plan))?;
        assert!(compared() > was, "compared after a write");
        assert_eq!(packed(), before + 1, "the same weights: not packed again");
        assert_eq!(bits(&again)?, plain);
        // One weight changed in place: packed again, and the new weights' output.
        let mut v = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        v[12_345] += 1.0;
        w.set(&Tensor::from_vec(v, (64, 300, 7), &dev)?)?;
        let changed = evaluating(|| shifted_conv(&x, w.as_tensor(), &b, &plan))?;
        assert_eq!(packed(), before + 2, "packed again for new weights");
        assert_eq!(bits(&changed)?, bits(&shifted_conv(&x, w.as_tensor(), &b, &plan)?)?);
        assert_ne!(bits(&changed)?, plain);
        Ok(())
    }
}
