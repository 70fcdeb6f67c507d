//! Cached sampling: the network's stepper keeps what earlier positions computed, so each position costs one
//! column of computation (Fast WaveNet, Paine et al. 2016). Same noise, same samples as the naive sampler.

use super::Noise;
use crate::error::{Error, Result};
use crate::models::Arm;

/// The samples `[N, D]`, or an error if the model family has no cached stepper.
pub fn sample_cached(arm: &Arm, noise: &Noise, temperature: f64, labels: Option<&[u32]>) -> Result<Vec<u32>> {
    let (n, dim) = (noise.len(), arm.dim());
    let mut stepper = arm.stepper(n, labels)?.ok_or_else(|| {
        Error::Config("this model family has no cached sampler; use --method naive or predictive".into())
    })?;
    let mut x = vec![0u32; n * dim];
    let mut prev: Option<Vec<u32>> = None;
    for d in 0..dim {
        let theta = stepper.step(prev.as_deref())?; // [N][P] at position d
        let drawn: Vec<u32> = (0..n)
            .map(|i| {
                arm.likelihood()
                    .sample_with_noise(&theta[i], noise.at(i, d), temperature)
            })
            .collect();
        for (i, &v) in drawn.iter().enumerate() {
            x[i * dim + d] = v;
        }
        prev = Some(drawn);
    }
    Ok(x)
}
