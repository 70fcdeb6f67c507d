//! The seed chapter's ARM: a stack of causal 1-D convolutions (type A first, then type B), LeakyReLU between
//! layers, a categorical output over K values. With dilations 1, 2, 4, 8 the same file gives the dilated
//! stack of WaveNet without gates (van den Oord et al. 2016a).

use candle_core::DType;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{at_most, ArchFlags, CausalNet, Family, FlowNet, ModelConfig};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::causal_conv1d::positions_seen;
use crate::nn::{causal_conv1d, CausalConv1d, CausalConv1dConfig, ConvType, Flow};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub hidden: usize, // channels of every hidden layer; the seed uses 256
    pub kernel: usize, // the seed uses 7
    /// One dilation per layer; the number of layers is its length (the seed: [1, 1, 1, 1]).
    pub dilations: Vec<usize>,
    /// Layer types; default A then B. A first layer of type B would let θ_d see x_d and is refused.
    #[serde(default)]
    pub layer_types: Option<Vec<ConvType>>,
    #[serde(default = "default_slope")]
    pub leaky_slope: f64, // LeakyReLU slope between layers (PyTorch's default 0.01)
}

fn default_slope() -> f64 {
    0.01
}

impl Default for Config {
    /// The seed chapter's network: 1 → 256 → 256 → 256 → K, kernel 7.
    fn default() -> Self {
        Self {
            hidden: 256,
            kernel: 7,
            dilations: vec![1; 4],
            layer_types: None,
            leaky_slope: 0.01,
        }
    }
}

impl Config {
    pub fn layer_types(&self) -> Vec<ConvType> {
        self.layer_types.clone().unwrap_or_else(|| {
            (0..self.dilations.len())
                .map(|i| if i == 0 { ConvType::A } else { ConvType::B })
                .collect()
        })
    }

    fn layer_configs(&self) -> Vec<CausalConv1dConfig> {
        self.dilations
            .iter()
            .zip(self.layer_types())
            .map(|(&dilation, kind)| CausalConv1dConfig {
                kernel: self.kernel,
                dilation,
                kind,
            })
            .collect()
    }

    /// Previous positions θ_d sees ([`positions_seen`]): with no gaps, (k−1)·d + 1 for the type-A layer plus
    /// (k−1)·d per type-B layer, at most `length` − 1.
    pub fn receptive_field(&self, length: usize) -> usize {
        positions_seen(&self.layer_configs(), length)
    }
}

impl Family for Config {
    fn validate(&self, m: &ModelConfig) -> Result<()> {
        let length = m.dim();
        at_most("hidden", self.hidden, limits::MAX_WIDTH)?;
        at_most("kernel", self.kernel, length + 1)?;
        super::check_dilations(&self.dilations, length)?;
        let bad = |m: String| Err(Error::Config(m));
        if self.hidden == 0 || self.kernel == 0 {
            return bad("hidden and kernel must be positive".into());
        }
        if self.dilations.is_empty() || self.dilations.contains(&0) {
            return bad(format!(
                "dilations = {:?}: need at least one layer, each dilation ≥ 1",
                self.dilations
            ));
        }
        super::check_kernel_size_1d(self.kernel, &self.dilations, length)?;
        let types = self.layer_types();
        if types.len() != self.dilations.len() {
            return bad(format!(
                "layer_types has {} entries but dilations has {} (one per layer)",
                types.len(),
                self.dilations.len()
            ));
        }
        if types[0] != ConvType::A {
            return bad(
                "the first layer is type B: it would see x_d, so θ_d would depend on the value it predicts. \
                 The first causal convolution must be type A"
                    .into(),
            );
        }
        if !(self.leaky_slope.is_finite()) {
            return bad(format!("leaky_slope = {} is not finite", self.leaky_slope));
        }
        Ok(())
    }

    fn param_estimate(&self, m: &ModelConfig, out: u128) -> u128 {
        let w = limits::wide;
        let (cin, h, l) = (
            w(m.input.channels(m.num_values)),
            w(self.hidden),
            w(self.dilations.len()),
        );
        w(self.kernel) * (cin * h + l * h * h + h * out) + l * h + out
    }

    fn activation_shape(&self, _m: &ModelConfig) -> (usize, usize, usize) {
        // A dilated causal convolution pads its input by (kernel − 1) × dilation positions.
        let pad = self.kernel.saturating_sub(1) * self.dilations.iter().max().unwrap_or(&1);
        (self.hidden, self.dilations.len(), pad)
    }

    fn build(&self, m: &ModelConfig, vb: VarBuilder) -> Result<Box<dyn CausalNet>> {
        Ok(Box::new(CausalConvNet::new(m, self, vb)?))
    }

    fn apply(&mut self, f: &ArchFlags) -> Result<()> {
        self.hidden = f.hidden.unwrap_or(self.hidden);
        self.kernel = f.kernel.unwrap_or(self.kernel);
        match (&f.dilations, f.layers) {
            (Some(d), Some(n)) if d.len() != n => {
                return Err(Error::Config(format!(
                    "--dilations has {} entries but --layers is {n}",
                    d.len()
                )))
            }
            (Some(d), _) => self.dilations = d.clone(),
            (None, Some(n)) => {
                // Checked before the list is made: a count from the command line could exhaust memory.
                super::at_most("dilations (layers)", n, crate::limits::MAX_LAYERS)?;
                self.dilations = vec![1; n]
            }
            (None, None) => {}
        }
        if f.dilations.is_some() || f.layers.is_some() {
            self.layer_types = None; // re-derived: A first, then B
        }
        Ok(())
    }
}

pub struct CausalConvNet {
    layers: Vec<CausalConv1d>,
    cfg: Config,
    m: ModelConfig,
}

impl CausalConvNet {
    /// Weight names follow the seed's PyTorch `nn.Sequential`: `net.{0,2,4,…}.conv1d.{weight,bias}` (the odd
    /// indices are the LeakyReLUs), so the reference `state_dict` loads as it is.
    pub fn new(m: &ModelConfig, cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate(m)?;
        let n = cfg.dilations.len();
        let c_in = m.input.channels(m.num_values);
        let mut layers = Vec::with_capacity(n);
        for (i, lc) in cfg.layer_configs().into_iter().enumerate() {
            let from = if i == 0 { c_in } else { cfg.hidden };
            let to = if i + 1 == n {
                m.outputs_per_position()
            } else {
                cfg.hidden
            };
            layers.push(causal_conv1d(from, to, lc, vb.pp("net").pp(2 * i).pp("conv1d"))?);
        }
        Ok(Self {
            layers,
            cfg: cfg.clone(),
            m: m.clone(),
        })
    }
}

impl FlowNet for CausalConvNet {
    fn model(&self) -> &ModelConfig {
        &self.m
    }

    fn dtype(&self) -> DType {
        self.layers[0].weight().dtype()
    }

    fn receptive_field(&self) -> usize {
        self.cfg.receptive_field(self.m.dim())
    }

    /// Each hidden layer conv → LeakyReLU (one fused pass) → dropout, then the last conv: `[B, D, C_in]` →
    /// `[B, D, P]`.
    fn network<F: Flow>(&self, f: &mut F, mut h: F::Act) -> Result<F::Act> {
        let (last, hidden) = self.layers.split_last().expect("at least one layer");
        for (i, layer) in hidden.iter().enumerate() {
            h = f.conv_leaky(layer, &h, self.cfg.leaky_slope)?;
            h = f.dropout(h, i as u64)?;
        }
        Ok(f.conv(last, &h)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Arm, Network};
    use candle_core::{Device, Tensor};

    fn tiny(k: usize, d: usize, dilations: Vec<usize>) -> ModelConfig {
        let net = Config {
            hidden: 5,
            kernel: 2,
            dilations,
            ..Config::default()
        };
        ModelConfig::sequence(Network::CausalConv(net), k, d)
    }

    /// `--layers` is checked against the limit before its list of dilations is made (`usize::MAX` would
    /// abort on the allocation).
    #[test]
    fn a_layer_count_is_checked_before_it_is_built() {
        let flags = |n| crate::models::ArchFlags {
            layers: Some(n),
            ..Default::default()
        };
        let e = Config::default().apply(&flags(usize::MAX)).unwrap_err().to_string();
        assert!(e.contains("exceeds the limit"), "{e}");
        let mut c = Config::default();
        c.apply(&flags(3)).unwrap();
        assert_eq!(c.dilations, vec![1; 3]);
    }

    #[test]
    fn receptive_field_is_the_sum_of_reaches() {
        let Network::CausalConv(seed) = crate::config::RunConfig::seed().model.network else {
            unreachable!()
        };
        assert_eq!(seed.receptive_field(64), 25); // 7 (type A) + 3 × 6
        let dilated = Config {
            dilations: vec![1, 2, 4, 8],
            kernel: 2,
            ..Config::default()
        };
        assert_eq!(dilated.receptive_field(64), 2 + 2 + 4 + 8);
    }

    #[test]
    fn values_outside_0_to_k_minus_1_are_refused() -> Result<()> {
        let arm = Arm::new(&tiny(3, 4, vec![1]), 0, DType::F32, &Device::Cpu)?;
        let x = Tensor::new(&[[0u32, 1, 3, 2]], &Device::Cpu)?;
        let e = arm.log_prob(&x).unwrap_err().to_string();
        assert!(e.contains("value 3 at position 2 is outside 0..2"), "{e}");
        Ok(())
    }

    /// A kernel far wider than the sequence is refused before any weight is allocated.
    #[test]
    fn absurd_kernels_are_refused() {
        let mut m = tiny(3, 4, vec![1]);
        let Network::CausalConv(c) = &mut m.network else {
            unreachable!()
        };
        c.kernel = 100_000_000;
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("model.kernel = 100000000 exceeds"), "{e}");
        let Network::CausalConv(c) = &mut m.network else {
            unreachable!()
        };
        c.kernel = 5; // exactly the whole sequence and one more: fine
        m.validate().unwrap();
    }
}
