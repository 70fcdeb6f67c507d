//! The project's own causal 1-D convolution kernel: a candle `CustomOp2` with forward and backward on
//! the CPU, built on the `gemm` crate.
//!
//! Why our own: candle 0.11.1's CPU conv1d backward is wrong (the weight gradient reads the wrong storage
//! for a non-contiguous kernel; the input gradient goes through a matmul that folds the batch), and its
//! forward runs im2col on one core. This kernel works channels-last (`[B, L, C]`), where a causal
//! convolution is a handful of large matrix products with no im2col copy:
//!
//! The input is left-padded per sequence into `xpad: [B·(L+P), C_in]` rows. Output row `r` (sequence `b`,
//! position `t`, `r = b·(L+P) + t`) is `Σ_j xpad[r + j·d] · W_j`, with `W_j = w[:, :, j]ᵀ: [C_in, C_out]`.
//! Treating all `B·(L+P)` rows as one matrix makes every product large (M ≈ B·L); the `P` rows per sequence
//! that straddle two sequences are computed and thrown away (a P/L overhead, ≈ 10 % for the seed net).
//! With dilation 1 the `K` taps of row `r` are `K·C_in` consecutive numbers, so a large forward pass is a single
//! product over an overlapping strided view (row stride `C_in`) of `xpad`.
//!
//! Shapes: x `[B, L, C_in]`, w `[C_out, C_in, K]` (PyTorch's layout, so checkpoints load unchanged),
//! output `[B, L, C_out]`. `pad` is `(K−1)·d` for type B and `(K−1)·d + 1` for type A.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;

/// Geometry of one causal convolution call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub b: usize,
    pub l: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
    pub dilation: usize,
    /// Left padding: `(k−1)·d` (type B) or `(k−1)·d + 1` (type A).
    pub pad: usize,
}

impl ConvGeometry {
    fn lp(&self) -> usize {
        self.l + self.pad
    }
    /// Rows of the padded input, `B·(L+P)`.
    fn rows(&self) -> usize {
        self.b * self.lp()
    }
    /// Output rows computed in one product: the last sequence's trailing rows would read past the end.
    fn m(&self) -> usize {
        self.rows() - (self.k - 1) * self.dilation
    }
}

fn parallelism(flops: usize) -> Parallelism {
    // Splitting a tiny product across threads costs more than it saves.
    if flops < 16_000_000 {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]`, every operand given by (pointer, row stride, column stride).
#[allow(clippy::too_many_arguments)]
unsafe fn matmul<T: 'static + WithDType>(
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
        parallelism(2 * m * n * k),
    )
}

/// Copies `[B, L, C]` rows into `[B·(L+P), C]` with `P` zero rows before each sequence.
fn pad_rows<T: WithDType>(x: &[T], g: &ConvGeometry, c: usize) -> Vec<T> {
    let mut xpad = vec![T::from_f64(0.0); g.rows() * c];
    xpad.par_chunks_exact_mut(g.lp() * c)
        .zip(x.par_chunks_exact(g.l * c))
        .for_each(|(dst, src)| {
            dst[g.pad * c..].copy_from_slice(src);
        });
    xpad
}

/// The forward pass on plain slices: x `[B, L, C_in]`, w `[C_out, C_in, K]`, bias `[C_out]` → `[B, L, C_out]`.
pub fn forward<T: WithDType>(x: &[T], w: &[T], bias: &[T], g: &ConvGeometry) -> Vec<T> {
    let (c_in, c_out, k, d) = (g.c_in, g.c_out, g.k, g.dilation);
    let xpad = pad_rows(x, g, c_in);
    let m = g.m();
    let mut full = vec![T::from_f64(0.0); g.rows() * c_out];
    unsafe {
        if d == 1 && m >= 1024 {
            // One product: row r of the (overlapping) view is xpad[r .. r+K] flattened, K·C_in numbers;
            // the weights are permuted to match: wt[(j, ci), co] = w[co, ci, j].
            let wt = permute_taps(w, g, false);
            matmul(
                (m, c_out, k * c_in),
                full.as_mut_ptr(),
                (c_out, 1),
                false,
                xpad.as_ptr(),
                (c_in, 1),
                wt.as_ptr(),
                (c_out, 1),
            );
        } else {
            for j in 0..k {
                // W_j[ci, co] = w[co, ci, j]
                matmul(
                    (m, c_out, c_in),
                    full.as_mut_ptr(),
                    (c_out, 1),
                    j > 0,
                    xpad.as_ptr().add(j * d * c_in),
                    (c_in, 1),
                    w.as_ptr().add(j),
                    (k, c_in * k),
                );
            }
        }
    }
    // Keep each sequence's first L rows, adding the bias on the way.
    let mut out = vec![T::from_f64(0.0); g.b * g.l * c_out];
    out.par_chunks_exact_mut(g.l * c_out)
        .zip(full.par_chunks_exact(g.lp() * c_out))
        .for_each(|(dst, seq)| {
            for (d_row, s_row) in dst.chunks_exact_mut(c_out).zip(seq.chunks_exact(c_out)) {
                for ((o, &v), &b) in d_row.iter_mut().zip(s_row).zip(bias) {
                    *o = v + b;
                }
            }
        });
    out
}

/// Permutes w `[C_out, C_in, K]` to `[(j, ci), co]` (or, `reversed`, to `[(K−1−j, co), ci]`), in 16×16 tiles
/// so that both the reads and the writes stay within a few cache lines.
pub fn permute_taps<T: WithDType>(w: &[T], g: &ConvGeometry, reversed: bool) -> Vec<T> {
    let (c_in, c_out, k) = (g.c_in, g.c_out, g.k);
    let mut out = vec![T::from_f64(0.0); w.len()];
    const TILE: usize = 16;
    for co0 in (0..c_out).step_by(TILE) {
        for ci0 in (0..c_in).step_by(TILE) {
            for co in co0..(co0 + TILE).min(c_out) {
                for ci in ci0..(ci0 + TILE).min(c_in) {
                    let src = &w[(co * c_in + ci) * k..(co * c_in + ci + 1) * k];
                    for (j, &v) in src.iter().enumerate() {
                        let to = if reversed {
                            ((k - 1 - j) * c_out + co) * c_in + ci
                        } else {
                            (j * c_in + ci) * c_out + co
                        };
                        out[to] = v;
                    }
                }
            }
        }
    }
    out
}

/// The inverse of `permute_taps(.., false)`: `[(j, ci), co]` back to `[C_out, C_in, K]`.
fn unpermute_taps<T: WithDType>(wt: &[T], g: &ConvGeometry) -> Vec<T> {
    let (c_in, c_out, k) = (g.c_in, g.c_out, g.k);
    let mut out = vec![T::from_f64(0.0); wt.len()];
    const TILE: usize = 16;
    for co0 in (0..c_out).step_by(TILE) {
        for ci0 in (0..c_in).step_by(TILE) {
            for co in co0..(co0 + TILE).min(c_out) {
                for ci in ci0..(ci0 + TILE).min(c_in) {
                    let dst = &mut out[(co * c_in + ci) * k..(co * c_in + ci + 1) * k];
                    for (j, v) in dst.iter_mut().enumerate() {
                        *v = wt[(j * c_in + ci) * c_out + co];
                    }
                }
            }
        }
    }
    out
}

/// The backward pass on plain slices: given `grad_out [B, L, C_out]`, returns
/// `(grad_x [B, L, C_in], grad_w [C_out, C_in, K], grad_bias [C_out])`; grad_x is empty unless `need_gx`.
pub fn backward<T: WithDType>(
    x: &[T],
    w: &[T],
    grad_out: &[T],
    g: &ConvGeometry,
    need_gx: bool,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (c_in, c_out, k, d) = (g.c_in, g.c_out, g.k, g.dilation);
    let m = g.m();
    let xpad = pad_rows(x, g, c_in);
    // The output gradient in the padded row layout, behind K−1 zero rows (the transposed conv below reads
    // them). The gradient of the thrown-away rows is zero, so they contribute nothing.
    let front = (k - 1) * c_out;
    let mut gpad = vec![T::from_f64(0.0); front + g.rows() * c_out];
    gpad[front..]
        .par_chunks_exact_mut(g.lp() * c_out)
        .zip(grad_out.par_chunks_exact(g.l * c_out))
        .for_each(|(dst, src)| {
            dst[..g.l * c_out].copy_from_slice(src);
        });
    let gfull = &gpad[front..];
    // grad bias = Σ over rows of the output gradient.
    let gb = grad_out
        .par_chunks(c_out * 256)
        .map(|rows| {
            let mut acc = vec![T::from_f64(0.0); c_out];
            for row in rows.chunks_exact(c_out) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .reduce(
            || vec![T::from_f64(0.0); c_out],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += *y;
                }
                a
            },
        );
    let mut gw = vec![T::from_f64(0.0); c_out * c_in * k];
    let mut gxpad = vec![T::from_f64(0.0); if need_gx { g.rows() * c_in } else { 0 }];
    unsafe {
        if d == 1 {
            // grad W as one product over the overlapping view of xpad: gwt[(j, ci), co] = Σ_r xpad[r + j]·G[r].
            let mut gwt = vec![T::from_f64(0.0); k * c_in * c_out];
            matmul(
                (k * c_in, c_out, m),
                gwt.as_mut_ptr(),
                (c_out, 1),
                false,
                xpad.as_ptr(),
                (1, c_in),
                gfull.as_ptr(),
                (c_out, 1),
            );
            gw = unpermute_taps(&gwt, g);
            if need_gx {
                // grad xpad[r] = Σ_j G[r − j]·W_jᵀ: a causal conv of G (with K−1 zero rows in front) by the
                // taps in reverse order, again one product over an overlapping view.
                let wr = permute_taps(w, g, true);
                matmul(
                    (g.rows(), c_in, k * c_out),
                    gxpad.as_mut_ptr(),
                    (c_in, 1),
                    false,
                    gpad.as_ptr(),
                    (c_out, 1),
                    wr.as_ptr(),
                    (c_in, 1),
                );
            }
        } else {
            for j in 0..k {
                // grad W_j [C_in, C_out] = X_jᵀ · G, written straight into w's layout: gw[co, ci, j].
                matmul(
                    (c_in, c_out, m),
                    gw.as_mut_ptr().add(j),
                    (k, c_in * k),
                    false,
                    xpad.as_ptr().add(j * d * c_in),
                    (1, c_in),
                    gfull.as_ptr(),
                    (c_out, 1),
                );
                if need_gx {
                    // grad xpad[r + j·d] += G[r] · W_jᵀ, with W_jᵀ[co, ci] = w[co, ci, j].
                    matmul(
                        (m, c_in, c_out),
                        gxpad.as_mut_ptr().add(j * d * c_in),
                        (c_in, 1),
                        true,
                        gfull.as_ptr(),
                        (c_out, 1),
                        w.as_ptr().add(j),
                        (c_in * k, k),
                    );
                }
            }
        }
    }
    if !need_gx {
        return (vec![], gw, gb);
    }
    let mut gx = vec![T::from_f64(0.0); g.b * g.l * c_in];
    gx.par_chunks_exact_mut(g.l * c_in)
        .zip(gxpad.par_chunks_exact(g.lp() * c_in))
        .for_each(|(dst, seq)| {
            dst.copy_from_slice(&seq[g.pad * c_in..]);
        });
    (gx, gw, gb)
}

/// The candle op on (x, w, bias). Its inputs must be contiguous (the wrapper makes them so).
#[derive(Debug, Clone, Copy)]
pub struct CausalConv1dOp {
    pub dilation: usize,
    pub pad: usize,
}

impl CausalConv1dOp {
    fn geometry(&self, x: &Shape, w: &Shape, b: &Shape) -> Result<ConvGeometry> {
        let (b_size, l, c_in) = x.dims3()?;
        let (c_out, c_in_w, k) = w.dims3()?;
        if c_in != c_in_w {
            candle_core::bail!("causal_conv1d: input has {c_in} channels, the kernel expects {c_in_w}");
        }
        if b.dims() != [c_out] {
            candle_core::bail!("causal_conv1d: bias has shape {:?}, expected [{c_out}]", b.dims());
        }
        if k == 0 || self.dilation == 0 || self.pad < (k - 1) * self.dilation {
            candle_core::bail!(
                "causal_conv1d: pad {} is less than (k-1)·d = {} (k = {k}, d = {})",
                self.pad,
                (k.max(1) - 1) * self.dilation,
                self.dilation
            );
        }
        Ok(ConvGeometry {
            b: b_size,
            l,
            c_in,
            c_out,
            k,
            dilation: self.dilation,
            pad: self.pad,
        })
    }
}

fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&T::cpu_storage_as_slice(s)?[start..end]),
        None => candle_core::bail!("causal_conv1d: inputs must be contiguous"),
    }
}

/// Runs `f` on the tensor's contiguous CPU data without copying it.
fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => Ok(f(contiguous::<T>(cpu, layout)?)),
        _ => candle_core::bail!("causal_conv1d: the CPU kernel got a tensor on another device"),
    }
}

impl CustomOp3 for CausalConv1dOp {
    fn name(&self) -> &'static str {
        "causal-conv1d"
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
        fn run<T: WithDType>(s: [(&CpuStorage, &Layout); 3], g: &ConvGeometry) -> Result<Vec<T>> {
            Ok(forward(
                contiguous::<T>(s[0].0, s[0].1)?,
                contiguous::<T>(s[1].0, s[1].1)?,
                contiguous::<T>(s[2].0, s[2].1)?,
                g,
            ))
        }
        let args = [(s1, l1), (s2, l2), (s3, l3)];
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(run(args, &g)?),
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(run(args, &g)?),
            _ => candle_core::bail!("causal_conv1d: supports f32 and f64 with matching dtypes"),
        };
        Ok((out, Shape::from((g.b, g.l, g.c_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geometry(x.shape(), w.shape(), b.shape())?;
        type Grads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);
        fn run<T: WithDType>(x: &Tensor, w: &Tensor, b: &Tensor, grad: &Tensor, g: &ConvGeometry) -> Result<Grads> {
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
            dt => candle_core::bail!("causal_conv1d: unsupported dtype {dt:?}"),
        }
    }
}

/// x `[B, L, C_in]`, w `[C_out, C_in, K]`, bias `[C_out]` → `[B, L, C_out]`:
/// `out[b, t] = bias + Σ_j w[:, :, j] · x[b, t + j·d − pad]` (zero before the start). Differentiable in all three.
pub fn causal_conv1d_blc(x: &Tensor, w: &Tensor, bias: &Tensor, dilation: usize, pad: usize) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &bias.contiguous()?, CausalConv1dOp { dilation, pad })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The definition, as a naive loop.
    fn naive(x: &[f64], w: &[f64], g: &ConvGeometry) -> Vec<f64> {
        let mut out = vec![0.0; g.b * g.l * g.c_out];
        for b in 0..g.b {
            for t in 0..g.l {
                for co in 0..g.c_out {
                    let mut s = 0.0;
                    for j in 0..g.k {
                        let src = t as isize + (j * g.dilation) as isize - g.pad as isize;
                        if src < 0 {
                            continue;
                        }
                        for ci in 0..g.c_in {
                            s += w[(co * g.c_in + ci) * g.k + j] * x[(b * g.l + src as usize) * g.c_in + ci];
                        }
                    }
                    out[(b * g.l + t) * g.c_out + co] = s;
                }
            }
        }
        out
    }

    fn random(n: usize, rng: &mut impl Rng) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn geometries() -> Vec<ConvGeometry> {
        let mut v = vec![];
        for &(b, l, c_in, c_out) in &[(1, 5, 1, 3), (3, 9, 4, 2), (2, 16, 3, 5)] {
            for &k in &[1, 2, 3] {
                for &d in &[1, 2, 3] {
                    for a in [0, 1] {
                        v.push(ConvGeometry {
                            b,
                            l,
                            c_in,
                            c_out,
                            k,
                            dilation: d,
                            pad: (k - 1) * d + a,
                        });
                    }
                }
            }
        }
        v
    }

    #[test]
    fn forward_matches_naive_loop() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for g in geometries() {
            let x = random(g.b * g.l * g.c_in, &mut rng);
            let w = random(g.c_out * g.c_in * g.k, &mut rng);
            let bias = random(g.c_out, &mut rng);
            let fast = forward(&x, &w, &bias, &g);
            let slow: Vec<f64> = naive(&x, &w, &g)
                .iter()
                .enumerate()
                .map(|(i, v)| v + bias[i % g.c_out])
                .collect();
            let err = fast.iter().zip(&slow).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-12, "{g:?}: max err {err}");
        }
    }

    proptest::proptest! {
        /// Any geometry, including lengths shorter than the kernel's reach and the large-M single-product
        /// path (b·l ≥ 1024 rows), matches the naive loop.
        #[test]
        fn forward_matches_naive_loop_for_any_geometry(
            b in 1usize..4, l in 1usize..20, c_in in 1usize..5, c_out in 1usize..5,
            k in 1usize..5, d in 1usize..4, a in 0usize..2, long in proptest::bool::ANY, seed in 0u64..1000,
        ) {
            let l = if long { l + 400 } else { l };
            let g = ConvGeometry { b, l, c_in, c_out, k, dilation: d, pad: (k - 1) * d + a };
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let x = random(b * l * c_in, &mut rng);
            let w = random(c_out * c_in * k, &mut rng);
            let zero = vec![0.0; c_out];
            let err = forward(&x, &w, &zero, &g).iter().zip(&naive(&x, &w, &g)).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
            proptest::prop_assert!(err < 1e-10, "{:?}: max err {}", g, err);
        }
    }

    /// The backward pass is the exact adjoint of the (linear) forward: <G, f(x, w)> = <∂x, x> = <∂w, w>.
    #[test]
    fn backward_is_the_adjoint_of_the_naive_loop() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for g in geometries() {
            let x = random(g.b * g.l * g.c_in, &mut rng);
            let w = random(g.c_out * g.c_in * g.k, &mut rng);
            let go = random(g.b * g.l * g.c_out, &mut rng);
            let (gx, gw, gb) = backward(&x, &w, &go, &g, true);
            for (co, v) in gb.iter().enumerate() {
                let want: f64 = go.iter().skip(co).step_by(g.c_out).sum();
                assert!((v - want).abs() < 1e-12, "{g:?} grad_bias[{co}]");
            }
            assert!(backward(&x, &w, &go, &g, false).0.is_empty());
            // Check each partial derivative against the naive loop, one unit direction at a time.
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
            for i in 0..x.len() {
                let mut e = vec![0.0; x.len()];
                e[i] = 1.0;
                let want = dot(&go, &naive(&e, &w, &g));
                assert!((gx[i] - want).abs() < 1e-12, "{g:?} grad_x[{i}]: {} vs {want}", gx[i]);
            }
            for i in 0..w.len() {
                let mut e = vec![0.0; w.len()];
                e[i] = 1.0;
                let want = dot(&go, &naive(&x, &e, &g));
                assert!((gw[i] - want).abs() < 1e-12, "{g:?} grad_w[{i}]: {} vs {want}", gw[i]);
            }
        }
    }

    /// The op agrees with candle's own conv1d forward (which is correct) on the
    /// same causal problem, in f32 and on a large, multi-threaded size.
    #[test]
    fn op_matches_candle_conv1d_forward() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let (b, l, c_in, c_out, k, d) = (4, 64, 32, 48, 7, 2);
        for a in [0, 1] {
            let pad = (k - 1) * d + a;
            let x = Tensor::randn(0f32, 1., (b, l, c_in), &dev)?;
            let w = Tensor::randn(0f32, 1., (c_out, c_in, k), &dev)?;
            let bias = Tensor::randn(0f32, 1., c_out, &dev)?;
            let ours = (causal_conv1d_blc(&x, &w, &bias, d, pad)?
                - bias.reshape((1, 1, c_out))?.broadcast_as((b, l, c_out))?)?;
            let xs = x.transpose(1, 2)?.pad_with_zeros(2, pad, 0)?.contiguous()?;
            let theirs = xs.conv1d(&w, 0, 1, d, 1)?.narrow(2, 0, l)?.transpose(1, 2)?;
            let err = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-3, "type {a}: max err {err}");
        }
        Ok(())
    }
}
