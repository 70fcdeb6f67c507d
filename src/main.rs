//! `armory`: train, evaluate, sample and benchmark autoregressive models from the command line.

mod cli;

/// A caching allocator: the kernels allocate and free multi-megabyte buffers every step, and the system
/// allocator hands them back to the OS each time (page faults and zeroing cost ~10% of a train step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
