//! The seed chapter's Figure "A B C" for a run: real test images, samples, and the validation curve.

use crate::data::Dataset;
use crate::error::Result;
use crate::models::Arm;
use crate::sample::{sample, Method, Noise};
use crate::viz::{image_grid_png, line_plot_png, Marker, Series};

use super::metrics::EpochRow;
use super::RunDir;

/// Writes `real.png` (the first 64 test images), `samples.png` (64 samples, `seed`, by the
/// cached sampler where the model has one: the same samples as the naive one) and
/// `curve.png` (train and validation NLL per epoch, the best epoch marked) into the run directory.
pub fn draw(run: &RunDir, arm: &Arm, test: &Dataset, rows: &[EpochRow], seed: u64) -> Result<()> {
    draw_data(run, test, arm.num_values(), rows)?;
    let (c, h, w) = test.image_shape;
    let levels = arm.num_values() as u32;
    let noise = Noise::new(64, arm.dim(), seed);
    // A class-conditional model draws the classes in turn, one per column of the grid.
    let labels: Option<Vec<u32>> = arm.num_classes().map(|n| (0..64).map(|i| (i % 8 % n) as u32).collect());
    let method = Method::fastest_exact(arm, labels.as_deref())?;
    let (flat, _) = sample(arm, method, &noise, 1.0, labels.as_deref())?;
    let samples: Vec<Vec<u32>> = flat.chunks(arm.dim()).map(|s| s.to_vec()).collect();
    image_grid_png(&run.file("samples.png"), &samples, h, w, c, levels, 8, 4)
}

/// Writes `real.png` (the first 64 test images, `num_values` levels) and `curve.png` (train and validation
/// figures per epoch, the best epoch marked): the pictures of every run, whatever its model.
pub fn draw_data(run: &RunDir, test: &Dataset, num_values: usize, rows: &[EpochRow]) -> Result<()> {
    let (c, h, w) = test.image_shape;
    let real: Vec<Vec<u32>> = (0..test.len().min(64)).map(|i| test.example(i).to_vec()).collect();
    image_grid_png(&run.file("real.png"), &real, h, w, c, num_values as u32, 8, 4)?;
    if !rows.is_empty() {
        let series = |name: &str, f: fn(&EpochRow) -> f64| Series {
            name: name.into(),
            points: rows.iter().map(|r| (r.epoch as f64, f(r))).collect(),
        };
        let best = rows
            .iter()
            .min_by(|a, b| a.val_nll.total_cmp(&b.val_nll))
            .map(|r| Marker {
                x: r.epoch as f64,
                y: r.val_nll,
                label: format!("best: epoch {}, {:.2} nats", r.epoch, r.val_nll),
            });
        line_plot_png(
            &run.file("curve.png"),
            "Negative log-likelihood per epoch",
            "epoch",
            "nats per example",
            &[series("validation", |r| r.val_nll), series("train", |r| r.train_nll)],
            best.as_ref(),
        )?;
    }
    Ok(())
}
