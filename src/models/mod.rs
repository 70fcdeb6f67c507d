//! An ARM is a causal network + a per-dimension distribution + an ordering (raster order, here):
//! p(x) = Π_d p(x_d | θ_d(x_<d)). One file per network family; this file holds the shared interface.

pub mod causal_conv;
pub mod mlp;
pub mod rnn;
pub mod wavenet;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::likelihood::Likelihood;
pub use crate::nn::Mode;
use crate::params::ParamStore;

/// The shared causal network of an ARM.
pub trait CausalNet: Send + Sync {
    /// x `[B, D]` (u32 values) → θ `[B, D, P]`, where row d depends only on x_<d.
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor>;
    /// How many previous positions θ_d can see (D if all of them).
    fn receptive_field(&self) -> usize;
}

/// How integer values enter the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InputEncoding {
    /// The value as a float, unscaled (the seed's choice): one channel.
    #[default]
    Raw,
    /// The value divided by K−1, in [0, 1]: one channel.
    Scaled,
    /// A one-hot vector: K channels.
    OneHot,
}

impl InputEncoding {
    pub fn channels(&self, num_values: usize) -> usize {
        match self {
            InputEncoding::OneHot => num_values,
            _ => 1,
        }
    }

    /// x `[B, D]` (u32) → `[B, D, C]` in `dtype`, channels-last.
    pub fn encode(&self, x: &Tensor, num_values: usize, dtype: DType) -> Result<Tensor> {
        let xf = x.to_dtype(dtype)?.unsqueeze(2)?;
        Ok(match self {
            InputEncoding::Raw => xf,
            InputEncoding::Scaled => (xf / (num_values.max(2) - 1) as f64)?,
            InputEncoding::OneHot => {
                let values = Tensor::arange(0u32, num_values as u32, x.device())?;
                x.unsqueeze(2)?
                    .broadcast_eq(&values.reshape((1, 1, num_values))?)?
                    .to_dtype(dtype)?
            }
        })
    }
}

/// Every model family, chosen by `kind = "..."` in a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelConfig {
    /// The seed chapter's stack of causal 1-D convolutions (optionally dilated).
    CausalConv(causal_conv::Config),
    /// Finite memory: an MLP of the last m values.
    Mlp(mlp::Config),
    /// LSTM or GRU over the previous values.
    Rnn(rnn::Config),
    /// Gated residual blocks of dilated causal convolutions.
    Wavenet(wavenet::Config),
}

/// Dropout probabilities live in [0, 1).
pub(crate) fn check_dropout(p: f64) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::Config(format!("dropout = {p} must be in [0, 1)")));
    }
    Ok(())
}

impl ModelConfig {
    /// Rejects settings that cannot be built or that would break causality.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::CausalConv(c) => c.validate(),
            ModelConfig::Mlp(c) => c.validate(),
            ModelConfig::Rnn(c) => c.validate(),
            ModelConfig::Wavenet(c) => c.validate(),
        }
    }
    pub fn num_values(&self) -> usize {
        match self {
            ModelConfig::CausalConv(c) => c.num_values,
            ModelConfig::Mlp(c) => c.num_values,
            ModelConfig::Rnn(c) => c.num_values,
            ModelConfig::Wavenet(c) => c.num_values,
        }
    }
    pub fn dim(&self) -> usize {
        match self {
            ModelConfig::CausalConv(c) => c.length,
            ModelConfig::Mlp(c) => c.length,
            ModelConfig::Rnn(c) => c.length,
            ModelConfig::Wavenet(c) => c.length,
        }
    }
    pub fn likelihood(&self) -> Likelihood {
        Likelihood::Categorical {
            num_values: self.num_values(),
        }
    }
    /// The dropout probability of the model, whatever its family.
    pub fn dropout_mut(&mut self) -> &mut f64 {
        match self {
            ModelConfig::CausalConv(c) => &mut c.dropout,
            ModelConfig::Mlp(c) => &mut c.dropout,
            ModelConfig::Rnn(c) => &mut c.dropout,
            ModelConfig::Wavenet(c) => &mut c.dropout,
        }
    }
}

/// An autoregressive model: a causal network, a likelihood, and the parameters they read.
pub struct Arm {
    config: ModelConfig,
    net: Box<dyn CausalNet>,
    likelihood: Likelihood,
    params: ParamStore,
    device: Device,
}

/// How a batch loss reduces over examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    Mean,
    Sum,
}

impl Arm {
    /// Builds the model of `config` with fresh parameters drawn from `seed`.
    pub fn new(config: &ModelConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        config.validate()?;
        let params = ParamStore::new(seed);
        let vb = params.var_builder(dtype, device);
        let net: Box<dyn CausalNet> = match config {
            ModelConfig::CausalConv(c) => Box::new(causal_conv::CausalConvNet::new(c, vb)?),
            ModelConfig::Mlp(c) => Box::new(mlp::MlpNet::new(c, vb)?),
            ModelConfig::Rnn(c) => Box::new(rnn::RnnNet::new(c, vb)?),
            ModelConfig::Wavenet(c) => Box::new(wavenet::WaveNet::new(c, vb)?),
        };
        Ok(Self {
            config: config.clone(),
            net,
            likelihood: config.likelihood(),
            params,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn params(&self) -> &ParamStore {
        &self.params
    }
    pub fn likelihood(&self) -> &Likelihood {
        &self.likelihood
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// D, the number of dimensions of one example.
    pub fn dim(&self) -> usize {
        self.config.dim()
    }
    /// K, the number of values each dimension takes.
    pub fn num_values(&self) -> usize {
        self.likelihood.num_values()
    }
    pub fn receptive_field(&self) -> usize {
        self.net.receptive_field()
    }

    /// Checks that x is `[B, D]` with values in 0..K.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let (_, d) = x.dims2()?;
        if d != self.dim() {
            return Err(Error::Config(format!(
                "input has {d} dimensions, the model has {}",
                self.dim()
            )));
        }
        let values = x.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        if let Some((i, &v)) = values
            .iter()
            .enumerate()
            .find(|(_, &v)| v as usize >= self.num_values())
        {
            return Err(Error::ValueOutOfRange {
                value: v as i64,
                position: i % d,
                k: self.num_values(),
            });
        }
        Ok(())
    }

    /// θ for every position: x `[B, D]` (u32) → `[B, D, P]`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.net.forward(x, mode)
    }

    /// log p(x) in nats: x `[B, D]` (u32) → `[B]`.
    pub fn log_prob(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        self.likelihood.log_prob(&self.net.forward(x, Mode::Eval)?, x)
    }

    /// The training objective, −log p(x) reduced over the batch (values are assumed checked at load time).
    pub fn loss(&self, x: &Tensor, reduction: Reduction, mode: Mode) -> Result<Tensor> {
        let nll = self.likelihood.log_prob(&self.net.forward(x, mode)?, x)?.neg()?;
        Ok(match reduction {
            Reduction::Mean => nll.mean_all()?,
            Reduction::Sum => nll.sum_all()?,
        })
    }
}
