//! `armory sample`: draws from a trained model (naive, cached or predictive; a VAE: z from the prior, x by the
//! decoder), written as a PNG grid and the raw values.

use std::path::PathBuf;

use anyhow::Context;
use armory::sample::{sample, Method, Noise};
use armory::viz::image_grid_png_bytes;

use super::choices;
use super::model_source::{Model, ModelSource};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelSource,
    /// How many samples.
    #[arg(short, long, default_value_t = 16)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Softmax temperature (1 = the model's distribution).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    temperature: f64,
    /// PNG grid of the samples.
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// The raw values, one sample per line (comma-separated, raster order).
    #[arg(long)]
    raw: Option<PathBuf>,
    /// Replace --out and --raw if they exist (without it, existing files are never overwritten).
    #[arg(long)]
    force: bool,
    /// The class to draw, for class-conditional models (default: the classes in turn).
    #[arg(long)]
    label: Option<u32>,
    /// naive (D full passes), cached (one column per position), or predictive (fixed-point iteration);
    /// all draw the same samples for the same --seed. Default: cached where the model has it, else naive.
    #[arg(long, value_parser = choices::parser(choices::METHODS))]
    method: Option<Method>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.n > 0, "--n must be at least 1");
    anyhow::ensure!(
        a.temperature > 0.0 && a.temperature.is_finite(),
        "--temperature must be a positive finite number (1 = the model's distribution)"
    );
    // The outputs are checked before any work: never over an existing file unless --force, never one
    // output over the other.
    let inputs = a.model.inputs();
    armory::output::check_new(&a.out, a.force)?;
    armory::output::check_not_input(&a.out, &inputs)?;
    if let Some(raw) = &a.raw {
        anyhow::ensure!(
            !armory::output::same_file(&a.out, raw),
            "--out and --raw name the same file ({}): one would replace the other",
            raw.display()
        );
        armory::output::check_new(raw, a.force)?;
        armory::output::check_not_input(raw, &inputs)?;
        // CSV text, whatever the name: a name that promises a binary format is refused, not written as text.
        if let Some(ext) = raw.extension().map(|e| e.to_string_lossy().to_lowercase()) {
            anyhow::ensure!(
                !["npy", "npz", "png", "safetensors", "arm", "gz"].contains(&ext.as_str()),
                "--raw {}: the raw values are written as comma-separated text; name a .csv or .txt file",
                raw.display()
            );
        }
    }
    let (_, model) = a.model.load()?;
    let arm = match model {
        Model::Arm(arm) => arm,
        Model::Vae(vae) => {
            anyhow::ensure!(a.label.is_none(), "--label: a VAE is not class-conditional");
            anyhow::ensure!(
                a.method.is_none(),
                "--method does not apply to a VAE, which draws z from its prior and x from its decoder (cached where \
                 it steps): leave it out"
            );
            let started = std::time::Instant::now();
            let x = vae.sample(a.n, a.seed, a.temperature)?;
            let secs = started.elapsed().as_secs_f64();
            write(&a, vae.decoder(), &x)?;
            println!(
                "{} in {secs:.3}s (z from the prior, x from the decoder) → {}",
                super::count(a.n, "sample"),
                a.out.display()
            );
            report_raw(&a);
            return Ok(());
        }
    };
    let d = arm.dim();
    armory::sample::check_size(&arm, a.n)?;
    let labels: Option<Vec<u32>> = match (arm.num_classes(), a.label) {
        (Some(n), Some(l)) => {
            anyhow::ensure!(
                (l as usize) < n,
                "--label {l} is outside 0..{} (the model's classes)",
                n - 1
            );
            Some(vec![l; a.n])
        }
        (Some(n), None) => Some((0..a.n).map(|i| (i % n) as u32).collect()),
        (None, Some(_)) => anyhow::bail!("--label: this model is not class-conditional"),
        (None, None) => None,
    };
    let method = match a.method {
        Some(m) => m,
        None => Method::fastest_exact(&arm, labels.as_deref())?,
    };
    let started = std::time::Instant::now();
    let (x, calls) = sample(
        &arm,
        method,
        &Noise::new(a.n, d, a.seed),
        a.temperature,
        labels.as_deref(),
    )?;
    let secs = started.elapsed().as_secs_f64();
    write(&a, &arm, &x)?;
    let calls = match method {
        Method::Cached => "one column per position".to_string(),
        _ => format!("{calls} ARM calls for D = {d}"),
    };
    println!(
        "{} in {:.3}s ({method} sampler, {calls}) → {}",
        super::count(a.n, "sample"),
        secs,
        a.out.display()
    );
    report_raw(&a);
    Ok(())
}

/// Says where the raw values went, if `--raw` asked for them.
fn report_raw(a: &Args) {
    if let Some(path) = &a.raw {
        println!("raw values → {}", path.display());
    }
}

/// Writes the samples `x` of `arm` (a VAE's decoder) as the PNG grid of `--out` and the values of `--raw`.
fn write(a: &Args, arm: &armory::models::Arm, x: &[u32]) -> anyhow::Result<()> {
    let d = arm.dim();
    let samples: Vec<Vec<u32>> = x.chunks(d).map(|s| s.to_vec()).collect();
    // 2-D models know their image size; a sequence is drawn as a square when its length is one (the digits'
    // 64 pixels), else as one row.
    let side = (d as f64).sqrt() as usize;
    let (c, h, w) = arm
        .config()
        .image_shape()
        .unwrap_or(if side * side == d { (1, side, side) } else { (1, 1, d) });
    let png = image_grid_png_bytes(&a.out, &samples, h, w, c, arm.num_values() as u32, 8.min(a.n), 4)?;
    let raw = a.raw.as_ref().map(|raw| {
        let text: String = samples
            .iter()
            .map(|s| s.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",") + "\n")
            .collect();
        (raw, text)
    });
    // Both files or neither: each goes through a temporary file, renamed into place once both are written.
    let mut files: Vec<(&std::path::Path, &[u8])> = vec![(&a.out, &png)];
    if let Some((path, text)) = &raw {
        files.push((path, text.as_bytes()));
    }
    armory::output::write_all_atomic(&files).context("writing the samples")?;
    Ok(())
}
