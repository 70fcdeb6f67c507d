//! The 2-D models' output head: ReLU → 1×1 → ReLU → 1×1 at every pixel, then θ for every sub-pixel.
//!
//! How colour images get their distribution (`colour_mixture`, with a logistic mixture and `colors = 3`):
//! - `pixel` (PixelCNN++, the default): the network sees only the pixels before the current one and gives
//!   one mixture per pixel, 10M numbers — its component shared by R, G and B, the means of G and B linear in
//!   the earlier colours' values. The head turns it into the three colours' conditionals
//!   ([`logistic_mixture::rgb_channel_params`]), so the rest of the library still sees one gray mixture per
//!   sub-pixel, and their product is exactly the pixel mixture.
//! - `per_colour` (and always for the categorical): every channel of the network belongs to one colour
//!   (colour masks, R before G before B), and each colour's block gives its own distribution.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::likelihood::{logistic_mixture, Likelihood};
use crate::nn::step::relu_in_place;
use crate::nn::{conv1x1, Arithmetic, ConvType, PlannedConv2d, StepConv};

/// How a colour image's mixture ties the colours of a pixel together (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ColourMixture {
    /// PixelCNN++: one mixture per pixel from the pixels before it; G's and B's means linear in the earlier
    /// colours.
    #[default]
    Pixel,
    /// One mixture per colour, the colours linked by colour-masked channels.
    PerColour,
}

/// What the head gives per pixel.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Out {
    /// P parameters for each of the colours, colour c from the c-th block of channels.
    PerColour { colors: usize, p: usize },
    /// PixelCNN++'s 10M parameters of the whole RGB pixel.
    Pixel { n_mix: usize, num_bins: usize },
}

/// Whether a 2-D model with these settings uses PixelCNN++'s pixel mixture.
pub(crate) fn is_pixel_mixture(colors: usize, likelihood: Likelihood, mixture: ColourMixture) -> bool {
    colors > 1 && matches!(likelihood, Likelihood::LogisticMixture { .. }) && mixture == ColourMixture::Pixel
}

/// The colours the network's channels are split into: 1 (no colour masks: the network only sees whole pixels
/// before the current one) for gray images and for the pixel mixture.
pub(crate) fn network_colours(colors: usize, likelihood: Likelihood, mixture: ColourMixture) -> usize {
    if is_pixel_mixture(colors, likelihood, mixture) {
        1
    } else {
        colors
    }
}

pub struct ImageHead {
    hidden: PlannedConv2d,
    out: PlannedConv2d,
    kind: Out,
}

impl ImageHead {
    /// A head on `c` channels with `hidden` channels in between, for images of `colors` colours whose
    /// sub-pixels follow `likelihood`. Weights `head1` and `head2` under `vb`.
    pub fn new(
        c: usize,
        hidden: usize,
        colors: usize,
        likelihood: Likelihood,
        mixture: ColourMixture,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (kind, width) = match likelihood {
            Likelihood::LogisticMixture { num_values, n_mix } if is_pixel_mixture(colors, likelihood, mixture) => (
                Out::Pixel {
                    n_mix,
                    num_bins: num_values,
                },
                logistic_mixture::rgb_params_len(n_mix),
            ),
            _ => {
                let p = likelihood.params_per_dim();
                (Out::PerColour { colors, p }, colors * p)
            }
        };
        let masks = network_colours(colors, likelihood, mixture);
        Ok(Self {
            hidden: conv1x1(c, hidden, vb.pp("head1"))?.with_colours(masks, ConvType::B)?,
            out: conv1x1(hidden, width, vb.pp("head2"))?.with_colours(masks, ConvType::B)?,
            kind,
        })
    }

    /// The network's last stream s `[B, H, W, C]` and the input x `[B, D]` (D = H·W·colors; read only by
    /// the pixel mixture, each colour's parameters from the earlier colours of its pixel) → θ `[B, D, P]`.
    pub fn forward(&self, s: &Tensor, x: &Tensor) -> Result<Tensor> {
        let out = self
            .out
            .forward(&crate::nn::relu(&self.hidden.forward(&crate::nn::relu(s)?)?)?)?; // [B, H, W, width]
        let (b, d) = x.dims2()?;
        match self.kind {
            Out::PerColour { .. } => Ok(out.reshape((b, d, ()))?),
            Out::Pixel { n_mix, num_bins } => {
                let pixels = b * d / 3;
                let per = logistic_mixture::rgb_channel_params(
                    &out.reshape((pixels, ()))?,
                    &x.reshape((pixels, 3))?,
                    n_mix,
                    num_bins,
                )?; // [pixels, 3, 3M]
                Ok(per.reshape((b, d, ()))?)
            }
        }
    }

    /// The head one pixel at a time, in `arithmetic` (exact: the pixel mixture's conditionals in scalar code
    /// with `libm`, [`logistic_mixture::rgb_channel_params_exact`]).
    pub fn stepper(&self, batch: usize, arithmetic: Arithmetic) -> Result<HeadStepper> {
        Ok(HeadStepper {
            arithmetic,
            hidden: self.hidden.stepper((0, 0), batch)?.with_arithmetic(arithmetic),
            out: self.out.stepper((0, 0), batch)?.with_arithmetic(arithmetic),
            kind: self.kind,
            batch,
            pixel: vec![],
            values: vec![0; 3 * batch],
        })
    }
}

/// The head, one pixel at a time.
pub struct HeadStepper {
    arithmetic: Arithmetic,
    hidden: StepConv,
    out: StepConv,
    kind: Out,
    batch: usize,
    pixel: Vec<f32>,  // the pixel mixture's parameters at the current pixel, [B][10M]
    values: Vec<u32>, // the current pixel's colours drawn so far, [B][3]
}

impl HeadStepper {
    /// Whether colour `colour` of a pixel needs the network's column at that pixel: every colour with colour
    /// masks; only the first with the pixel mixture, whose network does not see the current pixel.
    pub fn needs_column(&self, colour: usize) -> bool {
        matches!(self.kind, Out::PerColour { .. }) || colour == 0
    }

    /// Colour `colour` of the current pixel was drawn: `values` `[B]`.
    pub fn record(&mut self, values: &[u32], colour: usize) {
        if matches!(self.kind, Out::Pixel { .. }) {
            for (b, &v) in values.iter().enumerate() {
                self.values[3 * b + colour] = v;
            }
        }
    }

    /// θ `[B][P]` of colour `colour` at the current pixel, from the network's stream there `[B][C]` (`None`
    /// when [`Self::needs_column`] says it is not needed).
    pub fn step(&mut self, stream: Option<Vec<f32>>, colour: usize) -> Result<Vec<Vec<f32>>> {
        let out = stream.map(|mut s| {
            relu_in_place(&mut s);
            let mut hidden = self.hidden.pointwise(&s);
            relu_in_place(&mut hidden);
            self.out.pointwise(&hidden)
        });
        match self.kind {
            Out::PerColour { colors, p } => {
                let out = out.ok_or_else(|| Error::Internal("the head needs the network's column".into()))?;
                Ok(out
                    .chunks(colors * p)
                    .map(|r| r[colour * p..(colour + 1) * p].to_vec())
                    .collect())
            }
            Out::Pixel { n_mix, num_bins } => {
                if let Some(out) = out {
                    self.pixel = out;
                }
                if self.arithmetic == Arithmetic::Exact {
                    let width = logistic_mixture::rgb_params_len(n_mix);
                    let rows = self.pixel.chunks(width).zip(self.values.chunks(3));
                    return Ok(rows
                        .map(|(p, x)| logistic_mixture::rgb_channel_params_exact(p, x, colour, n_mix, num_bins))
                        .collect());
                }
                let dev = Device::Cpu;
                let params = Tensor::from_slice(&self.pixel, (self.batch, ()), &dev)?;
                let x = Tensor::from_slice(&self.values, (self.batch, 3), &dev)?;
                let per = logistic_mixture::rgb_channel_params(&params, &x, n_mix, num_bins)?;
                Ok(per.i((.., colour))?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
            }
        }
    }
}
