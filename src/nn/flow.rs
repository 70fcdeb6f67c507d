//! A network written once, run two ways: a family writes its topology as a function of a [`Flow`] — the
//! layers in order and the operations between them — and runs it with [`Full`] for the forward pass (whole
//! `[B, D, C]` or `[B, H, W, C]` tensors through the training kernels) or with [`Stepping`] for cached
//! sampling, one position (a value of a sequence, a pixel of an image) at a time: each layer keeps the inputs
//! it has been given, appending inside the layer as candle-nn's `KvCache` does, so a position costs one
//! column of the network (Fast WaveNet, Paine et al. 2016; Fast PixelCNN++, Ramachandran et al. 2017).

use std::ops::Range;

use candle_core::{Result, Tensor};

use super::activation::gate_in;
use super::kernels::shifted_conv::TapPlan;
use super::step::{relu_in_place, StepConv};
use super::{dropout, Arithmetic, CausalConv1d, Linear, Mode, PlannedConv2d};

/// A layer a [`Flow`] applies: over whole tensors, or stepped by a [`StepConv`].
pub trait Layer {
    /// Whole tensors through the training kernel, channels last.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// This layer stepped on a grid of `(rows, columns)` positions, `batch` examples at a time.
    fn stepper(&self, grid: (usize, usize), batch: usize) -> Result<StepConv>;
    /// Whether it reads only the position it computes (a 1×1): stepped without keeping its inputs.
    fn pointwise(&self) -> bool {
        false
    }
}

impl Layer for CausalConv1d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_blc(x)
    }
    fn stepper(&self, grid: (usize, usize), batch: usize) -> Result<StepConv> {
        self.stepper(grid.1, batch)
    }
}

impl Layer for PlannedConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x)
    }
    fn stepper(&self, grid: (usize, usize), batch: usize) -> Result<StepConv> {
        self.stepper(grid, batch)
    }
    fn pointwise(&self) -> bool {
        self.weight().dims4().is_ok_and(|(_, _, kh, kw)| kh * kw == 1)
    }
}

impl Layer for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x)
    }
    fn stepper(&self, _: (usize, usize), batch: usize) -> Result<StepConv> {
        let plan = TapPlan::causal_1d(1, 1, 0);
        StepConv::new(self.weight(), Some(self.bias()), &plan, (0, 0), batch)
    }
    fn pointwise(&self) -> bool {
        true
    }
}

/// The operations a network is written in, over activations of type `Act`.
pub trait Flow {
    /// What passes between layers: whole tensors ([`Full`]) or one position's rows ([`Stepping`]).
    type Act: Clone;
    /// A layer (a convolution, causal or masked, or a linear map at each position).
    fn conv(&mut self, layer: &impl Layer, x: &Self::Act) -> Result<Self::Act>;
    /// A causal convolution, then a LeakyReLU of `slope` (one fused pass over whole tensors).
    fn conv_leaky(&mut self, layer: &CausalConv1d, x: &Self::Act, slope: f64) -> Result<Self::Act>;
    /// `layer` at each position over the inputs at the `memory` positions before it, lag 1 first:
    /// `[x_{t−1}, …, x_{t−m}]`, zeros before the start (a causal convolution of kernel m in disguise).
    fn linear_lags(&mut self, layer: &Linear, memory: usize, x: &Self::Act) -> Result<Self::Act>;
    fn relu(&mut self, x: Self::Act) -> Result<Self::Act>;
    /// The gated unit, tanh of the first half of the channels times the sigmoid of the second: 2C → C.
    fn gate(&mut self, x: Self::Act) -> Result<Self::Act>;
    fn add(&mut self, a: Self::Act, b: &Self::Act) -> Result<Self::Act>;
    /// A bias per example (`[B, 1, 1, C]`, or [`Column::per_example`]) added at every position.
    fn bias(&mut self, x: Self::Act, bias: &Self::Act) -> Result<Self::Act>;
    /// Images shifted down one row, zeros on top (stepped: see [`Stepping::a_row_behind`]).
    fn down_shift(&mut self, x: Self::Act) -> Result<Self::Act>;
    /// Dropout in training, `salt` telling the layers apart (stepping is for sampling: no dropout).
    fn dropout(&mut self, x: Self::Act, salt: u64) -> Result<Self::Act>;
}

/// Whole tensors, `[B, D, C]` or `[B, H, W, C]`: the forward pass, in training (`mode`, dropout rate
/// `dropout`) or evaluation.
pub struct Full {
    pub mode: Mode,
    pub dropout: f64,
}

impl Flow for Full {
    type Act = Tensor;
    fn conv(&mut self, layer: &impl Layer, x: &Tensor) -> Result<Tensor> {
        layer.forward(x)
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
    fn relu(&mut self, x: Tensor) -> Result<Tensor> {
        super::relu(&x)
    }
    fn gate(&mut self, x: Tensor) -> Result<Tensor> {
        gate_in(&x, matches!(self.mode, Mode::Train { .. }))
    }
    fn add(&mut self, a: Tensor, b: &Tensor) -> Result<Tensor> {
        super::kernels::elementwise::add(&a, b)
    }
    fn bias(&mut self, x: Tensor, bias: &Tensor) -> Result<Tensor> {
        x.broadcast_add(bias)
    }
    fn down_shift(&mut self, x: Tensor) -> Result<Tensor> {
        super::down_shift(&x)
    }
    fn dropout(&mut self, x: Tensor, salt: u64) -> Result<Tensor> {
        dropout(&x, self.dropout, self.mode, salt)
    }
}

/// A few positions at a time — a pixel, or a row of them — of `batch` examples on a grid of positions (a
/// sequence is one row), in `arithmetic`; the caller says which positions each pass computes
/// ([`Stepping::input`]), so that it can compute a pixel again for each of its colours. Each layer applied
/// gets a [`StepConv`] on first use (told apart by the order they are applied in), which keeps the layer's
/// input at every position.
pub struct Stepping {
    arithmetic: Arithmetic,
    batch: usize,
    grid: (usize, usize),
    at: Range<usize>, // the positions computed now
    lag: usize,       // … are those `lag` positions before them: see `a_row_behind`
    layers: Vec<StepConv>,
    next: usize, // the layer applied next in this pass
}

/// The activations at a few positions, `[position][B][C]` flattened, and the positions they belong to.
#[derive(Clone)]
pub struct Column {
    at: Range<usize>,
    rows: Vec<f32>,
}

impl Column {
    /// A row of numbers per example, `[B][C]`, for [`Flow::bias`].
    pub fn per_example(rows: Vec<f32>) -> Self {
        Self { at: 0..0, rows }
    }
}

impl Stepping {
    pub fn new(grid: (usize, usize), batch: usize, arithmetic: Arithmetic) -> Self {
        Self {
            arithmetic,
            batch,
            grid,
            at: 0..0,
            lag: 0,
            layers: vec![],
            next: 0,
        }
    }

    /// The stack of a network that reads only the rows above through a down-shift (the gated PixelCNN's
    /// vertical stack): a pass at row y computes row y − 1, whole by then, and the shift moves nothing; the
    /// row above the first is the shift's zero padding (no inputs kept, zero outputs).
    pub fn a_row_behind(self) -> Self {
        Self {
            lag: self.grid.1,
            ..self
        }
    }

    /// Starts a pass computing the network's output at positions `at`; its input is `rows` `[position][B][C]`
    /// at positions `from` (before `at`, or `at` itself under colour masks), none if empty.
    pub fn input(&mut self, at: Range<usize>, from: Range<usize>, rows: Vec<f32>) -> Column {
        (self.at, self.next) = (at, 0);
        Column { at: from, rows }
    }

    /// The network's output at the pass's positions, `[position][B][P]`.
    pub fn output(&mut self, out: Column) -> Vec<f32> {
        out.rows
    }

    /// The layer applied next: a [`StepConv`] made by `make` (given the grid and the batch) on first use.
    fn layer(&mut self, make: impl FnOnce((usize, usize), usize) -> Result<StepConv>) -> Result<&mut StepConv> {
        if self.next == self.layers.len() {
            let layer = make(self.grid, self.batch)?.with_arithmetic(self.arithmetic);
            self.layers.push(layer);
        }
        self.next += 1;
        Ok(&mut self.layers[self.next - 1])
    }

    /// The layer applied next (made by `make`) given x at its position: its output at this one.
    fn apply(&mut self, x: &Column, make: impl FnOnce((usize, usize), usize) -> Result<StepConv>) -> Result<Column> {
        let (at, lag, batch) = (self.at.clone(), self.lag, self.batch);
        let back = |p: &Range<usize>| Some(p.start.checked_sub(lag)?..p.end - lag);
        let layer = self.layer(make)?;
        if let (Some(from), false) = (back(&x.at), x.rows.is_empty()) {
            layer.set(from, &x.rows);
        }
        let rows = match back(&at) {
            Some(p) => layer.output(p),
            None => vec![0.0; at.len() * batch * layer.c_out()], // before the grid
        };
        Ok(Column { at, rows })
    }
}

impl Flow for Stepping {
    type Act = Column;
    fn conv(&mut self, layer: &impl Layer, x: &Column) -> Result<Column> {
        if layer.pointwise() {
            let rows = self.layer(|grid, batch| layer.stepper(grid, batch))?.pointwise(&x.rows); // no inputs kept
            return Ok(Column { rows, at: x.at.clone() });
        }
        self.apply(x, |grid, batch| layer.stepper(grid, batch))
    }
    fn conv_leaky(&mut self, layer: &CausalConv1d, x: &Column, slope: f64) -> Result<Column> {
        let mut y = self.conv(layer, x)?;
        let slope = slope as f32;
        y.rows.iter_mut().filter(|v| **v <= 0.0).for_each(|v| *v *= slope);
        Ok(y)
    }
    fn linear_lags(&mut self, layer: &Linear, memory: usize, x: &Column) -> Result<Column> {
        self.apply(x, |grid, batch| {
            // A causal convolution of kernel m: the weight [out, m·C] (lag 1 first) read as [out, C, m], and
            // the taps listed lag 1 first, so that the product sums in the Linear's order.
            let (out, width) = layer.weight().dims2()?;
            let weight = layer.weight().reshape((out, memory, width / memory))?.transpose(1, 2)?;
            let mut plan = TapPlan::causal_1d(memory, 1, memory);
            plan.taps.reverse();
            plan.taps.iter_mut().enumerate().for_each(|(lag, tap)| tap.k = lag);
            StepConv::new(&weight.contiguous()?, Some(layer.bias()), &plan, grid, batch)
        })
    }
    fn relu(&mut self, mut x: Column) -> Result<Column> {
        relu_in_place(&mut x.rows);
        Ok(x)
    }
    fn gate(&mut self, mut x: Column) -> Result<Column> {
        let c = x.rows.len() / (2 * self.batch * x.at.len()).max(1);
        x.rows = self.arithmetic.gate_rows(&x.rows, c);
        Ok(x)
    }
    /// b at a's positions: b holds those, or a row around them (the row above, at a pixel of it).
    fn add(&mut self, mut a: Column, b: &Column) -> Result<Column> {
        let from = (a.at.start - b.at.start) * b.rows.len() / b.at.len().max(1);
        a.rows.iter_mut().zip(&b.rows[from..]).for_each(|(a, b)| *a += b);
        Ok(a)
    }
    fn bias(&mut self, mut x: Column, bias: &Column) -> Result<Column> {
        for rows in x.rows.chunks_mut(bias.rows.len().max(1)) {
            rows.iter_mut().zip(&bias.rows).for_each(|(a, b)| *a += b);
        }
        Ok(x)
    }
    /// The identity on a flow [a row behind](Stepping::a_row_behind), which has computed the row above.
    fn down_shift(&mut self, x: Column) -> Result<Column> {
        debug_assert!(self.lag == self.grid.1, "a down-shift steps only a row behind");
        Ok(x)
    }
    fn dropout(&mut self, x: Column, _salt: u64) -> Result<Column> {
        Ok(x)
    }
}
