//! A WaveNet-style stack (van den Oord et al. 2016a) for sequences of categorical values: a type-A causal
//! convolution, then residual blocks of dilated causal convolutions with gated units
//! z = tanh(W_f ∗ x) ⊙ σ(W_g ∗ x), each adding a 1×1 projection of z to the residual stream and another to
//! the skip sum; the output is ReLU → 1×1 → ReLU → 1×1 of the skip sum. With dilations 1, 2, 4, … the
//! receptive field grows exponentially with depth: k + (k−1)·Σ dilations.

use candle_core::DType;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{at_most, ArchFlags, CausalNet, Family, FlowNet, InputEncoding, ModelConfig};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::causal_conv1d::positions_seen;
use crate::nn::{causal_conv1d, CausalConv1d, CausalConv1dConfig, ConvType, Flow};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub residual_channels: usize,
    pub skip_channels: usize,
    pub kernel: usize, // WaveNet uses 2
    /// One residual block per entry, e.g. [1, 2, 4, 8, 16, 32] (repeat the cycle for more depth).
    pub dilations: Vec<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            residual_channels: 64,
            skip_channels: 64,
            kernel: 2,
            dilations: vec![1, 2, 4, 8, 16, 32],
        }
    }
}

impl Config {
    /// Previous positions θ_d sees ([`positions_seen`]): with no gaps, k for the type-A input layer plus
    /// (k−1)·d for every block, at most `length` − 1.
    pub fn receptive_field(&self, length: usize) -> usize {
        let layer = |dilation, kind| CausalConv1dConfig {
            kernel: self.kernel,
            dilation,
            kind,
        };
        let blocks = self.dilations.iter().map(|&d| layer(d, ConvType::B));
        let layers: Vec<_> = std::iter::once(layer(1, ConvType::A)).chain(blocks).collect();
        positions_seen(&layers, length)
    }
}

/// The input is one-hot by default (values are categories, not magnitudes); dropout (the model's) applies to
/// each block's gated output, in training.
impl Family for Config {
    fn validate(&self, m: &ModelConfig) -> Result<()> {
        let length = m.dim();
        at_most("residual_channels", self.residual_channels, limits::MAX_WIDTH)?;
        at_most("skip_channels", self.skip_channels, limits::MAX_WIDTH)?;
        at_most("kernel", self.kernel, length + 1)?;
        super::check_dilations(&self.dilations, length)?;
        if self.residual_channels == 0 || self.skip_channels == 0 {
            return Err(Error::Config("wavenet: channel counts must be at least 1".into()));
        }
        if self.kernel < 2 {
            return Err(Error::Config(
                "wavenet: kernel must be at least 2 (a type-A layer of kernel 1 sees nothing)".into(),
            ));
        }
        if self.dilations.is_empty() || self.dilations.contains(&0) {
            return Err(Error::Config(format!(
                "wavenet: dilations {:?} must be non-empty and ≥ 1",
                self.dilations
            )));
        }
        super::check_kernel_size_1d(self.kernel, &self.dilations, length)?;
        Ok(())
    }

    fn param_estimate(&self, m: &ModelConfig, out: u128) -> u128 {
        let w = limits::wide;
        let (cin, r, s, k) = (
            w(m.input.channels(m.num_values)),
            w(self.residual_channels),
            w(self.skip_channels),
            w(self.kernel),
        );
        let block = 2 * r * r * k + r * r + r * s + 4 * r + s;
        cin * r * k + w(self.dilations.len()) * block + s * s + s * out + r + s + out
    }

    fn activation_shape(&self, _m: &ModelConfig) -> (usize, usize, usize) {
        let pad = self.kernel.saturating_sub(1) * self.dilations.iter().max().unwrap_or(&1);
        (
            4 * self.residual_channels + self.skip_channels,
            self.dilations.len() + 1,
            pad,
        )
    }

    fn build(&self, m: &ModelConfig, vb: VarBuilder) -> Result<Box<dyn CausalNet>> {
        Ok(Box::new(WaveNet::new(m, self, vb)?))
    }

    fn default_input(&self) -> Option<InputEncoding> {
        Some(InputEncoding::OneHot)
    }

    fn apply(&mut self, f: &ArchFlags) -> Result<()> {
        self.kernel = f.kernel.unwrap_or(self.kernel);
        self.dilations = f.dilations.clone().unwrap_or(self.dilations.clone());
        f.refuse(
            "wavenet",
            &[
                (
                    "--hidden (use a config: residual_channels, skip_channels)",
                    f.hidden.is_some(),
                ),
                ("--layers (give --dilations, one per block)", f.layers.is_some()),
            ],
        )
    }
}

struct Block {
    filter_gate: CausalConv1d,      // C → 2C: the filter and gate halves of one convolution
    residual: Option<CausalConv1d>, // 1×1, C → C; none in the last block, whose stream nothing reads
    skip: CausalConv1d,             // 1×1, C → S
}

pub struct WaveNet {
    input: CausalConv1d,
    blocks: Vec<Block>,
    head1: CausalConv1d,
    head2: CausalConv1d,
    cfg: Config,
    m: ModelConfig,
}

fn one_by_one() -> CausalConv1dConfig {
    CausalConv1dConfig {
        kernel: 1,
        dilation: 1,
        kind: ConvType::B,
    }
}

impl WaveNet {
    pub fn new(m: &ModelConfig, cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate(m)?;
        let (c, s) = (cfg.residual_channels, cfg.skip_channels);
        let c_in = m.input.channels(m.num_values);
        let a = CausalConv1dConfig {
            kernel: cfg.kernel,
            dilation: 1,
            kind: ConvType::A,
        };
        let input = causal_conv1d(c_in, c, a, vb.pp("input"))?;
        let mut blocks = vec![];
        for (i, &dilation) in cfg.dilations.iter().enumerate() {
            let vb = vb.pp("blocks").pp(i);
            let dilated = CausalConv1dConfig {
                kernel: cfg.kernel,
                dilation,
                kind: ConvType::B,
            };
            blocks.push(Block {
                filter_gate: causal_conv1d(c, 2 * c, dilated, vb.pp("filter_gate"))?,
                residual: if i + 1 < cfg.dilations.len() {
                    Some(causal_conv1d(c, c, one_by_one(), vb.pp("residual"))?)
                } else {
                    None
                },
                skip: causal_conv1d(c, s, one_by_one(), vb.pp("skip"))?,
            });
        }
        Ok(Self {
            input,
            blocks,
            head1: causal_conv1d(s, s, one_by_one(), vb.pp("head1"))?,
            head2: causal_conv1d(s, m.outputs_per_position(), one_by_one(), vb.pp("head2"))?,
            cfg: cfg.clone(),
            m: m.clone(),
        })
    }
}

impl FlowNet for WaveNet {
    fn model(&self) -> &ModelConfig {
        &self.m
    }

    fn dtype(&self) -> DType {
        self.input.weight().dtype()
    }

    fn receptive_field(&self) -> usize {
        self.cfg.receptive_field(self.m.dim())
    }

    /// The input layer, the blocks (gate → dropout → residual and skip), the head on the skip sum:
    /// `[B, D, C_in]` → `[B, D, P]`.
    fn network<F: Flow>(&self, f: &mut F, x: F::Act) -> Result<F::Act> {
        let mut h = f.conv(&self.input, &x)?; // [B, D, C]
        let mut skips = None;
        for (i, block) in self.blocks.iter().enumerate() {
            let fg = f.conv(&block.filter_gate, &h)?; // [B, D, 2C]
            let z = f.gate(fg)?; // [B, D, C]
            let z = f.dropout(z, i as u64)?;
            if let Some(res) = &block.residual {
                let r = f.conv(res, &z)?;
                h = f.add(h, &r)?;
            }
            let s = f.conv(&block.skip, &z)?; // [B, D, S]
            skips = Some(match skips {
                Some(acc) => f.add(acc, &s)?,
                None => s,
            });
        }
        let out = f.relu(skips.expect("at least one block"))?;
        let out = f.conv(&self.head1, &out)?;
        let out = f.relu(out)?;
        Ok(f.conv(&self.head2, &out)?) // [B, D, P]
    }
}
