//! No autoregression: θ for every position from the context vector alone, through an MLP
//! (context → hidden → … → D·P, LeakyReLU between layers). Each position's distribution ignores the values
//! before it — a degenerate ARM with receptive field 0, and what a VAE's decoder is: p(x | z) = Π_d p(x_d | z)
//! (the book's VAE: 16 → 256 → 256 → 64·17 logits).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{at_most, check_context, ArchFlags, Arithmetic, CausalNet, Family, ModelConfig, Stepper};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::{dropout, leaky_relu, linear, Linear, Mode};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Units of each hidden layer.
    pub hidden: usize,
    /// Hidden layers between the context and the output.
    pub layers: usize,
}

impl Default for Config {
    /// The book's VAE decoder: two hidden layers of 256.
    fn default() -> Self {
        Self { hidden: 256, layers: 2 }
    }
}

const SLOPE: f64 = 0.01;

/// The context (the model's `context`, at least 1) is the only input; dropout (the model's) follows each
/// hidden activation in training.
impl Family for Config {
    fn validate(&self, m: &ModelConfig) -> Result<()> {
        at_most("hidden", self.hidden, limits::MAX_WIDTH)?;
        at_most("layers", self.layers, limits::MAX_LAYERS)?;
        if self.hidden == 0 {
            return Err(Error::Config("dense: hidden must be at least 1".into()));
        }
        if m.context == 0 {
            return Err(Error::Config(
                "dense: the network reads only its context vector, and context = 0; it is the decoder of a \
                 latent-variable model (give a [latent] section)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn param_estimate(&self, m: &ModelConfig, out: u128) -> u128 {
        let w = limits::wide;
        let (e, h) = (w(m.context), w(self.hidden));
        (e + 1) * h + w(self.layers) * (h + 1) * h + (h + 1) * out * w(m.dim())
    }

    fn activation_shape(&self, m: &ModelConfig) -> (usize, usize, usize) {
        // Per example, not per position: spread over the D positions the estimate multiplies by.
        (self.hidden.div_ceil(m.dim().max(1)) + 1, self.layers + 1, 0)
    }

    fn build(&self, m: &ModelConfig, vb: VarBuilder) -> Result<Box<dyn CausalNet>> {
        Ok(Box::new(DenseNet::new(m, self, vb)?))
    }

    fn default_input(&self) -> Option<super::InputEncoding> {
        None
    }

    fn takes_context(&self) -> bool {
        true
    }

    fn apply(&mut self, f: &ArchFlags) -> Result<()> {
        self.hidden = f.hidden.unwrap_or(self.hidden);
        self.layers = f.layers.unwrap_or(self.layers);
        f.refuse(
            "dense",
            &[("--kernel", f.kernel.is_some()), ("--dilations", f.dilations.is_some())],
        )
    }
}

pub struct DenseNet {
    hidden: Vec<Linear>,
    out: Linear,
    m: ModelConfig,
}

impl DenseNet {
    /// Weights `hidden.{i}.{weight,bias}` and `out.{weight,bias}`.
    pub fn new(m: &ModelConfig, cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate(m)?;
        let mut hidden = vec![];
        let mut width = m.context;
        for i in 0..cfg.layers {
            hidden.push(linear(width, cfg.hidden, vb.pp("hidden").pp(i))?);
            width = cfg.hidden;
        }
        let out = linear(width, m.dim() * m.outputs_per_position(), vb.pp("out"))?;
        Ok(Self {
            hidden,
            out,
            m: m.clone(),
        })
    }

    /// θ `[B, D, P]` from the context `[B, E]`.
    fn theta(&self, context: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut h = context.to_dtype(self.out.weight().dtype())?;
        for (i, layer) in self.hidden.iter().enumerate() {
            h = dropout(&leaky_relu(&layer.forward(&h)?, SLOPE)?, self.m.dropout, mode, i as u64)?;
        }
        Ok(self.out.forward(&h)?.reshape((context.dim(0)?, self.m.dim(), ()))?)
    }
}

impl CausalNet for DenseNet {
    fn receptive_field(&self) -> usize {
        0
    }

    fn forward(&self, x: &Tensor, labels: Option<&Tensor>, context: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        super::check_labels(None, labels, x.dim(0)?)?;
        check_context(self.m.context, context, x.dim(0)?)?;
        self.theta(context.expect("checked"), mode)
    }

    fn stepper(
        &self,
        batch: usize,
        _labels: Option<&[u32]>,
        context: Option<&[f32]>,
        arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        if arithmetic == Arithmetic::Exact {
            return Err(Error::NoExactMode("the dense decoder".into()));
        }
        let context = context.ok_or_else(|| Error::Internal("the dense decoder needs its context".into()))?;
        let device = self.out.weight().device();
        let c = Tensor::from_slice(context, (batch, self.m.context), device)?;
        let theta = self
            .theta(&c, Mode::Eval)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec3::<f32>()?;
        Ok(Some(Box::new(DenseStepper { theta, d: 0 })))
    }
}

/// The dense network stepped: θ of every position is known from the start; each step hands out the next.
struct DenseStepper {
    theta: Vec<Vec<Vec<f32>>>, // [B][D][P]
    d: usize,
}

impl Stepper for DenseStepper {
    fn step(&mut self, _prev: Option<&[u32]>) -> Result<Vec<Vec<f32>>> {
        let d = self.d;
        self.d += 1;
        Ok(self.theta.iter().map(|rows| rows[d].clone()).collect())
    }
}
