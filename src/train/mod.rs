//! Maximum-likelihood training: shuffled mini-batches, Adam/Adamax, early stopping on validation NLL, the
//! best weights kept, checkpoints every epoch, exact resume, and a clean stop on Ctrl-C or a non-finite loss.

pub mod early_stopping;
pub mod ema;
mod exact_float;
pub mod metrics;
pub mod optim;
pub mod pictures;
pub mod run_dir;
pub mod update;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use candle_core::Tensor;

use crate::data::{Dataset, Splits};
use crate::error::{Error, Result};
use crate::models::{Arm, Mode, Reduction};
pub use early_stopping::{EarlyStopping, Verdict};
pub use ema::Ema;
pub use metrics::{evaluate, EpochRow, Evaluation};
pub use optim::{Optimizer, OptimizerKind};
pub use run_dir::{check_run_name, RunDir, RunLock};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub optimizer: OptimizerKind, // the seed uses Adamax
    pub lr: f64,
    pub batch_size: usize,
    pub max_epochs: usize,
    pub patience: usize, // epochs without a better validation NLL before stopping
    pub seed: u64,       // parameters, shuffling and samples all derive from it
    /// Clip the global gradient norm to this value (off by default; RNNs want it).
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// Polyak averaging: validate, select and save an exponential moving average of the weights with this
    /// decay, which averages over the last ~1/(1 − decay) steps (e.g. 0.995: 200; PixelCNN++ used 0.9995 on
    /// a far larger set). Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<f64>,
    /// Exponential learning-rate decay: epoch e (from 0) trains with lr × lr_decay^e (e.g. 0.98 halves the
    /// rate every 34 epochs; PixelCNN++ decayed by 0.999995 per step). Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_decay: Option<f64>,
    /// Decoupled weight decay (AdamW) on weight matrices and kernels, not biases: each step multiplies them
    /// by 1 − lr·weight_decay before the Adam(ax) update. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            optimizer: OptimizerKind::Adamax,
            lr: 1e-3,
            batch_size: 64,
            max_epochs: 1000,
            patience: 20,
            seed: 0,
            grad_clip: None,
            ema: None,
            lr_decay: None,
            weight_decay: None,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.into()));
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("train.lr must be a positive number");
        }
        for (name, n) in [
            ("batch_size", self.batch_size),
            ("max_epochs", self.max_epochs),
            ("patience", self.patience),
        ] {
            if n == 0 {
                return bad(&format!("train.{name} must be at least 1"));
            }
        }
        if self.grad_clip.is_some_and(|c| c <= 0.0 || !c.is_finite()) {
            return bad("train.grad_clip must be a positive number");
        }
        if self.ema.is_some_and(|d| !(0.0..1.0).contains(&d)) {
            return bad("train.ema is a decay in [0, 1), e.g. 0.999");
        }
        if self.lr_decay.is_some_and(|d| !(d > 0.0 && d <= 1.0)) {
            return bad("train.lr_decay is a factor per epoch in (0, 1], e.g. 0.98");
        }
        if self.weight_decay.is_some_and(|w| !(w >= 0.0 && w * self.lr < 1.0)) {
            return bad("train.weight_decay must be ≥ 0 with lr × weight_decay < 1, e.g. 0.01");
        }
        Ok(())
    }

    /// The learning rate of epoch `epoch` (counted from 0).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.lr * self.lr_decay.map_or(1.0, |d| d.powi(epoch as i32))
    }
}

/// Where the loop is: saved in `resume.safetensors` so that `--resume` continues exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct LoopState {
    epoch: usize, // epochs completed
    step: usize,  // batches completed in the current epoch
    #[serde(with = "exact_float")]
    loss_sum: f64, // Σ −log p over the current epoch's examples so far
    loss_count: usize, // examples so far in the current epoch
    early: EarlyStopping,
    optimizer_steps: usize,
    #[serde(with = "exact_float")]
    elapsed_secs: f64,
    #[serde(with = "exact_float")]
    epoch_secs: f64, // time spent in the current epoch before an interruption
}

impl LoopState {
    /// What a state read back must satisfy (the loop only writes such states): a file edited by hand or
    /// damaged is refused before it steers the run. The step within the epoch is checked against the
    /// epoch's length when the epoch starts ([`Session::train_epoch`]).
    fn check(&self) -> std::result::Result<(), String> {
        let times = [("elapsed_secs", self.elapsed_secs), ("epoch_secs", self.epoch_secs)];
        if let Some((name, v)) = times.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            return Err(format!("{name} = {v} is not a duration"));
        }
        if !self.loss_sum.is_finite() {
            return Err(format!("loss_sum = {} is not finite", self.loss_sum));
        }
        if (self.step == 0) != (self.loss_count == 0) {
            return Err(format!(
                "{} example(s) counted after {} step(s) of the epoch",
                self.loss_count, self.step
            ));
        }
        let e = &self.early;
        match e.best {
            None if self.epoch > 0 => Err(format!("no best validation NLL after {} epoch(s)", self.epoch)),
            Some(_) if self.epoch == 0 => Err("a best validation NLL before the first epoch".into()),
            Some(b) if !b.is_finite() => Err(format!("the best validation NLL is {b}")),
            Some(_) if !(1..=self.epoch).contains(&e.best_epoch) || e.bad_epochs > self.epoch - e.best_epoch => {
                Err(format!(
                    "best epoch {} with {} epoch(s) without improvement does not fit {} epoch(s) done",
                    e.best_epoch, e.bad_epochs, self.epoch
                ))
            }
            _ => Ok(()),
        }
    }
}

/// How a call to [`train`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    EarlyStopped,
    MaxEpochs,
    /// Ctrl-C (or `stop_after_steps`): the state is saved; `--resume` continues.
    Interrupted,
}

impl std::fmt::Display for Outcome {
    /// In words, to follow with "after N epochs": "stopped early", "reached the epoch limit", "interrupted".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::EarlyStopped => "stopped early",
            Outcome::MaxEpochs => "reached the epoch limit",
            Outcome::Interrupted => "interrupted",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub outcome: Outcome,
    pub epochs: usize,
    pub best_epoch: usize,
    pub best_val_nll: f64,
    pub wall_secs: f64,
}

/// Things outside the recipe that steer one call of [`train`].
#[derive(Debug, Clone, Default)]
pub struct Controls {
    /// Set (by a Ctrl-C handler) to stop after the current step, saving the state.
    pub interrupt: Arc<AtomicBool>,
    /// Behave as if interrupted after this many steps (for tests of resume).
    pub stop_after_steps: Option<usize>,
    /// No progress bar or epoch lines.
    pub quiet: bool,
}

/// The order of epoch `epoch`'s examples: a function of (seed, epoch) only, so a resumed run replays it.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15));
    idx.shuffle(&mut rng);
    idx
}

/// What the training loop needs of a model: its parameters, a differentiable objective on a batch, and a
/// validation score to select on — an ARM's negative log-likelihood, or a latent-variable model's −ELBO.
pub trait Trainable {
    fn params(&self) -> &crate::params::ParamStore;
    fn device(&self) -> &candle_core::Device;
    /// Whether batches carry the examples' class labels.
    fn uses_labels(&self) -> bool;
    /// The objective to minimise, averaged over the batch x `[B, D]`, in nats (`epoch` from 0, for schedules
    /// such as a KL warm-up).
    fn objective(&self, x: &Tensor, labels: Option<&Tensor>, mode: Mode, epoch: usize) -> Result<Tensor>;
    /// The validation score (lower is better, nats per example) that selects the best epoch.
    fn validate(&self, data: &Dataset) -> Result<Evaluation>;
}

impl Trainable for Arm {
    fn params(&self) -> &crate::params::ParamStore {
        Arm::params(self)
    }
    fn device(&self) -> &candle_core::Device {
        Arm::device(self)
    }
    fn uses_labels(&self) -> bool {
        self.num_classes().is_some()
    }
    fn objective(&self, x: &Tensor, labels: Option<&Tensor>, mode: Mode, _epoch: usize) -> Result<Tensor> {
        self.loss_labelled(x, labels, Reduction::Mean, mode)
    }
    fn validate(&self, data: &Dataset) -> Result<Evaluation> {
        evaluate(self, data, eval_batch(self.config()))
    }
}

/// Trains `model` on `splits.train`, selecting on `splits.val`, writing into `run`. With `resume`, continues
/// from `run`'s `resume.safetensors`. On return (other than an interruption) `model` holds the best weights.
///
/// The loop, step by step: [`Session::start`] (optimiser, average, state — restored on resume), then per
/// epoch [`Session::train_epoch`] (shuffled batches, one optimiser step each; stops cleanly on an interrupt)
/// and [`Session::end_epoch`] (validate, select, checkpoint, log), until early stopping or the epoch limit;
/// [`Session::finish`] loads the best weights.
pub fn train(
    model: &dyn Trainable,
    splits: &Splits,
    cfg: &TrainConfig,
    run: &RunDir,
    resume: bool,
    controls: &Controls,
) -> Result<Summary> {
    let mut session = Session::start(model, cfg, run, resume, controls)?;
    let outcome = loop {
        if let Some(outcome) = session.done() {
            break outcome;
        }
        if !session.train_epoch(&splits.train)? {
            break Outcome::Interrupted;
        }
        session.end_epoch(&splits.val)?;
    };
    session.finish(outcome)
}

/// One call of [`train`]: the model, its optimiser and weight average, where the loop is, and its outputs.
pub struct Session<'a> {
    model: &'a dyn Trainable,
    cfg: &'a TrainConfig,
    run: &'a RunDir,
    controls: &'a Controls,
    opt: Optimizer,
    ema: Option<Ema>,
    st: LoopState,
    rows: Vec<EpochRow>,
    pb: ProgressBar,
    started: Instant,
    epoch_started: Instant,
    steps_this_call: usize,
}

impl<'a> Session<'a> {
    /// The optimiser and the weight average, fresh or — with `resume` — restored with the weights, the loop
    /// state and the metrics rows from `run`.
    pub fn start(
        model: &'a dyn Trainable,
        cfg: &'a TrainConfig,
        run: &'a RunDir,
        resume: bool,
        controls: &'a Controls,
    ) -> Result<Self> {
        cfg.validate()?;
        let params = model.params();
        let mut opt =
            Optimizer::new(cfg.optimizer, cfg.lr, params.vars())?.with_weight_decay(cfg.weight_decay.unwrap_or(0.0));
        let mut ema = cfg.ema.map(|d| Ema::new(d, params.vars())).transpose()?;
        let mut rows = vec![];
        let mut st = LoopState {
            epoch: 0,
            step: 0,
            loss_sum: 0.0,
            loss_count: 0,
            early: EarlyStopping::new(cfg.patience),
            optimizer_steps: 0,
            elapsed_secs: 0.0,
            epoch_secs: 0.0,
        };
        if resume {
            let (tensors, state) = run.load_resume(params)?;
            let path = run.file("resume.safetensors");
            st = serde_json::from_str(&state)
                .map_err(|e| e.to_string())
                .and_then(|st: LoopState| st.check().map(|()| st))
                .map_err(|msg| Error::Checkpoint {
                    path: path.clone(),
                    msg: format!("bad training state: {msg}"),
                })?;
            st.early.patience = cfg.patience;
            let weights = tensors
                .iter()
                .filter(|(k, _)| !k.starts_with("optim.") && !k.starts_with("ema."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            params.assign(&weights, &path)?;
            opt.load_state(&tensors, st.optimizer_steps, &path)?;
            if let Some(ema) = &mut ema {
                ema.load_state(&tensors, st.optimizer_steps, &path)?;
            }
            // Rows written after the saved state (an epoch that finished but was not checkpointed) are redone.
            let metrics_path = run.file("metrics.csv");
            rows = metrics::read_csv(&metrics_path)?
                .into_iter()
                .filter(|r| r.epoch <= st.epoch)
                .collect();
            check_history(&metrics_path, &rows, st.epoch)?;
            // The best epoch's weights live only in best.safetensors: without it the run would train on and
            // fail at its end, when the best weights are read back for the test figures.
            let best = run.file("best.safetensors");
            if st.early.best.is_some() && !best.is_file() {
                return Err(Error::data(
                    best,
                    format!(
                        "is missing, and with it the weights of the run's best epoch ({}): restore it, or start \
                         the run again with --force",
                        st.early.best_epoch
                    ),
                ));
            }
        }
        let pb = if controls.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(Some(cfg.max_epochs as u64), ProgressDrawTarget::stderr())
        };
        pb.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] epoch {pos}/{len} {msg}")
                .unwrap()
                .progress_chars("=> "),
        );
        pb.set_prefix("train");
        pb.set_position(st.epoch as u64);
        let started = earlier(st.elapsed_secs);
        Ok(Self {
            model,
            cfg,
            run,
            controls,
            opt,
            ema,
            st,
            rows,
            pb,
            started,
            epoch_started: Instant::now(),
            steps_this_call: 0,
        })
    }

    /// How the loop ends before another epoch, if it does: the epoch limit, or early stopping.
    pub fn done(&self) -> Option<Outcome> {
        if self.st.epoch >= self.cfg.max_epochs {
            Some(Outcome::MaxEpochs)
        } else if self.st.early.bad_epochs >= self.cfg.patience {
            Some(Outcome::EarlyStopped)
        } else {
            None
        }
    }

    /// Saves the raw weights (never the average) and everything needed to continue exactly.
    fn save_resume(&self) -> Result<()> {
        let mut tensors = self.model.params().tensors()?;
        tensors.extend(self.opt.state_tensors());
        if let Some(ema) = &self.ema {
            tensors.extend(ema.state_tensors());
        }
        let state = serde_json::to_string(&self.st).expect("state serialises");
        self.run.save_resume(&tensors, &state, self.model.params())
    }

    /// The rest of the current epoch: shuffled batches of `train`, one optimiser step each. Returns `false`
    /// when interrupted (the state saved for `--resume`).
    pub fn train_epoch(&mut self, train: &Dataset) -> Result<bool> {
        let (cfg, model) = (self.cfg, self.model);
        self.epoch_started = earlier(self.st.epoch_secs);
        let order = epoch_order(train.len(), cfg.seed, self.st.epoch);
        let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
        if self.st.step > steps_per_epoch || self.st.loss_count > self.st.step * cfg.batch_size {
            return Err(Error::Checkpoint {
                path: self.run.file("resume.safetensors"),
                msg: format!(
                    "bad training state: step {} ({} examples) of an epoch of {steps_per_epoch} steps of {}",
                    self.st.step, self.st.loss_count, cfg.batch_size
                ),
            });
        }
        self.opt.set_lr(cfg.lr_at(self.st.epoch));
        for (step, idx) in order.chunks(cfg.batch_size).enumerate().skip(self.st.step) {
            if self.controls.interrupt.load(Ordering::SeqCst)
                || self
                    .controls
                    .stop_after_steps
                    .is_some_and(|s| self.steps_this_call >= s)
            {
                self.st.epoch_secs = self.epoch_started.elapsed().as_secs_f64();
                self.st.elapsed_secs = self.started.elapsed().as_secs_f64();
                self.save_resume()?;
                return Ok(false);
            }
            let x = train.batch(idx, model.device())?;
            let labels = match model.uses_labels() {
                true => Some(train.label_batch(idx, model.device())?),
                false => None,
            };
            // Dropout masks (and a latent model's noise) depend on (seed, step) only: a resumed run draws
            // the same ones.
            let mode = Mode::Train {
                seed: cfg.seed ^ (self.st.optimizer_steps as u64 + 1).wrapping_mul(0xD1B54A32D192ED03),
            };
            let loss = model.objective(&x, labels.as_ref(), mode, self.st.epoch)?;
            let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                return Err(self.non_finite(value, step));
            }
            let mut grads = loss.backward()?;
            if let Some(max_norm) = cfg.grad_clip {
                self.opt.clip_grad_norm(&mut grads, max_norm)?;
            }
            self.opt.step(&grads)?;
            if let Some(ema) = &mut self.ema {
                ema.update()?;
            }
            self.st.step = step + 1;
            self.st.loss_sum += value * idx.len() as f64;
            self.st.loss_count += idx.len();
            self.st.optimizer_steps = self.opt.steps_taken();
            self.steps_this_call += 1;
            self.pb
                .set_message(format!("step {}/{steps_per_epoch} loss {value:.3}", step + 1));
        }
        Ok(true)
    }

    /// The error for a non-finite loss at `step`. The weights are not saved: last.safetensors and
    /// resume.safetensors hold the last good epoch, if there is one. Resuming would replay the same steps, so
    /// the advice is a new recipe.
    fn non_finite(&self, value: f64, step: usize) -> Error {
        let kept = match self.st.epoch {
            0 => "no checkpoint was written (it failed in the first epoch); change the recipe (e.g. a lower --lr \
                  or --grad-clip) and start again with --force"
                .to_string(),
            e => format!(
                "the last good checkpoint (epoch {e}) is kept in last.safetensors and resume.safetensors; resuming \
                 would replay the same steps, so change the recipe (e.g. a lower --lr or --grad-clip) and start \
                 again with --force"
            ),
        };
        Error::NonFiniteLoss {
            loss: value as f32,
            epoch: self.st.epoch + 1,
            step,
            kept,
        }
    }

    /// Validates on `val` (the weight average, with Polyak averaging), keeps the best weights, writes the
    /// epoch's row, the last weights and the state to resume from, and reports the epoch.
    pub fn end_epoch(&mut self, val: &Dataset) -> Result<()> {
        let params = self.model.params();
        if let Some(ema) = &mut self.ema {
            ema.apply()?;
        }
        let score = self.model.validate(val)?;
        let epoch = self.st.epoch + 1;
        let verdict = self.st.early.update(epoch, score.nll);
        if verdict == Verdict::Improved {
            params.save(&self.run.file("best.safetensors"))?;
        }
        let epoch_secs = self.epoch_started.elapsed().as_secs_f64();
        let row = EpochRow {
            epoch,
            train_nll: self.st.loss_sum / self.st.loss_count.max(1) as f64,
            val_nll: score.nll,
            val_bpd: score.bpd,
            best_val_nll: self.st.early.best.unwrap_or(f64::NAN),
            epoch_secs,
            elapsed_secs: self.started.elapsed().as_secs_f64(),
        };
        self.rows.push(row.clone());
        metrics::write_csv(&self.run.file("metrics.csv"), &self.rows)?;
        params.save(&self.run.file("last.safetensors"))?;
        if let Some(ema) = &mut self.ema {
            ema.restore()?;
        }
        self.st = LoopState {
            epoch,
            step: 0,
            loss_sum: 0.0,
            loss_count: 0,
            epoch_secs: 0.0,
            elapsed_secs: row.elapsed_secs,
            ..self.st.clone()
        };
        self.save_resume()?;
        self.report(&row, verdict == Verdict::Improved);
        Ok(())
    }

    /// The progress bar's line, and the epoch's line unless quiet.
    fn report(&self, row: &EpochRow, improved: bool) {
        let (cfg, st) = (self.cfg, &self.st);
        let left = |epochs: usize| format_secs(epochs as f64 * row.epoch_secs);
        self.pb.set_position(row.epoch as u64);
        self.pb.set_message(format!(
            "train {:.3} val {:.3} best {:.3}@{} | left ≤{} (patience) ≤{} (max epochs)",
            row.train_nll,
            row.val_nll,
            row.best_val_nll,
            st.early.best_epoch,
            left(cfg.patience.saturating_sub(st.early.bad_epochs)),
            left(cfg.max_epochs.saturating_sub(row.epoch))
        ));
        if !self.controls.quiet {
            let line = format!(
                "epoch {:4}  train {:.3}  val {:.3} nats ({:.4} bpd)  best {:.3} @ {}  {:.1}s{}",
                row.epoch,
                row.train_nll,
                row.val_nll,
                row.val_bpd,
                row.best_val_nll,
                st.early.best_epoch,
                row.epoch_secs,
                if improved { "  *" } else { "" }
            );
            self.pb.suspend(|| eprintln!("{line}"));
        }
    }

    /// Ends the call: the best weights loaded into the model (unless interrupted), and the summary.
    pub fn finish(self, outcome: Outcome) -> Result<Summary> {
        self.pb.finish_and_clear();
        if outcome != Outcome::Interrupted {
            self.model.params().load(&self.run.file("best.safetensors"))?;
        }
        Ok(Summary {
            outcome,
            epochs: self.st.epoch,
            best_epoch: self.st.early.best_epoch,
            best_val_nll: self.st.early.best.unwrap_or(f64::NAN),
            wall_secs: self.started.elapsed().as_secs_f64(),
        })
    }
}

/// The batch to evaluate with: 64 examples (products of 64 images are already large enough to run at full
/// speed, and a larger batch only raises the run's peak memory), or fewer (halving) where a model's
/// activations for 64 would exceed [`crate::limits::MAX_ACTIVATION_BYTES`] (estimated). Every shipped
/// model evaluates 64 at a time.
pub fn eval_batch(model: &crate::models::ModelConfig) -> usize {
    let mut batch = 64;
    while batch > 1 && model.activation_bytes(batch) > crate::limits::MAX_ACTIVATION_BYTES {
        batch /= 2;
    }
    batch
}

/// The instant `secs` seconds ago (now, for a time a damaged state file makes negative or absurd).
fn earlier(secs: f64) -> Instant {
    let now = Instant::now();
    std::time::Duration::try_from_secs_f64(secs)
        .ok()
        .and_then(|d| now.checked_sub(d))
        .unwrap_or(now)
}

/// `metrics.csv` must hold one row for each of the `epochs` epochs a resumed state has behind it: a
/// missing or shortened history cannot be rebuilt from the checkpoint, and is refused rather than dropped.
fn check_history(path: &std::path::Path, rows: &[EpochRow], epochs: usize) -> Result<()> {
    if epochs > 0 && !path.is_file() {
        return Err(Error::data(
            path,
            format!(
                "missing, but the run has {epochs} epoch(s) behind it; their history cannot be rebuilt from the \
                 checkpoint, so --resume refuses rather than drop it: restore metrics.csv, or start again with --force"
            ),
        ));
    }
    let in_order = rows.iter().enumerate().all(|(i, r)| r.epoch == i + 1);
    if rows.len() != epochs || !in_order {
        return Err(Error::data(
            path,
            format!(
                "holds {} row(s) for epochs up to {}, but the checkpoint is at epoch {epochs}: the history {}; \
                 restore metrics.csv, or start again with --force",
                rows.len(),
                rows.last().map_or(0, |r| r.epoch),
                if in_order {
                    "is incomplete"
                } else {
                    "does not match it (rows repeated or out of order)"
                }
            ),
        ));
    }
    Ok(())
}

fn format_secs(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0}s")
    } else if s < 7200.0 {
        format!("{:.0}m", s / 60.0)
    } else {
        format!("{:.1}h", s / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evaluation batches shrink only for models whose 64-example batch would exceed the activation limit.
    #[test]
    fn evaluation_batches_fit_the_activation_limit() {
        for (name, _) in crate::config::NAMED {
            assert_eq!(
                eval_batch(&crate::config::RunConfig::named(name).unwrap().model),
                64,
                "{name}"
            );
        }
        let mut long = crate::config::RunConfig::seed().model;
        long.shape = crate::models::Shape::Sequence { length: 1 << 16 };
        let b = eval_batch(&long);
        assert!(
            b < 64 && long.activation_bytes(b) <= crate::limits::MAX_ACTIVATION_BYTES,
            "{b}"
        );
        assert!(long.activation_bytes(2 * b) > crate::limits::MAX_ACTIVATION_BYTES);
    }

    /// The saved loop state parses back bit for bit (serde_json's default float parser alone does not), so a
    /// resumed run reports the same best validation NLL as an uninterrupted one.
    #[test]
    fn loop_state_round_trips_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..20_000 {
            use rand::Rng;
            let x = |rng: &mut ChaCha8Rng| rng.random::<f64>() * 10f64.powi(rng.random_range(-3..4));
            let st = LoopState {
                epoch: 3,
                step: 0,
                loss_sum: x(&mut rng),
                loss_count: 7,
                early: EarlyStopping {
                    best: Some(x(&mut rng)),
                    ..EarlyStopping::new(4)
                },
                optimizer_steps: 9,
                elapsed_secs: x(&mut rng),
                epoch_secs: x(&mut rng),
            };
            let back: LoopState = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
            assert_eq!(back, st);
        }
        let old = r#"{"epoch":1,"step":0,"loss_sum":0.5,"loss_count":0,"early":{"patience":2,"best":86.25,
            "best_epoch":1,"bad_epochs":0},"optimizer_steps":16,"elapsed_secs":1.5,"epoch_secs":0.0}"#;
        let st: LoopState = serde_json::from_str(old).unwrap();
        assert_eq!((st.early.best, st.elapsed_secs), (Some(86.25), 1.5));
    }
}
