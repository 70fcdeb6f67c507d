//! 2-D convolutions that respect the raster order of pixels (van den Oord et al. 2016b, 2016c), all run by
//! the shifted-product kernel with a tap list instead of a zeroed weight mask:
//!
//! - [`MaskedConv2d`]: a k×k kernel whose taps are the rows above and the pixels to the left; mask A also
//!   drops the centre (the first layer: θ at a pixel never sees that pixel), mask B keeps it.
//! - [`StackConv`]: the two stacks of the gated PixelCNN. The vertical stack's kernel covers the k/2 rows
//!   above and the current row (k wide); its output is shifted down one row before the horizontal stack
//!   reads it. The horizontal stack's kernel is 1 × (k/2 + 1): the pixels to the left and (mask B) the
//!   current one. Together they see every preceding pixel: no blind spot.
//!
//! Weights are `[C_out, C_in, KH, KW]` as PyTorch stores them; the taps a mask drops simply get no gradient.
//! Tensors are channels-last: `[B, H, W, C]`.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use candle_nn::{Init, VarBuilder};

use super::kernels::par_build;
use super::kernels::shifted_conv::{shifted_conv, Tap, TapPlan};
use super::{ConvType, StepConv};

/// The k×k PixelCNN mask: rows above in full, the current row left of the centre (and the centre for B).
pub fn masked_plan(k: usize, mask: ConvType) -> TapPlan {
    let c = k / 2;
    let mut taps = vec![];
    for ky in 0..=c {
        for kx in 0..k {
            if ky < c || kx < c || (kx == c && mask == ConvType::B) {
                taps.push(Tap {
                    dy: ky,
                    dx: kx,
                    k: ky * k + kx,
                });
            }
        }
    }
    TapPlan {
        taps,
        pad_top: c,
        pad_left: c,
        pad_right: c,
    }
}

/// The gated PixelCNN's vertical kernel, (k/2 + 1) × k: rows y − k/2 … y, columns x − k/2 … x + k/2.
pub fn vertical_plan(k: usize) -> TapPlan {
    let c = k / 2;
    let taps = (0..=c)
        .flat_map(|ky| {
            (0..k).map(move |kx| Tap {
                dy: ky,
                dx: kx,
                k: ky * k + kx,
            })
        })
        .collect();
    TapPlan {
        taps,
        pad_top: c,
        pad_left: c,
        pad_right: c,
    }
}

/// The horizontal kernel, 1 × (k/2 + 1): columns x − k/2 … x (mask B) or … x − 1 (mask A).
pub fn horizontal_plan(k: usize, mask: ConvType) -> TapPlan {
    let c = k / 2;
    let n = if mask == ConvType::A { c } else { c + 1 };
    TapPlan {
        taps: (0..n).map(|kx| Tap { dy: 0, dx: kx, k: kx }).collect(),
        pad_top: 0,
        pad_left: c,
        pad_right: 0,
    }
}

/// A 2-D convolution with a fixed tap plan: weight `[C_out, C_in, KH, KW]`, bias `[C_out]`.
#[derive(Debug, Clone)]
pub struct PlannedConv2d {
    weight: Tensor,
    bias: Tensor,
    plan: TapPlan,
    /// For colour images: zeros where the centre tap would let a colour see itself or a later one.
    colour_mask: Option<Tensor>,
}

/// The colour of channel j of c when the channels are split into `colors` equal blocks (R, then G, then B):
/// data channels (each colour's encoding), hidden channels and output parameters alike.
fn colour_of(j: usize, c: usize, colors: usize) -> usize {
    j * colors / c
}

impl PlannedConv2d {
    pub fn new(weight: Tensor, bias: Tensor, plan: TapPlan) -> Self {
        Self {
            weight,
            bias,
            plan,
            colour_mask: None,
        }
    }

    /// PixelCNN's channel ordering for images of `colors` colours: at the centre tap, output channels of
    /// colour g read input channels of colours < g (mask A) or ≤ g (mask B); the other taps (pixels before
    /// this one) read every colour. Both channel counts must be multiples of `colors`.
    pub fn with_colours(self, colors: usize, mask: ConvType) -> Result<Self> {
        self.with_colour_groups(colors, mask, false)
    }

    /// [`Self::with_colours`] for a convolution whose outputs feed a gate: the two halves of its 2C outputs
    /// (the tanh and the sigmoid inputs) are each split into the colours, so that gated unit j keeps the
    /// colour of channel j.
    pub fn with_gated_colours(self, colors: usize, mask: ConvType) -> Result<Self> {
        self.with_colour_groups(colors, mask, true)
    }

    fn with_colour_groups(mut self, colors: usize, mask: ConvType, gated_out: bool) -> Result<Self> {
        if colors <= 1 {
            return Ok(self);
        }
        let (c_out, c_in, kh, kw) = self.weight.dims4()?;
        let per_half = if gated_out { c_out / 2 } else { c_out };
        if c_out % colors != 0 || c_in % colors != 0 || per_half % colors != 0 {
            candle_core::bail!("{c_in} → {c_out} channels do not split into {colors} colours");
        }
        // The tap that reads the current pixel itself; a plan without one needs no colour mask.
        let Some(centre) = self
            .plan
            .taps
            .iter()
            .find(|t| t.dy == self.plan.pad_top && t.dx == self.plan.pad_left)
            .map(|t| t.k)
        else {
            return Ok(self);
        };
        let mut m = vec![1f32; c_out * c_in * kh * kw];
        for o in 0..c_out {
            for i in 0..c_in {
                let (go, gi) = (colour_of(o % per_half, per_half, colors), colour_of(i, c_in, colors));
                let seen = if mask == ConvType::A { gi < go } else { gi <= go };
                if !seen {
                    m[(o * c_in + i) * kh * kw + centre] = 0.0;
                }
            }
        }
        let m = Tensor::from_vec(m, (c_out, c_in, kh, kw), self.weight.device())?;
        self.colour_mask = Some(m.to_dtype(self.weight.dtype())?);
        Ok(self)
    }

    /// The weight as applied: with the colour mask, if any.
    fn effective_weight(&self) -> Result<Tensor> {
        match &self.colour_mask {
            Some(m) => &self.weight * m,
            None => Ok(self.weight.clone()),
        }
    }
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub fn plan(&self) -> &TapPlan {
        &self.plan
    }
    /// This convolution evaluated a few positions at a time on an `h × w` image (cached sampling); a 1×1
    /// convolution used only through [`StepConv::pointwise`] can take a `(0, 0)` grid.
    pub fn stepper(&self, grid: (usize, usize), batch: usize) -> Result<StepConv> {
        StepConv::new(&self.effective_weight()?, Some(&self.bias), &self.plan, grid, batch)
    }

    /// xs `[B, H, W, C_in]` → `[B, H, W, C_out]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _ = xs.dims4()?;
        let (c_out, c_in, kh, kw) = self.weight.dims4()?;
        shifted_conv(
            xs,
            &self.effective_weight()?.reshape((c_out, c_in, kh * kw))?,
            &self.bias,
            &self.plan,
        )
    }
}

/// A convolution of kernel `kh × kw` with the given plan, initialised as PyTorch's `Conv2d` (uniform in
/// ±1/√fan_in, fan_in counting only the taps in use, so masked layers start at the same scale).
pub fn planned_conv2d(
    c_in: usize,
    c_out: usize,
    (kh, kw): (usize, usize),
    plan: TapPlan,
    vb: VarBuilder,
) -> Result<PlannedConv2d> {
    let bound = 1.0 / ((c_in * plan.taps.len()) as f64).sqrt();
    let init = Init::Uniform { lo: -bound, up: bound };
    let w = vb.get_with_hints((c_out, c_in, kh, kw), "weight", init)?;
    let b = vb.get_with_hints(c_out, "bias", init)?;
    Ok(PlannedConv2d::new(w, b, plan))
}

/// A k×k masked convolution (PixelCNN).
pub fn masked_conv2d(c_in: usize, c_out: usize, k: usize, mask: ConvType, vb: VarBuilder) -> Result<PlannedConv2d> {
    planned_conv2d(c_in, c_out, (k, k), masked_plan(k, mask), vb)
}

/// A 1×1 convolution: a per-pixel linear map.
pub fn conv1x1(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<PlannedConv2d> {
    planned_conv2d(c_in, c_out, (1, 1), masked_plan(1, ConvType::B), vb)
}

/// Receptive fields without running a network: the input pixels (of an `h × w` image) that the outputs
/// in `out` depend on through one convolution with `plan`.
pub fn reach(out: &[Vec<bool>], plan: &TapPlan) -> Vec<Vec<bool>> {
    let (h, w) = (out.len(), out[0].len());
    let mut seen = vec![vec![false; w]; h];
    for (y, row) in out.iter().enumerate() {
        for (x, _) in row.iter().enumerate().filter(|(_, &on)| on) {
            for t in &plan.taps {
                let (sy, sx) = (
                    (y + t.dy) as isize - plan.pad_top as isize,
                    (x + t.dx) as isize - plan.pad_left as isize,
                );
                if sy >= 0 && sx >= 0 && (sx as usize) < w {
                    seen[sy as usize][sx as usize] = true;
                }
            }
        }
    }
    seen
}

/// Pixel sets: union, and the down-shift seen backwards (output row y reads row y − 1).
pub fn union(a: &[Vec<bool>], b: &[Vec<bool>]) -> Vec<Vec<bool>> {
    a.iter()
        .zip(b)
        .map(|(r, s)| r.iter().zip(s).map(|(p, q)| *p || *q).collect())
        .collect()
}
pub fn reach_down_shift(out: &[Vec<bool>]) -> Vec<Vec<bool>> {
    let w = out[0].len();
    let mut v: Vec<Vec<bool>> = out[1..].to_vec();
    v.push(vec![false; w]);
    v
}

/// Shifts `[B, H, W, C]` down one row (zeros on top): row y then holds what row y − 1 held. One copy on every
/// core each way (on the CPU), where candle's pad and narrow copy three times on one.
pub fn down_shift(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(RowShift { down: true })
    } else {
        let h = x.dim(1)?;
        x.pad_with_zeros(1, 1, 0)?.narrow(1, 0, h)
    }
}

/// `[B, H, W, C]` shifted one row down (or up: the down-shift's gradient), zeros in the row left empty.
struct RowShift {
    down: bool,
}

impl RowShift {
    fn run<T: WithDType>(&self, x: &[T], (_, h, w, c): (usize, usize, usize, usize)) -> Vec<T> {
        let (row, image) = (w * c, h * w * c);
        let zero = MaybeUninit::new(T::zero());
        // SAFETY: each piece is one image, written whole: the row shifted in, and zeros in the row left empty.
        unsafe {
            par_build(x.len(), image.max(1), |i, out| {
                let src = &x[i * image..(i + 1) * image];
                if self.down {
                    out[..row].fill(zero);
                    out[row..].write_copy_of_slice(&src[..image - row]);
                } else {
                    out[..image - row].write_copy_of_slice(&src[row..]);
                    out[image - row..].fill(zero);
                }
            })
        }
    }
}

impl CustomOp1 for RowShift {
    fn name(&self) -> &'static str {
        "row-shift"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims4()?;
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("down_shift: input must be contiguous")
        };
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.run(&v[start..end], dims)),
            CpuStorage::F64(v) => CpuStorage::F64(self.run(&v[start..end], dims)),
            _ => candle_core::bail!("down_shift: supports f32 and f64"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let up = RowShift { down: !self.down };
        Ok(Some(grad.contiguous()?.apply_op1(up)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The shift op against candle's pad and narrow: values and gradients, f32 and f64.
    #[test]
    fn down_shift_is_pad_and_narrow() -> Result<()> {
        for dtype in [DType::F32, DType::F64] {
            let x =
                candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 4, 5, 2), &Device::Cpu)?.to_dtype(dtype)?)?;
            let weights = Tensor::randn(0f32, 1.0, (3, 4, 5, 2), &Device::Cpu)?.to_dtype(dtype)?;
            let slow = |x: &Tensor| x.pad_with_zeros(1, 1, 0)?.narrow(1, 0, 4);
            let mut got = vec![];
            for y in [down_shift(x.as_tensor())?, slow(x.as_tensor())?] {
                let g = (&y * &weights)?.sum_all()?.backward()?;
                let flat = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>();
                got.push((flat(&y)?, flat(g.get(x.as_tensor()).expect("a gradient"))?));
            }
            assert_eq!(got[0], got[1], "{dtype:?}");
            assert!(got[0].0[..10].iter().all(|&v| v == 0.0), "the top row is zero");
        }
        Ok(())
    }

    /// Which input pixels move output pixel (y, x), for a layer applied to a random 1-channel image.
    fn seen_by(
        f: &dyn Fn(&Tensor) -> Result<Tensor>,
        h: usize,
        w: usize,
        y: usize,
        x: usize,
    ) -> Result<Vec<(usize, usize)>> {
        let dev = Device::Cpu;
        let img = Tensor::randn(0f64, 1., (1, h, w, 1), &dev)?;
        let base = f(&img)?;
        let mut seen = vec![];
        for sy in 0..h {
            for sx in 0..w {
                let mut v = img.flatten_all()?.to_vec1::<f64>()?;
                v[sy * w + sx] += 1.0;
                let out = f(&Tensor::from_vec(v, (1, h, w, 1), &dev)?)?;
                let d = (out - &base)?
                    .narrow(1, y, 1)?
                    .narrow(2, x, 1)?
                    .abs()?
                    .sum_all()?
                    .to_scalar::<f64>()?;
                if d > 0.0 {
                    seen.push((sy, sx));
                }
            }
        }
        Ok(seen)
    }

    #[test]
    fn masks_see_exactly_the_rows_above_and_the_pixels_to_the_left() -> Result<()> {
        let store = crate::params::ParamStore::new(0);
        let vb = store.var_builder(DType::F64, &Device::Cpu);
        let a = masked_conv2d(1, 2, 3, ConvType::A, vb.pp("a"))?;
        let b = masked_conv2d(1, 2, 3, ConvType::B, vb.pp("b"))?;
        let above_left = vec![(1, 1), (1, 2), (1, 3), (2, 1)];
        assert_eq!(seen_by(&|x| a.forward(x), 5, 5, 2, 2)?, above_left);
        let mut with_centre = above_left.clone();
        with_centre.push((2, 2));
        assert_eq!(seen_by(&|x| b.forward(x), 5, 5, 2, 2)?, with_centre);
        // Vertical: rows 1..=2 (current included), columns 1..=3; horizontal A: (2, 1) only.
        let v = planned_conv2d(1, 2, (2, 3), vertical_plan(3), vb.pp("v"))?;
        assert_eq!(
            seen_by(&|x| v.forward(x), 5, 5, 2, 2)?,
            vec![(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
        );
        let h = planned_conv2d(1, 2, (1, 2), horizontal_plan(3, ConvType::A), vb.pp("h"))?;
        assert_eq!(seen_by(&|x| h.forward(x), 5, 5, 2, 2)?, vec![(2, 1)]);
        assert_eq!(
            seen_by(&|x| down_shift(&v.forward(x)?), 5, 5, 2, 2)?,
            vec![(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
        );
        Ok(())
    }

    /// Finite differences in f64 through a masked layer (weights, bias and input).
    #[test]
    fn gradient_matches_finite_differences_f64() -> Result<()> {
        let dev = Device::Cpu;
        let store = crate::params::ParamStore::new(1);
        let conv = masked_conv2d(2, 3, 3, ConvType::B, store.var_builder(DType::F64, &dev))?;
        let x = candle_core::Var::randn(0f64, 1., (2, 4, 5, 2), &dev)?;
        let proj = Tensor::randn(0f64, 1., (2, 4, 5, 3), &dev)?;
        let loss = || -> Result<f64> {
            (conv.forward(x.as_tensor())?.tanh()? * &proj)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        let grads = (conv.forward(x.as_tensor())?.tanh()? * &proj)?.sum_all()?.backward()?;
        for (name, var) in store.vars().into_iter().chain([("x".to_string(), x.clone())]) {
            let g = grads.get(&var).unwrap().flatten_all()?.to_vec1::<f64>()?;
            let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
            for i in (0..base.len()).step_by(3) {
                let mut v = base.clone();
                v[i] += 1e-6;
                var.set(&Tensor::from_vec(v.clone(), var.shape(), &dev)?)?;
                let up = loss()?;
                v[i] -= 2e-6;
                var.set(&Tensor::from_vec(v, var.shape(), &dev)?)?;
                let down = loss()?;
                var.set(&Tensor::from_vec(base.clone(), var.shape(), &dev)?)?;
                let fd = (up - down) / 2e-6;
                assert!(
                    (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{name}[{i}]: fd {fd} vs {}",
                    g[i]
                );
            }
        }
        Ok(())
    }
}
