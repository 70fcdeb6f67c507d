//! Speed of the seed ARM on this machine, with ratios to PyTorch 2.15 (CPU, 2 threads) measured on the
//! project's reference machine: train step 210 ms, forward b64 49 ms, b1 1.05 ms, naive sampling of 16 850 ms.

use std::time::Instant;

use armory::config::RunConfig;
use armory::data::{self, Splits};
use armory::models::{Arm, Mode, Reduction};
use armory::sample::{sample_cached, sample_naive, sample_predictive, Noise};
use armory::train::{Optimizer, OptimizerKind};
use candle_core::{DType, Device};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Timed repetitions per figure (the median is reported).
    #[arg(long, default_value_t = 20)]
    reps: usize,
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
    let cfg = RunConfig::seed();
    let arm = Arm::new(&cfg.model, 0, DType::F32, &Device::Cpu)?;
    let splits = Splits::by_position(&data::load("digits")?)?;
    let idx: Vec<usize> = (0..64).collect();
    let x64 = splits.train.batch(&idx, arm.device())?;
    let x1 = splits.train.batch(&[0], arm.device())?;
    let mut opt = Optimizer::new(OptimizerKind::Adamax, 1e-3, arm.params().vars())?;

    let train_step = median_ms(a.reps, || {
        let loss = arm.loss(&x64, Reduction::Mean, Mode::Train { seed: 0 })?;
        opt.step(&loss.backward()?)?;
        Ok(())
    })?;
    // The same step on one thread, for the speed-up the second core brings.
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let train_step_1t = one.install(|| {
        median_ms(a.reps.div_ceil(2), || {
            let loss = arm.loss(&x64, Reduction::Mean, Mode::Train { seed: 0 })?;
            opt.step(&loss.backward()?)?;
            Ok(())
        })
    })?;
    let fwd64 = median_ms(a.reps, || {
        arm.forward(&x64, Mode::Eval)?.to_vec3::<f32>()?;
        Ok(())
    })?;
    let fwd1 = median_ms(a.reps * 10, || {
        arm.forward(&x1, Mode::Eval)?.to_vec3::<f32>()?;
        Ok(())
    })?;
    let sample16 = median_ms(a.reps.div_ceil(4), || {
        sample_naive(&arm, &Noise::new(16, 64, 0), 1.0, None)?;
        Ok(())
    })?;

    let cached16 = median_ms(a.reps, || {
        sample_cached(&arm, &Noise::new(16, 64, 0), 1.0, None)?;
        Ok(())
    })?;
    let mut calls = 0;
    let predictive16 = median_ms(a.reps.div_ceil(4), || {
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
