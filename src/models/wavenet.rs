//! A WaveNet-style stack (van den Oord et al. 2016a) for sequences of categorical values: a type-A causal
//! convolution, then residual blocks of dilated causal convolutions with gated units
//! z = tanh(W_f ∗ x) ⊙ σ(W_g ∗ x), each adding a 1×1 projection of z to the residual stream and another to
//! the skip sum; the output is ReLU → 1×1 → ReLU → 1×1 of the skip sum. With dilations 1, 2, 4, … the
//! receptive field grows exponentially with depth: k + (k−1)·Σ dilations.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{Arithmetic, CausalNet, InputEncoding, Stepper};
use crate::error::{Error, Result};
use crate::nn::step::relu_in_place;
use crate::nn::{causal_conv1d, dropout, gate, CausalConv1d, CausalConv1dConfig, ConvType, Mode, StepConv};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub num_values: usize,
    pub length: usize,
    pub residual_channels: usize,
    pub skip_channels: usize,
    pub kernel: usize, // WaveNet uses 2
    /// One residual block per entry, e.g. [1, 2, 4, 8, 16, 32] (repeat the cycle for more depth).
    pub dilations: Vec<usize>,
    #[serde(default = "one_hot")]
    pub input: InputEncoding, // one-hot by default: values are categories, not magnitudes
    /// Dropout on each block's gated output, in training.
    #[serde(default)]
    pub dropout: f64,
}

fn one_hot() -> InputEncoding {
    InputEncoding::OneHot
}

impl Config {
    /// k for the type-A input layer, plus (k−1)·d for every block.
    pub fn receptive_field(&self) -> usize {
        (self.kernel + (self.kernel - 1) * self.dilations.iter().sum::<usize>()).min(self.length)
    }

    pub fn validate(&self) -> Result<()> {
        if self.num_values < 2 || self.length == 0 || self.residual_channels == 0 || self.skip_channels == 0 {
            return Err(Error::Config(
                "wavenet: num_values ≥ 2; length and channel counts ≥ 1".into(),
            ));
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
            super::check_kernel_size("wavenet", self.kernel, d, self.length)?;
        }
        super::check_dropout(self.dropout)
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
}

fn one_by_one() -> CausalConv1dConfig {
    CausalConv1dConfig {
        kernel: 1,
        dilation: 1,
        kind: ConvType::B,
    }
}

impl WaveNet {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (c, s) = (cfg.residual_channels, cfg.skip_channels);
        let c_in = cfg.input.channels(cfg.num_values);
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
            head2: causal_conv1d(s, cfg.num_values, one_by_one(), vb.pp("head2"))?,
            cfg: cfg.clone(),
        })
    }
}

impl CausalNet for WaveNet {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let dtype = self.input.weight().dtype();
        let mut h = self
            .input
            .forward_blc(&self.cfg.input.encode(x, self.cfg.num_values, dtype)?)?; // [B, D, C]
        let mut skips: Option<Tensor> = None;
        for (i, block) in self.blocks.iter().enumerate() {
            let fg = block.filter_gate.forward_blc(&h)?; // [B, D, 2C]
            let z = gate(&fg)?; // [B, D, C]
            let z = dropout(&z, self.cfg.dropout, mode, i as u64)?;
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
        Ok(self.head2.forward_blc(&self.head1.forward_blc(&out)?.relu()?)?) // [B, D, K]
    }

    fn receptive_field(&self) -> usize {
        self.cfg.receptive_field()
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
        let d = net.cfg.length;
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
        let (b, t, cfg) = (self.batch, self.t, &self.net.cfg);
        let c = cfg.residual_channels;
        let at = t..t + 1;
        if let Some(prev) = prev {
            self.input.set(t - 1..t, &cfg.input.encode_values(prev, cfg.num_values));
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
        Ok(out.chunks(cfg.num_values).map(|r| r.to_vec()).collect())
    }
}
