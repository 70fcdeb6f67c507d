//! The `.arm` container: a small header, then one range-coded stream per chunk of examples.
//!
//! All integers little-endian:
//!
//! | bytes | field |
//! |-------|-------|
//! | 4 | magic `ARMZ` |
//! | 1 | format version ([`VERSION`]) |
//! | 1 | arithmetic mode ([`ARITHMETIC`]: exact f32 network, `libm`, 24-bit frequencies) |
//! | 8 | model fingerprint ([`fingerprint`]: FNV-1a 64 of the model description and every weight) |
//! | 4, 4, 2 | examples N, dimensions D, values K |
//! | 2 | label classes (0: no labels) |
//! | 4 | examples per chunk |
//! | 1 + 4 + n | file format tag, length and what rebuilds the file around the values (e.g. an IDX header) |
//! | 4 per chunk | the chunk's stream length in 32-bit words |
//! | 4 | CRC-32 of the decoded values and labels |
//! | 4 | CRC-32 of every header byte before it |
//! | … | the chunks' streams, 32-bit words |
//!
//! A reader checks the magic, the version, the arithmetic, the header CRC, the fingerprint against the model
//! it is given, the lengths against the file size, and after decoding the data CRC: a corrupt, truncated or
//! foreign file is refused with a typed error, never decoded into wrong data.

use crate::error::{Error, Result};
use crate::models::Arm;

pub const MAGIC: &[u8; 4] = b"ARMZ";
/// The container version this build writes and reads. Version 2 (2026-12-01): the fingerprint hashes the
/// model description in canonical form (JSON, keys sorted); version 1 hashed the config structs of the
/// model families as they were then, and files of it decompress with the armory that wrote them.
pub const VERSION: u8 = 2;
/// The arithmetic mode: 2 = the fixed-order f32 kernel of `nn::exact`, its f32 `exp` in the gates (mode 1 used
/// `libm`'s there), `libm` elsewhere, f64 probabilities from `libm`, quantised to 2^24 by
/// [`super::probability::quantise`]. A change to any of them is a new mode.
pub const ARITHMETIC: u8 = 2;

/// Everything in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub fingerprint: u64,
    pub count: usize,
    pub dim: usize,
    pub num_values: usize,
    /// Labels are coded uniformly over 0..label_classes; 0: the data have no labels.
    pub label_classes: usize,
    pub chunk: usize,
    pub format_tag: u8,
    pub format_info: Vec<u8>,
    /// Each chunk's stream length in 32-bit words.
    pub chunk_words: Vec<usize>,
    pub data_crc: u32,
}

impl Header {
    /// The number of chunks N examples make, `chunk` at a time.
    pub fn num_chunks(count: usize, chunk: usize) -> usize {
        count.div_ceil(chunk.max(1))
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(ARITHMETIC);
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&(self.count as u32).to_le_bytes());
        out.extend_from_slice(&(self.dim as u32).to_le_bytes());
        out.extend_from_slice(&(self.num_values as u16).to_le_bytes());
        out.extend_from_slice(&(self.label_classes as u16).to_le_bytes());
        out.extend_from_slice(&(self.chunk as u32).to_le_bytes());
        out.push(self.format_tag);
        out.extend_from_slice(&(self.format_info.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.format_info);
        for &w in &self.chunk_words {
            out.extend_from_slice(&(w as u32).to_le_bytes());
        }
        out.extend_from_slice(&self.data_crc.to_le_bytes());
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Reads a header; returns it and the offset of the first stream. Checks everything that can be checked
    /// without a model.
    pub fn read(bytes: &[u8]) -> Result<(Header, usize)> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(corrupt("not an armory compressed file (bad magic; expected `ARMZ`)"));
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(Error::CodecVersion {
                found: version,
                supported: VERSION,
            });
        }
        let arithmetic = r.u8()?;
        if arithmetic != ARITHMETIC {
            return Err(Error::CodecArithmetic {
                found: arithmetic,
                supported: ARITHMETIC,
            });
        }
        let fingerprint = r.u64()?;
        let count = r.u32()? as usize;
        let dim = r.u32()? as usize;
        let num_values = r.u16()? as usize;
        let label_classes = r.u16()? as usize;
        let chunk = r.u32()? as usize;
        let format_tag = r.u8()?;
        let info_len = r.u32()? as usize;
        let format_info = r.take(info_len)?.to_vec();
        if chunk == 0 || dim == 0 || num_values < 2 || count == 0 {
            return Err(corrupt(format!(
                "impossible sizes: {count} examples of {dim} values in 0..{num_values}, chunks of {chunk}"
            )));
        }
        // The data decoded are held in memory: a forged count may not ask for more than any data file may hold.
        crate::limits::check(
            "values in the compressed file (examples × values per example)",
            (count as u128) * (dim as u128),
            crate::limits::MAX_DATA_BYTES,
        )?;
        let n_chunks = Header::num_chunks(count, chunk);
        if n_chunks > bytes.len() / 4 {
            return Err(corrupt(format!(
                "{n_chunks} chunks cannot fit in {} bytes (truncated?)",
                bytes.len()
            )));
        }
        let chunk_words = (0..n_chunks)
            .map(|_| Ok(r.u32()? as usize))
            .collect::<Result<Vec<_>>>()?;
        let data_crc = r.u32()?;
        let header_end = r.at;
        let crc = r.u32()?;
        if crc32fast::hash(&bytes[..header_end]) != crc {
            return Err(corrupt("the header fails its checksum"));
        }
        let body: usize = chunk_words.iter().map(|w| w * 4).sum();
        if bytes.len() - r.at != body {
            let why = if bytes.len() - r.at < body {
                "truncated"
            } else {
                "trailing bytes"
            };
            return Err(corrupt(format!(
                "the header promises {body} bytes of coded data, the file holds {} ({why})",
                bytes.len() - r.at
            )));
        }
        let header = Header {
            fingerprint,
            count,
            dim,
            num_values,
            label_classes,
            chunk,
            format_tag,
            format_info,
            chunk_words,
            data_crc,
        };
        Ok((header, r.at))
    }
}

/// A bounds-checked cursor: running off the end is a "truncated" error, never a panic.
pub(crate) struct Reader<'a> {
    pub bytes: &'a [u8],
    pub at: usize,
}

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| corrupt("the file ends inside its header (truncated)"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
}

pub(crate) fn corrupt(msg: impl Into<String>) -> Error {
    Error::CodecCorrupt(msg.into())
}

/// FNV-1a, 64 bits: a small, fixed, dependency-free hash (not cryptographic: it catches the wrong model, not
/// a forged one).
#[derive(Debug, Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// The model's fingerprint: FNV-1a 64 of its description in canonical form (JSON with every object's keys
/// sorted, so that it depends on what the model is, not on the order its settings are declared or written
/// in) and of every parameter in name order (name, shape, f32 little-endian values).
pub fn fingerprint(arm: &Arm) -> Result<u64> {
    let mut h = Fnv64::default();
    let json = serde_json::to_value(arm.config()).map_err(|e| Error::Internal(format!("config to JSON: {e}")))?;
    h.write(canonical(json).to_string().as_bytes());
    for (name, var) in arm.params().vars() {
        h.write(name.as_bytes());
        for &d in var.dims() {
            h.write(&(d as u64).to_le_bytes());
        }
        let values = var
            .as_tensor()
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for v in values {
            h.write(&v.to_le_bytes());
        }
    }
    Ok(h.finish())
}

/// `v` with the keys of every object in sorted order.
pub(crate) fn canonical(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let sorted: std::collections::BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            fingerprint: 0x0123_4567_89ab_cdef,
            count: 5,
            dim: 64,
            num_values: 17,
            label_classes: 10,
            chunk: 2,
            format_tag: 1,
            format_info: vec![9, 8, 7],
            chunk_words: vec![3, 0, 1],
            data_crc: 42,
        }
    }

    /// A well-formed header (its checksum right) whose count asks for more values than any data file may
    /// hold is refused before anything is allocated for them.
    #[test]
    fn a_forged_count_is_refused() {
        let h = Header {
            count: u32::MAX as usize,
            chunk: u32::MAX as usize,
            chunk_words: vec![1],
            ..header()
        };
        let mut bytes = vec![];
        h.write(&mut bytes);
        bytes.extend_from_slice(&[0u8; 4]);
        let e = Header::read(&bytes).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    }

    #[test]
    fn header_round_trips_and_every_truncation_or_flip_is_refused() {
        let h = header();
        let mut bytes = vec![];
        h.write(&mut bytes);
        bytes.extend_from_slice(&[0u8; 16]); // the 4 words of coded data
        let (back, at) = Header::read(&bytes).unwrap();
        assert_eq!(back, h);
        assert_eq!(at, bytes.len() - 16);
        for n in 0..bytes.len() {
            assert!(Header::read(&bytes[..n]).is_err(), "truncated to {n}");
        }
        for i in 0..at {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Header::read(&bad).is_err(), "flipped byte {i}");
        }
    }

    #[test]
    fn unknown_versions_and_modes_are_named() {
        let mut bytes = vec![];
        header().write(&mut bytes);
        bytes[4] = 9;
        let e = Header::read(&bytes).unwrap_err();
        assert!(matches!(e, Error::CodecVersion { found: 9, .. }), "{e}");
        bytes[4] = VERSION;
        bytes[5] = 7;
        let e = Header::read(&bytes).unwrap_err();
        assert!(matches!(e, Error::CodecArithmetic { found: 7, .. }), "{e}");
    }

    /// The fingerprint reads what the model is: the same config written with its keys in another order gives
    /// the same fingerprint; another setting, or another weight, another one.
    #[test]
    fn the_fingerprint_is_the_model_not_the_text() {
        use crate::config::RunConfig;
        use std::path::Path;
        let arm = |text: &str| {
            let cfg = RunConfig::parse(text, Path::new("t.toml")).unwrap();
            Arm::new(&cfg.model, 0, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap()
        };
        let base = crate::config::SEED_CONFIG.replace("hidden = 256", "hidden = 4");
        let a = fingerprint(&arm(&base)).unwrap();
        let moved = base
            .replace("hidden = 4\n", "")
            .replace("[model]\n", "[model]\nhidden = 4\n");
        assert_ne!(moved, base);
        assert_eq!(fingerprint(&arm(&moved)).unwrap(), a);
        let other = fingerprint(&arm(&base.replace("input = \"raw\"", "input = \"scaled\""))).unwrap();
        assert_ne!(other, a);
        let model = arm(&base);
        let (_, var) = model.params().vars().into_iter().next().unwrap();
        var.set(&(var.as_tensor() * 2.0).unwrap()).unwrap();
        assert_ne!(fingerprint(&model).unwrap(), a);
    }

    #[test]
    fn fnv_matches_its_published_vectors() {
        let hash = |s: &str| {
            let mut h = Fnv64::default();
            h.write(s.as_bytes());
            h.finish()
        };
        assert_eq!(hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash("foobar"), 0x8594_4171_f739_67e8);
    }
}
