//! Datasets as integer arrays `[N, D]` with values 0..K, and the train / validation / test split.

pub mod cifar;
pub mod digits;
pub mod idx;
pub mod npy;
pub mod png_folder;
pub mod transform;

#[cfg(test)]
mod load_tests;

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// A picture shape (colours, height, width) in words, for messages: "8×8 pictures of 1 colour".
pub fn pictures_in_words((c, h, w): (usize, usize, usize)) -> String {
    format!("{h}×{w} pictures of {c} colour{}", if c == 1 { "" } else { "s" })
}

/// N examples of D integer values in 0..K (images flattened in raster order).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub values: Vec<u32>, // [N, D], row-major
    pub labels: Option<Vec<u32>>,
    pub dim: usize,
    pub num_values: usize,
    /// (channels, height, width) of one example, for pictures.
    pub image_shape: (usize, usize, usize),
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.values.len() / self.dim
    }
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
    pub fn example(&self, i: usize) -> &[u32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    /// Examples `range` as a new dataset.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Dataset {
        Dataset {
            values: self.values[range.start * self.dim..range.end * self.dim].to_vec(),
            labels: self.labels.as_ref().map(|l| l[range].to_vec()),
            ..*self
        }
    }

    /// The labels of the examples at `idx` as a `[B]` u32 tensor, for class-conditional models.
    pub fn label_batch(&self, idx: &[usize], device: &Device) -> Result<Tensor> {
        let labels = self
            .labels
            .as_ref()
            .ok_or_else(|| Error::Invalid("the model is class-conditional but the data set has no labels".into()))?;
        Ok(Tensor::from_vec(
            idx.iter().map(|&i| labels[i]).collect::<Vec<u32>>(),
            idx.len(),
            device,
        )?)
    }

    /// The examples at `idx` as a `[B, D]` u32 tensor.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Result<Tensor> {
        let mut v = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            v.extend_from_slice(self.example(i));
        }
        Ok(Tensor::from_vec(v, (idx.len(), self.dim), device)?)
    }
}

/// The three parts a model is trained, selected and measured on.
#[derive(Debug, Clone)]
pub struct Splits {
    pub train: Dataset,
    pub val: Dataset,
    pub test: Dataset,
}

impl Splits {
    /// Splits by position, no shuffling, in the seed's proportions (digits: 1000 / 350 / 447 of 1797).
    pub fn by_position(all: &Dataset) -> Result<Splits> {
        let n = all.len();
        let n_train = (n * 1000 + 1797 / 2) / 1797;
        let n_val = (n * 350 + 1797 / 2) / 1797;
        if n_train == 0 || n_val == 0 || n_train + n_val >= n {
            return Err(Error::Invalid(format!(
                "{n} examples are too few to split into train, validation and test"
            )));
        }
        Ok(Splits {
            train: all.slice(0..n_train),
            val: all.slice(n_train..n_train + n_val),
            test: all.slice(n_train + n_val..n),
        })
    }

    pub fn get(&self, split: Split) -> &Dataset {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl std::fmt::Display for Split {
    /// The split's name in words: "train", "validation", "test".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Val => "validation",
            Split::Test => "test",
        })
    }
}

/// A binary file's payload must be exactly as long as its header says: shorter is a truncated file,
/// longer has trailing bytes. `claim` says who promised the length ("the header [..] promises").
pub(crate) fn check_payload(path: &Path, found: usize, expected: usize, claim: &str) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    let why = if found < expected {
        "truncated"
    } else {
        "trailing bytes"
    };
    Err(Error::data(
        path,
        format!("{claim} {expected} data bytes, the file holds {found} ({why})"),
    ))
}

/// What a spec names: one set, or a set that comes with its own train and test files.
enum Source {
    One(Dataset),
    TrainTest(Dataset, Dataset),
}

/// The data sources a spec may name, as `--help` and errors list them.
pub const SOURCES: &str = "digits, mnist:DIR, fashion-mnist:DIR, binarized-mnist:DIR, cifar10:DIR, png:DIR, \
                           npy:FILE, or a CSV file in the digits format";

const PREFIXES: &[&str] = &["mnist", "fashion-mnist", "binarized-mnist", "cifar10", "png", "npy"];

/// A `word:` before the path that is no known prefix, where no file has the whole spec as its name:
/// a misspelt source (`mnst:DIR`), not a CSV path. One-letter words are left alone (`C:\data.csv`).
fn unknown_prefix(spec: &str) -> Option<&str> {
    let (kind, _) = spec.split_once(':')?;
    let word = kind.len() >= 2 && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    (word && !PREFIXES.contains(&kind) && !Path::new(spec).exists()).then_some(kind)
}

/// `spec` with its path made absolute (against the current directory), so that a run's config names the
/// same data wherever it is used from later; the embedded `digits` and a path that cannot be made absolute
/// or written as text are left as they are.
pub fn absolute_spec(spec: &str) -> String {
    let absolute = |p: &str| {
        std::path::absolute(p)
            .ok()
            .and_then(|a| a.to_str().map(str::to_owned))
            .unwrap_or_else(|| p.to_owned())
    };
    if spec == "digits" || spec.trim().is_empty() || unknown_prefix(spec).is_some() {
        return spec.to_owned();
    }
    match spec.split_once(':').filter(|(k, _)| PREFIXES.contains(k)) {
        Some((_, "")) => spec.to_owned(),
        Some((kind, path)) => format!("{kind}:{}", absolute(path)),
        None => absolute(spec),
    }
}

/// Whether the data set `spec` names comes with its own test set (MNIST's and CIFAR-10's files), so that the
/// validation set is held out of its training set (`data.validation` examples). The others are split by
/// position in fixed proportions ([`Splits::by_position`]).
pub fn has_own_test_split(spec: &str) -> bool {
    matches!(
        spec.split_once(':').map(|(kind, _)| kind),
        Some("mnist" | "fashion-mnist" | "binarized-mnist" | "cifar10")
    )
}

fn open(spec: &str) -> Result<Source> {
    if spec == "digits" {
        return Ok(Source::One(digits::embedded()?));
    }
    if spec.trim().is_empty() {
        return Err(Error::Config(format!(
            "the dataset is empty: name the embedded `digits`, a file, or one of {SOURCES}"
        )));
    }
    if let Some(kind) = unknown_prefix(spec) {
        return Err(Error::data(
            spec,
            format!("unknown data source '{kind}', expected one of {SOURCES}"),
        ));
    }
    let Some((kind, arg)) = spec.split_once(':').filter(|(k, _)| PREFIXES.contains(k)) else {
        if Path::new(spec).is_dir() {
            return Err(Error::data(
                spec,
                format!(
                    "is a folder; a file in the digits CSV format was expected. A folder is named with its \
                     kind: png:{spec} (PNGs), mnist:{spec}, fashion-mnist:{spec}, binarized-mnist:{spec}, \
                     cifar10:{spec}"
                ),
            ));
        }
        return Ok(Source::One(digits::from_file(Path::new(spec))?));
    };
    if arg.is_empty() {
        let what = if kind == "npy" { "file" } else { "directory" };
        return Err(Error::Config(format!(
            "dataset `{spec}` names no {what} after `{kind}:`"
        )));
    }
    let path = Path::new(arg);
    Ok(match kind {
        "mnist" | "fashion-mnist" => {
            let (train, test) = idx::mnist_dir(path)?;
            Source::TrainTest(train, test)
        }
        "binarized-mnist" => {
            let (train, test) = idx::mnist_dir(path)?;
            Source::TrainTest(
                transform::binarize_threshold(&train, 128),
                transform::binarize_threshold(&test, 128),
            )
        }
        "cifar10" => {
            let (train, test) = cifar::cifar10_dir(path)?;
            Source::TrainTest(train, test)
        }
        "png" => Source::One(png_folder::png_folder(path)?),
        _ => Source::One(npy::npy_images(path)?),
    })
}

/// Loads a dataset by spec, as one set (pictures channel-major: an example is `[C, H, W]`, each channel plane
/// in raster order):
/// - `digits`: embedded in the binary;
/// - `mnist:DIR`, `fashion-mnist:DIR`: the four IDX files (gzipped or plain), values 0..255;
/// - `binarized-mnist:DIR`: the same, values ≥ 128 → 1, else 0;
/// - `cifar10:DIR`: the CIFAR-10 binary batches, 3×32×32, values 0..255;
/// - `png:DIR`: a folder of 8-bit gray or RGB PNGs of one size, values 0..255;
/// - `npy:FILE`: a uint8 `.npy` array `(N, H, W)` or `(N, H, W, C)`;
/// - anything else: a path to a file in the digits CSV format.
///
/// Sets that come with their own train and test files are returned as train followed by test; use
/// [`load_splits`] to keep them apart.
///
/// ```
/// use armory::data::{self, Splits};
///
/// let digits = data::load("digits")?; // 1797 8×8 pictures, values 0..16
/// assert_eq!((digits.len(), digits.dim, digits.num_values), (1797, 64, 17));
/// let splits = Splits::by_position(&digits)?;
/// assert_eq!((splits.train.len(), splits.val.len(), splits.test.len()), (1000, 350, 447));
/// # Ok::<(), armory::Error>(())
/// ```
pub fn load(spec: &str) -> Result<Dataset> {
    match open(spec)? {
        Source::One(ds) => Ok(ds),
        Source::TrainTest(train, test) => transform::concat(&train, &test),
    }
    .map_err(|e| e.about_data(spec))
}

/// Loads a dataset by spec (see [`load`]) as train, validation and test sets. Sets with their own test files
/// keep them as the test set, and the last `n_val` training examples become the validation set; other sets are
/// split by [`Splits::by_position`], and `n_val` is not used.
pub fn load_splits(spec: &str, n_val: usize) -> Result<Splits> {
    let split = |source| match source {
        Source::One(ds) => Splits::by_position(&ds),
        Source::TrainTest(train, test) => {
            let (train, val) = transform::split_off_validation(&train, n_val)?;
            Ok(Splits { train, val, test })
        }
    };
    split(open(spec)?).map_err(|e| e.about_data(spec))
}
