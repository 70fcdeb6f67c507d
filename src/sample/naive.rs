//! The seed's sampler: start from zeros, and for each position run the whole network and draw x_d.
//! D full forward passes; plain on purpose, it is the reference every faster sampler is tested against.

use candle_core::Tensor;

use super::Noise;
use crate::error::Result;
use crate::models::{Arm, Mode};
use crate::nn::kernels::shifted_conv::with_frozen_weights;

/// Draws `noise.len()` examples: `[N, D]` values in 0..K, row-major. Class-conditional models take a
/// label per example.
pub fn sample_naive(arm: &Arm, noise: &Noise, temperature: f64, labels: Option<&[u32]>) -> Result<Vec<u32>> {
    sample_naive_given(arm, noise, temperature, labels, None)
}

/// [`sample_naive`] for a model conditioned on a context vector per example (`context` `[N][E]` flattened:
/// a latent-variable model's decoder, given z).
pub fn sample_naive_given(
    arm: &Arm,
    noise: &Noise,
    temperature: f64,
    labels: Option<&[u32]>,
    context: Option<&[f32]>,
) -> Result<Vec<u32>> {
    // The weights stay as they are: each convolution packs its kernel once for all D passes.
    with_frozen_weights(|| {
        let (n, dim) = (noise.len(), arm.dim());
        let labels = labels
            .map(|l| Tensor::from_slice(l, l.len(), arm.device()))
            .transpose()?;
        let context = context
            .map(|c| Tensor::from_slice(c, (n, c.len() / n.max(1)), arm.device()))
            .transpose()?;
        let mut x = vec![0u32; n * dim];
        for d in 0..dim {
            // θ for every position from the current canvas; only row d is used.
            let canvas = Tensor::from_vec(x.clone(), (n, dim), arm.device())?;
            let theta = arm
                .forward_context(&canvas, labels.as_ref(), context.as_ref(), Mode::Eval)?
                .narrow(1, d, 1)?
                .squeeze(1)?; // [N, P]
            let theta = theta.to_dtype(candle_core::DType::F32)?.contiguous()?;
            let rows = theta.to_vec2::<f32>()?;
            for (i, row) in rows.iter().enumerate() {
                let row = super::finite_theta(row, d)?;
                x[i * dim + d] = arm.likelihood().sample_with_noise(row, noise.at(i, d), temperature);
            }
        }
        Ok(x)
    })
}
