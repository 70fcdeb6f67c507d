//! The categorical distribution over K values, parameterised by logits.

use candle_core::{Tensor, D};

use crate::error::Result;

/// logits `[B, D, K]`, x `[B, D]` (u32, values 0..K) → Σ_d log softmax(logits_d)[x_d], `[B]`, in nats.
pub fn log_prob(logits: &Tensor, x: &Tensor) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?; // [B, D, K]
    let picked = log_p.gather(&x.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?; // [B, D, 1]
    Ok(picked.squeeze(D::Minus1)?.sum(1)?)
}

/// Inverse-CDF draw from softmax(logits / T) with the uniform `u` ∈ [0, 1).
pub fn sample_with_noise(logits: &[f32], u: f64, temperature: f64) -> u32 {
    pick(logits, u, temperature).0
}

/// [`sample_with_noise`], also returning where `u` fell inside the drawn value's slice of [0, 1), rescaled
/// to [0, 1): a fresh uniform, independent of the draw, for a second draw from the same noise.
pub fn pick(logits: &[f32], u: f64, temperature: f64) -> (u32, f64) {
    let t = temperature.max(1e-6);
    // log-sum-exp with the max subtracted, so large logits cannot overflow.
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let weights: Vec<f64> = logits.iter().map(|&v| ((v as f64 - max) / t).exp()).collect();
    let total: f64 = weights.iter().sum();
    let target = u * total;
    let mut acc = 0.0;
    for (k, w) in weights.iter().enumerate() {
        if target < acc + w {
            return (k as u32, ((target - acc) / w).clamp(0.0, 1.0 - 1e-12));
        }
        acc += w;
    }
    // u·total can reach the last edge by rounding: the last value with non-zero mass.
    (weights.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32, 1.0 - 1e-12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn log_prob_picks_the_observed_value() -> Result<()> {
        let dev = Device::Cpu;
        // Two positions, K = 3: uniform logits, then a peaked one.
        let logits = Tensor::new(&[[[0f32, 0., 0.], [10., 0., 0.]]], &dev)?;
        let x = Tensor::new(&[[2u32, 0]], &dev)?;
        let lp = log_prob(&logits, &x)?.to_vec1::<f32>()?;
        let want = -(3f32).ln() + (10f32 - (10f32.exp() + 2.0).ln());
        assert!((lp[0] - want).abs() < 1e-5, "{} vs {want}", lp[0]);
        Ok(())
    }

    #[test]
    fn inverse_cdf_covers_each_value_with_its_probability() {
        let logits = [0f32, (2f32).ln(), f32::NEG_INFINITY, 0.0]; // probabilities 1/4, 2/4, 0, 1/4
        let draws: Vec<u32> = (0..1000)
            .map(|i| sample_with_noise(&logits, (i as f64 + 0.5) / 1000.0, 1.0))
            .collect();
        let count = |k| draws.iter().filter(|&&v| v == k).count();
        assert_eq!((count(0), count(1), count(2), count(3)), (250, 500, 0, 250));
        assert_eq!(sample_with_noise(&logits, 0.999_999_999_999, 1.0), 3);
        // Temperature → 0 is the argmax.
        assert_eq!(sample_with_noise(&[0.0, 1.0, 0.5], 0.01, 1e-9), 1);
    }
}
