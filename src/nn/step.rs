//! Convolutions evaluated a few positions at a time, for cached sampling (Fast WaveNet, Paine et al. 2016;
//! Fast PixelCNN++, Ramachandran et al. 2017). A [`StepConv`] keeps its input at every position it has been
//! given, on an `h × w` grid (a sequence is one row), and computes the output at the positions asked for
//! from the taps of its plan — one column of work per position instead of a pass over the whole image.
//!
//! The plan is the same [`TapPlan`] the training kernel runs, so the two read exactly the same inputs.
//! Inputs are laid out `[position][B][C_in]`; positions not yet given are zero and a causal plan never
//! reads them.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Result, Tensor};

use super::activation::gate_value;
use super::exact::{self, Arithmetic};
use super::kernels::shifted_conv::TapPlan;

/// Tanh of the first half of each row of 2C numbers times the sigmoid of the second half: `[R][2C]` → `[R][C]`
/// (the gated unit of WaveNet and the gated PixelCNN).
pub fn gate_rows(x: &[f32], c: usize) -> Vec<f32> {
    x.chunks(2 * c.max(1))
        .flat_map(|row| (0..c).map(move |j| gate_value(row[j], row[c + j])))
        .collect()
}

pub fn relu_in_place(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = v.max(0.0));
}

/// Whether the fast path may call gemm (the default); off, it runs the exact kernel's plain loops instead.
static GEMM: AtomicBool = AtomicBool::new(true);

/// Lets the fast path use gemm (`true`, the default) or not, for the whole process: with it off, nothing in a
/// stepped network dispatches on the CPU, so tests can check that a result does not depend on gemm.
pub fn set_gemm(enabled: bool) {
    GEMM.store(enabled, Ordering::Relaxed);
}

pub struct StepConv {
    arithmetic: Arithmetic,
    taps: Vec<f32>, // [(tap, ci), co]: the plan's taps side by side
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
    plan: TapPlan,
    grid: (usize, usize),
    batch: usize,
    inputs: Vec<f32>, // [position][B][C_in]
}

impl StepConv {
    /// weight `[C_out, C_in, N_k]` or `[C_out, C_in, KH, KW]` (PyTorch's layout), bias `[C_out]`; positions on an
    /// `h × w` grid, `batch` examples at a time.
    pub fn new(
        weight: &Tensor,
        bias: Option<&Tensor>,
        plan: &TapPlan,
        grid: (usize, usize),
        batch: usize,
    ) -> Result<Self> {
        let (c_out, c_in) = (weight.dim(0)?, weight.dim(1)?);
        let n_k = weight.elem_count() / (c_out * c_in);
        let w = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut taps = vec![0f32; plan.taps.len() * c_in * c_out];
        for (t, tap) in plan.taps.iter().enumerate() {
            for ci in 0..c_in {
                for co in 0..c_out {
                    taps[(t * c_in + ci) * c_out + co] = w[(co * c_in + ci) * n_k + tap.k];
                }
            }
        }
        let bias = match bias {
            Some(b) => b.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            None => vec![0.0; c_out],
        };
        Ok(Self {
            arithmetic: Arithmetic::Fast,
            taps,
            bias,
            c_in,
            c_out,
            plan: plan.clone(),
            grid,
            batch,
            inputs: vec![0.0; grid.0 * grid.1 * batch * c_in],
        })
    }

    /// The same convolution computing with `arithmetic` ([`Arithmetic::Exact`]: the codec's bit-exact path).
    pub fn with_arithmetic(mut self, arithmetic: Arithmetic) -> Self {
        self.arithmetic = arithmetic;
        self
    }

    pub fn arithmetic(&self) -> Arithmetic {
        self.arithmetic
    }

    /// Output channels.
    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// Sets the inputs at `positions`, `[position][B][C_in]` flattened.
    pub fn set(&mut self, positions: Range<usize>, rows: &[f32]) {
        let n = self.batch * self.c_in;
        self.inputs[positions.start * n..positions.end * n].copy_from_slice(rows);
    }

    /// The inputs given at `position`, `[B][C_in]`.
    pub fn input(&self, position: usize) -> &[f32] {
        let n = self.batch * self.c_in;
        &self.inputs[position * n..(position + 1) * n]
    }

    /// The outputs at `positions`, `[position][B][C_out]`: bias + Σ_taps W_tap · input at the tap's source
    /// (zero outside the grid).
    pub fn output(&self, positions: Range<usize>) -> Vec<f32> {
        let (h, w) = self.grid;
        let (b, c_in, n_taps) = (self.batch, self.c_in, self.plan.taps.len());
        let rows = positions.len() * b;
        // Every output row's taps side by side: [position·B, taps·C_in].
        let mut window = vec![0f32; rows * n_taps * c_in];
        for (i, p) in positions.enumerate() {
            let (y, x) = (p / w, p % w);
            for (t, tap) in self.plan.taps.iter().enumerate() {
                let sy = (y + tap.dy).checked_sub(self.plan.pad_top);
                let sx = (x + tap.dx).checked_sub(self.plan.pad_left);
                let (Some(sy), Some(sx)) = (sy, sx) else { continue };
                if sy >= h || sx >= w {
                    continue;
                }
                let src = self.input(sy * w + sx);
                for e in 0..b {
                    let dst = ((i * b + e) * n_taps + t) * c_in;
                    window[dst..dst + c_in].copy_from_slice(&src[e * c_in..(e + 1) * c_in]);
                }
            }
        }
        self.product(&window, rows)
    }

    /// A 1×1 convolution applied to rows given directly, `[R][C_in]` → `[R][C_out]` (no inputs kept).
    pub fn pointwise(&self, x: &[f32]) -> Vec<f32> {
        debug_assert_eq!(self.plan.taps.len(), 1);
        self.product(x, x.len() / self.c_in)
    }

    /// bias + window `[rows, taps·C_in]` · taps `[taps·C_in, C_out]`: gemm on the fast path, the fixed-order
    /// kernel of [`exact`] on the exact path (or when gemm is switched off by [`set_gemm`]).
    fn product(&self, window: &[f32], rows: usize) -> Vec<f32> {
        let (m, n, k) = (rows, self.c_out, self.plan.taps.len() * self.c_in);
        if self.arithmetic == Arithmetic::Exact || !GEMM.load(Ordering::Relaxed) {
            return exact::matmul_bias(window, &self.taps, &self.bias, m, n, k);
        }
        let mut out: Vec<f32> = (0..m).flat_map(|_| self.bias.iter().copied()).collect();
        if m == 0 || k == 0 {
            return out;
        }
        let par = if 2 * m * n * k > 4_000_000 {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: out is [m, n], window [m, k] and taps [k, n], all row-major and of exactly those sizes.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                true,
                window.as_ptr(),
                1,
                k as isize,
                self.taps.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::kernels::shifted_conv::shifted_conv;
    use crate::nn::masked_conv2d::{horizontal_plan, masked_plan, vertical_plan};
    use crate::nn::ConvType;
    use candle_core::Device;

    /// Every position computed by stepping equals the full convolution's output, for 2-D masks, the gated
    /// stacks and a dilated 1-D plan, with several examples.
    #[test]
    fn stepping_matches_the_full_convolution() -> Result<()> {
        let dev = Device::Cpu;
        let plans = [
            (masked_plan(3, ConvType::A), 3, (4, 5)),
            (masked_plan(5, ConvType::B), 5, (4, 5)),
            (vertical_plan(3), 3, (4, 5)),
            (horizontal_plan(5, ConvType::B), 5, (4, 5)),
            (TapPlan::causal_1d(3, 2, 5), 3, (1, 9)),
        ];
        for (plan, n_k, (h, w)) in plans {
            let (b, c_in, c_out) = (3, 2, 4);
            let kk = if h == 1 { n_k } else { n_k * n_k };
            let weight = Tensor::randn(0f32, 1., (c_out, c_in, kk), &dev)?;
            let bias = Tensor::randn(0f32, 1., c_out, &dev)?;
            let x = Tensor::randn(0f32, 1., (b, h, w, c_in), &dev)?;
            let full = shifted_conv(&x, &weight, &bias, &plan)?
                .flatten_all()?
                .to_vec1::<f32>()?; // [B, H, W, C_out]
            let mut step = StepConv::new(&weight, Some(&bias), &plan, (h, w), b)?;
            // [B, H, W, C] → [position][B][C]
            let xs = x.permute((1, 2, 0, 3))?.flatten_all()?.to_vec1::<f32>()?;
            step.set(0..h * w, &xs);
            let got = step.output(0..h * w);
            for p in 0..h * w {
                for e in 0..b {
                    for co in 0..c_out {
                        let want = full[(e * h * w + p) * c_out + co];
                        let have = got[(p * b + e) * c_out + co];
                        assert!((want - have).abs() < 1e-4, "{plan:?} p={p} e={e}: {want} vs {have}");
                    }
                }
            }
        }
        Ok(())
    }
}
