//! The UCI "Optical Recognition of Handwritten Digits" test set (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0) as
//! scikit-learn ships it: 1,797 rows of 64 pixel values in 0..16 (8×8, row-major) and a label 0..9.
//! A copy lives in `data/digits.csv.gz` and is embedded in the binary as the default dataset.

use std::path::Path;

use super::Dataset;
use crate::error::{Error, Result};
use crate::limits;

/// The gzipped CSV itself (the benchmark hands it to the PyTorch peer).
pub const EMBEDDED: &[u8] = include_bytes!("../../data/digits.csv.gz");
pub const SIDE: usize = 8;
pub const NUM_VALUES: usize = 17;

/// The embedded copy.
pub fn embedded() -> Result<Dataset> {
    parse(EMBEDDED, Path::new("<embedded digits.csv.gz>"))
}

/// A file in the same format, gzipped or plain.
pub fn from_file(path: &Path) -> Result<Dataset> {
    let bytes = limits::read_file(path, limits::MAX_TEXT_BYTES, "file size in bytes")?;
    parse(&bytes, path)
}

/// Parses rows of 64 values in 0..16 and a label in 0..9; `path` names the source in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Dataset> {
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        // Inflated up to a limit: a small file that inflates to gigabytes is refused, not inflated. Sized by
        // the gzip's trailer (a hint), as every read of the project is (limits::read_sized).
        let raw = limits::read_sized(
            flate2::read::MultiGzDecoder::new(bytes),
            super::idx::gzip_size_hint(bytes),
            limits::MAX_TEXT_BYTES as u64 + 1,
        )
        .map_err(|e| Error::data(path, format!("corrupt or truncated gzip data: {e}")))?;
        limits::check(
            format!("{}: bytes of text (inflated)", path.display()),
            limits::wide(raw.len()),
            limits::MAX_TEXT_BYTES,
        )?;
        std::borrow::Cow::Owned(raw.into_vec())
    } else {
        std::borrow::Cow::Borrowed(bytes)
    };
    if let Some(what) = other_format(&raw) {
        return Err(Error::data(path, format!("not a CSV file but {what}")));
    }
    let text = std::str::from_utf8(&raw).map_err(|_| Error::data(path, "not a text (CSV) file"))?;
    // A byte-order mark (some spreadsheet programs write one) is not part of the first value.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let d = SIDE * SIDE;
    let (mut values, mut labels) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        // At most one field more than a line holds is collected: a gigabyte of commas in one line is counted,
        // not listed.
        let row: Vec<&str> = line.trim().splitn(d + 2, ',').collect();
        if row.len() != d + 1 {
            let found = line.trim().split(',').count();
            return Err(Error::data(
                path,
                format!(
                    "line {}: expected {} comma-separated values (64 pixels and a label), found {found}{}",
                    i + 1,
                    d + 1,
                    if found < d + 1 { " (truncated?)" } else { "" }
                ),
            ));
        }
        for (j, field) in row.iter().enumerate() {
            let v: i64 = field.trim().parse().map_err(|_| {
                Error::data(
                    path,
                    format!("line {}, column {}: `{field}` is not an integer", i + 1, j + 1),
                )
            })?;
            let max = if j < d { NUM_VALUES as i64 - 1 } else { 9 };
            if !(0..=max).contains(&v) {
                let what = if j < d { "pixel value" } else { "label" };
                return Err(Error::data(
                    path,
                    format!("line {}, column {}: {what} {v} is outside 0..{max}", i + 1, j + 1),
                ));
            }
            if j < d {
                values.push(v as u32);
            } else {
                labels.push(v as u32);
            }
        }
    }
    if labels.is_empty() {
        return Err(Error::data(path, "no data rows"));
    }
    Ok(Dataset {
        values,
        labels: Some(labels),
        dim: d,
        num_values: NUM_VALUES,
        image_shape: (1, SIDE, SIDE),
    })
}

/// What a file that is not a digits CSV is, told by its first bytes, with the way armory reads such data:
/// IDX (MNIST's format) and `.npy` files and PNGs are named instead of reported as a bad CSV.
fn other_format(bytes: &[u8]) -> Option<String> {
    const HOW: &str = "armory reads IDX images of unsigned bytes in 3 dimensions (for training, the folder of \
                       the four MNIST files as mnist:DIR)";
    match bytes {
        [0, 0, t, n, ..] => {
            let values = match t {
                0x08 => "unsigned bytes",
                0x09 => "signed bytes",
                0x0B => "16-bit integers",
                0x0C => "32-bit integers",
                0x0D => "32-bit floats",
                0x0E => "64-bit floats",
                // Two zero bytes never start a text file: a damaged or unknown IDX file, or other binary data.
                _ => {
                    return Some(format!(
                        "a binary file starting as an IDX file does, but with an unknown type (0x{t:02X}); {HOW}"
                    ))
                }
            };
            let dims = match *n {
                1 => "1 dimension (labels?)".to_string(),
                2..=4 => format!("{n} dimensions"),
                _ => format!("{n} dimensions (IDX files of images have 3)"),
            };
            Some(format!("an IDX file of {values} in {dims}; {HOW}"))
        }
        [0x93, b'N', b'U', b'M', b'P', b'Y', ..] => Some("a NumPy .npy array; load it as npy:FILE".into()),
        [0x89, b'P', b'N', b'G', ..] => Some("a PNG picture; load a folder of PNGs as png:DIR".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_digits_match_the_seed_split() -> Result<()> {
        let all = embedded()?;
        assert_eq!((all.len(), all.dim), (1797, 64));
        let s = super::super::Splits::by_position(&all)?;
        assert_eq!((s.train.len(), s.val.len(), s.test.len()), (1000, 350, 447));
        assert_eq!(&s.test.example(0)[..4], all.example(1350).get(..4).unwrap());
        assert!(all.values.iter().all(|&v| v <= 16) && all.values.contains(&16));
        Ok(())
    }

    /// A CSV saved with a UTF-8 byte-order mark (as spreadsheet programs do) reads like one without.
    #[test]
    fn a_byte_order_mark_is_accepted() -> Result<()> {
        let row = format!("{}16,3\n", "0,".repeat(63));
        let plain = parse(row.as_bytes(), Path::new("x.csv"))?;
        let marked = parse(format!("\u{feff}{row}").as_bytes(), Path::new("x.csv"))?;
        assert_eq!((marked.values, marked.labels), (plain.values, plain.labels));
        Ok(())
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let p = Path::new("bad.csv");
        let row = |v: &str| format!("{}{v},3\n", "0,".repeat(63));
        let e = parse(row("17").as_bytes(), p).unwrap_err().to_string();
        assert!(
            e.contains("bad.csv") && e.contains("pixel value 17 is outside 0..16"),
            "{e}"
        );
        let e = parse(b"0,1,2\n", p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("found 3"), "{e}");
        let e = parse(row("x").as_bytes(), p).unwrap_err().to_string();
        assert!(e.contains("`x` is not an integer"), "{e}");
        let e = parse(&EMBEDDED[..EMBEDDED.len() / 2], p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = parse(b"\xef\xbb\xbf", p).unwrap_err().to_string();
        assert!(e.contains("no data rows"), "{e}");
        let e = parse(b"", p).unwrap_err().to_string();
        assert!(e.contains("no data rows"), "{e}");
        // Other formats are named, not reported as a bad CSV.
        let e = parse(&[0, 0, 8, 1, 0, 0, 0, 2, 7, 3], p).unwrap_err().to_string();
        assert!(
            e.contains("bad.csv: not a CSV file but an IDX file of unsigned bytes in 1 dimension (labels?)"),
            "{e}"
        );
        let e = parse(&[0, 0, 0x0D, 3, 0, 0, 0, 1], p).unwrap_err().to_string();
        assert!(e.contains("IDX file of 32-bit floats in 3 dimensions"), "{e}");
        // Damaged or unknown IDX files too (an unknown type byte, no or too many dimensions).
        let e = parse(&[0, 0, 0x42, 3, 0, 0, 0, 3], p).unwrap_err().to_string();
        assert!(
            e.contains("starting as an IDX file does, but with an unknown type (0x42)"),
            "{e}"
        );
        let e = parse(&[0, 0, 8, 0, 7], p).unwrap_err().to_string();
        assert!(
            e.contains("IDX file of unsigned bytes in 0 dimensions (IDX files of images have 3)"),
            "{e}"
        );
        let e = parse(&[0, 0, 8, 9, 0, 0, 0, 1], p).unwrap_err().to_string();
        assert!(e.contains("in 9 dimensions (IDX files of images have 3)"), "{e}");
        let e = parse(b"\x93NUMPY\x01\x00", p).unwrap_err().to_string();
        assert!(e.contains("npy:FILE"), "{e}");
        let e = from_file(Path::new("/no/such/digits.csv")).unwrap_err().to_string();
        assert!(e.contains("/no/such/digits.csv"), "{e}");
    }
}
