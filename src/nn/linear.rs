//! A fully connected layer over the last axis, initialised as PyTorch's `nn.Linear`.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor, // [out, in]
    bias: Tensor,   // [out]
}

impl Linear {
    pub fn new(weight: Tensor, bias: Tensor) -> Self {
        Self { weight, bias }
    }
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// xs `[…, in]` → `[…, out]`. The leading axes are folded into one so that every product is a plain 2-D
    /// matmul (candle 0.11's batched matmul has had a backward bug with broadcast operands).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let (lead, d_in) = dims.split_at(dims.len() - 1);
        let rows: usize = lead.iter().product();
        let ys = xs
            .reshape((rows, d_in[0]))?
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?;
        let mut out = lead.to_vec();
        out.push(self.weight.dim(0)?);
        ys.reshape(out)
    }
}

/// PyTorch's default: weight and bias uniform in ±1/√in.
pub fn linear(d_in: usize, d_out: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (d_in as f64).sqrt();
    let init = Init::Uniform { lo: -bound, up: bound };
    Ok(Linear::new(
        vb.get_with_hints((d_out, d_in), "weight", init)?,
        vb.get_with_hints(d_out, "bias", init)?,
    ))
}
