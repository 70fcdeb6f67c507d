//! The seed chapter's finite-memory ARM: θ_d = MLP(x_{d−1}, …, x_{d−m}), one shared MLP for every position,
//! `[x_{d−1}, x_{d−2}] → Linear(2, M) → ReLU → Linear(M, K) → softmax` for memory m = 2.
//! Positions before the start read zeros (the padding value).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{Arithmetic, CausalNet, InputEncoding, Stepper};
use crate::error::{Error, Result};
use crate::nn::kernels::shifted_conv::TapPlan;
use crate::nn::step::relu_in_place;
use crate::nn::{dropout, linear, Linear, Mode, StepConv};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub num_values: usize,
    pub length: usize,
    /// How many previous values θ_d sees (the seed: 2).
    pub memory: usize,
    /// Hidden units M (the seed: 300).
    pub hidden: usize,
    #[serde(default)]
    pub input: InputEncoding,
    #[serde(default)]
    pub dropout: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            num_values: 17,
            length: 64,
            memory: 2,
            hidden: 300,
            input: InputEncoding::Raw,
            dropout: 0.0,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        if self.num_values < 2 || self.length == 0 || self.memory == 0 || self.hidden == 0 {
            return Err(Error::Config(
                "mlp: num_values ≥ 2, and length, memory and hidden ≥ 1".into(),
            ));
        }
        super::check_dropout(self.dropout)
    }
}

pub struct MlpNet {
    hidden: Linear,
    out: Linear,
    cfg: Config,
}

impl MlpNet {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let c = cfg.input.channels(cfg.num_values);
        Ok(Self {
            hidden: linear(cfg.memory * c, cfg.hidden, vb.pp("hidden"))?,
            out: linear(cfg.hidden, cfg.num_values, vb.pp("out"))?,
            cfg: cfg.clone(),
        })
    }
}

impl CausalNet for MlpNet {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let dtype = self.out.weight().dtype();
        let (_, d) = x.dims2()?;
        let e = self.cfg.input.encode(x, self.cfg.num_values, dtype)?; // [B, D, C]
                                                                       // Lag i: position t reads x_{t−i}, zeros before the start.
        let lags = (1..=self.cfg.memory)
            .map(|i| Ok(e.pad_with_zeros(1, i, 0)?.narrow(1, 0, d)?))
            .collect::<Result<Vec<_>>>()?;
        let window = Tensor::cat(&lags, 2)?; // [B, D, m·C]
        let h = dropout(&self.hidden.forward(&window)?.relu()?, self.cfg.dropout, mode, 0)?; // [B, D, M]
        Ok(self.out.forward(&h)?) // [B, D, K]
    }

    fn receptive_field(&self) -> usize {
        self.cfg.memory.min(self.cfg.length)
    }

    fn stepper(
        &self,
        batch: usize,
        _labels: Option<&[u32]>,
        arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        // Before the start the window holds zeros, as the forward pass pads.
        let width = self.cfg.memory * self.cfg.input.channels(self.cfg.num_values);
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
        let cfg = &self.net.cfg;
        if let Some(prev) = prev {
            let c = cfg.input.channels(cfg.num_values);
            let enc = cfg.input.encode_values(prev, cfg.num_values); // [B][C]
            for (i, w) in self.window.iter_mut().enumerate() {
                // Shift the window by one lag and put x_{t−1} first.
                w.truncate((cfg.memory - 1) * c);
                w.splice(0..0, enc[i * c..(i + 1) * c].iter().copied());
            }
        }
        if let Some((hidden, out)) = &self.exact {
            let mut h = hidden.pointwise(&self.window.concat());
            relu_in_place(&mut h);
            return Ok(out.pointwise(&h).chunks(cfg.num_values).map(|r| r.to_vec()).collect());
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
