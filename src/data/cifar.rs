//! CIFAR-10 in its binary version (A. Krizhevsky, 2009): `data_batch_1.bin` … `data_batch_5.bin` and
//! `test_batch.bin`, each a run of 3,073-byte records — a label byte 0..9, then 1,024 red, 1,024 green and
//! 1,024 blue bytes, each plane 32×32 in raster order. That is already the channel-major `[C, H, W]` layout of
//! a [`Dataset`] example: `image_shape = (3, 32, 32)`, D = 3,072, values 0..255.

use std::path::{Path, PathBuf};

use super::Dataset;
use crate::error::{Error, Result};

pub const SIDE: usize = 32;
pub const CHANNELS: usize = 3;
pub const PIXELS: usize = CHANNELS * SIDE * SIDE;
/// Bytes per record: a label and the pixels.
pub const RECORD: usize = 1 + PIXELS;
pub const NUM_CLASSES: u32 = 10;

/// Parses CIFAR-10 records; `path` names the source in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Dataset> {
    if bytes.is_empty() {
        return Err(Error::data(path, "empty file (no CIFAR-10 records)"));
    }
    if !bytes.len().is_multiple_of(RECORD) {
        return Err(Error::data(
            path,
            format!(
                "length {} is not a multiple of {RECORD} bytes (a label and 3×32×32 pixels per record): \
                 truncated or not a CIFAR-10 binary batch",
                bytes.len()
            ),
        ));
    }
    let n = bytes.len() / RECORD;
    let mut values = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        let label = rec[0] as u32;
        if label >= NUM_CLASSES {
            return Err(Error::data(
                path,
                format!(
                    "record {i} (byte {}): label {label} is outside 0..{} (not CIFAR-10?)",
                    i * RECORD,
                    NUM_CLASSES - 1
                ),
            ));
        }
        labels.push(label);
        values.extend(rec[1..].iter().map(|&b| b as u32));
    }
    Ok(Dataset {
        values,
        labels: Some(labels),
        dim: PIXELS,
        num_values: 256,
        image_shape: (CHANNELS, SIDE, SIDE),
    })
}

/// One batch file.
pub fn batch_file(path: &Path) -> Result<Dataset> {
    let bytes = crate::limits::read_file(path, crate::limits::MAX_DATA_BYTES, "file size in bytes")?;
    parse(&bytes, path)
}

/// A directory holding the six batch files (or its subdirectory `cifar-10-batches-bin`, as the archive unpacks):
/// `(train, test)`, the five training batches in order (50,000 pictures) and the test batch (10,000).
pub fn cifar10_dir(dir: &Path) -> Result<(Dataset, Dataset)> {
    if !dir.is_dir() {
        return Err(Error::data(
            dir,
            "not a directory (expected the CIFAR-10 binary batches)",
        ));
    }
    let nested = dir.join("cifar-10-batches-bin");
    let dir: PathBuf = if !dir.join("test_batch.bin").exists() && nested.join("test_batch.bin").exists() {
        nested
    } else {
        dir.to_path_buf()
    };
    let mut train = batch_file(&dir.join("data_batch_1.bin"))?;
    for k in 2..=5 {
        let b = batch_file(&dir.join(format!("data_batch_{k}.bin")))?;
        train.values.extend_from_slice(&b.values);
        if let (Some(l), Some(m)) = (train.labels.as_mut(), b.labels) {
            l.extend(m);
        }
    }
    let test = batch_file(&dir.join("test_batch.bin"))?;
    Ok((train, test))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` records whose pixels depend on the record, channel and position; labels `(i + seed) % 10`.
    pub(crate) fn records(n: usize, seed: usize) -> Vec<u8> {
        let mut b = Vec::new();
        for i in 0..n {
            b.push(((i + seed) % 10) as u8);
            b.extend((0..PIXELS).map(|j| ((j * 7 + i * 31 + seed * 3) % 256) as u8));
        }
        b
    }

    /// Writes the six batches, batch k holding k records and the test batch 2.
    pub(crate) fn write_cifar(dir: &Path) {
        for k in 1..=5 {
            std::fs::write(dir.join(format!("data_batch_{k}.bin")), records(k, k)).unwrap();
        }
        std::fs::write(dir.join("test_batch.bin"), records(2, 0)).unwrap();
    }

    #[test]
    fn cifar10_dir_reads_records_in_order_and_channel_major() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        write_cifar(tmp.path());
        let (train, test) = cifar10_dir(tmp.path())?;
        assert_eq!((train.len(), test.len()), (15, 2));
        assert_eq!(
            (train.dim, train.num_values, train.image_shape),
            (3072, 256, (3, 32, 32))
        );
        // the first record of data_batch_3 is training example 1 + 2 = 3
        let b3 = records(3, 3);
        assert_eq!(train.labels.as_ref().unwrap()[3], b3[0] as u32);
        assert_eq!(
            train.example(3),
            &b3[1..RECORD].iter().map(|&b| b as u32).collect::<Vec<_>>()[..]
        );
        // green (channel 1), row 2, column 5 of the second test picture
        let t = records(2, 0);
        assert_eq!(test.example(1)[1024 + 2 * 32 + 5], t[RECORD + 1 + 1024 + 69] as u32);
        assert_eq!(test.labels, Some(vec![0, 1]));
        Ok(())
    }

    #[test]
    fn cifar10_dir_finds_the_unpacked_archive_folder() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        let nested = tmp.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&nested).unwrap();
        write_cifar(&nested);
        assert_eq!(cifar10_dir(tmp.path())?.1.len(), 2);
        Ok(())
    }

    #[test]
    fn bad_cifar_files_give_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write_cifar(d);
        let mut b = records(3, 0);
        b.truncate(2 * RECORD + 100);
        std::fs::write(d.join("data_batch_4.bin"), &b).unwrap();
        let e = cifar10_dir(d).unwrap_err().to_string();
        assert!(
            e.contains("data_batch_4.bin") && e.contains("not a multiple of 3073") && e.contains("truncated"),
            "{e}"
        );
        let mut b = records(3, 0);
        b[RECORD] = 10;
        std::fs::write(d.join("data_batch_4.bin"), &b).unwrap();
        let e = cifar10_dir(d).unwrap_err().to_string();
        assert!(
            e.contains("data_batch_4.bin") && e.contains("record 1") && e.contains("label 10 is outside 0..9"),
            "{e}"
        );
        std::fs::write(d.join("data_batch_4.bin"), []).unwrap();
        let e = cifar10_dir(d).unwrap_err().to_string();
        assert!(e.contains("data_batch_4.bin") && e.contains("empty"), "{e}");
        std::fs::remove_file(d.join("test_batch.bin")).unwrap();
        std::fs::write(d.join("data_batch_4.bin"), records(1, 0)).unwrap();
        let e = cifar10_dir(d).unwrap_err().to_string();
        assert!(e.contains("test_batch.bin"), "{e}");
        let e = cifar10_dir(&d.join("nope")).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("not a directory"), "{e}");
    }
}
