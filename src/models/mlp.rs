//! The seed chapter's finite-memory ARM: θ_d = MLP(x_{d−1}, …, x_{d−m}), one shared MLP for every position,
//! `[x_{d−1}, x_{d−2}] → Linear(2, M) → ReLU → Linear(M, K) → softmax` for memory m = 2.
//! Positions before the start read zeros (the padding value).

use candle_core::DType;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{at_most, ArchFlags, CausalNet, Family, FlowNet, ModelConfig};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::{linear, Flow, Linear};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How many previous values θ_d sees (the seed: 2).
    pub memory: usize,
    /// Hidden units M (the seed: 300).
    pub hidden: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self { memory: 2, hidden: 300 }
    }
}

impl Family for Config {
    fn validate(&self, m: &ModelConfig) -> Result<()> {
        at_most("hidden", self.hidden, limits::MAX_WIDTH)?;
        // A lag beyond the sequence reads only padding, and each lag pads the input once more: memory 10⁵
        // on 64 values took over 19 GB.
        at_most("memory (at most the length)", self.memory, m.dim().min(limits::MAX_DIM))?;
        if self.memory == 0 || self.hidden == 0 {
            return Err(Error::Config("mlp: memory and hidden must be at least 1".into()));
        }
        Ok(())
    }

    fn param_estimate(&self, m: &ModelConfig, out: u128) -> u128 {
        let w = limits::wide;
        let (cin, h) = (w(m.input.channels(m.num_values)), w(self.hidden));
        w(self.memory) * cin * h + h + h * out + out
    }

    fn activation_shape(&self, m: &ModelConfig) -> (usize, usize, usize) {
        (self.hidden + self.memory * m.input.channels(m.num_values), 1, 0)
    }

    fn build(&self, m: &ModelConfig, vb: VarBuilder) -> Result<Box<dyn CausalNet>> {
        Ok(Box::new(MlpNet::new(m, self, vb)?))
    }

    fn apply(&mut self, f: &ArchFlags) -> Result<()> {
        self.hidden = f.hidden.unwrap_or(self.hidden);
        f.refuse(
            "mlp",
            &[
                ("--kernel", f.kernel.is_some()),
                ("--dilations", f.dilations.is_some()),
                ("--layers", f.layers.is_some()),
            ],
        )
    }
}

pub struct MlpNet {
    hidden: Linear,
    out: Linear,
    cfg: Config,
    m: ModelConfig,
}

impl MlpNet {
    pub fn new(m: &ModelConfig, cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate(m)?;
        let c = m.input.channels(m.num_values);
        Ok(Self {
            hidden: linear(cfg.memory * c, cfg.hidden, vb.pp("hidden"))?,
            out: linear(cfg.hidden, m.outputs_per_position(), vb.pp("out"))?,
            cfg: cfg.clone(),
            m: m.clone(),
        })
    }
}

impl FlowNet for MlpNet {
    fn model(&self) -> &ModelConfig {
        &self.m
    }

    fn dtype(&self) -> DType {
        self.out.weight().dtype()
    }

    fn receptive_field(&self) -> usize {
        self.cfg.memory.min(self.m.dim().saturating_sub(1))
    }

    /// The window of the last m encoded values → Linear → ReLU → dropout → Linear: `[B, D, C]` → `[B, D, P]`.
    fn network<F: Flow>(&self, f: &mut F, x: F::Act) -> Result<F::Act> {
        let h = f.linear_lags(&self.hidden, self.cfg.memory, &x)?; // [B, D, M]
        let h = f.relu(h)?;
        let h = f.dropout(h, 0)?;
        Ok(f.conv(&self.out, &h)?) // [B, D, P]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Network;

    /// A memory beyond the sequence is refused (each lag pads the input once more); the whole length is fine.
    #[test]
    fn memory_is_at_most_the_length() {
        let m = |memory| ModelConfig::sequence(Network::Mlp(Config { memory, hidden: 3 }), 5, 14);
        let e = m(15).validate().unwrap_err().to_string();
        assert!(e.contains("memory (at most the length)"), "{e}");
        m(14).validate().unwrap();
    }
}
