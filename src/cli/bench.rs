//! `armory bench`: speed side by side with PyTorch, both measured in this run on this machine.
//!
//! Each figure is measured by a child process per side — `armory bench --worker …` or `armory train` for
//! ours, `benches/peer_torch.py` (embedded, run with the Python that has torch) for PyTorch's. The seed
//! net's figures come from one long-lived process per side and thread count, asked for short blocks in
//! turn (row by row, the order reversed every block), so that both sides see the same machine state even
//! when its speed drifts; the training runs alternate per round (ours then theirs, theirs then ours). The
//! table gives medians over every repetition, the ratio armory / PyTorch (< 1: we are faster) and the peak
//! resident memory of the training runs (each child's own, from `wait4`). No PyTorch figure is typed in
//! here: without torch the table has our column only, and says how to install it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use armory::config::RunConfig;
use armory::models::{pixelcnn, Arm, Mode, ModelConfig, Network, Reduction};
use armory::sample::{sample_cached, sample_naive, sample_predictive, Noise};
use armory::train::{Optimizer, OptimizerKind};
use candle_core::{DType, Device};

const PEER_SCRIPT: &str = include_str!("../../benches/peer_torch.py");

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interleaved rounds: every figure is measured this many times on each side — the seed net's in 4
    /// blocks a round, side by side, the training runs one a round, alternating which side goes first.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Timed repetitions of each seed-net figure per round (forward at batch 1: ten times as many).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Which figures: the seed net (steps, passes, sampling), training epochs and memory, the 28×28
    /// samplers (armory only), or all.
    #[arg(long, value_enum, default_value_t = Only::All)]
    only: Only,
    /// The Python with torch and numpy (default: $ARMORY_PYTHON, ./.venv-peer/bin/python, python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Measure armory alone.
    #[arg(long)]
    no_peer: bool,
    /// Internal: measure one group of figures in this process and print them as JSON lines.
    #[arg(long, hide = true, value_enum)]
    worker: Option<Worker>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    All,
    Seed,
    Epochs,
    Images,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Worker {
    Seed,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    armory::limits::check("--reps", a.reps as u128, 10_000u128)?;
    armory::limits::check("--rounds", a.rounds as u128, 100u128)?;
    if let Some(Worker::Seed) = a.worker {
        return seed_server();
    }
    let threads = rayon::current_num_threads();
    let peer = if a.no_peer { None } else { Peer::find(a.python.clone())? };
    println!("{}", header(threads, peer.as_ref()));
    let scratch = Scratch::new()?;
    let mut table = Table::default();
    if matches!(a.only, Only::All | Only::Seed) {
        // One long-lived process per side and thread count, asked for short blocks in turn: each row's
        // blocks of all four processes follow each other within seconds, so a drift of the machine's speed
        // (it has phases of minutes) lands on both sides alike instead of on one side's whole round.
        let mut servers = vec![];
        for t in if threads > 1 { vec![threads, 1] } else { vec![1] } {
            servers.push(Server::ours(&scratch, t)?);
            if let Some(p) = &peer {
                servers.push(Server::peer(p, &scratch, t)?);
            }
        }
        // Every process ready before any block is timed: PyTorch's import takes seconds of a core, and the
        // first blocks asked ran beside it (our two-thread train step at one thread's speed for 3 blocks).
        for s in &mut servers {
            s.ask("forward_b1", 1)?;
        }
        let blocks = a.rounds.max(1) * BLOCKS_PER_ROUND;
        for block in 0..blocks {
            for (row, per_round) in seed_rows(a.reps) {
                let reps = per_round.div_ceil(BLOCKS_PER_ROUND);
                let mut order: Vec<usize> = (0..servers.len()).collect();
                if !block.is_multiple_of(2) {
                    order.reverse();
                }
                for i in order {
                    let s = &mut servers[i];
                    if s.serves(row, threads) {
                        let before = Steal::now();
                        let out = s.ask(row, reps)?;
                        if s.side == Side::Ours && row == "train_b64" {
                            table.add_steal(s.threads, before, Steal::now());
                        }
                        table.add_rows(s.side, s.threads, &out);
                    }
                }
            }
            eprint!("\rseed net: block {} of {blocks} done", block + 1);
        }
        eprintln!();
        drop(servers);
        table.print_seed(threads, peer.is_some());
    }
    if matches!(a.only, Only::All | Only::Epochs) {
        let before = Steal::now();
        for round in 0..a.rounds.max(1) {
            for job in EPOCH_JOBS {
                let ours = |table: &mut Table| -> anyhow::Result<()> {
                    let (ms, rss) = job.run_ours(&scratch, threads, round)?;
                    table.add_epochs(Side::Ours, job.name, ms, rss);
                    Ok(())
                };
                let theirs = |table: &mut Table| -> anyhow::Result<()> {
                    if let Some(p) = &peer {
                        let (ms, rss) = job.run_peer(p, &scratch, threads)?;
                        table.add_epochs(Side::Peer, job.name, ms, rss);
                    }
                    Ok(())
                };
                in_order(round, &mut table, ours, theirs)?;
            }
            eprint!("\rtraining epochs: round {} of {} done", round + 1, a.rounds.max(1));
        }
        eprintln!();
        table.steal_epochs.add(before, Steal::now());
        table.print_epochs(threads, peer.is_some());
    }
    if matches!(a.only, Only::All | Only::Images) {
        armory::keeping_workers_awake(|| images(a.reps))?; // no child process runs beside it
    }
    if peer.is_none() && !a.no_peer {
        println!("\n{}", Peer::HOW_TO_INSTALL);
    }
    Ok(())
}

/// Ours then theirs in even rounds, theirs then ours in odd ones.
fn in_order(
    round: usize,
    table: &mut Table,
    ours: impl FnOnce(&mut Table) -> anyhow::Result<()>,
    theirs: impl FnOnce(&mut Table) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if round.is_multiple_of(2) {
        ours(table)?;
        theirs(table)
    } else {
        theirs(table)?;
        ours(table)
    }
}

// ---- the machine ------------------------------------------------------------------------------------------

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The widest SIMD level of this CPU, and the one our kernels use (the `avx512` feature, on by default,
/// lets gemm use AVX-512 where the CPU has it).
pub fn simd_levels() -> (&'static str, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        let cpu = if is_x86_feature_detected!("avx512f") {
            "AVX-512"
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            "AVX2"
        } else {
            "SSE"
        };
        let ours = match cpu {
            "AVX-512" if cfg!(feature = "avx512") => "AVX-512",
            "AVX-512" => "AVX2",
            other => other,
        };
        (cpu, ours)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        ("non-x86", "non-x86")
    }
}

fn today() -> String {
    // SAFETY: time(NULL) and gmtime_r with a valid out-pointer.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::gmtime_r(&t, &mut tm);
        format!("{:04}-{:02}-{:02}", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday)
    }
}

fn header(threads: usize, peer: Option<&Peer>) -> String {
    let (cpu_simd, ours) = simd_levels();
    let mut s = format!(
        "armory bench, {}: {} ({cpu_simd}), {} cores; armory kernels {ours}, {threads} threads",
        today(),
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    match peer {
        Some(p) => s.push_str(&format!(
            "; PyTorch {} (kernels {}{}; {}), {threads} threads",
            p.version,
            p.isa,
            if Peer::isa_env().is_empty() {
                ""
            } else {
                ", held to AVX2 like ours"
            },
            p.python.display(),
        )),
        None => s.push_str("; no PyTorch peer"),
    }
    s
}

// ---- the peer ---------------------------------------------------------------------------------------------

struct Peer {
    python: PathBuf,
    version: String,
    /// What PyTorch reports it runs its kernels with (`torch.backends.cpu.get_cpu_capability()`).
    isa: String,
}

impl Peer {
    const HOW_TO_INSTALL: &'static str =
        "PyTorch was not found, so only armory's figures are shown. To measure it side by side:\n  \
         python3 -m venv .venv-peer && .venv-peer/bin/pip install torch numpy   # a few minutes\n  \
         armory bench                      # finds ./.venv-peer; or --python PATH, or ARMORY_PYTHON=PATH";

    /// The first interpreter that imports torch and numpy.
    fn find(given: Option<PathBuf>) -> anyhow::Result<Option<Peer>> {
        let candidates: Vec<PathBuf> = match given {
            Some(p) => vec![p],
            None => std::env::var_os("ARMORY_PYTHON")
                .map(PathBuf::from)
                .into_iter()
                .chain([PathBuf::from(".venv-peer/bin/python"), PathBuf::from("python3")])
                .collect(),
        };
        let explicit = candidates.len() == 1;
        for python in candidates {
            let out = Command::new(&python)
                .args([
                    "-c",
                    "import torch, numpy; print(torch.__version__, torch.backends.cpu.get_cpu_capability())",
                ])
                .envs(Peer::isa_env())
                .stderr(Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => {
                    let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
                    let (version, isa) = text.split_once(' ').unwrap_or((&text, "?"));
                    let (version, isa) = (version.to_string(), isa.to_string());
                    return Ok(Some(Peer { python, version, isa }));
                }
                _ if explicit => bail!("--python {}: cannot import torch and numpy with it", python.display()),
                _ => {}
            }
        }
        Ok(None)
    }

    /// With our kernels held to AVX2 on an AVX-512 CPU, PyTorch is held there too.
    fn isa_env() -> Vec<(&'static str, &'static str)> {
        match simd_levels() {
            ("AVX-512", "AVX2") => vec![("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2")],
            _ => vec![],
        }
    }

    fn command(&self, scratch: &Scratch, threads: usize) -> Command {
        let mut c = Command::new(&self.python);
        c.arg(&scratch.script);
        c.envs(Peer::isa_env());
        c.env("OMP_NUM_THREADS", threads.to_string());
        c.args([
            "--digits",
            &scratch.digits.to_string_lossy(),
            "--threads",
            &threads.to_string(),
        ]);
        // The subcommand follows the options' values; argparse takes either order.
        c
    }
}

/// A temporary folder with the peer script, the digits file and the training runs; removed at the end.
struct Scratch {
    dir: PathBuf,
    script: PathBuf,
    digits: PathBuf,
}

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("armory-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let script = dir.join("peer_torch.py");
        let digits = dir.join("digits.csv.gz");
        std::fs::write(&script, PEER_SCRIPT).with_context(|| format!("writing {}", script.display()))?;
        std::fs::write(&digits, armory::data::digits::EMBEDDED)
            .with_context(|| format!("writing {}", digits.display()))?;
        Ok(Self { dir, script, digits })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a child to the end; its standard output and its peak resident memory in bytes.
fn run_child(mut cmd: Command) -> anyhow::Result<(String, u64)> {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let mut err_pipe = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let mut out = String::new();
    child.stdout.take().expect("piped").read_to_string(&mut out)?;
    let stderr = err_reader.join().unwrap_or_default();
    let (status, rss) = wait_with_rusage(&mut child)?;
    if !status {
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{what} failed:\n{}", tail.join("\n"));
    }
    Ok((out, rss))
}

/// Waits for the child and reads its peak resident set size (Linux reports it in KiB).
fn wait_with_rusage(child: &mut std::process::Child) -> anyhow::Result<(bool, u64)> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 on our own child with valid out-pointers; std never waits for it afterwards.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        return Err(std::io::Error::last_os_error()).context("waiting for a benchmark process");
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((ok, ru.ru_maxrss.max(0) as u64 * 1024))
}

// ---- the seed net's figures: servers asked for blocks in turn -----------------------------------------------

/// Each round of the seed figures is asked for in this many blocks per process.
const BLOCKS_PER_ROUND: usize = 4;

/// The seed net's rows and their timed calls per round, `reps` given: ten times as many at batch 1, a
/// quarter for the samplers that make 64 (or 13) full passes.
fn seed_rows(reps: usize) -> [(&'static str, usize); 6] {
    let quarter = reps.div_ceil(4);
    [
        ("train_b64", reps),
        ("forward_b64", reps),
        ("forward_b1", reps * 10),
        ("naive_16", quarter),
        ("cached_16", reps),
        ("predictive_16", quarter),
    ]
}

/// A long-lived process of one side at one thread count, answering "ROW REPS" lines with a JSON line.
struct Server {
    side: Side,
    threads: usize,
    what: String,
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    stderr: PathBuf,
}

impl Server {
    fn ours(scratch: &Scratch, threads: usize) -> anyhow::Result<Self> {
        let mut c = Command::new(std::env::current_exe()?);
        c.args(["--threads", &threads.to_string(), "bench", "--worker", "seed"]);
        Self::start(c, Side::Ours, threads, scratch)
    }

    fn peer(peer: &Peer, scratch: &Scratch, threads: usize) -> anyhow::Result<Self> {
        let mut c = peer.command(scratch, threads);
        c.args(["seed", "--serve"]);
        Self::start(c, Side::Peer, threads, scratch)
    }

    fn start(mut c: Command, side: Side, threads: usize, scratch: &Scratch) -> anyhow::Result<Self> {
        let what = format!("{c:?}");
        let stderr = scratch.dir.join(format!("{side:?}-{threads}.stderr"));
        let err = std::fs::File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(err);
        let mut child = c.spawn().with_context(|| format!("starting {what}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        Ok(Self {
            side,
            threads,
            what,
            child,
            stdin,
            stdout,
            stderr,
        })
    }

    /// Our process at the full thread count gives every row; the peer has no cached or predictive sampler;
    /// one thread is measured for the train step and the forward pass at batch 64.
    fn serves(&self, row: &str, threads: usize) -> bool {
        let peer_has = !matches!(row, "cached_16" | "predictive_16");
        let at_one = matches!(row, "train_b64" | "forward_b64");
        (self.side == Side::Ours || peer_has) && (self.threads == threads || at_one)
    }

    /// One block: the reply's lines up to and including the row's own.
    fn ask(&mut self, row: &str, reps: usize) -> anyhow::Result<String> {
        use std::io::{BufRead, Write};
        let sent = writeln!(self.stdin, "{row} {reps}").and_then(|_| self.stdin.flush());
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            let n = if sent.is_ok() {
                self.stdout.read_line(&mut line)?
            } else {
                0
            };
            if n == 0 {
                let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                let tail: Vec<&str> = err.lines().rev().take(8).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("{} stopped:\n{}", self.what, tail.join("\n"));
            }
            reply.push_str(&line);
            if line.contains("\"row\"") {
                return Ok(reply);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- training epochs --------------------------------------------------------------------------------------

/// One training run, the same on both sides: `armory train` against the peer's epoch loop.
struct EpochJob {
    name: &'static str,
    slug: &'static str,  // the run's directory name
    model: &'static str, // armory's shipped config
    ours_extra: &'static [&'static str],
    peer_args: &'static [&'static str],
    epochs: usize,
}

const EPOCH_JOBS: &[EpochJob] = &[
    EpochJob {
        name: "seed-arm, batch 64",
        slug: "seed-b64",
        model: "seed-arm",
        ours_extra: &[],
        peer_args: &["--model", "seed"],
        epochs: 3,
    },
    EpochJob {
        name: "gated-pixelcnn (5 layers), batch 64",
        slug: "gated-b64",
        model: "gated-pixelcnn",
        ours_extra: &[],
        peer_args: &["--model", "gated", "--layers", "5", "--batch", "64"],
        epochs: 3,
    },
    EpochJob {
        name: "gated-pixelcnn, 8 layers, batch 4",
        slug: "gated8-b4",
        model: "gated-pixelcnn",
        ours_extra: &["--layers", "8", "--batch-size", "4"],
        peer_args: &["--model", "gated", "--layers", "8", "--batch", "4"],
        epochs: 2,
    },
    EpochJob {
        name: "gated-pixelcnn-mixture (shipped: batch 4, EMA)",
        slug: "mixture",
        model: "gated-pixelcnn-mixture",
        ours_extra: &[],
        peer_args: &[
            "--model",
            "gated",
            "--layers",
            "8",
            "--batch",
            "4",
            "--mixture",
            "5",
            "--vertical-residual",
            "--ema",
            "0.995",
        ],
        epochs: 2,
    },
];

impl EpochJob {
    fn run_ours(&self, scratch: &Scratch, threads: usize, round: usize) -> anyhow::Result<(Vec<f64>, u64)> {
        let runs = scratch.dir.join("runs");
        let name = format!("{}-{round}", self.slug);
        let mut c = Command::new(std::env::current_exe()?);
        c.args([
            "--threads",
            &threads.to_string(),
            "train",
            "--model",
            self.model,
            "--quiet",
        ]);
        c.args([
            "--epochs",
            &self.epochs.to_string(),
            "--patience",
            "1000",
            "--name",
            &name,
        ]);
        c.arg("--runs-dir").arg(&runs);
        c.args(self.ours_extra);
        let (_, rss) = run_child(c)?;
        let rows = armory::train::metrics::read_csv(&runs.join(&name).join("metrics.csv"))?;
        Ok((rows.iter().map(|r| r.epoch_secs * 1e3).collect(), rss))
    }

    fn run_peer(&self, peer: &Peer, scratch: &Scratch, threads: usize) -> anyhow::Result<(Vec<f64>, u64)> {
        let mut c = peer.command(scratch, threads);
        c.args(["epochs", "--epochs", &self.epochs.to_string()]);
        c.args(self.peer_args);
        let (out, rss) = run_child(c)?;
        let rows = parse_rows(&out)?;
        let ms = rows
            .into_iter()
            .find(|(r, _)| r == "epoch")
            .map(|(_, v)| v)
            .unwrap_or_default();
        Ok((ms, rss))
    }
}

// ---- the table --------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Peer,
}

#[derive(Default)]
struct Table {
    /// (side, threads, row) → every repetition, ms.
    seed: Vec<(Side, usize, String, Vec<f64>)>,
    /// (side, job) → epoch times (ms, first epoch of each run left out when there are more) and peak RSS.
    epochs: Vec<(Side, &'static str, Vec<f64>, u64)>,
    /// Predictive sampling's ARM calls.
    calls: Option<f64>,
    /// The host's steal during our train-step blocks, by thread count, and during the training runs.
    steal_train: Vec<(usize, Steal)>,
    steal_epochs: Steal,
}

/// CPU time the hypervisor gave to others while this VM wanted it ("steal", from `/proc/stat`), against all
/// the CPUs' time, summed over intervals: reported beside the figures it distorts. (Seen on a 2-vCPU VM: in
/// a phase of 20 % steal the two-thread train step took 167 ms against 108. Not everything the host does
/// shows here: two vCPUs put on one core's two hyperthreads would lose the second core without any steal.)
#[derive(Default, Clone, Copy)]
struct Steal {
    steal: u64,
    all: u64,
}

impl Steal {
    /// (steal, all) clock ticks so far over every CPU; None where there is no `/proc/stat` (not Linux).
    fn now() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields = stat.lines().next()?.strip_prefix("cpu ")?;
        // user nice system idle iowait irq softirq steal (guest time is counted within user)
        let v: Vec<u64> = fields
            .split_whitespace()
            .take(8)
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        (v.len() == 8).then(|| (v[7], v.iter().sum()))
    }

    /// Adds the interval between two readings of [`Steal::now`].
    fn add(&mut self, before: Option<(u64, u64)>, after: Option<(u64, u64)>) {
        if let (Some((s0, a0)), Some((s1, a1))) = (before, after) {
            self.steal += s1.saturating_sub(s0);
            self.all += a1.saturating_sub(a0);
        }
    }

    /// The share stolen, in per cent, if anything was measured.
    fn percent(&self) -> Option<f64> {
        (self.all > 0).then(|| 100.0 * self.steal as f64 / self.all as f64)
    }
}

fn parse_rows(out: &str) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
    let mut rows = vec![];
    for line in out.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("benchmark output {line}"))?;
        if let (Some(row), Some(ms)) = (v["row"].as_str(), v["ms"].as_array()) {
            rows.push((row.to_string(), ms.iter().filter_map(|x| x.as_f64()).collect()));
        }
    }
    Ok(rows)
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn fmt_ms(ms: Option<f64>) -> String {
    match ms {
        None => "—".into(),
        Some(ms) if ms >= 1000.0 => format!("{:.2} s", ms / 1e3),
        Some(ms) if ms >= 10.0 => format!("{ms:.1} ms"),
        Some(ms) => format!("{ms:.3} ms"),
    }
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        // Three decimals: a row at a target's mark (0.70×) is then settled by what is printed.
        (Some(a), Some(b)) if b > 0.0 => format!("{:.3}×", a / b),
        _ => "—".into(),
    }
}

impl Table {
    fn add_rows(&mut self, side: Side, threads: usize, out: &str) {
        for line in out.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if let Some(c) = v["calls"].as_f64() {
                    self.calls = Some(c);
                }
            }
        }
        for (row, ms) in parse_rows(out).unwrap_or_default() {
            match self
                .seed
                .iter_mut()
                .find(|(s, t, r, _)| *s == side && *t == threads && *r == row)
            {
                Some(e) => e.3.extend(ms),
                None => self.seed.push((side, threads, row, ms)),
            }
        }
    }

    fn add_steal(&mut self, threads: usize, before: Option<(u64, u64)>, after: Option<(u64, u64)>) {
        match self.steal_train.iter_mut().find(|(t, _)| *t == threads) {
            Some((_, st)) => st.add(before, after),
            None => {
                let mut st = Steal::default();
                st.add(before, after);
                self.steal_train.push((threads, st));
            }
        }
    }

    fn add_epochs(&mut self, side: Side, job: &'static str, ms: Vec<f64>, rss: u64) {
        // The first epoch warms up allocators and caches on both sides: left out when there are more.
        let ms = if ms.len() > 1 { ms[1..].to_vec() } else { ms };
        match self.epochs.iter_mut().find(|(s, j, _, _)| *s == side && *j == job) {
            Some(e) => {
                e.2.extend(ms);
                e.3 = e.3.max(rss);
            }
            None => self.epochs.push((side, job, ms, rss)),
        }
    }

    fn seed_median(&self, side: Side, threads: usize, row: &str) -> Option<f64> {
        self.seed
            .iter()
            .find(|(s, t, r, _)| *s == side && *t == threads && r == row)
            .and_then(|e| median(&e.3))
    }

    fn print_seed(&self, threads: usize, with_peer: bool) {
        println!("\nseed net (1→256→256→256→17, kernel 7, 950,545 parameters, 64 positions), medians:");
        println!("{:<40} {:>12} {:>12} {:>8}", "", "armory", "PyTorch", "ratio");
        let rows = [
            ("train_b64", "train step, batch 64"),
            ("forward_b64", "forward, batch 64"),
            ("forward_b1", "forward, batch 1"),
            ("naive_16", "naive sampling, 16 images"),
            ("cached_16", "cached sampling, 16 images"),
            ("predictive_16", "predictive sampling, 16 images"),
        ];
        for t in [threads, 1] {
            for (key, name) in rows {
                if t == 1 && !matches!(key, "train_b64" | "forward_b64") {
                    continue;
                }
                let (a, b) = (
                    self.seed_median(Side::Ours, t, key),
                    self.seed_median(Side::Peer, t, key),
                );
                let label = format!("{name}, {t} thread{}", if t == 1 { "" } else { "s" });
                println!("{label:<40} {:>12} {:>12} {:>8}", fmt_ms(a), fmt_ms(b), ratio(a, b));
            }
            if threads == 1 {
                break;
            }
        }
        let speedup = |side| {
            let one = self.seed_median(side, 1, "train_b64")?;
            Some(one / self.seed_median(side, threads, "train_b64")?)
        };
        if threads > 1 {
            let show = |s: Option<f64>| s.map_or("—".into(), |v| format!("{v:.3}×"));
            println!(
                "{:<40} {:>12} {:>12}",
                format!("{threads} threads over 1, train step"),
                show(speedup(Side::Ours)),
                show(speedup(Side::Peer))
            );
        }
        let steal = |t: usize| {
            let st = self.steal_train.iter().find(|(n, _)| *n == t)?.1;
            st.percent()
        };
        if let (true, Some(many), Some(one)) = (threads > 1, steal(threads), steal(1)) {
            println!(
                "(steal time, /proc/stat: the host took {many:.1} % of this machine's CPU time during our \
                 {threads}-thread train-step blocks, {one:.1} % during the 1-thread ones)"
            );
        }
        if let Some(calls) = self.calls {
            println!("(predictive sampling took {calls:.0} ARM calls for 64 positions, random weights)");
        }
        let naive_peer = self.seed_median(Side::Peer, threads, "naive_16");
        let cached = self.seed_median(Side::Ours, threads, "cached_16");
        if let (true, Some(p), Some(c)) = (with_peer, naive_peer, cached) {
            println!(
                "(cached sampling is {:.0}× faster than PyTorch's naive sampler; same samples as our naive one)",
                p / c
            );
        }
    }

    fn print_epochs(&self, threads: usize, with_peer: bool) {
        println!("\ntraining on the digits (`armory train`; one epoch = 1,000 training images + the 350-image validation pass), {threads} threads, medians:");
        println!(
            "{:<48} {:>10} {:>10} {:>8}",
            "seconds per epoch", "armory", "PyTorch", "ratio"
        );
        let get = |side, job| self.epochs.iter().find(|(s, j, _, _)| *s == side && *j == job);
        for job in EPOCH_JOBS {
            let a = get(Side::Ours, job.name).and_then(|e| median(&e.2));
            let b = get(Side::Peer, job.name).and_then(|e| median(&e.2));
            println!(
                "{:<48} {:>10} {:>10} {:>8}",
                job.name,
                fmt_ms(a),
                fmt_ms(b),
                ratio(a, b)
            );
        }
        println!(
            "{:<48} {:>10} {:>10} {:>8}",
            "peak resident memory of the run", "armory", "PyTorch", "ratio"
        );
        for job in EPOCH_JOBS {
            let a = get(Side::Ours, job.name).map(|e| e.3 as f64);
            let b = get(Side::Peer, job.name).map(|e| e.3 as f64);
            let mb = |v: Option<f64>| v.map_or("—".into(), |v| format!("{:.0} MB", v / 1e6));
            println!("{:<48} {:>10} {:>10} {:>8}", job.name, mb(a), mb(b), ratio(a, b));
        }
        if let Some(p) = self.steal_epochs.percent() {
            println!(
                "(steal time, /proc/stat: the host took {p:.1} % of this machine's CPU time during the training runs)"
            );
        }
        if !with_peer {
            println!("(armory alone: no PyTorch peer)");
        }
    }
}

// ---- our side of the seed figures, in this process ----------------------------------------------------------

/// Wall time of `f` in milliseconds for each of `reps` calls, after `warm_up` calls.
fn times_ms(warm_up: usize, reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Vec<f64>> {
    for _ in 0..warm_up {
        f()?;
    }
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    Ok(t)
}

/// The seed net's figures, measured as the peer measures them: the train step (forward, backward, Adamax),
/// the forward pass at batch 64 and 1, and the samplers for 16 images. A server: each line of standard
/// input ("ROW REPS") asks for one block — REPS timed calls after one warm-up call (two the first time a
/// row runs), with the workers kept awake through it as `armory train` keeps them through its steps and
/// asleep between blocks, while the other processes run theirs — answered with one JSON line.
fn seed_server() -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let cfg = RunConfig::seed();
    let arm = Arm::new(&cfg.model, 0, DType::F32, &Device::Cpu)?;
    let splits = cfg.data.load()?;
    let x64 = splits.train.batch(&(0..64).collect::<Vec<_>>(), arm.device())?;
    let x1 = splits.train.batch(&[0], arm.device())?;
    let mut opt = Optimizer::new(OptimizerKind::Adamax, 1e-3, arm.params().vars())?;
    let noise = Noise::new(16, 64, 0);
    let forward = |x: &candle_core::Tensor| -> anyhow::Result<()> {
        arm.forward(x, Mode::Eval)?.to_vec3::<f32>()?;
        Ok(())
    };
    let mut seen = std::collections::HashSet::new();
    let mut calls = 0;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let Some((row, reps)) = line.split_once(' ') else {
            continue;
        };
        let reps: usize = reps.trim().parse().with_context(|| format!("bench worker: {line:?}"))?;
        let warm_up = if seen.insert(row.to_string()) { 2 } else { 1 };
        let ms = armory::keeping_workers_awake(|| match row {
            "train_b64" => times_ms(warm_up, reps, || {
                let loss = arm.loss(&x64, Reduction::Mean, Mode::Train { seed: 0 })?;
                opt.step(&loss.backward()?)?;
                Ok(())
            }),
            "forward_b64" => times_ms(warm_up, reps, || forward(&x64)),
            "forward_b1" => times_ms(warm_up, reps, || forward(&x1)),
            "naive_16" => times_ms(warm_up, reps, || {
                sample_naive(&arm, &noise, 1.0, None)?;
                Ok(())
            }),
            "cached_16" => times_ms(warm_up, reps, || {
                sample_cached(&arm, &noise, 1.0, None)?;
                Ok(())
            }),
            "predictive_16" => times_ms(warm_up, reps, || {
                calls = sample_predictive(&arm, &noise, 1.0, None)?.1;
                Ok(())
            }),
            other => bail!("bench worker: no row {other:?}"),
        })?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::json!({ "row": row, "ms": ms, "calls": calls }))?;
        out.flush()?;
    }
    Ok(())
}

/// Naive against cached sampling of 16 binary 28×28 images (binarized MNIST's shape), for the gated PixelCNN
/// of `configs/binarized-mnist.toml` and a PixelCNN of about the same size; random weights (the time does
/// not depend on them). armory only: the peer has no cached sampler.
fn images(reps: usize) -> anyhow::Result<()> {
    let gated = RunConfig::parse(
        include_str!("../../configs/binarized-mnist.toml"),
        Path::new("configs/binarized-mnist.toml"),
    )?
    .model;
    let net = pixelcnn::Config {
        hidden: 64,
        first_kernel: 7,
        blocks: 4,
        kernel: 3,
        head_hidden: 64,
    };
    let pixelcnn = ModelConfig::image(Network::Pixelcnn(net), 2, 28, 28, 1);
    println!(
        "\n28×28 binary images, 16 at a time, {} threads (armory only, random weights)",
        rayon::current_num_threads()
    );
    println!("{:<44} {:>10} {:>11} {:>9}", "", "naive ms", "cached ms", "speed-up");
    for (name, cfg) in [
        ("gated PixelCNN (32 ch, 7×7 + 4 layers)", gated),
        ("PixelCNN (64 ch, 7×7 + 4 blocks)", pixelcnn),
    ] {
        let arm = Arm::new(&cfg, 0, DType::F32, &Device::Cpu)?;
        let noise = Noise::new(16, arm.dim(), 0);
        let mut samples = (vec![], vec![]);
        let s = Instant::now();
        samples.0 = sample_naive(&arm, &noise, 1.0, None)?; // 784 full passes: one timed run is plenty
        let naive = s.elapsed().as_secs_f64() * 1e3;
        let cached = median(&times_ms(2, reps.div_ceil(4), || {
            samples.1 = sample_cached(&arm, &noise, 1.0, None)?;
            Ok(())
        })?)
        .unwrap_or(f64::NAN);
        anyhow::ensure!(samples.0 == samples.1, "{name}: cached samples differ from naive ones");
        let p = arm.params().num_params();
        println!(
            "{:<44} {naive:>10.0} {cached:>11.1} {:>8.0}×",
            format!("{name}, {p} params"),
            naive / cached
        );
    }
    println!("(same samples from both: checked)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Steal;

    /// Steal adds up over intervals, both readings needed; its share is of all the CPUs' time.
    #[test]
    fn steal_adds_up_over_intervals() {
        let mut s = Steal::default();
        assert_eq!(s.percent(), None);
        s.add(Some((10, 1_000)), Some((30, 1_080)));
        s.add(None, Some((99, 9_999)));
        s.add(Some((30, 1_080)), Some((35, 1_100)));
        assert_eq!((s.steal, s.all), (25, 100));
        assert_eq!(s.percent(), Some(25.0));
        #[cfg(target_os = "linux")]
        {
            let (steal, all) = Steal::now().expect("/proc/stat's cpu line");
            assert!(all > 0 && steal <= all);
        }
    }
}
