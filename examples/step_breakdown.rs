//! Where a seed-ARM train step spends its time: `cargo run --release --example step_breakdown`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use armory::config::RunConfig;
use armory::data::{self, Splits};
use armory::models::{Arm, Mode, Reduction};
use armory::train::{Optimizer, OptimizerKind};
use candle_core::{DType, Device};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let arm = Arm::new(&RunConfig::seed().model, 0, DType::F32, &Device::Cpu)?;
    let splits = Splits::by_position(&data::load("digits")?)?;
    let x = splits.train.batch(&(0..64).collect::<Vec<_>>(), arm.device())?;
    let mut opt = Optimizer::new(OptimizerKind::Adamax, 1e-3, arm.params().vars())?;
    let (mut f, mut b, mut o) = (vec![], vec![], vec![]);
    for _ in 0..30 {
        let t = Instant::now();
        let loss = arm.loss(&x, Reduction::Mean, Mode::Train { seed: 0 })?;
        loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let g = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&g)?;
        let t3 = Instant::now();
        f.push((t1 - t).as_secs_f64() * 1e3);
        b.push((t2 - t1).as_secs_f64() * 1e3);
        o.push((t3 - t2).as_secs_f64() * 1e3);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms",
        med(&mut f),
        med(&mut b),
        med(&mut o)
    );
    Ok(())
}
