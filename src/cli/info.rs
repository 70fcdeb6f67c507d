//! `armory info`: a model's parameters, receptive field and full config, from a config or a run.

use std::path::PathBuf;

use armory::config::RunConfig;

use super::model_source::Model;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A config file (default: the seed ARM's).
    #[arg(long, conflicts_with_all = ["run", "model"])]
    config: Option<PathBuf>,
    #[arg(long, conflicts_with = "run", help = armory::config::named_help())]
    model: Option<String>,
    /// A run directory.
    #[arg(long)]
    run: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let cfg = match (&a.config, &a.model, &a.run) {
        (Some(p), _, _) => RunConfig::from_file(p)?,
        (_, Some(name), _) => RunConfig::named(name)?,
        // As written, edited or not: info loads no weights, and shows what the file says.
        (_, _, Some(r)) => RunConfig::from_file(&armory::train::RunDir::open(r)?.file("config.toml"))?,
        _ => RunConfig::seed(),
    };
    let model = super::model_source::build(&cfg)?;
    println!("parameters: {}", model.params().num_params());
    let arm = match &model {
        Model::Arm(arm) => arm,
        Model::Vae(vae) => {
            let latent = cfg.latent.as_ref().expect("a VAE has [latent]");
            println!(
                "a VAE: {} latents, prior {}",
                latent.latents,
                match latent.prior {
                    armory::latent::PriorConfig::StandardNormal => "standard normal".to_string(),
                    armory::latent::PriorConfig::Arm { n_mix, .. } => format!(
                        "an ARM over the latents (a mixture of {n_mix} logistics per dimension, θ_l sees {} before)",
                        latent.prior.receptive_field(latent.latents)
                    ),
                }
            );
            vae.decoder()
        }
    };
    println!(
        "receptive field: {} of the {} positions before the last ({} in all)",
        arm.receptive_field(),
        arm.dim().saturating_sub(1),
        arm.dim()
    );
    println!("distribution: {}", cfg.model.distribution());
    println!(
        "families: {}",
        armory::models::FAMILIES
            .iter()
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("\n{}", cfg.to_toml());
    Ok(())
}
