//! The VAE: an encoder q(z|x) = N(μ(x), diag σ²(x)), a decoder p(x|z), a prior p(z), and the training
//! objective −ELBO with one reparameterised sample, z = μ + σ·ε. The decoder is an [`Arm`] conditioned on z
//! (its `context`): the book's dense decoder (the dimensions independent given z: `kind = "dense"`), or a
//! gated PixelCNN — PixelVAE (Gulrajani et al. 2016), whose decoder is autoregressive given z.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::prior::{self, Prior};
use super::{normal_noise, VaeConfig, HALF_LOG_TWO_PI, LEAKY_SLOPE};
use crate::error::{Error, Result};
use crate::models::{dense, Arm, ModelConfig, Network};
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

/// A VAE over `[B, D]` data with K values per dimension, its parameters in one [`ParamStore`]:
/// `encoder.net.{0,2,4}.{weight,bias}`, `decoder.…` (the decoder ARM's own names) and, for the ARM prior,
/// `prior.net.{0,2,…}.conv1d.…`.
pub struct Vae {
    config: VaeConfig,
    dim: usize,
    num_values: usize,
    encoder: Encoder,
    decoder: Arm,
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
        Self::with_decoder(config, &dense_decoder(config, dim, num_values), seed, dtype, device)
    }

    /// The VAE of `config` with `decoder` as p(x|z): any model whose family takes a context (`dense`,
    /// `gated_pixelcnn`), its `context` set to the latents (a decoder given with `context = 0` gets it);
    /// D and K are the decoder's.
    pub fn with_decoder(
        config: &VaeConfig,
        decoder: &ModelConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let decoder = decoder_for(config, decoder)?;
        let (dim, num_values) = (decoder.dim(), decoder.num_values);
        config.validate(dim, num_values)?;
        decoder.validate()?;
        let params = ParamStore::new(seed);
        let vb = params.var_builder(dtype, device);
        let (l, h) = (config.latents, config.hidden);
        Ok(Self {
            config: config.clone(),
            dim,
            num_values,
            encoder: Encoder::new(dim, h, l, num_values, vb.pp("encoder"))?,
            decoder: Arm::in_store(&decoder, &params, vb.pp("decoder"))?,
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
    /// p(x|z): an ARM conditioned on z.
    pub fn decoder(&self) -> &Arm {
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
            return Err(Error::Invalid(format!(
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
    /// the second. Both are differentiable in every parameter, through z too. `mode` is the decoder's
    /// (dropout in training).
    pub fn elbo_terms(&self, x: &Tensor, mode: Mode, seed: u64) -> Result<(Tensor, Tensor)> {
        let s = self.elbo_sample(x, mode, seed)?;
        let kl = match self.prior.kl_from_normal(&s.mean, &s.log_var)? {
            Some(kl) => kl,
            None => (s.log_q - self.prior.log_density(&s.z)?)?,
        };
        Ok((s.log_px, kl))
    }

    /// The encoder's μ and log σ², the sample z, log q(z|x) and log p(x|z) of one ELBO sample.
    fn elbo_sample(&self, x: &Tensor, mode: Mode, seed: u64) -> Result<ElboSample> {
        self.check_input(x)?;
        let (mean, log_var) = self.encoder.forward(x)?;
        let eps = normal_noise(seed, 0, mean.dims2()?, self.dtype, &self.device)?;
        let (z, log_q) = reparameterise(&mean, &log_var, &eps)?;
        let log_px = self.decoder.log_prob_context(x, None, Some(&z), mode)?;
        Ok(ElboSample {
            mean,
            log_var,
            z,
            log_q,
            log_px,
        })
    }

    /// The training objective: the mean over the batch of −ELBO = −log p(x|z) + KL, in nats (a scalar).
    pub fn loss(&self, x: &Tensor, mode: Mode, seed: u64) -> Result<Tensor> {
        let (log_px, kl) = self.elbo_terms(x, mode, seed)?;
        Ok((kl - log_px)?.mean_all()?)
    }

    /// The objective of training epoch `epoch` (from 0), averaged over the batch, with the KL weight β rising
    /// linearly from 1/`kl_warmup` to 1 over the first `kl_warmup` epochs (Bowman et al. 2016):
    /// - one sample (`train_samples` = 1): −log p(x|z) + β·max(KL, λ·L), with free bits λ (`free_bits` nats
    ///   per latent): a KL below λ·L on the batch costs λ·L, so the optimiser gains nothing by pushing it
    ///   lower (Kingma et al. 2016). During the first `prior_warmup` epochs the KL is the standard normal's
    ///   (analytic) and −log p(z) of the detached sample is added, so the learned prior is fitted to the
    ///   codes without shaping them. With none of these it is [`Vae::loss`].
    /// - k samples: −log (1/k) Σ_j p(x|z_j)·(p(z_j)/q(z_j|x))^β, the importance-weighted bound (Burda et al.
    ///   2016; β = 1 after the warm-up), whose gradient weighs each sample by its normalised weight; sample j
    ///   reads stream j of `seed` (sample 0 is the one-sample objective's), so it is minus [`Vae::iwae`].
    pub fn objective(&self, x: &Tensor, mode: Mode, seed: u64, epoch: usize) -> Result<Tensor> {
        let beta = match self.config.kl_warmup {
            0 => 1.0,
            w => ((epoch + 1) as f64 / w as f64).min(1.0),
        };
        let k = self.config.train_samples;
        if k > 1 {
            self.check_input(x)?;
            let (mean, log_var) = self.encoder.forward(x)?;
            let log_w = self.log_weights(x, &mean, &log_var, 0..k, seed, mode, beta)?;
            let bound = (log_w.reshape((k, x.dim(0)?))?.log_sum_exp(0)? - (k as f64).ln())?;
            return Ok(bound.mean_all()?.neg()?);
        }
        let (log_px, kl, prior_fit) = if epoch < self.config.prior_warmup {
            let s = self.elbo_sample(x, mode, seed)?;
            let normal = prior::StandardNormal::new(self.latents(), self.dtype, &self.device);
            let kl = normal
                .kl_from_normal(&s.mean, &s.log_var)?
                .expect("the standard normal's KL is analytic");
            let fit = self.prior.log_density(&s.z.detach())?.mean_all()?.neg()?;
            (s.log_px, kl, Some(fit))
        } else {
            let (log_px, kl) = self.elbo_terms(x, mode, seed)?;
            (log_px, kl, None)
        };
        let floor = self.config.free_bits * self.config.latents as f64;
        let kl = kl.mean_all()?;
        let kl = if floor > 0.0 { kl.maximum(floor)? } else { kl };
        let loss = ((kl * beta)? - log_px.mean_all()?)?;
        Ok(match prior_fit {
            Some(fit) => (loss + fit)?,
            None => loss,
        })
    }
}

impl Vae {
    /// The log importance weights log p(x|z_j) + β·(log p(z_j) − log q(z_j|x)) of samples `samples` (j) of
    /// every example of x `[B, D]`, encoded as `mean`, `log_var` `[B, L]`: `[c·B]` for c samples,
    /// sample-major (row j'·B + i is sample `samples.start` + j' of example i). Sample j reads its noise ε
    /// `[B, L]` from stream j of the ChaCha8 generator of `seed`; `mode` is the decoder's.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn log_weights(
        &self,
        x: &Tensor,
        mean: &Tensor,
        log_var: &Tensor,
        samples: std::ops::Range<usize>,
        seed: u64,
        mode: Mode,
        beta: f64,
    ) -> Result<Tensor> {
        let c = samples.len();
        let eps = samples
            .map(|j| normal_noise(seed, j as u64, mean.dims2()?, self.dtype, &self.device))
            .collect::<Result<Vec<_>>>()?;
        let (z, log_q) = reparameterise(&mean.repeat((c, 1))?, &log_var.repeat((c, 1))?, &Tensor::cat(&eps, 0)?)?;
        let log_px = self
            .decoder
            .log_prob_context(&x.repeat((c, 1))?, None, Some(&z), mode)?;
        let log_p = self.prior.log_density(&z)?;
        Ok(if beta == 1.0 {
            ((log_px + log_p)? - log_q)?
        } else {
            (log_px + ((log_p - log_q)? * beta)?)?
        })
    }
}

/// One reparameterised sample of the ELBO, `[B, L]` and `[B]` tensors.
struct ElboSample {
    mean: Tensor,
    log_var: Tensor,
    z: Tensor,
    log_q: Tensor,
    log_px: Tensor,
}

/// The book's decoder for data of `dim` values in 0..`num_values`: two dense layers of `config.hidden`, the
/// categorical over the values.
pub fn dense_decoder(config: &VaeConfig, dim: usize, num_values: usize) -> ModelConfig {
    let net = dense::Config {
        hidden: config.hidden,
        layers: 2,
    };
    let mut m = ModelConfig::sequence(Network::Dense(net), num_values, dim);
    m.context = config.latents;
    m
}

/// `decoder` conditioned on the latents of `config` (its `context`, which must be 0 or the latents).
fn decoder_for(config: &VaeConfig, decoder: &ModelConfig) -> Result<ModelConfig> {
    let mut m = decoder.clone();
    match m.context {
        0 => m.context = config.latents,
        c if c == config.latents => {}
        c => {
            return Err(Error::Config(format!(
                "the decoder's context ({c}) is not the number of latents ({})",
                config.latents
            )))
        }
    }
    if !m.family().takes_context() {
        return Err(Error::Config(format!(
            "a {} network cannot be a decoder: it takes no latent code (use dense or gated_pixelcnn)",
            m.kind()
        )));
    }
    Ok(m)
}

/// z = μ + σ·ε with σ = exp(½·log σ²), and log q(z|x) `[B]` = Σ_l log N(z_l; μ_l, σ_l²), which at this z is
/// Σ_l −½·ε_l² − ½·log σ_l² − ½·log 2π: written with ε, no division by σ. μ, log σ², ε `[R, L]`.
fn reparameterise(mean: &Tensor, log_var: &Tensor, eps: &Tensor) -> Result<(Tensor, Tensor)> {
    let z = (mean + (log_var * 0.5)?.exp()?.mul(eps)?)?;
    let l = mean.dim(1)? as f64;
    let log_q = (eps.sqr()? + log_var)?.sum(1)?.affine(-0.5, -l * HALF_LOG_TWO_PI)?;
    Ok((z, log_q))
}
