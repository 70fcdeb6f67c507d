//! The prior p(z) of a VAE over L latent dimensions: a standard normal, or an ARM over the dimensions whose
//! conditionals are mixtures of logistics ([`crate::likelihood::continuous`]).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{normal_noise, PriorConfig, HALF_LOG_TWO_PI, LEAKY_SLOPE};
use crate::error::{Error, Result};
use crate::likelihood::continuous;
use crate::limits;
use crate::nn::{causal_conv1d, CausalConv1d, CausalConv1dConfig, ConvType};

/// A density over `[B, L]` latents that can be scored (differentiably, for training) and sampled.
pub trait Prior: Send + Sync {
    /// L, the dimensions of z.
    fn latents(&self) -> usize;

    /// z `[B, L]` (floats, the model's dtype) → log p(z) `[B]` in nats, differentiable in z and in the
    /// prior's parameters.
    fn log_density(&self, z: &Tensor) -> Result<Tensor>;

    /// `n` draws `[n, L]` in the model's dtype, the same for the same `seed`.
    fn sample(&self, n: usize, seed: u64) -> Result<Tensor>;

    /// KL(N(μ, diag σ²) ‖ p) `[B]` in closed form from μ and log σ² `[B, L]`, where the prior has one;
    /// `None` where it has not, and the ELBO estimates it from the sample, log q(z|x) − log p(z).
    fn kl_from_normal(&self, _mean: &Tensor, _log_var: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// Builds the prior of `cfg` over `latents` dimensions, its parameters (if any) under `vb`.
pub fn build(cfg: &PriorConfig, latents: usize, vb: VarBuilder) -> Result<Box<dyn Prior>> {
    Ok(match *cfg {
        PriorConfig::StandardNormal => Box::new(StandardNormal::new(latents, vb.dtype(), vb.device())),
        PriorConfig::Arm {
            hidden,
            layers,
            kernel,
            n_mix,
        } => Box::new(ArmPrior::new(latents, hidden, layers, kernel, n_mix, vb)?),
    })
}

/// z must be `[B, L]` in the model's dtype.
fn check_latents(z: &Tensor, latents: usize, dtype: DType) -> Result<usize> {
    match z.dims() {
        &[b, l] if l == latents && z.dtype() == dtype => Ok(b),
        _ => Err(Error::Invalid(format!(
            "the prior takes z as [B, {latents}] {dtype:?}, got {:?} {:?}",
            z.dims(),
            z.dtype()
        ))),
    }
}

/// N(0, I) over L dimensions: no parameters.
#[derive(Debug, Clone)]
pub struct StandardNormal {
    latents: usize,
    dtype: DType,
    device: Device,
}

impl StandardNormal {
    pub fn new(latents: usize, dtype: DType, device: &Device) -> Self {
        Self {
            latents,
            dtype,
            device: device.clone(),
        }
    }
}

impl Prior for StandardNormal {
    fn latents(&self) -> usize {
        self.latents
    }

    /// Σ_l −½·z_l² − ½·log 2π.
    fn log_density(&self, z: &Tensor) -> Result<Tensor> {
        check_latents(z, self.latents, self.dtype)?;
        Ok(z.sqr()?
            .sum(1)?
            .affine(-0.5, -(self.latents as f64) * HALF_LOG_TWO_PI)?)
    }

    fn sample(&self, n: usize, seed: u64) -> Result<Tensor> {
        limits::check("prior samples", limits::wide(n), limits::wide(limits::MAX_SAMPLES))?;
        normal_noise(seed, 0, (n, self.latents), self.dtype, &self.device)
    }

    /// ½·Σ_l (μ_l² + σ_l² − 1 − log σ_l²).
    fn kl_from_normal(&self, mean: &Tensor, log_var: &Tensor) -> Result<Option<Tensor>> {
        let per_dim = ((mean.sqr()? + log_var.exp()?)? - log_var)?;
        Ok(Some(per_dim.sum(1)?.affine(0.5, -0.5 * self.latents as f64)?))
    }
}

/// p(z) = Π_l p(z_l | z_<l): the seed ARM's causal convolutions over the L latent dimensions, reading z as
/// one float channel; type A first so that θ_l sees only z_<l, type B after it, LeakyReLU between. The last
/// layer gives θ_l, the 3M parameters of a mixture of M logistics for z_l ([`continuous`]).
pub struct ArmPrior {
    layers: Vec<CausalConv1d>,
    latents: usize,
    dtype: DType,
    device: Device,
}

impl ArmPrior {
    /// `layers` convolutions of width `kernel` (`hidden` channels between them), the parameters under `vb`
    /// named as the seed ARM's, `net.{0,2,4,…}.conv1d.{weight,bias}`.
    pub fn new(
        latents: usize,
        hidden: usize,
        layers: usize,
        kernel: usize,
        n_mix: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        if latents == 0 || hidden == 0 || layers == 0 || kernel == 0 || n_mix == 0 {
            return Err(Error::Config(format!(
                "ARM prior: latents ({latents}), hidden ({hidden}), layers ({layers}), kernel ({kernel}) and \
                 n_mix ({n_mix}) must be at least 1"
            )));
        }
        let out = continuous::params_len(n_mix);
        let convs = (0..layers)
            .map(|i| {
                let kind = if i == 0 { ConvType::A } else { ConvType::B };
                let cfg = CausalConv1dConfig {
                    kernel,
                    dilation: 1,
                    kind,
                };
                let from = if i == 0 { 1 } else { hidden };
                let to = if i + 1 == layers { out } else { hidden };
                causal_conv1d(from, to, cfg, vb.pp("net").pp(2 * i).pp("conv1d"))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            layers: convs,
            latents,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// z `[B, L]` → θ `[B, L, 3M]`, where θ_l depends only on z_<l (θ_0 on nothing but the weights).
    pub fn conditionals(&self, z: &Tensor) -> Result<Tensor> {
        check_latents(z, self.latents, self.dtype)?;
        let mut h = z.unsqueeze(2)?.contiguous()?; // [B, L, 1]: one channel, channels-last
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = if i < last {
                layer.forward_blc_leaky(&h, LEAKY_SLOPE)? // [B, L, hidden]
            } else {
                layer.forward_blc(&h)? // [B, L, 3M]
            };
        }
        Ok(h)
    }
}

impl Prior for ArmPrior {
    fn latents(&self) -> usize {
        self.latents
    }

    /// Σ_l log p(z_l | θ_l(z_<l)), all L conditionals from one pass.
    fn log_density(&self, z: &Tensor) -> Result<Tensor> {
        continuous::log_density(&self.conditionals(z)?, z)
    }

    /// Dimension by dimension, one full pass per dimension (z_l is drawn from θ_l of the z_<l drawn so far;
    /// the later, still zero, dimensions do not reach θ_l). Two uniforms per value from the ChaCha8
    /// generator of `seed`, example by example within a dimension: one picks the component, one the value.
    /// The values are drawn in f32 (as the ARMs' samplers draw), whatever the model's dtype.
    fn sample(&self, n: usize, seed: u64) -> Result<Tensor> {
        limits::check("prior samples", limits::wide(n), limits::wide(limits::MAX_SAMPLES))?;
        let l_dim = self.latents;
        if n == 0 {
            return Ok(Tensor::zeros((0, l_dim), self.dtype, &self.device)?);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut z = vec![0f32; n * l_dim];
        for l in 0..l_dim {
            let zt = Tensor::from_slice(&z, (n, l_dim), &self.device)?.to_dtype(self.dtype)?;
            let theta = self
                .conditionals(&zt)?
                .narrow(1, l, 1)?
                .squeeze(1)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?; // [n][3M]
            for (b, row) in theta.iter().enumerate() {
                let (u_component, u_value) = (rng.random::<f64>(), rng.random::<f64>());
                z[b * l_dim + l] = continuous::sample(row, u_component, u_value);
            }
        }
        Ok(Tensor::from_vec(z, (n, l_dim), &self.device)?.to_dtype(self.dtype)?)
    }
}
