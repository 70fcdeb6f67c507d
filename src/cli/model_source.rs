//! Where a trained model comes from: a run directory, or a safetensors file (e.g. a PyTorch `state_dict`)
//! with a config.

use std::path::PathBuf;

use anyhow::bail;
use armory::config::RunConfig;
use armory::models::Arm;
use candle_core::{DType, Device};

#[derive(Debug, clap::Args)]
pub struct ModelSource {
    /// A run directory written by `armory train` (uses its config.toml and best weights).
    #[arg(long, conflicts_with = "weights")]
    pub run: Option<PathBuf>,
    /// Which weights of the run: best or last.
    #[arg(long, default_value = "best", value_parser = ["best", "last"])]
    pub checkpoint: String,
    /// A safetensors file of weights, e.g. a PyTorch state_dict with names `net.0.conv1d.weight`, ….
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// The config for --weights (default: the seed ARM's).
    #[arg(long, requires = "weights")]
    pub config: Option<PathBuf>,
}

impl ModelSource {
    /// The run's config and the model with its weights loaded.
    pub fn load(&self) -> anyhow::Result<(RunConfig, Arm)> {
        let (cfg, weights) = match (&self.run, &self.weights) {
            (Some(run), None) => {
                let dir = armory::train::RunDir::open(run)?;
                (
                    dir.read_config()?,
                    dir.file(&format!("{}.safetensors", self.checkpoint)),
                )
            }
            (None, Some(w)) => {
                let cfg = match &self.config {
                    Some(p) => RunConfig::from_file(p)?,
                    None => RunConfig::seed(),
                };
                (cfg, w.clone())
            }
            _ => bail!("say which model: --run DIR (a training run) or --weights FILE.safetensors"),
        };
        let arm = Arm::new(&cfg.model, cfg.train.seed, DType::F32, &Device::Cpu)?;
        // The library's errors name the file already (missing, corrupt, a tensor that does not fit, NaN).
        arm.params().load(&weights)?;
        Ok((cfg, arm))
    }
}
