//! Training end to end through the library: the loss falls, checkpoints round-trip, resume is exact,
//! sampling is deterministic, and a diverging run stops with the last good checkpoint intact.

use std::path::Path;

mod common;

use armory::data::Splits;
use armory::models::causal_conv::Config;
use armory::models::{Arm, InputEncoding, Mode, ModelConfig, Network, Reduction};
use armory::sample::{sample_naive, Noise};
use armory::train::{self, metrics, Controls, Outcome, RunDir, TrainConfig};
use candle_core::{DType, Device};
use common::quiet;

fn small_model() -> ModelConfig {
    let net = Config {
        hidden: 16,
        kernel: 3,
        dilations: vec![1, 2, 1],
        ..Config::default()
    };
    ModelConfig::sequence(Network::CausalConv(net), 17, 64).with_input(InputEncoding::Scaled)
}

/// The digits split, with the training set cut to 256 images so an epoch takes milliseconds.
fn small_splits() -> Splits {
    common::small_digits(256, 128)
}

fn recipe(max_epochs: usize) -> TrainConfig {
    TrainConfig {
        lr: 3e-3,
        batch_size: 32,
        max_epochs,
        patience: 100,
        seed: 3,
        ..TrainConfig::default()
    }
}

#[test]
fn loss_falls_over_a_few_dozen_steps() {
    let splits = small_splits();
    let arm = Arm::new(&small_model(), 0, DType::F32, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    let before = train::evaluate(&arm, &splits.train, 256).unwrap().nll;
    let summary = train::train(&arm, &splits, &recipe(4), &run, false, &quiet()).unwrap(); // 32 steps
    let after = train::evaluate(&arm, &splits.train, 256).unwrap().nll;
    assert_eq!(summary.outcome, Outcome::MaxEpochs);
    assert!(after < before - 20.0, "train NLL went from {before:.2} to {after:.2}");
    let rows = metrics::read_csv(&run.file("metrics.csv")).unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows[3].val_nll < rows[0].val_nll);
}

#[test]
fn checkpoint_round_trip_gives_identical_log_probs() {
    let splits = small_splits();
    let arm = Arm::new(&small_model(), 0, DType::F32, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    train::train(&arm, &splits, &recipe(1), &run, false, &quiet()).unwrap();
    let x = splits.test.batch(&(0..50).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let before = arm.log_prob(&x).unwrap().to_vec1::<f32>().unwrap();
    let other = Arm::new(&small_model(), 99, DType::F32, &Device::Cpu).unwrap();
    assert_ne!(other.log_prob(&x).unwrap().to_vec1::<f32>().unwrap(), before);
    other.params().load(&run.file("best.safetensors")).unwrap();
    assert_eq!(other.log_prob(&x).unwrap().to_vec1::<f32>().unwrap(), before);
}

fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let mut t: Vec<_> = armory::params::load_tensors(path)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn interrupted_and_resumed_run_continues_the_same_curve() {
    interrupted_and_resumed(recipe(3)); // 8 steps per epoch, 24 in all
}

/// A learning-rate schedule is a function of the epoch, so a run stopped mid-epoch resumes on it; the first
/// epoch uses the base rate and later ones a smaller one.
#[test]
fn learning_rate_decay_changes_later_epochs_only_and_resumes_exactly() {
    let cfg = TrainConfig {
        lr_decay: Some(0.3),
        ..recipe(3)
    };
    assert_eq!(cfg.lr_at(0), cfg.lr);
    assert!((cfg.lr_at(2) - cfg.lr * 0.09).abs() < 1e-12);
    let (_, decayed) = interrupted_and_resumed(cfg);
    let (_, constant) = interrupted_and_resumed(recipe(3));
    let rows = |d: &tempfile::TempDir| metrics::read_csv(&d.path().join("metrics.csv")).unwrap();
    let (a, b) = (rows(&decayed), rows(&constant));
    assert_eq!(a[0].val_nll, b[0].val_nll);
    assert_ne!(a[1].val_nll, b[1].val_nll);
    assert_ne!(a[2].val_nll, b[2].val_nll);
    let bad = TrainConfig {
        lr_decay: Some(1.5),
        ..recipe(3)
    };
    assert!(bad.validate().unwrap_err().to_string().contains("lr_decay"));
}

/// Decoupled weight decay shrinks the kernels (not the biases) against the same run without it, and a run
/// with it resumes exactly; a decay that would flip the weights' sign is refused.
#[test]
fn weight_decay_shrinks_kernels_and_resumes_exactly() {
    let (_, decayed) = interrupted_and_resumed(TrainConfig {
        weight_decay: Some(5.0),
        ..recipe(3)
    });
    let (_, plain) = interrupted_and_resumed(recipe(3));
    let norms = |d: &tempfile::TempDir, rank2: bool| -> f64 {
        armory::params::load_tensors(&d.path().join("last.safetensors"))
            .unwrap()
            .into_iter()
            .filter(|(_, t)| (t.rank() >= 2) == rank2)
            .map(|(_, t)| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64)
            .sum::<f64>()
            .sqrt()
    };
    let (k_wd, k_plain) = (norms(&decayed, true), norms(&plain, true));
    assert!(
        k_wd < 0.97 * k_plain,
        "kernel norm {k_wd} with weight decay, {k_plain} without"
    );
    let (b_wd, b_plain) = (norms(&decayed, false), norms(&plain, false));
    assert!(
        (b_wd - b_plain).abs() < 0.1 * b_plain,
        "bias norm {b_wd} with weight decay, {b_plain} without"
    );
    let bad = TrainConfig {
        weight_decay: Some(1000.0),
        ..recipe(3)
    };
    assert!(bad.validate().unwrap_err().to_string().contains("weight_decay"));
}

/// With Polyak averaging the average is resumed too, and it — not the raw weights — is what is validated
/// and saved.
#[test]
fn interrupted_and_resumed_run_with_a_weight_average_continues_the_same_curve() {
    let (splits, dir) = interrupted_and_resumed(TrainConfig {
        ema: Some(0.9),
        ..recipe(3)
    });
    let straight = RunDir::create(dir.path()).unwrap();
    let arm = Arm::new(&small_model(), 0, DType::F32, &Device::Cpu).unwrap();
    arm.params().load(&straight.file("last.safetensors")).unwrap();
    let rows = metrics::read_csv(&straight.file("metrics.csv")).unwrap();
    let val = train::evaluate(&arm, &splits.val, 256).unwrap().nll;
    assert!((val - rows[2].val_nll).abs() < 1e-5, "{val} vs {}", rows[2].val_nll);
    let (resume, _) = straight.load_resume(arm.params()).unwrap();
    let raw = resume["net.0.conv1d.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let avg = weights(&straight.file("last.safetensors"));
    let avg = &avg.iter().find(|(k, _)| k == "net.0.conv1d.weight").unwrap().1;
    let gap = raw.iter().zip(avg).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(gap > 1e-4, "the saved weights are the raw ones (gap {gap})");
}

fn interrupted_and_resumed(cfg: TrainConfig) -> (Splits, tempfile::TempDir) {
    let splits = small_splits();
    let straight_dir = tempfile::tempdir().unwrap();
    let straight = RunDir::create(straight_dir.path()).unwrap();
    let arm = Arm::new(&small_model(), cfg.seed, DType::F32, &Device::Cpu).unwrap();
    train::train(&arm, &splits, &cfg, &straight, false, &quiet()).unwrap();

    let resumed_dir = tempfile::tempdir().unwrap();
    let resumed = RunDir::create(resumed_dir.path()).unwrap();
    // Stop mid-epoch (after 5 steps), then mid-epoch again (13 more: epoch 3, step 2), then finish —
    // each time in a fresh model, as a new process would.
    for (i, stop) in [Some(5), Some(13), None].into_iter().enumerate() {
        let arm = Arm::new(&small_model(), cfg.seed, DType::F32, &Device::Cpu).unwrap();
        let controls = Controls {
            stop_after_steps: stop,
            ..quiet()
        };
        let s = train::train(&arm, &splits, &cfg, &resumed, i > 0, &controls).unwrap();
        let want = if stop.is_some() {
            Outcome::Interrupted
        } else {
            Outcome::MaxEpochs
        };
        assert_eq!(s.outcome, want);
    }
    let a = metrics::read_csv(&straight.file("metrics.csv")).unwrap();
    let b = metrics::read_csv(&resumed.file("metrics.csv")).unwrap();
    assert_eq!(a.len(), 3);
    let curve = |rows: &[metrics::EpochRow]| {
        rows.iter()
            .map(|r| (r.epoch, r.train_nll, r.val_nll))
            .collect::<Vec<_>>()
    };
    assert_eq!(curve(&a), curve(&b));
    assert_eq!(
        weights(&straight.file("last.safetensors")),
        weights(&resumed.file("last.safetensors"))
    );
    assert_eq!(
        weights(&straight.file("best.safetensors")),
        weights(&resumed.file("best.safetensors"))
    );
    (splits, straight_dir)
}

/// A training state that the loop could not have written (edited by hand, or damaged) is refused by
/// `--resume` naming the file, and the untouched state resumes.
#[test]
fn a_resume_state_that_does_not_add_up_is_refused() {
    let splits = small_splits();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    let arm = Arm::new(&small_model(), 0, DType::F32, &Device::Cpu).unwrap();
    train::train(&arm, &splits, &recipe(1), &run, false, &quiet()).unwrap();
    let (tensors, state) = run.load_resume(arm.params()).unwrap();
    let good: serde_json::Value = serde_json::from_str(&state).unwrap();
    let cases: [(&str, serde_json::Value, &str); 6] = [
        ("/early/best", "NaN".into(), "the best validation NLL is NaN"),
        (
            "/early/best",
            serde_json::Value::Null,
            "no best validation NLL after 1 epoch",
        ),
        ("/early/best_epoch", 2.into(), "best epoch 2"),
        ("/step", 99.into(), "step 99 (32 examples) of an epoch of 8 steps"),
        ("/loss_count", 5.into(), "5 example(s) counted after 0 step(s)"),
        ("/elapsed_secs", "-1.0".into(), "elapsed_secs = -1 is not a duration"),
    ];
    for (field, value, message) in cases {
        let mut bad = good.clone();
        *bad.pointer_mut(field).unwrap() = value;
        if field == "/step" {
            *bad.pointer_mut("/loss_count").unwrap() = 32.into(); // one batch: only the step is wrong
        }
        run.save_resume(&tensors, &bad.to_string(), arm.params()).unwrap();
        let arm = Arm::new(&small_model(), 0, DType::F32, &Device::Cpu).unwrap();
        let err = train::train(&arm, &splits, &recipe(2), &run, true, &quiet())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("resume.safetensors") && err.contains("bad training state") && err.contains(message),
            "{field}: {err}"
        );
    }
    run.save_resume(&tensors, &state, arm.params()).unwrap();
    let arm = Arm::new(&small_model(), 0, DType::F32, &Device::Cpu).unwrap();
    let s = train::train(&arm, &splits, &recipe(2), &run, true, &quiet()).unwrap();
    assert_eq!(s.outcome, Outcome::MaxEpochs);
}

#[test]
fn sampling_is_deterministic_per_seed_and_in_range() {
    let arm = Arm::new(&small_model(), 0, DType::F32, &Device::Cpu).unwrap();
    let a = sample_naive(&arm, &Noise::new(5, 64, 1), 1.0, None).unwrap();
    let b = sample_naive(&arm, &Noise::new(5, 64, 1), 1.0, None).unwrap();
    let c = sample_naive(&arm, &Noise::new(5, 64, 2), 1.0, None).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.len(), 5 * 64);
    assert!(a.iter().all(|&v| v < 17));
    // Samples are scored by the model they came from without complaint.
    let x = candle_core::Tensor::from_vec(a, (5, 64), &Device::Cpu).unwrap();
    assert!(arm
        .log_prob(&x)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));
}

#[test]
fn non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let splits = small_splits();
    let arm = Arm::new(&small_model(), 0, DType::F32, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    train::train(&arm, &splits, &recipe(1), &run, false, &quiet()).unwrap();
    let good = std::fs::read(run.file("last.safetensors")).unwrap();
    let good_resume = std::fs::read(run.file("resume.safetensors")).unwrap();
    let wild = TrainConfig { lr: 1e30, ..recipe(3) };
    let err = train::train(&arm, &splits, &wild, &run, true, &quiet()).unwrap_err();
    assert!(matches!(err, armory::Error::NonFiniteLoss { epoch: 2, .. }), "{err}");
    assert!(
        err.to_string().contains("last good checkpoint (epoch 1) is kept"),
        "{err}"
    );
    assert_eq!(std::fs::read(run.file("last.safetensors")).unwrap(), good);
    assert_eq!(std::fs::read(run.file("resume.safetensors")).unwrap(), good_resume);
}

/// A loss that diverges in the first epoch leaves no checkpoint, and the message does not promise one.
#[test]
fn non_finite_loss_in_the_first_epoch_promises_no_checkpoint() {
    let splits = small_splits();
    let arm = Arm::new(&small_model(), 0, DType::F32, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    let wild = TrainConfig { lr: 1e30, ..recipe(3) };
    let err = train::train(&arm, &splits, &wild, &run, false, &quiet()).unwrap_err();
    assert!(matches!(err, armory::Error::NonFiniteLoss { epoch: 1, .. }), "{err}");
    let e = err.to_string();
    assert!(
        e.contains("no checkpoint was written") && e.contains("--force") && !e.contains("last good checkpoint"),
        "{e}"
    );
    assert!(!run.file("last.safetensors").exists() && !run.file("resume.safetensors").exists());
}

/// A resume whose metrics.csv is gone (or cut short) is refused, saying why, instead of silently dropping
/// the history of the epochs before.
#[test]
fn resume_without_the_metrics_history_is_refused() {
    let splits = small_splits();
    let arm = Arm::new(&small_model(), 0, DType::F32, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    train::train(&arm, &splits, &recipe(2), &run, false, &quiet()).unwrap();
    let csv = std::fs::read_to_string(run.file("metrics.csv")).unwrap();
    std::fs::remove_file(run.file("metrics.csv")).unwrap();
    let e = train::train(&arm, &splits, &recipe(3), &run, true, &quiet())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("metrics.csv") && e.contains("missing") && e.contains("2 epoch"),
        "{e}"
    );
    let first_row_only: String = csv.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(run.file("metrics.csv"), first_row_only).unwrap();
    let e = train::train(&arm, &splits, &recipe(3), &run, true, &quiet())
        .unwrap_err()
        .to_string();
    assert!(e.contains("metrics.csv") && e.contains("incomplete"), "{e}");
    // A repeated row is not called incomplete, with as many rows as epochs or fewer.
    let row1 = csv.lines().nth(1).unwrap();
    for repeated in [
        format!("{csv}{}\n", csv.lines().last().unwrap()),
        format!("{}\n{row1}\n{row1}\n", csv.lines().next().unwrap()),
    ] {
        std::fs::write(run.file("metrics.csv"), repeated).unwrap();
        let e = train::train(&arm, &splits, &recipe(3), &run, true, &quiet())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match") && !e.contains("incomplete"), "{e}");
    }
    std::fs::write(run.file("metrics.csv"), csv).unwrap();
    train::train(&arm, &splits, &recipe(3), &run, true, &quiet()).unwrap();
}

#[test]
fn mean_and_sum_reductions_agree() {
    let arm = Arm::new(&small_model(), 0, DType::F32, &Device::Cpu).unwrap();
    let splits = small_splits();
    let x = splits.test.batch(&[0, 1, 2, 3], &Device::Cpu).unwrap();
    let mean = arm
        .loss(&x, Reduction::Mean, Mode::Eval)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let sum = arm
        .loss(&x, Reduction::Sum, Mode::Eval)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((sum - 4.0 * mean).abs() < 1e-3 * sum.abs());
}

/// Training gives the same weights to the bit on 1 and 2 threads (and twice on 2): every kernel splits its
/// work so that no sum depends on the thread count. The model is large enough for the parallel paths: the
/// convolution products are split across threads and the bias gradients sum several blocks of rows.
#[test]
fn training_is_bitwise_the_same_on_one_and_two_threads() {
    let net = Config {
        hidden: 64,
        kernel: 7,
        ..Config::default()
    };
    let cfg = ModelConfig::sequence(Network::CausalConv(net), 17, 64);
    let splits = small_splits();
    let train_weights = |threads: usize| {
        armory::with_threads(threads, || {
            let arm = Arm::new(&cfg, 0, DType::F32, &Device::Cpu).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let run = RunDir::create(dir.path()).unwrap();
            let recipe = TrainConfig {
                batch_size: 64,
                ..recipe(1)
            };
            train::train(&arm, &splits, &recipe, &run, false, &quiet()).unwrap();
            weights(&run.file("last.safetensors"))
        })
        .unwrap()
    };
    let one = train_weights(1);
    assert_eq!(one, train_weights(2), "1 and 2 threads differ");
    assert_eq!(one, train_weights(2), "two runs on 2 threads differ");
}
