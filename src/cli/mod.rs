//! The command line: clap structs per subcommand, turned into library calls. No tensor math here.

mod bench;
mod choices;
mod compress;
mod encode;
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
    /// Let idle workers sleep between kernels instead of busy-waiting for the next one: slower on cores of
    /// its own (a few per cent), faster when other programs compete for the cores.
    #[arg(long, global = true)]
    no_spin: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model (by default the seed ARM on the embedded digits) into runs/<name>/.
    Train(Box<train::Args>),
    /// Test NLL in nats per example and bits per dimension, on any split (a VAE: −ELBO and the
    /// importance-weighted estimate).
    Eval(eval::Args),
    /// Draw samples: a PNG grid and the raw values.
    Sample(sample::Args),
    /// A VAE's posterior means E[z | x] of a data split (npy or CSV).
    Encode(encode::Args),
    /// Parameters, receptive field and the full config of a model.
    Info(info::Args),
    /// Compress a data file (digits CSV, IDX, npy, PNG folder) with a trained model, losslessly.
    Compress(compress::CompressArgs),
    /// Rebuild the data file from a `.arm` file and the model it was compressed with.
    Decompress(compress::DecompressArgs),
    /// Speed side by side with PyTorch, both measured in this run: the seed net, training epochs, memory.
    Bench(bench::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        armory::limits::check("--threads", n as u128, 1024u128)?;
    }
    let no_spin = cli.no_spin;
    armory::with_threads(cli.threads.unwrap_or(0), || match cli.command {
        // `bench` times child processes: its workers must not busy-wait beside them (it keeps them awake
        // itself where it measures in this process).
        Command::Bench(a) => bench::run(a),
        command if no_spin => run_command(command),
        command => armory::keeping_workers_awake(|| run_command(command)),
    })?
}

fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Encode(a) => encode::run(a),
        Command::Info(a) => info::run(a),
        Command::Compress(a) => compress::compress(a),
        Command::Decompress(a) => compress::decompress(a),
        Command::Bench(a) => bench::run(a),
    }
}

/// A progress bar over `len` units of work too many to count on screen (a VAE's importance samples: examples
/// × K), shown as a share done and the time left.
fn samples_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template(&format!("{what} {{bar:40}} {{percent}}% ({{eta}} left)"))
    {
        pb.set_style(style);
    }
    pb
}

/// `n` and the noun, plural unless `n` is 1: "1 epoch", "70 epochs", "1 thread".
fn count(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        _ => format!("{n} {noun}s"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_read_as_words() {
        assert_eq!(super::count(1, "epoch"), "1 epoch");
        assert_eq!(super::count(70, "epoch"), "70 epochs");
        assert_eq!(super::count(0, "thread"), "0 threads");
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
