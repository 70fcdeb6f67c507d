//! A recurrent ARM (Sutskever et al. 2011): p(x_d | x_<d) = p(x_d | RNN(x_{d−1}, h_{d−1})), with LSTM
//! (Hochreiter & Schmidhuber 1997) or GRU (Chung et al. 2014) cells and unbounded memory.
//!
//! Input: the previous value through a learned embedding, with an extra "start" token (index K) at d = 0.
//! An embedding is a one-hot vector times a matrix, computed as a lookup; the start token says "nothing yet"
//! instead of pretending x_0 was preceded by the value 0. Exploding gradients: use the trainer's `grad_clip`.

use candle_core::Tensor;
use candle_nn::rnn::{GRUConfig, LSTMConfig, GRU, LSTM, RNN};
use candle_nn::{Embedding, Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::{Arithmetic, CausalNet, Stepper};
use crate::error::{Error, Result};
use crate::nn::{dropout, linear, Linear, Mode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cell {
    Lstm,
    Gru,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub num_values: usize,
    pub length: usize,
    pub cell: Cell,
    pub hidden: usize,
    /// Size of the embedding of the previous value.
    pub embedding: usize,
    /// Dropout on the hidden states before the output layer, in training.
    #[serde(default)]
    pub dropout: f64,
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        if self.num_values < 2 || self.length == 0 || self.hidden == 0 || self.embedding == 0 {
            return Err(Error::Config(
                "rnn: num_values ≥ 2; length, hidden and embedding ≥ 1".into(),
            ));
        }
        super::check_dropout(self.dropout)
    }
}

enum Recurrence {
    Lstm(LSTM),
    Gru(GRU),
}

pub struct RnnNet {
    embed: Embedding,
    rnn: Recurrence,
    out: Linear,
    cfg: Config,
}

impl RnnNet {
    /// Names follow PyTorch: `rnn.weight_ih_l0`, `rnn.weight_hh_l0`, `rnn.bias_ih_l0`, `rnn.bias_hh_l0`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (e, h) = (cfg.embedding, cfg.hidden);
        let table =
            vb.pp("embed")
                .get_with_hints((cfg.num_values + 1, e), "weight", Init::Randn { mean: 0., stdev: 1. })?;
        // PyTorch's initialisation: every weight and bias uniform in ±1/√hidden.
        let u = Init::Uniform {
            lo: -1.0 / (h as f64).sqrt(),
            up: 1.0 / (h as f64).sqrt(),
        };
        let rnn = match cfg.cell {
            Cell::Lstm => {
                let c = LSTMConfig {
                    w_ih_init: u,
                    w_hh_init: u,
                    b_ih_init: Some(u),
                    b_hh_init: Some(u),
                    ..Default::default()
                };
                Recurrence::Lstm(candle_nn::rnn::lstm(e, h, c, vb.pp("rnn"))?)
            }
            Cell::Gru => {
                let c = GRUConfig {
                    w_ih_init: u,
                    w_hh_init: u,
                    b_ih_init: Some(u),
                    b_hh_init: Some(u),
                };
                Recurrence::Gru(candle_nn::rnn::gru(e, h, c, vb.pp("rnn"))?)
            }
        };
        Ok(Self {
            embed: Embedding::new(table, e),
            rnn,
            out: linear(h, cfg.num_values, vb.pp("out"))?,
            cfg: cfg.clone(),
        })
    }
}

impl CausalNet for RnnNet {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        use candle_core::Module;
        let (b, d) = x.dims2()?;
        // Inputs: [start, x_0, …, x_{D−2}]: position d reads x_{d−1}.
        let start = Tensor::full(self.cfg.num_values as u32, (b, 1), x.device())?;
        let prev = Tensor::cat(&[&start, &x.narrow(1, 0, d - 1)?], 1)?; // [B, D]
        let e = self.embed.forward(&prev)?; // [B, D, E]
                                            // The hidden state after each step, stacked along the sequence (candle-nn's GRU `states_to_tensor`
                                            // concatenates instead of stacking, so we stack ourselves).
        let hs: Vec<Tensor> = match &self.rnn {
            Recurrence::Lstm(r) => r.seq(&e)?.into_iter().map(|s| s.h).collect(),
            Recurrence::Gru(r) => r.seq(&e)?.into_iter().map(|s| s.h).collect(),
        };
        let h = Tensor::stack(&hs, 1)?; // [B, D, H]
        let h = dropout(&h, self.cfg.dropout, mode, 0)?;
        Ok(self.out.forward(&h)?) // [B, D, K]
    }

    fn receptive_field(&self) -> usize {
        self.cfg.length
    }

    /// No exact mode: the cell steps through candle's ops (gemm and the platform's `exp`).
    fn stepper(
        &self,
        batch: usize,
        _labels: Option<&[u32]>,
        arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        if arithmetic == Arithmetic::Exact {
            return Err(crate::error::Error::NoExactMode(
                format!("the {:?} family", self.cfg.cell).to_lowercase(),
            ));
        }
        let state = match &self.rnn {
            Recurrence::Lstm(r) => RnnState::Lstm(r.zero_state(batch)?),
            Recurrence::Gru(r) => RnnState::Gru(r.zero_state(batch)?),
        };
        Ok(Some(Box::new(RnnStepper {
            net: self,
            state,
            batch,
        })))
    }
}

enum RnnState {
    Lstm(candle_nn::rnn::LSTMState),
    Gru(candle_nn::rnn::GRUState),
}

/// Stepping an RNN is native: one cell step per position, the state carried along.
pub struct RnnStepper<'a> {
    net: &'a RnnNet,
    state: RnnState,
    batch: usize,
}

impl Stepper for RnnStepper<'_> {
    fn step(&mut self, prev: Option<&[u32]>) -> Result<Vec<Vec<f32>>> {
        use candle_core::Module;
        let dev = self.net.out.weight().device().clone();
        let tokens = match prev {
            Some(p) => Tensor::from_slice(p, p.len(), &dev)?,
            None => Tensor::full(self.net.cfg.num_values as u32, self.batch, &dev)?, // the start token
        };
        let e = self.net.embed.forward(&tokens)?; // [B, E]
        let h = match (&self.net.rnn, &self.state) {
            (Recurrence::Lstm(r), RnnState::Lstm(s)) => {
                let s = r.step(&e, s)?;
                let h = s.h.clone();
                self.state = RnnState::Lstm(s);
                h
            }
            (Recurrence::Gru(r), RnnState::Gru(s)) => {
                let s = r.step(&e, s)?;
                let h = s.h.clone();
                self.state = RnnState::Gru(s);
                h
            }
            _ => unreachable!("the state matches the cell"),
        };
        Ok(self
            .net
            .out
            .forward(&h)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?)
    }
}
