//! Gated PixelCNN (van den Oord et al. 2016c, "Conditional Image Generation with PixelCNN Decoders") for
//! one-channel images, with class conditioning.
//!
//! Two stacks per layer. The vertical stack convolves the k/2 rows above *and the current row*
//! ((k/2 + 1) × k); the horizontal stack convolves the current row up to the current pixel (1 × (k/2 + 1),
//! type A in the first layer: strictly left). The horizontal stack receives the vertical one's
//! pre-activation through a 1×1 convolution *after a one-row down-shift*, so it sees only rows above from
//! it — all of them within reach: no blind spot (tested). Units are gated, tanh(W_f ∗ x) ⊙ σ(W_g ∗ x); the
//! horizontal stack has a 1×1 output and a residual connection (after the first layer); with
//! `vertical_residual` the vertical stack gets one too, and the same dropout (PixelCNN++'s streams). A class label
//! adds a learned bias inside every gate of both stacks, so `armory sample --label 3` draws a 3.
//!
//! Colour images (`colors = 3`) follow PixelCNN's order, R before G before B inside each pixel: the
//! horizontal stack's channels (each half of its gate inputs) are split into the colours, and its centre tap
//! and 1×1s let a colour read only earlier colours of the current pixel (mask A in the first layer) or
//! itself too (mask B after); the vertical stack reaches the horizontal one only from the rows above, where
//! every colour is known, so it needs no colour mask.
//!
//! With a logistic mixture, colour images take PixelCNN++'s pixel mixture by default instead
//! (`colour_mixture = "pixel"`): no colour masks, the network sees only the pixels before, and one mixture per
//! pixel ties the colours together (see `image_head`).
//!
//! x `[B, H·W·colors]` (raster order, pixel-major, values 0..K), labels `[B]` → θ `[B, H·W·colors, P]` (K
//! logits, or 3M mixture parameters, per sub-pixel).

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::image_head::{HeadStepper, ImageHead};
use super::{at_most, ArchFlags, Arithmetic, CausalNet, Family, InputEncoding, ModelConfig, Stepper};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::masked_conv2d::{horizontal_plan, reach, reach_down_shift, union, vertical_plan};
use crate::nn::{conv1x1, dropout, gate, planned_conv2d, ConvType, Mode, PlannedConv2d, StepConv};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub channels: usize,     // C: gated units per stack
    pub first_kernel: usize, // 7 in the paper
    pub layers: usize,       // gated layers after the first
    pub kernel: usize,       // 3 in the paper
    pub head_hidden: usize,
    /// Condition on a class label in 0..num_classes (digits: 10); none for an unconditional model.
    #[serde(default)]
    pub num_classes: Option<usize>,
    /// Residual connections and dropout on the vertical stack too (after the first layer), as PixelCNN++'s
    /// down-shifted stream has; the paper's vertical stack has neither.
    #[serde(default, skip_serializing_if = "super::is_default")]
    pub vertical_residual: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            channels: 64,
            first_kernel: 7,
            layers: 6,
            kernel: 3,
            head_hidden: 128,
            num_classes: None,
            vertical_residual: false,
        }
    }
}

/// The input is one-hot by default; dropout (the model's) applies to the horizontal stack's gated output
/// (and the vertical one's, with `vertical_residual`), in training.
impl Family for Config {
    fn validate(&self, m: &ModelConfig) -> Result<()> {
        at_most("channels", self.channels, limits::MAX_WIDTH)?;
        at_most("head_hidden", self.head_hidden, limits::MAX_WIDTH)?;
        at_most("layers", self.layers, limits::MAX_LAYERS)?;
        at_most("num_classes", self.num_classes.unwrap_or(1), limits::MAX_CLASSES)?;
        at_most("first_kernel", self.first_kernel, 2 * limits::MAX_SIDE + 1)?;
        at_most("kernel", self.kernel, 2 * limits::MAX_SIDE + 1)?;
        let bad = |m: String| Err(Error::Config(format!("gated_pixelcnn: {m}")));
        if self.channels == 0 || self.head_hidden == 0 {
            return bad("channels and head_hidden must be at least 1".into());
        }
        if self.first_kernel.is_multiple_of(2)
            || self.kernel.is_multiple_of(2)
            || self.first_kernel < 3
            || self.kernel < 3
        {
            return bad(format!(
                "kernels must be odd and ≥ 3: {} and {}",
                self.first_kernel, self.kernel
            ));
        }
        if self.num_classes == Some(0) {
            return bad("num_classes must be at least 1".into());
        }
        let masks = m.network_colours();
        if !self.channels.is_multiple_of(masks) || !self.head_hidden.is_multiple_of(masks) {
            return bad(format!(
                "channels ({}) and head_hidden ({}) must be multiples of colors ({masks}): each colour gets its own \
                 block of channels",
                self.channels, self.head_hidden
            ));
        }
        let extent = (2 * m.height().max(m.width())).max(8); // a kernel spans both sides of its centre
        super::check_kernel_size("gated_pixelcnn", self.first_kernel, 1, extent)?;
        super::check_kernel_size("gated_pixelcnn", self.kernel, 1, extent)
    }

    fn param_estimate(&self, m: &ModelConfig, out: u128) -> u128 {
        let w = limits::wide;
        let (cin, ch, hh) = (
            w(m.input.channels(m.num_values) * m.colors()),
            w(self.channels),
            w(self.head_hidden),
        );
        let (k1, k) = (w(self.first_kernel), w(self.kernel));
        let classes = w(self.num_classes.unwrap_or(0)) + w(m.context);
        let layer = |cin: u128, k: u128| {
            2 * cin * ch * k * (k / 2 + 1)
                + 2 * cin * ch * (k / 2 + 1)
                + 4 * ch * ch
                + ch * ch
                + 4 * classes * ch
                + 8 * ch
        };
        layer(cin, k1) + w(self.layers) * layer(ch, k) + ch * hh + hh * out * w(m.colors()) + hh
    }

    fn activation_shape(&self, _m: &ModelConfig) -> (usize, usize, usize) {
        (6 * self.channels.max(self.head_hidden), self.layers + 1, 0)
    }

    fn build(&self, m: &ModelConfig, vb: VarBuilder) -> Result<Box<dyn CausalNet>> {
        Ok(Box::new(GatedPixelCnn::new(m, self, vb)?))
    }

    fn default_input(&self) -> Option<InputEncoding> {
        Some(InputEncoding::OneHot)
    }

    fn is_2d(&self) -> bool {
        true
    }

    fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }

    fn takes_context(&self) -> bool {
        true
    }

    fn apply(&mut self, f: &ArchFlags) -> Result<()> {
        self.channels = f.hidden.unwrap_or(self.channels);
        self.kernel = f.kernel.unwrap_or(self.kernel);
        self.layers = f.layers.unwrap_or(self.layers);
        f.refuse("gated_pixelcnn", &[("--dilations", f.dilations.is_some())])
    }
}

struct GatedLayer {
    vertical: PlannedConv2d,        // C_in → 2C, (k/2 + 1) × k
    v_to_h: PlannedConv2d,          // 1×1, 2C → 2C, applied to the down-shifted vertical pre-activation
    horizontal: PlannedConv2d,      // C_in → 2C, 1 × (k/2 + 1)
    h_out: PlannedConv2d,           // 1×1, C → C
    cond: Option<(Tensor, Tensor)>, // per-class gate biases [classes, 2C] for the vertical and horizontal stacks
    ctx: Option<(Tensor, Tensor)>,  // context → gate biases, [2C, E] for each stack
    residual: bool,
    vertical_residual: bool,
}

/// Dropout on the vertical stack draws its masks apart from the horizontal stack's.
const VERTICAL_SALT: u64 = 0x5645_5254; // "VERT"

impl GatedLayer {
    fn new(c_in: usize, m: &ModelConfig, cfg: &Config, first: bool, vb: VarBuilder) -> Result<Self> {
        let (c, k) = (cfg.channels, if first { cfg.first_kernel } else { cfg.kernel });
        let mask = if first { ConvType::A } else { ConvType::B };
        let cond = match cfg.num_classes {
            Some(n) => {
                let init = Init::Const(0.0); // start as the unconditional model
                Some((
                    vb.get_with_hints((n, 2 * c), "cond_v", init)?,
                    vb.get_with_hints((n, 2 * c), "cond_h", init)?,
                ))
            }
            None => None,
        };
        // A context (a latent code) maps linearly onto every gate's bias: the class conditioning generalised.
        let ctx = match m.context {
            0 => None,
            e => {
                let bound = 1.0 / (e as f64).sqrt();
                let init = Init::Uniform { lo: -bound, up: bound };
                Some((
                    vb.get_with_hints((2 * c, e), "ctx_v", init)?,
                    vb.get_with_hints((2 * c, e), "ctx_h", init)?,
                ))
            }
        };
        // Colour masks: the first horizontal layer keeps its centre tap, with a colour mask A on it.
        let colors = m.network_colours();
        let plan = if colors > 1 { ConvType::B } else { mask };
        let horizontal = planned_conv2d(
            c_in,
            2 * c,
            (1, k / 2 + 1),
            horizontal_plan(k, plan),
            vb.pp("horizontal"),
        )?;
        Ok(Self {
            vertical: planned_conv2d(c_in, 2 * c, (k / 2 + 1, k), vertical_plan(k), vb.pp("vertical"))?,
            v_to_h: conv1x1(2 * c, 2 * c, vb.pp("v_to_h"))?,
            horizontal: horizontal.with_gated_colours(colors, mask)?,
            h_out: conv1x1(c, c, vb.pp("h_out"))?.with_colours(colors, ConvType::B)?,
            cond,
            ctx,
            residual: !first,
            vertical_residual: !first && cfg.vertical_residual,
        })
    }

    /// (v, h) `[B, H, W, C_in]` → (v, h) `[B, H, W, C]`.
    fn forward(
        &self,
        v: &Tensor,
        h: &Tensor,
        (labels, context): (Option<&Tensor>, Option<&Tensor>),
        mode: Mode,
        salt: u64,
        p: f64,
    ) -> Result<(Tensor, Tensor)> {
        let mut v_pre = self.vertical.forward(v)?; // [B, H, W, 2C]
        let mut h_pre = (self.horizontal.forward(h)? + self.v_to_h.forward(&crate::nn::down_shift(&v_pre)?)?)?;
        if let (Some((cv, ch)), Some(labels)) = (&self.cond, labels) {
            let b = labels.dim(0)?;
            let bias = |table: &Tensor| -> candle_core::Result<Tensor> {
                table.index_select(labels, 0)?.reshape((b, 1, 1, table.dim(1)?))
            };
            v_pre = v_pre.broadcast_add(&bias(cv)?)?;
            h_pre = h_pre.broadcast_add(&bias(ch)?)?;
        }
        if let (Some((wv, wh)), Some(context)) = (&self.ctx, context) {
            let b = context.dim(0)?;
            let bias =
                |w: &Tensor| -> candle_core::Result<Tensor> { context.matmul(&w.t()?)?.reshape((b, 1, 1, w.dim(0)?)) };
            v_pre = v_pre.broadcast_add(&bias(wv)?)?;
            h_pre = h_pre.broadcast_add(&bias(wh)?)?;
        }
        let mut v_out = gate(&v_pre)?;
        if self.vertical_residual {
            v_out = (dropout(&v_out, p, mode, salt ^ VERTICAL_SALT)? + v)?;
        }
        let mut h_out = self.h_out.forward(&dropout(&gate(&h_pre)?, p, mode, salt)?)?;
        if self.residual {
            h_out = (h_out + h)?;
        }
        Ok((v_out, h_out))
    }
}

pub struct GatedPixelCnn {
    layers: Vec<GatedLayer>,
    head: ImageHead,
    cfg: Config,
    m: ModelConfig,
}

impl GatedPixelCnn {
    pub fn new(m: &ModelConfig, cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate(m)?;
        let c_in = m.colors() * m.input.channels(m.num_values);
        let mut layers = vec![GatedLayer::new(c_in, m, cfg, true, vb.pp("layers").pp(0))?];
        for i in 1..=cfg.layers {
            layers.push(GatedLayer::new(cfg.channels, m, cfg, false, vb.pp("layers").pp(i))?);
        }
        let head = ImageHead::new(
            cfg.channels,
            cfg.head_hidden,
            m.colors(),
            m.likelihood(),
            m.colour_mixture(),
            vb,
        )?;
        Ok(Self {
            layers,
            head,
            cfg: cfg.clone(),
            m: m.clone(),
        })
    }
}

impl CausalNet for GatedPixelCnn {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_labelled(x, None, mode)
    }

    fn num_classes(&self) -> Option<usize> {
        self.cfg.num_classes
    }

    fn forward_labelled(&self, x: &Tensor, labels: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        self.forward_context(x, labels, None, mode)
    }

    fn forward_context(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        context: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, d) = x.dims2()?;
        let (hh, w, k) = (self.m.height(), self.m.width(), self.m.num_values);
        if d != self.m.dim() {
            return Err(Error::Config(format!(
                "gated_pixelcnn: input has {d} values per example, the model is {hh}×{w}×{}",
                self.m.colors()
            )));
        }
        super::check_labels(self.cfg.num_classes, labels, b)?;
        super::check_context(self.m.context, context, b)?;
        let dtype = self.layers[0].vertical.weight().dtype();
        let context = context.map(|c| c.to_dtype(dtype)).transpose()?;
        let e = self.m.input.encode(x, k, dtype)?.reshape((b, hh, w, ()))?; // [B, H, W, C_in]
        let (mut v, mut h) = (e.clone(), e);
        for (i, layer) in self.layers.iter().enumerate() {
            (v, h) = layer.forward(&v, &h, (labels, context.as_ref()), mode, i as u64, self.m.dropout)?;
        }
        self.head.forward(&h, x)
    }

    /// Input pixels that θ of the last pixel depends on (traced through both stacks' tap plans).
    fn receptive_field(&self) -> usize {
        let (h, w) = (self.m.height(), self.m.width());
        let mut sh = vec![vec![false; w]; h]; // what the horizontal stack's output needs, per layer input
        sh[h - 1][w - 1] = true;
        let mut sv = vec![vec![false; w]; h];
        for (i, _) in self.layers.iter().enumerate().rev() {
            let first = i == 0;
            let k = if first { self.cfg.first_kernel } else { self.cfg.kernel };
            let mask = if first { ConvType::A } else { ConvType::B };
            let from_h = reach(&sh, &horizontal_plan(k, mask));
            let from_h = if first { from_h } else { union(&from_h, &sh) }; // the residual
                                                                           // Vertical inputs needed: by the vertical output itself, and by the horizontal through the shift.
            let v_needed = union(&sv, &reach_down_shift(&sh));
            let from_v = reach(&v_needed, &vertical_plan(k));
            (sh, sv) = (from_h, from_v);
        }
        // Every colour of each earlier pixel seen, and the last pixel's own earlier colours.
        let colors = self.m.colors();
        union(&sh, &sv).iter().flatten().filter(|&&v| v).count() * colors + colors - 1
    }

    fn stepper(
        &self,
        batch: usize,
        labels: Option<&[u32]>,
        arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        self.stepper_context(batch, labels, None, arithmetic)
    }

    fn stepper_context(
        &self,
        batch: usize,
        labels: Option<&[u32]>,
        context: Option<&[f32]>,
        arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        Ok(Some(Box::new(GatedStepper::new(
            self, batch, labels, context, arithmetic,
        )?)))
    }
}

/// One gated layer, stepped.
struct LayerStepper {
    vertical: StepConv,   // keeps the layer's vertical input, row by row
    horizontal: StepConv, // keeps the layer's horizontal input, pixel by pixel
    v_to_h: StepConv,
    h_out: StepConv,
    cond: Option<(Vec<f32>, Vec<f32>)>, // this batch's gate biases from its labels, [B][2C] for each stack
    ctx: Option<(Vec<f32>, Vec<f32>)>,  // … and from its context, added after them (the full pass's order)
    /// The vertical stack's contribution to the current row of the horizontal one: v_to_h of the
    /// pre-activation one row up, `[x][B][2C]`.
    from_above: Vec<f32>,
    residual: bool,
    vertical_residual: bool,
}

/// Cached stepping with per-row caches (Fast PixelCNN++, Ramachandran et al. 2017): at the start of each row
/// the vertical stack runs once over the row above, now complete, through every layer; then each pixel costs
/// one column of the horizontal stack.
pub struct GatedStepper<'a> {
    net: &'a GatedPixelCnn,
    layers: Vec<LayerStepper>,
    head: HeadStepper,
    arithmetic: Arithmetic,
    batch: usize,
    d: usize,
}

impl<'a> GatedStepper<'a> {
    fn new(
        net: &'a GatedPixelCnn,
        batch: usize,
        labels: Option<&[u32]>,
        context: Option<&[f32]>,
        arithmetic: Arithmetic,
    ) -> Result<Self> {
        let grid = (net.m.height(), net.m.width());
        let step =
            |c: &PlannedConv2d, grid| -> Result<StepConv> { Ok(c.stepper(grid, batch)?.with_arithmetic(arithmetic)) };
        let rows_for = |table: &Tensor, labels: &[u32]| -> Result<Vec<f32>> {
            let table = table.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
            Ok(labels.iter().flat_map(|&l| table[l as usize].iter().copied()).collect())
        };
        // context `[B, E]` times w `[2C, E]` transposed: the full pass's product (Fast), or fixed-order sums.
        let biases_for = |w: &Tensor, context: &[f32]| -> Result<Vec<f32>> {
            let e = w.dim(1)?;
            match arithmetic {
                Arithmetic::Fast => {
                    let c = Tensor::from_slice(context, (batch, e), w.device())?.to_dtype(w.dtype())?;
                    Ok(c.matmul(&w.t()?)?
                        .to_dtype(candle_core::DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?)
                }
                Arithmetic::Exact => {
                    let w = w.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    let dot = |row: &[f32], z: &[f32]| row.iter().zip(z).fold(0f32, |acc, (a, b)| acc + a * b);
                    Ok(context
                        .chunks(e)
                        .flat_map(|z| w.chunks(e).map(move |row| dot(row, z)).collect::<Vec<_>>())
                        .collect())
                }
            }
        };
        let layers = net
            .layers
            .iter()
            .map(|l| {
                let cond = match (&l.cond, labels) {
                    (Some((cv, ch)), Some(labels)) => Some((rows_for(cv, labels)?, rows_for(ch, labels)?)),
                    _ => None,
                };
                let ctx = match (&l.ctx, context) {
                    (Some((wv, wh)), Some(context)) => Some((biases_for(wv, context)?, biases_for(wh, context)?)),
                    _ => None,
                };
                Ok(LayerStepper {
                    vertical: step(&l.vertical, grid)?,
                    horizontal: step(&l.horizontal, grid)?,
                    v_to_h: step(&l.v_to_h, (0, 0))?,
                    h_out: step(&l.h_out, (0, 0))?,
                    cond,
                    ctx,
                    from_above: vec![],
                    residual: l.residual,
                    vertical_residual: l.vertical_residual,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            net,
            layers,
            head: net.head.stepper(batch, arithmetic)?,
            arithmetic,
            batch,
            d: 0,
        })
    }

    /// Runs the vertical stack over row `y − 1` (all of it known now) and keeps what row `y`'s horizontal
    /// stack reads from it; row 0 reads the down-shift's zero padding.
    fn start_row(&mut self, y: usize) {
        let (w, b, c) = (self.net.m.width(), self.batch, self.net.cfg.channels);
        if y == 0 {
            for layer in &mut self.layers {
                layer.from_above = layer.v_to_h.pointwise(&vec![0.0; w * b * 2 * c]);
            }
            return;
        }
        let row = (y - 1) * w..y * w;
        let mut v_in: Option<Vec<f32>> = None; // the previous layer's gated vertical output on that row
        for layer in &mut self.layers {
            if let Some(v_in) = &v_in {
                layer.vertical.set(row.clone(), v_in);
            }
            let mut pre = layer.vertical.output(row.clone()); // [x][B][2C]
            layer.from_above = layer.v_to_h.pointwise(&pre);
            for (cv, _) in layer.cond.iter().chain(&layer.ctx) {
                pre.chunks_mut(b * 2 * c)
                    .for_each(|r| r.iter_mut().zip(cv).for_each(|(a, c)| *a += c));
            }
            let mut out = self.arithmetic.gate_rows(&pre, c); // [x][B][C]
            if layer.vertical_residual {
                let inputs = row.clone().flat_map(|p| layer.vertical.input(p).iter().copied());
                out.iter_mut().zip(inputs).for_each(|(a, v)| *a += v);
            }
            v_in = Some(out);
        }
    }
}

impl Stepper for GatedStepper<'_> {
    fn step(&mut self, prev: Option<&[u32]>) -> Result<Vec<Vec<f32>>> {
        // Step d is colour d % colors of pixel d / colors; a colour image's pixel is computed once per colour.
        let (d, cfg, m) = (self.d, &self.net.cfg, &self.net.m);
        let (w, b, c, colors) = (m.width(), self.batch, cfg.channels, m.colors());
        if let Some(prev) = prev {
            // The value drawn at d − 1 enters its pixel's inputs of the first layer, vertical and horizontal.
            let e = m.input.encode_values(prev, m.num_values);
            let (px, offset) = ((d - 1) / colors, (d - 1) % colors * (e.len() / prev.len()));
            self.layers[0].vertical.set_channels(px, offset, &e);
            self.layers[0].horizontal.set_channels(px, offset, &e);
            self.head.record(prev, (d - 1) % colors);
        }
        self.d += 1;
        let (d, colour) = (d / colors, d % colors); // from here on, d is the pixel
        let x = d % w;
        if x == 0 && colour == 0 {
            self.start_row(d / w);
        }
        if !self.head.needs_column(colour) {
            return self.head.step(None, colour); // the pixel mixture's later colours
        }
        let mut h_in: Option<Vec<f32>> = None; // the previous layer's horizontal output at pixel d
        for layer in &mut self.layers {
            if let Some(h_in) = &h_in {
                layer.horizontal.set(d..d + 1, h_in);
            }
            let mut pre = layer.horizontal.output(d..d + 1); // [B][2C]
            let above = &layer.from_above[x * b * 2 * c..(x + 1) * b * 2 * c];
            pre.iter_mut().zip(above).for_each(|(a, v)| *a += v);
            for (_, ch) in layer.cond.iter().chain(&layer.ctx) {
                pre.iter_mut().zip(ch).for_each(|(a, c)| *a += c);
            }
            let mut out = layer.h_out.pointwise(&self.arithmetic.gate_rows(&pre, c));
            if layer.residual {
                out.iter_mut().zip(layer.horizontal.input(d)).for_each(|(a, h)| *a += h);
            }
            h_in = Some(out);
        }
        self.head.step(h_in, colour)
    }
}
