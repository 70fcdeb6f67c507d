//! Evaluation (nats per example, bits per dimension) and the per-epoch metrics file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::Arm;

/// Mean negative log-likelihood over a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// −log p(x) in nats, averaged over examples.
    pub nll: f64,
    /// The same in bits per dimension: nll / (D · ln 2).
    pub bpd: f64,
    pub examples: usize,
}

/// Evaluates −log p(x) on every example of `data`, `batch_size` at a time, summing in f64 (−log p(x | y)
/// with the data's labels for class-conditional models).
///
/// ```
/// use armory::data::{self, Splits};
/// use armory::models::{causal_conv, Arm, ModelConfig, Network};
/// use candle_core::{DType, Device};
///
/// let splits = Splits::by_position(&data::load("digits")?)?;
/// let cfg = ModelConfig::sequence(Network::CausalConv(causal_conv::Config { hidden: 8, ..Default::default() }), 17, 64);
/// let arm = Arm::new(&cfg, 0, DType::F32, &Device::Cpu)?;
/// let ev = armory::train::evaluate(&arm, &splits.test, 256)?;
/// assert_eq!(ev.examples, 447);
/// assert!((ev.bpd - ev.nll / (64.0 * std::f64::consts::LN_2)).abs() < 1e-9); // nats per image → bits per pixel
/// # Ok::<(), armory::Error>(())
/// ```
pub fn evaluate(arm: &Arm, data: &Dataset, batch_size: usize) -> Result<Evaluation> {
    if data.is_empty() {
        return Err(Error::Invalid("cannot evaluate on an empty dataset".into()));
    }
    let idx: Vec<usize> = (0..data.len()).collect();
    let mut total = 0.0;
    // The weights stay as they are: each convolution packs its kernel once for all batches.
    crate::nn::kernels::shifted_conv::with_frozen_weights(|| -> Result<()> {
        for chunk in idx.chunks(batch_size.max(1)) {
            let x = data.batch(chunk, arm.device())?;
            let labels = match arm.num_classes() {
                Some(_) => Some(data.label_batch(chunk, arm.device())?),
                None => None,
            };
            let lp = arm
                .log_prob_labelled(&x, labels.as_ref())?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?;
            total -= lp.iter().sum::<f64>();
        }
        Ok(())
    })?;
    let nll = total / data.len() as f64;
    if !nll.is_finite() {
        return Err(Error::NonFiniteOutput {
            what: format!("the model's −log p(x) over {} examples", data.len()),
            value: nll,
        });
    }
    Ok(Evaluation {
        nll,
        bpd: nll / (data.dim as f64 * std::f64::consts::LN_2),
        examples: data.len(),
    })
}

/// One row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRow {
    pub epoch: usize, // 1-based
    pub train_nll: f64,
    pub val_nll: f64,
    pub val_bpd: f64,
    pub best_val_nll: f64,
    pub epoch_secs: f64,
    pub elapsed_secs: f64,
}

pub const HEADER: &str = "epoch,train_nll,val_nll,val_bpd,best_val_nll,epoch_secs,elapsed_secs";

impl EpochRow {
    pub fn to_csv(&self) -> String {
        format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.3},{:.3}",
            self.epoch,
            self.train_nll,
            self.val_nll,
            self.val_bpd,
            self.best_val_nll,
            self.epoch_secs,
            self.elapsed_secs
        )
    }
}

/// Reads `metrics.csv` back (for the learning curve and for resuming).
pub fn read_csv(path: &Path) -> Result<Vec<EpochRow>> {
    if !(path.exists() || path.is_symlink()) {
        return Ok(vec![]);
    }
    // Read to a limit, as every run file is: a damaged run's metrics.csv may be anything (a link to /dev/zero).
    let bytes = crate::limits::read_file(path, crate::limits::MAX_TEXT_BYTES, "bytes of text")?;
    let text = String::from_utf8(bytes).map_err(|_| Error::data(path, "not a metrics file (not UTF-8 text)"))?;
    let mut rows = vec![];
    for (i, line) in text.lines().enumerate().skip(1).filter(|(_, l)| !l.is_empty()) {
        let f: Vec<f64> = line
            .split(',')
            .map(|s| s.parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::data(path, format!("line {}: not a metrics row", i + 1)))?;
        if f.len() != 7 {
            return Err(Error::data(
                path,
                format!("line {}: expected 7 columns, found {}", i + 1, f.len()),
            ));
        }
        rows.push(EpochRow {
            epoch: f[0] as usize,
            train_nll: f[1],
            val_nll: f[2],
            val_bpd: f[3],
            best_val_nll: f[4],
            epoch_secs: f[5],
            elapsed_secs: f[6],
        });
    }
    Ok(rows)
}

pub fn write_csv(path: &Path, rows: &[EpochRow]) -> Result<()> {
    let mut s = String::from(HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&r.to_csv());
        s.push('\n');
    }
    super::run_dir::write_atomic(path, s.as_bytes())
}
