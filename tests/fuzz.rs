//! The fuzz suite (issue 17): arbitrary bytes, and mutations of small valid files (truncated, bytes flipped,
//! set, inserted or removed, numbers in text replaced by extreme ones), fed to every reader — the digits CSV,
//! IDX (plain and gzipped), npy, a PNG folder, CIFAR-10 batches, safetensors checkpoints, TOML configs, resume
//! files and metrics.csv. Each input must give `Ok` or an `Err` with a message: no panic, no abort, and no
//! large allocation (the inputs are tiny and every size they decide is checked against `armory::limits`).
//!
//! Deterministic: each target runs a fixed number of cases from a fixed seed, so CI sees the same inputs every
//! time (about 7,000 inputs in all, a few seconds). A longer local run:
//! `FUZZ_CASES=100000 cargo test --release --test fuzz -- --nocapture` (cases per target, scaled down for the
//! slow ones; `PROPTEST_CASES` works too), with `FUZZ_SEED=N` for other inputs.

use std::path::Path;

use armory::config::{RunConfig, NAMED};
use armory::data::{cifar, digits, idx, npy, png_folder};
use armory::models::Arm;
use armory::train::{self, metrics, RunDir};
use candle_core::{DType, Device};
use proptest::prelude::*;

mod common;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// Cases per target: `FUZZ_CASES` (or `PROPTEST_CASES`) or `default`; a `weight` below 1 scales slow targets
/// down.
fn cases(default: u32, weight: f64) -> u32 {
    std::env::var("FUZZ_CASES")
        .or_else(|_| std::env::var("PROPTEST_CASES"))
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default, |n| ((n as f64 * weight) as u32).max(1))
}

/// A runner with a fixed seed (per target, so adding a target does not change the others' inputs).
fn runner(target: &str, cases: u32) -> TestRunner {
    let base: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(17);
    let mut seed = [0u8; 32];
    let h = target.bytes().fold(base ^ 0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    seed[..8].copy_from_slice(&h.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed))
}

/// One change to a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    /// Replace the i-th run of ASCII digits (a number in a text header) with an extreme value.
    Number(Index, &'static str),
}

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "7",
    "255",
    "65537",
    "4000000000",
    "18446744073709551615",
    "99999999999999999999999",
    "-1",
    "1e308",
    "nan",
    "",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<Index>(), 1usize..32).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<Index>(), prop::sample::select(NUMBERS)).prop_map(|(i, n)| Mutation::Number(i, n)),
    ]
}

fn apply(mut b: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
    match m {
        Mutation::Truncate(i) => b.truncate(at(i, b.len() + 1)),
        Mutation::Flip(i, bit) if !b.is_empty() => {
            let p = at(i, b.len());
            b[p] ^= 1 << bit;
        }
        Mutation::Set(i, v) if !b.is_empty() => {
            let p = at(i, b.len());
            b[p] = *v;
        }
        Mutation::Insert(i, v) => {
            let p = at(i, b.len() + 1);
            b.splice(p..p, v.iter().copied());
        }
        Mutation::Remove(i, n) if !b.is_empty() => {
            let p = at(i, b.len());
            b.drain(p..(p + n).min(b.len()));
        }
        Mutation::Number(i, n) => {
            let runs: Vec<(usize, usize)> = digit_runs(&b);
            if !runs.is_empty() {
                let (s, e) = runs[at(i, runs.len())];
                b.splice(s..e, n.bytes());
            }
        }
        _ => {}
    }
    b
}

/// Where the runs of ASCII digits are.
fn digit_runs(b: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = vec![];
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            runs.push((s, i));
        } else {
            i += 1;
        }
    }
    runs
}

/// Arbitrary bytes, or one of `seeds` with up to 4 mutations.
fn input(seeds: Vec<Vec<u8>>, max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..max_len),
        4 => (0..n, prop::collection::vec(mutation(), 1..5))
            .prop_map(move |(k, ms)| ms.iter().fold(seeds[k].clone(), apply)),
    ]
}

/// Runs `target` on inputs from `strategy`: every `Err` must carry a message; a panic fails the case.
fn fuzz<S: Strategy>(name: &str, cases: u32, strategy: S, target: impl Fn(S::Value) -> Result<(), String>)
where
    S::Value: std::fmt::Debug,
{
    let mut r = runner(name, cases);
    let (ran, failed) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    let result = r.run(&strategy, |v| {
        ran.set(ran.get() + 1);
        match target(v) {
            Ok(()) => Ok(()),
            Err(msg) if msg.trim().is_empty() => Err(TestCaseError::fail("an error without a message")),
            Err(_) => {
                failed.set(failed.get() + 1);
                Ok(())
            }
        }
    });
    if let Err(e) = result {
        panic!("fuzz target `{name}`: {e}");
    }
    assert!(
        ran.get() >= cases,
        "fuzz target `{name}` ran {} of {cases} cases",
        ran.get()
    );
    eprintln!(
        "fuzz target `{name}`: {} cases, {} refused with an error",
        ran.get(),
        failed.get()
    );
}

fn err_text<T>(r: armory::Result<T>) -> Result<(), String> {
    r.map(|_| ()).map_err(|e| e.to_string())
}

/// Several readers on one input: an error without a message from any of them fails the case.
fn each(results: Vec<Result<(), String>>) -> Result<(), String> {
    if results.iter().any(|r| r.as_ref().is_err_and(|m| m.trim().is_empty())) {
        return Err(String::new());
    }
    results.into_iter().collect::<Result<Vec<()>, String>>().map(|_| ())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn digits_csv() -> Vec<u8> {
    (0..3)
        .map(|i| format!("{}{},{}\n", "0,".repeat(63), 16 - i, i))
        .collect::<String>()
        .into_bytes()
}

fn idx_file(magic: u32, dims: &[u32]) -> Vec<u8> {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    let n: u32 = dims.iter().product();
    b.extend((0..n).map(|i| (i * 37) as u8));
    b
}

fn npy_file(shape: &str, v2: bool, data: &[u8]) -> Vec<u8> {
    let mut h = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
    let pre = if v2 { 12 } else { 10 };
    while !(pre + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY".to_vec();
    if v2 {
        b.extend_from_slice(&[2, 0]);
        b.extend_from_slice(&(h.len() as u32).to_le_bytes());
    } else {
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    }
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    b
}

fn png_file(w: u32, h: u32, rgb: bool) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let n = (w * h * if rgb { 3 } else { 1 }) as usize;
    let raw: Vec<u8> = (0..n).map(|i| (i * 29) as u8).collect();
    let ct = if rgb {
        image::ExtendedColorType::Rgb8
    } else {
        image::ExtendedColorType::L8
    };
    image::write_buffer_with_format(&mut buf, &raw, w, h, ct, image::ImageFormat::Png).unwrap();
    buf.into_inner()
}

#[test]
fn digits_csv_reader() {
    let seeds = vec![
        digits_csv(),
        gzip(&digits_csv()),
        b"\xef\xbb\xbf".iter().copied().chain(digits_csv()).collect(),
    ];
    fuzz("csv", cases(2000, 1.0), input(seeds, 400), |b| {
        err_text(digits::parse(&b, Path::new("fuzz.csv")))
    });
}

#[test]
fn idx_reader_plain_and_gzipped() {
    let images = idx_file(idx::IMAGES_MAGIC, &[2, 3, 2]);
    let labels = idx_file(idx::LABELS_MAGIC, &[5]);
    let seeds = vec![images.clone(), labels.clone(), gzip(&images), gzip(&labels)];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz-images-idx3-ubyte.gz");
    fuzz("idx", cases(1000, 0.5), input(seeds, 64), |b| {
        let p = Path::new("fuzz-idx");
        let a = err_text(idx::parse(&b, idx::IMAGES_MAGIC, p));
        let l = err_text(idx::parse(&b, idx::LABELS_MAGIC, p));
        std::fs::write(&path, &b).unwrap();
        let fi = err_text(idx::images(&path));
        let fl = err_text(idx::labels(&path));
        each(vec![a, l, fi, fl])
    });
}

#[test]
fn npy_reader() {
    let gray = npy_file("(2, 2, 3)", false, &[9; 12]);
    let rgb = npy_file("(1, 1, 2, 3)", true, &[1, 2, 3, 4, 5, 6]);
    let seeds = vec![gray.clone(), rgb, gzip(&gray)];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.npy");
    fuzz("npy", cases(1000, 0.5), input(seeds, 200), |b| {
        let a = err_text(npy::parse(&b, Path::new("fuzz.npy")));
        std::fs::write(&path, &b).unwrap();
        each(vec![a, err_text(npy::npy_images(&path))])
    });
    // A header nested far deeper than NumPy ever writes: an error, not a stack overflow.
    for depth in [9, 1000, 30_000] {
        let shape = format!("{}{}", "(".repeat(depth), ")".repeat(depth));
        let e = npy::parse(&npy_file(&shape, true, &[]), Path::new("deep.npy"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("deep.npy") && e.contains("nested deeper than 8"), "{e}");
    }
}

#[test]
fn png_folder_reader() {
    let seeds = vec![png_file(3, 2, false), png_file(2, 2, true)];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.png"), png_file(3, 2, false)).unwrap();
    fuzz("png", cases(500, 0.25), input(seeds, 200), |b| {
        std::fs::write(dir.path().join("b.png"), &b).unwrap();
        err_text(png_folder::png_folder(dir.path()))
    });
}

#[test]
fn cifar_reader() {
    let mut rec = vec![3u8];
    rec.extend((0..cifar::PIXELS).map(|i| (i * 7) as u8));
    let two: Vec<u8> = rec.iter().chain(&rec).copied().collect();
    fuzz("cifar", cases(500, 0.5), input(vec![rec, two], 64), |b| {
        err_text(cifar::parse(&b, Path::new("fuzz.bin")))
    });
}

/// A tiny seed-like config and data for the checkpoint and resume targets.
fn tiny_config() -> RunConfig {
    let text = armory::config::SEED_CONFIG
        .replace("hidden = 256", "hidden = 4")
        .replace("kernel = 7", "kernel = 3")
        .replace("dilations = [1, 1, 1, 1]", "dilations = [1, 2]")
        .replace("batch_size = 64", "batch_size = 8");
    RunConfig::parse(&text, Path::new("tiny.toml")).unwrap()
}

fn tiny_splits() -> armory::data::Splits {
    let mut s = common::small_digits(16, 8);
    s.test = s.test.slice(0..8);
    s
}

#[test]
fn safetensors_checkpoint_loader() {
    let cfg = tiny_config();
    let arm = Arm::new(&cfg.model, 0, DType::F32, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    arm.params().save(&good).unwrap();
    let seeds = vec![std::fs::read(&good).unwrap()];
    let path = dir.path().join("fuzz.safetensors");
    fuzz("safetensors", cases(1000, 0.5), input(seeds, 300), |b| {
        std::fs::write(&path, &b).unwrap();
        let a = err_text(armory::params::load_tensors(&path));
        each(vec![a, err_text(arm.params().load(&path))])
    });
}

/// Configs: parse and validate, and a config that validates is one that can be built (tiny ones are built
/// here; `validate` refuses the others' sizes before anything is allocated).
#[test]
fn toml_config_parser() {
    let mut seeds: Vec<Vec<u8>> = NAMED.iter().map(|(_, t)| t.as_bytes().to_vec()).collect();
    seeds.push(tiny_config().to_toml().into_bytes());
    fuzz("toml", cases(1000, 0.5), input(seeds, 300), |b| {
        let text = String::from_utf8_lossy(&b);
        let cfg = RunConfig::parse(&text, Path::new("fuzz.toml")).map_err(|e| e.to_string())?;
        if cfg.model.param_estimate() <= 200_000 && cfg.model.activation_bytes(1) <= 64 << 20 {
            if let Err(e) = Arm::new(&cfg.model, 0, DType::F32, &Device::Cpu) {
                panic!("a validated config failed to build: {e}\n{text}");
            }
        }
        Ok(())
    });
}

/// Resume files: raw bytes of `resume.safetensors`, its JSON state with numbers replaced, and metrics.csv.
#[test]
fn resume_files() {
    let cfg = tiny_config();
    let splits = tiny_splits();
    let dir = tempfile::tempdir().unwrap();
    let quiet = common::quiet();
    let recipe = armory::train::TrainConfig {
        max_epochs: 1,
        ..cfg.train.clone()
    };
    let arm = Arm::new(&cfg.model, 0, DType::F32, &Device::Cpu).unwrap();
    let seed_run = RunDir::create(&dir.path().join("seed")).unwrap();
    train::train(&arm, &splits, &recipe, &seed_run, false, &quiet).unwrap();
    let resume = std::fs::read(seed_run.file("resume.safetensors")).unwrap();
    let csv = std::fs::read(seed_run.file("metrics.csv")).unwrap();
    let (tensors, state) = seed_run.load_resume(arm.params()).unwrap();
    let again = armory::train::TrainConfig {
        max_epochs: 2,
        ..recipe
    };
    let run = RunDir::create(&dir.path().join("fuzz")).unwrap();
    let resume_from = |bytes: Option<&[u8]>, state: Option<&str>, csv_bytes: &[u8]| -> Result<(), String> {
        std::fs::write(run.file("metrics.csv"), csv_bytes).unwrap();
        match (bytes, state) {
            (Some(b), _) => std::fs::write(run.file("resume.safetensors"), b).unwrap(),
            (_, Some(s)) => run.save_resume(&tensors, s, arm.params()).unwrap(),
            _ => unreachable!(),
        }
        let arm = Arm::new(&cfg.model, 0, DType::F32, &Device::Cpu).unwrap();
        err_text(train::train(&arm, &splits, &again, &run, true, &quiet))
    };
    fuzz("resume-bytes", cases(200, 0.1), input(vec![resume], 64), |b| {
        resume_from(Some(&b), None, &csv)
    });
    fuzz(
        "resume-state",
        cases(200, 0.1),
        input(vec![state.into_bytes()], 64),
        |b| resume_from(None, Some(&String::from_utf8_lossy(&b)), &csv),
    );
    let path = dir.path().join("metrics.csv");
    fuzz("metrics-csv", cases(1000, 1.0), input(vec![csv.clone()], 200), |b| {
        std::fs::write(&path, &b).unwrap();
        err_text(metrics::read_csv(&path))
    });
}
