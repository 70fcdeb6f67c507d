//! The files the codec reads and rebuilds: what the container keeps besides the values, so that the file
//! comes back as it was.
//!
//! - digits CSV (64 values and a label per line): rebuilt as `v,v,…,v,label\n` lines, which is byte-identical
//!   for files written that way (the UCI/scikit-learn file is); other spacing comes back normalised, and a
//!   gzipped file comes back inflated;
//! - IDX images (`…-idx3-ubyte`): the header bytes are kept, so the file is byte-identical (inflated if it
//!   was gzipped);
//! - `.npy` of unsigned bytes: the header bytes are kept, byte-identical (inflated if gzipped);
//! - a folder of PNGs: names and sizes are kept; the pictures come back pixel-identical (PNG's own
//!   compression choices are not kept).

use std::path::Path;

use image::{ExtendedColorType, ImageFormat};

use super::container::{corrupt, Reader};
use super::Data;
use crate::data::{digits, idx, npy, png_folder, transform};
use crate::error::{Error, Result};
use crate::limits;

/// Where the values came from, and what rebuilds that file around them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// Values only (the library's own use); written back as raw bytes.
    Raw,
    /// The digits CSV: 64 values and a label per line.
    DigitsCsv,
    /// An IDX images file: its header bytes, then the values.
    Idx { header: Vec<u8> },
    /// An `.npy` file of unsigned bytes: its header bytes, then the values (`[N, H, W, C]`: the model's order).
    Npy { header: Vec<u8> },
    /// A folder of 8-bit gray (1 colour) or RGB (3) PNGs of one size, in name order.
    PngFolder {
        names: Vec<String>,
        colors: u8,
        height: u32,
        width: u32,
    },
}

impl Format {
    pub fn tag(&self) -> u8 {
        match self {
            Format::Raw => 0,
            Format::DigitsCsv => 1,
            Format::Idx { .. } => 2,
            Format::Npy { .. } => 3,
            Format::PngFolder { .. } => PNG_FOLDER_TAG,
        }
    }

    /// The pictures' shape (colours, height, width) the format says, where it says one: a PNG folder's, an
    /// IDX or `.npy` header's. `None` for a digits CSV and raw values (rows of values, no shape).
    pub fn picture_shape(&self) -> Option<(usize, usize, usize)> {
        let at = Path::new("the header");
        match self {
            Format::PngFolder {
                colors, height, width, ..
            } => Some((*colors as usize, *height as usize, *width as usize)),
            Format::Idx { header } => idx::images_header_shape(header, at).ok().map(|s| s.2),
            Format::Npy { header } => npy::header_shape(header, at).ok().map(|s| s.2),
            Format::Raw | Format::DigitsCsv => None,
        }
    }

    /// What the container keeps for this format.
    pub fn info(&self) -> Vec<u8> {
        match self {
            Format::Raw | Format::DigitsCsv => vec![],
            Format::Idx { header } | Format::Npy { header } => header.clone(),
            Format::PngFolder {
                names,
                colors,
                height,
                width,
            } => {
                let mut b = vec![*colors];
                b.extend_from_slice(&height.to_le_bytes());
                b.extend_from_slice(&width.to_le_bytes());
                b.extend_from_slice(&(names.len() as u32).to_le_bytes());
                for n in names {
                    b.extend_from_slice(&(n.len() as u32).to_le_bytes());
                    b.extend_from_slice(n.as_bytes());
                }
                b
            }
        }
    }

    /// The inverse of [`Format::tag`] and [`Format::info`]; anything malformed is a corrupt file.
    pub fn parse(tag: u8, info: &[u8]) -> Result<Format> {
        Ok(match tag {
            0 => Format::Raw,
            1 => Format::DigitsCsv,
            2 => Format::Idx { header: info.to_vec() },
            3 => Format::Npy { header: info.to_vec() },
            4 => {
                let mut r = Reader { bytes: info, at: 0 };
                let colors = r.u8()?;
                let (height, width) = (r.u32()?, r.u32()?);
                let count = r.u32()? as usize;
                if count > info.len() {
                    return Err(corrupt("the PNG names are truncated"));
                }
                let names = (0..count)
                    .map(|_| {
                        let len = r.u32()? as usize;
                        String::from_utf8(r.take(len)?.to_vec()).map_err(|_| corrupt("a PNG name is not UTF-8"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                check_png_names(&names)?;
                Format::PngFolder {
                    names,
                    colors,
                    height,
                    width,
                }
            }
            t => return Err(corrupt(format!("unknown data format {t}"))),
        })
    }

    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Raw => "raw values",
            Format::DigitsCsv => "digits CSV",
            Format::Idx { .. } => "IDX images",
            Format::Npy { .. } => "npy array",
            Format::PngFolder { .. } => "PNG folder",
        }
    }
}

/// Reads a file or folder the codec can compress, found by its content: a folder of PNGs, an IDX images
/// file, an `.npy` array, or a digits CSV (each file gzipped or plain). Also returns a note when the rebuilt
/// file will differ in bytes (gzip inflated, a CSV not written `v,v,…\n`); the values never differ.
pub fn read(path: &Path) -> Result<(Data, Option<String>)> {
    if path.is_dir() {
        return read_png_folder(path).map(|d| (d, None));
    }
    // Any file the codec reads is data, inflated or not: at most MAX_DATA_BYTES, checked before it is read
    // or while it inflates (a small .gz that inflates to gigabytes is refused, not inflated).
    let size = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    let limit = |n: u128| limits::check(format!("{}: bytes of data", path.display()), n, limits::MAX_DATA_BYTES);
    limit(u128::from(size))?;
    let (bytes, gzipped) = idx::read_at_most(path, limits::MAX_DATA_BYTES as u64 + 1)?;
    limit(limits::wide(bytes.len()))?;
    let bytes = bytes.into_vec();
    let mut note = gzipped.then(|| "the input is gzipped; decompression gives the inflated file".to_string());
    let data = if bytes.starts_with(&idx::IMAGES_MAGIC.to_be_bytes()) {
        let (dims, values) = idx::parse(&bytes, idx::IMAGES_MAGIC, path)?;
        Data {
            values: values.to_vec(),
            labels: None,
            dim: dims[1] * dims[2],
            format: Format::Idx {
                header: bytes[..bytes.len() - values.len()].to_vec(),
            },
        }
    } else if bytes.starts_with(b"\x93NUMPY") {
        let ds = npy::parse(&bytes, path)?;
        let start = bytes.len() - ds.values.len();
        Data {
            values: bytes[start..].to_vec(), // [N, H, W, C] as stored: pixel-major
            labels: None,
            dim: ds.dim,
            format: Format::Npy {
                header: bytes[..start].to_vec(),
            },
        }
    } else {
        let ds = digits::parse(&bytes, path)?;
        let data = Data {
            values: ds.values.iter().map(|&v| v as u8).collect(),
            labels: ds.labels.map(|l| l.iter().map(|&v| v as u8).collect()),
            dim: ds.dim,
            format: Format::DigitsCsv,
        };
        if csv_text(&data) != bytes {
            note = Some(
                "the CSV is not written as `v,v,…,v,label` lines; decompression gives the same values and \
                 labels in that form"
                    .into(),
            );
        }
        data
    };
    Ok((data, note))
}

fn read_png_folder(dir: &Path) -> Result<Data> {
    let ds = transform::to_pixel_major(png_folder::png_folder(dir)?);
    let names = png_names(dir)?;
    if names.len() != ds.len() {
        return Err(Error::data(dir, "the folder changed while it was read"));
    }
    let (c, h, w) = ds.image_shape;
    Ok(Data {
        values: ds.values.iter().map(|&v| v as u8).collect(),
        labels: None,
        dim: ds.dim,
        format: Format::PngFolder {
            names,
            colors: c as u8,
            height: h as u32,
            width: w as u32,
        },
    })
}

/// The `.png` names in `dir`, in the order `png_folder` reads them (by name).
fn png_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = vec![];
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_file() && path.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")) {
            let name = path.file_name().and_then(|n| n.to_str());
            let name = name.ok_or_else(|| Error::data(&path, "the file name is not UTF-8"))?;
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// The digits CSV text of `data`: one line per example, its values then its label.
fn csv_text(data: &Data) -> Vec<u8> {
    let mut s = String::with_capacity(data.values.len() * 3);
    for (i, ex) in data.values.chunks(data.dim).enumerate() {
        for v in ex {
            s.push_str(&v.to_string());
            s.push(',');
        }
        let label = data.labels.as_ref().and_then(|l| l.get(i)).copied().unwrap_or(0);
        s.push_str(&label.to_string());
        s.push('\n');
    }
    s.into_bytes()
}

/// The container's tag of a PNG folder ([`Format::tag`]).
pub const PNG_FOLDER_TAG: u8 = 4;

/// Writes `data` back as its format to `out` (a file, or a folder for PNGs), through a temporary file or
/// folder renamed into place. An existing `out` is replaced only with `force`, and even then only by its own
/// kind: a regular file by a file, a folder holding nothing but PNGs by a folder — never a device, a pipe or
/// another folder (checked before anything is written). Every file is flushed to the device before the rename;
/// on any failure the temporary file or folder is removed and `out` is untouched.
pub fn write(data: &Data, out: &Path, force: bool) -> Result<()> {
    let pngs = matches!(data.format, Format::PngFolder { .. });
    check_replaceable(out, pngs, force)?;
    let written = match &data.format {
        Format::PngFolder {
            names,
            colors,
            height,
            width,
        } => crate::output::fresh_temp_dir(out).and_then(|tmp| {
            write_pngs(data, names, *colors, *height, *width, &tmp, out)
                .map(|()| tmp.clone())
                .inspect_err(|_| {
                    let _ = std::fs::remove_dir_all(&tmp);
                })
        }),
        format => {
            let bytes = match format {
                Format::Raw => data.values.clone(),
                Format::DigitsCsv => csv_text(data),
                Format::Idx { header } | Format::Npy { header } => {
                    check_header(format, header, data)?;
                    [&header[..], &data.values[..]].concat()
                }
                Format::PngFolder { .. } => unreachable!(),
            };
            crate::output::write_temp(out, &bytes)
        }
    };
    let tmp = written?;
    let replaced = (|| {
        // Asked again: what is at `out` may have changed while the data was written (a folder made there
        // meanwhile is not swapped away without --force and the PNG-only check).
        check_replaceable(out, pngs, force)?;
        if !(pngs && out.is_dir()) {
            return std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e));
        }
        // A folder cannot be renamed over another: the old one steps aside (onto an empty folder made for
        // it, which a rename may replace), the new one takes its name, and only then is the old one removed
        // (put back if the new one could not take its place).
        let old = crate::output::fresh_temp_dir(out)?;
        std::fs::rename(out, &old).map_err(|e| {
            let _ = std::fs::remove_dir(&old);
            Error::io(out, e)
        })?;
        if let Err(e) = std::fs::rename(&tmp, out) {
            if std::fs::rename(&old, out).is_err() {
                return Err(Error::io(
                    out,
                    std::io::Error::other(format!("{e}; the folder that was there is kept as {}", old.display())),
                ));
            }
            return Err(Error::io(out, e));
        }
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    })();
    if replaced.is_err() {
        let _ = if pngs {
            std::fs::remove_dir_all(&tmp)
        } else {
            std::fs::remove_file(&tmp)
        };
    }
    replaced
}

/// Whether `out` may be written: absent, or with `force` a regular file (for a file) or a folder holding
/// nothing but PNG files (for PNGs). A dangling symbolic link counts as existing.
pub fn check_replaceable(out: &Path, pngs: bool, force: bool) -> Result<()> {
    if !(out.exists() || out.is_symlink()) {
        return Ok(());
    }
    let kind = if pngs { "a folder of PNGs" } else { "a regular file" };
    if out.is_symlink() {
        return Err(Error::data(out, crate::output::link_refusal(out, kind)));
    }
    if !force {
        return Err(Error::data(out, "already exists (add --force to replace it)"));
    }
    if pngs && out.is_dir() {
        let only_pngs = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.all(|e| {
            e.is_ok_and(|e| {
                e.file_type().is_ok_and(|t| t.is_file())
                    && e.path().extension().is_some_and(|x| x.eq_ignore_ascii_case("png"))
            })
        });
        if !only_pngs {
            return Err(Error::data(
                out,
                "is a folder holding other files than PNGs; not replaced",
            ));
        }
        return Ok(());
    }
    if !pngs && out.is_file() {
        return Ok(());
    }
    Err(Error::data(
        out,
        format!("exists and is not {kind}; not replaced, even with --force"),
    ))
}

/// A kept IDX or `.npy` header must announce the data decoded with it: a forged or damaged container whose
/// header disagrees would otherwise rebuild a file that no reader accepts.
fn check_header(format: &Format, header: &[u8], data: &Data) -> Result<()> {
    let at = Path::new("the kept header");
    let announced = match format {
        Format::Idx { .. } => idx::images_header_shape(header, at),
        _ => npy::header_shape(header, at),
    }
    .map_err(|e| corrupt(format!("the {} header does not parse: {e}", format.name())))?;
    if (announced.0, announced.1) != (data.len(), data.dim) {
        return Err(corrupt(format!(
            "the {} header announces {} examples of {} values, the data are {} of {}",
            format.name(),
            announced.0,
            announced.1,
            data.len(),
            data.dim
        )));
    }
    Ok(())
}

/// The names a container gives its PNGs must be what a folder of PNGs holds: plain file names (one path
/// component: a forged `../x.png` or `/x.png` would be written outside the folder), ending in `.png`, each
/// once.
fn check_png_names(names: &[String]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains(['/', '\\', '\0'])
            && Path::new(name)
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("png"));
        if !plain {
            return Err(corrupt(format!("a PNG is named {name:?}, not a plain .png file name")));
        }
        if !seen.insert(name.as_str()) {
            return Err(corrupt(format!("two PNGs are named {name:?}")));
        }
    }
    Ok(())
}

/// The PNGs into `dir` (the temporary folder); an error names them in `out`, the folder asked for.
fn write_pngs(
    data: &Data,
    names: &[String],
    colors: u8,
    height: u32,
    width: u32,
    dir: &Path,
    out: &Path,
) -> Result<()> {
    let ct = match colors {
        1 => ExtendedColorType::L8,
        3 => ExtendedColorType::Rgb8,
        c => return Err(corrupt(format!("PNGs of {c} colours"))),
    };
    if names.len() != data.len() || (colors as usize * height as usize * width as usize) != data.dim {
        return Err(corrupt("the PNG names or sizes do not fit the data"));
    }
    check_png_names(names)?;
    for (name, ex) in names.iter().zip(data.values.chunks(data.dim)) {
        // Encoded in memory, then written and flushed as every other output: a full device is an error here,
        // not an empty PNG (the encoder's own file writer loses the error of its last flush).
        let mut png = Vec::new();
        image::write_buffer_with_format(
            &mut std::io::Cursor::new(&mut png),
            ex,
            width,
            height,
            ct,
            ImageFormat::Png,
        )
        .map_err(|e| Error::Plot {
            path: out.join(name),
            msg: e.to_string(),
        })?;
        crate::output::write_synced(&dir.join(name), &out.join(name), &png)?;
    }
    Ok(())
}
