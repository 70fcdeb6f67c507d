//! From one position's network output θ to the integer frequencies the range coder uses, the same bits on
//! every machine: probabilities in f64 with `libm`'s `exp` (pure Rust, no platform maths), then one integer
//! rounding procedure. Encoder and decoder call exactly this code on exactly the same θ.

use crate::likelihood::Likelihood;

/// Frequencies sum to 2^PRECISION (constriction's default model, 24 bits in u32).
pub const PRECISION: usize = 24;

/// Log-scales are floored at −7 as in the likelihood (`logistic_mixture`), so 1/s stays finite.
const LOG_SCALE_MIN: f64 = -7.0;

/// The frequencies of the K values at one position, from θ: every value gets at least 1, the total is
/// exactly 2^[`PRECISION`].
pub fn frequencies(likelihood: &Likelihood, theta: &[f32]) -> Vec<u32> {
    match *likelihood {
        Likelihood::Categorical { .. } => quantise(&softmax_weights(theta)),
        Likelihood::LogisticMixture { num_values, n_mix } => quantise(&mixture_masses(theta, n_mix, num_values)),
    }
}

/// Uniform frequencies over `k` values (for labels).
pub fn uniform(k: usize) -> Vec<u32> {
    quantise(&vec![1.0; k])
}

/// exp(l − max l) for each logit: the softmax up to its normaliser, which [`quantise`] divides out.
fn softmax_weights(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    logits.iter().map(|&v| libm::exp(v as f64 - max)).collect()
}

/// σ(z) = 1 / (1 + e^−z), with `libm`.
fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + libm::exp(-z))
}

/// The discretized logistic mixture's bin masses for θ = M logits, M means, M log-scales (the layout of
/// `logistic_mixture::log_prob_gray`): bin x spans the edges (2x ± 1)/(L − 1) − 1, the edge bins reach to
/// ±∞. Masses are CDF differences, taken on the upper tail where both CDFs are above ½ so that small masses
/// keep their digits. (The likelihood's mid-bin fallback for masses below 1e-5 is not used: this is the
/// exact mass, and [`quantise`] gives every bin at least one count.)
fn mixture_masses(theta: &[f32], n_mix: usize, num_bins: usize) -> Vec<f64> {
    let weights = softmax_weights(&theta[..n_mix]);
    let total: f64 = weights.iter().sum();
    let h = 1.0 / (num_bins - 1) as f64;
    let mut masses = vec![0f64; num_bins];
    for (m, &w) in weights.iter().enumerate() {
        let mean = theta[n_mix + m] as f64;
        let inv_scale = libm::exp(-(theta[2 * n_mix + m] as f64).max(LOG_SCALE_MIN));
        // z of the upper edge of bin x; the lower edge of bin x is the upper edge of bin x − 1.
        let z = |x: usize| ((2 * x + 1) as f64 * h - 1.0 - mean) * inv_scale;
        let mut lo = f64::NEG_INFINITY;
        for (x, mass) in masses.iter_mut().enumerate() {
            let up = if x + 1 == num_bins { f64::INFINITY } else { z(x) };
            let p = if lo > 0.0 {
                sigmoid(-lo) - sigmoid(-up)
            } else {
                sigmoid(up) - sigmoid(lo)
            };
            *mass += w / total * p;
            lo = up;
        }
    }
    masses
}

/// Non-negative weights (any scale) → integer frequencies: each value gets 1 plus its share of the
/// 2^P − K other counts, rounded down, and what rounding left over goes to the largest (the first of equals).
/// Non-finite or negative weights count as 0; if nothing is left, the frequencies are uniform.
pub fn quantise(weights: &[f64]) -> Vec<u32> {
    let k = weights.len();
    let total = 1u64 << PRECISION;
    assert!(k >= 1 && (k as u64) < total, "quantise: {k} values");
    let clean: Vec<f64> = weights
        .iter()
        .map(|&w| if w.is_finite() && w > 0.0 { w } else { 0.0 })
        .collect();
    let sum: f64 = clean.iter().sum();
    let spare = total - k as u64;
    let mut freq: Vec<u64> = if sum > 0.0 && sum.is_finite() {
        clean
            .iter()
            .map(|&w| 1 + ((w / sum) * spare as f64).floor().min(spare as f64) as u64)
            .collect()
    } else {
        vec![1; k]
    };
    let largest = (0..k).fold(0, |best, i| if clean[i] > clean[best] { i } else { best });
    let assigned: u64 = freq.iter().sum();
    if assigned <= total {
        freq[largest] += total - assigned;
    } else {
        // Rounding up cannot happen with floor, but the sum of shares may exceed 1 by an ulp: take the excess
        // from the largest counts, in order.
        let mut excess = assigned - total;
        while excess > 0 {
            let i = (0..k).fold(0, |best, i| if freq[i] > freq[best] { i } else { best });
            let take = excess.min(freq[i] - 1);
            freq[i] -= take;
            excess -= take;
        }
    }
    freq.into_iter().map(|f| f as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(freq: &[u32]) {
        assert!(freq.iter().all(|&f| f >= 1), "{freq:?}");
        assert_eq!(freq.iter().map(|&f| f as u64).sum::<u64>(), 1 << PRECISION);
    }

    #[test]
    fn quantised_frequencies_are_positive_and_sum_to_the_precision() {
        check(&quantise(&[0.3, 0.0, 0.4, 0.1, 0.2]));
        check(&quantise(&[1.0, f64::NAN, f64::INFINITY, -1.0]));
        check(&quantise(&[0.0; 7]));
        check(&quantise(&[1e300, 1e300, 1e-300]));
        check(&uniform(256));
        let f = quantise(&[1.0, 3.0]);
        assert!((f[1] as f64 / f[0] as f64 - 3.0).abs() < 1e-5, "{f:?}");
    }

    /// The mixture's masses sum to one and agree with the likelihood's own bin probabilities (up to its mid-bin
    /// approximation of a component's masses below 1e-5).
    #[test]
    fn mixture_masses_match_the_likelihood() {
        let theta = [0.3f32, -1.0, 0.2, -0.5, 0.4, 0.9, -2.0, -3.0, -7.5];
        let ours = mixture_masses(&theta, 3, 17);
        let total: f64 = ours.iter().sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        let theirs = crate::likelihood::logistic_mixture::bin_probs_gray(&theta, 3, 17).unwrap();
        for (a, b) in ours.iter().zip(&theirs) {
            assert!(
                (a - b).abs() < 1e-5, // the likelihood's mid-bin fallback moves masses below 1e-5
                "{a} vs {b}"
            );
        }
        check(&frequencies(
            &Likelihood::LogisticMixture {
                num_values: 17,
                n_mix: 3,
            },
            &theta,
        ));
    }
}
