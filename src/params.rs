//! The parameter store: every trainable tensor of a model, by its checkpoint name.
//!
//! It is a candle `VarBuilder` backend, so model code asks `vb.pp("net").pp(0).pp("conv1d").get(..)` and never
//! knows whether the weights are fresh or loaded. Fresh tensors are drawn from a generator seeded by
//! `(seed, name)`, so initialisation is deterministic and independent of construction order. Names follow
//! PyTorch's `state_dict` (`net.0.conv1d.weight`), so a PyTorch export loads with no renaming table.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct ParamStore {
    seed: u64,
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
    /// What model these are the weights of ([`ParamStore::set_stamp`]), if it was said.
    stamp: Arc<Mutex<Option<String>>>,
}

/// A safetensors file's metadata: text pairs in its header.
pub type Metadata = HashMap<String, String>;

/// The metadata key of a checkpoint's stamp: what model its weights are of.
const STAMP_KEY: &str = "armory.model";

/// The version a stamp starts with ([`crate::config::RunConfig::checkpoint_stamp`]); a stamp of another
/// version is not compared.
pub const STAMP_VERSION: &str = "v1:";

/// FNV-1a: a stable hash of a tensor name (std's hasher may change between releases).
fn stable_hash(s: &str) -> u64 {
    s.bytes()
        .fold(0xcbf29ce484222325, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

fn init_values(init: Init, shape: &Shape, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let n = shape.elem_count();
    let dims = shape.dims();
    let uniform =
        |rng: &mut ChaCha8Rng, lo: f64, up: f64| -> Vec<f64> { (0..n).map(|_| rng.random_range(lo..up)).collect() };
    let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| -> Vec<f64> {
        (0..n)
            .map(|_| {
                // Box–Muller
                let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
                mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
            .collect()
    };
    match init {
        Init::Const(v) => vec![v; n],
        Init::Uniform { lo, up } => uniform(rng, lo, up),
        Init::Randn { mean, stdev } => normal(rng, mean, stdev),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let receptive: usize = dims.iter().skip(2).product();
            let fan_n = match fan {
                candle_nn::init::FanInOut::FanIn => dims.get(1).copied().unwrap_or(1) * receptive,
                candle_nn::init::FanInOut::FanOut => dims.first().copied().unwrap_or(1) * receptive,
            };
            let std = non_linearity.gain() / (fan_n.max(1) as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(rng, -bound, bound)
                }
                candle_nn::init::NormalOrUniform::Normal => normal(rng, 0.0, std),
            }
        }
    }
}

impl ParamStore {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            vars: Arc::new(Mutex::new(BTreeMap::new())),
            stamp: Arc::new(Mutex::new(None)),
        }
    }

    /// Says what model these are the weights of (a run's model fingerprint): every checkpoint this store
    /// writes carries it in its metadata, and one it reads that carries another is refused — the weights of
    /// another run copied in, whose shapes may fit and whose figures would be wrong. A checkpoint without a
    /// stamp (an older run's, a PyTorch export) loads as before.
    pub fn set_stamp(&self, stamp: impl Into<String>) {
        *self.stamp.lock().unwrap() = Some(stamp.into());
    }

    /// The stamp as checkpoint metadata, if one was set.
    pub fn stamp_metadata(&self) -> Option<Metadata> {
        let stamp = self.stamp.lock().unwrap().clone()?;
        Some(HashMap::from([(STAMP_KEY.to_string(), stamp)]))
    }

    /// Refuses the checkpoint `path` (its `tensors` and `metadata`) stamped as another model than this
    /// store's. Where its tensors do not fit this model anyway, the first that does not is named instead (the
    /// error a load gives): that says more than the stamp does.
    pub fn check_stamp(
        &self,
        tensors: &HashMap<String, Tensor>,
        metadata: Option<&Metadata>,
        path: &Path,
    ) -> Result<()> {
        let own = self.stamp.lock().unwrap().clone();
        let (Some(own), Some(stamped)) = (own, metadata.and_then(|m| m.get(STAMP_KEY))) else {
            return Ok(());
        };
        let comparable = |s: &str| s.starts_with(STAMP_VERSION);
        if own == *stamped || !comparable(&own) || !comparable(stamped) {
            return Ok(());
        }
        check_shapes(&self.vars.lock().unwrap(), tensors, path)?;
        Err(Error::ForeignCheckpoint {
            path: path.into(),
            stamped: stamped.clone(),
            own,
        })
    }

    /// A `VarBuilder` whose `get` creates (or returns) trainable variables in this store.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// All variables, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.vars
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn num_params(&self) -> usize {
        self.vars.lock().unwrap().values().map(|v| v.elem_count()).sum()
    }

    /// The current values, by name (a snapshot: later training steps do not change it).
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let vars = self.vars.lock().unwrap();
        let mut out = HashMap::new();
        for (k, v) in vars.iter() {
            out.insert(k.clone(), v.as_tensor().copy()?);
        }
        Ok(out)
    }

    /// Writes all variables to a safetensors file (to a temporary file first, then renamed into place).
    pub fn save(&self, path: &Path) -> Result<()> {
        save_with_metadata(&self.tensors()?, self.stamp_metadata(), path)
    }

    /// Loads every variable from `tensors` (read from `path`), which must hold exactly the model's tensors
    /// with the model's shapes. Values are converted to the model's dtype.
    pub fn assign(&self, tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
        let vars = self.vars.lock().unwrap();
        check_shapes(&vars, tensors, path)?;
        if let Some(extra) = tensors.keys().find(|k| !vars.contains_key(*k)) {
            return Err(Error::Checkpoint {
                path: path.into(),
                msg: format!("it holds tensor `{extra}`, which this model does not have (a different architecture?)"),
            });
        }
        let mut converted = Vec::with_capacity(vars.len());
        for (name, var) in vars.iter() {
            let t = &tensors[name];
            if !t.dtype().is_float() {
                return Err(Error::Checkpoint {
                    path: path.into(),
                    msg: format!(
                        "tensor `{name}` holds {} values; weights are floating point (f16, bf16, f32 or f64)",
                        t.dtype().as_str()
                    ),
                });
            }
            // Checked in the model's dtype: NaN or ±inf in the file, or a value beyond it (1e300 for f32).
            let as_model = t.to_dtype(var.dtype())?;
            if let Some(index) = first_non_finite(&as_model)? {
                let value = t.flatten_all()?.get(index)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                return Err(match value.is_finite() {
                    true => Error::Checkpoint {
                        path: path.into(),
                        msg: format!(
                            "tensor `{name}` holds {value:e} at index {index}, beyond the range of the model's {}",
                            var.dtype().as_str()
                        ),
                    },
                    false => Error::NonFiniteWeight {
                        path: path.into(),
                        tensor: name.to_string(),
                        index,
                        value,
                    },
                });
            }
            converted.push((var, as_model));
        }
        for (var, t) in converted {
            var.set(&t.to_device(var.device())?)?;
        }
        Ok(())
    }

    /// Reads a safetensors checkpoint and loads it (see [`ParamStore::assign`]), refused if it is stamped as
    /// another model's ([`ParamStore::set_stamp`]).
    pub fn load(&self, path: &Path) -> Result<()> {
        let (tensors, metadata) = load_with_metadata(path)?;
        self.check_stamp(&tensors, metadata.as_ref(), path)?;
        self.assign(&tensors, path)
    }
}

/// Every variable of `vars` is in the checkpoint `tensors` (read from `path`) with its shape.
fn check_shapes(vars: &BTreeMap<String, Var>, tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    for (name, var) in vars {
        checkpoint_tensor(tensors, name, var, path, || held(tensors))?;
    }
    Ok(())
}

/// What a checkpoint holds, for an error: its first tensor names, sorted, and how many there are.
fn held(tensors: &HashMap<String, Tensor>) -> String {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let shown: Vec<String> = names.iter().take(8).map(|s| s.to_string()).collect();
    let more = if names.len() > 8 {
        format!(", … {} in all", names.len())
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

/// The tensor `name` of a checkpoint read from `path`, which must have `like`'s shape; `held` says what the
/// checkpoint holds instead, for the error when it lacks it.
pub(crate) fn checkpoint_tensor<'a>(
    tensors: &'a HashMap<String, Tensor>,
    name: &str,
    like: &Tensor,
    path: &Path,
    held: impl FnOnce() -> String,
) -> Result<&'a Tensor> {
    let t = tensors.get(name).ok_or_else(|| Error::MissingTensor {
        path: path.into(),
        tensor: name.into(),
        held: held(),
    })?;
    if t.dims() != like.dims() {
        return Err(Error::CheckpointMismatch {
            path: path.into(),
            tensor: name.into(),
            expected: like.dims().to_vec(),
            found: t.dims().to_vec(),
        });
    }
    Ok(t)
}

/// The index of `t`'s first NaN or infinite value, if any. A weight like that would make every evaluation
/// NaN and every sample garbage.
fn first_non_finite(t: &Tensor) -> Result<Option<usize>> {
    let values = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    Ok(values.iter().position(|v| !v.is_finite()))
}

/// A safetensors file's bytes, read as far as its header promises and no further: the header's length (8
/// bytes, at most the format's 100 MB), the JSON header, then the tensors up to the furthest end it names. A
/// file that never ends (`/dev/zero`) or runs far past its tensors is refused without filling the memory.
pub fn read_checkpoint(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let bad = |msg: String| Error::Checkpoint { path: path.into(), msg };
    let prefix = |n: u64| -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        file.take(n).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
        Ok(bytes)
    };
    let len: [u8; 8] = prefix(8)?
        .try_into()
        .map_err(|_| bad("shorter than the 8 bytes of its header's length".into()))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(bad(format!("a header of {n} bytes (the format allows 100 MB)")));
    }
    let head = prefix(8 + n)?;
    let header: serde_json::Value =
        serde_json::from_slice(&head[8.min(head.len())..]).map_err(|e| bad(format!("its header: {e}")))?;
    let end = header
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(name, _)| name.as_str() != "__metadata__")
                .filter_map(|(_, t)| t["data_offsets"][1].as_u64())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let promised = u128::from(8 + n) + u128::from(end);
    crate::limits::check(
        format!("{}: bytes of a checkpoint", path.display()),
        promised,
        crate::limits::MAX_CHECKPOINT_BYTES,
    )?;
    crate::limits::read_file(path, promised, "bytes of a checkpoint (its header names fewer)")
}

/// Reads every tensor of a safetensors file, with errors that name the file.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(load_with_metadata(path)?.0)
}

/// Every tensor of a safetensors file and its metadata (the text pairs of its header, if any), with errors
/// that name the file.
pub fn load_with_metadata(path: &Path) -> Result<(HashMap<String, Tensor>, Option<Metadata>)> {
    let bytes = read_checkpoint(path)?;
    let bad = |msg: String| Error::Checkpoint { path: path.into(), msg };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| bad(e.to_string()))?;
    Ok((tensors, header.metadata().clone()))
}

/// Writes tensors to a safetensors file atomically: a crash mid-write leaves the old file intact.
pub fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    save_with_metadata(tensors, None, path)
}

/// `tensors` (and `metadata`) as safetensors to `path`: serialised in memory, then written through a
/// temporary file, flushed and renamed ([`crate::output::write_atomic`]): a full disk is an error naming
/// `path`, and the file gets the mode of every other output (the library's own file writer made it 0600).
pub fn save_with_metadata(
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    let mut named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    named.sort_by_key(|(k, _)| *k);
    let bytes = safetensors::serialize(named, metadata).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    crate::output::write_atomic(path, &bytes)
}

impl SimpleBackend for ParamStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut vars = self.vars.lock().unwrap();
        if let Some(v) = vars.get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "parameter `{name}` exists with shape {:?}, asked for {:?}",
                    v.dims(),
                    s.dims()
                );
            }
            return Ok(v.as_tensor().clone());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed.wrapping_mul(0x9E3779B97F4A7C15) ^ stable_hash(name));
        let values = init_values(h, &s, &mut rng);
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        vars.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        match self.vars.lock().unwrap().get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("no parameter named `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars.lock().unwrap().contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_deterministic_per_seed_and_name() -> Result<()> {
        let dev = Device::Cpu;
        let get = |seed: u64, name: &str| -> Result<Vec<f32>> {
            let store = ParamStore::new(seed);
            let vb = store.var_builder(DType::F32, &dev);
            Ok(vb
                .get_with_hints(16, name, Init::Uniform { lo: -1., up: 1. })?
                .to_vec1::<f32>()?)
        };
        assert_eq!(get(3, "a")?, get(3, "a")?);
        assert_ne!(get(3, "a")?, get(4, "a")?);
        assert_ne!(get(3, "a")?, get(3, "b")?);
        assert!(get(3, "a")?.iter().all(|v| (-1.0..1.0).contains(v)));
        Ok(())
    }

    #[test]
    fn load_names_the_missing_or_misshapen_tensor() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &dev);
        vb.get_with_hints((2, 3), "layer.weight", Init::Const(1.0))?;
        vb.get_with_hints(2, "layer.bias", Init::Const(0.0))?;
        let path = dir.path().join("ok.safetensors");
        store.save(&path)?;
        store.load(&path)?;

        let mut t = store.tensors()?;
        t.remove("layer.bias");
        let path = dir.path().join("missing.safetensors");
        save_tensors(&t, &path)?;
        let e = store.load(&path).unwrap_err().to_string();
        assert!(e.contains("layer.bias") && e.contains("missing"), "{e}");

        let mut t = store.tensors()?;
        t.insert("layer.weight".into(), Tensor::zeros((3, 2), DType::F32, &dev)?);
        let path = dir.path().join("shape.safetensors");
        save_tensors(&t, &path)?;
        let e = store.load(&path).unwrap_err().to_string();
        assert!(
            e.contains("layer.weight") && e.contains("[3, 2]") && e.contains("[2, 3]"),
            "{e}"
        );

        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut t = store.tensors()?;
            t.insert("layer.bias".into(), Tensor::new(&[0.5f32, bad], &dev)?);
            let path = dir.path().join("nan.safetensors");
            save_tensors(&t, &path)?;
            let e = store.load(&path).unwrap_err().to_string();
            assert!(
                e.contains("nan.safetensors")
                    && e.contains("layer.bias")
                    && e.contains("non-finite")
                    && e.contains("index 1"),
                "{e}"
            );
        }
        store.load(&dir.path().join("ok.safetensors"))?;

        let path = dir.path().join("corrupt.safetensors");
        std::fs::write(&path, b"not a checkpoint").unwrap();
        let e = store.load(&path).unwrap_err().to_string();
        assert!(e.contains("corrupt.safetensors"), "{e}");
        Ok(())
    }
}
