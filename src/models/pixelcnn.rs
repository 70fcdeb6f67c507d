//! PixelCNN (van den Oord et al. 2016b) for gray or colour images: a type-A masked k×k first layer, residual
//! blocks (ReLU → 1×1 → ReLU → masked 3×3 type B → ReLU → 1×1, added back), and a 1×1 head. Each output
//! pixel sees the rows above and the pixels to its left — except a *blind spot*: stacked masked kernels
//! never reach the pixels up and to the right beyond the first layer's half-width, however deep the net
//! (see the test `pixelcnn_has_the_blind_spot_the_paper_describes`). The gated PixelCNN removes it.
//!
//! Colour images (`colors = 3`) are generated pixel by pixel and, within a pixel, R before G before B: every
//! channel of the network belongs to one colour (equal blocks), and at the centre tap of each kernel a colour
//! reads only earlier colours (mask A, the first layer) or itself and earlier ones (mask B, the rest, 1×1s
//! included); pixels before the current one are read whole. Tested by perturbing each sub-pixel.
//!
//! With a logistic mixture, colour images take PixelCNN++'s pixel mixture by default instead
//! (`colour_mixture = "pixel"`): no colour masks, the network sees only the pixels before, and one mixture per
//! pixel ties the colours together (see `image_head`).
//!
//! x `[B, H·W·colors]` (raster order, pixel-major, values 0..K) → θ `[B, H·W·colors, P]` (K logits, or 3M
//! mixture parameters, per sub-pixel).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::image_head::{HeadStepper, ImageHead};
use super::{at_most, ArchFlags, Arithmetic, CausalNet, Family, InputEncoding, ModelConfig, Stepper};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::masked_conv2d::{masked_plan, reach, union};
use crate::nn::step::relu_in_place;
use crate::nn::{conv1x1, dropout, masked_conv2d, ConvType, Mode, PlannedConv2d, StepConv};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub hidden: usize,       // channels of the residual stream
    pub first_kernel: usize, // the paper: 7
    pub blocks: usize,
    pub kernel: usize,      // masked kernel inside the blocks: 3
    pub head_hidden: usize, // channels of the 1×1 output head
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hidden: 128,
            first_kernel: 7,
            blocks: 6,
            kernel: 3,
            head_hidden: 128,
        }
    }
}

/// The input is one-hot by default; dropout (the model's) applies to each block's output before it is
/// added back.
impl Family for Config {
    fn validate(&self, m: &ModelConfig) -> Result<()> {
        at_most("hidden", self.hidden, limits::MAX_WIDTH)?;
        at_most("head_hidden", self.head_hidden, limits::MAX_WIDTH)?;
        at_most("blocks", self.blocks, limits::MAX_LAYERS)?;
        at_most("first_kernel", self.first_kernel, 2 * limits::MAX_SIDE + 1)?;
        at_most("kernel", self.kernel, 2 * limits::MAX_SIDE + 1)?;
        let bad = |m: String| Err(Error::Config(format!("pixelcnn: {m}")));
        if self.hidden < 2 || self.head_hidden == 0 {
            return bad("hidden ≥ 2 and head_hidden ≥ 1".into());
        }
        if self.first_kernel.is_multiple_of(2) || self.kernel.is_multiple_of(2) || self.first_kernel < 3 {
            return bad(format!(
                "kernels must be odd (first ≥ 3): {} and {}",
                self.first_kernel, self.kernel
            ));
        }
        let masks = m.network_colours();
        if masks > 1 && (!self.hidden.is_multiple_of(2 * masks) || !self.head_hidden.is_multiple_of(masks)) {
            return bad(format!(
                "with {masks} colours, hidden must be a multiple of {} and head_hidden of {masks} (each colour gets \
                 its own block of channels): {} and {}",
                2 * masks,
                self.hidden,
                self.head_hidden
            ));
        }
        let extent = (2 * m.height().max(m.width())).max(8); // a kernel spans both sides of its centre
        super::check_kernel_size("pixelcnn", self.first_kernel, 1, extent)?;
        super::check_kernel_size("pixelcnn", self.kernel, 1, extent)
    }

    fn param_estimate(&self, m: &ModelConfig, out: u128) -> u128 {
        let w = limits::wide;
        let (cin, h, hh) = (
            w(m.input.channels(m.num_values) * m.colors()),
            w(self.hidden),
            w(self.head_hidden),
        );
        let (k1, k) = (w(self.first_kernel), w(self.kernel));
        let block = h * h + h * h * k * k / 4 + 2 * h;
        cin * h * k1 * k1 + h + w(self.blocks) * block + h * hh + hh * out * w(m.colors()) + hh
    }

    fn activation_shape(&self, _m: &ModelConfig) -> (usize, usize, usize) {
        (2 * self.hidden.max(self.head_hidden), self.blocks + 1, 0)
    }

    fn build(&self, m: &ModelConfig, vb: VarBuilder) -> Result<Box<dyn CausalNet>> {
        Ok(Box::new(PixelCnn::new(m, self, vb)?))
    }

    fn default_input(&self) -> Option<InputEncoding> {
        Some(InputEncoding::OneHot)
    }

    fn is_2d(&self) -> bool {
        true
    }

    fn apply(&mut self, f: &ArchFlags) -> Result<()> {
        self.hidden = f.hidden.unwrap_or(self.hidden);
        self.kernel = f.kernel.unwrap_or(self.kernel);
        self.blocks = f.layers.unwrap_or(self.blocks);
        f.refuse("pixelcnn", &[("--dilations", f.dilations.is_some())])
    }
}

struct Block {
    reduce: PlannedConv2d, // 1×1, C → C/2
    masked: PlannedConv2d, // k×k type B, C/2 → C/2
    expand: PlannedConv2d, // 1×1, C/2 → C
}

pub struct PixelCnn {
    first: PlannedConv2d,
    blocks: Vec<Block>,
    head: ImageHead,
    cfg: Config,
    m: ModelConfig,
}

impl PixelCnn {
    pub fn new(m: &ModelConfig, cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate(m)?;
        let (c, half, colors) = (cfg.hidden, cfg.hidden / 2, m.network_colours());
        let c_in = m.colors() * m.input.channels(m.num_values);
        // Gray (and the pixel mixture): the first layer's mask A drops the centre tap. Colour masks: the centre
        // tap stays and its colour mask A lets each colour read only the earlier colours of the same pixel.
        let first = if colors == 1 {
            masked_conv2d(c_in, c, cfg.first_kernel, ConvType::A, vb.pp("first"))?
        } else {
            masked_conv2d(c_in, c, cfg.first_kernel, ConvType::B, vb.pp("first"))?.with_colours(colors, ConvType::A)?
        };
        let b = |conv: PlannedConv2d| conv.with_colours(colors, ConvType::B);
        let blocks = (0..cfg.blocks)
            .map(|i| {
                let vb = vb.pp("blocks").pp(i);
                Ok(Block {
                    reduce: b(conv1x1(c, half, vb.pp("reduce"))?)?,
                    masked: b(masked_conv2d(half, half, cfg.kernel, ConvType::B, vb.pp("masked"))?)?,
                    expand: b(conv1x1(half, c, vb.pp("expand"))?)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head = ImageHead::new(c, cfg.head_hidden, m.colors(), m.likelihood(), m.colour_mixture(), vb)?;
        Ok(Self {
            first,
            blocks,
            head,
            cfg: cfg.clone(),
            m: m.clone(),
        })
    }
}

impl CausalNet for PixelCnn {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (b, d) = x.dims2()?;
        let (h, w, k) = (self.m.height(), self.m.width(), self.m.num_values);
        if d != self.m.dim() {
            return Err(Error::Config(format!(
                "pixelcnn: input has {d} values per example, the model is {h}×{w}×{}",
                self.m.colors()
            )));
        }
        let dtype = self.first.weight().dtype();
        let e = self.m.input.encode(x, k, dtype)?.reshape((b, h, w, ()))?; // [B, H, W, colors·E]
        let mut s = self.first.forward(&e)?; // [B, H, W, C]
        for (i, blk) in self.blocks.iter().enumerate() {
            let t = blk.reduce.forward(&s.relu()?)?.relu()?;
            let t = blk.masked.forward(&t)?.relu()?;
            let t = dropout(&blk.expand.forward(&t)?, self.m.dropout, mode, i as u64)?;
            s = (s + t)?;
        }
        self.head.forward(&s, x)
    }

    /// Input pixels that θ of the last pixel depends on.
    fn receptive_field(&self) -> usize {
        let (h, w) = (self.m.height(), self.m.width());
        let mut set = vec![vec![false; w]; h];
        set[h - 1][w - 1] = true;
        for _ in &self.blocks {
            set = union(&set, &reach(&set, &masked_plan(self.cfg.kernel, ConvType::B)));
        }
        set = reach(&set, &masked_plan(self.cfg.first_kernel, ConvType::A));
        // Every colour of each earlier pixel seen, and the last pixel's own earlier colours.
        let colors = self.m.colors();
        set.iter().flatten().filter(|&&v| v).count() * colors + colors - 1
    }

    fn stepper(
        &self,
        batch: usize,
        _labels: Option<&[u32]>,
        arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        Ok(Some(Box::new(PixelCnnStepper::new(self, batch, arithmetic)?)))
    }
}

/// Cached stepping (Fast PixelCNN++, Ramachandran et al. 2017): the masked convolutions keep their inputs
/// at every pixel generated so far, and each new pixel costs one column through the stack — its own taps of
/// each masked kernel and its own row of each 1×1.
pub struct PixelCnnStepper<'a> {
    net: &'a PixelCnn,
    first: StepConv,
    blocks: Vec<[StepConv; 3]>, // reduce (1×1), masked, expand (1×1)
    head: HeadStepper,
    d: usize,
}

impl<'a> PixelCnnStepper<'a> {
    fn new(net: &'a PixelCnn, batch: usize, arithmetic: Arithmetic) -> Result<Self> {
        let grid = (net.m.height(), net.m.width());
        let step =
            |c: &PlannedConv2d, grid| -> Result<StepConv> { Ok(c.stepper(grid, batch)?.with_arithmetic(arithmetic)) };
        let blocks = net
            .blocks
            .iter()
            .map(|b| {
                Ok([
                    step(&b.reduce, (0, 0))?,
                    step(&b.masked, grid)?,
                    step(&b.expand, (0, 0))?,
                ])
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            net,
            first: step(&net.first, grid)?,
            blocks,
            head: net.head.stepper(batch, arithmetic)?,
            d: 0,
        })
    }
}

impl Stepper for PixelCnnStepper<'_> {
    /// Step d is colour d % colors of pixel d / colors: the value drawn at d − 1 enters its pixel's input,
    /// and the current pixel's column is computed (again, for each colour of a colour image with colour
    /// masks, which keep the colours not drawn yet out of it; once, at R, with the pixel mixture, whose later
    /// colours come from the head alone).
    fn step(&mut self, prev: Option<&[u32]>) -> Result<Vec<Vec<f32>>> {
        let (d, m) = (self.d, &self.net.m);
        let colors = m.colors();
        if let Some(prev) = prev {
            let e = m.input.encode_values(prev, m.num_values); // [B][E]
            let width = e.len() / prev.len();
            self.first.set_channels((d - 1) / colors, (d - 1) % colors * width, &e);
            self.head.record(prev, (d - 1) % colors);
        }
        let (px, colour) = (d / colors, d % colors);
        self.d += 1;
        if !self.head.needs_column(colour) {
            return self.head.step(None, colour);
        }
        let at = px..px + 1;
        let mut s = self.first.output(at.clone()); // [B][C]: the residual stream at this pixel
        for [reduce, masked, expand] in &mut self.blocks {
            let mut t = s.clone();
            relu_in_place(&mut t);
            let mut t = reduce.pointwise(&t);
            relu_in_place(&mut t);
            masked.set(at.clone(), &t);
            let mut t = masked.output(at.clone());
            relu_in_place(&mut t);
            s.iter_mut().zip(expand.pointwise(&t)).for_each(|(a, b)| *a += b);
        }
        self.head.step(Some(s), colour)
    }
}
