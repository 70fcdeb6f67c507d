//! armory: deep autoregressive generative models (ARMs) on candle.
//!
//! An ARM factorises p(x) = Π_d p(x_d | x_<d): a causal network ([`models::CausalNet`]) computes θ_d from
//! x_<d for every d in one pass, and a per-dimension distribution ([`likelihood::Likelihood`]) scores or
//! samples x_d given θ_d.
//!
//! - [`data`]: datasets as `[N, D]` integer arrays, the embedded digits set, splits
//! - [`nn`]: layers (causal convolutions) and the project's own kernels
//! - [`likelihood`]: the categorical distribution
//! - [`models`]: the ARM and its network families
//! - [`sample`]: the samplers
//! - [`train`]: the training loop, optimisers, early stopping, checkpoints, metrics
//! - [`codec`]: lossless compression with a trained ARM (`armory compress` / `decompress`)
//! - [`viz`]: pictures of data, samples and learning curves
//! - [`output`]: files written through a temporary file and a rename; [`limits`]: bounds on input-decided sizes

pub mod codec;
pub mod config;
pub mod data;
pub mod error;
pub mod latent;
pub mod likelihood;
pub mod limits;
pub mod models;
pub mod nn;
pub mod output;
pub mod params;
pub mod sample;
pub mod train;
pub mod viz;

pub use error::{Error, Result};

/// Runs `f` on the thread set-up the command line uses, and that the kernels are tuned for: one rayon pool
/// of `threads` workers (0: one per core) with `f` running *on* one of them, so that each parallel loop in
/// a kernel starts where it is (no hand-off from an outside thread and back, which cost a futex wake-up per
/// operation); and candle's own pool for its elementwise operations off, since its spinning workers compete
/// with ours for the same cores (set `CANDLE_NUM_THREADS` beforehand to override). Call it before any
/// candle operation has run: candle starts its pool once.
///
/// ```
/// let threads = armory::with_threads(2, rayon::current_num_threads)?; // f runs inside the pool
/// assert_eq!(threads, 2);
/// # Ok::<(), armory::Error>(())
/// ```
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> Result<R> {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Config(format!("cannot start {threads} worker threads: {e}")))?;
    Ok(pool.install(f))
}
