//! The command line against a careless or hostile user (issue 17): two writers on one run, outputs that
//! would be overwritten or half-written, damaged checkpoints, sizes bounded by nothing, runs that died before
//! their first checkpoint, and messages that must name the problem.

use std::path::{Path, PathBuf};

use armory::train::RunDir;
use common::{armory, TINY};
use predicates::prelude::*;
use predicates::str::contains;

mod common;

/// A tiny seed-like model trained for two epochs into `dir/name`.
fn tiny_run(dir: &Path, name: &str) -> PathBuf {
    common::tiny_train(dir, name);
    dir.join(name)
}

/// The first embedded digit as a digits CSV of one row (values, then its label), `dir/d.csv`.
fn one_digit_csv(dir: &Path) -> PathBuf {
    let csv = dir.join("d.csv");
    std::fs::write(&csv, one_digit_text()).unwrap();
    csv
}

/// The text of `configs/NAME.toml`.
fn shipped_config(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("configs/{name}.toml"))).unwrap()
}

/// `train --epochs 1` with `text` written to `dir/name` as its config, runs in `dir`: expected to fail.
fn train_fails_with_config(dir: &Path, name: &str, text: &str) -> assert_cmd::assert::Assert {
    let config = dir.join(name);
    std::fs::write(&config, text).unwrap();
    armory()
        .args(["train", "--epochs", "1", "--runs-dir"])
        .arg(dir)
        .arg("--config")
        .arg(&config)
        .assert()
        .failure()
}

fn stderr_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

/// Two writers, one run: while one process holds the run (here the test itself, through the library's
/// lock), `train --force` and `train --resume` on it are refused with the holder's PID, and the directory is
/// left as it was. A lock file left by a process that died does not block.
#[test]
fn a_second_writer_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "dup");
    let before: Vec<Vec<u8>> = ["config.toml", "best.safetensors", "metrics.csv"]
        .iter()
        .map(|f| std::fs::read(run.join(f)).unwrap())
        .collect();
    let lock = RunDir { path: run.clone() }.lock().unwrap();
    let holder = format!("pid {}", std::process::id());
    for recipe in [&TINY[..], &["--model", "mlp", "--quiet", "--epochs"][..]] {
        armory()
            .arg("train")
            .args(recipe)
            .args(["1", "--name", "dup", "--force", "--runs-dir"])
            .arg(dir.path())
            .assert()
            .failure()
            .stderr(contains("in use by another armory process").and(contains(holder.as_str())));
    }
    armory()
        .args(["train", "--quiet", "--resume"])
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains(holder.as_str()).and(contains("one writer per run")));
    drop(lock);
    let after: Vec<Vec<u8>> = ["config.toml", "best.safetensors", "metrics.csv"]
        .iter()
        .map(|f| std::fs::read(run.join(f)).unwrap())
        .collect();
    assert!(before == after, "a refused writer changed the run");
    armory().args(["eval", "--run"]).arg(&run).assert().success();

    // A stale lock file (its process gone: the OS released the lock) does not block.
    std::fs::write(run.join("lock"), "999999999\n").unwrap();
    armory()
        .arg("train")
        .args(TINY)
        .args(["1", "--name", "dup", "--force", "--runs-dir"])
        .arg(dir.path())
        .assert()
        .success();
    let pid = std::fs::read_to_string(run.join("lock")).unwrap();
    assert_ne!(pid.trim(), "999999999", "the new writer records its own PID");
}

/// A run another process is starting (its lock held, its config half written, or written without a checkpoint
/// yet) is refused as in use — not as a folder of stray files nor as a run that stopped — and is not touched.
#[test]
fn a_run_being_started_is_refused_as_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("dup");
    std::fs::create_dir(&run).unwrap();
    let train_dup = || {
        armory()
            .arg("train")
            .args(TINY)
            .args(["1", "--name", "dup", "--runs-dir"])
            .arg(dir.path())
            .assert()
            .failure()
    };
    let lock = RunDir { path: run.clone() }.lock().unwrap();
    for written in ["config.toml.tmp", "config.toml"] {
        std::fs::write(run.join(written), "half").unwrap();
        train_dup().stderr(
            contains("in use by another armory process")
                .and(contains("holds files").not())
                .and(contains("stopped").not()),
        );
        assert_eq!(std::fs::read_to_string(run.join(written)).unwrap(), "half");
    }
    drop(lock);
    train_dup().stderr(contains("stopped before its first checkpoint"));
}

/// Two trains on one name started together: exactly one trains, the other is refused, and the directory
/// holds one run — its config.toml and its weights from the same process, so they load together.
#[test]
fn two_trains_at_once_leave_one_consistent_run() {
    let dir = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("armory");
    let spawn = |hidden: &str| {
        std::process::Command::new(&bin)
            .args([
                "train", "--quiet", "--epochs", "2", "--kernel", "3", "--name", "dup", "--hidden", hidden,
            ])
            .arg("--runs-dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("8"), spawn("12"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success() != b.status.success(),
        "exactly one of two writers must succeed: {a:?} {b:?}"
    );
    let (won, lost, hidden) = if a.status.success() { (a, b, 8) } else { (b, a, 12) };
    let said = String::from_utf8_lossy(&lost.stderr);
    assert!(
        said.contains("in use by another armory process") || said.contains("already holds a run"),
        "{said}"
    );
    assert!(String::from_utf8_lossy(&won.stdout).contains("test:"));
    let cfg = std::fs::read_to_string(dir.path().join("dup/config.toml")).unwrap();
    assert!(cfg.contains(&format!("hidden = {hidden}\n")), "{cfg}");
    armory()
        .args(["eval", "--run"])
        .arg(dir.path().join("dup"))
        .assert()
        .success();
}

/// A run killed with SIGKILL in its first epoch: its lock does not block, and it has no checkpoint, so a new
/// train on its name says what to run, and `--resume` starts it from scratch.
#[test]
fn a_run_killed_before_its_first_checkpoint_can_be_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("armory");
    let mut child = std::process::Command::new(&bin)
        .args(["train", "--quiet", "--epochs", "1", "--name", "k", "--runs-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let run = dir.path().join("k");
    let started = std::time::Instant::now();
    while !run.join("config.toml").exists() {
        assert!(started.elapsed().as_secs() < 60, "the run never started");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no handler runs
    child.wait().unwrap();
    assert!(
        !run.join("resume.safetensors").exists(),
        "the kill came after the first checkpoint"
    );
    std::fs::write(run.join("last.safetensors.tmp"), b"half a checkpoint").unwrap();
    armory()
        .args(["train", "--quiet", "--epochs", "1", "--name", "k", "--runs-dir"])
        .arg(dir.path())
        .assert()
        .failure()
        .stderr(contains("stopped before its first checkpoint").and(contains("--resume")));
    armory()
        .args(["train", "--quiet", "--resume"])
        .arg(&run)
        .assert()
        .success()
        .stderr(contains("starting it from scratch"))
        .stdout(contains("reached the epoch limit after 1 epoch ("));
    assert!(!run.join("last.safetensors.tmp").exists(), "a leftover temporary file");
}

/// `--force` starts a run over without what a killed run left behind (temporary files included).
#[test]
fn force_cleans_leftover_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "f");
    for f in ["resume.safetensors.tmp", "metrics.csv.tmp", "samples.png.tmp"] {
        std::fs::write(run.join(f), b"left by a kill").unwrap();
    }
    armory()
        .arg("train")
        .args(TINY)
        .args(["1", "--name", "f", "--force", "--runs-dir"])
        .arg(dir.path())
        .assert()
        .success();
    let left: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Run names are one path component: nothing is written into `runs/` itself or outside it.
#[test]
fn run_names_must_be_one_path_component() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    for name in [
        "", ".", "..", "../../x", "a/b", "a\\b", "/abs", "a\nb", "  ", " x", "t\tab",
    ] {
        armory()
            .arg("train")
            .args(TINY)
            .args(["1", "--name", name, "--runs-dir"])
            .arg(&runs)
            .assert()
            .failure()
            .stderr(contains("one path component"));
    }
    assert!(!runs.exists() && !dir.path().join("x").exists());
}

/// `sample` never writes over an existing file without `--force`, never lets --out and --raw replace each
/// other, reports a path it cannot write, and leaves nothing behind when its second output fails.
#[test]
fn sample_outputs_are_never_silently_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = tiny_run(d, "s");
    let sample = |args: &[&std::ffi::OsStr]| {
        let mut c = armory();
        c.args(["sample", "-n", "2", "--run"]).arg(&run).args(args);
        c.assert()
    };
    let os = |p: &Path| p.as_os_str().to_owned();
    let out = d.join("keep.png");
    std::fs::write(&out, b"precious").unwrap();
    sample(&["--out".as_ref(), &os(&out)]).failure().stderr(
        contains("keep.png")
            .and(contains("already exists"))
            .and(contains("--force")),
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let checkpoint = run.join("best.safetensors");
    let weights = std::fs::read(&checkpoint).unwrap();
    sample(&[
        "--out".as_ref(),
        &os(&d.join("x.png")),
        "--raw".as_ref(),
        &os(&checkpoint),
    ])
    .failure()
    .stderr(contains("best.safetensors").and(contains("already exists")));
    assert_eq!(std::fs::read(&checkpoint).unwrap(), weights);
    assert!(!d.join("x.png").exists());
    sample(&["--out".as_ref(), &os(&out), "--force".as_ref()]).success();
    assert!(image::open(&out).is_ok());

    // One file named twice (also through `./`).
    let same = d.join("same.csv");
    sample(&[
        "--out".as_ref(),
        &os(&same),
        "--raw".as_ref(),
        &os(&d.join(".").join("same.csv")),
    ])
    .failure()
    .stderr(contains("same file"));
    assert!(!same.exists());

    // A path that cannot be written: an error naming it, and nothing left behind by the other output.
    let png = d.join("first.png");
    let bad = d.join("no/such/dir/raw.csv");
    let a = sample(&["--out".as_ref(), &os(&png), "--raw".as_ref(), &os(&bad)]).failure();
    assert!(stderr_of(&a).contains("no/such/dir/raw.csv"), "{}", stderr_of(&a));
    assert!(!png.exists(), "a PNG was left behind when --raw failed");
    sample(&["--out".as_ref(), &os(&d.join("nodir/x.png"))])
        .failure()
        .stderr(contains("nodir/x.png"));
    let temps = std::fs::read_dir(d)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(temps, 0, "temporary files left behind");
}

/// A checkpoint with NaN or infinite weights is refused by eval and sample, naming the tensor.
#[test]
fn non_finite_weights_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "n");
    let mut t = armory::params::load_tensors(&run.join("best.safetensors")).unwrap();
    let w = &t["net.2.conv1d.bias"];
    let mut v = w.to_vec1::<f32>().unwrap();
    v[3] = f32::NAN;
    t.insert(
        "net.2.conv1d.bias".into(),
        candle_core::Tensor::from_vec(v, w.dims(), w.device()).unwrap(),
    );
    armory::params::save_tensors(&t, &run.join("best.safetensors")).unwrap();
    let cfg = run.join("config.toml");
    for cmd in [vec!["eval"], vec!["sample", "--out", "never.png"]] {
        armory()
            .args(&cmd)
            .arg("--run")
            .arg(&run)
            .current_dir(dir.path())
            .assert()
            .failure()
            .stderr(contains("net.2.conv1d.bias").and(contains("non-finite value (NaN) at index 3")));
    }
    armory()
        .args(["eval", "--config"])
        .arg(&cfg)
        .arg("--weights")
        .arg(run.join("best.safetensors"))
        .assert()
        .failure()
        .stderr(contains("non-finite"));
    assert!(!dir.path().join("never.png").exists());
}

/// Weights that are not floating point, or finite in the file's f64 but beyond the model's f32, are refused
/// where the model is loaded — by eval, sample and compress alike — naming the tensor, instead of loading as
/// integers or as ±inf.
#[test]
fn integer_and_out_of_range_weights_are_refused_at_load() {
    use candle_core::DType;
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "w");
    let best = run.join("best.safetensors");
    let good = armory::params::load_tensors(&best).unwrap();
    let name = "net.2.conv1d.bias";
    let csv = one_digit_csv(dir.path());
    let integer = good[name].to_dtype(DType::I64).unwrap();
    let mut huge = good[name].to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    huge[2] = 1e300;
    let huge = candle_core::Tensor::new(huge, &candle_core::Device::Cpu).unwrap();
    for (tensor, says) in [
        (integer, "holds i64 values; weights are floating point"),
        (huge, "holds 1e300 at index 2, beyond the range of the model's f32"),
    ] {
        let mut t = good.clone();
        t.insert(name.into(), tensor);
        armory::params::save_tensors(&t, &best).unwrap();
        let out = dir.path().join("x.arm");
        for cmd in [
            vec!["eval".as_ref(), "--run".as_ref(), run.as_os_str()],
            vec![
                "sample".as_ref(),
                "--out".as_ref(),
                dir.path().join("s.png").as_os_str(),
                "--run".as_ref(),
                run.as_os_str(),
            ],
            vec![
                "compress".as_ref(),
                "--run".as_ref(),
                run.as_os_str(),
                csv.as_os_str(),
                "-o".as_ref(),
                out.as_os_str(),
            ],
        ] {
            armory()
                .args(&cmd)
                .assert()
                .failure()
                .stderr(contains("best.safetensors").and(contains(name)).and(contains(says)));
        }
        assert!(!out.exists() && !dir.path().join("s.png").exists());
    }
}

/// Finite weights that overflow f32 arithmetic (every one ±1e38) give NaN logits: eval refuses the score,
/// every sampler refuses to draw and compress refuses to code, instead of "NaN nats" with exit status 0, a
/// picture of garbage, or a compressed file larger than the data.
#[test]
fn weights_that_overflow_are_refused_when_used() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "o");
    let best = run.join("best.safetensors");
    let mut t = armory::params::load_tensors(&best).unwrap();
    for (i, w) in t.values_mut().enumerate() {
        let sign = if i % 2 == 0 { 1e38 } else { -1e38 };
        *w = (w.ones_like().unwrap() * sign).unwrap();
    }
    armory::params::save_tensors(&t, &best).unwrap();
    armory()
        .args(["eval", "--run"])
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains("−log p(x) over 447 examples is not finite").and(contains("overflow")));
    for method in ["cached", "naive", "predictive"] {
        let out = dir.path().join(format!("{method}.png"));
        armory()
            .args(["sample", "-n", "2", "--method", method, "--out"])
            .arg(&out)
            .arg("--run")
            .arg(&run)
            .assert()
            .failure()
            .stderr(contains("the network's output at position 0 is not finite"));
        assert!(!out.exists(), "{method}: a picture was written");
    }
    let csv = one_digit_csv(dir.path());
    let coded = dir.path().join("d.arm");
    armory()
        .args(["compress", "--run"])
        .arg(&run)
        .arg(&csv)
        .arg("-o")
        .arg(&coded)
        .assert()
        .failure()
        .stderr(contains("the network's output at position 0 is not finite"));
    assert!(!coded.exists(), "a compressed file was written");
}

/// Sizes that flags and configs decide are checked against a limit before anything is allocated: an error
/// naming the number and the limit, never an abort.
#[test]
fn absurd_sizes_get_an_error_naming_the_number_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = tiny_run(d, "z");
    armory()
        .args(["sample", "-n", "1000000000", "--out"])
        .arg(d.join("z.png"))
        .arg("--run")
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains("samples (-n) = 1000000000 exceeds the limit of 65536"));
    let train = |args: &[&str]| {
        armory()
            .args(["train", "--quiet", "--epochs", "1", "--runs-dir"])
            .arg(d)
            .args(args)
            .assert()
            .failure()
    };
    train(&["--hidden", "1000000000"]).stderr(contains("model.hidden = 1000000000 exceeds the limit of 16384"));
    train(&["--model", "dilated-conv", "--dilations", "1,4000000000"])
        .stderr(contains("dilations entry").and(contains("4000000000 exceeds the limit of 1024")));
    train(&["--hidden", "16000", "--layers", "1000"])
        .stderr(contains("model parameters (estimated)").and(contains("exceeds the limit of 134217728")));
    train(&["--batch-size", "100000000"]).stderr(contains("activation memory").and(contains("exceeds the limit")));
    armory()
        .args(["eval", "--batch-size", "100000000", "--run"])
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains("exceeds the limit"));

    // `info` on such a config: an error, not an abort.
    let cfg = armory::config::SEED_CONFIG.replace("num_values = 17", "num_values = 4000000000");
    assert_ne!(cfg, armory::config::SEED_CONFIG);
    std::fs::write(d.join("huge.toml"), cfg).unwrap();
    for cmd in ["info", "train"] {
        armory()
            .args([cmd, "--config"])
            .arg(d.join("huge.toml"))
            .assert()
            .failure()
            .stderr(contains("model.num_values = 4000000000 exceeds the limit of 65536"));
    }
    let cfg = armory::config::SEED_CONFIG.replace("hidden = 256", "hidden = 16384");
    std::fs::write(d.join("wide.toml"), cfg).unwrap();
    armory()
        .args(["info", "--config"])
        .arg(d.join("wide.toml"))
        .assert()
        .failure()
        .stderr(contains("model parameters (estimated)"));
}

/// Dead ends: a NaN in the first epoch says there is no checkpoint and what to run; `--validation 0` is
/// refused before anything is trained.
#[test]
fn dead_ends_say_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = armory()
        .arg("train")
        .args(TINY)
        .args(["3", "--lr", "1e30", "--name", "nan", "--runs-dir"])
        .arg(d)
        .assert()
        .failure();
    let e = stderr_of(&a);
    assert!(
        e.contains("non-finite") && e.contains("no checkpoint was written") && !e.contains("last good checkpoint"),
        "{e}"
    );
    armory()
        .arg("train")
        .args(TINY)
        .args(["3", "--name", "nan", "--runs-dir"])
        .arg(d)
        .assert()
        .failure()
        .stderr(contains("before its first checkpoint").and(contains("--force")));
    armory()
        .arg("train")
        .args(TINY)
        .args(["1", "--validation", "0", "--name", "v", "--runs-dir"])
        .arg(d)
        .assert()
        .failure()
        .stderr(contains("no validation set"));
    assert!(!d.join("v").exists());
}

/// Messages: an unknown data source is named with the ones there are; data problems name the data, not
/// "invalid config"; a CSV with a byte-order mark trains.
#[test]
fn data_messages_name_the_source_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = |data: &str| {
        let mut c = armory();
        c.args([
            "train",
            "--hidden",
            "8",
            "--kernel",
            "3",
            "--quiet",
            "--epochs",
            "1",
            "--runs-dir",
        ])
        .arg(d)
        .args(["--name", "m", "--force", "--data", data]);
        c.assert()
    };
    train(&format!("mnst:{}", d.display())).failure().stderr(
        contains("unknown data source 'mnst', expected one of")
            .and(contains("mnist:DIR"))
            .and(contains("No such file").not()),
    );
    let rows: String = (0..40)
        .map(|i| format!("{}{},{}\n", "0,".repeat(63), i % 17, i % 10))
        .collect();
    let few = d.join("few.csv");
    std::fs::write(&few, rows.lines().take(2).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    train(few.to_str().unwrap()).failure().stderr(
        contains("few.csv")
            .and(contains("too few"))
            .and(contains("invalid config").not()),
    );
    let bom = d.join("bom.csv");
    std::fs::write(&bom, format!("\u{feff}{rows}")).unwrap();
    train(bom.to_str().unwrap()).success();
}

/// Data that does not fit the model — no labels for a class-conditional model, the wrong size — is refused
/// naming the data before a run directory is made (it used to fail in the first step, "invalid config").
#[test]
fn data_that_does_not_fit_the_model_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let pngs = dir.path().join("pngs");
    std::fs::create_dir(&pngs).unwrap();
    for i in 0..12u8 {
        image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x as u8 + y as u8) * 16 + i]))
            .save(pngs.join(format!("{i:02}.png")))
            .unwrap();
    }
    let data = format!("png:{}", pngs.display());
    let train = |args: &[&str]| {
        armory()
            .args(["train", "--quiet", "--epochs", "1", "--name", "c", "--runs-dir"])
            .arg(dir.path())
            .args(["--data", &data])
            .args(args)
            .assert()
            .failure()
    };
    train(&["--model", "gated-pixelcnn-cond", "--levels", "17"]).stderr(
        contains(data.as_str())
            .and(contains(
                "has no labels, but the model is class-conditional (10 classes)",
            ))
            .and(contains("invalid config").not()),
    );
    train(&["--hidden", "8"]).stderr(contains(data.as_str()).and(contains(
        "the train set has 64 dimensions with 256 values, the model expects 64 and 17",
    )));
    assert!(!dir.path().join("c").exists());
}

/// An interrupted and resumed run reports the same figures in summary.json as an uninterrupted one.
#[test]
fn a_resumed_run_summarises_like_a_straight_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let straight = tiny_run(d, "straight");
    armory()
        .arg("train")
        .args(TINY)
        .args(["2", "--name", "resumed", "--stop-after-steps", "20", "--runs-dir"])
        .arg(d)
        .assert()
        .code(130);
    armory()
        .args(["train", "--quiet", "--resume"])
        .arg(d.join("resumed"))
        .assert()
        .success();
    let summary = |run: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
    };
    let (a, b) = (summary(&straight), summary(&d.join("resumed")));
    for key in ["best_val_nll", "test_nll", "test_bpd", "epochs", "best_epoch"] {
        assert_eq!(a[key], b[key], "{key}");
    }
}

/// A config that never ends (a device such as /dev/zero, given by mistake) is refused at the config size
/// limit, naming the file, instead of being read until the memory runs out.
#[test]
fn an_endless_config_is_refused_at_its_limit() {
    if !Path::new("/dev/zero").exists() {
        return;
    }
    for command in ["info", "train"] {
        armory()
            .args([command, "--config", "/dev/zero"])
            .timeout(std::time::Duration::from_secs(60))
            .assert()
            .failure()
            .stderr(contains("/dev/zero: bytes of a config file").and(contains("exceeds the limit")));
    }
}

/// A checkpoint is read as far as its header promises: one that never ends (/dev/zero) is refused at once,
/// one with more bytes than its tensors is refused naming the file, and the run's own still loads.
#[test]
fn a_checkpoint_is_read_as_far_as_its_header_promises() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "t");
    let best = run.join("best.safetensors");
    armory().arg("eval").arg("--run").arg(&run).assert().success();
    if Path::new("/dev/zero").exists() {
        armory()
            .args(["eval", "--weights", "/dev/zero"])
            .timeout(std::time::Duration::from_secs(60))
            .assert()
            .failure()
            .stderr(contains("/dev/zero: not a readable safetensors checkpoint"));
    }
    let longer = dir.path().join("longer.safetensors");
    let mut bytes = std::fs::read(&best).unwrap();
    bytes.extend_from_slice(&[0; 100]);
    std::fs::write(&longer, &bytes).unwrap();
    armory()
        .args(["eval", "--config"])
        .arg(run.join("config.toml"))
        .arg("--weights")
        .arg(&longer)
        .assert()
        .failure()
        .stderr(contains("longer.safetensors: bytes of a checkpoint").and(contains("exceeds the limit")));
}

/// An empty dataset name and a temperature that is not a finite number are refused with what to give,
/// instead of "Error: : No such file or directory" and samples drawn at an infinite temperature.
#[test]
fn an_empty_dataset_and_an_infinite_temperature_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let seed = shipped_config("seed-arm");
    assert!(seed.contains("dataset = \"digits\""));
    train_fails_with_config(
        dir.path(),
        "empty-data.toml",
        &seed.replace("dataset = \"digits\"", "dataset = \"\""),
    )
    .stderr(contains("the dataset is empty"));
    let run = tiny_run(dir.path(), "t");
    for t in ["inf", "NaN"] {
        armory()
            .args(["sample", "-n", "1", "--temperature", t, "--out"])
            .arg(dir.path().join("s.png"))
            .arg("--run")
            .arg(&run)
            .assert()
            .failure()
            .stderr(contains("--temperature must be a positive finite number"));
    }
}

/// A picture model must have the data's picture shape: the 8×8 digits trained as 4×16 pictures (the same
/// 64 values) would put each row's neighbours in the wrong place. And a kernel too large is refused with
/// the pictures' own size and the largest kernel allowed.
#[test]
fn a_picture_model_of_another_shape_and_an_oversized_kernel_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gated = shipped_config("gated-pixelcnn");
    let train = |name: &str, text: String| train_fails_with_config(dir.path(), name, &text);
    assert!(gated.contains("height = 8\nwidth = 8") && gated.contains("first_kernel = 7"));
    train(
        "wide.toml",
        gated.replace("height = 8\nwidth = 8", "height = 4\nwidth = 16"),
    )
    .stderr(contains(
        "digits: the train set holds 8×8 pictures of 1 colour, the model expects 4×16 pictures of 1 colour: set \
         height = 8, width = 8, colors = 1",
    ));
    train("kernel.toml", gated.replace("first_kernel = 7", "first_kernel = 99")).stderr(contains(
        "model.first_kernel = 99 is too large for 8×8 pictures (at most 17)",
    ));
    assert!(!dir.path().join("wide").exists() && !dir.path().join("kernel").exists());
}

/// `--validation` sizes the validation set of data sets with their own test set; on the digits, split by
/// position, it would be ignored (and still written into the run's config), so it is refused.
#[test]
fn a_validation_size_that_would_be_ignored_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The default size too, when asked for by the flag.
    for n in ["100", "5000"] {
        armory()
            .args(["train", "--quiet", "--epochs", "1", "--validation", n, "--runs-dir"])
            .arg(dir.path())
            .assert()
            .failure()
            .stderr(
                contains(format!("data.validation (--validation) = {n}, but `digits` is split"))
                    .and(contains("mnist:DIR")),
            );
    }
    assert!(!dir.path().join("seed-arm").exists(), "a run directory was made");
}

/// `train` writes into an existing folder without --force only if it holds no files (a lone `lock` aside): a
/// run that lost its config, or the user's own folder, is refused and left as it was; with --force it is
/// written into.
#[test]
fn train_does_not_write_into_a_folder_holding_files_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mine = d.join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("metrics.csv"), b"my notes").unwrap();
    common::armory()
        .arg("train")
        .args(common::TINY)
        .args(["1", "--name", "mine", "--runs-dir"])
        .arg(d)
        .assert()
        .failure()
        .stderr(contains("holds files (metrics.csv) but no run (no config.toml)"));
    let left: Vec<_> = std::fs::read_dir(&mine)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["metrics.csv"], "the folder was written into");
    assert_eq!(std::fs::read(mine.join("metrics.csv")).unwrap(), b"my notes");
    std::fs::write(d.join("afile"), b"x").unwrap();
    common::armory()
        .arg("train")
        .args(common::TINY)
        .args(["1", "--name", "afile", "--runs-dir"])
        .arg(d)
        .assert()
        .failure()
        .stderr(contains("exists and is not a folder"));
    // An empty folder, or one holding only a lock, is a place for a new run; with --force, any folder is.
    std::fs::create_dir(d.join("empty")).unwrap();
    std::fs::write(d.join("empty").join("lock"), b"").unwrap();
    common::tiny_train(d, "empty");
    common::armory()
        .arg("train")
        .args(common::TINY)
        .args(["1", "--force", "--name", "mine", "--runs-dir"])
        .arg(d)
        .assert()
        .success();
    assert!(mine.join("config.toml").is_file());
}

/// A flag that does not apply is refused, not ignored: `--config` belongs to `--weights` (a run has its own),
/// `--checkpoint` to `--run`.
#[test]
fn flags_that_do_not_apply_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "f");
    for cmd in ["eval", "sample", "encode"] {
        common::armory()
            .args([cmd, "--config", "none.toml", "--run"])
            .arg(&run)
            .assert()
            .failure()
            .stderr(contains("cannot be used with").and(contains("--config <CONFIG>")));
    }
    common::armory()
        .args(["eval", "--checkpoint", "last", "--weights"])
        .arg(run.join("best.safetensors"))
        .assert()
        .failure()
        .stderr(contains("cannot be used with").and(contains("--checkpoint <CHECKPOINT>")));
}

/// A run's config edited after training: a `[model]` that still fits the weights' shapes (other dilations)
/// is refused by eval and sample instead of giving other figures, a `[train]` by --resume (it continues a run
/// exactly); a comment added changes nothing (what the config says is compared, not its text).
#[test]
fn a_config_edited_after_training_is_refused_where_it_would_mislead() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), "e");
    let path = run.join("config.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let at = original.find("dilations = [").expect("a dilations line");
    let end = at + original[at..].find(']').unwrap() + 1;
    let n = original[at..end].matches(',').count() + 1;
    let twos = vec!["2"; n].join(", ");
    let edited = format!("{}dilations = [{twos}]{}", &original[..at], &original[end..]);
    // A comment written above the stamp, or a byte-order mark before it, does not hide it.
    for text in [
        edited.clone(),
        format!("# tried other dilations\n{edited}"),
        format!("\u{feff}{edited}"),
    ] {
        std::fs::write(&path, text).unwrap();
        armory().args(["eval", "--run"]).arg(&run).assert().failure().stderr(
            contains("config.toml: its [model] or [latent] was changed after training").and(contains("restore it")),
        );
    }
    // Nor does giving the run's config as --config beside its weights; info, which loads no weights, shows it.
    armory()
        .args(["eval", "--weights"])
        .arg(run.join("best.safetensors"))
        .arg("--config")
        .arg(&path)
        .assert()
        .failure()
        .stderr(contains("was changed after training"));
    armory().args(["info", "--run"]).arg(&run).assert().success();
    // A damaged stamp does not pass for none.
    std::fs::write(
        &path,
        edited.replacen("trained with model ", "trained with model zz", 1),
    )
    .unwrap();
    armory()
        .args(["eval", "--run"])
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains("damaged stamp"));
    std::fs::write(&path, &edited).unwrap();
    armory()
        .args(["sample", "--out"])
        .arg(dir.path().join("s.png"))
        .arg("--run")
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains("was changed after training"));
    std::fs::write(&path, original.replace("lr = 0.001", "lr = 0.002")).unwrap();
    assert_ne!(std::fs::read_to_string(&path).unwrap(), original, "no lr line to edit");
    armory()
        .args(["train", "--quiet", "--resume"])
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains("its [train] or [data] was changed after training"));
    std::fs::write(
        &path,
        original.replace("dataset = \"digits\"", "dataset = \"digits\" # moved"),
    )
    .unwrap();
    assert_ne!(
        std::fs::read_to_string(&path).unwrap(),
        original,
        "no dataset line to comment"
    );
    armory().args(["eval", "--run"]).arg(&run).assert().success();
}

/// Checkpoints say what model they hold: one copied in from another run whose shapes fit (other dilations)
/// is refused by eval and by --resume, naming the file; a config that differs only in what steers training
/// (dropout) is no other model; the same weights without the stamp (a run of an earlier version, a PyTorch
/// export) load as before.
#[test]
fn a_checkpoint_of_another_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = tiny_run(dir.path(), "a");
    let train = |flags: [&str; 2], name: &str| {
        armory()
            .arg("train")
            .args(TINY)
            .args(["1", flags[0], flags[1], "--name", name, "--runs-dir"])
            .arg(dir.path())
            .assert()
            .success();
        dir.path().join(name)
    };
    let eval_weights = |weights: PathBuf, config: PathBuf| {
        armory()
            .args(["eval", "--weights"])
            .arg(weights)
            .arg("--config")
            .arg(config)
            .assert()
    };
    let b = train(["--dilations", "1,2,4,8"], "b");
    for file in ["best.safetensors", "resume.safetensors"] {
        std::fs::copy(a.join(file), b.join(file)).unwrap();
    }
    let foreign = |a: assert_cmd::assert::Assert, file: &str| {
        a.failure().stderr(
            contains(format!("b/{file}: holds the weights of another model"))
                .and(contains("copied in from another run")),
        );
    };
    foreign(armory().args(["eval", "--run"]).arg(&b).assert(), "best.safetensors");
    foreign(
        armory().args(["train", "--quiet", "--resume"]).arg(&b).assert(),
        "resume.safetensors",
    );
    // Beside --weights, the config given says what the weights must be.
    eval_weights(a.join("last.safetensors"), b.join("config.toml"))
        .failure()
        .stderr(contains("holds the weights of another model"));
    eval_weights(a.join("last.safetensors"), a.join("config.toml")).success();
    // What only steers training is not part of what the weights are: a run with dropout loads beside the
    // config of one without.
    let c = train(["--dropout", "0.2"], "c");
    eval_weights(c.join("best.safetensors"), a.join("config.toml")).success();
    // Without the stamp the shapes are all that can be checked: the copy loads.
    let tensors = armory::params::load_tensors(&a.join("best.safetensors")).unwrap();
    armory::params::save_tensors(&tensors, &b.join("best.safetensors")).unwrap();
    armory().args(["eval", "--run"]).arg(&b).assert().success();
}

/// An input named like an output's temporary file (`z.arm.tmp` for `-o z.arm`) is read, not written over
/// and renamed away; an output that is a symbolic link is refused even with --force, the link and what it
/// points to left as they were (a link to `/proc/self/fd/1` had been replaced by a file).
#[cfg(unix)]
#[test]
fn outputs_never_replace_a_link_or_a_file_named_like_their_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = tiny_run(d, "t");
    let input = d.join("z.arm.tmp");
    std::fs::write(&input, one_digit_text()).unwrap();
    armory()
        .args(["compress", "--run"])
        .arg(&run)
        .arg(&input)
        .arg("-o")
        .arg(d.join("z.arm"))
        .assert()
        .success();
    assert_eq!(std::fs::read_to_string(&input).unwrap(), one_digit_text());
    armory()
        .args(["decompress", "--run"])
        .arg(&run)
        .arg(d.join("z.arm"))
        .arg("-o")
        .arg(d.join("back.csv"))
        .assert()
        .success();
    assert_eq!(std::fs::read_to_string(d.join("back.csv")).unwrap(), one_digit_text());

    let target = d.join("target.txt");
    std::fs::write(&target, b"kept").unwrap();
    let link = d.join("link.csv");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let refused = |a: assert_cmd::assert::Assert| {
        a.failure().stderr(
            contains("link.csv")
                .and(contains("symbolic link"))
                .and(contains("even with --force")),
        );
        assert!(link.is_symlink() && std::fs::read(&target).unwrap() == b"kept");
    };
    refused(
        armory()
            .args(["sample", "-n", "2", "--force", "--run"])
            .arg(&run)
            .arg("--out")
            .arg(d.join("s.png"))
            .arg("--raw")
            .arg(&link)
            .assert(),
    );
    for (command, read) in [("compress", input.clone()), ("decompress", d.join("z.arm"))] {
        refused(
            armory()
                .args([command, "--force", "--run"])
                .arg(&run)
                .arg(read)
                .arg("-o")
                .arg(&link)
                .assert(),
        );
    }
    assert!(!d.join("s.png").exists());
}

/// The first embedded digit as the text of a digits CSV of one row (values, then its label).
fn one_digit_text() -> String {
    let all = armory::data::digits::embedded().unwrap();
    let row: Vec<String> = all.example(0).iter().map(|v| v.to_string()).collect();
    format!("{},{}\n", row.join(","), all.labels.as_ref().unwrap()[0])
}

/// Quantized data gets a model of its values: `--levels 2` makes a model of 2 values (it drew values up to 16
/// that the data never has, in a 17-value model), `--binarize` one of 2; a config whose [data] levels and
/// [model] num_values disagree is refused, naming both.
#[test]
fn quantized_data_gets_a_model_of_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (flags, name) in [(["--levels", "2"], "l2"), (["--binarize", "threshold"], "b")] {
        armory()
            .arg("train")
            .args(TINY)
            .arg("1")
            .args(flags)
            .args(["--name", name, "--runs-dir"])
            .arg(d)
            .assert()
            .success();
        let config = std::fs::read_to_string(d.join(name).join("config.toml")).unwrap();
        assert!(config.lines().any(|l| l.trim() == "num_values = 2"), "{config}");
        let raw = d.join(format!("{name}.csv"));
        armory()
            .args(["sample", "-n", "8", "--run"])
            .arg(d.join(name))
            .arg("--out")
            .arg(d.join(format!("{name}.png")))
            .arg("--raw")
            .arg(&raw)
            .assert()
            .success();
        let text = std::fs::read_to_string(&raw).unwrap();
        assert!(
            text.split([',', '\n'])
                .filter(|v| !v.is_empty())
                .all(|v| v == "0" || v == "1"),
            "{text}"
        );
    }
    let mismatched = shipped_config("seed-arm").replace("[data]", "[data]\nlevels = 4");
    let a = train_fails_with_config(d, "q.toml", &mismatched);
    let e = stderr_of(&a);
    assert!(
        e.contains("levels = 4") && e.contains("num_values = 17") && e.contains("set num_values = 4"),
        "{e}"
    );
}

/// Dead ends found by a fresh-eyes review, each with a message that says what to do instead: a folder given
/// as --data without its kind, --runs-dir naming a file, a seed TOML cannot hold, a CSV line too long (not
/// "truncated?"), an output in a folder that does not exist, a run without a checkpoint yet, --method for a
/// VAE, a relative dataset in a config; and --force over a VAE's run leaves none of its pictures behind.
#[test]
fn more_dead_ends_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = |args: &[&str]| {
        armory()
            .arg("train")
            .args(TINY)
            .arg("1")
            .args(args)
            .arg("--runs-dir")
            .arg(d.join("runs"))
            .assert()
    };
    let pngs = d.join("pngs");
    std::fs::create_dir(&pngs).unwrap();
    train(&["--data", pngs.to_str().unwrap()])
        .failure()
        .stderr(contains("pngs: is a folder").and(contains(format!("png:{}", pngs.display()))));
    std::fs::write(d.join("file"), b"x").unwrap();
    armory()
        .args(["train", "--quiet", "--epochs", "1", "--runs-dir"])
        .arg(d.join("file"))
        .assert()
        .failure()
        .stderr(contains("--runs-dir").and(contains("is not a folder")));
    train(&["--seed", "18446744073709551615"])
        .failure()
        .stderr(contains("train.seed = 18446744073709551615 is too large"));
    train(&["--batch-size", "0"])
        .failure()
        .stderr(contains("train.batch_size must be at least 1").and(contains("max_epochs").not()));

    let long = d.join("long.csv");
    std::fs::write(&long, format!("{}\n", vec!["1"; 66].join(","))).unwrap();
    let a = train(&["--data", long.to_str().unwrap()]).failure();
    let e = stderr_of(&a);
    assert!(e.contains("found 66") && !e.contains("truncated"), "{e}");

    let early = d.join("early");
    std::fs::create_dir(&early).unwrap();
    std::fs::copy(tiny_run(d, "t").join("config.toml"), early.join("config.toml")).unwrap();
    armory()
        .args(["sample", "--run"])
        .arg(d.join("t"))
        .arg("--out")
        .arg(d.join("nodir/x.png"))
        .assert()
        .failure()
        .stderr(contains("nodir/x.png: its folder").and(contains("nodir does not exist")));
    armory()
        .args(["eval", "--run"])
        .arg(&early)
        .assert()
        .failure()
        .stderr(contains("has no best.safetensors yet").and(contains("--resume")));

    armory()
        .args([
            "train",
            "--quiet",
            "--epochs",
            "1",
            "--model",
            "vae",
            "--name",
            "v",
            "--runs-dir",
        ])
        .arg(d.join("runs"))
        .assert()
        .success();
    let v = d.join("runs/v");
    assert!(v.join("reconstructions.png").is_file() && v.join("interpolations.png").is_file());
    let json = armory()
        .args(["eval", "--importance-samples", "5", "--json", "--run"])
        .arg(&v)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let figures: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let (kl, marginal) = (
        figures["kl"].as_f64().unwrap(),
        figures["marginal_kl"].as_f64().unwrap(),
    );
    assert!(
        marginal <= kl,
        "KL(q(z) ‖ p(z)) {marginal} above the KL term {kl}: I(x; z) < 0"
    );
    armory()
        .args(["sample", "--method", "naive", "--run"])
        .arg(&v)
        .arg("--out")
        .arg(d.join("v.png"))
        .assert()
        .failure()
        .stderr(contains("--method does not apply to a VAE"));
    train(&["--name", "v", "--force"]).success();
    assert!(!v.join("reconstructions.png").exists() && !v.join("interpolations.png").exists());

    armory()
        .args(["sample", "--temperature", "-1", "--run"])
        .arg(d.join("t"))
        .arg("--out")
        .arg(d.join("t.png"))
        .assert()
        .failure()
        .stderr(contains("--temperature must be a positive"));
    armory()
        .args(["sample", "--run"])
        .arg(d.join("t"))
        .arg("--out")
        .arg(d.join("t.png"))
        .arg("--raw")
        .arg(d.join("t.npy"))
        .assert()
        .failure()
        .stderr(contains("comma-separated text; name a .csv"));
    // A VAE's settings are named as written: its latents (not the decoder's context derived from them), and
    // the importance samples a training batch decodes.
    for (setting, says) in [
        ("latents = 1000000000000", "vae.latents = 1000000000000 exceeds"),
        ("latents = 16\ntrain_samples = 4096", "64 × 4096 importance samples"),
        ("latents = 16\nfree_bits = inf", "must be a finite number"),
    ] {
        let text = shipped_config("vae").replace("latents = 16", setting);
        let e = stderr_of(&train_fails_with_config(d, "vae.toml", &text));
        assert!(e.contains(says), "{setting}: {e}");
    }

    // A relative dataset in a config file is read from the current folder, not the config's: said.
    let config = d.join("rel.toml");
    std::fs::write(
        &config,
        shipped_config("seed-arm").replace("\"digits\"", "\"sub/x.csv\""),
    )
    .unwrap();
    armory()
        .args(["train", "--quiet", "--config"])
        .arg(&config)
        .arg("--runs-dir")
        .arg(d.join("runs"))
        .current_dir(d)
        .assert()
        .failure()
        .stderr(contains("rel.toml (a relative path is read from the current folder").and(contains("sub/x.csv")));
}

/// A run whose best.safetensors was deleted cannot finish (its best epoch's weights are gone): `--resume`
/// refuses before training (it trained every remaining epoch and failed at the end), and `eval` says the
/// file is missing rather than that no epoch has finished.
#[test]
fn a_run_that_lost_its_best_weights_says_so_up_front() {
    let dir = tempfile::tempdir().unwrap();
    armory()
        .arg("train")
        .args(TINY)
        .args(["3", "--stop-after-steps", "20", "--name", "d", "--runs-dir"])
        .arg(dir.path())
        .assert()
        .code(130);
    let run = dir.path().join("d");
    std::fs::remove_file(run.join("best.safetensors")).unwrap();
    let metrics = std::fs::read(run.join("metrics.csv")).unwrap();
    armory()
        .args(["train", "--quiet", "--resume"])
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains("best.safetensors: is missing").and(contains("best epoch (1)")));
    assert_eq!(
        std::fs::read(run.join("metrics.csv")).unwrap(),
        metrics,
        "it trained on"
    );
    armory()
        .args(["eval", "--run"])
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains(
            "best.safetensors is missing, though the run has finished epochs",
        ));
}
