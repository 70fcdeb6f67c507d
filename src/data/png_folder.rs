//! A folder of PNG pictures, all of one size and one colour type — 8-bit gray (`image_shape = (1, H, W)`) or
//! 8-bit RGB (`(3, H, W)`) — as an unlabelled dataset with values 0..255. The files (`*.png`, any case) are
//! taken in the order of their names. Each example is laid out channel-major, `[C, H, W]`: the whole red plane
//! in raster order, then green, then blue.

use std::path::{Path, PathBuf};

use image::{ColorType, DynamicImage, ImageFormat};

use super::Dataset;
use crate::error::{Error, Result};
use crate::limits;

/// The `.png` files of `dir`, sorted by name.
fn png_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_file() && path.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")) {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// A picture's values channel-major, `[C, H, W]`, and its shape; only 8-bit gray and RGB pass.
fn channel_major(img: DynamicImage, path: &Path) -> Result<(Vec<u32>, (usize, usize, usize))> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    match img {
        DynamicImage::ImageLuma8(buf) => Ok((buf.into_raw().into_iter().map(u32::from).collect(), (1, h, w))),
        DynamicImage::ImageRgb8(buf) => {
            let raw = buf.into_raw();
            let mut v = Vec::with_capacity(raw.len());
            for c in 0..3 {
                v.extend(raw.iter().skip(c).step_by(3).map(|&b| b as u32));
            }
            Ok((v, (3, h, w)))
        }
        other => Err(Error::data(
            path,
            format!(
                "{} pictures are not supported; only 8-bit gray or 8-bit RGB pictures are",
                colour_words(other.color())
            ),
        )),
    }
}

/// Decodes one PNG, its size checked against [`limits::MAX_SIDE`] (and the decoder's memory bounded) before
/// the pixels are allocated: a small file may claim a huge picture.
fn decode(path: &Path) -> Result<DynamicImage> {
    let bytes = limits::read_file(path, limits::MAX_DATA_BYTES, "file size in bytes")?;
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), ImageFormat::Png);
    let mut bounds = image::Limits::default();
    bounds.max_image_width = Some(limits::MAX_SIDE as u32);
    bounds.max_image_height = Some(limits::MAX_SIDE as u32);
    bounds.max_alloc = Some(1 << 28);
    reader.limits(bounds);
    reader.decode().map_err(|e| {
        Error::data(
            path,
            format!("not a readable PNG picture (corrupt, truncated or too large?): {e}"),
        )
    })
}

/// The colour type in words: "8-bit gray", "8-bit RGB", "16-bit gray with alpha", ….
fn colour_words(t: ColorType) -> String {
    let kind = match (t.has_color(), t.has_alpha()) {
        (false, false) => "gray",
        (false, true) => "gray with alpha",
        (true, false) => "RGB",
        (true, true) => "RGBA",
    };
    let bits = t.bits_per_pixel() / t.channel_count() as u16;
    format!("{bits}-bit {kind}")
}

/// The colour type of a picture with `c` channels (1 or 3) after loading, in words.
fn color_type_of(c: usize) -> String {
    colour_words(if c == 1 { ColorType::L8 } else { ColorType::Rgb8 })
}

/// Every `.png` in `dir` (sorted by name) as one example; they must all share the first one's size and colour
/// type.
pub fn png_folder(dir: &Path) -> Result<Dataset> {
    let files = png_files(dir)?;
    let Some(first) = files.first() else {
        return Err(Error::data(dir, "no .png files in this directory"));
    };
    let mut values = Vec::new();
    let mut shape = (0, 0, 0);
    for path in &files {
        let img = decode(path)?;
        let (v, s) = channel_major(img, path)?;
        if path == first {
            shape = s;
        } else if s != shape {
            return Err(Error::data(
                path,
                format!(
                    "{}×{} {} picture, but {} is {}×{} {}; all pictures must share one size and colour type",
                    s.2,
                    s.1,
                    color_type_of(s.0),
                    first.display(),
                    shape.2,
                    shape.1,
                    color_type_of(shape.0)
                ),
            ));
        }
        limits::check(
            format!("{}: values in the folder so far", path.display()),
            limits::wide(values.len() + v.len()),
            limits::MAX_DATA_BYTES,
        )?;
        values.extend(v);
    }
    let dim = shape.0 * shape.1 * shape.2;
    if dim == 0 {
        return Err(Error::data(first, "an empty (0-pixel) picture"));
    }
    Ok(Dataset {
        values,
        labels: None,
        dim,
        num_values: 256,
        image_shape: shape,
    })
}

#[cfg(test)]
mod tests {
    use image::ExtendedColorType;

    use super::*;

    fn save(path: &Path, raw: &[u8], w: u32, h: u32, ct: ExtendedColorType) {
        image::save_buffer_with_format(path, raw, w, h, ct, ImageFormat::Png).unwrap();
    }

    #[test]
    fn png_folder_reads_gray_pictures_in_name_order() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        // 3 wide, 2 high
        let a: Vec<u8> = vec![0, 1, 2, 3, 4, 255];
        let b: Vec<u8> = vec![9, 8, 7, 6, 5, 4];
        save(&d.join("b.png"), &b, 3, 2, ExtendedColorType::L8);
        save(&d.join("a.PNG"), &a, 3, 2, ExtendedColorType::L8);
        std::fs::write(d.join("notes.txt"), "not a picture").unwrap();
        let ds = png_folder(d)?;
        assert_eq!(
            (ds.len(), ds.dim, ds.num_values, ds.image_shape),
            (2, 6, 256, (1, 2, 3))
        );
        assert_eq!(ds.example(0), &[0, 1, 2, 3, 4, 255]);
        assert_eq!(ds.example(1), &[9, 8, 7, 6, 5, 4]);
        assert!(ds.labels.is_none());
        Ok(())
    }

    #[test]
    fn png_folder_makes_rgb_pictures_channel_major() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        // 2 wide, 1 high: pixels (10, 20, 30) and (11, 21, 31)
        save(
            &tmp.path().join("x.png"),
            &[10, 20, 30, 11, 21, 31],
            2,
            1,
            ExtendedColorType::Rgb8,
        );
        let ds = png_folder(tmp.path())?;
        assert_eq!(ds.image_shape, (3, 1, 2));
        assert_eq!(ds.values, vec![10, 11, 20, 21, 30, 31]);
        Ok(())
    }

    #[test]
    fn bad_png_folders_name_the_file_at_fault() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let e = png_folder(d).unwrap_err().to_string();
        assert!(e.contains("no .png files"), "{e}");
        save(&d.join("0.png"), &[1; 6], 3, 2, ExtendedColorType::L8);
        save(&d.join("1.png"), &[1; 6], 2, 3, ExtendedColorType::L8);
        let e = png_folder(d).unwrap_err().to_string();
        assert!(
            e.contains("1.png") && e.contains("2×3 8-bit gray picture") && e.contains("3×2 8-bit gray"),
            "{e}"
        );
        save(&d.join("1.png"), &[1; 18], 3, 2, ExtendedColorType::Rgb8);
        let e = png_folder(d).unwrap_err().to_string();
        assert!(
            e.contains("1.png") && e.contains("8-bit RGB picture") && e.contains("3×2 8-bit gray"),
            "{e}"
        );
        save(&d.join("1.png"), &[1; 24], 3, 2, ExtendedColorType::Rgba8);
        let e = png_folder(d).unwrap_err().to_string();
        assert!(
            e.contains("1.png") && e.contains("8-bit RGBA pictures are not supported"),
            "{e}"
        );
        let good = std::fs::read(d.join("0.png")).unwrap();
        std::fs::write(d.join("1.png"), &good[..good.len() / 2]).unwrap();
        let e = png_folder(d).unwrap_err().to_string();
        assert!(e.contains("1.png") && e.contains("not a readable PNG"), "{e}");
        let e = png_folder(&d.join("nope")).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
