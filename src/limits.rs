//! Upper bounds on every size that an input decides — a config, a flag or a data file — checked before
//! anything of that size is allocated, so that a hostile or mistyped number gets an error naming the number
//! and the limit instead of aborting the process on allocation.
//!
//! The limits are far above anything that trains on one machine (MNIST: 47 MB of pixels; the largest shipped
//! model: 0.8 M parameters) and far below what would exhaust it.

use crate::error::{Error, Result};

/// Values a dimension takes (K): 16-bit data.
pub const MAX_NUM_VALUES: usize = 1 << 16;
/// Channels, hidden units or embedding sizes of one layer.
pub const MAX_WIDTH: usize = 1 << 14;
/// Layers, blocks or dilations of one network.
pub const MAX_LAYERS: usize = 1 << 10;
/// Dimensions of one example (D: positions × colours).
pub const MAX_DIM: usize = 1 << 22;
/// Height or width of one picture.
pub const MAX_SIDE: usize = 1 << 12;
/// Mixture components or classes.
pub const MAX_COMPONENTS: usize = 1 << 10;
/// Class labels of a class-conditional model.
pub const MAX_CLASSES: usize = 1 << 16;
/// Parameters of one model (512 MiB as f32; training keeps about four copies).
pub const MAX_PARAMS: u128 = 1 << 27;
/// Activation memory one forward and backward pass may need, estimated (see `ModelConfig::activation_bytes`).
pub const MAX_ACTIVATION_BYTES: u128 = 8 << 30;
/// Bytes of data a file (after decompression) may hold.
pub const MAX_DATA_BYTES: u128 = 1 << 31;
/// Examples drawn at once by `sample -n`.
pub const MAX_SAMPLES: usize = 1 << 16;
/// Samples of z per example in a VAE's importance-weighted estimate (`eval --importance-samples`).
pub const MAX_IMPORTANCE_SAMPLES: usize = 1 << 20;
/// Values drawn at once by `sample` (examples × dimensions).
pub const MAX_SAMPLE_VALUES: usize = 1 << 26;
/// Pixels of one picture written (a grid of samples).
pub const MAX_PICTURE_PIXELS: u128 = 1 << 27;
/// Bytes of an `.npy` header (NumPy writes well under 1 KB).
pub const MAX_NPY_HEADER: usize = 1 << 16;
/// Nesting depth of an `.npy` header's literals (NumPy's own is 2: a dict holding a tuple).
pub const MAX_NPY_DEPTH: usize = 8;
/// A text file (CSV) after decompression.
pub const MAX_TEXT_BYTES: u128 = 1 << 30;

/// `value` must not exceed `limit`; `what` names the setting, flag or file field.
pub fn check(what: impl Into<String>, value: impl Into<u128>, limit: impl Into<u128>) -> Result<()> {
    let (value, limit) = (value.into(), limit.into());
    if value > limit {
        return Err(Error::TooLarge {
            what: what.into(),
            value,
            limit,
        });
    }
    Ok(())
}

/// `usize` as `u128` (lossless on every platform Rust supports).
pub fn wide(n: usize) -> u128 {
    n as u128
}
