//! The VAE: an encoder q(z|x) = N(μ(x), diag σ²(x)), a decoder p(x|z) (a categorical over K values per
//! dimension, the dimensions independent given z), a prior p(z), and the training objective −ELBO with one
//! reparameterised sample, z = μ + σ·ε.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::prior::{self, Prior};
use super::{normal_noise, VaeConfig, HALF_LOG_TWO_PI, LEAKY_SLOPE};
use crate::error::{Error, Result};
use crate::likelihood::Likelihood;
use crate::nn::{leaky_relu, linear, Linear, Mode};
use crate::params::ParamStore;

/// Three dense layers with a LeakyReLU after the first two: `[…, in]` → `[…, out]`.
fn mlp(layers: &[Linear; 3], x: &Tensor) -> Result<Tensor> {
    let h = leaky_relu(&layers[0].forward(x)?, LEAKY_SLOPE)?;
    let h = leaky_relu(&layers[1].forward(&h)?, LEAKY_SLOPE)?;
    Ok(layers[2].forward(&h)?)
}

/// Dense layers `sizes[0] → sizes[1] → sizes[2] → sizes[3]`, named `net.{0,2,4}` as a PyTorch
/// `nn.Sequential` of Linear and LeakyReLU names them.
fn mlp_layers(sizes: [usize; 4], vb: &VarBuilder) -> Result<[Linear; 3]> {
    let layer = |i: usize| linear(sizes[i], sizes[i + 1], vb.pp("net").pp(2 * i));
    Ok([layer(0)?, layer(1)?, layer(2)?])
}

/// q(z|x): an MLP D → H → H → 2L of the pixel values scaled to [0, 1], giving μ and log σ².
pub struct Encoder {
    net: [Linear; 3],
    num_values: usize,
    latents: usize,
}

impl Encoder {
    pub fn new(dim: usize, hidden: usize, latents: usize, num_values: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            net: mlp_layers([dim, hidden, hidden, 2 * latents], &vb)?,
            num_values,
            latents,
        })
    }

    /// x `[B, D]` (u32, values 0..K) → (μ, log σ²), each `[B, L]`. The values enter as x / (K − 1).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let dtype = self.net[0].weight().dtype();
        let scaled = (x.to_dtype(dtype)? / (self.num_values - 1) as f64)?;
        let out = mlp(&self.net, &scaled)?; // [B, 2L]
        Ok((
            out.narrow(1, 0, self.latents)?,
            out.narrow(1, self.latents, self.latents)?,
        ))
    }
}

/// p(x|z): an MLP L → H → H → D·K of logits, a categorical over K values per dimension.
pub struct Decoder {
    net: [Linear; 3],
    dim: usize,
    likelihood: Likelihood,
}

impl Decoder {
    pub fn new(latents: usize, hidden: usize, dim: usize, num_values: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            net: mlp_layers([latents, hidden, hidden, dim * num_values], &vb)?,
            dim,
            likelihood: Likelihood::Categorical { num_values },
        })
    }

    /// z `[B, L]` → logits `[B, D, K]`.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let b = z.dim(0)?;
        Ok(mlp(&self.net, z)?.reshape((b, self.dim, self.likelihood.num_values()))?)
    }

    /// log p(x|z) `[B]` in nats for z `[B, L]` and x `[B, D]` (u32).
    pub fn log_likelihood(&self, z: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.likelihood.log_prob(&self.forward(z)?, x)
    }
}

/// A VAE over `[B, D]` data with K values per dimension, its parameters in one [`ParamStore`]:
/// `encoder.net.{0,2,4}.{weight,bias}`, `decoder.net.{0,2,4}.…` and, for the ARM prior,
/// `prior.net.{0,2,…}.conv1d.…`.
pub struct Vae {
    config: VaeConfig,
    dim: usize,
    num_values: usize,
    encoder: Encoder,
    decoder: Decoder,
    prior: Box<dyn Prior>,
    params: ParamStore,
    dtype: DType,
    device: Device,
}

impl Vae {
    /// Builds the VAE of `config` for data of `dim` dimensions with `num_values` values each, with fresh
    /// parameters drawn from `seed` (each tensor from `(seed, its name)`, as the ARMs are initialised).
    ///
    /// ```
    /// use armory::latent::{Vae, VaeConfig};
    /// use candle_core::{DType, Device, Tensor};
    ///
    /// let vae = Vae::new(&VaeConfig { hidden: 32, ..Default::default() }, 64, 17, 0, DType::F32, &Device::Cpu)?;
    /// let x = Tensor::zeros((2, 64), DType::U32, &Device::Cpu)?; // two blank digits
    /// let loss = vae.loss(&x, armory::nn::Mode::Eval, 7)?.to_scalar::<f32>()?; // mean −ELBO, nats
    /// assert!(loss > 0.0);
    /// # Ok::<(), armory::Error>(())
    /// ```
    pub fn new(
        config: &VaeConfig,
        dim: usize,
        num_values: usize,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config.validate(dim, num_values)?;
        let params = ParamStore::new(seed);
        let vb = params.var_builder(dtype, device);
        let (l, h) = (config.latents, config.hidden);
        Ok(Self {
            config: config.clone(),
            dim,
            num_values,
            encoder: Encoder::new(dim, h, l, num_values, vb.pp("encoder"))?,
            decoder: Decoder::new(l, h, dim, num_values, vb.pp("decoder"))?,
            prior: prior::build(&config.prior, l, vb.pp("prior"))?,
            params,
            dtype,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }
    pub fn params(&self) -> &ParamStore {
        &self.params
    }
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }
    pub fn prior(&self) -> &dyn Prior {
        self.prior.as_ref()
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// D, the dimensions of one example.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// K, the values each dimension takes.
    pub fn num_values(&self) -> usize {
        self.num_values
    }
    /// L, the dimensions of z.
    pub fn latents(&self) -> usize {
        self.config.latents
    }

    /// Checks that x is `[B, D]` u32 with values in 0..K.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let (_, d) = x.dims2()?;
        if d != self.dim || x.dtype() != DType::U32 {
            return Err(Error::Config(format!(
                "input is [B, {d}] {:?}, the VAE takes [B, {}] U32",
                x.dtype(),
                self.dim
            )));
        }
        let values = x.flatten_all()?.to_vec1::<u32>()?;
        match values.iter().enumerate().find(|(_, &v)| v as usize >= self.num_values) {
            None => Ok(()),
            Some((i, &v)) => Err(Error::ValueOutOfRange {
                value: v as i64,
                position: i % d,
                k: self.num_values,
            }),
        }
    }

    /// One ELBO sample for each example of x `[B, D]`: (log p(x|z) `[B]`, KL `[B]`) with z = μ + σ·ε, ε
    /// drawn from stream 0 of the ChaCha8 generator of `seed` (so it is the first sample of [`Vae::iwae`] with
    /// the same seed). The KL is analytic where the prior allows it (standard normal);
    /// otherwise (ARM prior) it is the single-sample estimate log q(z|x) − log p(z). ELBO = the first minus
    /// the second. Both are differentiable in every parameter, through z too. The networks have no dropout:
    /// `_mode` is taken so that a training loop calls every model alike.
    pub fn elbo_terms(&self, x: &Tensor, _mode: Mode, seed: u64) -> Result<(Tensor, Tensor)> {
        self.check_input(x)?;
        let (mean, log_var) = self.encoder.forward(x)?;
        let eps = normal_noise(seed, 0, mean.dims2()?, self.dtype, &self.device)?;
        let (z, log_q) = reparameterise(&mean, &log_var, &eps)?;
        let log_px = self.decoder.log_likelihood(&z, x)?;
        let kl = match self.prior.kl_from_normal(&mean, &log_var)? {
            Some(kl) => kl,
            None => (log_q - self.prior.log_density(&z)?)?,
        };
        Ok((log_px, kl))
    }

    /// The training objective: the mean over the batch of −ELBO = −log p(x|z) + KL, in nats (a scalar).
    pub fn loss(&self, x: &Tensor, mode: Mode, seed: u64) -> Result<Tensor> {
        let (log_px, kl) = self.elbo_terms(x, mode, seed)?;
        Ok((kl - log_px)?.mean_all()?)
    }
}

/// z = μ + σ·ε with σ = exp(½·log σ²), and log q(z|x) `[B]` = Σ_l log N(z_l; μ_l, σ_l²), which at this z is
/// Σ_l −½·ε_l² − ½·log σ_l² − ½·log 2π: written with ε, no division by σ. μ, log σ², ε `[R, L]`.
pub(super) fn reparameterise(mean: &Tensor, log_var: &Tensor, eps: &Tensor) -> Result<(Tensor, Tensor)> {
    let z = (mean + (log_var * 0.5)?.exp()?.mul(eps)?)?;
    let l = mean.dim(1)? as f64;
    let log_q = (eps.sqr()? + log_var)?.sum(1)?.affine(-0.5, -l * HALF_LOG_TWO_PI)?;
    Ok((z, log_q))
}
