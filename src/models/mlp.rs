//! The seed chapter's finite-memory ARM: θ_d = MLP(x_{d−1}, …, x_{d−m}), one shared MLP for every position,
//! `[x_{d−1}, x_{d−2}] → Linear(2, M) → ReLU → Linear(M, K) → softmax` for memory m = 2.
//! Positions before the start read zeros (the padding value).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{at_most, ArchFlags, Arithmetic, CausalNet, Family, ModelConfig, Stepper};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::kernels::shifted_conv::TapPlan;
use crate::nn::step::relu_in_place;
use crate::nn::{dropout, linear, Linear, Mode, StepConv};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How many previous values θ_d sees (the seed: 2).
    pub memory: usize,
    /// Hidden units M (the seed: 300).
    pub hidden: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self { memory: 2, hidden: 300 }
    }
}

impl Family for Config {
    fn validate(&self, _m: &ModelConfig) -> Result<()> {
        at_most("hidden", self.hidden, limits::MAX_WIDTH)?;
        at_most("memory", self.memory, limits::MAX_DIM)?;
        if self.memory == 0 || self.hidden == 0 {
            return Err(Error::Config("mlp: memory and hidden must be at least 1".into()));
        }
        Ok(())
    }

    fn param_estimate(&self, m: &ModelConfig, out: u128) -> u128 {
        let w = limits::wide;
        let (cin, h) = (w(m.input.channels(m.num_values)), w(self.hidden));
        w(self.memory) * cin * h + h + h * out + out
    }

    fn activation_shape(&self, m: &ModelConfig) -> (usize, usize, usize) {
        (self.hidden + self.memory * m.input.channels(m.num_values), 1, 0)
    }

    fn build(&self, m: &ModelConfig, vb: VarBuilder) -> Result<Box<dyn CausalNet>> {
        Ok(Box::new(MlpNet::new(m, self, vb)?))
    }

    fn apply(&mut self, f: &ArchFlags) -> Result<()> {
        self.hidden = f.hidden.unwrap_or(self.hidden);
        f.refuse(
            "mlp",
            &[
                ("--kernel", f.kernel.is_some()),
                ("--dilations", f.dilations.is_some()),
                ("--layers", f.layers.is_some()),
            ],
        )
    }
}

pub struct MlpNet {
    hidden: Linear,
    out: Linear,
    cfg: Config,
    m: ModelConfig,
}

impl MlpNet {
    pub fn new(m: &ModelConfig, cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate(m)?;
        let c = m.input.channels(m.num_values);
        Ok(Self {
            hidden: linear(cfg.memory * c, cfg.hidden, vb.pp("hidden"))?,
            out: linear(cfg.hidden, m.outputs_per_position(), vb.pp("out"))?,
            cfg: cfg.clone(),
            m: m.clone(),
        })
    }
}

impl CausalNet for MlpNet {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let dtype = self.out.weight().dtype();
        let (_, d) = x.dims2()?;
        let e = self.m.input.encode(x, self.m.num_values, dtype)?; // [B, D, C]
                                                                   // Lag i: position t reads x_{t−i}, zeros before the start.
        let lags = (1..=self.cfg.memory)
            .map(|i| Ok(e.pad_with_zeros(1, i, 0)?.narrow(1, 0, d)?))
            .collect::<Result<Vec<_>>>()?;
        let window = Tensor::cat(&lags, 2)?; // [B, D, m·C]
        let h = dropout(&self.hidden.forward(&window)?.relu()?, self.m.dropout, mode, 0)?; // [B, D, M]
        Ok(self.out.forward(&h)?) // [B, D, P]
    }

    fn receptive_field(&self) -> usize {
        self.cfg.memory.min(self.m.dim())
    }

    fn stepper(
        &self,
        batch: usize,
        _labels: Option<&[u32]>,
        arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        // Before the start the window holds zeros, as the forward pass pads.
        let width = self.cfg.memory * self.m.input.channels(self.m.num_values);
        // The exact path runs both layers as 1×1 step convolutions, whose product has an exact mode.
        let pointwise = |l: &Linear| -> Result<StepConv> {
            let plan = TapPlan::causal_1d(1, 1, 0);
            Ok(StepConv::new(l.weight(), Some(l.bias()), &plan, (1, 1), batch)?.with_arithmetic(arithmetic))
        };
        let exact = match arithmetic {
            Arithmetic::Fast => None,
            Arithmetic::Exact => Some((pointwise(&self.hidden)?, pointwise(&self.out)?)),
        };
        Ok(Some(Box::new(MlpStepper {
            net: self,
            window: vec![vec![0.0; width]; batch],
            exact,
        })))
    }
}

/// Stepping the finite-memory MLP: a window of the last m encoded values.
pub struct MlpStepper<'a> {
    net: &'a MlpNet,
    window: Vec<Vec<f32>>,               // per example, lag 1 first: [x_{t−1}, …, x_{t−m}] encoded
    exact: Option<(StepConv, StepConv)>, // the two layers in exact arithmetic, for the codec
}

impl Stepper for MlpStepper<'_> {
    fn step(&mut self, prev: Option<&[u32]>) -> Result<Vec<Vec<f32>>> {
        let (cfg, m) = (&self.net.cfg, &self.net.m);
        if let Some(prev) = prev {
            let c = m.input.channels(m.num_values);
            let enc = m.input.encode_values(prev, m.num_values); // [B][C]
            for (i, w) in self.window.iter_mut().enumerate() {
                // Shift the window by one lag and put x_{t−1} first.
                w.truncate((cfg.memory - 1) * c);
                w.splice(0..0, enc[i * c..(i + 1) * c].iter().copied());
            }
        }
        if let Some((hidden, out)) = &self.exact {
            let mut h = hidden.pointwise(&self.window.concat());
            relu_in_place(&mut h);
            return Ok(out
                .pointwise(&h)
                .chunks(m.outputs_per_position())
                .map(|r| r.to_vec())
                .collect());
        }
        let dev = self.net.out.weight().device();
        let (b, width) = (self.window.len(), self.window[0].len());
        let x = Tensor::from_vec(self.window.concat(), (b, width), dev)?.to_dtype(self.net.out.weight().dtype())?;
        let h = self.net.hidden.forward(&x)?.relu()?;
        Ok(self
            .net
            .out
            .forward(&h)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?)
    }
}
