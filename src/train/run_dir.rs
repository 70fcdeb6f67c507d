//! A run directory, `runs/<name>/`: everything a run produces, and everything `--resume` needs.
//!
//! - `config.toml`       the full configuration
//! - `best.safetensors`  the weights with the best validation NLL (a plain `state_dict`)
//! - `last.safetensors`  the weights after the last completed epoch
//! - `resume.safetensors` weights + optimizer moments, with the loop's state as metadata: one file, written
//!   atomically, so an interrupted run resumes exactly
//! - `metrics.csv`       one row per epoch
//! - `summary.json`      the final figures
//! - `real.png`, `samples.png`, `curve.png` — test images, samples, the learning curve

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::config::RunConfig;
use crate::error::{Error, Result};

pub struct RunDir {
    pub path: PathBuf,
}

const STATE_KEY: &str = "armory.train_state";

/// The files a run writes (the list above).
const FILES: &[&str] = &[
    "config.toml",
    "best.safetensors",
    "last.safetensors",
    "resume.safetensors",
    "metrics.csv",
    "summary.json",
    "real.png",
    "samples.png",
    "curve.png",
];

impl RunDir {
    /// Creates the directory (and parents) if needed.
    pub fn create(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Creates the directory if needed and removes what an earlier run wrote there (`--force`), so that none
    /// of it can be mistaken for the new run's.
    pub fn create_fresh(path: &Path) -> Result<Self> {
        let run = Self::create(path)?;
        for f in FILES {
            let file = run.file(f);
            if file.is_file() {
                std::fs::remove_file(&file).map_err(|e| Error::io(&file, e))?;
            }
        }
        Ok(run)
    }

    /// An existing run directory.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("config.toml").is_file() {
            return Err(Error::Config(format!(
                "{} is not a run directory (it has no config.toml)",
                path.display()
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn write_config(&self, cfg: &RunConfig) -> Result<()> {
        write_atomic(&self.file("config.toml"), cfg.to_toml().as_bytes())
    }

    pub fn read_config(&self) -> Result<RunConfig> {
        RunConfig::from_file(&self.file("config.toml"))
    }

    /// Writes `tensors` with a JSON `state` as metadata to `resume.safetensors`, atomically.
    pub fn save_resume(&self, tensors: &HashMap<String, Tensor>, state: &str) -> Result<()> {
        let path = self.file("resume.safetensors");
        let tmp = path.with_extension("safetensors.tmp");
        let meta = HashMap::from([(STATE_KEY.to_string(), state.to_string())]);
        safetensors::serialize_to_file(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta), &tmp).map_err(
            |e| Error::Checkpoint {
                path: tmp.clone(),
                msg: e.to_string(),
            },
        )?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// Reads `resume.safetensors`: its tensors and the JSON state.
    pub fn load_resume(&self) -> Result<(HashMap<String, Tensor>, String)> {
        let path = self.file("resume.safetensors");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let bad = |msg: String| Error::Checkpoint {
            path: path.clone(),
            msg,
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let state = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(STATE_KEY).cloned())
            .ok_or_else(|| bad("no training state in its metadata".into()))?;
        let tensors =
            candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).map_err(|e| bad(e.to_string()))?;
        Ok((tensors, state))
    }
}

pub use crate::output::write_atomic;
