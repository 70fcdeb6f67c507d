//! A network written once, run two ways: a family writes its topology as a function of a [`Flow`] — the
//! layers in order and the operations between them — and runs it with [`Full`] for the forward pass (`[B, D,
//! C]` tensors through the training kernels) or with [`Stepping`] for cached sampling, one position at a
//! time (each layer keeps the inputs it has been given, appending inside the layer as candle-nn's `KvCache`
//! does, so a position costs one column of the network: Fast WaveNet, Paine et al. 2016).

use candle_core::{Result, Tensor};

use super::kernels::shifted_conv::TapPlan;
use super::step::{relu_in_place, StepConv};
use super::{dropout, gate, Arithmetic, CausalConv1d, Linear, Mode};

/// The operations a network is written in, over activations of type `Act`.
pub trait Flow {
    /// What passes between layers: `[B, D, C]` tensors ([`Full`]) or one position's rows ([`Stepping`]).
    type Act;
    /// A causal convolution.
    fn conv(&mut self, layer: &CausalConv1d, x: &Self::Act) -> Result<Self::Act>;
    /// A causal convolution, then a LeakyReLU of `slope` (one fused pass over whole tensors).
    fn conv_leaky(&mut self, layer: &CausalConv1d, x: &Self::Act, slope: f64) -> Result<Self::Act>;
    /// `layer` at each position over the inputs at the `memory` positions before it, lag 1 first:
    /// `[x_{t−1}, …, x_{t−m}]`, zeros before the start (a causal convolution of kernel m in disguise).
    fn linear_lags(&mut self, layer: &Linear, memory: usize, x: &Self::Act) -> Result<Self::Act>;
    /// `layer` at each position over the input there.
    fn linear(&mut self, layer: &Linear, x: &Self::Act) -> Result<Self::Act>;
    fn relu(&mut self, x: Self::Act) -> Result<Self::Act>;
    /// The gated unit, tanh of the first half of the channels times the sigmoid of the second: 2C → C.
    fn gate(&mut self, x: Self::Act) -> Result<Self::Act>;
    fn add(&mut self, a: Self::Act, b: Self::Act) -> Result<Self::Act>;
    /// Dropout in training, `salt` telling the layers apart (stepping is for sampling: no dropout).
    fn dropout(&mut self, x: Self::Act, salt: u64) -> Result<Self::Act>;
}

/// Whole sequences, `[B, D, C]` tensors: the forward pass, in training (`mode`, dropout rate `dropout`) or
/// evaluation.
pub struct Full {
    pub mode: Mode,
    pub dropout: f64,
}

impl Flow for Full {
    type Act = Tensor;
    fn conv(&mut self, layer: &CausalConv1d, x: &Tensor) -> Result<Tensor> {
        layer.forward_blc(x)
    }
    fn conv_leaky(&mut self, layer: &CausalConv1d, x: &Tensor, slope: f64) -> Result<Tensor> {
        layer.forward_blc_leaky(x, slope)
    }
    fn linear_lags(&mut self, layer: &Linear, memory: usize, x: &Tensor) -> Result<Tensor> {
        // Lag i: position t reads x_{t−i}, zeros before the start.
        let d = x.dim(1)?;
        let lags = (1..=memory)
            .map(|i| x.pad_with_zeros(1, i, 0)?.narrow(1, 0, d))
            .collect::<Result<Vec<_>>>()?;
        layer.forward(&Tensor::cat(&lags, 2)?) // [B, D, m·C] → [B, D, out]
    }
    fn linear(&mut self, layer: &Linear, x: &Tensor) -> Result<Tensor> {
        layer.forward(x)
    }
    fn relu(&mut self, x: Tensor) -> Result<Tensor> {
        x.relu()
    }
    fn gate(&mut self, x: Tensor) -> Result<Tensor> {
        gate(&x)
    }
    fn add(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        a + b
    }
    fn dropout(&mut self, x: Tensor, salt: u64) -> Result<Tensor> {
        dropout(&x, self.dropout, self.mode, salt)
    }
}

/// One position at a time, `batch` examples of `length` positions, in `arithmetic`: the network's input at
/// position t is the values at t − 1, its output θ_t. Each layer applied gets a [`StepConv`] on first use
/// (told apart by the order they are applied in), which keeps the layer's input at every position. Positions
/// count from 1 here: position 0 holds the input before the first value, zeros, as a type-A layer's padding.
pub struct Stepping {
    arithmetic: Arithmetic,
    batch: usize,
    length: usize,
    at: usize, // the position computed now, from 1
    layers: Vec<StepConv>,
    next: usize, // the layer applied next at this position
}

/// One position's activations, `[B][C]` flattened, and the position (counted from 1) they belong to.
pub struct Column {
    at: usize,
    rows: Vec<f32>,
}

impl Stepping {
    pub fn new(length: usize, batch: usize, arithmetic: Arithmetic) -> Self {
        Self {
            arithmetic,
            batch,
            length,
            at: 1,
            layers: vec![],
            next: 0,
        }
    }

    /// The network's input for the next position: the values at the previous one, encoded, `[B][C]`.
    pub fn input(&mut self, rows: Vec<f32>) -> Column {
        self.next = 0;
        Column { at: self.at - 1, rows }
    }

    /// The network's output at this position, `[B][P]`; the next input is for the next position.
    pub fn output(&mut self, out: Column) -> Vec<f32> {
        self.at += 1;
        out.rows
    }

    /// The layer applied next: a [`StepConv`] made by `make` (given the positions to keep and the batch) on
    /// first use.
    fn layer(&mut self, make: impl FnOnce(usize, usize) -> Result<StepConv>) -> Result<&mut StepConv> {
        if self.next == self.layers.len() {
            let layer = make(self.length + 1, self.batch)?.with_arithmetic(self.arithmetic);
            self.layers.push(layer);
        }
        self.next += 1;
        Ok(&mut self.layers[self.next - 1])
    }

    /// The layer applied next (made by `make`) given x at its position: its output at this one.
    fn apply(&mut self, x: &Column, make: impl FnOnce(usize, usize) -> Result<StepConv>) -> Result<Column> {
        let at = self.at;
        let layer = self.layer(make)?;
        layer.set(x.at..x.at + 1, &x.rows);
        let rows = layer.output(at..at + 1);
        Ok(Column { at, rows })
    }
}

impl Flow for Stepping {
    type Act = Column;
    fn conv(&mut self, layer: &CausalConv1d, x: &Column) -> Result<Column> {
        self.apply(x, |positions, batch| layer.stepper(positions, batch))
    }
    fn conv_leaky(&mut self, layer: &CausalConv1d, x: &Column, slope: f64) -> Result<Column> {
        let mut y = self.conv(layer, x)?;
        let slope = slope as f32;
        y.rows.iter_mut().filter(|v| **v <= 0.0).for_each(|v| *v *= slope);
        Ok(y)
    }
    fn linear_lags(&mut self, layer: &Linear, memory: usize, x: &Column) -> Result<Column> {
        self.apply(x, |positions, batch| {
            // A causal convolution of kernel m: the weight [out, m·C] (lag 1 first) read as [out, C, m], and
            // the taps listed lag 1 first, so that the product sums in the Linear's order.
            let (out, width) = layer.weight().dims2()?;
            let weight = layer.weight().reshape((out, memory, width / memory))?.transpose(1, 2)?;
            let mut plan = TapPlan::causal_1d(memory, 1, memory);
            plan.taps.reverse();
            plan.taps.iter_mut().enumerate().for_each(|(lag, tap)| tap.k = lag);
            StepConv::new(&weight.contiguous()?, Some(layer.bias()), &plan, (1, positions), batch)
        })
    }
    fn linear(&mut self, layer: &Linear, x: &Column) -> Result<Column> {
        let plan = TapPlan::causal_1d(1, 1, 0);
        let step = self.layer(|_, batch| StepConv::new(layer.weight(), Some(layer.bias()), &plan, (0, 0), batch))?;
        let rows = step.pointwise(&x.rows); // no inputs to keep
        Ok(Column { rows, ..*x })
    }
    fn relu(&mut self, mut x: Column) -> Result<Column> {
        relu_in_place(&mut x.rows);
        Ok(x)
    }
    fn gate(&mut self, mut x: Column) -> Result<Column> {
        let c = x.rows.len() / (2 * self.batch).max(1);
        x.rows = self.arithmetic.gate_rows(&x.rows, c);
        Ok(x)
    }
    fn add(&mut self, mut a: Column, b: Column) -> Result<Column> {
        a.rows.iter_mut().zip(&b.rows).for_each(|(a, b)| *a += b);
        Ok(a)
    }
    fn dropout(&mut self, x: Column, _salt: u64) -> Result<Column> {
        Ok(x)
    }
}
