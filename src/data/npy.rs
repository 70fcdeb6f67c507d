//! Pictures in a NumPy `.npy` file of unsigned bytes (format versions 1.0 and 2.0, read by hand): shape
//! `(N, H, W)` for gray or `(N, H, W, C)` with C = 1 or 3 (channels last, as NumPy / PIL keep pictures).
//! Examples are turned channel-major, `[C, H, W]`, as every [`Dataset`] keeps them; values 0..255, no labels.
//!
//! The file is the magic `\x93NUMPY`, the version bytes, a little-endian header length (u16 in 1.0, u32 in 2.0),
//! then a Python dict literal such as `{'descr': '|u1', 'fortran_order': False, 'shape': (3, 28, 28), }`
//! padded with spaces and a newline, then the data in C order.

use std::path::Path;

use super::idx::{read_prefix, read_promised};
use super::Dataset;
use crate::error::{Error, Result};
use crate::limits;

const MAGIC: &[u8] = b"\x93NUMPY";

/// A Python literal as it may appear in an `.npy` header.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Bool(bool),
    Int(u64),
    Tuple(Vec<Lit>),
    Dict(Vec<(String, Lit)>),
}

impl std::fmt::Display for Lit {
    /// As Python writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lit::Str(s) => write!(f, "'{s}'"),
            Lit::Bool(b) => f.write_str(if *b { "True" } else { "False" }),
            Lit::Int(v) => write!(f, "{v}"),
            Lit::Tuple(t) => {
                let items: Vec<String> = t.iter().map(|x| x.to_string()).collect();
                write!(f, "({}{})", items.join(", "), if t.len() == 1 { "," } else { "" })
            }
            Lit::Dict(d) => {
                let items: Vec<String> = d.iter().map(|(k, v)| format!("'{k}': {v}")).collect();
                write!(f, "{{{}}}", items.join(", "))
            }
        }
    }
}

/// A small parser for the header dict: strings, True / False, non-negative integers, tuples and dicts.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize, // tuples and dicts open at `i`: bounded, so a hostile header cannot overflow the stack
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }
    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        match self.peek() {
            Some(x) if x == c => {
                self.i += 1;
                Ok(())
            }
            Some(x) => Err(format!(
                "expected `{}` at byte {}, found `{}`",
                c as char, self.i, x as char
            )),
            None => Err(format!("expected `{}`, found the end", c as char)),
        }
    }
    /// Items up to `close`, separated by commas, a trailing comma allowed.
    fn items<T>(
        &mut self,
        close: u8,
        mut item: impl FnMut(&mut Self) -> std::result::Result<T, String>,
    ) -> std::result::Result<Vec<T>, String> {
        let mut out = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.i += 1;
                return Ok(out);
            }
            out.push(item(self)?);
            if self.peek() == Some(b',') {
                self.i += 1;
            } else {
                self.expect(close)?;
                return Ok(out);
            }
        }
    }
    fn value(&mut self) -> std::result::Result<Lit, String> {
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                let start = self.i + 1;
                let len = self.s[start..]
                    .iter()
                    .position(|&c| c == q)
                    .ok_or_else(|| "unterminated string".to_string())?;
                self.i = start + len + 1;
                Ok(Lit::Str(
                    String::from_utf8_lossy(&self.s[start..start + len]).into_owned(),
                ))
            }
            Some(open @ (b'(' | b'{')) => {
                if self.depth >= limits::MAX_NPY_DEPTH {
                    return Err(format!(
                        "literals nested deeper than {} levels at byte {} (NumPy writes 2)",
                        limits::MAX_NPY_DEPTH,
                        self.i
                    ));
                }
                self.i += 1;
                self.depth += 1;
                let lit = if open == b'(' {
                    self.items(b')', |p| p.value()).map(Lit::Tuple)
                } else {
                    self.items(b'}', |p| {
                        let Lit::Str(k) = p.value()? else {
                            return Err("a dict key that is not a string".to_string());
                        };
                        p.expect(b':')?;
                        Ok((k, p.value()?))
                    })
                    .map(Lit::Dict)
                };
                self.depth -= 1;
                lit
            }
            Some(c) if c.is_ascii_alphanumeric() => {
                let start = self.i;
                while self.i < self.s.len() && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_') {
                    self.i += 1;
                }
                let word = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                match word.as_str() {
                    "True" => Ok(Lit::Bool(true)),
                    "False" => Ok(Lit::Bool(false)),
                    w => w
                        .trim_end_matches('L')
                        .parse()
                        .map(Lit::Int)
                        .map_err(|_| format!("`{w}` is not a non-negative integer, True or False")),
                }
            }
            Some(c) => Err(format!("unexpected `{}` at byte {}", c as char, self.i)),
            None => Err("unexpected end of the header".to_string()),
        }
    }
}

/// Where the header dict begins and ends, from the preamble (the first 12 bytes are enough).
fn preamble(bytes: &[u8], path: &Path) -> Result<(usize, usize)> {
    if !bytes.starts_with(MAGIC) {
        return Err(Error::data(
            path,
            "bad magic: not a NumPy .npy file (it must start with \\x93NUMPY)",
        ));
    }
    if bytes.len() < 10 {
        return Err(Error::data(path, "the .npy preamble is cut short (truncated)"));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        2 => return Err(Error::data(path, "the .npy preamble is cut short (truncated)")),
        _ => {
            return Err(Error::data(
                path,
                format!(".npy format version {major}.{minor} is not supported (only 1.0 and 2.0)"),
            ))
        }
    };
    limits::check(
        format!("{}: .npy header length", path.display()),
        limits::wide(len),
        limits::wide(limits::MAX_NPY_HEADER),
    )?;
    Ok((start, start + len))
}

/// The header dict's entries and where the data begins.
fn header(bytes: &[u8], path: &Path) -> Result<(Vec<(String, Lit)>, usize)> {
    let (start, end) = preamble(bytes, path)?;
    let len = end - start;
    if bytes.len() < end {
        return Err(Error::data(
            path,
            format!(
                "the header needs {len} bytes but the file ends after {} (truncated)",
                bytes.len() - start
            ),
        ));
    }
    let mut p = Parser {
        s: &bytes[start..end],
        i: 0,
        depth: 0,
    };
    let dict = match p.value() {
        Ok(Lit::Dict(d)) => d,
        Ok(other) => return Err(Error::data(path, format!("the header is {other}, not a dict"))),
        Err(e) => return Err(Error::data(path, format!("unreadable header: {e}"))),
    };
    Ok((dict, end))
}

/// What the header says: pictures of (C, H, W), D = C·H·W values each, N·D bytes of data in all.
struct Layout {
    shape: Vec<usize>,
    c: usize,
    h: usize,
    w: usize,
    dim: usize,
    total: usize,
}

/// The header's layout and where the data begins; `bytes` needs to hold only the preamble and the header.
fn layout(bytes: &[u8], path: &Path) -> Result<(Layout, usize)> {
    let (dict, data_start) = header(bytes, path)?;
    let get = |key: &str| {
        dict.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| Error::data(path, format!("the header has no '{key}' entry")))
    };
    match get("descr")? {
        Lit::Str(d) if matches!(d.as_str(), "|u1" | "<u1" | ">u1" | "=u1" | "u1") => {}
        d => {
            return Err(Error::data(
                path,
                format!("dtype {d} is not supported; the pictures must be unsigned bytes ('|u1', numpy.uint8)"),
            ))
        }
    }
    match get("fortran_order")? {
        Lit::Bool(false) => {}
        v => {
            return Err(Error::data(
                path,
                format!("fortran_order {v} is not supported; save a C-ordered array (numpy.ascontiguousarray)"),
            ))
        }
    }
    let shape = match get("shape")? {
        Lit::Tuple(t) => t
            .iter()
            .map(|x| match x {
                Lit::Int(v) => usize::try_from(*v).ok(),
                _ => None,
            })
            .collect::<Option<Vec<usize>>>(),
        _ => None,
    }
    .ok_or_else(|| Error::data(path, "the 'shape' entry is not a tuple of integers"))?;
    let (n, h, w, c) = match shape[..] {
        [n, h, w] => (n, h, w, 1),
        [n, h, w, c] if c == 1 || c == 3 => (n, h, w, c),
        _ => {
            return Err(Error::data(
                path,
                format!(
                    "shape {shape:?} is not (N, H, W) or (N, H, W, C) with C = 1 or 3 channels last \
                     (out of range for pictures)"
                ),
            ))
        }
    };
    if n == 0 || h == 0 || w == 0 {
        return Err(Error::data(path, format!("shape {shape:?} holds no pixels")));
    }
    let dim = h
        .checked_mul(w)
        .and_then(|x| x.checked_mul(c))
        .ok_or_else(|| Error::data(path, format!("shape {shape:?} is out of range (too large)")))?;
    let total = n
        .checked_mul(dim)
        .ok_or_else(|| Error::data(path, format!("shape {shape:?} is out of range (too large)")))?;
    limits::check(
        format!("{}: values per picture of shape {shape:?}", path.display()),
        limits::wide(dim),
        limits::wide(limits::MAX_DIM),
    )?;
    limits::check(
        format!("{}: data bytes of shape {shape:?}", path.display()),
        limits::wide(total),
        limits::MAX_DATA_BYTES,
    )?;
    Ok((
        Layout {
            shape,
            c,
            h,
            w,
            dim,
            total,
        },
        data_start,
    ))
}

/// What an `.npy` header alone announces: (examples, values per example, (colours, height, width)); refused
/// unless `bytes` is exactly the preamble and the header.
pub(crate) fn header_shape(bytes: &[u8], path: &Path) -> Result<(usize, usize, (usize, usize, usize))> {
    let (layout, data_start) = layout(bytes, path)?;
    if data_start != bytes.len() {
        return Err(Error::data(
            path,
            format!("{} bytes are not one .npy header", bytes.len()),
        ));
    }
    Ok((layout.total / layout.dim, layout.dim, (layout.c, layout.h, layout.w)))
}

/// Parses an `.npy` file of pictures; `path` names the source in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Dataset> {
    let (
        Layout {
            shape,
            c,
            h,
            w,
            dim,
            total,
        },
        data_start,
    ) = layout(bytes, path)?;
    let data = &bytes[data_start..];
    super::check_payload(path, data.len(), total, &format!("shape {shape:?} needs"))?;
    // [N, H, W, C] → [N, C, H, W]
    let mut values = Vec::with_capacity(total);
    for ex in data.chunks_exact(dim) {
        for ch in 0..c {
            values.extend(ex.iter().skip(ch).step_by(c).map(|&b| b as u32));
        }
    }
    Ok(Dataset {
        values,
        labels: None,
        dim,
        num_values: 256,
        image_shape: (c, h, w),
    })
}

/// An `.npy` file of pictures (plain, or gzipped as `.npy.gz`). The header is read first; the data only up to
/// the size the header promises.
pub fn npy_images(path: &Path) -> Result<Dataset> {
    let (_, end) = preamble(&read_prefix(path, 12)?, path)?;
    let (layout, start) = layout(&read_prefix(path, end)?, path)?;
    let claim = format!("shape {:?} needs", layout.shape);
    parse(&read_promised(path, start + layout.total, &claim)?, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1.0 (or 2.0) `.npy` file with the given header dict and data, padded as NumPy pads it.
    fn npy(dict: &str, data: &[u8], v2: bool) -> Vec<u8> {
        let pre = if v2 { 12 } else { 10 };
        let mut h = dict.to_string();
        while !(pre + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut b = MAGIC.to_vec();
        if v2 {
            b.extend_from_slice(&[2, 0]);
            b.extend_from_slice(&(h.len() as u32).to_le_bytes());
        } else {
            b.extend_from_slice(&[1, 0]);
            b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        }
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(data);
        b
    }

    fn dict(descr: &str, shape: &str) -> String {
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}")
    }

    #[test]
    fn npy_images_reads_gray_pictures() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.npy");
        let data: Vec<u8> = (0..12).map(|i| i * 20).collect();
        std::fs::write(&path, npy(&dict("|u1", "(2, 2, 3)"), &data, false)).unwrap();
        let ds = npy_images(&path)?;
        assert_eq!(
            (ds.len(), ds.dim, ds.num_values, ds.image_shape),
            (2, 6, 256, (1, 2, 3))
        );
        assert_eq!(ds.values, data.iter().map(|&b| b as u32).collect::<Vec<_>>());
        assert!(ds.labels.is_none());
        Ok(())
    }

    #[test]
    fn npy_images_turns_channels_last_into_channel_major() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("rgb.npy");
        // 2 pictures of 1×2 RGB: (r, g, b) per pixel, in NumPy's C order [N, H, W, C]
        let data = [1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16];
        std::fs::write(&path, npy(&dict("<u1", "(2, 1, 2, 3)"), &data, false)).unwrap();
        let ds = npy_images(&path)?;
        assert_eq!(ds.image_shape, (3, 1, 2));
        assert_eq!(ds.values, vec![1, 4, 2, 5, 3, 6, 11, 14, 12, 15, 13, 16]);
        // the same as version 2.0, the keys in another order, a one-channel last axis
        let d = "{'shape': (3, 2, 2, 1), 'fortran_order': False, 'descr': '|u1'}";
        std::fs::write(&path, npy(d, &data, true)).unwrap();
        let ds = npy_images(&path)?;
        assert_eq!((ds.len(), ds.image_shape), (3, (1, 2, 2)));
        assert_eq!(ds.example(2), &[13, 14, 15, 16][..]);
        Ok(())
    }

    /// A header nested far deeper than NumPy writes (a 60 KB file of brackets) is an error naming the file, not
    /// a stack overflow; a gzipped file is inflated only as far as its header promises.
    #[test]
    fn hostile_headers_and_gzip_bombs_are_refused() {
        for depth in [9, 30_000] {
            let shape = format!("{}{}", "(".repeat(depth), ")".repeat(depth));
            let e = parse(&npy(&shape, &[], true), Path::new("deep.npy"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("deep.npy") && e.contains("nested deeper than 8 levels"),
                "{e}"
            );
        }
        let tmp = tempfile::tempdir().unwrap();
        let bomb = tmp.path().join("bomb.npy.gz");
        let mut data = npy(&dict("|u1", "(1, 2, 2)"), &[0; 4], false);
        data.resize(data.len() + (32 << 20), 0);
        std::fs::write(&bomb, crate::data::idx::tests::gzip(&data)).unwrap();
        let e = npy_images(&bomb).unwrap_err().to_string();
        assert!(e.contains("bomb.npy.gz") && e.contains("the file holds more"), "{e}");
    }

    #[test]
    fn bad_npy_files_give_clear_errors() {
        let p = Path::new("bad.npy");
        let data = [0u8; 12];
        let err = |b: &[u8]| parse(b, p).unwrap_err().to_string();
        let e = err(b"PK\x03\x04 a zip file");
        assert!(e.contains("bad.npy") && e.contains("bad magic"), "{e}");
        let good = npy(&dict("|u1", "(2, 2, 3)"), &data, false);
        let e = err(&good[..good.len() - 1]);
        assert!(
            e.contains("bad.npy") && e.contains("needs 12 data bytes") && e.contains("truncated"),
            "{e}"
        );
        let e = err(&good[..40]);
        assert!(e.contains("header needs") && e.contains("truncated"), "{e}");
        let e = err(&good[..8]);
        assert!(e.contains("truncated"), "{e}");
        let e = err(&npy(&dict("<f4", "(2, 2, 3)"), &data, false));
        assert!(e.contains("dtype '<f4' is not supported"), "{e}");
        let e = err(&npy(&dict("|u1", "(1, 2, 2, 3, 1)"), &data, false));
        assert!(e.contains("shape [1, 2, 2, 3, 1]") && e.contains("out of range"), "{e}");
        let e = err(&npy(&dict("|u1", "(1, 3, 2, 2)"), &data, false));
        assert!(e.contains("shape [1, 3, 2, 2]") && e.contains("C = 1 or 3"), "{e}");
        let e = err(&npy(&dict("|u1", "(0, 2, 3)"), &[], false));
        assert!(e.contains("holds no pixels"), "{e}");
        let f = "{'descr': '|u1', 'fortran_order': True, 'shape': (2, 2, 3), }";
        let e = err(&npy(f, &data, false));
        assert!(e.contains("fortran_order True is not supported"), "{e}");
        let e = err(&npy("{'descr': '|u1', 'shape': (2, 2, 3), }", &data, false));
        assert!(e.contains("no 'fortran_order' entry"), "{e}");
        let e = err(&npy("{'descr': '|u1', 'shape': (2, 2, 3)", &data, false));
        assert!(e.contains("unreadable header"), "{e}");
        let mut v3 = good.clone();
        v3[6] = 3;
        let e = err(&v3);
        assert!(e.contains("version 3.0 is not supported"), "{e}");
        let e = err(&npy(
            &dict("|u1", "(99999999999, 99999999999, 99999999999)"),
            &data,
            false,
        ));
        assert!(e.contains("out of range"), "{e}");
        let e = npy_images(Path::new("/no/such/x.npy")).unwrap_err().to_string();
        assert!(e.contains("/no/such/x.npy"), "{e}");
    }
}
