use anyhow::Context;
use armory::data::Split;
use armory::train::evaluate;

use super::choices;
use super::model_source::ModelSource;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelSource,
    /// Which part of the data.
    #[arg(long, value_parser = choices::parser(choices::SPLITS), default_value = "test")]
    split: Split,
    /// Dataset instead of the config's (see `armory train --help`); the config's validation size and any
    /// quantization or binarization still apply.
    #[arg(long)]
    data: Option<String>,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.batch_size > 0, "--batch-size must be at least 1");
    let (cfg, arm) = a.model.load()?;
    armory::limits::check(
        format!(
            "activation memory of an evaluation batch of {} (bytes, estimated; lower --batch-size)",
            a.batch_size
        ),
        cfg.model.activation_bytes(a.batch_size),
        armory::limits::MAX_ACTIVATION_BYTES,
    )?;
    let mut data = cfg.data;
    if let Some(spec) = a.data {
        data.dataset = spec;
    }
    let spec = data.dataset.clone();
    let splits = data.load().with_context(|| format!("loading {spec}"))?;
    armory::config::check_fits(&cfg.model, &splits, &spec)?;
    let part = splits.get(a.split);
    let ev = evaluate(&arm, part, a.batch_size)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"split": a.split, "nll_nats": ev.nll, "bits_per_dim": ev.bpd, "examples": ev.examples})
        );
    } else {
        println!(
            "{} split of {spec}: {:.3} nats per example, {:.4} bits per dimension ({} examples)",
            a.split, ev.nll, ev.bpd, ev.examples
        );
    }
    Ok(())
}
