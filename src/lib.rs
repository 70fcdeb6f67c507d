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

/// Runs `f` with the pool's other workers kept awake: between parallel loops each looks for work (rayon's
/// `yield_now`, then a `sched_yield`) instead of going to sleep after a few dozen empty rounds as rayon's
/// workers do. A training step alternates parallel kernels with short stretches on one thread (candle's own
/// ops, the loss); a worker that falls asleep in one must be woken for the next kernel — a futex call and, on
/// a virtual machine, the idle vCPU's wake-up, ~20 times a step of the gated PixelCNN (`perf sched`), while
/// the calling thread starts the kernel alone. The price: the other cores busy-wait through `f`, as OpenMP's
/// threads do by default — unless another program wants a core: a worker whose `sched_yield` gave the core
/// away for more than half a millisecond stops busy-waiting for the rest of `f`. Outside a pool, or in a
/// pool of one, it is `f()`.
///
/// ```
/// let threads = armory::with_threads(2, || armory::keeping_workers_awake(rayon::current_num_threads))?;
/// assert_eq!(threads, 2);
/// # Ok::<(), armory::Error>(())
/// ```
pub fn keeping_workers_awake<R>(f: impl FnOnce() -> R) -> R {
    keeping_awake_unless(std::time::Duration::from_micros(500), f)
}

/// [`keeping_workers_awake`], a worker backing off once a `sched_yield` of its has taken longer than
/// `back_off`.
fn keeping_awake_unless<R>(back_off: std::time::Duration, f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let Some(me) = rayon::current_thread_index() else {
        return f();
    };
    if rayon::current_num_threads() < 2 {
        return f();
    }
    /// Sets the flag when `f` returns or unwinds: the workers go back to rayon's own waiting.
    struct Done(Arc<AtomicBool>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = Done(Arc::new(AtomicBool::new(false)));
    let flag = Arc::clone(&done.0);
    rayon::spawn_broadcast(move |ctx| {
        if ctx.index() == me {
            return; // the caller's own share, picked up whenever it next looks for work
        }
        while !flag.load(Ordering::Acquire) {
            if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
                let asked = std::time::Instant::now();
                std::thread::yield_now();
                // Another program took the core in the meantime: the cores are shared, and busy-waiting
                // would take time from the threads that work (a gated PixelCNN epoch beside one busy
                // process: 2.5–2.8 s spinning, 1.9–2.2 s sleeping). Back to rayon's own waiting.
                if asked.elapsed() > back_off {
                    return;
                }
            }
        }
    });
    f()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;

    /// CPU time (user + system, clock ticks) of thread `tid` of this process.
    fn cpu_ticks(tid: i32) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("the thread's stat");
        // Fields after the command name (in parentheses, which may hold spaces): utime and stime are the
        // 12th and 13th of them.
        let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
        let f: Vec<u64> = rest
            .split(' ')
            .skip(11)
            .take(2)
            .map(|v| v.parse().expect("a number"))
            .collect();
        f[0] + f[1]
    }

    /// The other worker works (busy-waits) while `f` runs on the caller without parallel work, and stops
    /// when `f` returns, or unwinds, or when a yield of its lets something else run and it backs off; `f`'s
    /// value comes back; nested, and with parallel work, it runs to the end.
    #[test]
    fn workers_are_kept_awake_through_f_and_only_through_it() {
        crate::with_threads(2, || {
            let me = rayon::current_thread_index().expect("on a worker");
            let tids = rayon::broadcast(|ctx| (ctx.index(), unsafe { libc::gettid() }));
            let other = tids.iter().find(|(i, _)| *i != me).expect("a second worker").1;
            let nap = || std::thread::sleep(Duration::from_millis(300));
            // Never backing off here: on a shared machine (tests running beside this one) the keeper would.
            let during = crate::keeping_awake_unless(Duration::MAX, || {
                let before = cpu_ticks(other);
                nap();
                cpu_ticks(other) - before
            });
            // Backing off at the first yield that lets anything else run: no busy-waiting to speak of.
            let backed_off = crate::keeping_awake_unless(Duration::ZERO, || {
                let before = cpu_ticks(other);
                nap();
                cpu_ticks(other) - before
            });
            assert!(
                backed_off <= 3,
                "the other worker used {backed_off} ticks after backing off"
            );
            std::thread::sleep(Duration::from_millis(50)); // rayon's own spinning, then its sleep
            let before = cpu_ticks(other);
            nap();
            let after = cpu_ticks(other) - before;
            assert!(
                during >= 5,
                "the other worker used {during} ticks while kept awake (30 if all)"
            );
            assert!(after <= 3, "the other worker used {after} ticks after");
            let unwound = std::panic::catch_unwind(|| crate::keeping_awake_unless(Duration::MAX, || panic!("in f")));
            assert!(unwound.is_err());
            std::thread::sleep(Duration::from_millis(50));
            let before = cpu_ticks(other);
            nap();
            assert!(
                cpu_ticks(other) - before <= 3,
                "the workers kept spinning after a panic"
            );
            use rayon::prelude::*;
            let sum = crate::keeping_workers_awake(|| {
                crate::keeping_workers_awake(|| (0..1_000_000u64).into_par_iter().sum::<u64>())
            });
            assert_eq!(sum, 999_999 * 1_000_000 / 2);
        })
        .expect("a pool of two");
    }
}
