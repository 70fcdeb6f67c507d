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

use candle_core::DType;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::image_head::ImageHead;
use super::{at_most, ArchFlags, CausalNet, Family, FlowNet, InputEncoding, ModelConfig};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::masked_conv2d::{masked_plan, reach, union};
use crate::nn::{conv1x1, masked_conv2d, ConvType, Flow, PlannedConv2d};

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
        super::check_kernel_size_2d("first_kernel", self.first_kernel, m)?;
        super::check_kernel_size_2d("kernel", self.kernel, m)
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

impl FlowNet for PixelCnn {
    fn model(&self) -> &ModelConfig {
        &self.m
    }

    fn dtype(&self) -> DType {
        self.first.weight().dtype()
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

    /// The encoded image `[B, H, W, colors·E]` → the residual stream `[B, H, W, C]`: the first layer, then
    /// each block (ReLU → 1×1 → ReLU → masked k×k → ReLU → 1×1 → dropout) added back.
    fn network<F: Flow>(&self, f: &mut F, x: F::Act) -> Result<F::Act> {
        let mut s = f.conv(&self.first, &x)?;
        for (i, blk) in self.blocks.iter().enumerate() {
            let t = f.relu(s.clone())?;
            let t = f.conv(&blk.reduce, &t)?;
            let t = f.relu(t)?;
            let t = f.conv(&blk.masked, &t)?;
            let t = f.relu(t)?;
            let t = f.conv(&blk.expand, &t)?;
            let t = f.dropout(t, i as u64)?;
            s = f.add(s, &t)?;
        }
        Ok(s)
    }

    fn head(&self) -> Option<&ImageHead> {
        Some(&self.head)
    }
}
