//! Speed of the seed ARM on this machine, with ratios to PyTorch 2.15 (CPU, 2 threads) measured on the
//! project's reference machine: train step 210 ms, forward b64 49 ms, b1 1.05 ms, naive sampling of 16 850 ms.
//! Then sampling 28×28 images with PixelCNN and the gated PixelCNN: naive against cached.

use std::time::Instant;

use armory::config::RunConfig;
use armory::data::{self, Splits};
use armory::models::{pixelcnn, Arm, InputEncoding, Mode, ModelConfig, Reduction};
use armory::sample::{sample_cached, sample_naive, sample_predictive, Noise};
use armory::train::{Optimizer, OptimizerKind};
use candle_core::{DType, Device};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Timed repetitions per figure (the median is reported).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Which figures: the seed ARM, the 28×28 image samplers, or both.
    #[arg(long, value_enum, default_value_t = Only::All)]
    only: Only,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    All,
    Seed,
    Images,
}

/// Median wall time of `f` in milliseconds, after one warm-up call.
fn median_ms(reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.only != Only::Images {
        seed(a.reps)?;
    }
    if a.only != Only::Seed {
        images(a.reps)?;
    }
    Ok(())
}

/// Naive against cached sampling of 16 binary 28×28 images (binarized MNIST's shape), for the gated PixelCNN
/// of `configs/binarized-mnist.toml` and a PixelCNN of about the same size; random weights (the time does
/// not depend on them).
fn images(reps: usize) -> anyhow::Result<()> {
    let gated = RunConfig::parse(
        include_str!("../../configs/binarized-mnist.toml"),
        std::path::Path::new("configs/binarized-mnist.toml"),
    )?
    .model;
    let pixelcnn = ModelConfig::Pixelcnn(pixelcnn::Config {
        num_values: 2,
        height: 28,
        width: 28,
        hidden: 64,
        first_kernel: 7,
        blocks: 4,
        kernel: 3,
        head_hidden: 64,
        input: InputEncoding::OneHot,
        dropout: 0.0,
        n_mix: None,
        colors: 1,
        colour_mixture: Default::default(),
    });
    println!(
        "\n28×28 binary images, 16 at a time, {} threads",
        rayon::current_num_threads()
    );
    println!("{:<44} {:>10} {:>11} {:>9}", "", "naive ms", "cached ms", "speed-up");
    for (name, cfg) in [
        ("gated PixelCNN (32 ch, 7×7 + 4 layers)", gated),
        ("PixelCNN (64 ch, 7×7 + 4 blocks)", pixelcnn),
    ] {
        let arm = Arm::new(&cfg, 0, DType::F32, &Device::Cpu)?;
        let noise = Noise::new(16, arm.dim(), 0);
        let mut samples = (vec![], vec![]);
        // 784 full passes: one timed run is plenty.
        let naive = median_ms(1, || {
            samples.0 = sample_naive(&arm, &noise, 1.0, None)?;
            Ok(())
        })?;
        let cached = median_ms(reps.div_ceil(4), || {
            samples.1 = sample_cached(&arm, &noise, 1.0, None)?;
            Ok(())
        })?;
        anyhow::ensure!(samples.0 == samples.1, "{name}: cached samples differ from naive ones");
        let p = arm.params().num_params();
        println!(
            "{:<44} {naive:>10.0} {cached:>11.1} {:>8.0}×",
            format!("{name}, {p} params"),
            naive / cached
        );
    }
    println!("(same samples from both: checked; Fast PixelCNN++ reported up to 183×)");
    Ok(())
}

/// The seed ARM's figures.
fn seed(reps: usize) -> anyhow::Result<()> {
    let cfg = RunConfig::seed();
    let arm = Arm::new(&cfg.model, 0, DType::F32, &Device::Cpu)?;
    let splits = Splits::by_position(&data::load("digits")?)?;
    let idx: Vec<usize> = (0..64).collect();
    let x64 = splits.train.batch(&idx, arm.device())?;
    let x1 = splits.train.batch(&[0], arm.device())?;
    let mut opt = Optimizer::new(OptimizerKind::Adamax, 1e-3, arm.params().vars())?;

    let train_step = median_ms(reps, || {
        let loss = arm.loss(&x64, Reduction::Mean, Mode::Train { seed: 0 })?;
        opt.step(&loss.backward()?)?;
        Ok(())
    })?;
    // The same step on one thread, for the speed-up the second core brings.
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let train_step_1t = one.install(|| {
        median_ms(reps.div_ceil(2), || {
            let loss = arm.loss(&x64, Reduction::Mean, Mode::Train { seed: 0 })?;
            opt.step(&loss.backward()?)?;
            Ok(())
        })
    })?;
    let fwd64 = median_ms(reps, || {
        arm.forward(&x64, Mode::Eval)?.to_vec3::<f32>()?;
        Ok(())
    })?;
    let fwd1 = median_ms(reps * 10, || {
        arm.forward(&x1, Mode::Eval)?.to_vec3::<f32>()?;
        Ok(())
    })?;
    let sample16 = median_ms(reps.div_ceil(4), || {
        sample_naive(&arm, &Noise::new(16, 64, 0), 1.0, None)?;
        Ok(())
    })?;

    let cached16 = median_ms(reps, || {
        sample_cached(&arm, &Noise::new(16, 64, 0), 1.0, None)?;
        Ok(())
    })?;
    let mut calls = 0;
    let predictive16 = median_ms(reps.div_ceil(4), || {
        calls = sample_predictive(&arm, &Noise::new(16, 64, 0), 1.0, None)?.1;
        Ok(())
    })?;

    println!(
        "seed ARM (1→256→256→256→17, kernel 7, 64 positions, random weights), {} threads",
        rayon::current_num_threads()
    );
    println!("{:<28} {:>10} {:>12} {:>10}", "", "armory ms", "PyTorch ms", "ratio");
    for (name, ours, torch) in [
        ("train step, batch 64", train_step, 210.0),
        ("forward, batch 64", fwd64, 49.0),
        ("forward, batch 1", fwd1, 1.05),
        ("naive sampling, 16 images", sample16, 850.0),
        ("cached sampling, 16 images", cached16, 850.0),
        ("predictive sampling, 16", predictive16, 850.0),
    ] {
        println!("{name:<28} {ours:>10.3} {torch:>12.2} {:>9.2}×", ours / torch);
    }
    println!("(ratio = armory / PyTorch 2.15 CPU with 2 threads on the reference 2-core machine; < 1 is faster;");
    println!(" the sampling rows all compare with PyTorch's naive sampler)");
    println!(
        "cached sampling is {:.0}× faster than PyTorch's naive sampler, {:.0}× faster than ours; predictive took {calls} ARM calls for 64 positions",
        850.0 / cached16,
        sample16 / cached16
    );
    println!(
        "train step on 1 thread: {train_step_1t:.1} ms, so {} threads run it {:.2}× faster (PyTorch: 1.8×, stock candle: 1.07×)",
        rayon::current_num_threads(),
        train_step_1t / train_step
    );
    Ok(())
}
