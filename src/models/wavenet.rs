//! A WaveNet-style stack (van den Oord et al. 2016a) for sequences of categorical values: a type-A causal
//! convolution, then residual blocks of dilated causal convolutions with gated units
//! z = tanh(W_f ∗ x) ⊙ σ(W_g ∗ x), each adding a 1×1 projection of z to the residual stream and another to
//! the skip sum; the output is ReLU → 1×1 → ReLU → 1×1 of the skip sum. With dilations 1, 2, 4, … the
//! receptive field grows exponentially with depth: k + (k−1)·Σ dilations.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{at_most, ArchFlags, Arithmetic, CausalNet, Family, InputEncoding, ModelConfig, Stepper};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::step::relu_in_place;
use crate::nn::{causal_conv1d, dropout, gate, CausalConv1d, CausalConv1dConfig, ConvType, Mode, StepConv};

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
    /// k for the type-A input layer, plus (k−1)·d for every block.
    pub fn receptive_field(&self, length: usize) -> usize {
        (self.kernel + (self.kernel - 1) * self.dilations.iter().sum::<usize>()).min(length)
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
        for &d in &self.dilations {
            super::check_kernel_size("wavenet", self.kernel, d, length)?;
        }
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

impl CausalNet for WaveNet {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let dtype = self.input.weight().dtype();
        let mut h = self
            .input
            .forward_blc(&self.m.input.encode(x, self.m.num_values, dtype)?)?; // [B, D, C]
        let mut skips: Option<Tensor> = None;
        for (i, block) in self.blocks.iter().enumerate() {
            let fg = block.filter_gate.forward_blc(&h)?; // [B, D, 2C]
            let z = gate(&fg)?; // [B, D, C]
            let z = dropout(&z, self.m.dropout, mode, i as u64)?;
            if let Some(res) = &block.residual {
                h = (h + res.forward_blc(&z)?)?;
            }
            let s = block.skip.forward_blc(&z)?; // [B, D, S]
            skips = Some(match skips {
                Some(acc) => (acc + s)?,
                None => s,
            });
        }
        let out = skips.expect("at least one block").relu()?;
        Ok(self.head2.forward_blc(&self.head1.forward_blc(&out)?.relu()?)?) // [B, D, P]
    }

    fn receptive_field(&self) -> usize {
        self.cfg.receptive_field(self.m.dim())
    }

    fn stepper(
        &self,
        batch: usize,
        _labels: Option<&[u32]>,
        arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        Ok(Some(Box::new(WaveNetStepper::new(self, batch, arithmetic)?)))
    }
}

/// Cached stepping (Fast WaveNet, Paine et al. 2016): every convolution keeps its past inputs, so each
/// position costs one column through the stack.
pub struct WaveNetStepper<'a> {
    net: &'a WaveNet,
    input: StepConv,
    blocks: Vec<(StepConv, Option<StepConv>, StepConv)>, // filter-gate, residual, skip
    head: (StepConv, StepConv),
    arithmetic: Arithmetic,
    batch: usize,
    t: usize,
}

impl<'a> WaveNetStepper<'a> {
    fn new(net: &'a WaveNet, batch: usize, arithmetic: Arithmetic) -> Result<Self> {
        let d = net.m.dim();
        let step = |c: &CausalConv1d| -> Result<StepConv> { Ok(c.stepper(d, batch)?.with_arithmetic(arithmetic)) };
        let blocks = net
            .blocks
            .iter()
            .map(|b| {
                Ok((
                    step(&b.filter_gate)?,
                    b.residual.as_ref().map(step).transpose()?,
                    step(&b.skip)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let head = (step(&net.head1)?, step(&net.head2)?);
        Ok(Self {
            net,
            input: step(&net.input)?,
            blocks,
            head,
            arithmetic,
            batch,
            t: 0,
        })
    }
}

impl Stepper for WaveNetStepper<'_> {
    fn step(&mut self, prev: Option<&[u32]>) -> Result<Vec<Vec<f32>>> {
        let (b, t, cfg, m) = (self.batch, self.t, &self.net.cfg, &self.net.m);
        let c = cfg.residual_channels;
        let at = t..t + 1;
        if let Some(prev) = prev {
            self.input.set(t - 1..t, &m.input.encode_values(prev, m.num_values));
        }
        let mut h = self.input.output(at.clone()); // [B][C]
        let mut skips = vec![0f32; b * cfg.skip_channels];
        for (fg, res, skip) in &mut self.blocks {
            fg.set(at.clone(), &h);
            let z = self.arithmetic.gate_rows(&fg.output(at.clone()), c); // [B][2C] → [B][C]
            if let Some(res) = res {
                res.set(at.clone(), &z);
                h.iter_mut().zip(res.output(at.clone())).for_each(|(a, r)| *a += r);
            }
            skip.set(at.clone(), &z);
            skips.iter_mut().zip(skip.output(at.clone())).for_each(|(a, s)| *a += s);
        }
        relu_in_place(&mut skips);
        self.head.0.set(at.clone(), &skips);
        let mut hidden = self.head.0.output(at.clone());
        relu_in_place(&mut hidden);
        self.head.1.set(at.clone(), &hidden);
        let out = self.head.1.output(at);
        self.t += 1;
        Ok(out.chunks(m.outputs_per_position()).map(|r| r.to_vec()).collect())
    }
}
