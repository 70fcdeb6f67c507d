//! The command line: clap structs per subcommand, turned into library calls. No tensor math here.

mod bench;
mod eval;
mod info;
mod model_source;
mod sample;
mod train;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "armory",
    version,
    about = "Deep autoregressive generative models: train, evaluate, sample"
)]
pub struct Cli {
    /// Worker threads for the compute kernels (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model (by default the seed ARM on the embedded digits) into runs/<name>/.
    Train(Box<train::Args>),
    /// Test NLL in nats per example and bits per dimension, on any split.
    Eval(eval::Args),
    /// Draw samples: a PNG grid and the raw values.
    Sample(sample::Args),
    /// Parameters, receptive field and the full config of a model.
    Info(info::Args),
    /// Speed side by side with PyTorch, both measured in this run: the seed net, training epochs, memory.
    Bench(bench::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        armory::limits::check("--threads", n as u128, 1024u128)?;
    }
    armory::with_threads(cli.threads.unwrap_or(0), || match cli.command {
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
    })?
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
