//! Per-dimension distributions: pure functions of (network output, data).

pub mod categorical;
pub mod continuous;
pub mod logistic_mixture;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// The distribution of each x_d given the network's output θ_d.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Likelihood {
    /// Softmax over K values: θ_d are K logits.
    Categorical { num_values: usize },
    /// PixelCNN++'s discretized logistic mixture over K ordered values (bins): θ_d are M logits, M means,
    /// M log-scales.
    LogisticMixture { num_values: usize, n_mix: usize },
}

impl Likelihood {
    /// Values x_d can take: 0..K.
    pub fn num_values(&self) -> usize {
        match *self {
            Likelihood::Categorical { num_values } | Likelihood::LogisticMixture { num_values, .. } => num_values,
        }
    }

    /// Network outputs per dimension.
    pub fn params_per_dim(&self) -> usize {
        match *self {
            Likelihood::Categorical { num_values } => num_values,
            Likelihood::LogisticMixture { n_mix, .. } => logistic_mixture::gray_params_len(n_mix),
        }
    }

    /// params `[B, D, P]`, x `[B, D]` (u32) → log p(x) `[B]` in nats.
    pub fn log_prob(&self, params: &Tensor, x: &Tensor) -> Result<Tensor> {
        match *self {
            Likelihood::Categorical { .. } => categorical::log_prob(params, x),
            Likelihood::LogisticMixture { num_values, n_mix } => {
                let (b, d, p) = params.dims3()?;
                let flat = logistic_mixture::log_prob_gray(
                    &params.reshape((b * d, p))?,
                    &x.flatten_all()?,
                    n_mix,
                    num_values,
                )?;
                Ok(flat.reshape((b, d))?.sum(1)?)
            }
        }
    }

    /// Draws x_d from one position's parameters by the inverse CDF of a given uniform `u` in [0, 1):
    /// the noise is fixed outside, so every sampler (naive, cached, predictive) draws the same value.
    pub fn sample_with_noise(&self, params: &[f32], u: f64, temperature: f64) -> u32 {
        match *self {
            Likelihood::Categorical { .. } => categorical::sample_with_noise(params, u, temperature),
            Likelihood::LogisticMixture { num_values, n_mix } => {
                // One uniform drives both draws: it picks the component by inverse CDF, and where it fell
                // inside that component's slice of [0, 1) is again uniform, for the value.
                let (_, within) = categorical::pick(&params[..n_mix], u, temperature);
                logistic_mixture::sample_gray(params, u, within, temperature, n_mix, num_values)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mixture sampler honours the temperature: near 0 every draw is the mode of the likeliest
    /// component; at 1 both components and several bins occur.
    #[test]
    fn mixture_sampling_follows_the_temperature() {
        let mix = Likelihood::LogisticMixture {
            num_values: 16,
            n_mix: 2,
        };
        let params = [0f32, 2.0, -0.5, 0.5, -2.0, -2.0]; // logits, means, log scales
        let draws = |t: f64| -> Vec<u32> {
            (0..200)
                .map(|i| mix.sample_with_noise(&params, (i as f64 + 0.5) / 200.0, t))
                .collect()
        };
        assert!(draws(1e-3).iter().all(|&v| v == 11), "{:?}", draws(1e-3));
        let warm = draws(1.0);
        assert!(warm.iter().any(|&v| v <= 5) && warm.iter().filter(|&&v| v != 11).count() > 40);
    }
}
