//! MNIST and Fashion-MNIST in the IDX format of Y. LeCun's distribution: `train-images-idx3-ubyte`,
//! `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each gzipped (`.gz`) or plain.
//!
//! An IDX file is a big-endian header — two zero bytes, a type byte (0x08: unsigned bytes), the number of
//! dimensions, then one u32 per dimension — followed by the data. Images are `0x00000803` `[N, H, W]`, labels
//! `0x00000801` `[N]`. Pictures become one channel, `image_shape = (1, H, W)`, values 0..255 in raster order.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::Dataset;
use crate::error::{Error, Result};
use crate::limits;

/// The magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// The magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Opens a file for reading its contents: through a gzip decoder when it starts with the gzip magic bytes
/// `1f 8b` (whatever its name). Also says whether it did.
fn open_contents(path: &Path) -> Result<(Box<dyn Read>, bool)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = Vec::with_capacity(2);
    (&mut f)
        .take(2)
        .read_to_end(&mut magic)
        .map_err(|e| Error::io(path, e))?;
    f.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    Ok(if magic == [0x1f, 0x8b] {
        (
            Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f))),
            true,
        )
    } else {
        (Box::new(f), false)
    })
}

/// Reads at most `max` bytes of a file's contents (inflated if gzipped), and whether it was gzipped; the
/// length can be checked before the bytes are joined into one buffer ([`crate::limits::Pieces`]).
pub(crate) fn read_at_most(path: &Path, max: u64) -> Result<(crate::limits::Pieces, bool)> {
    let (contents, gzipped) = open_contents(path)?;
    // As far as the file tells its size (its length, or a gzip's trailer: the last member's size mod 2^32, a
    // hint only), room for all of it up front; a device or a pipe in pieces (limits::read_sized).
    let out = crate::limits::read_sized(contents, size_hint(path, gzipped).unwrap_or(0), max)
        .map_err(|e| Error::data(path, format!("corrupt or truncated gzip data: {e}")))?;
    Ok((out, gzipped))
}

/// How many bytes a file's contents come to, if it says: its size, or for a gzip the size its trailer gives.
fn size_hint(path: &Path, gzipped: bool) -> Option<u64> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if !gzipped {
        return Some(len);
    }
    let mut trailer = [0u8; 4];
    f.seek(SeekFrom::Start(len.checked_sub(4)?)).ok()?;
    f.read_exact(&mut trailer).ok()?;
    Some(gzip_size_hint(&trailer))
}

/// The inflated size a gzip's last 4 bytes give (its last member's size mod 2^32: a hint, not a promise);
/// 0 for fewer than 4 bytes.
pub(crate) fn gzip_size_hint(gz: &[u8]) -> u64 {
    match gz.len().checked_sub(4) {
        Some(at) => u64::from(u32::from_le_bytes([gz[at], gz[at + 1], gz[at + 2], gz[at + 3]])),
        None => 0,
    }
}

/// The first `n` bytes of a file's contents (inflated if gzipped), or all of them if there are fewer: enough
/// to read a header without inflating the rest.
pub fn read_prefix(path: &Path, n: usize) -> Result<Vec<u8>> {
    read_at_most(path, n as u64).map(|(bytes, _)| bytes.into_vec())
}

/// A file's contents, which its header promised to be `expected` bytes (`claim` says who promised): checked
/// against [`limits::MAX_DATA_BYTES`] first, and inflating stops one byte past the promise, so a small `.gz`
/// that would inflate to gigabytes is refused after reading what the header announced.
pub fn read_promised(path: &Path, expected: usize, claim: &str) -> Result<Vec<u8>> {
    limits::check(
        format!("{}: bytes {claim}", path.display()),
        limits::wide(expected),
        limits::MAX_DATA_BYTES,
    )?;
    let (bytes, _) = read_at_most(path, expected as u64 + 1)?;
    if bytes.len() > expected {
        return Err(Error::data(
            path,
            format!("{claim} {expected} bytes, the file holds more (trailing bytes)"),
        ));
    }
    Ok(bytes.into_vec())
}

/// The dimensions an IDX header with the given magic number announces, the header's length and the data's
/// length; `bytes` needs to hold only the header. `path` names the source in errors.
fn header(bytes: &[u8], magic: u32, path: &Path) -> Result<(Vec<usize>, usize, usize)> {
    let what = if magic == IMAGES_MAGIC { "images" } else { "labels" };
    if bytes.len() < 4 {
        return Err(Error::data(
            path,
            format!("{} bytes are too few for an IDX header (truncated?)", bytes.len()),
        ));
    }
    let found = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if found != magic {
        return Err(Error::data(
            path,
            format!("bad magic number {found:#010x}, expected {magic:#010x} (IDX {what} of unsigned bytes)"),
        ));
    }
    let ndim = (magic & 0xff) as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(Error::data(
            path,
            format!(
                "the IDX header needs {header} bytes, the file holds {} (truncated)",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    if let Some(i) = dims.iter().skip(1).position(|&d| d == 0) {
        return Err(Error::data(path, format!("dimension {} of {dims:?} is zero", i + 1)));
    }
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::data(path, format!("dimensions {dims:?} are out of range (too large)")))?;
    limits::check(
        format!("{}: data bytes the header {dims:?} promises", path.display()),
        limits::wide(expected),
        limits::MAX_DATA_BYTES,
    )?;
    if dims[0] == 0 {
        return Err(Error::data(path, format!("no {what} (the header says 0)")));
    }
    Ok((dims, header, expected))
}

/// What an IDX images header alone announces: (examples, values per example); refused unless `bytes` is
/// exactly the header.
pub(crate) fn images_header_shape(bytes: &[u8], path: &Path) -> Result<(usize, usize, (usize, usize, usize))> {
    let (dims, header, expected) = header(bytes, IMAGES_MAGIC, path)?;
    if header != bytes.len() {
        return Err(Error::data(
            path,
            format!("{} bytes are not one IDX images header", bytes.len()),
        ));
    }
    Ok((dims[0], expected / dims[0], (1, dims[1], dims[2])))
}

/// Parses an IDX file of unsigned bytes with the given magic number; returns its dimensions and its data.
/// `path` names the source in errors.
pub fn parse<'a>(bytes: &'a [u8], magic: u32, path: &Path) -> Result<(Vec<usize>, &'a [u8])> {
    let (dims, header, expected) = header(bytes, magic, path)?;
    let data = &bytes[header..];
    super::check_payload(path, data.len(), expected, &format!("the header {dims:?} promises"))?;
    Ok((dims, data))
}

/// An IDX file (plain or gzipped), its header read first: the rest is read only up to the size it promises.
fn read_idx(path: &Path, magic: u32) -> Result<Vec<u8>> {
    let head = read_prefix(path, 4 + 4 * (magic & 0xff) as usize)?;
    let (dims, header, expected) = header(&head, magic, path)?;
    read_promised(path, header + expected, &format!("the header {dims:?} promises"))
}

/// An IDX images file (`…-images-idx3-ubyte`, gzipped or plain) as a dataset without labels.
pub fn images(path: &Path) -> Result<Dataset> {
    let bytes = read_idx(path, IMAGES_MAGIC)?;
    let (dims, data) = parse(&bytes, IMAGES_MAGIC, path)?;
    let (h, w) = (dims[1], dims[2]);
    limits::check(
        format!("{}: pixels per picture", path.display()),
        limits::wide(h * w),
        limits::wide(limits::MAX_DIM),
    )?;
    Ok(Dataset {
        values: data.iter().map(|&b| b as u32).collect(),
        labels: None,
        dim: h * w,
        num_values: 256,
        image_shape: (1, h, w),
    })
}

/// An IDX labels file (`…-labels-idx1-ubyte`, gzipped or plain).
pub fn labels(path: &Path) -> Result<Vec<u32>> {
    let bytes = read_idx(path, LABELS_MAGIC)?;
    let (_, data) = parse(&bytes, LABELS_MAGIC, path)?;
    Ok(data.iter().map(|&b| b as u32).collect())
}

/// An images file and its labels file as one labelled dataset; the counts must agree.
pub fn labelled(images_path: &Path, labels_path: &Path) -> Result<Dataset> {
    let mut ds = images(images_path)?;
    let labels = labels(labels_path)?;
    if labels.len() != ds.len() {
        return Err(Error::data(
            labels_path,
            format!(
                "holds {} labels but {} holds {} images (size mismatch)",
                labels.len(),
                images_path.display(),
                ds.len()
            ),
        ));
    }
    ds.labels = Some(labels);
    Ok(ds)
}

/// The file `{prefix}-{kind}-idx{n}-ubyte` in `dir`, also spelt `{prefix}-{kind}.idx{n}-ubyte`, each plain or `.gz`.
fn find(dir: &Path, prefix: &str, kind: &str, ndim: usize) -> Result<PathBuf> {
    let names = [
        format!("{prefix}-{kind}-idx{ndim}-ubyte"),
        format!("{prefix}-{kind}-idx{ndim}-ubyte.gz"),
        format!("{prefix}-{kind}.idx{ndim}-ubyte"),
        format!("{prefix}-{kind}.idx{ndim}-ubyte.gz"),
    ];
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file()).ok_or_else(|| {
        Error::data(
            dir,
            format!(
                "no {} or {} file here (an MNIST-style IDX directory)",
                names[0], names[1]
            ),
        )
    })
}

/// A directory holding MNIST or Fashion-MNIST (the four IDX files, gzipped or plain): `(train, test)`,
/// 60,000 and 10,000 labelled 28×28 pictures with values 0..255 for the originals.
pub fn mnist_dir(dir: &Path) -> Result<(Dataset, Dataset)> {
    if !dir.is_dir() {
        return Err(Error::data(dir, "not a directory (expected the MNIST IDX files)"));
    }
    let part = |prefix: &str| -> Result<Dataset> {
        labelled(&find(dir, prefix, "images", 3)?, &find(dir, prefix, "labels", 1)?)
    };
    let (train, test) = (part("train")?, part("t10k")?);
    if train.image_shape != test.image_shape {
        return Err(Error::data(
            dir,
            format!(
                "train pictures are {:?} (C, H, W) but test pictures are {:?}",
                train.image_shape, test.image_shape
            ),
        ));
    }
    Ok((train, test))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// An IDX file of unsigned bytes: the magic number, dimensions and data.
    pub(crate) fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = magic.to_be_bytes().to_vec();
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// The contents' size is known before reading: a plain file's length, a gzip's trailer; a file too short
    /// for a trailer gives none. Reading reserves that much up front and still reads exactly the contents.
    #[test]
    fn size_hints_come_from_the_length_or_the_gzip_trailer() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let (plain, gz, short) = (dir.path().join("p"), dir.path().join("g"), dir.path().join("s"));
        std::fs::write(&plain, &data).unwrap();
        std::fs::write(&gz, gzip(&data)).unwrap();
        std::fs::write(&short, [0x1f, 0x8b, 0]).unwrap();
        assert_eq!(size_hint(&plain, false), Some(100_000));
        assert!(std::fs::metadata(&gz).unwrap().len() < 1_000);
        assert_eq!(size_hint(&gz, true), Some(100_000));
        assert_eq!(size_hint(&short, true), None);
        assert_eq!(
            (gzip_size_hint(&gzip(&data)), gzip_size_hint(&[0x1f, 0x8b, 0])),
            (100_000, 0)
        );
        for path in [&plain, &gz] {
            let bytes = read_at_most(path, 200_000).unwrap().0.into_vec();
            assert_eq!(bytes, data);
            assert_eq!(
                bytes.capacity(),
                data.len(),
                "reserved the contents, not the limit, and never grown"
            );
            assert_eq!(read_at_most(path, 10).unwrap().0.into_vec(), &data[..10]);
        }
    }

    /// `n` pictures of 3×2 with distinct values, and labels `i % 10`.
    fn pictures(n: usize) -> (Vec<u8>, Vec<u8>) {
        let px = (0..n * 6).map(|i| (i * 37 % 256) as u8).collect();
        let lb = (0..n).map(|i| (i % 10) as u8).collect();
        (px, lb)
    }

    /// Writes an MNIST directory with 4 train and 3 test pictures of 3×2; train gzipped, test plain.
    pub(crate) fn write_mnist(dir: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        let (trx, try_) = pictures(4);
        let (tex, tey) = pictures(3);
        let w = |name: &str, b: Vec<u8>| std::fs::write(dir.join(name), b).unwrap();
        w(
            "train-images-idx3-ubyte.gz",
            gzip(&idx_bytes(IMAGES_MAGIC, &[4, 3, 2], &trx)),
        );
        w(
            "train-labels-idx1-ubyte.gz",
            gzip(&idx_bytes(LABELS_MAGIC, &[4], &try_)),
        );
        w("t10k-images-idx3-ubyte", idx_bytes(IMAGES_MAGIC, &[3, 3, 2], &tex));
        w("t10k-labels-idx1-ubyte", idx_bytes(LABELS_MAGIC, &[3], &tey));
        (trx, try_, tex, tey)
    }

    fn as_u32(b: &[u8]) -> Vec<u32> {
        b.iter().map(|&v| v as u32).collect()
    }

    #[test]
    fn mnist_dir_reads_gzipped_and_plain_idx_files() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        let (trx, try_, tex, tey) = write_mnist(tmp.path());
        let (train, test) = mnist_dir(tmp.path())?;
        assert_eq!((train.len(), train.dim, train.num_values), (4, 6, 256));
        assert_eq!((test.len(), test.image_shape), (3, (1, 3, 2)));
        assert_eq!(train.values, as_u32(&trx));
        assert_eq!(train.labels, Some(as_u32(&try_)));
        assert_eq!(test.values, as_u32(&tex));
        assert_eq!(test.labels, Some(as_u32(&tey)));
        assert_eq!(test.example(2), &as_u32(&tex)[12..18]);
        Ok(())
    }

    #[test]
    fn images_and_labels_read_the_dotted_names_too() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        write_mnist(tmp.path());
        for (a, b) in [
            ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
            ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
        ] {
            std::fs::rename(tmp.path().join(a), tmp.path().join(b)).unwrap();
        }
        let (_, test) = mnist_dir(tmp.path())?;
        assert_eq!(test.len(), 3);
        Ok(())
    }

    #[test]
    fn bad_idx_files_give_clear_errors() {
        let p = Path::new("imgs.idx");
        let px = [7u8; 12];
        // wrong magic: a labels file where images are expected
        let e = parse(&idx_bytes(LABELS_MAGIC, &[12], &px), IMAGES_MAGIC, p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("imgs.idx") && e.contains("bad magic number 0x00000801"),
            "{e}"
        );
        // truncated data and header
        let e = parse(&idx_bytes(IMAGES_MAGIC, &[3, 2, 2], &px[..11]), IMAGES_MAGIC, p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("imgs.idx") && e.contains("holds 11") && e.contains("truncated"),
            "{e}"
        );
        let e = parse(&idx_bytes(IMAGES_MAGIC, &[3, 2, 2], &px)[..9], IMAGES_MAGIC, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("header needs 16 bytes") && e.contains("truncated"), "{e}");
        let e = parse(&[0, 0], IMAGES_MAGIC, p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        // extra bytes
        let e = parse(&idx_bytes(IMAGES_MAGIC, &[2, 2, 2], &px), IMAGES_MAGIC, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trailing bytes"), "{e}");
        // out-of-range dimensions
        let huge = idx_bytes(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &px);
        let e = parse(&huge, IMAGES_MAGIC, p).unwrap_err().to_string();
        assert!(e.contains("out of range") || e.contains("exceeds the limit"), "{e}");
        let e = parse(&idx_bytes(IMAGES_MAGIC, &[3, 0, 2], &[]), IMAGES_MAGIC, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dimension 1") && e.contains("zero"), "{e}");
        let e = parse(&idx_bytes(IMAGES_MAGIC, &[0, 2, 2], &[]), IMAGES_MAGIC, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no images"), "{e}");
    }

    /// A small `.gz` whose header promises 4 pixels but which inflates to 64 MB is refused after reading the
    /// promised bytes (and one more), not inflated in full; one whose header promises more than the limit is
    /// refused before its data is inflated at all.
    #[test]
    fn gzipped_files_are_inflated_only_as_far_as_the_header_promises() {
        let tmp = tempfile::tempdir().unwrap();
        let bomb = tmp.path().join("bomb-idx3-ubyte.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&idx_bytes(IMAGES_MAGIC, &[1, 2, 2], &[0; 4])).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        let gz = enc.finish().unwrap();
        assert!(gz.len() < 1 << 17, "{}", gz.len());
        std::fs::write(&bomb, &gz).unwrap();
        let e = images(&bomb).unwrap_err().to_string();
        assert!(
            e.contains("bomb-idx3-ubyte.gz") && e.contains("promises 20 bytes, the file holds more"),
            "{e}"
        );
        let huge = tmp.path().join("huge-idx3-ubyte.gz");
        std::fs::write(&huge, gzip(&idx_bytes(IMAGES_MAGIC, &[100_000, 1000, 1000], &[0; 64]))).unwrap();
        let e = images(&huge).unwrap_err().to_string();
        assert!(
            e.contains("huge-idx3-ubyte.gz") && e.contains("100000000000 exceeds the limit of 2147483648"),
            "{e}"
        );
    }

    #[test]
    fn bad_mnist_directories_name_the_file_at_fault() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write_mnist(d);
        // label count differs from image count
        std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx_bytes(LABELS_MAGIC, &[2], &[1, 2])).unwrap();
        let e = mnist_dir(d).unwrap_err().to_string();
        assert!(
            e.contains("t10k-labels-idx1-ubyte") && e.contains("holds 2 labels") && e.contains("holds 3 images"),
            "{e}"
        );
        // a truncated gzip stream
        let gz = std::fs::read(d.join("train-images-idx3-ubyte.gz")).unwrap();
        std::fs::write(d.join("train-images-idx3-ubyte.gz"), &gz[..gz.len() / 2]).unwrap();
        let e = mnist_dir(d).unwrap_err().to_string();
        assert!(
            e.contains("train-images-idx3-ubyte.gz") && e.contains("truncated gzip"),
            "{e}"
        );
        // a missing file
        std::fs::remove_file(d.join("train-images-idx3-ubyte.gz")).unwrap();
        let e = mnist_dir(d).unwrap_err().to_string();
        assert!(
            e.contains("no train-images-idx3-ubyte or train-images-idx3-ubyte.gz"),
            "{e}"
        );
        let e = mnist_dir(&d.join("nope")).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("not a directory"), "{e}");
        let e = images(&d.join("absent-idx3-ubyte")).unwrap_err().to_string();
        assert!(e.contains("absent-idx3-ubyte"), "{e}");
    }
}
