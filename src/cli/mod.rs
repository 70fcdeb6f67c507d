//! The command line: clap structs per subcommand, turned into library calls. No tensor math here.

mod bench;
mod compress;
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
    about = "Deep autoregressive generative models: train, evaluate, sample, compress"
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
    /// Compress a data file (digits CSV, IDX, npy, PNG folder) with a trained model, losslessly.
    Compress(compress::CompressArgs),
    /// Rebuild the data file from a `.arm` file and the model it was compressed with.
    Decompress(compress::DecompressArgs),
    /// Speed of the seed ARM: train step, forward at batch 1 and 64, naive sampling; ratios to PyTorch.
    Bench(bench::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    }
    match cli.command {
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Compress(a) => compress::compress(a),
        Command::Decompress(a) => compress::decompress(a),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
