//! A recurrent ARM (Sutskever et al. 2011): p(x_d | x_<d) = p(x_d | RNN(x_{d−1}, h_{d−1})), with LSTM
//! (Hochreiter & Schmidhuber 1997) or GRU (Chung et al. 2014) cells and unbounded memory.
//!
//! Input: the previous value through a learned embedding, with an extra "start" token (index K) at d = 0.
//! An embedding is a one-hot vector times a matrix, computed as a lookup; the start token says "nothing yet"
//! instead of pretending x_0 was preceded by the value 0. Exploding gradients: use the trainer's `grad_clip`.

use candle_core::Tensor;
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

/// The cell's weights, named as PyTorch names them: `rnn.weight_ih_l0` `[G·H, E]`, `rnn.weight_hh_l0`
/// `[G·H, H]`, `rnn.bias_ih_l0` and `rnn.bias_hh_l0` `[G·H]`, G = 4 gates (an LSTM's i, f, g, o) or 3 (a GRU's
/// r, z, n), in PyTorch's order.
struct CellWeights {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
}

pub struct RnnNet {
    embed: Embedding,
    cell: CellWeights,
    out: Linear,
    cfg: Config,
    m: ModelConfig,
}

impl RnnNet {
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
        let g = match cfg.cell {
            Cell::Lstm => 4,
            Cell::Gru => 3,
        };
        let rv = vb.pp("rnn");
        let cell = CellWeights {
            w_ih: rv.get_with_hints((g * h, e), "weight_ih_l0", u)?,
            w_hh: rv.get_with_hints((g * h, h), "weight_hh_l0", u)?,
            b_ih: rv.get_with_hints(g * h, "bias_ih_l0", u)?,
            b_hh: rv.get_with_hints(g * h, "bias_hh_l0", u)?,
        };
        Ok(Self {
            embed: Embedding::new(table, e),
            cell,
            out: linear(h, m.outputs_per_position(), vb.pp("out"))?,
            cfg: cfg.clone(),
            m: m.clone(),
        })
    }

    /// The state before the first step, zeros: h (and c, which only the LSTM reads) `[B, H]`.
    fn zero_state(&self, batch: usize) -> Result<CellState<Tensor>> {
        let w = &self.cell.w_ih;
        Ok(CellState::zeros(
            Tensor::zeros((batch, self.cfg.hidden), w.dtype(), w.device())?.contiguous()?,
        ))
    }
}

impl CausalNet for RnnNet {
    fn forward(&self, x: &Tensor, labels: Option<&Tensor>, context: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        use candle_core::{IndexOp, Module};
        super::unconditioned(labels, context)?;
        let (b, d) = x.dims2()?;
        // Inputs: [start, x_0, …, x_{D−2}]: position d reads x_{d−1}.
        let start = Tensor::full(self.m.num_values as u32, (b, 1), x.device())?;
        let prev = Tensor::cat(&[&start, &x.narrow(1, 0, d - 1)?], 1)?; // [B, D]
        let e = self.embed.forward(&prev)?; // [B, D, E]
        let ops = Tensors(self);
        let mut state = self.zero_state(b)?;
        let mut hs = Vec::with_capacity(d); // the hidden state after each step
        for t in 0..d {
            state = cell_step(self.cfg.cell, &ops, &e.i((.., t, ..))?.contiguous()?, &state)?;
            hs.push(state.h.clone());
        }
        let h = Tensor::stack(&hs, 1)?; // [B, D, H]
        let h = dropout(&h, self.m.dropout, mode, 0)?;
        Ok(self.out.forward(&h)?) // [B, D, K]
    }

    fn receptive_field(&self) -> usize {
        self.m.dim().saturating_sub(1)
    }

    /// Stepping is native to an RNN: one cell step per position, the state carried along — the forward
    /// pass's tensor operations on the fast path, plain rows in the codec's exact arithmetic on the exact one.
    fn stepper(
        &self,
        batch: usize,
        _labels: Option<&[u32]>,
        context: Option<&[f32]>,
        arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        super::no_context(context.is_some())?;
        let stepper: Box<dyn Stepper + '_> = match arithmetic {
            Arithmetic::Fast => Box::new(RnnStepper {
                net: self,
                ops: Tensors(self),
                state: self.zero_state(batch)?,
                batch,
            }),
            Arithmetic::Exact => Box::new(RnnStepper {
                net: self,
                ops: ExactRows::new(self, batch)?,
                state: CellState::zeros(vec![0.0; batch * self.cfg.hidden]),
                batch,
            }),
        };
        Ok(Some(stepper))
    }
}

/// A cell's state: h, and the LSTM's cell state c (a GRU carries it unread).
struct CellState<V> {
    h: V,
    c: V,
}

impl<V: Clone> CellState<V> {
    fn zeros(zeros: V) -> Self {
        Self {
            h: zeros.clone(),
            c: zeros,
        }
    }
}

/// The operations the cell ([`cell_step`]) is written in, on a batch of rows `[B, n]`: candle's tensor
/// operations ([`Tensors`]: the forward pass, with gradients, and the fast stepper), or rows of f32 in the
/// codec's exact arithmetic ([`ExactRows`]), elementwise in plain f32 with `libm`'s tanh.
trait CellOps {
    type V: Clone;
    /// `x·W_ihᵀ + b_ih`, `[B, E]` → `[B, G·H]`.
    fn input_product(&self, x: &Self::V) -> Result<Self::V>;
    /// `h·W_hhᵀ + b_hh`, `[B, H]` → `[B, G·H]`.
    fn hidden_product(&self, h: &Self::V) -> Result<Self::V>;
    /// `[B, n·H]` → n blocks `[B, H]`.
    fn chunk(&self, x: &Self::V, n: usize) -> Result<Vec<Self::V>>;
    fn add(&self, a: &Self::V, b: &Self::V) -> Result<Self::V>;
    fn sub(&self, a: &Self::V, b: &Self::V) -> Result<Self::V>;
    fn mul(&self, a: &Self::V, b: &Self::V) -> Result<Self::V>;
    /// a − 1.
    fn minus_one(&self, a: &Self::V) -> Result<Self::V>;
    fn sigmoid(&self, a: &Self::V) -> Result<Self::V>;
    fn tanh(&self, a: &Self::V) -> Result<Self::V>;
    /// The embedded values of one position (the start token is K), `[B]` → `[B, E]`: a stepper's input.
    fn embed(&self, tokens: &[u32]) -> Result<Self::V>;
    /// θ of one position from the hidden state, `[B][P]`: a stepper's output.
    fn theta(&self, h: &Self::V) -> Result<Vec<Vec<f32>>>;
}

/// One step of the cell: the state after reading x `[B, E]`. The equations, and the order of their
/// operations, are candle-nn's (`candle_nn::rnn`), which follow PyTorch's `nn.LSTM` and `nn.GRU`.
fn cell_step<O: CellOps>(cell: Cell, o: &O, x: &O::V, s: &CellState<O::V>) -> Result<CellState<O::V>> {
    let (xi, hh) = (o.input_product(x)?, o.hidden_product(&s.h)?);
    match cell {
        Cell::Lstm => {
            let pre = o.chunk(&o.add(&xi, &hh)?, 4)?;
            let (i, f) = (o.sigmoid(&pre[0])?, o.sigmoid(&pre[1])?);
            let (g, out) = (o.tanh(&pre[2])?, o.sigmoid(&pre[3])?);
            let c = o.add(&o.mul(&f, &s.c)?, &o.mul(&i, &g)?)?;
            let h = o.mul(&out, &o.tanh(&c)?)?;
            Ok(CellState { h, c })
        }
        Cell::Gru => {
            let (xi, hh) = (o.chunk(&xi, 3)?, o.chunk(&hh, 3)?);
            let r = o.sigmoid(&o.add(&xi[0], &hh[0])?)?;
            let z = o.sigmoid(&o.add(&xi[1], &hh[1])?)?;
            let n = o.tanh(&o.add(&xi[2], &o.mul(&r, &hh[2])?)?)?;
            let h = o.sub(&o.mul(&z, &s.h)?, &o.mul(&o.minus_one(&z)?, &n)?)?;
            Ok(CellState { h, c: s.c.clone() })
        }
    }
}

/// The cell on tensors `[B, n]`, candle's operations.
struct Tensors<'a>(&'a RnnNet);

impl CellOps for Tensors<'_> {
    type V = Tensor;
    fn input_product(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.0.cell;
        Ok(x.matmul(&c.w_ih.t()?)?.broadcast_add(&c.b_ih)?)
    }
    fn hidden_product(&self, h: &Tensor) -> Result<Tensor> {
        let c = &self.0.cell;
        Ok(h.matmul(&c.w_hh.t()?)?.broadcast_add(&c.b_hh)?)
    }
    fn chunk(&self, x: &Tensor, n: usize) -> Result<Vec<Tensor>> {
        Ok(x.chunk(n, 1)?)
    }
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((a + b)?)
    }
    fn sub(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((a - b)?)
    }
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((a * b)?)
    }
    fn minus_one(&self, a: &Tensor) -> Result<Tensor> {
        Ok((a - 1.)?)
    }
    fn sigmoid(&self, a: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::sigmoid(a)?)
    }
    fn tanh(&self, a: &Tensor) -> Result<Tensor> {
        Ok(a.tanh()?)
    }
    fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        use candle_core::Module;
        let tokens = Tensor::from_slice(tokens, tokens.len(), self.0.cell.w_ih.device())?;
        Ok(self.0.embed.forward(&tokens)?)
    }
    fn theta(&self, h: &Tensor) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .0
            .out
            .forward(h)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?)
    }
}

/// The cell on rows of f32 `[B][n]` in exact arithmetic (`nn::exact`), for the codec: the embedding looked
/// up, the cell's two products and the output layer as exact 1×1 step convolutions, the gates with
/// [`exact::sigmoid`] and `libm`'s tanh.
struct ExactRows {
    table: Vec<f32>, // [K + 1, E]
    embedding: usize,
    ih: StepConv,
    hh: StepConv,
    out: StepConv,
    batch: usize,
}

impl ExactRows {
    fn new(net: &RnnNet, batch: usize) -> Result<Self> {
        let plan = TapPlan::causal_1d(1, 1, 0);
        let dense = |w: &Tensor, b: &Tensor| -> Result<StepConv> {
            Ok(StepConv::new(w, Some(b), &plan, (1, 1), batch)?.with_arithmetic(Arithmetic::Exact))
        };
        let c = &net.cell;
        Ok(Self {
            table: net
                .embed
                .embeddings()
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?,
            embedding: net.cfg.embedding,
            ih: dense(&c.w_ih, &c.b_ih)?,
            hh: dense(&c.w_hh, &c.b_hh)?,
            out: dense(net.out.weight(), net.out.bias())?,
            batch,
        })
    }

    fn map(a: &[f32], f: impl Fn(f32) -> f32) -> Result<Vec<f32>> {
        Ok(a.iter().map(|&a| f(a)).collect())
    }

    fn zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> Result<Vec<f32>> {
        Ok(a.iter().zip(b).map(|(&a, &b)| f(a, b)).collect())
    }
}

impl CellOps for ExactRows {
    type V = Vec<f32>;
    fn input_product(&self, x: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(self.ih.pointwise(x))
    }
    fn hidden_product(&self, h: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(self.hh.pointwise(h))
    }
    fn chunk(&self, x: &Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>> {
        let h = x.len() / (n * self.batch).max(1);
        Ok((0..n)
            .map(|k| {
                x.chunks(n * h)
                    .flat_map(|row| &row[k * h..(k + 1) * h])
                    .copied()
                    .collect()
            })
            .collect())
    }
    fn add(&self, a: &Vec<f32>, b: &Vec<f32>) -> Result<Vec<f32>> {
        Self::zip(a, b, |a, b| a + b)
    }
    fn sub(&self, a: &Vec<f32>, b: &Vec<f32>) -> Result<Vec<f32>> {
        Self::zip(a, b, |a, b| a - b)
    }
    fn mul(&self, a: &Vec<f32>, b: &Vec<f32>) -> Result<Vec<f32>> {
        Self::zip(a, b, |a, b| a * b)
    }
    fn minus_one(&self, a: &Vec<f32>) -> Result<Vec<f32>> {
        Self::map(a, |a| a - 1.0)
    }
    fn sigmoid(&self, a: &Vec<f32>) -> Result<Vec<f32>> {
        Self::map(a, exact::sigmoid)
    }
    fn tanh(&self, a: &Vec<f32>) -> Result<Vec<f32>> {
        Self::map(a, libm::tanhf)
    }
    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let e = self.embedding;
        Ok(tokens
            .iter()
            .flat_map(|&t| &self.table[t as usize * e..(t as usize + 1) * e])
            .copied()
            .collect())
    }
    fn theta(&self, h: &Vec<f32>) -> Result<Vec<Vec<f32>>> {
        let p = self.out.c_out();
        Ok(self.out.pointwise(h).chunks(p).map(<[f32]>::to_vec).collect())
    }
}

/// An RNN run one position at a time, in the arithmetic of `O`.
struct RnnStepper<'a, O: CellOps> {
    net: &'a RnnNet,
    ops: O,
    state: CellState<O::V>,
    batch: usize,
}

impl<O: CellOps> Stepper for RnnStepper<'_, O> {
    fn step(&mut self, prev: Option<&[u32]>) -> Result<Vec<Vec<f32>>> {
        let start = [self.net.m.num_values as u32].repeat(self.batch);
        let x = self.ops.embed(prev.unwrap_or(&start))?;
        self.state = cell_step(self.net.cfg.cell, &self.ops, &x, &self.state)?;
        self.ops.theta(&self.state.h)
    }
}
