//! `armory eval`: a trained model's −log p(x) on a split, in nats per example and bits per dimension (for a
//! VAE the −ELBO, its KL, and the importance-weighted estimate with K and the seed).

use anyhow::Context;
use armory::data::Split;
use armory::train::evaluate;

use super::choices;
use super::model_source::{Model, ModelSource};
use armory::latent::Vae;

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
    /// A VAE's −log p(x): the importance-weighted estimate with this many samples of z per example
    /// [default: 1000]. An ARM's −log p(x) is exact: for an ARM this is refused.
    #[arg(long)]
    importance_samples: Option<usize>,
    /// The seed of a VAE's samples of z [default: 0]. Refused for an ARM, which draws nothing.
    #[arg(long)]
    seed: Option<u64>,
}

/// Importance samples when `--importance-samples` is not given.
const DEFAULT_IMPORTANCE_SAMPLES: usize = 1000;

pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.batch_size > 0, "--batch-size must be at least 1");
    let importance_samples = a.importance_samples.unwrap_or(DEFAULT_IMPORTANCE_SAMPLES);
    anyhow::ensure!(
        importance_samples > 0,
        "--importance-samples must be at least 1 (1 gives the ELBO; 1000 is the usual choice)"
    );
    armory::limits::check(
        "--importance-samples",
        armory::limits::wide(importance_samples),
        armory::limits::wide(armory::limits::MAX_IMPORTANCE_SAMPLES),
    )?;
    let (cfg, model) = a.model.load()?;
    // Said rather than ignored: a user who asks for K samples of an ARM expects them to matter.
    anyhow::ensure!(
        matches!(model, Model::Vae(_)) || (a.importance_samples.is_none() && a.seed.is_none()),
        "--importance-samples and --seed apply to latent-variable models (vae, vae-arm-prior, pixelvae, \
         pixelvae-arm-prior); this model is an ARM (`{}`), whose −log p(x) is exact: leave them out",
        cfg.model.kind()
    );
    armory::limits::check(
        format!(
            "activation memory of an evaluation batch of {} (bytes, estimated; lower --batch-size)",
            a.batch_size
        ),
        cfg.model.activation_bytes(a.batch_size),
        armory::limits::MAX_ACTIVATION_BYTES,
    )?;
    let mut data = cfg.data;
    if let Some(spec) = a.data.clone() {
        data.dataset = spec;
    }
    let spec = data.dataset.clone();
    let splits = data.load().with_context(|| format!("loading {spec}"))?;
    armory::config::check_split_fits(&cfg.model, &splits, a.split, &spec)?;
    let part = splits.get(a.split);
    let arm = match model {
        Model::Arm(arm) => arm,
        Model::Vae(vae) => return eval_vae(&vae, &a, importance_samples, part, &spec),
    };
    let ev = evaluate(&arm, part, a.batch_size)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"split": a.split, "nll_nats": ev.nll, "bits_per_dim": ev.bpd, "examples": ev.examples})
        );
    } else {
        println!(
            "{} split of {spec}: {:.3} nats per example, {:.4} bits per dimension ({})",
            a.split,
            ev.nll,
            ev.bpd,
            super::count(ev.examples, "example")
        );
    }
    Ok(())
}

/// A VAE's figures: −ELBO, KL, the importance-weighted −log p(x) (K and the seed stated), active units.
fn eval_vae(vae: &Vae, a: &Args, k: usize, part: &armory::data::Dataset, spec: &str) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let pb = super::samples_bar((part.len() * k) as u64, "importance samples");
    if a.json {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let ev = vae.evaluate(part, k, a.seed.unwrap_or(0), &|done| pb.set_position(done as u64))?;
    pb.finish_and_clear();
    // The aggregate posterior's KL is a Monte Carlo estimate: where the latents carry little it can land
    // above the KL term (by a few thousandths at K = 1000, more with few samples), and I(x; z) ≥ 0 would read
    // as negative. Both outputs show it capped at the KL term.
    let marginal = ev.marginal_kl.min(ev.kl);
    if a.json {
        let mut v = serde_json::to_value(&ev)?;
        v["marginal_kl"] = serde_json::json!(marginal);
        v["split"] = serde_json::json!(a.split);
        v["nll_nats"] = serde_json::json!(ev.nll);
        v["bits_per_dim"] = serde_json::json!(ev.bpd);
        println!("{v}");
    } else {
        println!(
            "{} split of {spec}: −log p(x) ≤ {:.3} nats per example, {:.4} bits per dimension (importance-weighted, \
             K = {}, seed {}); −ELBO {:.3} (KL {:.3} = I(x; z) {:.3} + KL(q(z) ‖ p(z)) {:.3}); {} of {} latents active; \
             {}, {:.1}s",
            a.split,
            ev.nll,
            ev.bpd,
            ev.importance_samples,
            ev.seed,
            ev.neg_elbo,
            ev.kl,
            ev.kl - marginal,
            marginal,
            ev.active_units,
            ev.latents,
            super::count(ev.examples, "example"),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
