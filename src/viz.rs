//! Pictures as PNG files: grids of (quantised) images and learning curves.
//!
//! Image grids are drawn pixel by pixel with `image`; line plots use `plotters`
//! with an embedded DejaVu Sans font (assets/fonts/), so no system fonts are needed.
use std::fmt::Display;
use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::error::{Error, Result};

fn plot_err(path: &Path, msg: impl Display) -> Error {
    Error::Plot {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// Draw a grid of images as one PNG at `path`.
///
/// Each image holds values `0..levels` (0 = black, `levels-1` = white) and is `h`×`w`;
/// `channels` is 1 (gray, shape [H, W]) or 3 (RGB, pixel-major [H, W, C]: each pixel's R, G, B in turn).
/// Images go `cols` per row (fewer if there are fewer images), each pixel scaled up
/// `scale`× (nearest), with `scale`-pixel mid-gray gaps between tiles.
/// Errors (`Error::Plot`) on no images, a wrong length, a value ≥ `levels`, bad
/// `channels`, zero sizes, `levels < 2`, or a failed write.
#[allow(clippy::too_many_arguments)]
pub fn image_grid_png(
    path: &Path,
    images: &[Vec<u32>],
    h: usize,
    w: usize,
    channels: usize,
    levels: u32,
    cols: usize,
    scale: u32,
) -> Result<()> {
    let png = image_grid_png_bytes(path, images, h, w, channels, levels, cols, scale)?;
    crate::output::write_atomic(path, &png)
}

/// The PNG file [`image_grid_png`] writes, as bytes; `path` (where it is going) names it in errors.
#[allow(clippy::too_many_arguments)]
pub fn image_grid_png_bytes(
    path: &Path,
    images: &[Vec<u32>],
    h: usize,
    w: usize,
    channels: usize,
    levels: u32,
    cols: usize,
    scale: u32,
) -> Result<Vec<u8>> {
    let err = |m: String| plot_err(path, m);
    if images.is_empty() {
        return Err(err("no images to draw".into()));
    }
    if channels != 1 && channels != 3 {
        return Err(err(format!("channels must be 1 or 3, got {channels}")));
    }
    if h == 0 || w == 0 || cols == 0 || scale == 0 || levels < 2 {
        return Err(err(format!(
            "bad grid shape: h={h} w={w} cols={cols} scale={scale} levels={levels}"
        )));
    }
    for (i, img) in images.iter().enumerate() {
        if img.len() != channels * h * w {
            return Err(err(format!(
                "image {i} has {} values, expected {channels}*{h}*{w}",
                img.len()
            )));
        }
        if let Some(v) = img.iter().find(|&&v| v >= levels) {
            return Err(err(format!("image {i} has value {v} >= levels {levels}")));
        }
    }
    let (s, cols) = (scale as usize, cols.min(images.len()));
    let rows = images.len().div_ceil(cols);
    let side = |n: usize, len: usize| {
        n.saturating_mul(len)
            .saturating_mul(s)
            .saturating_add((n - 1).saturating_mul(s))
    };
    let (width, height) = (side(cols, w), side(rows, h));
    crate::limits::check(
        format!("{}: picture size in pixels ({width}×{height})", path.display()),
        crate::limits::wide(width) * crate::limits::wide(height),
        crate::limits::MAX_PICTURE_PIXELS,
    )?;
    let mut out = image::RgbImage::from_pixel(width as u32, height as u32, image::Rgb([128, 128, 128]));
    let to_u8 = |v: u32| ((v as u64 * 255 + (levels as u64 - 1) / 2) / (levels as u64 - 1)) as u8;
    for (i, img) in images.iter().enumerate() {
        let (x0, y0) = ((i % cols) * (w + 1) * s, (i / cols) * (h + 1) * s);
        for y in 0..h {
            for x in 0..w {
                let c = |ch: usize| to_u8(img[(y * w + x) * channels + ch]);
                let px = if channels == 1 {
                    image::Rgb([c(0); 3])
                } else {
                    image::Rgb([c(0), c(1), c(2)])
                };
                for dy in 0..s {
                    for dx in 0..s {
                        out.put_pixel((x0 + x * s + dx) as u32, (y0 + y * s + dy) as u32, px);
                    }
                }
            }
        }
    }
    png_bytes(&out).map_err(|e| plot_err(path, e))
}

/// An RGB picture encoded as PNG.
fn png_bytes(img: &image::RgbImage) -> image::ImageResult<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)?;
    Ok(buf.into_inner())
}

/// One line series of a learning curve: (x, y) points, drawn in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One point of a plot marked in red, with its legend entry (e.g. "best: epoch 50, 89.40 nats").
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub x: f64,
    pub y: f64,
    pub label: String,
}

const PLOT_W: u32 = 800;
const PLOT_H: u32 = 500;
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// Register the embedded font as plotters' "sans-serif" family (once per process).
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
        // On failure, text drawing later reports "font unavailable" as an Error::Plot.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// Range `lo..hi` covering `vals` with a 5% margin; a zero-width range is padded.
fn padded_range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else if lo != 0.0 {
        lo.abs() * 0.1
    } else {
        1.0
    };
    (lo - pad, hi + pad)
}

/// Draw a line plot (e.g. validation NLL per epoch) as an 800×500 PNG at `path`, with
/// axes, tick labels, axis titles, a title, a legend, and optionally a red marker at
/// `highlight` (e.g. the best epoch) named in the legend by its label. Where every x is a whole
/// number (epochs), the x axis is labelled with whole numbers only. Non-finite points are skipped;
/// series with few points (≤ 50) also get a dot per point, so a single point is visible.
/// Errors (`Error::Plot`) when `series` is empty, no point is finite, or drawing fails.
pub fn line_plot_png(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    highlight: Option<&Marker>,
) -> Result<()> {
    if series.is_empty() {
        return Err(plot_err(path, "no series to plot"));
    }
    let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    let clean: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| s.points.iter().copied().filter(finite).collect())
        .collect();
    let highlight = highlight.filter(|m| finite(&(m.x, m.y)));
    let all: Vec<(f64, f64)> = clean
        .iter()
        .flatten()
        .copied()
        .chain(highlight.map(|m| (m.x, m.y)))
        .collect();
    if all.is_empty() {
        return Err(plot_err(path, "no finite points to plot"));
    }
    let (xr, yr) = (
        padded_range(all.iter().map(|p| p.0)),
        padded_range(all.iter().map(|p| p.1)),
    );
    // Whole-number x values (epochs) get whole-number ticks: at most one label per unit of the range keeps
    // plotters' tick step at 1, 2, 5, 10, …, and a tick that still falls between two numbers goes unlabelled.
    let whole_x = all.iter().all(|p| p.0.fract() == 0.0);
    let x_labels = if whole_x {
        ((xr.1 - xr.0).floor() as usize + 1).min(10)
    } else {
        10
    };
    let whole_number = |x: &f64| match x.fract() == 0.0 {
        true => format!("{x:.0}"),
        false => String::new(),
    };
    register_font();
    let mut buf = vec![255u8; (PLOT_W * PLOT_H * 3) as usize];
    let drawn = (|| -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::with_buffer(&mut buf, (PLOT_W, PLOT_H)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(235, 235, 235))
            .x_labels(x_labels);
        if whole_x {
            mesh.x_label_formatter(&whole_number);
        }
        mesh.draw()?;
        for (i, (s, pts)) in series.iter().zip(&clean).enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
            if pts.len() <= 50 {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            }
        }
        if let Some(m) = highlight {
            let red = RGBColor(214, 39, 40);
            chart
                .draw_series([Circle::new((m.x, m.y), 7, red.stroke_width(3))])?
                .label(m.label.as_str())
                .legend(move |(lx, ly)| Circle::new((lx + 10, ly), 5, red.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    })();
    drawn.map_err(|e| plot_err(path, e))?;
    let img = image::RgbImage::from_raw(PLOT_W, PLOT_H, buf).ok_or_else(|| plot_err(path, "bad pixel buffer"))?;
    let png = png_bytes(&img).map_err(|e| plot_err(path, e))?;
    crate::output::write_atomic(path, &png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_gray_pixels_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        // two 2x3 images, levels 4; cols 2, scale 2 → (2*3*2 + 2) x (2*2)
        let a = vec![0, 3, 1, 2, 0, 3];
        let b = vec![3; 6];
        image_grid_png(&p, &[a, b], 2, 3, 1, 4, 2, 2).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (14, 4));
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(3, 1).0, [255, 255, 255]); // a[0][1] = 3
        assert_eq!(img.get_pixel(4, 0).0, [85, 85, 85]); // a[0][2] = 1 → 255/3
        assert_eq!(img.get_pixel(6, 2).0, [128, 128, 128]); // gap
        assert_eq!(img.get_pixel(13, 3).0, [255, 255, 255]); // b
    }

    #[test]
    fn grid_rgb_and_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rgb.png");
        // 1x1 RGB images; 3 images, 2 per row → 2 rows
        let imgs = vec![vec![1, 0, 0], vec![0, 1, 0], vec![0, 0, 1]];
        image_grid_png(&p, &imgs, 1, 1, 3, 2, 2, 1).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (3, 3));
        assert_eq!(img.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(2, 0).0, [0, 255, 0]);
        assert_eq!(img.get_pixel(0, 2).0, [0, 0, 255]);
        assert_eq!(img.get_pixel(2, 2).0, [128, 128, 128]); // empty cell
                                                            // One 1×2 RGB image, pixel-major: a red pixel, then a blue one.
        image_grid_png(&p, &[vec![1, 0, 0, 0, 0, 1]], 1, 2, 3, 2, 1, 1).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(
            (img.get_pixel(0, 0).0, img.get_pixel(1, 0).0),
            ([255, 0, 0], [0, 0, 255])
        );
    }

    #[test]
    fn grid_bad_input_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.png");
        let is_plot = |r: Result<()>| matches!(r, Err(Error::Plot { ref path, .. }) if path == &p);
        assert!(is_plot(image_grid_png(&p, &[vec![0; 5]], 2, 3, 1, 4, 1, 1))); // wrong length
        assert!(is_plot(image_grid_png(&p, &[vec![4; 6]], 2, 3, 1, 4, 1, 1))); // value >= levels
        assert!(is_plot(image_grid_png(&p, &[], 2, 3, 1, 4, 1, 1))); // empty
        assert!(is_plot(image_grid_png(&p, &[vec![0; 12]], 2, 3, 2, 4, 1, 1))); // channels
        assert!(!p.exists());
    }

    fn plot_colors(p: &Path) -> usize {
        let img = image::open(p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (PLOT_W, PLOT_H));
        let mut px: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        px.sort_unstable();
        px.dedup();
        px.len()
    }

    #[test]
    fn line_plot_draws() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("curve.png");
        let train = Series {
            name: "train".into(),
            points: (0..10).map(|e| (e as f64, 3.0 / (1.0 + e as f64))).collect(),
        };
        let val = Series {
            name: "valid".into(),
            points: vec![(0.0, 3.1), (1.0, f64::NAN), (2.0, 1.4), (3.0, 1.2)],
        };
        let best = Marker {
            x: 3.0,
            y: 1.2,
            label: "best: epoch 3, 1.20 nats".into(),
        };
        line_plot_png(&p, "NLL", "epoch", "nats/dim", &[train, val], Some(&best)).unwrap();
        assert!(plot_colors(&p) > 10);
    }

    #[test]
    fn line_plot_edge_cases() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("one.png");
        let one = Series {
            name: "one".into(),
            points: vec![(1.0, 2.0)],
        };
        line_plot_png(&p, "single", "x", "y", &[one], None).unwrap();
        assert!(plot_colors(&p) > 2);
        let flat = Series {
            name: "flat".into(),
            points: vec![(0.0, 0.0), (1.0, 0.0), (2.0, f64::INFINITY)],
        };
        let nan = Marker {
            x: f64::NAN,
            y: 0.0,
            label: "nowhere".into(),
        };
        line_plot_png(&p, "flat", "x", "y", &[flat], Some(&nan)).unwrap();
        assert!(matches!(
            line_plot_png(&p, "t", "x", "y", &[], None),
            Err(Error::Plot { .. })
        ));
        let nan = Series {
            name: "nan".into(),
            points: vec![(0.0, f64::NAN)],
        };
        assert!(matches!(
            line_plot_png(&p, "t", "x", "y", &[nan], None),
            Err(Error::Plot { .. })
        ));
    }
}
