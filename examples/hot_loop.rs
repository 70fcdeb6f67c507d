//! One seed-net workload in a loop, for `perf record`: `cargo run --release --example hot_loop -- WHAT N`
//! with WHAT one of train, fwd64, fwd1, naive (16 images),
//! gated (a train step of `--model gated-pixelcnn` at batch 64), gated8b4 (the same with 8 layers at batch 4),
//! gatedL<N> (at batch 64 with N gated layers), gatedfwd (its forward pass at batch 64, evaluation),
//! fwd<N> / train<N> (the seed net's forward pass / train step at batch N). EACH=1 prints every iteration's
//! time (ms) to stderr: the VM's slow phases show as runs of slower iterations, often switching mid-run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use armory::config::RunConfig;
use armory::models::{Arm, Mode, Reduction};
use armory::sample::{sample_naive, Noise};
use armory::train::{Optimizer, OptimizerKind};
use candle_core::{DType, Device, Tensor};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    // As the binary does (src/main.rs): keep freed memory rather than hand it back to the OS.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    // THREADS=n runs on n worker threads (default: every core), kept awake between kernels as the CLI keeps
    // them (`armory::keeping_workers_awake`); NOKEEP=1 leaves them to rayon's own sleeping.
    let threads = std::env::var("THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    if std::env::var_os("NOKEEP").is_some() {
        armory::with_threads(threads, run)?
    } else {
        armory::with_threads(threads, || armory::keeping_workers_awake(run))? // as the CLI runs
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map_or("train", |s| s.as_str()).to_string();
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let cfg = if what == "gated8b4" {
        let toml = include_str!("../configs/gated-pixelcnn.toml").replace("layers = 5", "layers = 8");
        RunConfig::parse(&toml, std::path::Path::new("gated-pixelcnn, 8 layers"))?
    } else if let Some(l) = what.strip_prefix("gatedL") {
        let toml = include_str!("../configs/gated-pixelcnn.toml").replace("layers = 5", &format!("layers = {l}"));
        RunConfig::parse(&toml, std::path::Path::new("gated-pixelcnn, L layers"))?
    } else if what.starts_with("gated") {
        RunConfig::named("gated-pixelcnn")?
    } else {
        RunConfig::seed()
    };
    let arm = Arm::new(&cfg.model, 0, DType::F32, &Device::Cpu)?;
    let splits = cfg.data.load()?;
    let x64 = splits.train.batch(&(0..64).collect::<Vec<_>>(), arm.device())?;
    let x1 = splits.train.batch(&[0], arm.device())?;
    let x4 = splits.train.batch(&[0, 1, 2, 3], arm.device())?;
    // `fwd<N>` / `train<N>`: the seed net at batch N.
    let batch = |w: &str, prefix: &str| -> anyhow::Result<Tensor> {
        let b: usize = w[prefix.len()..].parse()?;
        Ok(splits.train.batch(&(0..b).collect::<Vec<_>>(), arm.device())?)
    };
    let mut opt = Optimizer::new(OptimizerKind::Adamax, 1e-3, arm.params().vars())?;
    let mut times = vec![];
    for _ in 0..n {
        let t = Instant::now();
        match what.as_str() {
            "gatedfwd" => drop(arm.forward(&x64, Mode::Eval)?.to_vec3::<f32>()?),
            w if w == "train" || w.starts_with("gated") && w != "gated8b4" => {
                let loss = arm.loss(&x64, Reduction::Mean, Mode::Train { seed: 0 })?;
                opt.step(&loss.backward()?)?;
            }
            "gated8b4" => {
                let loss = arm.loss(&x4, Reduction::Mean, Mode::Train { seed: 0 })?;
                opt.step(&loss.backward()?)?;
            }
            "fwd64" => drop(arm.forward(&x64, Mode::Eval)?.to_vec3::<f32>()?),
            "fwd1" => drop(arm.forward(&x1, Mode::Eval)?.to_vec3::<f32>()?),
            w if w.starts_with("fwd") => drop(arm.forward(&batch(w, "fwd")?, Mode::Eval)?.to_vec3::<f32>()?),
            w if w.starts_with("train") => {
                let loss = arm.loss(&batch(w, "train")?, Reduction::Mean, Mode::Train { seed: 0 })?;
                opt.step(&loss.backward()?)?;
            }
            "naive" => drop(sample_naive(&arm, &Noise::new(16, 64, 0), 1.0, None)?),
            other => anyhow::bail!("unknown workload {other}"),
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if std::env::var_os("EACH").is_some() {
            eprint!("{:.1} ", times.last().unwrap());
        }
    }
    times.sort_by(f64::total_cmp);
    println!("{what}: median {:.3} ms, min {:.3} ms over {n}", times[n / 2], times[0]);
    Ok(())
}
