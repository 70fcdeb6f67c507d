use std::path::PathBuf;

use armory::config::RunConfig;
use armory::models::Arm;
use candle_core::{DType, Device};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A config file (default: the seed ARM's).
    #[arg(long, conflicts_with_all = ["run", "model"])]
    config: Option<PathBuf>,
    /// One of the configs shipped in configs/ (embedded): seed-arm, dilated-conv, mlp, lstm, gru, wavenet,
    /// pixelcnn, gated-pixelcnn, gated-pixelcnn-mixture, gated-pixelcnn-cond, binarized-mnist, mnist (the last two need --data mnist:DIR).
    #[arg(long, conflicts_with = "run")]
    model: Option<String>,
    /// A run directory.
    #[arg(long)]
    run: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let cfg = match (&a.config, &a.model, &a.run) {
        (Some(p), _, _) => RunConfig::from_file(p)?,
        (_, Some(name), _) => RunConfig::named(name)?,
        (_, _, Some(r)) => armory::train::RunDir::open(r)?.read_config()?,
        _ => RunConfig::seed(),
    };
    let arm = Arm::new(&cfg.model, cfg.train.seed, DType::F32, &Device::Cpu)?;
    println!("parameters: {}", arm.params().num_params());
    println!("receptive field: {} of {} positions", arm.receptive_field(), arm.dim());
    println!("distribution: {}", cfg.model.distribution());
    println!("\n{}", cfg.to_toml());
    Ok(())
}
