//! Polyak averaging: an exponential moving average of the weights (PixelCNN++ evaluates with one, decay
//! 0.9995). The average, not the raw weights, is what validation sees and what `best.safetensors` holds;
//! the optimizer keeps stepping the raw weights.
//!
//! The average is bias-corrected as Adam's moments are: it starts at zero and is divided by 1 − dⁿ after n
//! updates, so from the first steps it weighs the last ~1/(1 − d) steps and not the initial weights.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};
use rayon::prelude::*;

use super::update::{update, Rule};
use crate::error::Result;
use crate::params::checkpoint_tensor;

pub struct Ema {
    decay: f64,
    updates: usize,
    vars: Vec<(String, Var)>,
    shadow: Vec<Tensor>,          // Σ (1 − d) dᵏ w, not yet divided by 1 − dⁿ
    stashed: Option<Vec<Tensor>>, // the raw weights while the average is in the model
}

impl Ema {
    pub fn new(decay: f64, vars: Vec<(String, Var)>) -> Result<Self> {
        let shadow = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            decay,
            updates: 0,
            vars,
            shadow,
            stashed: None,
        })
    }

    /// shadow ← d · shadow + (1 − d) · weights, after an optimizer step. The weights are detached: an
    /// expression of a `Var` records its inputs for backprop, so each average would hold the previous one
    /// and a run's memory would grow by the model's size at every step. Each parameter on its own, in
    /// parallel, as the optimizer's step.
    pub fn update(&mut self) -> Result<()> {
        let rule = Rule::Average { d: self.decay };
        self.vars
            .par_iter()
            .zip(&self.shadow)
            .try_for_each(|((_, var), s)| update(rule, s, &[&var.as_tensor().detach()]))?;
        self.updates += 1;
        Ok(())
    }

    /// Puts the (bias-corrected) average into the model, keeping the raw weights aside until [`Self::restore`].
    /// Before any update the model keeps its weights.
    pub fn apply(&mut self) -> Result<()> {
        if self.stashed.is_some() || self.updates == 0 {
            return Ok(());
        }
        let correction = 1.0 / (1.0 - self.decay.powi(self.updates.min(i32::MAX as usize) as i32));
        let mut raw = Vec::with_capacity(self.vars.len());
        for ((_, var), s) in self.vars.iter().zip(&self.shadow) {
            raw.push(var.as_tensor().detach().copy()?);
            var.set(&(s * correction)?)?;
        }
        self.stashed = Some(raw);
        Ok(())
    }

    /// Puts the raw weights back after [`Self::apply`].
    pub fn restore(&mut self) -> Result<()> {
        if let Some(raw) = self.stashed.take() {
            for ((_, var), r) in self.vars.iter().zip(&raw) {
                var.set(r)?;
            }
        }
        Ok(())
    }

    /// The average, by `ema.NAME`, for the resume checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .zip(&self.shadow)
            // Copies: the average is updated in place after this returns.
            .map(|((name, _), s)| (format!("ema.{name}"), s.copy().expect("a CPU copy")))
            .collect()
    }

    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, updates: usize, path: &Path) -> Result<()> {
        for ((name, var), slot) in self.vars.iter().zip(self.shadow.iter_mut()) {
            let t = checkpoint_tensor(tensors, &format!("ema.{name}"), var, path, || {
                "a resume checkpoint without the weight average (was it trained without ema?)".into()
            })?;
            *slot = t.to_dtype(var.dtype())?.copy()?; // a tensor of its own, updated in place
        }
        self.updates = updates;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The average is the bias-corrected moving average by hand, and restore gives back the raw weights.
    #[test]
    fn the_average_matches_the_formula_and_restores() -> Result<()> {
        let p = Var::new(&[1.0f64, -2.0], &Device::Cpu)?;
        let mut ema = Ema::new(0.9, vec![("p".into(), p.clone())])?;
        ema.apply()?; // no update yet: the weights stay
        assert_eq!(p.as_tensor().to_vec1::<f64>()?, vec![1.0, -2.0]);
        ema.restore()?;
        let (mut num, mut den) = ([0.0f64; 2], 0.0f64);
        for n in 0..30 {
            let w = [n as f64, 2.0 * n as f64];
            p.set(&Tensor::new(&w, &Device::Cpu)?)?;
            ema.update()?;
            // Nothing keeps a backprop graph: a run would otherwise grow without bound.
            assert!(
                ema.shadow.iter().all(|s| !s.track_op()),
                "the average records its history"
            );
            // The weighted mean of the weights so far, weight 0.9^age.
            den = 0.9 * den + 1.0;
            for i in 0..2 {
                num[i] = 0.9 * num[i] + w[i];
            }
        }
        ema.apply()?;
        ema.apply()?; // twice is once
        let got = p.as_tensor().to_vec1::<f64>()?;
        for i in 0..2 {
            let want = num[i] / den;
            assert!((got[i] - want).abs() < 1e-9, "{got:?} vs {want}");
        }
        assert!(got[0] > 19.0 && got[0] < 29.0, "{got:?}: the last ~10 steps weigh most");
        ema.restore()?;
        assert_eq!(p.as_tensor().to_vec1::<f64>()?, vec![29.0, 58.0]);
        Ok(())
    }
}
