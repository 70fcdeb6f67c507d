//! Latent-variable models: a VAE (Kingma & Welling 2014) whose prior is a standard normal or an ARM over
//! the latent dimensions, p(z) = Π_l p(z_l | z_<l) (the VAE with an autoregressive prior of Chen et al. 2017).
//!
//! - [`vae`]: the encoder q(z|x), the decoder p(x|z), the [`Vae`] and its training objective (−ELBO)
//! - [`prior`]: the [`Prior`] trait, the [`StandardNormal`] and the [`ArmPrior`]
//! - [`estimate`]: the importance-weighted estimate of log p(x) (Burda et al. 2016) and the active units
//!
//! The model reads data as the ARMs do, `[B, D]` integers in 0..K; D and K come from the data set, the
//! rest from a [`VaeConfig`].

pub mod estimate;
pub mod prior;
pub mod run;
pub mod vae;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits;

pub use estimate::{ActiveUnits, ACTIVE_UNIT_THRESHOLD};
pub use prior::{ArmPrior, Prior, StandardNormal};
pub use run::LatentEvaluation;
pub use vae::{dense_decoder, Encoder, Vae};

/// The LeakyReLU slope between the layers of every network here (PyTorch's default).
pub const LEAKY_SLOPE: f64 = 0.01;

/// The sizes of a VAE; the data decide D and K.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaeConfig {
    /// L, the dimensions of z.
    pub latents: usize,
    /// Units of the two hidden layers of the encoder (and of the default dense decoder).
    pub hidden: usize,
    pub prior: PriorConfig,
    /// KL warm-up: the KL term's weight rises linearly to 1 over this many epochs (0: off).
    #[serde(skip_serializing_if = "crate::models::is_default")]
    pub kl_warmup: usize,
    /// Free bits: nats per latent below which the KL costs nothing more (0: off; see [`Vae::objective`]).
    #[serde(skip_serializing_if = "crate::models::is_default")]
    pub free_bits: f64,
    /// Prior warm-up, for a learned (ARM) prior: for this many epochs the encoder and decoder train against
    /// the standard normal (its analytic KL) while the prior is fitted by maximum likelihood to their
    /// detached samples z; then the usual −ELBO with the learned prior (0: off; see [`Vae::objective`]).
    #[serde(skip_serializing_if = "crate::models::is_default")]
    pub prior_warmup: usize,
    /// Importance samples per example in the training objective: 1 trains on the ELBO, k > 1 on the
    /// importance-weighted bound of k samples (IWAE training, Burda et al. 2016; see [`Vae::objective`]).
    #[serde(skip_serializing_if = "is_one")]
    pub train_samples: usize,
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

impl Default for VaeConfig {
    /// 16 latents, encoder D → 256 → 256 → 2·16, decoder 16 → 256 → 256 → D·K (64 → … → 64·17 on the
    /// digits), a standard-normal prior.
    fn default() -> Self {
        Self {
            latents: 16,
            hidden: 256,
            prior: PriorConfig::StandardNormal,
            kl_warmup: 0,
            free_bits: 0.0,
            prior_warmup: 0,
            train_samples: 1,
        }
    }
}

/// The prior p(z), chosen by `kind = "..."`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PriorConfig {
    /// N(0, I): the KL term of the ELBO is analytic.
    #[default]
    StandardNormal,
    /// An ARM over the latent dimensions: causal 1-D convolutions (type A, then type B, LeakyReLU between)
    /// read z_<l and give θ_l, the parameters of a mixture of `n_mix` logistics for z_l. θ_l sees the
    /// `kernel` previous dimensions through the first layer and `kernel − 1` more through each further one.
    Arm {
        /// Channels of the hidden layers.
        #[serde(default = "default_arm_hidden")]
        hidden: usize,
        /// Convolutions, the last giving θ (at least 1).
        #[serde(default = "default_arm_layers")]
        layers: usize,
        #[serde(default = "default_arm_kernel")]
        kernel: usize,
        /// Mixture components per latent dimension.
        #[serde(default = "default_arm_n_mix")]
        n_mix: usize,
    },
}

fn default_arm_hidden() -> usize {
    64
}
fn default_arm_layers() -> usize {
    3
}
/// With 3 layers of kernel 6, θ_l sees 6 + 5 + 5 = 16 previous dimensions: all of them for 16 latents.
fn default_arm_kernel() -> usize {
    6
}
fn default_arm_n_mix() -> usize {
    4
}

impl PriorConfig {
    /// The ARM prior with its default sizes: 64 channels, 3 layers of kernel 6, 4 components.
    pub fn arm() -> Self {
        PriorConfig::Arm {
            hidden: default_arm_hidden(),
            layers: default_arm_layers(),
            kernel: default_arm_kernel(),
            n_mix: default_arm_n_mix(),
        }
    }

    /// How many earlier latent dimensions θ_l can see (at most `latents` − 1; none for the standard normal).
    pub fn receptive_field(&self, latents: usize) -> usize {
        match *self {
            PriorConfig::StandardNormal => 0,
            PriorConfig::Arm { layers, kernel, .. } => {
                (kernel + layers.saturating_sub(1) * kernel.saturating_sub(1)).min(latents.saturating_sub(1))
            }
        }
    }
}

impl VaeConfig {
    /// Rejects sizes that cannot be built, for data of `dim` dimensions and `num_values` values each: every
    /// size at least 1 (K at least 2) and within [`crate::limits`], the parameter count too.
    pub fn validate(&self, dim: usize, num_values: usize) -> Result<()> {
        use limits::*;
        let at_most = |what: &str, v: usize, limit: usize| check(format!("vae.{what}"), wide(v), wide(limit));
        if self.latents == 0 || self.hidden == 0 || dim == 0 || num_values < 2 {
            return Err(Error::Config(format!(
                "vae: latents ({}), hidden ({}) and the data's dimensions ({dim}) must be at least 1, its \
                 values ({num_values}) at least 2",
                self.latents, self.hidden
            )));
        }
        at_most("latents", self.latents, MAX_WIDTH)?;
        at_most("hidden", self.hidden, MAX_WIDTH)?;
        at_most("dimensions of the data", dim, MAX_DIM)?;
        at_most("kl_warmup", self.kl_warmup, 1 << 20)?;
        at_most("prior_warmup", self.prior_warmup, 1 << 20)?;
        if self.prior_warmup > 0 && self.prior == PriorConfig::StandardNormal {
            return Err(Error::Config(
                "vae.prior_warmup fits a learned prior: the standard normal has nothing to fit".into(),
            ));
        }
        if !(self.free_bits >= 0.0 && self.free_bits.is_finite()) {
            return Err(Error::Config(format!(
                "vae.free_bits = {} must be a finite number ≥ 0",
                self.free_bits
            )));
        }
        if self.train_samples == 0 {
            return Err(Error::Config(
                "vae.train_samples must be at least 1 (1: the ELBO)".into(),
            ));
        }
        at_most("train_samples", self.train_samples, 1 << 12)?;
        if self.train_samples > 1 && self.free_bits > 0.0 {
            return Err(Error::Config(format!(
                "vae.free_bits = {} applies to the ELBO's KL term, which importance-weighted training \
                 (train_samples = {}) does not have: use one or the other",
                self.free_bits, self.train_samples
            )));
        }
        if self.train_samples > 1 && self.prior_warmup > 0 {
            return Err(Error::Config(format!(
                "vae.prior_warmup = {} trains against the standard normal's KL, one sample at a time: \
                 importance-weighted training (train_samples = {}) cannot be combined with it",
                self.prior_warmup, self.train_samples
            )));
        }
        at_most("values of the data", num_values, MAX_NUM_VALUES)?;
        if let PriorConfig::Arm {
            hidden,
            layers,
            kernel,
            n_mix,
        } = self.prior
        {
            if hidden == 0 || layers == 0 || kernel == 0 || n_mix == 0 {
                return Err(Error::Config(format!(
                    "vae.prior: hidden ({hidden}), layers ({layers}), kernel ({kernel}) and n_mix ({n_mix}) \
                     must be at least 1"
                )));
            }
            at_most("prior.hidden", hidden, MAX_WIDTH)?;
            at_most("prior.layers", layers, MAX_LAYERS)?;
            at_most("prior.n_mix", n_mix, MAX_COMPONENTS)?;
            // A kernel wider than the latents only ever reads padding there.
            at_most("prior.kernel (at most latents + 1)", kernel, self.latents + 1)?;
        }
        check(
            "vae parameters (estimated)",
            self.param_estimate(dim, num_values),
            MAX_PARAMS,
        )
    }

    /// The parameter count (exact) of the encoder, the book's dense decoder and the prior, from sizes already
    /// checked by `validate`'s limits (another decoder: its own estimate instead of the dense one's).
    pub fn param_estimate(&self, dim: usize, num_values: usize) -> u128 {
        let w = limits::wide;
        let (l, h, d) = (w(self.latents), w(self.hidden), w(dim));
        let dense = |i: u128, o: u128| i * o + o;
        let encoder = dense(d, h) + dense(h, h) + dense(h, 2 * l);
        let decoder = dense(l, h) + dense(h, h) + dense(h, d * w(num_values));
        let prior = match self.prior {
            PriorConfig::StandardNormal => 0,
            PriorConfig::Arm {
                hidden,
                layers,
                kernel,
                n_mix,
            } => {
                let (c, k, out) = (w(hidden), w(kernel), w(continuous_params(n_mix)));
                let conv = |i: u128, o: u128| i * o * k + o;
                match layers {
                    1 => conv(1, out),
                    n => conv(1, c) + w(n - 2) * conv(c, c) + conv(c, out),
                }
            }
        };
        encoder + decoder + prior
    }
}

fn continuous_params(n_mix: usize) -> usize {
    crate::likelihood::continuous::params_len(n_mix)
}

/// `n` standard normal draws, in `dtype`, from stream `stream` of the ChaCha8 generator of `seed`: Box–Muller
/// on two uniforms per draw, as the parameter store initialises. Each stream is its own sequence, so sample k
/// of an importance-weighted estimate reads stream k whatever the chunk it is computed in.
pub(crate) fn normal_noise(
    seed: u64,
    stream: u64,
    shape: (usize, usize),
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let values: Vec<f64> = (0..shape.0 * shape.1)
        .map(|_| {
            let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        })
        .collect();
    Ok(Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?)
}

/// ½·log 2π, so that log N(ε; 0, 1) = −½·ε² − HALF_LOG_TWO_PI.
pub(crate) const HALF_LOG_TWO_PI: f64 = 0.918_938_533_204_672_7;
