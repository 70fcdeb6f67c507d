//! `armory`: train, evaluate, sample and benchmark autoregressive models from the command line.

mod cli;

/// A caching allocator: the kernels allocate and free multi-megabyte buffers every step, and the system
/// allocator hands them back to the OS each time (page faults and zeroing cost ~10% of a train step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() {
    // Keep the memory the kernels free for their next call instead of handing it back to the OS after a
    // few milliseconds: the next step asks for the same sizes, and pages fresh from the OS are zeroed on
    // first touch (a fifth of a batch-4 gated PixelCNN epoch went to the kernel's page clearing).
    // SAFETY: setting an option of the allocator, a plain store; index 15 is `mi_option_purge_delay`
    // (mimalloc 3's mimalloc.h), -1 meaning never.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
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
