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
/// A config file (TOML; the shipped ones are about 1 KB).
pub const MAX_CONFIG_BYTES: u128 = 1 << 20;
/// A checkpoint (safetensors): the largest model's weights, with the optimizer's state and an average, in f64.
pub const MAX_CHECKPOINT_BYTES: u128 = MAX_PARAMS * 8 * 4 + (1 << 20);

/// The bytes of the file at `path`, refused past `limit` (`what` names them in the message): its size is
/// checked first where the file system knows it, and reading stops one byte past the limit, so a device
/// (`/dev/zero`), a pipe or a file still growing is refused instead of filling the memory.
pub fn read_file(path: &std::path::Path, limit: u128, what: &str) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let named = || format!("{}: {what}", path.display());
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    check(named(), size, limit)?;
    let max = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let bytes = read_sized(file, size, max).map_err(|e| Error::io(path, e))?;
    check(named(), wide(bytes.len()), limit)?;
    Ok(bytes.into_vec())
}

/// Reads at most `max` bytes from `from`, whose size is `hint` as far as is known (0: not known). Room for
/// the whole is made up front where it is known: a buffer doubled as it fills would leave the freed halves
/// with the allocator, which keeps them. Where it is not (a device, a pipe), the bytes come in pieces of
/// 16 MiB, joined only when asked ([`Pieces::into_vec`]): a caller checks the length first, so an endless
/// input read to its limit costs that limit, not buffers doubled to twice it.
pub(crate) fn read_sized(from: impl std::io::Read, hint: u64, max: u64) -> std::io::Result<Pieces> {
    use std::io::Read;
    let mut from = from.take(max);
    if hint > 0 {
        let mut bytes = Vec::new();
        let _ = bytes.try_reserve_exact(usize::try_from(hint.min(max)).unwrap_or(0));
        from.read_to_end(&mut bytes)?;
        return Ok(Pieces(vec![bytes]));
    }
    const PIECE: u64 = 16 << 20;
    let mut pieces = vec![];
    loop {
        let mut piece = Vec::with_capacity(PIECE.min(from.limit()) as usize);
        (&mut from).take(PIECE).read_to_end(&mut piece)?;
        if piece.is_empty() {
            return Ok(Pieces(pieces));
        }
        pieces.push(piece);
    }
}

/// Bytes read in one or more pieces ([`read_sized`]).
pub(crate) struct Pieces(Vec<Vec<u8>>);

impl Pieces {
    pub(crate) fn len(&self) -> usize {
        self.0.iter().map(Vec::len).sum()
    }
    /// The bytes in one buffer (the pieces joined, where there are several).
    pub(crate) fn into_vec(mut self) -> Vec<u8> {
        match self.0.len() {
            0 | 1 => self.0.pop().unwrap_or_default(),
            _ => self.0.concat(),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A file is read whole up to the limit; past it — by its size, or by reading where the size is not known
    /// (a device such as /dev/zero, which never ends) — it is refused with the file and the limit named.
    #[test]
    fn files_are_read_up_to_the_limit_and_no_further() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ten");
        std::fs::write(&path, [7u8; 10]).unwrap();
        assert_eq!(read_file(&path, 10, "bytes").unwrap(), vec![7u8; 10]);
        let e = read_file(&path, 9, "bytes").unwrap_err().to_string();
        assert!(e.contains("ten: bytes = 10 exceeds the limit of 9"), "{e}");
        let zero = std::path::Path::new("/dev/zero");
        if zero.exists() {
            let e = read_file(zero, 1 << 20, "bytes").unwrap_err().to_string();
            assert!(
                e.contains("/dev/zero: bytes = 1048577 exceeds the limit of 1048576"),
                "{e}"
            );
        }
        let e = read_file(&dir.path().join("none"), 9, "bytes").unwrap_err().to_string();
        assert!(e.contains("none"), "{e}");
    }

    /// An input of unknown size (an endless reader here) is read in pieces up to the cap, and its length is
    /// known before they are joined; a known size is read into one buffer of that size.
    #[test]
    fn unknown_sizes_are_read_in_pieces_known_ones_at_once() {
        let max = (40 << 20) + 5;
        let r = read_sized(std::io::repeat(7), 0, max).unwrap();
        assert_eq!((r.0.len(), r.len()), (3, max as usize));
        let v = r.into_vec();
        assert_eq!(v.len(), max as usize);
        assert!(v.iter().all(|&b| b == 7));
        let r = read_sized(&[1u8, 2, 3][..], 3, 10).unwrap();
        assert_eq!(r.0.len(), 1);
        assert_eq!(r.0[0].capacity(), 3);
        assert_eq!(r.into_vec(), [1, 2, 3]);
        assert!(read_sized(&[][..], 0, 10).unwrap().into_vec().is_empty());
    }
}
