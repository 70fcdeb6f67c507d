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

use super::image_head::{self, ColourMixture, HeadStepper, ImageHead};
use super::{Arithmetic, CausalNet, InputEncoding, Stepper};
use crate::error::{Error, Result};
use crate::likelihood::Likelihood;
use crate::nn::masked_conv2d::{masked_plan, reach, union};
use crate::nn::step::relu_in_place;
use crate::nn::{conv1x1, dropout, masked_conv2d, ConvType, Mode, PlannedConv2d, StepConv};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub num_values: usize,
    pub height: usize,
    pub width: usize,
    pub hidden: usize,       // channels of the residual stream
    pub first_kernel: usize, // the paper: 7
    pub blocks: usize,
    pub kernel: usize,      // masked kernel inside the blocks: 3
    pub head_hidden: usize, // channels of the 1×1 output head
    #[serde(default = "one_hot")]
    pub input: InputEncoding,
    #[serde(default)]
    pub dropout: f64,
    /// A discretized logistic mixture of this many components (PixelCNN++) instead of the categorical
    /// softmax over the K values.
    #[serde(default)]
    pub n_mix: Option<usize>,
    /// Colour channels per pixel: 1 (gray) or 3 (RGB), generated in that order within each pixel.
    #[serde(default = "one")]
    pub colors: usize,
    /// Colour images with a mixture: `pixel` (PixelCNN++) or `per_colour` (see `image_head`).
    #[serde(default, skip_serializing_if = "super::is_default")]
    pub colour_mixture: ColourMixture,
}

pub(crate) fn one() -> usize {
    1
}

pub(crate) fn one_hot() -> InputEncoding {
    InputEncoding::OneHot
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("pixelcnn: {m}")));
        if self.num_values < 2 || self.height == 0 || self.width == 0 || self.hidden < 2 || self.head_hidden == 0 {
            return bad("num_values ≥ 2, hidden ≥ 2; height, width and head_hidden ≥ 1".into());
        }
        if self.first_kernel.is_multiple_of(2) || self.kernel.is_multiple_of(2) || self.first_kernel < 3 {
            return bad(format!(
                "kernels must be odd (first ≥ 3): {} and {}",
                self.first_kernel, self.kernel
            ));
        }
        if self.n_mix == Some(0) {
            return bad("n_mix must be at least 1".into());
        }
        if self.colors == 0 {
            return bad("colors must be at least 1".into());
        }
        image_head::check("pixelcnn", self.colors, self.likelihood(), self.colour_mixture)?;
        let masks = self.network_colours();
        if masks > 1 && (!self.hidden.is_multiple_of(2 * masks) || !self.head_hidden.is_multiple_of(masks)) {
            return bad(format!(
                "with {masks} colours, hidden must be a multiple of {} and head_hidden of {masks} (each colour gets \
                 its own block of channels): {} and {}",
                2 * masks,
                self.hidden,
                self.head_hidden
            ));
        }
        let extent = (2 * self.height.max(self.width)).max(8); // a kernel spans both sides of its centre
        super::check_kernel_size("pixelcnn", self.first_kernel, 1, extent)?;
        super::check_kernel_size("pixelcnn", self.kernel, 1, extent)?;
        super::check_dropout(self.dropout)
    }

    /// Values per example: H·W·colors.
    pub fn dim(&self) -> usize {
        self.height * self.width * self.colors
    }

    /// The per-pixel distribution.
    pub fn likelihood(&self) -> Likelihood {
        Likelihood::for_values(self.num_values, self.n_mix)
    }

    /// The colours the network's channels are split into (1: no colour masks).
    fn network_colours(&self) -> usize {
        image_head::network_colours(self.colors, self.likelihood(), self.colour_mixture)
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
}

impl PixelCnn {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (c, half, colors) = (cfg.hidden, cfg.hidden / 2, cfg.network_colours());
        let c_in = cfg.colors * cfg.input.channels(cfg.num_values);
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
        let head = ImageHead::new(c, cfg.head_hidden, cfg.colors, cfg.likelihood(), cfg.colour_mixture, vb)?;
        Ok(Self {
            first,
            blocks,
            head,
            cfg: cfg.clone(),
        })
    }
}

impl CausalNet for PixelCnn {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (b, d) = x.dims2()?;
        let (h, w, k) = (self.cfg.height, self.cfg.width, self.cfg.num_values);
        if d != self.cfg.dim() {
            return Err(Error::Config(format!(
                "pixelcnn: input has {d} values per example, the model is {h}×{w}×{}",
                self.cfg.colors
            )));
        }
        let dtype = self.first.weight().dtype();
        let e = self.cfg.input.encode(x, k, dtype)?.reshape((b, h, w, ()))?; // [B, H, W, colors·E]
        let mut s = self.first.forward(&e)?; // [B, H, W, C]
        for (i, blk) in self.blocks.iter().enumerate() {
            let t = blk.reduce.forward(&s.relu()?)?.relu()?;
            let t = blk.masked.forward(&t)?.relu()?;
            let t = dropout(&blk.expand.forward(&t)?, self.cfg.dropout, mode, i as u64)?;
            s = (s + t)?;
        }
        self.head.forward(&s, x)
    }

    /// Input pixels that θ of the last pixel depends on.
    fn receptive_field(&self) -> usize {
        let (h, w) = (self.cfg.height, self.cfg.width);
        let mut set = vec![vec![false; w]; h];
        set[h - 1][w - 1] = true;
        for _ in &self.blocks {
            set = union(&set, &reach(&set, &masked_plan(self.cfg.kernel, ConvType::B)));
        }
        set = reach(&set, &masked_plan(self.cfg.first_kernel, ConvType::A));
        // Every colour of each earlier pixel seen, and the last pixel's own earlier colours.
        let colors = self.cfg.colors;
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
        let grid = (net.cfg.height, net.cfg.width);
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
        let (d, cfg) = (self.d, &self.net.cfg);
        let colors = cfg.colors;
        if let Some(prev) = prev {
            let e = cfg.input.encode_values(prev, cfg.num_values); // [B][E]
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
