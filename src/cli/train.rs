//! `armory train`: the flags mapped onto a run config in one place, the run directory, the training loop with
//! its progress bar and Ctrl-C, and the figures of the finished run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use armory::config::{Binarize, RunConfig};
use armory::models::{ArchFlags, Arm};
use armory::train::{self, evaluate, Controls, OptimizerKind, Outcome, RunDir};

use super::choices;
use super::model_source::Model;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A config file (default: configs/seed-arm.toml, embedded).
    #[arg(long, conflicts_with = "model")]
    config: Option<PathBuf>,
    #[arg(long, help = armory::config::named_help())]
    model: Option<String>,
    /// Run name: the run is written to <runs-dir>/<name>/ (default: the config file's name, or seed-arm).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "runs")]
    runs_dir: PathBuf,
    /// Overwrite an existing run directory of the same name.
    #[arg(long)]
    force: bool,
    /// Continue an interrupted run exactly where it stopped (a run directory).
    #[arg(long, conflicts_with_all = ["config", "model", "name", "force"])]
    resume: Option<PathBuf>,
    #[command(flatten)]
    recipe: RecipeFlags,
    /// No progress bar or per-epoch lines.
    #[arg(long)]
    quiet: bool,
    /// Stop as Ctrl-C would after this many steps (for testing resume).
    #[arg(long, hide = true)]
    stop_after_steps: Option<usize>,
}

/// The flags that change the recipe: declared here once, applied in [`apply_overrides`], and refused by
/// `--resume` through [`given`]. Every one is optional (given exactly when not `None`).
#[derive(Debug, clap::Args, serde::Serialize)]
struct RecipeFlags {
    /// Dataset: `digits` (embedded), `mnist:DIR`, `fashion-mnist:DIR`, `binarized-mnist:DIR`, `cifar10:DIR`,
    /// `png:DIR`, `npy:FILE`, or a file in the digits CSV format.
    #[arg(long)]
    data: Option<String>,
    /// Training examples held out for validation (sets with their own test set, e.g. MNIST).
    #[arg(long)]
    validation: Option<usize>,
    /// Quantize the data to this many levels after loading (e.g. 16 for 256-level images).
    #[arg(long, conflicts_with = "binarize")]
    levels: Option<usize>,
    /// Binarize the data after loading (stochastic: seeded by --seed).
    #[arg(long, value_parser = choices::parser(choices::BINARIZE))]
    binarize: Option<Binarize>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, value_parser = choices::parser(choices::OPTIMIZERS))]
    optimizer: Option<OptimizerKind>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Maximum number of epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Early stopping: epochs without a better validation NLL.
    #[arg(long)]
    patience: Option<usize>,
    /// Clip the global gradient norm.
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Polyak averaging: validate and keep a moving average of the weights with this decay (e.g. 0.999).
    #[arg(long)]
    ema: Option<f64>,
    /// Exponential learning-rate decay per epoch: epoch e uses lr × D^e (e.g. 0.98).
    #[arg(long)]
    lr_decay: Option<f64>,
    /// Decoupled weight decay (AdamW) on weight matrices and kernels, not biases (e.g. 0.01).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Dropout probability (every model family).
    #[arg(long)]
    dropout: Option<f64>,
    /// Hidden channels / units of the network: causal_conv, mlp, rnn, pixelcnn, dense (a VAE's decoder), and
    /// gated_pixelcnn's channels (a VAE's encoder keeps its [latent] hidden).
    #[arg(long)]
    hidden: Option<usize>,
    /// Kernel size (causal_conv, wavenet, pixelcnn, gated_pixelcnn).
    #[arg(long)]
    kernel: Option<usize>,
    /// Dilations, one per layer or block, e.g. 1,2,4,8 (causal_conv, wavenet).
    #[arg(long, value_delimiter = ',')]
    dilations: Option<Vec<usize>>,
    /// Number of layers: causal_conv (all dilation 1 unless --dilations is given), dense, gated_pixelcnn, and
    /// pixelcnn's blocks.
    #[arg(long)]
    layers: Option<usize>,
}

fn apply_overrides(cfg: &mut RunConfig, a: &RecipeFlags) -> anyhow::Result<()> {
    if let Some(d) = &a.data {
        cfg.data.dataset = d.clone();
    }
    cfg.data.validation = a.validation.unwrap_or(cfg.data.validation);
    if let Some(l) = a.levels.filter(|&l| l < 2) {
        bail!("--levels {l}: quantizing leaves at least 2 levels");
    }
    if a.levels.is_some() || a.binarize.is_some() {
        (cfg.data.levels, cfg.data.binarize) = (a.levels, a.binarize);
        cfg.data.binarize_seed = a.seed.unwrap_or(cfg.train.seed);
        // The model takes the values the data is left with: L levels, or 0 and 1.
        cfg.model.num_values = a.levels.unwrap_or(2);
    }
    let t = &mut cfg.train;
    t.seed = a.seed.unwrap_or(t.seed);
    t.optimizer = a.optimizer.unwrap_or(t.optimizer);
    t.lr = a.lr.unwrap_or(t.lr);
    t.batch_size = a.batch_size.unwrap_or(t.batch_size);
    t.max_epochs = a.epochs.unwrap_or(t.max_epochs);
    t.patience = a.patience.unwrap_or(t.patience);
    t.grad_clip = a.grad_clip.or(t.grad_clip);
    t.ema = a.ema.or(t.ema);
    t.lr_decay = a.lr_decay.or(t.lr_decay);
    t.weight_decay = a.weight_decay.or(t.weight_decay);
    cfg.model.dropout = a.dropout.unwrap_or(cfg.model.dropout);
    let arch = ArchFlags {
        hidden: a.hidden,
        kernel: a.kernel,
        dilations: a.dilations.clone(),
        layers: a.layers,
    };
    cfg.model.network.family_mut().apply(&arch)?;
    cfg.validate()?;
    let validation = cfg.data.validation;
    let asked = a.validation.is_some() || validation != armory::config::DEFAULT_VALIDATION;
    if asked && !armory::data::has_own_test_split(&cfg.data.dataset) {
        bail!(
            "data.validation (--validation) = {validation}, but `{}` is split into training, validation and test \
             sets by position, so it would be ignored: it sizes the validation set only of data sets with their \
             own test set (mnist:DIR, fashion-mnist:DIR, binarized-mnist:DIR, cifar10:DIR)",
            cfg.data.dataset
        );
    }
    Ok(())
}

/// The long names of the flags in `flags` that were given (each is optional: given when not `None`), in
/// the order of `--help`; the names come from clap, the given-ness from the values.
fn given<T: clap::Args + serde::Serialize>(flags: &T) -> Vec<String> {
    let values = serde_json::to_value(flags).expect("flags serialise to a JSON object");
    T::augment_args(clap::Command::new("flags"))
        .get_arguments()
        .filter(|arg| values.get(arg.get_id().as_str()).is_some_and(|v| !v.is_null()))
        .map(|arg| format!("--{}", arg.get_long().expect("every recipe flag is long")))
        .collect()
}

enum RunTarget {
    Existing(RunDir),
    New(std::path::PathBuf),
}

/// Whether a dataset spec names a file or folder by a relative path (read from the current folder).
fn data_is_relative(spec: &str) -> bool {
    let path = spec.split_once(':').map_or(spec, |(_, p)| p);
    spec != "digits" && !path.is_empty() && std::path::Path::new(path).is_relative()
}

/// What a Ctrl-C after the last epoch says: training is over, the test figures are not done.
const AFTER_TRAINING: &str =
    "interrupted after training: the run's checkpoints are saved; its test figures and pictures are not";

/// Refuses to start a new run where a run is, unless `--force`, saying what to run instead. A folder whose
/// lock another process holds is refused as in use: it may be that process's run, half written (`locked`:
/// this process holds the lock itself).
fn refuse_existing(dir: &std::path::Path, force: bool, locked: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    if !locked && dir.join("lock").is_file() {
        let run = RunDir {
            path: dir.to_path_buf(),
        };
        drop(run.lock()?); // Error::RunLocked if another process holds it
    }
    let config = dir.join("config.toml");
    if !(config.exists() || config.is_symlink()) {
        // No run here; but a folder holding anything else (a run that lost its config, the user's own files)
        // is not written into without --force. A lone `lock` is what a start that died at once leaves.
        match std::fs::symlink_metadata(dir) {
            Err(_) => return Ok(()), // nothing there: a new run folder
            Ok(m) if !dir.is_dir() && !m.is_dir() => {
                bail!(
                    "{} exists and is not a folder: choose --name or --runs-dir",
                    dir.display()
                )
            }
            Ok(_) => {}
        }
        let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        let held: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "lock")
            .collect();
        if let Some(first) = held.iter().min() {
            bail!(
                "{} holds files ({first}{}) but no run (no config.toml): choose --name, or write into it with --force",
                dir.display(),
                if held.len() > 1 { ", …" } else { "" }
            );
        }
        return Ok(());
    }
    if dir.join("resume.safetensors").is_file() {
        bail!(
            "{} already holds a run: continue it with --resume {}, or choose --name, or overwrite with --force",
            dir.display(),
            dir.display()
        );
    }
    bail!(
        "{} already holds a run that stopped before its first checkpoint: start it again from scratch with \
         --resume {} (same config), or choose --name, or overwrite with --force",
        dir.display(),
        dir.display()
    );
}

/// A run directory without `resume.safetensors` can only start from scratch, and may, as long as that loses
/// no history: at most its first epoch was recorded (it died before or while writing its first checkpoint).
fn restart_from_scratch(run: &RunDir) -> anyhow::Result<()> {
    let rows = train::metrics::read_csv(&run.file("metrics.csv"))?;
    if rows.len() > 1 {
        bail!(
            "{} has no resume.safetensors but metrics.csv records {} epochs: it cannot continue exactly; \
             start it again with --force",
            run.path.display(),
            rows.len()
        );
    }
    // Training is deterministic: from scratch, the same config and seed give that first epoch again, bit for
    // bit, and so the same best.safetensors and last.safetensors as any it may have written.
    eprintln!(
        "{} has no resume.safetensors and metrics.csv records at most one epoch: starting it from scratch (the \
         same seed gives the same first epoch again)",
        run.path.display()
    );
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    // The run's lock is taken as soon as its directory exists and held until the process ends: one writer.
    let (mut cfg, run, lock, resume) = match &a.resume {
        Some(dir) => {
            let flags = given(&a.recipe);
            if !flags.is_empty() {
                bail!(
                    "--resume continues a run exactly, with its own config.toml: {} cannot be used with it",
                    flags.join(", ")
                );
            }
            let run = RunDir::open(dir)?;
            let lock = run.lock()?;
            let cfg = run.read_config_to_resume()?;
            run.remove_temp_files()?;
            let resume = run.file("resume.safetensors").is_file();
            if !resume {
                restart_from_scratch(&run)?;
            }
            (cfg, RunTarget::Existing(run), Some(lock), resume)
        }
        None => {
            let mut cfg = match (&a.config, &a.model) {
                (Some(p), _) => RunConfig::from_file(p)?,
                (None, Some(name)) => RunConfig::named(name)?,
                (None, None) => RunConfig::seed(),
            };
            apply_overrides(&mut cfg, &a.recipe)?;
            cfg.check_quantized_values()?;
            let name = a.name.clone().or_else(|| a.model.clone()).unwrap_or_else(|| {
                a.config
                    .as_ref()
                    .and_then(|p| p.file_stem())
                    .map_or("seed-arm".into(), |s| s.to_string_lossy().into())
            });
            train::check_run_name(&name)?;
            if a.runs_dir.exists() && !a.runs_dir.is_dir() {
                bail!(
                    "--runs-dir {} is not a folder: name a folder (made if missing)",
                    a.runs_dir.display()
                );
            }
            let dir = a.runs_dir.join(name);
            refuse_existing(&dir, a.force, false)?; // before the lock, which would leave its file in a folder refused
            let lock = match dir.is_dir() {
                true => Some(RunDir { path: dir.clone() }.lock()?),
                false => None,
            };
            refuse_existing(&dir, a.force, lock.is_some())?;
            (cfg, RunTarget::New(dir), lock, false)
        }
    };

    // The data is loaded and checked before a new run directory is made or an old one overwritten.
    let splits = match (cfg.data.load(), &a.config) {
        (Ok(splits), _) => splits,
        // The data's own errors name it; a relative path from a config file is read from here, not from the
        // config's folder: say so.
        (Err(e), Some(config)) if a.recipe.data.is_none() && data_is_relative(&cfg.data.dataset) => {
            return Err(anyhow::Error::new(e).context(format!(
                "loading the dataset of {} (a relative path is read from the current folder, {})",
                config.display(),
                std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            )))
        }
        (Err(e), _) => return Err(e.into()),
    };
    armory::config::check_fits(&cfg.model, &splits, &cfg.data.dataset)?;
    if !resume {
        // The run's config names its data by an absolute path: eval, sample and --resume find the same files
        // from any directory (a relative path was read against the directory they ran in).
        cfg.data.dataset = armory::data::absolute_spec(&cfg.data.dataset);
    }
    // The model too is built before an old run is cleared: a config that cannot be built leaves it whole.
    let model = super::model_source::build(&cfg)?;
    let (run, _lock) = match run {
        RunTarget::Existing(run) => {
            if !resume {
                run.clear()?;
                run.write_config(&cfg)?;
            }
            (run, lock)
        }
        RunTarget::New(dir) => {
            let run = RunDir::create(&dir)?;
            let lock = match lock {
                Some(l) => l,
                None => run.lock()?,
            };
            refuse_existing(&dir, a.force, true)?; // again under the lock: another run may have begun meanwhile
            run.clear()?;
            run.write_config(&cfg)?;
            (run, Some(lock))
        }
    };
    let (trainable, decoder): (&dyn train::Trainable, &Arm) = match &model {
        Model::Arm(arm) => (arm, arm),
        Model::Vae(vae) => (vae.as_ref(), vae.decoder()),
    };
    if !a.quiet {
        eprintln!(
            "{} {}: {} parameters, {}receptive field {} of {} earlier positions; data {}{} (train {}, val {}, test {}); {}",
            if resume { "resuming" } else { "training" },
            run.path.display(),
            model.params().num_params(),
            match &cfg.latent {
                Some(l) => format!("a VAE of {} latents, its decoder's ", l.latents),
                None => String::new(),
            },
            decoder.receptive_field(),
            decoder.dim().saturating_sub(1),
            cfg.data.dataset,
            match (cfg.data.levels, cfg.data.binarize) {
                (Some(l), _) => format!(", quantized to {l} levels"),
                (_, Some(Binarize::Threshold)) => ", binarized by threshold".into(),
                (_, Some(Binarize::Stochastic)) => {
                    format!(", binarized stochastically (seed {})", cfg.data.binarize_seed)
                }
                _ => String::new(),
            },
            splits.train.len(),
            splits.val.len(),
            splits.test.len(),
            super::count(rayon::current_num_threads(), "thread")
        );
    }

    let interrupt = Arc::new(AtomicBool::new(false));
    // Set once training is over: a Ctrl-C during the test evaluation and pictures then quits at once (the run's
    // checkpoints and metrics are written by then), instead of promising a state it would not save.
    let finishing = Arc::new(AtomicBool::new(false));
    let (flag, done) = (interrupt.clone(), finishing.clone());
    let _ = ctrlc::set_handler(move || {
        if done.load(Ordering::SeqCst) {
            eprintln!("\n{AFTER_TRAINING}");
            std::process::exit(130);
        }
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130); // a second Ctrl-C: stop now
        }
        eprintln!("\ninterrupted: saving the state after this step (Ctrl-C again to quit at once)");
    });
    let controls = Controls {
        interrupt,
        stop_after_steps: a.stop_after_steps,
        quiet: a.quiet,
    };
    let summary = train::train(trainable, &splits, &cfg.train, &run, resume, &controls)
        .with_context(|| format!("training {}", run.path.display()))?;
    // From here a Ctrl-C quits at once; one that came during the last epoch's validation or checkpoints
    // (the loop ended anyway, so not `Interrupted`) is honoured here. The flag is set first: no Ctrl-C is
    // lost between the two.
    finishing.store(true, Ordering::SeqCst);
    if summary.outcome != Outcome::Interrupted && controls.interrupt.load(Ordering::SeqCst) {
        eprintln!("{AFTER_TRAINING}");
        std::process::exit(130);
    }
    if summary.outcome == Outcome::Interrupted {
        println!(
            "stopped at epoch {}; state saved. Continue with: armory train --resume {}",
            summary.epochs + 1,
            run.path.display()
        );
        // Not finished: a shell's status for Ctrl-C, so that `armory train … && armory eval …` stops here.
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::process::exit(130);
    }
    let rows = train::metrics::read_csv(&run.file("metrics.csv"))?;
    let arm = match &model {
        Model::Arm(arm) => arm,
        Model::Vae(vae) => return finish_vae(vae, &cfg, &splits, &run, &rows, &summary, a.quiet),
    };
    let test = evaluate(arm, &splits.test, train::eval_batch(&cfg.model))?;
    train::pictures::draw(&run, arm, &splits.test, &rows, cfg.train.seed)?;
    let summary_json = serde_json::json!({
        "outcome": format!("{:?}", summary.outcome), // the variant's name (EarlyStopped, MaxEpochs), as before
        "epochs": summary.epochs,
        "best_epoch": summary.best_epoch,
        "best_val_nll": summary.best_val_nll,
        "test_nll": test.nll,
        "test_bpd": test.bpd,
        "wall_secs": summary.wall_secs,
        "parameters": arm.params().num_params(),
    });
    train::run_dir::write_atomic(
        &run.file("summary.json"),
        serde_json::to_string_pretty(&summary_json)?.as_bytes(),
    )?;
    println!(
        "{} after {} (best: epoch {}, {:.2} nats), {:.0}s\ntest: {:.3} nats per image, {:.4} bits/dim\nrun: {} (weights, metrics.csv, real.png, samples.png, curve.png)",
        summary.outcome,
        super::count(summary.epochs, "epoch"),
        summary.best_epoch,
        summary.best_val_nll,
        summary.wall_secs,
        test.nll,
        test.bpd,
        run.path.display()
    );
    Ok(())
}

/// Importance samples per test example in a VAE's summary (`armory eval --importance-samples` for others).
const SUMMARY_SAMPLES: usize = 1000;

/// A trained VAE: its test figures (−ELBO, KL, the importance-weighted −log p(x), active units), pictures
/// and summary.
fn finish_vae(
    vae: &armory::latent::Vae,
    cfg: &RunConfig,
    splits: &armory::data::Splits,
    run: &RunDir,
    rows: &[train::EpochRow],
    summary: &train::Summary,
    quiet: bool,
) -> anyhow::Result<()> {
    let pb = super::samples_bar((splits.test.len() * SUMMARY_SAMPLES) as u64, "test: importance samples");
    if quiet {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let seed = cfg.train.seed;
    let test = vae.evaluate(&splits.test, SUMMARY_SAMPLES, seed, &|done| {
        pb.set_position(done as u64)
    })?;
    pb.finish_and_clear();
    train::pictures::draw_data(run, &splits.test, vae.num_values(), rows)?;
    vae.draw(run, &splits.test, seed)?;
    let summary_json = serde_json::json!({
        "outcome": format!("{:?}", summary.outcome),
        "epochs": summary.epochs,
        "best_epoch": summary.best_epoch,
        "best_val_neg_elbo": summary.best_val_nll,
        "test_nll": test.nll,
        "test_bpd": test.bpd,
        "test_neg_elbo": test.neg_elbo,
        "test_kl": test.kl,
        "importance_samples": test.importance_samples,
        "importance_seed": test.seed,
        "active_units": test.active_units,
        "latents": test.latents,
        "wall_secs": summary.wall_secs,
        "parameters": vae.params().num_params(),
    });
    train::run_dir::write_atomic(
        &run.file("summary.json"),
        serde_json::to_string_pretty(&summary_json)?.as_bytes(),
    )?;
    println!(
        "{} after {} (best: epoch {}, {} {:.2} nats), {:.0}s\ntest: −log p(x) ≤ {:.3} nats per image, {:.4} \
         bits/dim (importance-weighted, K = {}, seed {}); −ELBO {:.3}, KL {:.3}; {} of {} latents active\nrun: {} \
         (weights, metrics.csv, real.png, samples.png, reconstructions.png, interpolations.png, curve.png)",
        summary.outcome,
        super::count(summary.epochs, "epoch"),
        summary.best_epoch,
        match vae.config().train_samples {
            1 => "−ELBO".to_string(),
            k => format!("−IWAE_{k}"),
        },
        summary.best_val_nll,
        summary.wall_secs,
        test.nll,
        test.bpd,
        test.importance_samples,
        test.seed,
        test.neg_elbo,
        test.kl,
        test.active_units,
        test.latents,
        run.path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// `given` names every recipe flag given, in the order of `--help`, and none when none is.
    #[test]
    fn given_lists_the_recipe_flags_given() {
        let flags = [
            ("--data", "digits"),
            ("--validation", "100"),
            ("--levels", "4"),
            ("--seed", "1"),
            ("--optimizer", "adam"),
            ("--lr", "0.1"),
            ("--batch-size", "8"),
            ("--epochs", "2"),
            ("--patience", "3"),
            ("--grad-clip", "1"),
            ("--ema", "0.9"),
            ("--lr-decay", "0.9"),
            ("--weight-decay", "0.1"),
            ("--dropout", "0.1"),
            ("--hidden", "8"),
            ("--kernel", "3"),
            ("--dilations", "1,2"),
            ("--layers", "2"),
        ];
        let train = |extra: &[&str]| {
            let cli = super::super::Cli::try_parse_from(["armory", "train", "--quiet"].iter().chain(extra)).unwrap();
            match cli.command {
                super::super::Command::Train(a) => super::given(&a.recipe),
                _ => unreachable!(),
            }
        };
        let all: Vec<&str> = flags.iter().flat_map(|(f, v)| [*f, *v]).collect();
        let names: Vec<&str> = flags.iter().map(|(f, _)| *f).collect();
        assert_eq!(train(&all), names);
        assert_eq!(
            train(&["--binarize", "stochastic", "--lr", "1"]),
            ["--binarize", "--lr"]
        );
        assert!(train(&["--name", "x", "--runs-dir", "r"]).is_empty());
    }
}
