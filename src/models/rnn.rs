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

use super::{at_most, ArchFlags, Arithmetic, CausalNet, Family, InputEncoding, ModelConfig, Stepper};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::kernels::shifted_conv::TapPlan;
use crate::nn::{dropout, exact, linear, Linear, Mode, StepConv};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cell {
    Lstm,
    Gru,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub cell: Cell,
    pub hidden: usize,
    /// Size of the embedding of the previous value.
    pub embedding: usize,
}

impl Default for Config {
    /// The seed chapter's LSTM.
    fn default() -> Self {
        Self {
            cell: Cell::Lstm,
            hidden: 256,
            embedding: 32,
        }
    }
}

/// Dropout (the model's `dropout`) applies to the hidden states before the output layer, in training.
impl Family for Config {
    fn validate(&self, _m: &ModelConfig) -> Result<()> {
        at_most("hidden", self.hidden, limits::MAX_WIDTH)?;
        at_most("embedding", self.embedding, limits::MAX_WIDTH)?;
        if self.hidden == 0 || self.embedding == 0 {
            return Err(Error::Config("rnn: hidden and embedding must be at least 1".into()));
        }
        Ok(())
    }

    fn param_estimate(&self, m: &ModelConfig, out: u128) -> u128 {
        let w = limits::wide;
        let (e, h) = (w(self.embedding), w(self.hidden));
        (w(m.num_values) + 1) * e + 4 * (e * h + h * h + 2 * h) + h * out + out
    }

    fn activation_shape(&self, _m: &ModelConfig) -> (usize, usize, usize) {
        (5 * self.hidden + self.embedding, 1, 0)
    }

    fn build(&self, m: &ModelConfig, vb: VarBuilder) -> Result<Box<dyn CausalNet>> {
        Ok(Box::new(RnnNet::new(m, self, vb)?))
    }

    fn default_input(&self) -> Option<InputEncoding> {
        None
    }

    fn apply(&mut self, f: &ArchFlags) -> Result<()> {
        self.hidden = f.hidden.unwrap_or(self.hidden);
        f.refuse(
            "rnn",
            &[
                ("--kernel", f.kernel.is_some()),
                ("--dilations", f.dilations.is_some()),
                ("--layers", f.layers.is_some()),
            ],
        )
    }
}

enum Recurrence {
    Lstm(LSTM),
    Gru(GRU),
}

pub struct RnnNet {
    embed: Embedding,
    rnn: Recurrence,
    /// The cell's weights again (candle-nn's cells do not expose them), for the exact stepper:
    /// `weight_ih` `[G·H, E]`, `weight_hh` `[G·H, H]`, `bias_ih`, `bias_hh` `[G·H]` (G = 4 gates, or 3).
    cell_weights: [Tensor; 4],
    out: Linear,
    cfg: Config,
    m: ModelConfig,
}

impl RnnNet {
    /// Names follow PyTorch: `rnn.weight_ih_l0`, `rnn.weight_hh_l0`, `rnn.bias_ih_l0`, `rnn.bias_hh_l0`.
    pub fn new(m: &ModelConfig, cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate(m)?;
        let (e, h) = (cfg.embedding, cfg.hidden);
        let table =
            vb.pp("embed")
                .get_with_hints((m.num_values + 1, e), "weight", Init::Randn { mean: 0., stdev: 1. })?;
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
        let g = match cfg.cell {
            Cell::Lstm => 4,
            Cell::Gru => 3,
        };
        let rv = vb.pp("rnn");
        let cell_weights = [
            rv.get((g * h, e), "weight_ih_l0")?,
            rv.get((g * h, h), "weight_hh_l0")?,
            rv.get(g * h, "bias_ih_l0")?,
            rv.get(g * h, "bias_hh_l0")?,
        ];
        Ok(Self {
            embed: Embedding::new(table, e),
            rnn,
            cell_weights,
            out: linear(h, m.outputs_per_position(), vb.pp("out"))?,
            cfg: cfg.clone(),
            m: m.clone(),
        })
    }
}

impl CausalNet for RnnNet {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        use candle_core::Module;
        let (b, d) = x.dims2()?;
        // Inputs: [start, x_0, …, x_{D−2}]: position d reads x_{d−1}.
        let start = Tensor::full(self.m.num_values as u32, (b, 1), x.device())?;
        let prev = Tensor::cat(&[&start, &x.narrow(1, 0, d - 1)?], 1)?; // [B, D]
        let e = self.embed.forward(&prev)?; // [B, D, E]
                                            // The hidden state after each step, stacked along the sequence (candle-nn's GRU `states_to_tensor`
                                            // concatenates instead of stacking, so we stack ourselves).
        let hs: Vec<Tensor> = match &self.rnn {
            Recurrence::Lstm(r) => r.seq(&e)?.into_iter().map(|s| s.h).collect(),
            Recurrence::Gru(r) => r.seq(&e)?.into_iter().map(|s| s.h).collect(),
        };
        let h = Tensor::stack(&hs, 1)?; // [B, D, H]
        let h = dropout(&h, self.m.dropout, mode, 0)?;
        Ok(self.out.forward(&h)?) // [B, D, K]
    }

    fn receptive_field(&self) -> usize {
        self.m.dim()
    }

    /// The fast stepper runs candle-nn's cell; the exact one ([`ExactRnnStepper`]) the same cell in the codec's
    /// exact arithmetic.
    fn stepper(
        &self,
        batch: usize,
        _labels: Option<&[u32]>,
        arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        if arithmetic == Arithmetic::Exact {
            return Ok(Some(Box::new(ExactRnnStepper::new(self, batch)?)));
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
            None => Tensor::full(self.net.m.num_values as u32, self.batch, &dev)?, // the start token
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

/// The RNN stepped in exact arithmetic (`nn::exact`), for the codec: the embedding looked up, the cell's two
/// products and the output layer as exact 1×1 step convolutions, the gates with `libm`'s σ and tanh — candle-nn's
/// cell equations (PyTorch's gate order: i, f, g, o for the LSTM; r, z, n for the GRU).
pub struct ExactRnnStepper<'a> {
    net: &'a RnnNet,
    table: Vec<f32>, // [K + 1, E]
    ih: StepConv,
    hh: StepConv,
    out: StepConv,
    h: Vec<f32>, // [B][H]
    c: Vec<f32>, // [B][H], the LSTM's cell state
    batch: usize,
}

impl<'a> ExactRnnStepper<'a> {
    fn new(net: &'a RnnNet, batch: usize) -> Result<Self> {
        let plan = TapPlan::causal_1d(1, 1, 0);
        let dense = |w: &Tensor, b: &Tensor| -> Result<StepConv> {
            Ok(StepConv::new(w, Some(b), &plan, (1, 1), batch)?.with_arithmetic(Arithmetic::Exact))
        };
        let [w_ih, w_hh, b_ih, b_hh] = &net.cell_weights;
        let h = net.cfg.hidden;
        Ok(Self {
            net,
            table: net
                .embed
                .embeddings()
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?,
            ih: dense(w_ih, b_ih)?,
            hh: dense(w_hh, b_hh)?,
            out: dense(net.out.weight(), net.out.bias())?,
            h: vec![0.0; batch * h],
            c: vec![0.0; batch * h],
            batch,
        })
    }
}

impl Stepper for ExactRnnStepper<'_> {
    fn step(&mut self, prev: Option<&[u32]>) -> Result<Vec<Vec<f32>>> {
        let (e, h, k) = (self.net.cfg.embedding, self.net.cfg.hidden, self.net.m.num_values);
        let tokens: Vec<usize> = match prev {
            Some(p) => p.iter().map(|&v| v as usize).collect(),
            None => vec![k; self.batch], // the start token
        };
        let x: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| self.table[t * e..(t + 1) * e].iter().copied())
            .collect();
        let (xi, hh) = (self.ih.pointwise(&x), self.hh.pointwise(&self.h)); // [B][G·H] each
        let g = xi.len() / self.batch;
        for b in 0..self.batch {
            let (xi, hh) = (&xi[b * g..(b + 1) * g], &hh[b * g..(b + 1) * g]);
            let (hb, cb) = (&mut self.h[b * h..(b + 1) * h], &mut self.c[b * h..(b + 1) * h]);
            match self.net.cfg.cell {
                Cell::Lstm => {
                    for j in 0..h {
                        let pre = |gate: usize| xi[gate * h + j] + hh[gate * h + j];
                        let (i, f) = (exact::sigmoid(pre(0)), exact::sigmoid(pre(1)));
                        let (cell, o) = (libm::tanhf(pre(2)), exact::sigmoid(pre(3)));
                        cb[j] = f * cb[j] + i * cell;
                        hb[j] = o * libm::tanhf(cb[j]);
                    }
                }
                Cell::Gru => {
                    for j in 0..h {
                        let r = exact::sigmoid(xi[j] + hh[j]);
                        let z = exact::sigmoid(xi[h + j] + hh[h + j]);
                        let n = libm::tanhf(xi[2 * h + j] + r * hh[2 * h + j]);
                        hb[j] = z * hb[j] - (z - 1.0) * n;
                    }
                }
            }
        }
        let p = self.net.m.outputs_per_position();
        Ok(self.out.pointwise(&self.h).chunks(p).map(|r| r.to_vec()).collect())
    }
}
