//! The `armory` binary as a user runs it.

use std::path::Path;

use common::armory;
use predicates::str::contains;

mod common;

const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/reference");

/// A tiny seed-like model trained for two epochs into `dir/t`.
fn tiny_run(dir: &Path) -> std::path::PathBuf {
    common::tiny_train(dir, "t").stdout(contains("test:").and(contains("nats per image")));
    dir.join("t")
}

use predicates::prelude::*;

#[test]
fn train_writes_a_complete_run_directory_and_eval_and_sample_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path());
    for f in [
        "config.toml",
        "best.safetensors",
        "last.safetensors",
        "resume.safetensors",
        "metrics.csv",
        "real.png",
        "samples.png",
        "curve.png",
        "summary.json",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    armory()
        .args(["eval", "--split", "val", "--run"])
        .arg(&run)
        .assert()
        .success()
        .stdout(contains("validation split of digits").and(contains("bits per dimension")));
    // An ARM's −log p(x) is exact: asking it for importance samples is refused, not ignored.
    armory()
        .args(["eval", "--importance-samples", "10", "--run"])
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains("apply to latent-variable models").and(contains("exact")));

    let sample = |seed: &str, name: &str| {
        let raw = dir.path().join(name);
        armory()
            .args(["sample", "-n", "4", "--seed", seed, "--run"])
            .arg(&run)
            .arg("--out")
            .arg(dir.path().join(format!("{name}.png")))
            .arg("--raw")
            .arg(&raw)
            .assert()
            .success();
        std::fs::read_to_string(raw).unwrap()
    };
    let (a, b, c) = (sample("1", "a.csv"), sample("1", "b.csv"), sample("2", "c.csv"));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.lines().count(), 4);
    for line in a.lines() {
        let v: Vec<u32> = line.split(',').map(|s| s.parse().unwrap()).collect();
        assert!(v.len() == 64 && v.iter().all(|&x| x <= 16));
    }
    assert!(image::open(dir.path().join("a.csv.png")).is_ok());

    // A second train into the same name is refused rather than overwriting it.
    armory()
        .args([
            "train",
            "--epochs",
            "1",
            "--hidden",
            "8",
            "--quiet",
            "--name",
            "t",
            "--runs-dir",
        ])
        .arg(dir.path())
        .assert()
        .failure()
        .stderr(contains("already holds a run").and(contains("--resume")));
}

#[test]
fn interrupted_training_resumes_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    armory()
        .args([
            "train",
            "--epochs",
            "2",
            "--hidden",
            "8",
            "--kernel",
            "3",
            "--quiet",
            "--name",
            "r",
            "--stop-after-steps",
            "20",
            "--runs-dir",
        ])
        .arg(dir.path())
        .assert()
        .code(130)
        .stdout(contains("stopped at epoch 2").and(contains("armory train --resume")));
    armory()
        .args(["train", "--quiet", "--resume"])
        .arg(dir.path().join("r"))
        .assert()
        .success()
        .stdout(contains("reached the epoch limit after 2 epochs"));
}

#[test]
fn eval_with_pytorch_weights_reproduces_the_reference_test_nll() {
    let out = armory()
        .args(["eval", "--json", "--weights"])
        .arg(format!("{REFERENCE}/seed-arm-trained/weights.safetensors"))
        .assert()
        .success();
    let json: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let nll = json["nll_nats"].as_f64().unwrap();
    // The reference README: test NLL 86.4 nats per image on the full test split.
    assert!((nll - 86.4).abs() < 0.05, "{nll}");
    assert_eq!(json["examples"], 447);
}

/// `--no-spin` (workers sleeping between kernels) trains to the same numbers as the default (busy-waiting
/// workers): who runs a task never changes a sum.
#[test]
fn no_spin_trains_to_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_train(dir.path(), "spin");
    armory()
        .arg("--no-spin")
        .arg("train")
        .args(common::TINY)
        .args(["2", "--name", "sleep", "--runs-dir"])
        .arg(dir.path())
        .assert()
        .success();
    let metrics = |name: &str| -> Vec<String> {
        let text = std::fs::read_to_string(dir.path().join(name).join("metrics.csv")).unwrap();
        // Every column but the two times.
        text.lines()
            .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(metrics("spin"), metrics("sleep"));
    assert_eq!(metrics("spin").len(), 3, "a header and two epochs");
}

#[test]
fn info_prints_parameters_and_receptive_field() {
    armory()
        .arg("info")
        .assert()
        .success()
        .stdout(contains("parameters: 950545").and(contains(
            "receptive field: 25 of the 63 positions before the last (64 in all)",
        )));
}

#[test]
fn bad_inputs_get_clear_errors_naming_the_file_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train_on = |data: &Path| {
        armory()
            .args(["train", "--epochs", "1", "--quiet", "--runs-dir"])
            .arg(d)
            .arg("--force")
            .arg("--data")
            .arg(data)
            .assert()
            .failure()
    };

    let missing = train_on(&d.join("missing.csv")).stderr(contains("missing.csv").and(contains("No such file")));
    let said = String::from_utf8_lossy(&missing.get_output().stderr).into_owned();
    assert_eq!(said.matches("No such file").count(), 1, "the OS error once: {said}");
    std::fs::write(d.join("range.csv"), format!("{}99,1\n", "0,".repeat(63))).unwrap();
    train_on(&d.join("range.csv")).stderr(contains("range.csv").and(contains("pixel value 99 is outside 0..16")));
    let gz = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.csv.gz")).unwrap();
    std::fs::write(d.join("cut.csv.gz"), &gz[..gz.len() / 3]).unwrap();
    train_on(&d.join("cut.csv.gz")).stderr(contains("cut.csv.gz").and(contains("truncated")));
    assert!(
        !d.join("seed-arm").exists(),
        "a run that never started left a directory"
    );

    // A checkpoint of another architecture, a missing tensor, a file that is not a checkpoint.
    let run = tiny_run(d);
    // --force over a finished run with data that fails to load leaves the finished run as it was.
    armory()
        .args(["train", "--quiet", "--name", "t", "--force", "--runs-dir"])
        .arg(d)
        .arg("--data")
        .arg(d.join("missing.csv"))
        .assert()
        .failure();
    assert!(run.join("best.safetensors").is_file() && run.join("metrics.csv").is_file());
    armory()
        .args(["eval", "--weights"])
        .arg(run.join("best.safetensors"))
        .assert()
        .failure()
        .stderr(
            contains("net.0.conv1d.bias")
                .or(contains("net.0.conv1d.weight"))
                .and(contains("the model expects")),
        );
    let mut t =
        armory::params::load_tensors(Path::new(&format!("{REFERENCE}/seed-arm-random/weights.safetensors"))).unwrap();
    t.remove("net.4.conv1d.weight");
    armory::params::save_tensors(&t, &d.join("partial.safetensors")).unwrap();
    armory()
        .args(["eval", "--weights"])
        .arg(d.join("partial.safetensors"))
        .assert()
        .failure()
        .stderr(contains("net.4.conv1d.weight").and(contains("missing")));
    std::fs::write(d.join("junk.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    armory()
        .args(["eval", "--weights"])
        .arg(d.join("junk.safetensors"))
        .assert()
        .failure()
        .stderr(contains("junk.safetensors"));

    // A config whose first layer is type B.
    let cfg = armory::config::SEED_CONFIG.replace(
        "input = \"raw\"",
        "input = \"raw\"\nlayer_types = [\"B\", \"B\", \"B\", \"B\"]",
    );
    std::fs::write(d.join("bad.toml"), cfg).unwrap();
    armory()
        .args(["train", "--config"])
        .arg(d.join("bad.toml"))
        .assert()
        .failure()
        .stderr(contains("first layer is type B").and(contains("must be type A")));
}

#[test]
fn model_flag_picks_a_shipped_config_and_names_the_run_after_it() {
    let dir = tempfile::tempdir().unwrap();
    armory()
        .args(["train", "--model", "mlp", "--epochs", "1", "--quiet", "--runs-dir"])
        .arg(dir.path())
        .assert()
        .success();
    let cfg = std::fs::read_to_string(dir.path().join("mlp/config.toml")).unwrap();
    assert!(cfg.contains("kind = \"mlp\""), "{cfg}");
    armory()
        .args(["info", "--model", "wavenet"])
        .assert()
        .success()
        .stdout(contains("receptive field: 63 of the 63"));
    armory()
        .args(["train", "--model", "nope"])
        .assert()
        .failure()
        .stderr(contains("no model named `nope`").and(contains("wavenet")));
}

/// A real Ctrl-C (SIGINT) during training: the process saves its state and exits with status 130; the saved last
/// weights evaluate, and --resume refuses flags that would change the recipe.
#[test]
fn ctrl_c_saves_the_state_and_resume_keeps_the_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("armory");
    let child = std::process::Command::new(&bin)
        .args([
            "train",
            "--epochs",
            "400",
            "--hidden",
            "8",
            "--kernel",
            "3",
            "--name",
            "c",
            "--runs-dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = dir.path().join("c/metrics.csv");
    let started = std::time::Instant::now();
    while !metrics.exists() {
        assert!(started.elapsed().as_secs() < 120, "no epoch finished in 2 minutes");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Saved, and not finished: the status a shell gives Ctrl-C, so that `train && eval` stops there.
    assert!(
        out.status.code() == Some(130),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("state saved") && stdout.contains("--resume"),
        "{stdout}"
    );
    armory()
        .args(["train", "--quiet", "--epochs", "3", "--resume"])
        .arg(dir.path().join("c"))
        .assert()
        .failure()
        .stderr(contains("cannot be used with"));
    armory()
        .args(["eval", "--checkpoint", "last", "--run"])
        .arg(dir.path().join("c"))
        .assert()
        .success();
}

/// A folder of colour PNGs, quantized to 4 levels, trains an RGB PixelCNN — categorical, and with
/// PixelCNN++'s pixel mixture — and draws colour samples.
#[test]
fn colour_pictures_train_an_rgb_pixelcnn_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let pngs = dir.path().join("pngs");
    std::fs::create_dir(&pngs).unwrap();
    for i in 0..24u32 {
        let img = image::RgbImage::from_fn(3, 2, |x, y| {
            image::Rgb([(40 * (x + y + i) % 256) as u8, (i * 10) as u8, 200])
        });
        img.save(pngs.join(format!("{i:02}.png"))).unwrap();
    }
    for (name, extra, distribution) in [
        ("rgb", "", "categorical"),
        ("rgbmix", "n_mix = 2\n", "RGB pixel mixture"),
    ] {
        let cfg = format!(
            "[data]\ndataset = \"png:{}\"\nlevels = 4\n\n[model]\nkind = \"pixelcnn\"\nnum_values = 4\nheight = 2\n\
             width = 3\ncolors = 3\nhidden = 12\nfirst_kernel = 3\nblocks = 1\nkernel = 3\nhead_hidden = 6\n{extra}\n\
             [train]\noptimizer = \"adam\"\nlr = 0.003\nmax_epochs = 2\npatience = 5\nseed = 0\nbatch_size = 8\n",
            pngs.display()
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, cfg).unwrap();
        armory()
            .args(["train", "--quiet", "--runs-dir"])
            .arg(dir.path())
            .arg("--config")
            .arg(&path)
            .assert()
            .success()
            .stdout(contains("bits/dim"));
        armory()
            .args(["info", "--run"])
            .arg(dir.path().join(name))
            .assert()
            .success()
            .stdout(contains(distribution));
        let out = dir.path().join(format!("{name}.png"));
        armory()
            .args(["sample", "--run"])
            .arg(dir.path().join(name))
            .args(["-n", "4", "--out"])
            .arg(&out)
            .assert()
            .success()
            .stdout(contains("cached sampler"));
        let img = image::open(&out).unwrap().to_rgb8();
        assert!(
            img.pixels().any(|p| p.0[0] != p.0[1] || p.0[1] != p.0[2]),
            "{name}: colour samples are drawn in colour"
        );
    }
}

/// `armory bench` measures our side without the peer (the table, the second-core row), and an interpreter
/// without torch is refused by name rather than silently skipped.
#[test]
fn bench_prints_our_figures_alone_and_refuses_a_python_without_torch() {
    let out = armory()
        .args([
            "--threads",
            "2",
            "bench",
            "--only",
            "seed",
            "--rounds",
            "1",
            "--reps",
            "1",
            "--no-peer",
        ])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    for row in [
        "no PyTorch peer",
        "train step, batch 64, 2 threads",
        "naive sampling, 16 images",
        "2 threads over 1",
    ] {
        assert!(text.contains(row), "missing {row:?} in:\n{text}");
    }
    // Every row the long-lived workers were asked for has a figure: both thread counts' train steps.
    for row in [
        "train step, batch 64, 2 threads",
        "train step, batch 64, 1 thread",
        "cached sampling",
    ] {
        let line = text.lines().find(|l| l.starts_with(row)).unwrap_or_default();
        assert!(line.contains(" ms"), "no figure for {row:?} in:\n{text}");
    }
    assert!(
        text.contains("AVX") || text.contains("SSE") || text.contains("non-x86"),
        "no SIMD level:\n{text}"
    );
    armory()
        .args(["bench", "--only", "seed", "--python", "/nonexistent/python"])
        .assert()
        .failure()
        .stderr(contains("cannot import torch and numpy"));
}

/// A VAE from the command line: `train --model vae` writes its run (with reconstructions and interpolations),
/// `eval` reports the −ELBO, the KL, the importance-weighted −log p(x) with K and the seed, and active units;
/// `sample` and `encode` read the run; bad requests get clear errors.
#[test]
fn a_vae_trains_evaluates_samples_and_encodes_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    armory()
        .args([
            "train",
            "--model",
            "vae",
            "--epochs",
            "2",
            "--quiet",
            "--name",
            "v",
            "--runs-dir",
        ])
        .arg(dir.path())
        .assert()
        .success()
        .stdout(contains("importance-weighted, K = 1000, seed 0").and(contains("latents active")));
    let run = dir.path().join("v");
    for f in [
        "reconstructions.png",
        "interpolations.png",
        "samples.png",
        "curve.png",
        "summary.json",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let out = armory()
        .args(["eval", "--importance-samples", "20", "--seed", "3", "--json", "--run"])
        .arg(&run)
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(
        (v["importance_samples"].as_u64(), v["seed"].as_u64()),
        (Some(20), Some(3))
    );
    let (nll, elbo) = (v["nll_nats"].as_f64().unwrap(), v["neg_elbo"].as_f64().unwrap());
    assert!(nll < elbo && nll > 0.0, "−log p̂ {nll} vs −ELBO {elbo}");
    armory()
        .args(["eval", "--importance-samples", "0", "--run"])
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains("--importance-samples must be at least 1"));
    armory()
        .args(["eval", "--importance-samples", "18446744073709551615", "--run"])
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains(
            "--importance-samples = 18446744073709551615 exceeds the limit",
        ));
    let png = dir.path().join("s.png");
    armory()
        .args(["sample", "-n", "4", "--out"])
        .arg(&png)
        .arg("--run")
        .arg(&run)
        .assert()
        .success();
    assert!(png.is_file());
    armory()
        .args(["sample", "--label", "1", "--run"])
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains("not class-conditional"));
    let csv = dir.path().join("z.csv");
    armory()
        .args(["encode", "--split", "val", "-o"])
        .arg(&csv)
        .arg("--run")
        .arg(&run)
        .assert()
        .success();
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.lines().all(|l| l.split(',').count() == 16), "16 latents a line");
    armory()
        .args(["compress", "--run"])
        .arg(&run)
        .arg(dir.path().join("z.csv"))
        .args(["-o"])
        .arg(dir.path().join("x.arm"))
        .assert()
        .failure()
        .stderr(contains("this run is a VAE"));
    // A config edited after training (other latents) is refused, naming it: its first line stamps what the
    // weights were trained with.
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let edited = config
        .replace("latents = 16", "latents = 8")
        .replace("context = 16", "context = 8");
    std::fs::write(run.join("config.toml"), &edited).unwrap();
    armory()
        .args(["eval", "--run"])
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains(
            "config.toml: its [model] or [latent] was changed after training",
        ));
    // Without the stamp (a run of an older version), the checkpoint that does not fit is refused, naming it.
    let unstamped: String = edited.lines().skip(1).map(|l| format!("{l}\n")).collect();
    assert!(config.starts_with("# armory v1: trained with model ") && !unstamped.starts_with("# armory"));
    std::fs::write(run.join("config.toml"), unstamped).unwrap();
    armory()
        .args(["eval", "--run"])
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains("best.safetensors"));
}
