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
        .map_err(|e| Error::Invalid(format!("cannot start {threads} worker threads: {e}")))?;
    Ok(pool.install(f))
}

/// Runs `f` with the pool's other workers kept awake: between parallel loops each looks for work (rayon's
/// `yield_now`, then a `sched_yield`) instead of going to sleep after a thousand empty rounds (~1 ms; the
/// vendored rayon-core's count, 32 as published: see vendor/README.md) as rayon's workers do. A training step
/// alternates parallel kernels with short stretches on one thread (candle's own ops, the loss); a worker that
/// falls asleep in one must be woken for the next kernel — a futex call and, on a virtual machine, the idle
/// vCPU's wake-up, ~20 times a step of the gated PixelCNN (`perf sched`), while
/// the calling thread starts the kernel alone. The price: the other cores busy-wait through `f`, as OpenMP's
/// threads do by default — unless another program wants a core: a worker whose `sched_yield`s gave its core
/// away for more than half of a stretch of 20 ms stops busy-waiting for the rest of `f`. Outside a pool, or
/// in a pool of one, it is `f()`.
///
/// ```
/// let threads = armory::with_threads(2, || armory::keeping_workers_awake(rayon::current_num_threads))?;
/// assert_eq!(threads, 2);
/// # Ok::<(), armory::Error>(())
/// ```
pub fn keeping_workers_awake<R>(f: impl FnOnce() -> R) -> R {
    let ms = std::time::Duration::from_millis;
    keeping_awake_unless(
        BackOff {
            slow: ms(1) / 2,
            window: ms(20),
            share: 0.5,
        },
        f,
    )
}

/// When a worker kept awake stops busy-waiting: once its slow yields — each longer than `slow`: the core
/// went to another program meanwhile — add up to `share` of a stretch of at least `window`. A program
/// that wants the core takes it at every yield, for a time slice each (a gated PixelCNN epoch beside one
/// busy process: 2.5–2.8 s spinning to the end, 1.9–2.2 s sleeping); a virtual machine's host takes it
/// now and then for a millisecond or two (seen on an idle 2-core VM: one 1.4 ms yield in 40 steps), which
/// is no reason to stop.
#[derive(Debug, Clone, Copy)]
struct BackOff {
    slow: std::time::Duration,
    window: std::time::Duration,
    share: f64,
}

/// [`keeping_workers_awake`] with its workers backing off as `back_off` says.
fn keeping_awake_unless<R>(back_off: BackOff, f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;
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
        let mut watch = Watch::new(Instant::now());
        while !flag.load(Ordering::Acquire) {
            if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
                let asked = Instant::now();
                std::thread::yield_now();
                if watch.gives_up(&back_off, asked.elapsed(), Instant::now()) {
                    return; // back to rayon's own waiting
                }
            }
        }
    });
    f()
}

/// A kept worker's account of its slow yields since the start of the current stretch.
struct Watch {
    since: std::time::Instant,
    lost: std::time::Duration,
}

impl Watch {
    fn new(now: std::time::Instant) -> Self {
        Self {
            since: now,
            lost: std::time::Duration::ZERO,
        }
    }

    /// After a yield that `took` so long, ending at `now`: whether to stop busy-waiting. A stretch that
    /// reaches the window without losing its share starts a new one.
    fn gives_up(&mut self, p: &BackOff, took: std::time::Duration, now: std::time::Instant) -> bool {
        if took <= p.slow {
            return false;
        }
        self.lost += took;
        let stretch = now.saturating_duration_since(self.since);
        if stretch < p.window {
            return false;
        }
        if self.lost.as_secs_f64() >= p.share * stretch.as_secs_f64() {
            return true;
        }
        *self = Self::new(now);
        false
    }
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

    /// The keeper's rule: a host's occasional millisecond does not stop it, another program taking the core
    /// at every yield does, within the window.
    #[test]
    fn workers_back_off_when_yields_lose_half_the_time_not_for_a_hiccup() {
        let p = crate::BackOff {
            slow: Duration::from_micros(500),
            window: Duration::from_millis(20),
            share: 0.5,
        };
        let ms = |v: f64| Duration::from_secs_f64(v / 1e3);
        let t0 = std::time::Instant::now();
        let mut w = crate::Watch::new(t0);
        // Fast yields never count; a 1.4 ms one now and then does not stop it, in the window or past it.
        assert!(!w.gives_up(&p, ms(0.4), t0 + ms(1.0)));
        assert!(!w.gives_up(&p, ms(1.4), t0 + ms(5.0)));
        assert!(!w.gives_up(&p, ms(1.4), t0 + ms(25.0)));
        assert!(!w.gives_up(&p, ms(1.4), t0 + ms(30.0)), "a new stretch began at 25 ms");
        // Then every yield loses a 3 ms slice: it stops once the stretch reaches the window.
        let mut t = 30.0;
        let mut stopped = None;
        for _ in 0..20 {
            t += 3.1;
            if w.gives_up(&p, ms(3.0), t0 + ms(t)) {
                stopped = Some(t);
                break;
            }
        }
        let stopped = stopped.expect("a core lost at every yield stops the busy-waiting");
        assert!((45.0..=55.0).contains(&stopped), "stopped at {stopped} ms");
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
            // The other worker's ticks while f naps, kept awake with `back_off`.
            let ticks_kept = |back_off| {
                crate::keeping_awake_unless(back_off, || {
                    let before = cpu_ticks(other);
                    nap();
                    cpu_ticks(other) - before
                })
            };
            // Never backing off here: on a shared machine (tests running beside this one) the keeper would.
            let never = crate::BackOff {
                slow: Duration::MAX,
                window: Duration::ZERO,
                share: 1.0,
            };
            let during = ticks_kept(never);
            // Backing off at the first yield: no busy-waiting to speak of.
            let backed_off = ticks_kept(crate::BackOff {
                slow: Duration::ZERO,
                window: Duration::ZERO,
                share: 0.0,
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
            let unwound = std::panic::catch_unwind(|| crate::keeping_awake_unless(never, || panic!("in f")));
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
