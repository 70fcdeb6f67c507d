//! Adam and Adamax (Kingma & Ba 2015), as PyTorch implements them, with optional decoupled weight decay
//! (Loshchilov & Hutter 2019, PyTorch's AdamW rule), and state that can be saved and restored so a resumed
//! run continues exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::update::{optimizer_step, Moments, Rule};
use crate::error::Result;
use crate::params::checkpoint_tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adam,
    /// Adam with the infinity norm; the seed chapter's optimiser.
    Adamax,
}

pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: usize,
    vars: Vec<(String, Var)>,
    state: Vec<Moments>, // first moment, and second moment (Adam) or infinity norm (Adamax)
}

impl Optimizer {
    pub fn new(kind: OptimizerKind, lr: f64, vars: Vec<(String, Var)>) -> Result<Self> {
        let state = vars
            .iter()
            .map(|(_, v)| Moments::zeros(v.as_tensor()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            kind,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            step: 0,
            vars,
            state,
        })
    }

    /// Decoupled weight decay: each step first shrinks every weight matrix / kernel (tensors of rank ≥ 2)
    /// by a factor 1 − lr·wd, as PyTorch's AdamW does; biases and gains (rank 1) are left alone.
    pub fn with_weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }

    /// Changes the learning rate for the following steps (a schedule).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// Scales all gradients so their global L2 norm is at most `max_norm`; returns the norm before.
    pub fn clip_grad_norm(&self, grads: &mut GradStore, max_norm: f64) -> Result<f64> {
        let mut sq = 0.0;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var) {
                sq += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        let norm = sq.sqrt();
        if norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            for (_, var) in &self.vars {
                if let Some(g) = grads.remove(var) {
                    grads.insert(var, (g * scale)?);
                }
            }
        }
        Ok(norm)
    }

    /// One step on every parameter with a gradient, in place: the moments, then the weights (decayed first
    /// when weight decay is on and the parameter is a matrix or kernel).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        let c1 = self.lr / (1.0 - b1.powi(t));
        let (kind, lr, weight_decay) = (self.kind, self.lr, self.weight_decay);
        // Every parameter on its own (the elements' arithmetic does not depend on which thread runs it), in
        // parallel: most tensors are too small to split, and one after another they kept one core busy.
        let each = |((_, var), state): (&(String, Var), &mut Moments)| -> Result<()> {
            let Some(g) = grads.get(var) else { return Ok(()) };
            let w = var.as_tensor();
            let decay = (weight_decay > 0.0 && w.rank() >= 2).then_some(1.0 - lr * weight_decay);
            let (second, step) = match kind {
                OptimizerKind::Adam => {
                    let inv_c2 = 1.0 / (1.0 - b2.powi(t)).sqrt();
                    (Rule::SecondMoment { b2 }, Rule::AdamStep { decay, inv_c2, eps, c1 })
                }
                OptimizerKind::Adamax => (Rule::InfinityNorm { b2, eps }, Rule::AdamaxStep { decay, c1 }),
            };
            Ok(optimizer_step((Rule::FirstMoment { b1 }, second, step), w, g, state)?)
        };
        self.vars.par_iter().zip(self.state.par_iter_mut()).try_for_each(each)
    }

    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for ((name, var), state) in self.vars.iter().zip(&self.state) {
            let (m, v) = state.tensors(var.shape(), var.device()).expect("a CPU copy");
            out.insert(format!("optim.m.{name}"), m);
            out.insert(format!("optim.v.{name}"), v);
        }
        out
    }

    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: usize, path: &std::path::Path) -> Result<()> {
        for ((name, var), state) in self.vars.iter().zip(&mut self.state) {
            let [m, v] = ["m", "v"].map(|slot| {
                checkpoint_tensor(tensors, &format!("optim.{slot}.{name}"), var, path, || {
                    "a resume checkpoint without optimizer state".into()
                })
            });
            *state = Moments::from_tensors(m?, v?, var.dtype())?;
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One scalar parameter, gradient 2·p (loss p²): the first steps as PyTorch computes them by hand.
    #[test]
    fn first_steps_match_the_pytorch_update_rules() -> Result<()> {
        for kind in [OptimizerKind::Adam, OptimizerKind::Adamax] {
            let p = Var::new(&[1.0f64], &Device::Cpu)?;
            let mut opt = Optimizer::new(kind, 0.1, vec![("p".into(), p.clone())])?;
            let (mut m, mut v, mut x) = (0.0f64, 0.0f64, 1.0f64);
            for t in 1..=3 {
                let loss = p.as_tensor().sqr()?.sum_all()?;
                opt.step(&loss.backward()?)?;
                let g = 2.0 * x;
                m = 0.9 * m + 0.1 * g;
                x -= match kind {
                    OptimizerKind::Adam => {
                        v = 0.999 * v + 0.001 * g * g;
                        let denom = (v.sqrt() / (1.0 - 0.999f64.powi(t)).sqrt()) + 1e-8;
                        0.1 / (1.0 - 0.9f64.powi(t)) * m / denom
                    }
                    OptimizerKind::Adamax => {
                        v = (0.999 * v).max(g.abs() + 1e-8);
                        0.1 / (1.0 - 0.9f64.powi(t)) * m / v
                    }
                };
                let got = p.as_tensor().to_vec1::<f64>()?[0];
                assert!((got - x).abs() < 1e-12, "{kind:?} step {t}: {got} vs {x}");
            }
        }
        Ok(())
    }

    /// AdamW: the weight matrix shrinks by 1 − lr·wd before the Adam step; the bias (rank 1) does not.
    #[test]
    fn weight_decay_shrinks_matrices_not_biases_as_adamw_does() -> Result<()> {
        let (lr, wd) = (0.1, 0.5);
        let w = Var::new(&[[2.0f64]], &Device::Cpu)?;
        let b = Var::new(&[2.0f64], &Device::Cpu)?;
        let vars = vec![("w".into(), w.clone()), ("b".into(), b.clone())];
        let mut opt = Optimizer::new(OptimizerKind::Adam, lr, vars)?.with_weight_decay(wd);
        let loss = (w.as_tensor().sum_all()? + b.as_tensor().sum_all()?)?; // gradient 1 for both
        opt.step(&loss.backward()?)?;
        // First Adam step with gradient 1: m̂ = 1, v̂ = 1, update = lr·1/(1 + eps).
        let adam = lr / (1.0 + 1e-8);
        let got_w = w.as_tensor().flatten_all()?.to_vec1::<f64>()?[0];
        let got_b = b.as_tensor().to_vec1::<f64>()?[0];
        assert!((got_w - (2.0 * (1.0 - lr * wd) - adam)).abs() < 1e-12, "w = {got_w}");
        assert!((got_b - (2.0 - adam)).abs() < 1e-12, "b = {got_b}");
        Ok(())
    }
}
