//! Cached sampling: the network's stepper keeps what earlier positions computed, so each position costs one
//! column of computation (Fast WaveNet, Paine et al. 2016). Same noise, same samples as the naive sampler.

use super::Noise;
use crate::error::{Error, Result};
use crate::models::{Arithmetic, Arm};

/// The samples `[N, D]`, or an error if the model family has no cached stepper.
///
/// ```
/// use armory::models::{causal_conv, Arm, ModelConfig, Network};
/// use armory::sample::{sample_cached, sample_naive, Noise};
/// use candle_core::{DType, Device};
///
/// let cfg = ModelConfig::sequence(Network::CausalConv(causal_conv::Config { hidden: 8, ..Default::default() }), 17, 64);
/// let arm = Arm::new(&cfg, 0, DType::F32, &Device::Cpu)?;
/// let noise = Noise::new(3, arm.dim(), 7); // 3 samples, fixed by seed 7
/// let x = sample_cached(&arm, &noise, 1.0, None)?; // [3 × 64], raster order
/// assert!(x.len() == 3 * 64 && x.iter().all(|&v| v < 17));
/// assert_eq!(x, sample_naive(&arm, &noise, 1.0, None)?); // the naive sampler's samples, 64 passes fewer
/// # Ok::<(), armory::Error>(())
/// ```
pub fn sample_cached(arm: &Arm, noise: &Noise, temperature: f64, labels: Option<&[u32]>) -> Result<Vec<u32>> {
    sample_cached_given(arm, noise, temperature, labels, None)
}

/// [`sample_cached`] for a model conditioned on a context vector per example (`context` `[N][E]` flattened:
/// a latent-variable model's decoder, given z).
pub fn sample_cached_given(
    arm: &Arm,
    noise: &Noise,
    temperature: f64,
    labels: Option<&[u32]>,
    context: Option<&[f32]>,
) -> Result<Vec<u32>> {
    let (n, dim) = (noise.len(), arm.dim());
    let mut stepper = arm
        .stepper_context(n, labels, context, Arithmetic::Fast)?
        .ok_or_else(|| {
            Error::Invalid("this model family has no cached sampler; use --method naive or predictive".into())
        })?;
    let mut x = vec![0u32; n * dim];
    let mut prev: Option<Vec<u32>> = None;
    for d in 0..dim {
        let theta = stepper.step(prev.as_deref())?; // [N][P] at position d
        let drawn = (0..n)
            .map(|i| {
                let row = super::finite_theta(&theta[i], d)?;
                Ok(arm.likelihood().sample_with_noise(row, noise.at(i, d), temperature))
            })
            .collect::<Result<Vec<u32>>>()?;
        for (i, &v) in drawn.iter().enumerate() {
            x[i * dim + d] = v;
        }
        prev = Some(drawn);
    }
    Ok(x)
}
