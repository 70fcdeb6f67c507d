//! Datasets as integer arrays `[N, D]` with values 0..K, and the train / validation / test split.

pub mod digits;

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

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
            return Err(Error::Config(format!(
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Val,
    Test,
}

/// Loads a dataset by name: `digits` (embedded in the binary) or a path to a file in the digits CSV format.
pub fn load(spec: &str) -> Result<Dataset> {
    match spec {
        "digits" => digits::embedded(),
        path => digits::from_file(Path::new(path)),
    }
}
