//! The command line against a careless or hostile user (issue 17): outputs that would be overwritten or
//! half-written, damaged checkpoints, sizes bounded by nothing.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;

fn armory() -> Command {
    Command::cargo_bin("armory").unwrap()
}

const TINY: [&str; 6] = ["--hidden", "8", "--kernel", "3", "--quiet", "--epochs"];

/// A tiny seed-like model trained for two epochs into `dir/name`.
fn tiny_run(dir: &Path, name: &str) -> PathBuf {
    armory()
        .arg("train")
        .args(TINY)
        .args(["2", "--name", name, "--runs-dir"])
        .arg(dir)
        .assert()
        .success();
    dir.join(name)
}

fn stderr_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
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
