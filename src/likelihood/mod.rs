//! Per-dimension distributions: pure functions of (network output, data).

pub mod categorical;
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
    /// The categorical over K values, or a discretized logistic mixture of `n_mix` components over K bins.
    pub fn for_values(num_values: usize, n_mix: Option<usize>) -> Self {
        match n_mix {
            Some(n_mix) => Likelihood::LogisticMixture { num_values, n_mix },
            None => Likelihood::Categorical { num_values },
        }
    }

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
                // One uniform drives both draws: it picks the component by inverse CDF, and its position
                // inside that component's slice of [0, 1) is again uniform, for the value.
                let logits = &params[..n_mix];
                let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
                let w: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
                let total: f64 = w.iter().sum();
                let (mut acc, mut within) = (0.0, u);
                for p in w.iter().map(|v| v / total) {
                    if u < acc + p {
                        within = ((u - acc) / p).clamp(0.0, 1.0 - 1e-12);
                        break;
                    }
                    acc += p;
                }
                let _ = temperature; // the mixture is sampled as it is
                logistic_mixture::sample_gray(params, u, within, n_mix, num_values)
            }
        }
    }
}
