//! Causal 1-D convolution (Bai et al. 2018; van den Oord et al. 2016a).
//!
//! Type A: output d sees inputs < d (left pad (k−1)·d + 1, drop the last position) — the first layer of an
//! ARM must be type A, or θ_d would depend on x_d. Type B: output d sees inputs ≤ d (left pad (k−1)·d).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::kernels::shifted_conv::{shifted_conv, shifted_conv_leaky, TapPlan};
use super::step::StepConv;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConvType {
    /// Excludes the current position: output d depends on x_<d.
    A,
    /// Includes the current position: output d depends on x_≤d.
    B,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CausalConv1dConfig {
    pub kernel: usize,
    pub dilation: usize,
    pub kind: ConvType,
}

impl Default for CausalConv1dConfig {
    fn default() -> Self {
        Self {
            kernel: 2,
            dilation: 1,
            kind: ConvType::B,
        }
    }
}

impl CausalConv1dConfig {
    /// Zeros added on the left so that the output keeps the input's length and stays causal.
    pub fn left_pad(&self) -> usize {
        (self.kernel - 1) * self.dilation + usize::from(self.kind == ConvType::A)
    }
}

/// How many of the `length − 1` earlier positions an output sees through `layers` applied in turn, each
/// reading the one before: the offsets a layer reaches back (type A: 1, 1 + d, …, 1 + (k−1)·d; type B: 0, d,
/// …, (k−1)·d) added along every path. Dilations that leave gaps see fewer positions than they span (kernel
/// 2, dilations 4 and 4: offsets 1, 5 and 9 — three of the nine spanned). A residual path beside type-B layers
/// (WaveNet's) adds none: their offset 0 keeps every path anyway.
pub fn positions_seen(layers: &[CausalConv1dConfig], length: usize) -> usize {
    let n = length.max(1);
    // The offsets seen so far, as sorted disjoint runs [lo, hi] below n: a few runs however long the
    // sequence, where a set of positions would take time quadratic in it for kernels as long as the sequence.
    let mut seen = vec![(0usize, 0usize)];
    for c in layers {
        let first = usize::from(c.kind == ConvType::A);
        let mut shifted = Vec::new();
        for &(lo, hi) in &seen {
            if lo + first >= n {
                continue;
            }
            if c.kernel > 0 && hi - lo + 1 >= c.dilation {
                // The run's k copies, d apart, touch: one run.
                let far = (c.kernel - 1).saturating_mul(c.dilation).saturating_add(hi + first);
                shifted.push((lo + first, far.min(n - 1)));
                continue;
            }
            for shift in (0..c.kernel)
                .map(|j| first + j * c.dilation)
                .take_while(|&s| lo + s < n)
            {
                shifted.push((lo + shift, (hi + shift).min(n - 1)));
            }
        }
        shifted.sort_unstable();
        seen.clear();
        for (lo, hi) in shifted {
            match seen.last_mut() {
                Some(last) if lo <= last.1 + 1 => last.1 = last.1.max(hi),
                _ => seen.push((lo, hi)),
            }
        }
    }
    seen.iter()
        .filter(|&&(_, hi)| hi >= 1)
        .map(|&(lo, hi)| hi - lo.max(1) + 1)
        .sum()
}

#[derive(Debug, Clone)]
pub struct CausalConv1d {
    weight: Tensor, // [C_out, C_in, K], PyTorch's layout
    bias: Option<Tensor>,
    cfg: CausalConv1dConfig,
}

impl CausalConv1d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: CausalConv1dConfig) -> Self {
        Self { weight, bias, cfg }
    }
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    pub fn config(&self) -> &CausalConv1dConfig {
        &self.cfg
    }
    /// The tap plan the kernel runs: a sequence is an image of one row.
    pub fn plan(&self) -> TapPlan {
        TapPlan::causal_1d(self.cfg.kernel, self.cfg.dilation, self.cfg.left_pad())
    }
    /// This convolution evaluated position by position over `length` positions (cached sampling).
    pub fn stepper(&self, length: usize, batch: usize) -> Result<StepConv> {
        StepConv::new(&self.weight, self.bias.as_ref(), &self.plan(), (1, length), batch)
    }

    /// Channels-last, the layout the ARMs use inside: xs `[B, L, C_in]` → `[B, L, C_out]`.
    pub fn forward_blc(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_blc_act(xs, None)
    }

    /// [`Self::forward_blc`] then a LeakyReLU of `slope`, fused into the convolution's output pass on the
    /// CPU (one pass over the activations instead of three).
    pub fn forward_blc_leaky(&self, xs: &Tensor, slope: f64) -> Result<Tensor> {
        self.forward_blc_act(xs, Some(slope))
    }

    fn forward_blc_act(&self, xs: &Tensor, leaky: Option<f64>) -> Result<Tensor> {
        let _ = xs.dims3()?;
        if xs.device().is_cpu() {
            let zeros;
            let bias = match &self.bias {
                Some(b) => b,
                None => {
                    zeros = Tensor::zeros(self.weight.dim(0)?, self.weight.dtype(), self.weight.device())?;
                    &zeros
                }
            };
            // A sequence is an image of one row: [B, L, C] → [B, 1, L, C].
            let xs = xs.unsqueeze(1)?;
            return match leaky {
                Some(slope) => shifted_conv_leaky(&xs, &self.weight, bias, &self.plan(), slope)?.squeeze(1),
                None => shifted_conv(&xs, &self.weight, bias, &self.plan())?.squeeze(1),
            };
        }
        // Accelerators: candle's own conv1d on the padded input (its CPU backward is what we avoid).
        let l = xs.dim(1)?;
        let ys = xs
            .transpose(1, 2)?
            .pad_with_zeros(2, self.cfg.left_pad(), 0)?
            .conv1d(&self.weight, 0, 1, self.cfg.dilation, 1)?
            .narrow(2, 0, l)?
            .transpose(1, 2)?;
        let ys = match &self.bias {
            Some(b) => ys.broadcast_add(b)?,
            None => ys,
        };
        match leaky {
            Some(slope) => super::leaky_relu(&ys, slope),
            None => Ok(ys),
        }
    }
}

impl Module for CausalConv1d {
    /// xs `[B, C_in, L]` → `[B, C_out, L]`, as `torch.nn.Conv1d` lays it out.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_blc(&xs.transpose(1, 2)?)?.transpose(1, 2)
    }
}

/// PyTorch's default `Conv1d` initialisation (kaiming_uniform with a = √5): weight and bias uniform in
/// ±1/√fan_in, with fan_in = C_in·K. The seed's reference was trained from this initialisation.
pub fn causal_conv1d(c_in: usize, c_out: usize, cfg: CausalConv1dConfig, vb: VarBuilder) -> Result<CausalConv1d> {
    let bound = 1.0 / ((c_in * cfg.kernel) as f64).sqrt();
    let init = Init::Uniform { lo: -bound, up: bound };
    let w = vb.get_with_hints((c_out, c_in, cfg.kernel), "weight", init)?;
    let b = vb.get_with_hints(c_out, "bias", init)?;
    Ok(CausalConv1d::new(w, Some(b), cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runs of offsets count what a set of positions, grown tap by tap, counts: every mix of kernels,
    /// dilations (gaps or none) and lengths up to 40, and a kernel as long as a long sequence in no time.
    #[test]
    fn positions_seen_counts_what_a_set_of_positions_counts() {
        let naive = |layers: &[CausalConv1dConfig], n: usize| {
            let mut seen = vec![false; n];
            seen[0] = true;
            for c in layers {
                let first = usize::from(c.kind == ConvType::A);
                let mut next = vec![false; n];
                for o in (0..n).filter(|&o| seen[o]) {
                    for t in (0..c.kernel).map(|j| o + first + j * c.dilation).filter(|&t| t < n) {
                        next[t] = true;
                    }
                }
                seen = next;
            }
            seen[1..].iter().filter(|&&s| s).count()
        };
        let mut checked = 0;
        for n in [1, 2, 7, 40] {
            for kernel in 1..5 {
                for d1 in 1..7 {
                    for d2 in 1..9 {
                        for d3 in [1, 3, 16] {
                            let layers: Vec<_> = [(d1, ConvType::A), (d2, ConvType::B), (d3, ConvType::B)]
                                .map(|(dilation, kind)| CausalConv1dConfig { kernel, dilation, kind })
                                .to_vec();
                            assert_eq!(positions_seen(&layers, n), naive(&layers, n), "{layers:?}, {n}");
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 4 * 4 * 6 * 8 * 3);
        let n = 1 << 22;
        let long = [ConvType::A, ConvType::B].map(|kind| CausalConv1dConfig {
            kernel: n + 1,
            dilation: 1,
            kind,
        });
        assert_eq!(positions_seen(&long, n), n - 1);
    }
    use candle_core::{DType, Device};

    fn layer(c_in: usize, c_out: usize, cfg: CausalConv1dConfig, dtype: DType) -> Result<CausalConv1d> {
        let store = crate::params::ParamStore::new(7);
        causal_conv1d(c_in, c_out, cfg, store.var_builder(dtype, &Device::Cpu))
    }

    /// Perturbing input j changes outputs only at positions > j (type A) or ≥ j (type B).
    #[test]
    fn type_a_output_ignores_current_input_and_type_b_sees_it() -> Result<()> {
        let dev = Device::Cpu;
        for kind in [ConvType::A, ConvType::B] {
            for dilation in [1, 2, 3] {
                let conv = layer(
                    2,
                    3,
                    CausalConv1dConfig {
                        kernel: 3,
                        dilation,
                        kind,
                    },
                    DType::F64,
                )?;
                let l = 12;
                let x = Tensor::randn(0f64, 1., (1, 2, l), &dev)?;
                let y = conv.forward(&x)?;
                for j in 0..l {
                    let bump = Tensor::zeros((1, 2, l), DType::F64, &dev)?
                        .slice_assign(&[0..1, 0..2, j..j + 1], &Tensor::ones((1, 2, 1), DType::F64, &dev)?)?;
                    let dy = (conv.forward(&(&x + bump)?)? - &y)?
                        .abs()?
                        .max(1)?
                        .squeeze(0)?
                        .to_vec1::<f64>()?;
                    for (t, d) in dy.iter().enumerate() {
                        let may_change = match kind {
                            ConvType::A => t > j && t - j <= (3 - 1) * dilation + 1,
                            ConvType::B => t >= j && t - j <= (3 - 1) * dilation,
                        };
                        if !may_change {
                            assert_eq!(*d, 0.0, "{kind:?} d={dilation}: output {t} changed with input {j}");
                        }
                    }
                    // Type B output j always sees x_j; type A output j+1 always does.
                    let seen = if kind == ConvType::A { j + 1 } else { j };
                    if seen < l {
                        assert!(dy[seen] > 0.0, "{kind:?}: output {seen} should see input {j}");
                    }
                }
            }
        }
        Ok(())
    }

    /// Finite differences in f64 against the custom op's backward pass, through the whole layer (bias too).
    #[test]
    fn gradient_matches_finite_differences_f64() -> Result<()> {
        let dev = Device::Cpu;
        for kind in [ConvType::A, ConvType::B] {
            let conv = layer(
                3,
                4,
                CausalConv1dConfig {
                    kernel: 3,
                    dilation: 2,
                    kind,
                },
                DType::F64,
            )?;
            let x = candle_core::Var::randn(0f64, 1., (2, 3, 9), &dev)?;
            let proj = Tensor::randn(0f64, 1., (2, 4, 9), &dev)?;
            let f = |x: &Tensor| -> Result<Tensor> { (conv.forward(x)?.tanh()? * &proj)?.sum_all() };
            let grads = f(x.as_tensor())?.backward()?;
            for (name, param) in [
                ("x", x.as_tensor()),
                ("weight", conv.weight()),
                ("bias", conv.bias().unwrap()),
            ] {
                let g = grads.get(param).expect("gradient").flatten_all()?.to_vec1::<f64>()?;
                let flat = param.flatten_all()?.to_vec1::<f64>()?;
                for i in (0..flat.len()).step_by(5) {
                    let mut plus = flat.clone();
                    plus[i] += 1e-6;
                    let mut minus = flat.clone();
                    minus[i] -= 1e-6;
                    let eval = |v: Vec<f64>| -> Result<f64> {
                        let t = Tensor::from_vec(v, param.shape(), &dev)?;
                        let out = match name {
                            "x" => f(&t)?,
                            "weight" => {
                                let c = CausalConv1d::new(t, conv.bias().cloned(), *conv.config());
                                (c.forward(x.as_tensor())?.tanh()? * &proj)?.sum_all()?
                            }
                            _ => {
                                let c = CausalConv1d::new(conv.weight().clone(), Some(t), *conv.config());
                                (c.forward(x.as_tensor())?.tanh()? * &proj)?.sum_all()?
                            }
                        };
                        out.to_scalar::<f64>()
                    };
                    let fd = (eval(plus)? - eval(minus)?) / 2e-6;
                    assert!(
                        (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                        "{kind:?} {name}[{i}]: fd {fd} vs {}",
                        g[i]
                    );
                }
            }
        }
        Ok(())
    }
}
