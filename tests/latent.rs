//! The priors of a VAE (`armory::latent`) and the continuous logistic mixture they rest on
//! (`armory::likelihood::continuous`): densities that integrate to one by quadrature, causality of the ARM
//! prior, f64 finite-difference gradients, and sampling against the density.

use armory::latent::{ArmPrior, Prior, PriorConfig, StandardNormal};
use armory::likelihood::continuous;
use armory::params::ParamStore;
use armory::{Error, Result};
use candle_core::{DType, Device, IndexOp, Tensor, Var};
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

/// Sets every parameter of `store` to uniform values in ±`scale` (seeded): weights far from the
/// initialisation, so that the functions tested are not nearly constant.
fn randomise(store: &ParamStore, scale: f64, seed: u64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (_, var) in store.vars() {
        let v: Vec<f64> = (0..var.elem_count()).map(|_| rng.random_range(-scale..scale)).collect();
        var.set(&Tensor::from_vec(v, var.shape(), &CPU)?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// The gradient of the scalar `f()` w.r.t. every parameter of `store` (f64) against central finite
/// differences (step 1e-6, tolerance 1e-6·(1 + |fd|)), at every entry of small tensors and about 16 of
/// large ones; `name` labels a failure. Returns the largest |gradient| seen per parameter tensor.
fn check_param_gradients(name: &str, store: &ParamStore, f: impl Fn() -> Result<Tensor>) -> Result<Vec<(String, f64)>> {
    let grads = f()?.backward()?;
    let eval = || -> Result<f64> { Ok(f()?.to_scalar::<f64>()?) };
    let mut largest = vec![];
    for (pname, var) in store.vars() {
        let g = grads
            .get(&var)
            .unwrap_or_else(|| panic!("{name}: no gradient for {pname}"))
            .flatten_all()?
            .to_vec1::<f64>()?;
        let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        let set = |v: Vec<f64>| var.set(&Tensor::from_vec(v, var.shape(), &CPU)?);
        let stride = if base.len() <= 64 { 1 } else { 1 + base.len() / 16 };
        for i in (0..base.len()).step_by(stride) {
            let mut v = base.clone();
            v[i] += 1e-6;
            set(v.clone())?;
            let up = eval()?;
            v[i] -= 2e-6;
            set(v)?;
            let down = eval()?;
            set(base.clone())?;
            let fd = (up - down) / 2e-6;
            assert!(
                (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                "{name} {pname}[{i}]: fd {fd} vs backprop {}",
                g[i]
            );
        }
        largest.push((pname, g.iter().fold(0f64, |a, b| a.max(b.abs()))));
    }
    Ok(largest)
}

/// A tiny ARM prior in f64 over `latents` dimensions (5 channels, 3 layers of kernel 2, 2 components),
/// its weights randomised to ±`scale`.
fn tiny_arm_prior(latents: usize, scale: f64, seed: u64) -> Result<(ParamStore, ArmPrior)> {
    let store = ParamStore::new(seed);
    let prior = ArmPrior::new(latents, 5, 3, 2, 2, store.var_builder(DType::F64, &CPU))?;
    randomise(&store, scale, seed + 1)?;
    Ok((store, prior))
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

// ---------------------------------------------------------------------------------------------------------
// The priors

/// Perturbing z_j leaves θ_l for l ≤ j exactly as it was, and moves θ_{j+1}.
#[test]
fn arm_prior_is_causal_over_the_latent_dimensions() -> Result<()> {
    let l = 7;
    let (_, prior) = tiny_arm_prior(l, 1.0, 4)?;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let z: Vec<f64> = (0..2 * l).map(|_| rng.random_range(-2.0..2.0)).collect();
    let zt = Tensor::from_slice(&z, (2, l), &CPU)?;
    let theta: Vec<Vec<Vec<f64>>> = prior.conditionals(&zt)?.to_vec3()?;
    for j in 0..l {
        let mut moved = z.clone();
        moved[j] += 0.8; // example 0 only
        let after: Vec<Vec<Vec<f64>>> = prior
            .conditionals(&Tensor::from_slice(&moved, (2, l), &CPU)?)?
            .to_vec3()?;
        assert_eq!(after[1], theta[1], "example 1 changed with example 0's z_{j}");
        for i in 0..=j {
            assert_eq!(after[0][i], theta[0][i], "θ_{i} changed with z_{j}");
        }
        if j + 1 < l {
            assert_ne!(after[0][j + 1], theta[0][j + 1], "θ_{} does not see z_{j}", j + 1);
        }
    }
    // log p(z) is the sum of the conditionals' log densities.
    let lp = prior.log_density(&zt)?.to_vec1::<f64>()?;
    let sum = continuous::log_density(&prior.conditionals(&zt)?, &zt)?.to_vec1::<f64>()?;
    assert_eq!(lp, sum);
    // The default ARM prior sees all previous dimensions of the default 16 latents.
    assert_eq!(PriorConfig::arm().receptive_field(16), 16);
    Ok(())
}

/// For each l, ∫ p(z_l | z_<l) dz_l = 1, the density read through the whole network (z_l varies on the
/// grid, the other dimensions stay): so p(z) = Π_l p(z_l | z_<l) is normalised.
#[test]
fn arm_prior_conditionals_integrate_to_one() -> Result<()> {
    let l = 4;
    let (_, prior) = tiny_arm_prior(l, 0.8, 6)?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for _ in 0..2 {
        let z: Vec<f64> = (0..l).map(|_| rng.random_range(-2.0..2.0)).collect();
        let theta: Vec<Vec<f64>> = prior
            .conditionals(&Tensor::from_slice(&z, (1, l), &CPU)?)?
            .squeeze(0)?
            .to_vec2()?;
        for (d, theta_d) in theta.iter().enumerate() {
            let zs = grid_for(theta_d, 1.0);
            let rows: Vec<f64> = zs
                .iter()
                .flat_map(|&v| z.iter().enumerate().map(move |(i, &zi)| if i == d { v } else { zi }))
                .collect();
            let rows = Tensor::from_vec(rows, (zs.len(), l), &CPU)?;
            let dens = continuous::log_density_dims(&prior.conditionals(&rows)?, &rows)?
                .i((.., d))?
                .exp()?
                .to_vec1::<f64>()?;
            let total = trapezoid(&zs, &dens);
            assert!(
                (total - 1.0).abs() < 1e-7,
                "dimension {d}, θ {theta_d:?}: ∫ p = {total}"
            );
        }
    }
    Ok(())
}

#[test]
fn arm_prior_gradients_match_finite_differences() -> Result<()> {
    let l = 5;
    let (store, prior) = tiny_arm_prior(l, 1.0, 8)?;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let z: Vec<f64> = (0..3 * l).map(|_| rng.random_range(-2.0..2.0)).collect();
    let zv = Var::from_vec(z.clone(), (3, l), &CPU)?;
    let f = |z: &Tensor| -> Result<Tensor> {
        let w = Tensor::new(&[1.0f64, -0.5, 0.3], &CPU)?;
        Ok((prior.log_density(z)? * w)?.sum_all()?)
    };
    let largest = check_param_gradients("arm prior", &store, || f(zv.as_tensor()))?;
    assert_eq!(largest.len(), 6, "{largest:?}"); // 3 layers × (weight, bias)
    assert!(largest.iter().all(|(_, g)| *g > 0.0), "{largest:?}");
    // And w.r.t. z, which the ELBO differentiates through.
    let g = f(zv.as_tensor())?
        .backward()?
        .get(&zv)
        .expect("gradient")
        .flatten_all()?
        .to_vec1::<f64>()?;
    for i in 0..z.len() {
        let eval = |delta: f64| -> Result<f64> {
            let mut v = z.clone();
            v[i] += delta;
            Ok(f(&Tensor::from_vec(v, (3, l), &CPU)?)?.to_scalar::<f64>()?)
        };
        let fd = (eval(1e-6)? - eval(-1e-6)?) / 2e-6;
        assert!(
            (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
            "z[{i}]: fd {fd} vs {}",
            g[i]
        );
    }
    Ok(())
}

/// The probability integral transform: if z ~ p, then u_l = F(z_l | θ_l(z_<l)) is uniform on (0, 1) for
/// every l, independently; a sampler that drew a dimension from the wrong θ would fail it. Sampling is
/// deterministic given the seed.
#[test]
fn arm_prior_samples_follow_its_conditionals() -> Result<()> {
    let l = 4;
    let (_, prior) = tiny_arm_prior(l, 0.8, 10)?;
    let n = 3000;
    let z = prior.sample(n, 11)?;
    assert_eq!(z.dims(), [n, l]);
    assert_eq!(z.to_vec2::<f64>()?, prior.sample(n, 11)?.to_vec2::<f64>()?);
    assert_ne!(z.to_vec2::<f64>()?, prior.sample(n, 12)?.to_vec2::<f64>()?);
    let theta: Vec<Vec<Vec<f64>>> = prior.conditionals(&z)?.to_vec3()?;
    let zs: Vec<Vec<f64>> = z.to_vec2()?;
    for d in 0..l {
        let mut u: Vec<f64> = (0..n).map(|b| mixture_cdf(&theta[b][d], zs[b][d])).collect();
        u.sort_by(f64::total_cmp);
        let ks = u
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                (c - i as f64 / n as f64)
                    .abs()
                    .max((c - (i + 1) as f64 / n as f64).abs())
            })
            .fold(0f64, f64::max);
        // The 0.1% critical value of the Kolmogorov statistic is 1.95/√n (0.036 for n = 3000).
        assert!(ks < 1.95 / (n as f64).sqrt(), "dimension {d}: Kolmogorov distance {ks}");
    }
    Ok(())
}

#[test]
fn standard_normal_prior_density_and_samples() -> Result<()> {
    let prior = StandardNormal::new(3, DType::F64, &CPU);
    let z = Tensor::new(&[[0f64, 1.0, -2.0]], &CPU)?;
    let want = -0.5 * 5.0 - 1.5 * (2.0 * std::f64::consts::PI).ln();
    assert!((prior.log_density(&z)?.to_vec1::<f64>()?[0] - want).abs() < 1e-12);
    let s = prior.sample(20_000, 1)?;
    let mean = s.mean_all()?.to_scalar::<f64>()?;
    let var = s.sqr()?.mean_all()?.to_scalar::<f64>()? - mean * mean;
    assert!(
        mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
        "mean {mean}, variance {var}"
    );
    assert!(matches!(
        prior.log_density(&Tensor::zeros((1, 4), DType::F64, &CPU)?),
        Err(Error::Config(_))
    ));
    Ok(())
}
