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
//! - `reconstructions.png`, `interpolations.png` — a VAE's, beside those
//! - `lock`              the advisory lock of the one process writing the run, holding its PID

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::params::ParamStore;

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
    "reconstructions.png",
    "interpolations.png",
];

impl RunDir {
    /// Creates the directory (and parents) if needed.
    pub fn create(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Removes what an earlier run wrote here (`--force`), so that none of it can be mistaken for the new
    /// run's, and the temporary files a killed run left behind. Call it holding the lock.
    pub fn clear(&self) -> Result<()> {
        for f in FILES {
            let file = self.file(f);
            if file.is_file() {
                std::fs::remove_file(&file).map_err(|e| Error::io(&file, e))?;
            }
        }
        self.remove_temp_files()
    }

    /// Removes `*.tmp` files: writes that a killed process never renamed into place.
    pub fn remove_temp_files(&self) -> Result<()> {
        for entry in std::fs::read_dir(&self.path).map_err(|e| Error::io(&self.path, e))? {
            let path = entry.map_err(|e| Error::io(&self.path, e))?.path();
            if path.extension().is_some_and(|x| x == "tmp") && path.is_file() {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// Takes the run's advisory lock (`flock` on `lock`, which then holds this process's PID) for as long as
    /// the returned value lives: one writer per run. A second writer gets [`Error::RunLocked`] naming the
    /// holder's PID. The OS releases the lock when the holder exits, however it dies, so a stale `lock` file
    /// never blocks.
    pub fn lock(&self) -> Result<RunLock> {
        let path = self.file("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        #[cfg(unix)]
        {
            use std::io::Read;
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a file descriptor this function owns, valid for the call.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::WouldBlock {
                    return Err(Error::io(&path, err));
                }
                let mut held = String::new();
                let _ = file.read_to_string(&mut held);
                let holder = match held.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    Err(_) => "pid not yet written".to_string(),
                };
                return Err(Error::RunLocked {
                    path: self.path.clone(),
                    holder,
                });
            }
        }
        use std::io::Write;
        file.set_len(0)
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(|e| Error::io(&path, e))?;
        Ok(RunLock { _file: file })
    }

    /// An existing run directory.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("config.toml").is_file() {
            return Err(Error::Invalid(format!(
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

    /// Writes the run's config, its first line a comment that stamps what the weights were trained with
    /// ([`RunConfig::stamp_line`]) — of the config as it will be read back, so the stamp holds by
    /// construction.
    pub fn write_config(&self, cfg: &RunConfig) -> Result<()> {
        let path = self.file("config.toml");
        let text = cfg.to_toml();
        let back = RunConfig::parse(&text, &path)?;
        write_atomic(&path, (back.stamp_line() + &text).as_bytes())
    }

    /// The run's config, refused if its `[model]` or `[latent]` is not what the weights were trained with
    /// ([`RunConfig::from_stamped_file`]).
    pub fn read_config(&self) -> Result<RunConfig> {
        RunConfig::from_stamped_file(&self.file("config.toml"))
    }

    /// For `--resume`: the config as [`Self::read_config`], and the whole recipe what the run was started
    /// with (its data's path aside).
    pub fn read_config_to_resume(&self) -> Result<RunConfig> {
        RunConfig::from_stamped_file_to_resume(&self.file("config.toml"))
    }

    /// Writes `tensors` with a JSON `state` as metadata to `resume.safetensors`, atomically, stamped as
    /// `params`' model ([`ParamStore::set_stamp`]).
    pub fn save_resume(&self, tensors: &HashMap<String, Tensor>, state: &str, params: &ParamStore) -> Result<()> {
        let mut meta = params.stamp_metadata().unwrap_or_default();
        meta.insert(STATE_KEY.to_string(), state.to_string());
        crate::params::save_with_metadata(tensors, Some(meta), &self.file("resume.safetensors"))
    }

    /// Reads `resume.safetensors`: its tensors and the JSON state; refused if it is stamped as another model
    /// than `params`'.
    pub fn load_resume(&self, params: &ParamStore) -> Result<(HashMap<String, Tensor>, String)> {
        let path = self.file("resume.safetensors");
        let (tensors, meta) = crate::params::load_with_metadata(&path)?;
        params.check_stamp(&tensors, meta.as_ref(), &path)?;
        let state = meta
            .as_ref()
            .and_then(|m| m.get(STATE_KEY).cloned())
            .ok_or_else(|| Error::Checkpoint {
                path: path.clone(),
                msg: "no training state in its metadata".into(),
            })?;
        Ok((tensors, state))
    }
}

pub use crate::output::write_atomic;

/// The lock of a run directory (see [`RunDir::lock`]); released when dropped or when the process ends.
pub struct RunLock {
    _file: std::fs::File,
}

/// A run name must be one path component, so that `runs/NAME` stays inside `runs/`, and one a listing shows
/// as it is: no control characters, no spaces at its ends.
pub fn check_run_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        "is empty"
    } else if name == "." || name == ".." {
        "is `.` or `..`"
    } else if name.contains(['/', '\\']) {
        "contains a path separator"
    } else if name.contains(char::is_control) {
        "contains a control character (a newline, a tab, NUL)"
    } else if name.trim() != name {
        "starts or ends with a space"
    } else if Path::new(name).components().count() != 1 {
        "is not a plain file name"
    } else {
        return Ok(());
    };
    Err(Error::RunName {
        name: name.to_string(),
        why,
    })
}
