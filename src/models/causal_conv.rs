//! The seed chapter's ARM: a stack of causal 1-D convolutions (type A first, then type B), LeakyReLU between
//! layers, a categorical output over K values. With dilations 1, 2, 4, 8 the same file gives the dilated
//! stack of WaveNet without gates (van den Oord et al. 2016a).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{CausalNet, InputEncoding};
use crate::error::{Error, Result};
use crate::nn::{causal_conv1d, leaky_relu, CausalConv1d, CausalConv1dConfig, ConvType};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub num_values: usize, // K: 17 for digits (0..16)
    pub length: usize,     // D: 64 for 8×8 digits
    pub hidden: usize,     // channels of every hidden layer; the seed uses 256
    pub kernel: usize,     // the seed uses 7
    /// One dilation per layer; the number of layers is its length (the seed: [1, 1, 1, 1]).
    pub dilations: Vec<usize>,
    /// Layer types; default A then B. A first layer of type B would let θ_d see x_d and is refused.
    #[serde(default)]
    pub layer_types: Option<Vec<ConvType>>,
    #[serde(default = "default_slope")]
    pub leaky_slope: f64, // LeakyReLU slope between layers (PyTorch's default 0.01)
    #[serde(default)]
    pub input: InputEncoding, // the seed feeds the raw value 0..16 as a float
}

fn default_slope() -> f64 {
    0.01
}

impl Default for Config {
    /// The seed chapter's network on 8×8 digits: 1 → 256 → 256 → 256 → 17, kernel 7.
    fn default() -> Self {
        Self {
            num_values: 17,
            length: 64,
            hidden: 256,
            kernel: 7,
            dilations: vec![1; 4],
            layer_types: None,
            leaky_slope: 0.01,
            input: InputEncoding::Raw,
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

    /// Previous positions θ_d sees: (k−1)·d + 1 for the type-A layer, plus (k−1)·d per type-B layer.
    pub fn receptive_field(&self) -> usize {
        self.layer_configs()
            .iter()
            .map(|c| c.reach())
            .sum::<usize>()
            .min(self.length)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.num_values < 2 {
            return bad(format!(
                "num_values = {}: a categorical needs at least 2 values",
                self.num_values
            ));
        }
        if self.length == 0 || self.hidden == 0 || self.kernel == 0 {
            return bad("length, hidden and kernel must be positive".into());
        }
        if self.dilations.is_empty() || self.dilations.contains(&0) {
            return bad(format!(
                "dilations = {:?}: need at least one layer, each dilation ≥ 1",
                self.dilations
            ));
        }
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
}

pub struct CausalConvNet {
    layers: Vec<CausalConv1d>,
    cfg: Config,
}

impl CausalConvNet {
    /// Weight names follow the seed's PyTorch `nn.Sequential`: `net.{0,2,4,…}.conv1d.{weight,bias}` (the odd
    /// indices are the LeakyReLUs), so the reference `state_dict` loads as it is.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.dilations.len();
        let c_in = cfg.input.channels(cfg.num_values);
        let mut layers = Vec::with_capacity(n);
        for (i, lc) in cfg.layer_configs().into_iter().enumerate() {
            let from = if i == 0 { c_in } else { cfg.hidden };
            let to = if i + 1 == n { cfg.num_values } else { cfg.hidden };
            layers.push(causal_conv1d(from, to, lc, vb.pp("net").pp(2 * i).pp("conv1d"))?);
        }
        Ok(Self {
            layers,
            cfg: cfg.clone(),
        })
    }
}

impl CausalNet for CausalConvNet {
    fn forward(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let dtype = self.layers[0].weight().dtype();
        let mut h = self.cfg.input.encode(x, self.cfg.num_values, dtype)?; // [B, D, C_in]
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward_blc(&h)?; // [B, D, hidden] … [B, D, K]
            if i + 1 < self.layers.len() {
                h = leaky_relu(&h, self.cfg.leaky_slope)?;
            }
        }
        Ok(h)
    }

    fn receptive_field(&self) -> usize {
        self.cfg.receptive_field()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Arm, ModelConfig, Reduction};
    use candle_core::{DType, Device};

    fn tiny(k: usize, d: usize, dilations: Vec<usize>, input: InputEncoding) -> ModelConfig {
        ModelConfig::CausalConv(Config {
            num_values: k,
            length: d,
            hidden: 5,
            kernel: 2,
            dilations,
            layer_types: None,
            leaky_slope: 0.01,
            input,
        })
    }

    fn random_x(b: usize, d: usize, k: usize, seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<u32> = (0..b * d).map(|_| rng.random_range(0..k as u32)).collect();
        Tensor::from_vec(v, (b, d), &Device::Cpu).unwrap()
    }

    /// Perturbing x_j leaves θ_d unchanged for every d ≤ j — and does change some θ_d with d > j.
    #[test]
    fn perturbing_x_j_changes_no_output_at_or_before_j() -> Result<()> {
        let (k, d) = (5, 12);
        for dilations in [vec![1, 1, 1], vec![1, 2, 4], vec![3, 1]] {
            for input in [InputEncoding::Raw, InputEncoding::OneHot] {
                let arm = Arm::new(&tiny(k, d, dilations.clone(), input), 1, DType::F64, &Device::Cpu)?;
                let x = random_x(3, d, k, 2);
                let base = arm.forward(&x, false)?;
                for j in 0..d {
                    let mut v = x.to_vec2::<u32>()?;
                    for row in v.iter_mut() {
                        row[j] = (row[j] + 1 + j as u32 % 3) % k as u32;
                    }
                    let moved = arm.forward(&Tensor::new(v, &Device::Cpu)?, false)?;
                    let diff = (moved - &base)?.abs()?.max(2)?.max(0)?.to_vec1::<f64>()?; // [D]
                    for (pos, &delta) in diff.iter().enumerate() {
                        if pos <= j {
                            assert_eq!(delta, 0.0, "{dilations:?} {input:?}: θ_{pos} changed with x_{j}");
                        }
                    }
                    if j + 1 < d {
                        assert!(diff[j + 1] > 0.0, "{dilations:?}: θ_{} should see x_{j}", j + 1);
                    }
                }
            }
        }
        Ok(())
    }

    /// Σ over all K^D sequences of p(x) = 1, on D = 3, K = 3 (27 sequences).
    #[test]
    fn probabilities_sum_to_one_on_tiny_config() -> Result<()> {
        for dilations in [vec![1, 1], vec![1, 2, 1]] {
            let arm = Arm::new(&tiny(3, 3, dilations, InputEncoding::Raw), 4, DType::F32, &Device::Cpu)?;
            let all: Vec<u32> = (0..27u32).flat_map(|i| [i / 9, (i / 3) % 3, i % 3]).collect();
            let x = Tensor::from_vec(all, (27, 3), &Device::Cpu)?;
            let total: f64 = arm
                .log_prob(&x)?
                .exp()?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?
                .iter()
                .sum();
            assert!((total - 1.0).abs() < 1e-5, "Σ p(x) = {total}");
        }
        Ok(())
    }

    /// The whole model's loss gradient against central finite differences, in f64, for every parameter tensor.
    #[test]
    fn model_gradient_matches_finite_differences_f64() -> Result<()> {
        let arm = Arm::new(
            &tiny(4, 9, vec![1, 2, 1], InputEncoding::Scaled),
            3,
            DType::F64,
            &Device::Cpu,
        )?;
        let x = random_x(4, 9, 4, 5);
        let grads = arm.loss(&x, Reduction::Mean, true)?.backward()?;
        for (name, var) in arm.params().vars() {
            let g = grads.get(&var).expect("gradient").flatten_all()?.to_vec1::<f64>()?;
            let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
            for i in (0..base.len()).step_by(3) {
                let at = |delta: f64| -> Result<f64> {
                    let mut v = base.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu)?)?;
                    Ok(arm.loss(&x, Reduction::Mean, false)?.to_scalar::<f64>()?)
                };
                let fd = (at(1e-6)? - at(-1e-6)?) / 2e-6;
                at(0.0)?;
                assert!(
                    (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{name}[{i}]: fd {fd} vs backprop {}",
                    g[i]
                );
            }
        }
        Ok(())
    }

    #[test]
    fn receptive_field_is_the_sum_of_reaches() {
        let ModelConfig::CausalConv(seed) = crate::config::RunConfig::seed().model;
        assert_eq!(seed.receptive_field(), 25); // 7 (type A) + 3 × 6
        let dilated = Config {
            dilations: vec![1, 2, 4, 8],
            kernel: 2,
            ..Config::default()
        };
        assert_eq!(dilated.receptive_field(), 2 + 2 + 4 + 8);
    }

    #[test]
    fn values_outside_0_to_k_minus_1_are_refused() -> Result<()> {
        let arm = Arm::new(&tiny(3, 4, vec![1], InputEncoding::Raw), 0, DType::F32, &Device::Cpu)?;
        let x = Tensor::new(&[[0u32, 1, 3, 2]], &Device::Cpu)?;
        let e = arm.log_prob(&x).unwrap_err().to_string();
        assert!(e.contains("value 3 at position 2 is outside 0..2"), "{e}");
        Ok(())
    }
}
