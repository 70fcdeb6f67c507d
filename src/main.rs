//! `armory`: train, evaluate, sample and benchmark autoregressive models from the command line.

mod cli;

/// A caching allocator: the kernels allocate and free multi-megabyte buffers every step, and the system
/// allocator hands them back to the OS each time (page faults and zeroing cost ~10% of a train step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() {
    // candle's own pool for elementwise ops spins between ops and competes with the kernels' threads (on 2
    // cores it cost a third of a gated PixelCNN's time); its ops are cheap next to the convolutions, which
    // parallelise themselves. Set CANDLE_NUM_THREADS to override. Done first, before any thread exists.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // Die quietly when the reader of stdout goes away (`armory info | head`), as command-line tools do,
    // instead of panicking in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
