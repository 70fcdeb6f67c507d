//! A mixture of M logistics over the real line: the density of one continuous dimension given θ_d, for
//! models of continuous values (the latent z of a VAE under an ARM prior).
//!
//! θ_d holds 3M numbers in the layout of the discretized mixture ([`super::logistic_mixture`]): M logits,
//! M means, M log-scales. Component m is the logistic with mean μ_m and scale s_m = exp(max(log s_m, −7)),
//! density σ(u)·σ(−u)/s at u = (z − μ_m)/s_m, and the components are weighted by softmax(logits). Unlike the
//! discretized version nothing is binned: this is a density (it may exceed 1), and it integrates to one over
//! ℝ. Everything is in log space and in nats; the density is differentiable in θ and z through candle's
//! autograd.

use candle_core::Tensor;

use super::categorical;
use super::logistic_mixture::{log_sum_exp, logistic_quantile, softplus, LOG_SCALE_MIN};
use crate::error::{Error, Result};

/// Network outputs per dimension for `n_mix` components: 3M.
pub fn params_len(n_mix: usize) -> usize {
    3 * n_mix
}

/// θ `[B, D, 3M]` (M logits, M means, M log-scales per dimension), z `[B, D]` (floats, θ's dtype) →
/// log p(z_d | θ_d) `[B, D]` in nats, one term per dimension.
pub fn log_density_dims(theta: &Tensor, z: &Tensor) -> Result<Tensor> {
    let (b, d, p) = theta.dims3()?;
    if p == 0 || p % 3 != 0 || z.dims() != [b, d] || z.dtype() != theta.dtype() {
        return Err(Error::Invalid(format!(
            "logistic density: θ {:?} ({:?}) must be [B, D, 3M] with M ≥ 1, and z {:?} ({:?}) [B, D] of its dtype",
            theta.dims(),
            theta.dtype(),
            z.dims(),
            z.dtype()
        )));
    }
    let m = p / 3;
    let rows = theta.reshape((b * d, p))?; // one dimension of one example per row
    let log_mix = candle_nn::ops::log_softmax(&rows.narrow(1, 0, m)?, 1)?; // [N, M]
    let means = rows.narrow(1, m, m)?;
    let log_scales = rows.narrow(1, 2 * m, m)?.maximum(LOG_SCALE_MIN)?; // s ≥ e⁻⁷: 1/s stays finite
    let u = (z.reshape((b * d, 1))?.broadcast_sub(&means)? * log_scales.neg()?.exp()?)?; // (z − μ)/s
                                                                                         // log pdf = log σ(u) + log σ(−u) − log s = u − 2·softplus(u) − log s, with no exp that can overflow.
    let log_pdf = ((&u - (softplus(&u)? * 2.0)?)? - log_scales)?;
    Ok(log_sum_exp(&(log_mix + log_pdf)?)?.reshape((b, d))?)
}

/// θ `[B, D, 3M]`, z `[B, D]` → Σ_d log p(z_d | θ_d) `[B]` in nats.
pub fn log_density(theta: &Tensor, z: &Tensor) -> Result<Tensor> {
    Ok(log_density_dims(theta, z)?.sum(1)?)
}

/// Draws one value from one dimension's θ `[3M]` with noise fixed outside: `u_component` ∈ [0, 1) picks the
/// component by the inverse CDF of softmax(logits), `u_value` ∈ (0, 1) the value by that logistic's inverse
/// CDF μ + s·log(u/(1 − u)). A `u_value` of exactly 0 or 1 is moved in by the least step that keeps the draw
/// finite, so every draw is a real number.
pub fn sample(theta_row: &[f32], u_component: f64, u_value: f64) -> f32 {
    let m = theta_row.len() / 3;
    assert!(
        m > 0 && theta_row.len() == params_len(m),
        "continuous::sample: θ has {} numbers, not 3M",
        theta_row.len()
    );
    let k = categorical::sample_with_noise(&theta_row[..m], u_component, 1.0) as usize;
    let mean = theta_row[m + k] as f64;
    let log_scale = (theta_row[2 * m + k] as f64).max(LOG_SCALE_MIN);
    let u = u_value.clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON);
    logistic_quantile(mean, log_scale, u) as f32
}
