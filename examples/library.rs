//! armory as a library, in one program to copy: a model from a config, a few epochs on the embedded digits,
//! the test NLL in nats and bits per dimension, and samples from the cached sampler written as a PNG.
//!
//! `cargo run --release --example library` (about half a minute) writes runs/library/: the checkpoints,
//! metrics.csv, config.toml and samples.png. It is an ordinary run directory, so the command line reads it
//! too: `armory eval --run runs/library`, `armory sample --run runs/library`.

use std::path::Path;

use armory::config::RunConfig;
use armory::models::Arm;
use armory::sample::{sample_cached, Noise};
use armory::train::{self, Controls, RunDir};
use armory::viz::image_grid_png;
use candle_core::{DType, Device};

fn main() -> anyhow::Result<()> {
    // The kernels run on one rayon pool, as in the command line (0: a thread per core), its workers kept
    // awake between kernels as the command line keeps them.
    armory::with_threads(0, || armory::keeping_workers_awake(run))?
}

fn run() -> anyhow::Result<()> {
    // The recipe: a shipped config (the seed ARM, four causal convolutions over the 64 pixels of an 8×8
    // digit), with fewer epochs. `RunConfig::from_file` reads your own; every field can be set like this.
    let mut cfg = RunConfig::named("seed-arm")?;
    cfg.train.max_epochs = 5;

    // The data: the embedded digits (values 0..16), split by position into 1000 / 350 / 447 images.
    let splits = cfg.data.load()?;
    let (channels, height, width) = splits.test.image_shape;

    // The model, its parameters drawn from the recipe's seed.
    let arm = Arm::new(&cfg.model, cfg.train.seed, DType::F32, &Device::Cpu)?;
    println!(
        "{}: {} parameters, receptive field {} of the {} earlier positions the last one has",
        cfg.model.distribution(),
        arm.params().num_params(),
        arm.receptive_field(),
        arm.dim() - 1
    );

    // Training writes checkpoints and metrics.csv into a run directory (held by a lock while it runs) and
    // leaves `arm` holding the weights of the epoch with the best validation NLL.
    let run = RunDir::create(Path::new("runs/library"))?;
    let _lock = run.lock()?;
    run.clear()?;
    run.write_config(&cfg)?;
    let summary = train::train(&arm, &splits, &cfg.train, &run, false, &Controls::default())?;
    println!(
        "{} after {} epochs (best: epoch {}, {:.2} nats on the validation set)",
        summary.outcome, summary.epochs, summary.best_epoch, summary.best_val_nll
    );

    // Scoring: −log p(x) over the test set, in nats per image and in bits per dimension.
    let test = train::evaluate(&arm, &splits.test, 256)?;
    println!(
        "test NLL: {:.2} nats per image, {:.4} bits per dimension ({} images)",
        test.nll, test.bpd, test.examples
    );

    // Sampling: 16 digits from fixed noise. The cached sampler computes one column per position and draws
    // exactly what the naive sampler (a full pass per position) draws from the same noise.
    let noise = Noise::new(16, arm.dim(), 0);
    let samples = sample_cached(&arm, &noise, 1.0, None)?; // [16 × 64], raster order
    let images: Vec<Vec<u32>> = samples.chunks(arm.dim()).map(<[u32]>::to_vec).collect();
    let png = run.file("samples.png");
    let levels = arm.num_values() as u32;
    image_grid_png(&png, &images, height, width, channels, levels, 8, 4)?; // 8 per row, pixels 4× larger
    println!("16 samples → {}", png.display());
    Ok(())
}
