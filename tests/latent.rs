//! The VAE and its priors (`armory::latent`) and the continuous logistic mixture they rest on
//! (`armory::likelihood::continuous`): densities that integrate to one by quadrature, causality of the ARM
//! prior, f64 finite-difference gradients (through the reparameterisation too), sampling against the density,
//! the importance-weighted estimator against log p(x) integrated numerically, and a training smoke test.

use armory::latent::{ArmPrior, Prior, PriorConfig, StandardNormal, Vae, VaeConfig, ACTIVE_UNIT_THRESHOLD};
use armory::likelihood::continuous;
use armory::nn::Mode;
use armory::params::ParamStore;
use armory::train::optim::{Optimizer, OptimizerKind};
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
        // No gradient: the parameter does not reach the objective (a gated decoder's last vertical stack), and
        // the finite differences must say 0 too.
        let g = match grads.get(&var) {
            Some(g) => g.flatten_all()?.to_vec1::<f64>()?,
            None => vec![0.0; var.elem_count()],
        };
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

fn tiny_arm() -> PriorConfig {
    PriorConfig::Arm {
        hidden: 5,
        layers: 2,
        kernel: 2,
        n_mix: 2,
    }
}

/// `b` examples of `d` values drawn uniformly from 0..k.
fn random_x(b: usize, d: usize, k: usize, seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<u32> = (0..b * d).map(|_| rng.random_range(0..k as u32)).collect();
    Ok(Tensor::from_vec(v, (b, d), &CPU)?)
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
            matches!(continuous::log_density(&theta, &z), Err(Error::Invalid(_))),
            "{z:?}"
        );
    }
    let theta = Tensor::zeros((2, 3, 5), DType::F64, &CPU)?;
    let z = Tensor::zeros((2, 3), DType::F64, &CPU)?;
    assert!(matches!(continuous::log_density(&theta, &z), Err(Error::Invalid(_))));
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
    // The default ARM prior sees all earlier dimensions of the default 16 latents (15 for the last one); the
    // standard normal none.
    assert_eq!(PriorConfig::arm().receptive_field(16), 15);
    assert_eq!(PriorConfig::StandardNormal.receptive_field(16), 0);
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
        Err(Error::Invalid(_))
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// The VAE and its estimators

/// A VAE with one latent over two values of three levels (9 possible x), weights randomised so that
/// p(x|z) depends strongly on z and q(z|x) is far from the posterior: a loose ELBO.
fn one_latent_vae(prior: PriorConfig, scale: f64, seed: u64) -> Result<Vae> {
    let cfg = VaeConfig {
        latents: 1,
        hidden: 8,
        prior,
        ..VaeConfig::default()
    };
    let vae = Vae::new(&cfg, 2, 3, seed, DType::F64, &CPU)?;
    randomise(vae.params(), scale, seed + 100)?;
    if let PriorConfig::Arm { layers, n_mix, .. } = cfg.prior {
        // The prior's logistic tails are heavier than q's Gaussian ones: p(z)²/q(z) grows without bound,
        // and the importance weights have infinite variance (IWAE then converges very slowly). Narrower
        // components (log-scales lowered by 1.8) push that growth ~30σ out, where q never draws.
        let (_, bias) = vae
            .params()
            .vars()
            .into_iter()
            .find(|(n, _)| *n == format!("prior.net.{}.conv1d.bias", 2 * (layers - 1)))
            .expect("the prior's last bias");
        let mut v = bias.as_tensor().to_vec1::<f64>()?;
        v[2 * n_mix..].iter_mut().for_each(|b| *b -= 1.8);
        bias.set(&Tensor::new(v, &CPU)?)?;
    }
    Ok(vae)
}

/// All 9 values of x, `[9, 2]`.
fn all_x() -> Result<Tensor> {
    let v: Vec<u32> = (0..9u32).flat_map(|i| [i / 3, i % 3]).collect();
    Ok(Tensor::from_vec(v, (9, 2), &CPU)?)
}

/// log p(x) = log ∫ p(x|z)·p(z) dz for each of the 9 x, by the trapezoid rule on a fine grid over z.
fn log_px_by_quadrature(vae: &Vae) -> Result<Vec<f64>> {
    let zs = match vae.config().prior {
        PriorConfig::StandardNormal => (0..48_001).map(|i| -12.0 + i as f64 * 5e-4).collect(),
        PriorConfig::Arm { .. } => {
            // θ_0 sees no dimension: it is the same for every z, and decides the grid.
            let zero = Tensor::zeros((1, 1), DType::F64, &CPU)?;
            let theta: Vec<f64> = arm_prior_of(vae)?.conditionals(&zero)?.flatten_all()?.to_vec1()?;
            grid_for(&theta, 1e-3)
        }
    };
    let n = zs.len();
    let z = Tensor::from_slice(&zs, (n, 1), &CPU)?;
    let log_prior = vae.prior().log_density(&z)?;
    let mut out = vec![];
    for x in all_x()?.to_vec2::<u32>()? {
        let xs = Tensor::new(&[[x[0], x[1]]], &CPU)?.repeat((n, 1))?;
        let f = (vae.decoder().log_prob_context(&xs, None, Some(&z), Mode::Eval)? + &log_prior)?
            .exp()?
            .to_vec1::<f64>()?;
        out.push(trapezoid(&zs, &f).ln());
    }
    Ok(out)
}

/// The VAE's ARM prior rebuilt on its own parameter store from the VAE's `prior.*` tensors (the `Prior`
/// trait object does not expose θ).
fn arm_prior_of(vae: &Vae) -> Result<ArmPrior> {
    let PriorConfig::Arm {
        hidden,
        layers,
        kernel,
        n_mix,
    } = vae.config().prior
    else {
        unreachable!()
    };
    let store = ParamStore::new(0);
    let arm = ArmPrior::new(
        vae.latents(),
        hidden,
        layers,
        kernel,
        n_mix,
        store.var_builder(DType::F64, &CPU),
    )?;
    let src = vae.params().tensors()?;
    for (name, var) in store.vars() {
        var.set(&src[&format!("prior.{name}")])?;
    }
    Ok(arm)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// With K = 20,000 samples the IWAE estimate is log p(x) (integrated numerically) to within its Monte-Carlo
/// error; the quadrature itself is checked by Σ_x p(x) = 1.
#[test]
fn iwae_converges_to_log_px_by_quadrature() -> Result<()> {
    // The tolerances are about 4 Monte-Carlo standard deviations of the estimate (seen over seeds): the
    // narrow ARM prior is far from q, so its weights vary more.
    for (prior, tol) in [(PriorConfig::StandardNormal, 0.005), (tiny_arm(), 0.03)] {
        let vae = one_latent_vae(prior.clone(), 0.6, 20)?;
        let exact = log_px_by_quadrature(&vae)?;
        let total: f64 = exact.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{prior:?}: Σ_x p(x) = {total}");
        let est = vae.iwae(&all_x()?, 20_000, 21, 2_000)?.to_vec1::<f64>()?;
        for (i, (e, x)) in est.iter().zip(&exact).enumerate() {
            assert!((e - x).abs() < tol, "{prior:?}, x #{i}: IWAE {e} vs log p(x) {x}");
        }
    }
    Ok(())
}

/// On average over seeds, ELBO ≤ IWAE_10 ≤ IWAE_100 ≤ log p(x) (the bound tightens with K), the gaps
/// clearly apart; and IWAE_1 with a seed is the ELBO of that seed when the KL is estimated (ARM prior).
#[test]
fn iwae_is_a_bound_that_tightens_with_k() -> Result<()> {
    let x = all_x()?;
    for prior in [PriorConfig::StandardNormal, tiny_arm()] {
        let vae = one_latent_vae(prior.clone(), 1.0, 30)?;
        let exact: f64 = log_px_by_quadrature(&vae)?.iter().sum();
        let seeds = 0..300u64;
        let avg = |k: usize| -> Result<f64> {
            let sums = seeds
                .clone()
                .map(|s| Ok(vae.iwae(&x, k, s, 64)?.sum_all()?.to_scalar::<f64>()?))
                .collect::<Result<Vec<_>>>()?;
            Ok(mean(&sums))
        };
        let elbo = mean(
            &seeds
                .clone()
                .map(|s| {
                    let (rec, kl) = vae.elbo_terms(&x, Mode::Eval, s)?;
                    Ok((rec - kl)?.sum_all()?.to_scalar::<f64>()?)
                })
                .collect::<Result<Vec<_>>>()?,
        );
        let (k1, k10, k100) = (avg(1)?, avg(10)?, avg(100)?);
        eprintln!("{prior:?}: elbo {elbo}, k=1 {k1}, k=10 {k10}, k=100 {k100}, log p(x) {exact}");
        assert!(k1 < k10 - 0.05 && k10 < k100 - 0.05, "{prior:?}: {k1}, {k10}, {k100}");
        assert!(k100 < exact + 0.01, "{prior:?}: IWAE_100 {k100} above log p(x) {exact}");
        // −ELBO ≥ −IWAE_K for K > 1.
        assert!(elbo < k10 - 0.05, "{prior:?}: ELBO {elbo} vs IWAE_10 {k10}");
        // The ELBO and IWAE_1 estimate the same number: both with the same ε (stream 0 of the seed).
        assert!((elbo - k1).abs() < 0.15, "{prior:?}: ELBO {elbo} vs IWAE_1 {k1}");
        if matches!(prior, PriorConfig::Arm { .. }) {
            for s in 0..5 {
                let (rec, kl) = vae.elbo_terms(&x, Mode::Eval, s)?;
                let elbo = (rec - kl)?.to_vec1::<f64>()?;
                let one = vae.iwae(&x, 1, s, 1)?.to_vec1::<f64>()?;
                for (a, b) in elbo.iter().zip(&one) {
                    assert!((a - b).abs() < 1e-10, "seed {s}: ELBO {a} vs IWAE_1 {b}");
                }
            }
        }
    }
    Ok(())
}

/// The estimate does not depend on how the samples are chunked, and is the same for the same seed.
#[test]
fn iwae_is_deterministic_and_independent_of_the_chunk() -> Result<()> {
    let vae = Vae::new(
        &VaeConfig {
            latents: 3,
            hidden: 6,
            prior: tiny_arm(),
            ..VaeConfig::default()
        },
        5,
        4,
        1,
        DType::F64,
        &CPU,
    )?;
    let x = random_x(6, 5, 4, 2)?;
    let whole = vae.iwae(&x, 37, 3, 37)?.to_vec1::<f64>()?;
    for chunk in [1, 5, 36, 100] {
        let got = vae.iwae(&x, 37, 3, chunk)?.to_vec1::<f64>()?;
        for (a, b) in got.iter().zip(&whole) {
            assert!((a - b).abs() < 1e-10, "chunk {chunk}: {a} vs {b}");
        }
    }
    assert_ne!(vae.iwae(&x, 37, 4, 37)?.to_vec1::<f64>()?, whole);
    assert!(matches!(vae.iwae(&x, 0, 3, 1), Err(Error::Invalid(_))));
    assert!(matches!(vae.iwae(&x, 3, 3, 0), Err(Error::Invalid(_))));
    Ok(())
}

/// The single-sample −ELBO with fixed noise is a smooth function of every parameter: backprop through the
/// reparameterisation (z = μ + σ·ε) agrees with finite differences, for the encoder's parameters too, under
/// both priors.
#[test]
fn elbo_gradients_through_the_reparameterisation_match_finite_differences() -> Result<()> {
    let x = random_x(4, 5, 3, 1)?;
    for prior in [PriorConfig::StandardNormal, tiny_arm()] {
        let cfg = VaeConfig {
            latents: 2,
            hidden: 4,
            prior: prior.clone(),
            ..VaeConfig::default()
        };
        let vae = Vae::new(&cfg, 5, 3, 2, DType::F64, &CPU)?;
        let largest = check_param_gradients(&format!("{prior:?}"), vae.params(), || vae.loss(&x, Mode::Eval, 5))?;
        let encoder: Vec<_> = largest.iter().filter(|(n, _)| n.starts_with("encoder.")).collect();
        assert_eq!(encoder.len(), 6, "{largest:?}");
        assert!(encoder.iter().all(|(_, g)| *g > 1e-4), "{largest:?}");
        let names: Vec<&str> = largest.iter().map(|(n, _)| n.as_str()).collect();
        let priors = names.iter().filter(|n| n.starts_with("prior.")).count();
        assert_eq!(
            priors,
            if matches!(prior, PriorConfig::Arm { .. }) { 4 } else { 0 },
            "{names:?}"
        );
    }
    Ok(())
}

/// The prior warm-up: for its epochs the encoder and decoder train against the standard normal (their
/// gradients are exactly those of the same VAE with a standard-normal prior) while the ARM prior, which does
/// not shape the codes, is fitted to them; after it the objective is the −ELBO with the ARM prior.
#[test]
fn prior_warmup_trains_against_the_standard_normal_and_fits_the_prior() -> Result<()> {
    let x = random_x(4, 5, 3, 1)?;
    let cfg = |prior, prior_warmup| VaeConfig {
        latents: 2,
        hidden: 4,
        prior,
        prior_warmup,
        ..VaeConfig::default()
    };
    let arm = Vae::new(&cfg(tiny_arm(), 3), 5, 3, 2, DType::F64, &CPU)?;
    let normal = Vae::new(&cfg(PriorConfig::StandardNormal, 0), 5, 3, 2, DType::F64, &CPU)?;
    // Gradients of the objective at `epoch`, by parameter name (the two VAEs draw their shared weights alike).
    let grads = |vae: &Vae, epoch: usize| -> Result<Vec<(String, Vec<f64>)>> {
        let g = vae.objective(&x, Mode::Eval, 5, epoch)?.backward()?;
        let mut out = vec![];
        for (name, var) in vae.params().vars() {
            let v = match g.get(var.as_tensor()) {
                Some(t) => t.flatten_all()?.to_vec1::<f64>()?,
                None => vec![0.0; var.elem_count()],
            };
            out.push((name, v));
        }
        Ok(out)
    };
    let shared = |g: &[(String, Vec<f64>)]| -> Vec<(String, Vec<f64>)> {
        let mut v: Vec<_> = g.iter().filter(|(n, _)| !n.starts_with("prior.")).cloned().collect();
        v.sort_by(|p, q| p.0.cmp(&q.0));
        v
    };
    let largest = |g: &[(String, Vec<f64>)], prefix: &str| {
        g.iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .flat_map(|(_, v)| v.iter().map(|x| x.abs()))
            .fold(0.0, f64::max)
    };
    let reference = grads(&normal, 2)?;
    let warm = grads(&arm, 2)?;
    let (a, b) = (shared(&warm), shared(&reference));
    assert!(a.len() >= 6 && a.len() == b.len(), "{a:?}");
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(
            va.iter().zip(vb).all(|(p, q)| (p - q).abs() < 1e-12),
            "{na}: {va:?} vs {vb:?}"
        );
    }
    assert!(
        largest(&warm, "prior.") > 1e-4,
        "the prior is fitted during the warm-up"
    );
    assert!(largest(&warm, "encoder.") > 1e-4);
    // After the warm-up: the −ELBO with the ARM prior, which shapes the encoder.
    let after = arm.objective(&x, Mode::Eval, 5, 3)?.to_scalar::<f64>()?;
    assert!((after - arm.loss(&x, Mode::Eval, 5)?.to_scalar::<f64>()?).abs() < 1e-12);
    let late = shared(&grads(&arm, 3)?);
    let differs = late
        .iter()
        .zip(&b)
        .any(|((_, p), (_, q))| p.iter().zip(q).any(|(p, q)| (p - q).abs() > 1e-6));
    assert!(differs, "after the warm-up the encoder and decoder see the ARM prior");
    // A standard-normal prior has nothing to fit; TOML reads the key.
    assert!(matches!(
        Vae::new(&cfg(PriorConfig::StandardNormal, 3), 5, 3, 2, DType::F64, &CPU).err(),
        Some(Error::Config(_))
    ));
    let parsed: VaeConfig = toml::from_str("prior_warmup = 7\n[prior]\nkind = \"arm\"\n").unwrap();
    assert_eq!(parsed.prior_warmup, 7);
    Ok(())
}

/// A few hundred Adam steps on the digits lower the −ELBO clearly, under both priors.
#[test]
fn training_on_digits_lowers_the_negative_elbo() -> Result<()> {
    let splits = armory::data::Splits::by_position(&armory::data::load("digits")?)?;
    let train = &splits.train;
    let (d, k) = (train.dim, train.num_values);
    let eval_x = train.batch(&(0..200).collect::<Vec<_>>(), &CPU)?;
    for prior in [PriorConfig::StandardNormal, PriorConfig::arm()] {
        let cfg = VaeConfig {
            hidden: 128,
            prior: prior.clone(),
            ..VaeConfig::default()
        };
        let vae = Vae::new(&cfg, d, k, 0, DType::F32, &CPU)?;
        // The mean over 5 noise seeds, so that the comparison is not one draw's luck.
        let neg_elbo = |vae: &Vae| -> Result<f64> {
            let v = (0..5)
                .map(|s| Ok(vae.loss(&eval_x, Mode::Eval, 1_000 + s)?.to_scalar::<f32>()? as f64))
                .collect::<Result<Vec<_>>>()?;
            Ok(mean(&v))
        };
        let before = neg_elbo(&vae)?;
        let mut opt = Optimizer::new(OptimizerKind::Adam, 1e-3, vae.params().vars())?;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let start = std::time::Instant::now();
        for step in 0..300 {
            let idx: Vec<usize> = (0..64).map(|_| rng.random_range(0..train.len())).collect();
            let loss = vae.loss(&train.batch(&idx, &CPU)?, Mode::Train { seed: step }, step)?;
            opt.step(&loss.backward()?)?;
        }
        let after = neg_elbo(&vae)?;
        eprintln!(
            "{prior:?}: −ELBO {before:.1} → {after:.1} nats in {:?}",
            start.elapsed()
        );
        assert!(
            after.is_finite() && after < 0.7 * before,
            "{prior:?}: −ELBO {before} → {after}"
        );
    }
    Ok(())
}

/// Latent dimensions whose posterior mean the encoder holds constant are inactive; the others are active.
#[test]
fn active_units_count_the_dimensions_the_encoder_uses() -> Result<()> {
    let cfg = VaeConfig {
        latents: 4,
        hidden: 8,
        prior: PriorConfig::StandardNormal,
        ..VaeConfig::default()
    };
    let vae = Vae::new(&cfg, 6, 5, 3, DType::F64, &CPU)?;
    let x = random_x(50, 6, 5, 4)?;
    // Row l of the last encoder layer gives μ_l: zero rows 1 and 3 (μ constant, their bias), scale the others.
    let (_, w) = vae
        .params()
        .vars()
        .into_iter()
        .find(|(n, _)| n == "encoder.net.4.weight")
        .expect("the encoder's last layer");
    let mut rows: Vec<Vec<f64>> = w.as_tensor().to_vec2()?;
    for (l, row) in rows.iter_mut().enumerate().take(4) {
        let scale = if l % 2 == 1 { 0.0 } else { 20.0 };
        row.iter_mut().for_each(|v| *v *= scale);
    }
    w.set(&Tensor::new(rows, &CPU)?)?;
    let units = vae.active_units(&x, 7)?;
    assert_eq!(units.count, 2, "{units:?}");
    assert!(units.variances[1] < 1e-20 && units.variances[3] < 1e-20, "{units:?}"); // rounding only
    assert!(units.variances[0] > ACTIVE_UNIT_THRESHOLD && units.variances[2] > ACTIVE_UNIT_THRESHOLD);
    // The variances are the population variances of μ over the examples, whatever the batch.
    let (mu, _) = vae.encoder().forward(&x)?;
    let mu: Vec<Vec<f64>> = mu.to_vec2()?;
    let col: Vec<f64> = mu.iter().map(|r| r[0]).collect();
    let m = mean(&col);
    let var = col.iter().map(|v| (v - m).powi(2)).sum::<f64>() / col.len() as f64;
    assert!((units.variances[0] - var).abs() < 1e-12 * (1.0 + var));
    assert_eq!(vae.active_units(&x, 1000)?.count, 2);
    Ok(())
}

#[test]
fn config_defaults_sizes_and_errors() -> Result<()> {
    // The defaults: 16 latents, encoder 64 → 256 → 256 → 32, decoder 16 → 256 → 256 → 64·17.
    let vae = Vae::new(&VaeConfig::default(), 64, 17, 0, DType::F32, &CPU)?;
    let shapes: Vec<(String, Vec<usize>)> = vae
        .params()
        .vars()
        .into_iter()
        .map(|(n, v)| (n, v.dims().to_vec()))
        .filter(|(n, _)| n.ends_with("weight"))
        .collect();
    let want = [
        ("decoder.hidden.0.weight", vec![256, 16]),
        ("decoder.hidden.1.weight", vec![256, 256]),
        ("decoder.out.weight", vec![64 * 17, 256]),
        ("encoder.net.0.weight", vec![256, 64]),
        ("encoder.net.2.weight", vec![256, 256]),
        ("encoder.net.4.weight", vec![32, 256]),
    ];
    assert_eq!(shapes, want.map(|(n, s)| (n.to_string(), s)).to_vec());
    assert_eq!(
        vae.params().num_params() as u128,
        VaeConfig::default().param_estimate(64, 17)
    );
    let arm_cfg = VaeConfig {
        prior: PriorConfig::arm(),
        ..VaeConfig::default()
    };
    let arm = Vae::new(&arm_cfg, 64, 17, 0, DType::F32, &CPU)?;
    assert_eq!(arm.params().num_params() as u128, arm_cfg.param_estimate(64, 17));

    // TOML: the ARM prior's sizes default, unknown keys are refused.
    let cfg: VaeConfig = toml::from_str("latents = 8\n[prior]\nkind = \"arm\"\nn_mix = 2\n").unwrap();
    assert_eq!(cfg.latents, 8);
    assert_eq!(
        cfg.prior,
        PriorConfig::Arm {
            hidden: 64,
            layers: 3,
            kernel: 6,
            n_mix: 2
        }
    );
    assert_eq!(
        toml::from_str::<VaeConfig>(&toml::to_string(&cfg).unwrap()).unwrap(),
        cfg
    );
    assert_eq!(toml::from_str::<VaeConfig>("").unwrap(), VaeConfig::default());
    assert!(toml::from_str::<VaeConfig>("latent = 8").is_err());
    assert!(toml::from_str::<VaeConfig>("[prior]\nkind = \"arm\"\nmixtures = 2").is_err());

    // Sizes that cannot be built are errors, not panics.
    let bad = |cfg: VaeConfig, d: usize, k: usize| Vae::new(&cfg, d, k, 0, DType::F32, &CPU).err();
    assert!(matches!(
        bad(
            VaeConfig {
                latents: 0,
                ..VaeConfig::default()
            },
            64,
            17
        ),
        Some(Error::Config(_))
    ));
    assert!(matches!(bad(VaeConfig::default(), 64, 1), Some(Error::Config(_))));
    let wide_kernel = VaeConfig {
        prior: PriorConfig::Arm {
            hidden: 4,
            layers: 2,
            kernel: 40,
            n_mix: 2,
        },
        ..VaeConfig::default()
    };
    assert!(matches!(bad(wide_kernel, 64, 17), Some(Error::TooLarge { .. })));
    assert!(matches!(
        bad(
            VaeConfig {
                hidden: 1 << 20,
                ..VaeConfig::default()
            },
            64,
            17
        ),
        Some(Error::TooLarge { .. })
    ));

    // Input outside 0..K or of the wrong width.
    let x = Tensor::new(&[[0u32; 64]], &CPU)?;
    assert!(vae.loss(&x, Mode::Eval, 0).is_ok());
    let mut v = vec![0u32; 64];
    v[5] = 17;
    let e = vae
        .loss(&Tensor::from_vec(v, (1, 64), &CPU)?, Mode::Eval, 0)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ValueOutOfRange {
                value: 17,
                position: 5,
                k: 17
            }
        ),
        "{e}"
    );
    assert!(matches!(
        vae.iwae(&Tensor::new(&[[0u32; 63]], &CPU)?, 2, 0, 1),
        Err(Error::Invalid(_))
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// PixelVAE: the decoder an ARM given z

/// A PixelVAE small enough for finite differences: a gated PixelCNN decoder (2 layers of 4 channels) on
/// 2 × 3 images of 3 values, conditioned on 2 latents.
fn tiny_pixelvae(prior: PriorConfig, dtype: DType, seed: u64) -> Result<Vae> {
    use armory::models::{gated_pixelcnn, ModelConfig, Network};
    let net = gated_pixelcnn::Config {
        channels: 4,
        first_kernel: 3,
        layers: 2,
        kernel: 3,
        head_hidden: 6,
        num_classes: None,
        vertical_residual: true,
    };
    let decoder = ModelConfig::image(Network::GatedPixelcnn(net), 3, 2, 3, 1);
    let cfg = VaeConfig {
        latents: 2,
        hidden: 5,
        prior,
        ..VaeConfig::default()
    };
    Vae::with_decoder(&cfg, &decoder, seed, dtype, &CPU)
}

/// PixelVAE's −ELBO through the reparameterisation: backprop agrees with finite differences for every
/// parameter — the encoder's, the decoder's (z → gate biases included) and the ARM prior's.
#[test]
fn pixelvae_gradients_through_the_reparameterisation_match_finite_differences() -> Result<()> {
    let x = random_x(3, 6, 3, 4)?;
    for prior in [PriorConfig::StandardNormal, tiny_arm()] {
        let vae = tiny_pixelvae(prior.clone(), DType::F64, 1)?;
        randomise(vae.params(), 0.5, 3)?;
        let largest = check_param_gradients(&format!("pixelvae {prior:?}"), vae.params(), || {
            vae.loss(&x, Mode::Eval, 2)
        })?;
        let moved = |prefix: &str| {
            largest
                .iter()
                .filter(|(n, g)| n.starts_with(prefix) && *g > 1e-6)
                .count()
        };
        assert_eq!(moved("encoder."), 6, "{largest:?}");
        assert!(
            moved("decoder.layers.0.ctx_h") == 1,
            "z reaches the decoder: {largest:?}"
        );
    }
    Ok(())
}

/// A VAE with a gated PixelCNN decoder and the ARM prior trains through the project's loop: the −ELBO falls;
/// an interrupted and resumed run ends with the weights of a straight one, bit for bit; the best checkpoint
/// reloads to the same −ELBO; a checkpoint of another number of latents is refused, naming the file.
#[test]
fn a_pixelvae_trains_resumes_exactly_and_round_trips_its_checkpoint() -> Result<()> {
    use armory::train::{self, Controls, RunDir, TrainConfig};
    let mut splits = armory::data::Splits::by_position(&armory::data::load("digits")?)?;
    // 2 × 3 crops of the digits' middle rows, values 0..2: tiny images, so that the test is quick.
    let crop = |ds: &armory::data::Dataset, n: usize| -> Result<armory::data::Dataset> {
        let mut values = vec![];
        for i in 0..n {
            let e = ds.example(i);
            for r in 3..5 {
                values.extend(e[r * 8 + 2..r * 8 + 5].iter().map(|&v| (v * 3 / 17).min(2)));
            }
        }
        let mut out = ds.slice(0..n);
        (out.values, out.dim, out.num_values, out.image_shape) = (values, 6, 3, (1, 2, 3));
        Ok(out)
    };
    (splits.train, splits.val, splits.test) = (
        crop(&splits.train, 96)?,
        crop(&splits.val, 32)?,
        crop(&splits.test, 32)?,
    );
    let recipe = TrainConfig {
        lr: 1e-2,
        batch_size: 16,
        max_epochs: 3,
        patience: 100,
        seed: 3,
        ..TrainConfig::default()
    };
    let quiet = Controls {
        quiet: true,
        ..Controls::default()
    };
    let weights = |run: &RunDir| armory::params::load_tensors(&run.file("last.safetensors")).unwrap();
    let fresh = || tiny_pixelvae(tiny_arm(), DType::F32, 0);

    let vae = fresh()?;
    let before = vae.elbo_over(&splits.train, 0)?.0;
    let dir = tempfile::tempdir().unwrap();
    let straight = RunDir::create(&dir.path().join("straight"))?;
    train::train(&vae, &splits, &recipe, &straight, false, &quiet)?;
    let after = vae.elbo_over(&splits.train, 0)?.0;
    assert!(after < before - 0.5, "−ELBO {before:.3} → {after:.3}");

    let resumed = RunDir::create(&dir.path().join("resumed"))?;
    let vae2 = fresh()?;
    for i in 0..10 {
        let controls = Controls {
            stop_after_steps: Some(7),
            ..quiet.clone()
        };
        let s = train::train(&fresh()?, &splits, &recipe, &resumed, i > 0, &controls)?;
        if s.outcome != train::Outcome::Interrupted {
            break;
        }
    }
    let (a, b) = (weights(&straight), weights(&resumed));
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let (u, v) = (
            t.flatten_all()?.to_vec1::<f32>()?,
            b[name].flatten_all()?.to_vec1::<f32>()?,
        );
        assert_eq!(u, v, "{name} differs after resuming");
    }

    vae2.params().load(&straight.file("best.safetensors"))?;
    assert_eq!(vae2.elbo_over(&splits.test, 1)?, vae.elbo_over(&splits.test, 1)?);
    let other = Vae::with_decoder(
        &VaeConfig {
            latents: 3,
            hidden: 5,
            prior: tiny_arm(),
            ..VaeConfig::default()
        },
        &{
            let mut m = vae.decoder().config().clone();
            m.context = 0;
            m
        },
        0,
        DType::F32,
        &CPU,
    )?;
    let e = other
        .params()
        .load(&straight.file("best.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("best.safetensors"), "{e}");
    Ok(())
}

/// Importance-weighted training (`train_samples` = k): the objective is minus the estimator's bound with the
/// same k samples (the same noise streams), k = 1 is the −ELBO, and its gradient through the k
/// reparameterised samples agrees with finite differences under both priors.
#[test]
fn importance_weighted_training_objective_is_the_iwae_bound_and_differentiable() -> Result<()> {
    let x = random_x(4, 5, 3, 1)?;
    for prior in [PriorConfig::StandardNormal, tiny_arm()] {
        let cfg = |k: usize| VaeConfig {
            latents: 2,
            hidden: 4,
            prior: prior.clone(),
            train_samples: k,
            ..VaeConfig::default()
        };
        let one = Vae::new(&cfg(1), 5, 3, 2, DType::F64, &CPU)?;
        let vae = Vae::new(&cfg(5), 5, 3, 2, DType::F64, &CPU)?;
        let objective = |v: &Vae| -> Result<f64> { Ok(v.objective(&x, Mode::Eval, 7, 0)?.to_scalar::<f64>()?) };
        let bound = -mean(&vae.iwae(&x, 5, 7, 5)?.to_vec1::<f64>()?);
        assert!(
            (objective(&vae)? - bound).abs() < 1e-10,
            "{prior:?}: {} vs {bound}",
            objective(&vae)?
        );
        let elbo = one.loss(&x, Mode::Eval, 7)?.to_scalar::<f64>()?;
        assert!((objective(&one)? - elbo).abs() < 1e-12, "{prior:?}");
        // Same weights, same first sample: the 5-sample bound is tighter here than the 1-sample one.
        assert_ne!(objective(&vae)?, objective(&one)?);
        check_param_gradients(&format!("{prior:?} k=5"), vae.params(), || {
            vae.objective(&x, Mode::Eval, 7, 0)
        })?;
    }
    let bad = VaeConfig {
        train_samples: 0,
        ..VaeConfig::default()
    };
    assert!(matches!(bad.validate(64, 17), Err(Error::Config(_))));
    let both = VaeConfig {
        train_samples: 2,
        free_bits: 0.25,
        ..VaeConfig::default()
    };
    let err = both.validate(64, 17).unwrap_err().to_string();
    assert!(err.contains("free_bits") && err.contains("train_samples"), "{err}");
    Ok(())
}

/// The ELBO surgery (`Vae::marginal_kl`): an encoder that ignores x has one posterior for every example, so
/// the aggregate posterior is that Gaussian, the marginal KL is the whole KL term (analytic against N(0, I))
/// and I(x; z) = 0 (up to the Monte Carlo error); a random encoder gives 0 < I(x; z) ≤ log N and a marginal KL > 0 (here 0.47 and 1.71 of 2.19).
#[test]
fn marginal_kl_splits_the_kl_term_into_information_and_prior_mismatch() -> Result<()> {
    let cfg = VaeConfig {
        latents: 3,
        hidden: 6,
        ..VaeConfig::default()
    };
    let x = random_x(40, 5, 3, 4)?;
    let vae = Vae::new(&cfg, 5, 3, 1, DType::F64, &CPU)?;
    randomise(vae.params(), 1.0, 9)?; // posteriors that differ from example to example
    let kl_term = |vae: &Vae| -> Result<f64> {
        let (mean, log_var) = vae.encoder().forward(&x)?;
        let kl = vae.prior().kl_from_normal(&mean, &log_var)?.expect("analytic");
        Ok(kl.mean_all()?.to_scalar::<f64>()?)
    };
    let kl = kl_term(&vae)?;
    let marginal = vae.marginal_kl(&x, 200, 0, 7)?;
    let info = kl - marginal;
    assert!(
        marginal > 0.5 && info > 0.2 && info < (40f64).ln(),
        "KL {kl} = I {info} + marginal {marginal}"
    );
    // The same for any batch, deterministic for a seed.
    assert_eq!(marginal, vae.marginal_kl(&x, 200, 0, 40)?);
    // Zero the last encoder layer's weights: μ and log σ² are its bias, whatever x.
    let (_, w) = vae
        .params()
        .vars()
        .into_iter()
        .find(|(n, _)| n == "encoder.net.4.weight")
        .expect("weight");
    w.set(&w.as_tensor().zeros_like()?)?;
    let (_, b) = vae
        .params()
        .vars()
        .into_iter()
        .find(|(n, _)| n == "encoder.net.4.bias")
        .expect("bias");
    b.set(&Tensor::new(&[0.5, -1.0, 0.2, 0.3, -0.4, 0.1], &CPU)?)?;
    let kl = kl_term(&vae)?;
    let marginal = vae.marginal_kl(&x, 500, 0, 7)?;
    assert!(kl > 0.5, "{kl}");
    // A Monte Carlo estimate of the same KL from 20,000 draws (standard error ≈ 0.01 here).
    assert!(
        (marginal - kl).abs() < 0.04,
        "one posterior: marginal {marginal} vs KL {kl}"
    );
    assert!(matches!(vae.marginal_kl(&x, 0, 0, 7), Err(Error::Invalid(_))));
    Ok(())
}

/// Importance-weighted training through the training loop's interface (`Trainable`): a few hundred steps on
/// the digits lower the 3-sample bound clearly, and the validation score early stopping selects on is that
/// bound (minus the estimator's, with the same noise), not the −ELBO.
#[test]
fn importance_weighted_training_lowers_its_bound_and_validates_on_it() -> Result<()> {
    use armory::train::Trainable;
    let splits = armory::data::Splits::by_position(&armory::data::load("digits")?)?;
    let (train, val) = (&splits.train, &splits.val);
    let cfg = VaeConfig {
        hidden: 128,
        train_samples: 3,
        ..VaeConfig::default()
    };
    let vae = Vae::new(&cfg, train.dim, train.num_values, 0, DType::F32, &CPU)?;
    let before = Trainable::validate(&vae, val)?.nll;
    let mut opt = Optimizer::new(OptimizerKind::Adam, 1e-3, vae.params().vars())?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for step in 0..200 {
        let idx: Vec<usize> = (0..64).map(|_| rng.random_range(0..train.len())).collect();
        let x = train.batch(&idx, &CPU)?;
        let loss = Trainable::objective(&vae, &x, None, Mode::Train { seed: step }, 0)?;
        opt.step(&loss.backward()?)?;
    }
    let after = Trainable::validate(&vae, val)?.nll;
    assert!(after.is_finite() && after < 0.7 * before, "−IWAE_3 {before} → {after}");
    let bound = vae.iwae_over(val, 3, 0, 3, &|_| {})?;
    assert_eq!(after, bound);
    let (neg_elbo, _) = vae.elbo_over(val, 0)?;
    assert!(neg_elbo > after, "−ELBO {neg_elbo} vs −IWAE_3 {after}");
    Ok(())
}
