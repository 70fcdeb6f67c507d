//! Polyak averaging: an exponential moving average of the weights (PixelCNN++ evaluates with one, decay
//! 0.9995). The average, not the raw weights, is what validation sees and what `best.safetensors` holds;
//! the optimizer keeps stepping the raw weights.
//!
//! The decay warms up as in TensorFlow's `ExponentialMovingAverage(num_updates)`: after n updates it is
//! min(decay, (1 + n) / (10 + n)), so the first epochs are not dominated by the initial weights.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};

use crate::error::{Error, Result};

pub struct Ema {
    decay: f64,
    updates: usize,
    vars: Vec<(String, Var)>,
    shadow: Vec<Tensor>,
}

impl Ema {
    /// Starts the average at the current weights.
    pub fn new(decay: f64, vars: Vec<(String, Var)>) -> Result<Self> {
        let shadow = vars
            .iter()
            .map(|(_, v)| v.as_tensor().copy())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            decay,
            updates: 0,
            vars,
            shadow,
        })
    }

    /// The decay the next update uses.
    pub fn current_decay(&self) -> f64 {
        let n = self.updates as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    /// shadow ← d · shadow + (1 − d) · weights, after an optimizer step.
    pub fn update(&mut self) -> Result<()> {
        let d = self.current_decay();
        for ((_, var), s) in self.vars.iter().zip(self.shadow.iter_mut()) {
            *s = ((&*s * d)? + (var.as_tensor() * (1.0 - d))?)?;
        }
        self.updates += 1;
        Ok(())
    }

    /// Exchanges the weights and the average: call once to evaluate with the average, again to go back.
    pub fn swap(&mut self) -> Result<()> {
        for ((_, var), s) in self.vars.iter().zip(self.shadow.iter_mut()) {
            let raw = var.as_tensor().copy()?;
            var.set(s)?;
            *s = raw;
        }
        Ok(())
    }

    /// The average, by `ema.NAME`, for the resume checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .zip(&self.shadow)
            .map(|((name, _), s)| (format!("ema.{name}"), s.clone()))
            .collect()
    }

    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, updates: usize, path: &Path) -> Result<()> {
        for ((name, var), slot) in self.vars.iter().zip(self.shadow.iter_mut()) {
            let key = format!("ema.{name}");
            let t = tensors.get(&key).ok_or_else(|| Error::MissingTensor {
                path: path.into(),
                tensor: key.clone(),
                held: "a resume checkpoint without the weight average (was it trained without ema?)".into(),
            })?;
            if t.dims() != var.dims() {
                return Err(Error::CheckpointMismatch {
                    path: path.into(),
                    tensor: key,
                    expected: var.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            *slot = t.to_dtype(var.dtype())?;
        }
        self.updates = updates;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The average follows the warmed-up decay by hand, and swap exchanges exactly.
    #[test]
    fn the_average_matches_the_formula_and_swaps_back() -> Result<()> {
        let p = Var::new(&[1.0f64, -2.0], &Device::Cpu)?;
        let mut ema = Ema::new(0.9, vec![("p".into(), p.clone())])?;
        let mut avg = [1.0f64, -2.0];
        for n in 0..100 {
            let w = [n as f64, 2.0 * n as f64];
            p.set(&Tensor::new(&w, &Device::Cpu)?)?;
            let d = 0.9f64.min((1.0 + n as f64) / (10.0 + n as f64));
            assert_eq!(ema.current_decay(), d);
            ema.update()?;
            for i in 0..2 {
                avg[i] = d * avg[i] + (1.0 - d) * w[i];
            }
        }
        assert!(
            (0.9 - ema.current_decay()).abs() < 1e-15,
            "the warm-up ends at the decay"
        );
        ema.swap()?;
        let got = p.as_tensor().to_vec1::<f64>()?;
        assert!(
            got.iter().zip(&avg).all(|(a, b)| (a - b).abs() < 1e-12),
            "{got:?} vs {avg:?}"
        );
        ema.swap()?;
        assert_eq!(p.as_tensor().to_vec1::<f64>()?, vec![99.0, 198.0]);
        Ok(())
    }
}
