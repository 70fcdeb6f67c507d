//! The continuous logistic mixture (`armory::likelihood::continuous`), the density of a VAE's latents under
//! an ARM prior: hand-computed values, densities that integrate to one by quadrature, f64 finite-difference
//! gradients, and sampling against the density.

use armory::likelihood::continuous;
use armory::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CPU: Device = Device::Cpu;

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// Random θ for one dimension: M logits, M means, M log-scales (in the given ranges).
fn random_theta(rng: &mut ChaCha8Rng, n_mix: usize, log_scales: std::ops::Range<f64>) -> Vec<f64> {
    let mut p = Vec::with_capacity(3 * n_mix);
    p.extend((0..n_mix).map(|_| rng.random_range(-3.0..3.0)));
    p.extend((0..n_mix).map(|_| rng.random_range(-3.0..3.0)));
    p.extend((0..n_mix).map(|_| rng.random_range(log_scales.clone())));
    p
}

/// A uniform grid fine enough for the trapezoid rule on a mixture θ (a tenth of the narrowest scale) and
/// wide enough to hold all but e⁻⁴⁰ of its mass; optionally finer still (`max_step`).
fn grid_for(theta: &[f64], max_step: f64) -> Vec<f64> {
    let m = theta.len() / 3;
    let scales: Vec<f64> = theta[2 * m..].iter().map(|l| l.max(-7.0).exp()).collect();
    let (s_min, s_max) = scales.iter().fold((f64::MAX, 0f64), |(a, b), &s| (a.min(s), b.max(s)));
    let (mu_min, mu_max) = theta[m..2 * m]
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let (lo, hi) = (mu_min - 40.0 * s_max, mu_max + 40.0 * s_max);
    let step = (s_min / 10.0).min(max_step);
    let n = ((hi - lo) / step).ceil() as usize + 1;
    assert!(n < 4_000_000, "grid of {n} points for θ {theta:?}");
    (0..n).map(|i| lo + i as f64 * step).collect()
}

/// The trapezoid rule for the values `f` at the uniformly spaced `points`.
fn trapezoid(points: &[f64], f: &[f64]) -> f64 {
    let h = points[1] - points[0];
    h * (f.iter().sum::<f64>() - 0.5 * (f[0] + f[f.len() - 1]))
}

/// p(z | θ) at each of `zs` for one dimension's θ, through `continuous::log_density_dims`.
fn mixture_density(theta: &[f64], zs: &[f64]) -> Result<Vec<f64>> {
    let n = zs.len();
    let t = Tensor::from_slice(theta, (1, 1, theta.len()), &CPU)?
        .broadcast_as((n, 1, theta.len()))?
        .contiguous()?;
    let z = Tensor::from_slice(zs, (n, 1), &CPU)?;
    Ok(continuous::log_density_dims(&t, &z)?
        .exp()?
        .flatten_all()?
        .to_vec1::<f64>()?)
}

/// The mixture's CDF at z: Σ_m π_m·σ((z − μ_m)/s_m).
fn mixture_cdf(theta: &[f64], z: f64) -> f64 {
    let m = theta.len() / 3;
    let max = theta[..m].iter().fold(f64::MIN, |a, &b| a.max(b));
    let w: Vec<f64> = theta[..m].iter().map(|l| (l - max).exp()).collect();
    let total: f64 = w.iter().sum();
    (0..m)
        .map(|k| {
            let s = theta[2 * m + k].max(-7.0).exp();
            w[k] / total / (1.0 + (-(z - theta[m + k]) / s).exp())
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------------------
// The continuous logistic mixture

#[test]
fn logistic_density_matches_hand_computed_values() -> Result<()> {
    // One component at μ = 0, s = 1: p(0) = ¼, p(2) = σ(2)σ(−2). Two equal components at ±1, s = e^0.5.
    let sig = |u: f64| 1.0 / (1.0 + (-u).exp());
    let theta = Tensor::new(&[[[0.7f64, 0.0, 0.0]], [[0.7, 0.0, 0.0]]], &CPU)?;
    let z = Tensor::new(&[[0f64], [2.0]], &CPU)?;
    let lp = continuous::log_density(&theta, &z)?.to_vec1::<f64>()?;
    for (l, want) in lp.iter().zip([0.25, sig(2.0) * sig(-2.0)]) {
        assert!((l - want.ln()).abs() < 1e-12, "{l} vs {}", want.ln());
    }
    let s = 0.5f64.exp();
    let theta = Tensor::new(&[[[1.0f64, 1.0, -1.0, 1.0, 0.5, 0.5]]], &CPU)?;
    let lp = continuous::log_density(&theta, &Tensor::new(&[[0.3f64]], &CPU)?)?.to_vec1::<f64>()?[0];
    let pdf = |mu: f64| sig((0.3 - mu) / s) * sig(-(0.3 - mu) / s) / s;
    let want = (0.5 * pdf(-1.0) + 0.5 * pdf(1.0)).ln();
    assert!((lp - want).abs() < 1e-12, "{lp} vs {want}");
    // A log-scale below −7 acts as −7: the peak density is 1/(4·e⁻⁷), not 1/(4·e⁻⁹).
    let theta = Tensor::new(&[[[0f64, 0.0, -9.0]]], &CPU)?;
    let lp = continuous::log_density(&theta, &Tensor::new(&[[0f64]], &CPU)?)?.to_vec1::<f64>()?[0];
    assert!((lp - (7.0 - 4f64.ln())).abs() < 1e-12, "{lp}");
    // The sum over dimensions: two dimensions of the first θ.
    let theta = Tensor::new(&[[[0.7f64, 0.0, 0.0], [0.7, 0.0, 0.0]]], &CPU)?;
    let lp = continuous::log_density(&theta, &Tensor::new(&[[0f64, 2.0]], &CPU)?)?.to_vec1::<f64>()?[0];
    assert!((lp - (0.25 * sig(2.0) * sig(-2.0)).ln()).abs() < 1e-12);
    Ok(())
}

#[test]
fn logistic_densities_integrate_to_one() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for trial in 0..12 {
        let n_mix = 1 + trial % 4;
        let theta = random_theta(&mut rng, n_mix, -3.0..1.0);
        let zs = grid_for(&theta, 1.0);
        let total = trapezoid(&zs, &mixture_density(&theta, &zs)?);
        assert!((total - 1.0).abs() < 1e-7, "θ {theta:?}: ∫ p = {total}");
    }
    // A component below the scale floor integrates to one at the floor's scale (its grid is built for e⁻⁷).
    let theta = [0.3, -0.2, 1.5, -12.0, 0.5, -1.0];
    let zs = grid_for(&theta, 1.0);
    let total = trapezoid(&zs, &mixture_density(&theta, &zs)?);
    assert!((total - 1.0).abs() < 1e-7, "∫ p = {total}");
    Ok(())
}

#[test]
fn logistic_density_gradient_matches_finite_differences() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (b, d, n_mix) = (3, 4, 3);
    let mut theta: Vec<f64> = (0..b * d)
        .flat_map(|_| random_theta(&mut rng, n_mix, -3.0..1.5))
        .collect();
    theta[2 * n_mix] = -9.0; // one log-scale under the floor: gradient 0 there, by both methods
    let z: Vec<f64> = (0..b * d).map(|_| rng.random_range(-6.0..6.0)).collect();
    let f = |theta: &Tensor, z: &Tensor| -> Result<Tensor> {
        // Weights per example, so that the check sees each [B] entry, not only their sum.
        let w = Tensor::new(&[1.0f64, -0.7, 0.4], &CPU)?;
        Ok((continuous::log_density(theta, z)? * w)?.sum_all()?)
    };
    let (tv, zv) = (
        Var::from_vec(theta.clone(), (b, d, 3 * n_mix), &CPU)?,
        Var::from_vec(z.clone(), (b, d), &CPU)?,
    );
    let grads = f(tv.as_tensor(), zv.as_tensor())?.backward()?;
    for (which, var, base) in [("θ", &tv, &theta), ("z", &zv, &z)] {
        let g = grads.get(var).expect("gradient").flatten_all()?.to_vec1::<f64>()?;
        for i in 0..base.len() {
            let eval = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                let t = Tensor::from_vec(v, var.shape(), &CPU)?;
                let out = if which == "θ" {
                    f(&t, zv.as_tensor())?
                } else {
                    f(tv.as_tensor(), &t)?
                };
                Ok(out.to_scalar::<f64>()?)
            };
            let fd = (eval(1e-6)? - eval(-1e-6)?) / 2e-6;
            assert!(
                (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                "{which}[{i}]: fd {fd} vs {}",
                g[i]
            );
        }
    }
    Ok(())
}

#[test]
fn logistic_sampling_follows_the_density() -> Result<()> {
    // A Fibonacci lattice (N = F₂₁ points (i/N, i·F₂₀/N mod 1)) covers the unit square far more evenly than
    // random noise, so the empirical CDF matches to O(log N / N).
    let (n, step) = (17_711usize, 10_946usize);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for trial in 0..6 {
        let n_mix = 1 + trial % 3;
        let theta = random_theta(&mut rng, n_mix, -2.0..1.0);
        let row: Vec<f32> = theta.iter().map(|&v| v as f32).collect();
        let theta: Vec<f64> = row.iter().map(|&v| v as f64).collect(); // what the sampler sees
        let mut draws: Vec<f64> = (0..n)
            .map(|i| {
                let u_component = (i as f64 + 0.5) / n as f64;
                let u_value = ((i * step) % n) as f64 / n as f64 + 0.5 / n as f64;
                continuous::sample(&row, u_component, u_value) as f64
            })
            .collect();
        draws.sort_by(f64::total_cmp);
        // Kolmogorov distance between the draws and the mixture's CDF.
        let ks = draws
            .iter()
            .enumerate()
            .map(|(i, &z)| {
                let c = mixture_cdf(&theta, z);
                (c - i as f64 / n as f64)
                    .abs()
                    .max((c - (i + 1) as f64 / n as f64).abs())
            })
            .fold(0f64, f64::max);
        assert!(ks < 2e-3, "θ {theta:?}: Kolmogorov distance {ks}");
        // The mean: Σ π_m μ_m (a logistic is symmetric about its mean).
        let m = n_mix;
        let max = theta[..m].iter().fold(f64::MIN, |a, &b| a.max(b));
        let w: Vec<f64> = theta[..m].iter().map(|l| (l - max).exp()).collect();
        let mean: f64 = (0..m).map(|k| w[k] * theta[m + k]).sum::<f64>() / w.iter().sum::<f64>();
        let got = draws.iter().sum::<f64>() / n as f64;
        assert!((got - mean).abs() < 0.02, "θ {theta:?}: mean {got} vs {mean}");
    }
    // Noise at its extremes gives finite values.
    for (uc, uv) in [(0.0, 0.0), (0.999_999, 1.0), (0.5, 1e-300)] {
        assert!(continuous::sample(&[0.0, 1.0, 0.5], uc, uv).is_finite());
    }
    Ok(())
}

#[test]
fn logistic_density_refuses_bad_shapes() -> Result<()> {
    let theta = Tensor::zeros((2, 3, 6), DType::F64, &CPU)?;
    assert!(continuous::log_density(&theta, &Tensor::zeros((2, 3), DType::F64, &CPU)?).is_ok());
    for z in [
        Tensor::zeros((2, 4), DType::F64, &CPU)?,
        Tensor::zeros((2, 3), DType::F32, &CPU)?,
        Tensor::zeros(6, DType::F64, &CPU)?,
    ] {
        assert!(
            matches!(continuous::log_density(&theta, &z), Err(Error::Config(_))),
            "{z:?}"
        );
    }
    let theta = Tensor::zeros((2, 3, 5), DType::F64, &CPU)?;
    let z = Tensor::zeros((2, 3), DType::F64, &CPU)?;
    assert!(matches!(continuous::log_density(&theta, &z), Err(Error::Config(_))));
    Ok(())
}
