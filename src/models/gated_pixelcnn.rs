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

use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::image_head::{HeadStepper, ImageHead};
use super::{at_most, ArchFlags, Arithmetic, CausalNet, Family, InputEncoding, ModelConfig, Stepper};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::flow::Column;
use crate::nn::masked_conv2d::{horizontal_plan, reach, reach_down_shift, union, vertical_plan};
use crate::nn::{conv1x1, planned_conv2d, ConvType, Flow, Full, Mode, PlannedConv2d, Stepping};

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
        super::check_kernel_size_2d("first_kernel", self.first_kernel, m)?;
        super::check_kernel_size_2d("kernel", self.kernel, m)
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

/// Each layer's gate biases, (vertical, horizontal): from the class labels, then from the context.
type Biases<A> = Vec<Vec<(A, A)>>;

/// The network, written once over a [`Flow`]: the full pass runs the vertical stack over the whole image,
/// then the horizontal one; stepping runs the vertical stack once per row, over the row above (complete by
/// then), and the horizontal one pixel by pixel.
impl GatedPixelCnn {
    /// The vertical stack over the encoded input: what each layer's horizontal stack reads from it, v_to_h of
    /// the pre-activation shifted down a row.
    fn vertical<F: Flow>(&self, f: &mut F, mut v: F::Act, biases: &Biases<F::Act>) -> Result<Vec<F::Act>> {
        let mut above = vec![];
        for (i, (layer, biases)) in self.layers.iter().zip(biases).enumerate() {
            let mut pre = f.conv(&layer.vertical, &v)?;
            let shifted = f.down_shift(pre.clone())?;
            above.push(f.conv(&layer.v_to_h, &shifted)?);
            for (bias, _) in biases {
                pre = f.bias(pre, bias)?;
            }
            let mut out = f.gate(pre)?;
            if layer.vertical_residual {
                out = f.dropout(out, i as u64 ^ VERTICAL_SALT)?;
                out = f.add(out, &v)?;
            }
            v = out;
        }
        Ok(above)
    }

    /// The horizontal stack over the encoded input, given what it reads from the vertical one: the stream
    /// the head reads.
    fn horizontal<F: Flow>(
        &self,
        f: &mut F,
        mut h: F::Act,
        above: &[F::Act],
        biases: &Biases<F::Act>,
    ) -> Result<F::Act> {
        for (i, ((layer, biases), above)) in self.layers.iter().zip(biases).zip(above).enumerate() {
            let pre = f.conv(&layer.horizontal, &h)?;
            let mut pre = f.add(pre, above)?;
            for (_, bias) in biases {
                pre = f.bias(pre, bias)?;
            }
            let out = f.gate(pre)?;
            let out = f.dropout(out, i as u64)?;
            let mut out = f.conv(&layer.h_out, &out)?;
            if layer.residual {
                out = f.add(out, &h)?;
            }
            h = out;
        }
        Ok(h)
    }

    /// The gate biases of a batch with these labels `[B]` and context `[B, E]`, as `[B, 1, 1, 2C]`.
    fn biases(&self, labels: Option<&Tensor>, context: Option<&Tensor>) -> Result<Biases<Tensor>> {
        let per_example = |t: Tensor| t.reshape((t.dim(0)?, 1, 1, t.dim(1)?));
        let each = |l: &GatedLayer| -> candle_core::Result<Vec<(Tensor, Tensor)>> {
            let mut out = vec![];
            if let (Some((cv, ch)), Some(labels)) = (&l.cond, labels) {
                let bias = |table: &Tensor| per_example(table.index_select(labels, 0)?);
                out.push((bias(cv)?, bias(ch)?));
            }
            if let (Some((wv, wh)), Some(context)) = (&l.ctx, context) {
                let bias = |w: &Tensor| per_example(context.matmul(&w.t()?)?);
                out.push((bias(wv)?, bias(wh)?));
            }
            Ok(out)
        };
        Ok(self.layers.iter().map(each).collect::<candle_core::Result<_>>()?)
    }
}

impl CausalNet for GatedPixelCnn {
    fn num_classes(&self) -> Option<usize> {
        self.cfg.num_classes
    }

    fn forward(&self, x: &Tensor, labels: Option<&Tensor>, context: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        let (b, d) = x.dims2()?;
        let (hh, w, k) = (self.m.height(), self.m.width(), self.m.num_values);
        if d != self.m.dim() {
            return Err(Error::Invalid(format!(
                "gated_pixelcnn: input has {d} values per example, the model is {hh}×{w}×{}",
                self.m.colors()
            )));
        }
        super::check_labels(self.cfg.num_classes, labels, b)?;
        super::check_context(self.m.context, context, b)?;
        let dtype = self.layers[0].vertical.weight().dtype();
        let context = context.map(|c| c.to_dtype(dtype)).transpose()?;
        let e = self.m.input.encode(x, k, dtype)?.reshape((b, hh, w, ()))?; // [B, H, W, C_in]
        let f = &mut Full {
            mode,
            dropout: self.m.dropout,
        };
        let biases = self.biases(labels, context.as_ref())?;
        let above = self.vertical(f, e.clone(), &biases)?;
        self.head.forward(&self.horizontal(f, e, &above, &biases)?, x)
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
        context: Option<&[f32]>,
        arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        Ok(Some(Box::new(GatedStepper::new(
            self, batch, labels, context, arithmetic,
        )?)))
    }
}

/// Cached stepping with per-row caches (Fast PixelCNN++, Ramachandran et al. 2017): at the start of each row
/// the vertical stack runs once over the row above, now complete, through every layer; then each pixel costs
/// one column of the horizontal stack.
pub struct GatedStepper<'a> {
    net: &'a GatedPixelCnn,
    vertical: Stepping, // a row behind
    horizontal: Stepping,
    biases: Biases<Column>,
    above: Vec<Column>, // what each layer's horizontal stack reads from the vertical one, on this row
    head: HeadStepper,
    d: usize,
    pixel: Vec<f32>, // the encoded colours of the last pixel drawn from, `[B][colours·E]`
    row: Vec<f32>,   // … and of its row, `[x][B][colours·E]`
}

impl<'a> GatedStepper<'a> {
    fn new(
        net: &'a GatedPixelCnn,
        batch: usize,
        labels: Option<&[u32]>,
        context: Option<&[f32]>,
        arithmetic: Arithmetic,
    ) -> Result<Self> {
        let m = &net.m;
        let rows_for = |table: &Tensor, labels: &[u32]| -> Result<Column> {
            let table = table.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let rows = labels.iter().flat_map(|&l| table[l as usize].iter().copied());
            Ok(Column::per_example(rows.collect()))
        };
        // context `[B, E]` times w `[2C, E]` transposed: the full pass's product (Fast), or fixed-order sums.
        let biases_for = |w: &Tensor, context: &[f32]| -> Result<Column> {
            let e = w.dim(1)?;
            Ok(Column::per_example(match arithmetic {
                Arithmetic::Fast => {
                    let c = Tensor::from_slice(context, (batch, e), w.device())?.to_dtype(w.dtype())?;
                    c.matmul(&w.t()?)?
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1::<f32>()?
                }
                Arithmetic::Exact => {
                    let w = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    let dot = |row: &[f32], z: &[f32]| row.iter().zip(z).fold(0f32, |acc, (a, b)| acc + a * b);
                    context
                        .chunks(e)
                        .flat_map(|z| w.chunks(e).map(move |row| dot(row, z)).collect::<Vec<_>>())
                        .collect()
                }
            }))
        };
        let biases = net
            .layers
            .iter()
            .map(|l| {
                let mut out = vec![];
                if let (Some((cv, ch)), Some(labels)) = (&l.cond, labels) {
                    out.push((rows_for(cv, labels)?, rows_for(ch, labels)?));
                }
                if let (Some((wv, wh)), Some(context)) = (&l.ctx, context) {
                    out.push((biases_for(wv, context)?, biases_for(wh, context)?));
                }
                Ok(out)
            })
            .collect::<Result<_>>()?;
        let grid = (m.height(), m.width());
        Ok(Self {
            net,
            vertical: Stepping::new(grid, batch, arithmetic).a_row_behind(),
            horizontal: Stepping::new(grid, batch, arithmetic),
            biases,
            above: vec![],
            head: net.head.stepper(batch, arithmetic)?,
            d: 0,
            pixel: vec![],
            row: vec![0.0; m.width() * batch * m.colors() * m.input.channels(m.num_values)],
        })
    }
}

impl Stepper for GatedStepper<'_> {
    /// As the PixelCNN's stepper (`models::Stepped`), the vertical stack run first at the start of each row.
    fn step(&mut self, prev: Option<&[u32]>) -> Result<Vec<Vec<f32>>> {
        let (d, m) = (self.d, &self.net.m);
        let (w, order) = (m.width(), m.ordering());
        self.d += 1;
        if let Some(prev) = prev {
            let (px, colour) = order.pixel_and_colour(d - 1);
            super::record_colour(&mut self.pixel, m, order.colors, prev, colour);
            let n = self.pixel.len();
            self.row[px % w * n..(px % w + 1) * n].copy_from_slice(&self.pixel);
            self.head.record(prev, colour);
        }
        let (px, colour) = order.pixel_and_colour(d);
        if px % w == 0 && colour == 0 {
            let x = self.vertical.input(px..px + w, px..px + w, self.row.clone());
            self.above = self.net.vertical(&mut self.vertical, x, &self.biases)?;
        }
        if !self.head.needs_column(colour) {
            return self.head.step(None, colour); // the pixel mixture's later colours
        }
        let from = order.pixel_and_colour(d.saturating_sub(1)).0;
        let x = self.horizontal.input(px..px + 1, from..from + 1, self.pixel.clone());
        let out = self
            .net
            .horizontal(&mut self.horizontal, x, &self.above, &self.biases)?;
        self.head.step(Some(self.horizontal.output(out)), colour)
    }
}
