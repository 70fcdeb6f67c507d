//! Lossless compression with a trained ARM: each value x_d is range-coded (constriction's queue coder, which
//! decodes in encoding order, as an ARM needs) under p(x_d | x_<d), so a file costs about −log2 p(x) bits.
//!
//! The decoder must recompute exactly the probabilities the encoder used, on any machine. So both run the
//! model's cached stepper in [`Arithmetic::Exact`] (`nn::exact`: fixed-order f32 products, `libm`
//! exponentials, every row of a batch on its own), turn θ into integer frequencies by one deterministic
//! procedure ([`probability`]), and code position by position. The examples are cut into chunks of
//! [`Options::chunk`], each its own stream: chunks are coded in parallel (rayon), and within a chunk the
//! symbols go in the order (position, example), whatever batch size ([`Options::batch`]) steps them, so the
//! decoder may use another batch size or thread count and still read the same stream.
//!
//! ```
//! use armory::codec::{compress, decompress, Data, Format, Options};
//! use armory::models::{causal_conv, Arm, ModelConfig, Network};
//! use candle_core::{DType, Device};
//!
//! # fn main() -> armory::Result<()> {
//! let net = causal_conv::Config { hidden: 8, kernel: 3, dilations: vec![1, 1], ..Default::default() };
//! let cfg = ModelConfig::sequence(Network::CausalConv(net), 4, 6); // values 0..3, 6 per example
//! let arm = Arm::new(&cfg, 0, DType::F32, &Device::Cpu)?; // a trained model in practice
//! let data = Data { values: vec![0, 1, 2, 3, 2, 1, 3, 3, 0, 0, 1, 2], labels: None, dim: 6, format: Format::Raw };
//! let file = compress(&arm, &data, &Options::default(), &|_| {})?;
//! let back = decompress(&arm, &file, &Options::default(), &|_| {})?;
//! assert_eq!(back.values, data.values);
//! # Ok(())
//! # }
//! ```

pub mod container;
pub mod formats;
pub mod probability;

use std::ops::Range;

use constriction::stream::model::DefaultContiguousCategoricalEntropyModel;
use constriction::stream::queue::{DefaultRangeDecoder, DefaultRangeEncoder};
use constriction::stream::{Decode, Encode};
use rayon::prelude::*;

pub use container::{fingerprint, Header};
pub use formats::Format;

use crate::error::{Error, Result};
use crate::models::{Arithmetic, Arm, Stepper};

/// N examples of D byte values (in the model's order: raster, a colour pixel's R, G, B in turn), with
/// optional labels, and the file format they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    pub values: Vec<u8>, // [N, D]
    pub labels: Option<Vec<u8>>,
    pub dim: usize,
    pub format: Format,
}

impl Data {
    pub fn len(&self) -> usize {
        self.values.len() / self.dim.max(1)
    }
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// How to code: `chunk` examples per stream (written in the file), `batch` examples stepped together (a
/// free choice of each run: it does not change the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub chunk: usize,
    pub batch: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { chunk: 64, batch: 64 }
    }
}

/// Refuses a model the codec cannot run exactly (no stepper, or no exact mode: the RNNs, the RGB pixel
/// mixture).
pub fn check_model(arm: &Arm) -> Result<()> {
    let labels = arm.num_classes().map(|_| [0u32]);
    match arm.stepper_with(1, labels.as_ref().map(|l| &l[..]), Arithmetic::Exact)? {
        Some(_) => Ok(()),
        None => Err(Error::NoExactMode(
            "this model family (it has no cached stepper)".into(),
        )),
    }
}

/// Compresses `data` with `arm` into a `.arm` file's bytes; `progress` hears the examples done, chunk by chunk.
pub fn compress(arm: &Arm, data: &Data, opts: &Options, progress: &(dyn Fn(usize) + Sync)) -> Result<Vec<u8>> {
    check_model(arm)?;
    let (dim, k) = (arm.dim(), arm.num_values());
    if data.dim != dim || !data.values.len().is_multiple_of(dim) || data.is_empty() {
        return Err(Error::Invalid(format!(
            "the data hold {} values, {} per example; the model codes examples of {dim} values",
            data.values.len(),
            data.dim
        )));
    }
    // Pictures of another shape with as many values would be coded with the wrong neighbours (lossless, but
    // as if a 4×16 picture were 8×8).
    if let (Some(model), Some(given)) = (arm.config().image_shape(), data.format.picture_shape()) {
        if model != given {
            let words = crate::data::pictures_in_words;
            return Err(Error::Invalid(format!(
                "the data are {}, the model takes {}",
                words(given),
                words(model)
            )));
        }
    }
    if let Some((i, &v)) = data.values.iter().enumerate().find(|(_, &v)| v as usize >= k) {
        return Err(Error::ValueOutOfRange {
            value: v as i64,
            position: i % dim,
            k,
        });
    }
    let n = data.len();
    let label_classes = label_classes(arm, data.labels.as_deref(), n)?;
    let chunk = opts.chunk.max(1);
    // The header holds these in 32 bits: checked before anything is coded, never cut short in the file.
    for (what, v) in [
        ("examples", n),
        ("examples per chunk", chunk),
        ("values per example", dim),
    ] {
        if v > u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "{what}: {v} is above the container's limit of {}",
                u32::MAX
            )));
        }
    }
    let streams = (0..Header::num_chunks(n, chunk))
        .into_par_iter()
        .map(|c| {
            let r = c * chunk..((c + 1) * chunk).min(n);
            let labels = data.labels.as_ref().map(|l| &l[r.clone()]);
            let words = encode_chunk(
                arm,
                &data.values[r.start * dim..r.end * dim],
                labels,
                label_classes,
                opts.batch,
            )?;
            progress(r.len());
            Ok(words)
        })
        .collect::<Result<Vec<_>>>()?;
    let header = Header {
        fingerprint: fingerprint(arm)?,
        count: n,
        dim,
        num_values: k,
        label_classes,
        chunk,
        format_tag: data.format.tag(),
        format_info: data.format.info(),
        chunk_words: streams.iter().map(|s| s.len()).collect(),
        data_crc: data_crc(&data.values, data.labels.as_deref()),
    };
    let mut out = vec![];
    header.write(&mut out);
    for w in streams.iter().flatten() {
        out.extend_from_slice(&w.to_le_bytes());
    }
    Ok(out)
}

/// Decompresses a `.arm` file's bytes with the model it was compressed with (`opts.chunk` is read from the
/// file; `opts.batch` is free). A corrupt or truncated file, another model, another version: an error.
pub fn decompress(arm: &Arm, bytes: &[u8], opts: &Options, progress: &(dyn Fn(usize) + Sync)) -> Result<Data> {
    let (header, body) = Header::read(bytes)?;
    let found = fingerprint(arm)?;
    if header.fingerprint != found {
        return Err(Error::CodecModelMismatch {
            expected: header.fingerprint,
            found,
        });
    }
    if (header.dim, header.num_values) != (arm.dim(), arm.num_values()) {
        return Err(container::corrupt("the header's sizes do not fit the model"));
    }
    let format = Format::parse(header.format_tag, &header.format_info)?;
    check_model(arm)?;
    let (n, dim, chunk) = (header.count, header.dim, header.chunk);
    let mut starts = vec![body];
    for w in &header.chunk_words {
        starts.push(starts.last().unwrap() + 4 * w);
    }
    let decoded = (0..header.chunk_words.len())
        .into_par_iter()
        .map(|c| {
            let words: Vec<u32> = bytes[starts[c]..starts[c + 1]]
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let count = ((c + 1) * chunk).min(n) - c * chunk;
            let out = decode_chunk(arm, words, count, dim, header.label_classes, opts.batch)?;
            progress(count);
            Ok(out)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut values = Vec::with_capacity(n * dim);
    let mut labels = (header.label_classes > 0).then(|| Vec::with_capacity(n));
    for (v, l) in decoded {
        values.extend(v);
        if let (Some(all), Some(l)) = (&mut labels, l) {
            all.extend(l);
        }
    }
    let crc = data_crc(&values, labels.as_deref());
    if crc != header.data_crc {
        return Err(Error::CodecChecksum {
            stored: header.data_crc,
            found: crc,
        });
    }
    Ok(Data {
        values,
        labels,
        dim,
        format,
    })
}

/// The range labels are coded over: the model's classes for a class-conditional model (which needs them),
/// else 0..max + 1, or 0 without labels.
fn label_classes(arm: &Arm, labels: Option<&[u8]>, n: usize) -> Result<usize> {
    if let Some(l) = labels {
        if l.len() != n {
            return Err(Error::Invalid(format!("{} labels for {n} examples", l.len())));
        }
    }
    match (arm.num_classes(), labels) {
        (Some(c), Some(l)) => match l.iter().find(|&&v| v as usize >= c) {
            Some(v) => Err(Error::Invalid(format!("label {v} is outside 0..{}", c - 1))),
            None => Ok(c),
        },
        (Some(c), None) => Err(Error::Invalid(format!(
            "this model is class-conditional: the data need a label in 0..{} per example",
            c.saturating_sub(1)
        ))),
        (None, Some(l)) => Ok(l.iter().map(|&v| v as usize + 1).max().unwrap_or(1)),
        (None, None) => Ok(0),
    }
}

/// CRC-32 of the values, then the labels.
fn data_crc(values: &[u8], labels: Option<&[u8]>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(values);
    if let Some(l) = labels {
        h.update(l);
    }
    h.finalize()
}

type Model = DefaultContiguousCategoricalEntropyModel;

fn model(freq: &[u32]) -> Result<Model> {
    Model::from_nonzero_fixed_point_probabilities(freq, false)
        .map_err(|()| Error::Internal("frequencies that do not sum to 2^24".into()))
}

/// Consecutive groups of `batch` examples out of `n`, stepped together.
fn groups(n: usize, batch: usize) -> Vec<Range<usize>> {
    let b = batch.max(1);
    (0..n.div_ceil(b)).map(|g| g * b..((g + 1) * b).min(n)).collect()
}

/// One stepper per group, in exact arithmetic (with the groups' labels for a class-conditional model).
fn steppers<'a>(arm: &'a Arm, groups: &[Range<usize>], labels: Option<&[u8]>) -> Result<Vec<Box<dyn Stepper + 'a>>> {
    groups
        .iter()
        .map(|g| {
            let cond: Option<Vec<u32>> = match (arm.num_classes(), labels) {
                (Some(_), Some(l)) => Some(l[g.clone()].iter().map(|&v| v as u32).collect()),
                _ => None,
            };
            arm.stepper_with(g.len(), cond.as_deref(), Arithmetic::Exact)?
                .ok_or_else(|| Error::NoExactMode("this model family (it has no cached stepper)".into()))
        })
        .collect()
}

/// Codes one chunk, `values` `[n, D]`: its labels uniformly, then position by position, example by example.
fn encode_chunk(
    arm: &Arm,
    values: &[u8],
    labels: Option<&[u8]>,
    label_classes: usize,
    batch: usize,
) -> Result<Vec<u32>> {
    let dim = arm.dim();
    let n = values.len() / dim;
    let mut enc = DefaultRangeEncoder::new();
    if let Some(l) = labels {
        let m = model(&probability::uniform(label_classes))?;
        for &v in l {
            enc.encode_symbol(v as usize, &m)
                .map_err(|e| internal(format!("{e:?}")))?;
        }
    }
    let groups = groups(n, batch);
    let mut steppers = steppers(arm, &groups, labels)?;
    for d in 0..dim {
        for (g, st) in groups.iter().zip(&mut steppers) {
            let prev: Option<Vec<u32>> = (d > 0).then(|| g.clone().map(|i| values[i * dim + d - 1] as u32).collect());
            let theta = st.step(prev.as_deref())?;
            for (i, th) in g.clone().zip(&theta) {
                // Weights that overflow f32 arithmetic give NaN θ: coding with them would still round-trip
                // (as uniform frequencies), into a file larger than the data, so it is refused as eval
                // and sample refuse them.
                let th = crate::sample::finite_theta(th, d)?;
                let m = model(&probability::frequencies(arm.likelihood(), th))?;
                enc.encode_symbol(values[i * dim + d] as usize, &m)
                    .map_err(|e| internal(format!("{e:?}")))?;
            }
        }
    }
    enc.into_compressed().map_err(|e| internal(format!("{e:?}")))
}

/// Decodes one chunk of `n` examples: `(values [n, D], labels)`.
fn decode_chunk(
    arm: &Arm,
    words: Vec<u32>,
    n: usize,
    dim: usize,
    label_classes: usize,
    batch: usize,
) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let bad = |_| container::corrupt("a chunk's coded data are invalid");
    let mut dec = DefaultRangeDecoder::from_compressed(words).map_err(|_| container::corrupt("an empty chunk"))?;
    let labels = if label_classes > 0 {
        let m = model(&probability::uniform(label_classes))?;
        let l = (0..n)
            .map(|_| Ok(dec.decode_symbol(&m).map_err(bad)? as u8))
            .collect::<Result<Vec<u8>>>()?;
        Some(l)
    } else {
        None
    };
    let groups = groups(n, batch);
    let mut steppers = steppers(arm, &groups, labels.as_deref())?;
    let mut values = vec![0u8; n * dim];
    for d in 0..dim {
        for (g, st) in groups.iter().zip(&mut steppers) {
            let prev: Option<Vec<u32>> = (d > 0).then(|| g.clone().map(|i| values[i * dim + d - 1] as u32).collect());
            let theta = st.step(prev.as_deref())?;
            for (i, th) in g.clone().zip(&theta) {
                let m = model(&probability::frequencies(arm.likelihood(), th))?;
                values[i * dim + d] = dec.decode_symbol(&m).map_err(bad)? as u8;
            }
        }
    }
    Ok((values, labels))
}

fn internal(msg: String) -> Error {
    Error::Internal(format!("range coding failed: {msg}"))
}
