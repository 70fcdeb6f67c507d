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
}

impl Likelihood {
    /// Values x_d can take: 0..K.
    pub fn num_values(&self) -> usize {
        match *self {
            Likelihood::Categorical { num_values } => num_values,
        }
    }

    /// Network outputs per dimension.
    pub fn params_per_dim(&self) -> usize {
        match *self {
            Likelihood::Categorical { num_values } => num_values,
        }
    }

    /// params `[B, D, P]`, x `[B, D]` (u32) → log p(x) `[B]` in nats.
    pub fn log_prob(&self, params: &Tensor, x: &Tensor) -> Result<Tensor> {
        match self {
            Likelihood::Categorical { .. } => categorical::log_prob(params, x),
        }
    }

    /// Draws x_d from one position's parameters by the inverse CDF of a given uniform `u` in [0, 1):
    /// the noise is fixed outside, so every sampler (naive, cached, predictive) draws the same value.
    pub fn sample_with_noise(&self, params: &[f32], u: f64, temperature: f64) -> u32 {
        match self {
            Likelihood::Categorical { .. } => categorical::sample_with_noise(params, u, temperature),
        }
    }
}
