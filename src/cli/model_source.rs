//! Where a trained model comes from: a run directory, or a safetensors file (e.g. a PyTorch `state_dict`)
//! with a config.

use std::path::PathBuf;

use anyhow::bail;
use armory::config::RunConfig;
use armory::latent::Vae;
use armory::models::Arm;
use candle_core::{DType, Device};

#[derive(Debug, clap::Args)]
pub struct ModelSource {
    /// A run directory written by `armory train` (uses its config.toml and best weights).
    #[arg(long, conflicts_with = "weights")]
    pub run: Option<PathBuf>,
    /// Which weights of the run: best or last.
    #[arg(long, default_value = "best", value_parser = ["best", "last"], conflicts_with = "weights")]
    pub checkpoint: String,
    /// A safetensors file of weights, e.g. a PyTorch state_dict with names `net.0.conv1d.weight`, ….
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// The config for --weights (default: the seed ARM's).
    #[arg(long, requires = "weights", conflicts_with = "run")]
    pub config: Option<PathBuf>,
}

/// A trained model of either kind (one per command: the size of the variants does not matter).
#[allow(clippy::large_enum_variant)]
pub enum Model {
    Arm(Arm),
    /// A latent-variable model (a `[latent]` section): its decoder is the config's `[model]`.
    Vae(Box<Vae>),
}

/// Builds the model of `cfg` with fresh parameters, stamped as `cfg`'s ([`RunConfig::checkpoint_stamp`]): an
/// ARM, or a VAE when the config has `[latent]`.
pub fn build(cfg: &RunConfig) -> anyhow::Result<Model> {
    let model = match &cfg.latent {
        None => Model::Arm(Arm::new(&cfg.model, cfg.train.seed, DType::F32, &Device::Cpu)?),
        Some(latent) => Model::Vae(Box::new(Vae::with_decoder(
            latent,
            &cfg.model,
            cfg.train.seed,
            DType::F32,
            &Device::Cpu,
        )?)),
    };
    // Its checkpoints say what model they hold, and one of another model is refused at load.
    model.params().set_stamp(cfg.checkpoint_stamp());
    Ok(model)
}

impl Model {
    pub fn params(&self) -> &armory::params::ParamStore {
        match self {
            Model::Arm(a) => a.params(),
            Model::Vae(v) => v.params(),
        }
    }
}

impl ModelSource {
    /// The run's config and the ARM with its weights loaded; a VAE is refused (`what`: the command, for the
    /// message).
    pub fn load_arm(&self, what: &str) -> anyhow::Result<(RunConfig, Arm)> {
        match self.load()? {
            (cfg, Model::Arm(arm)) => Ok((cfg, arm)),
            (_, Model::Vae(_)) => bail!(
                "{what} needs an autoregressive model; this run is a VAE (a [latent] section), whose \
                 likelihood is only bounded, not computed exactly"
            ),
        }
    }

    /// The files a model is read from — a run's config, checkpoints and training record, or the weights and
    /// config given — which no output of the command may replace.
    pub fn inputs(&self) -> Vec<PathBuf> {
        match (&self.run, &self.weights) {
            (Some(run), _) => [
                "config.toml",
                "best.safetensors",
                "last.safetensors",
                "resume.safetensors",
                "metrics.csv",
            ]
            .iter()
            .map(|f| run.join(f))
            .collect(),
            (None, Some(w)) => std::iter::once(w.clone()).chain(self.config.clone()).collect(),
            (None, None) => vec![],
        }
    }

    /// The run's config and the model with its weights loaded.
    pub fn load(&self) -> anyhow::Result<(RunConfig, Model)> {
        let (cfg, weights) = match (&self.run, &self.weights) {
            (Some(run), None) => {
                let dir = armory::train::RunDir::open(run)?;
                let weights = dir.file(&format!("{}.safetensors", self.checkpoint));
                if !(weights.exists() || weights.is_symlink()) {
                    if dir.file("resume.safetensors").exists() {
                        bail!(
                            "{} is missing, though the run has finished epochs (deleted?): restore it, or train \
                             the run again with --force",
                            weights.display()
                        );
                    }
                    bail!(
                        "{} has no {}.safetensors yet: it has not finished its first epoch (continue it with \
                         `armory train --resume {}`, or wait for the run that holds it)",
                        run.display(),
                        self.checkpoint,
                        run.display()
                    );
                }
                (dir.read_config()?, weights)
            }
            (None, Some(w)) => {
                let cfg = match &self.config {
                    Some(p) => RunConfig::from_stamped_file(p)?, // a run's config.toml too
                    None => RunConfig::seed(),
                };
                (cfg, w.clone())
            }
            _ => bail!("say which model: --run DIR (a training run) or --weights FILE.safetensors"),
        };
        let model = build(&cfg)?;
        // The library's errors name the file already (missing, corrupt, a tensor that does not fit, NaN).
        model.params().load(&weights)?;
        Ok((cfg, model))
    }
}
