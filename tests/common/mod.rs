//! Helpers shared by the integration tests: the binary, tiny configs, cut-down digits, and the f64
//! finite-difference gradient check. Each test file uses a part of them (`mod common;`), hence the allow.
#![allow(dead_code)]

use std::path::Path;

use armory::data::{self, Splits};
use armory::models::{gated_pixelcnn, pixelcnn, Arm, Mode, ModelConfig, Network, Reduction};
use armory::train::Controls;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

/// The `armory` binary of this build.
pub fn armory() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("armory").unwrap()
}

/// The flags of a tiny seed-like model, quiet, up to `--epochs` (its number follows).
pub const TINY: [&str; 6] = ["--hidden", "8", "--kernel", "3", "--quiet", "--epochs"];

/// Trains the tiny seed-like model for two epochs into `dir/name`, asserting success; the caller may check
/// the output further.
pub fn tiny_train(dir: &Path, name: &str) -> assert_cmd::assert::Assert {
    armory()
        .arg("train")
        .args(TINY)
        .args(["2", "--name", name, "--runs-dir"])
        .arg(dir)
        .assert()
        .success()
}

/// The digits split by position, the training and validation sets cut to their first `train` and `val`
/// examples (the test set whole), so that an epoch takes milliseconds.
pub fn small_digits(train: usize, val: usize) -> Splits {
    let mut s = Splits::by_position(&data::load("digits").unwrap()).unwrap();
    s.train = s.train.slice(0..train);
    s.val = s.val.slice(0..val);
    s
}

/// Training without a progress bar or per-epoch lines.
pub fn quiet() -> Controls {
    Controls {
        quiet: true,
        ..Controls::default()
    }
}

/// A tiny PixelCNN for K values and h × w gray images: 2 blocks of 6 channels, one-hot input, categorical.
pub fn pixelcnn(k: usize, h: usize, w: usize) -> ModelConfig {
    pixelcnn_colours(k, h, w, 1)
}

/// [`pixelcnn`] for images of `colors` colours.
pub fn pixelcnn_colours(k: usize, h: usize, w: usize, colors: usize) -> ModelConfig {
    let net = pixelcnn::Config {
        hidden: 6,
        first_kernel: 5,
        blocks: 2,
        kernel: 3,
        head_hidden: 5,
    };
    ModelConfig::image(Network::Pixelcnn(net), k, h, w, colors)
}

/// A tiny gated PixelCNN for K values and h × w gray images: 2 layers of 4 channels, one-hot input,
/// categorical, class-conditional with `num_classes`.
pub fn gated(k: usize, h: usize, w: usize, num_classes: Option<usize>) -> ModelConfig {
    gated_colours(k, h, w, 1, num_classes)
}

/// [`gated`] for images of `colors` colours.
pub fn gated_colours(k: usize, h: usize, w: usize, colors: usize, num_classes: Option<usize>) -> ModelConfig {
    let net = gated_pixelcnn::Config {
        channels: 4,
        first_kernel: 5,
        layers: 2,
        kernel: 3,
        head_hidden: 5,
        num_classes,
        vertical_residual: false,
    };
    ModelConfig::image(Network::GatedPixelcnn(net), k, h, w, colors)
}

/// The gated PixelCNN settings of `m` (which must be one), to change.
pub fn gated_net(m: &mut ModelConfig) -> &mut gated_pixelcnn::Config {
    match &mut m.network {
        Network::GatedPixelcnn(c) => c,
        other => panic!("not a gated PixelCNN: {other:?}"),
    }
}

/// `b` examples of `d` values drawn uniformly from `0..k` with `seed`, as a `[B, D]` u32 tensor.
pub fn random_x(b: usize, d: usize, k: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<u32> = (0..b * d).map(|_| rng.random_range(0..k as u32)).collect();
    Tensor::from_vec(v, (b, d), &Device::Cpu).unwrap()
}

/// The loss gradient of every parameter tensor of the model `cfg` (K = `k` values, D = `d` positions) in f64,
/// at about a dozen entries of each, against central finite differences (step 1e-6, tolerance
/// 1e-6 · (1 + |fd|)); `name` labels a failure.
pub fn check_gradients(name: &str, cfg: &ModelConfig, k: usize, d: usize) {
    let arm = Arm::new(cfg, 3, DType::F64, &Device::Cpu).unwrap();
    let x = random_x(4, d, k, 5);
    let loss = |arm: &Arm| {
        arm.loss(&x, Reduction::Mean, Mode::Eval)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let grads = arm.loss(&x, Reduction::Mean, Mode::Eval).unwrap().backward().unwrap();
    for (pname, var) in arm.params().vars() {
        let g = grads
            .get(&var)
            .unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let set = |v: Vec<f64>| {
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap()
        };
        for i in (0..base.len()).step_by(1 + base.len() / 12) {
            let mut v = base.clone();
            v[i] += 1e-6;
            set(v.clone());
            let up = loss(&arm);
            v[i] -= 2e-6;
            set(v);
            let down = loss(&arm);
            set(base.clone());
            let fd = (up - down) / 2e-6;
            assert!(
                (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                "{name} {pname}[{i}]: fd {fd} vs backprop {}",
                g[i]
            );
        }
    }
}

/// A fresh model whose class-conditional gate biases (zero at initialisation) are random, so that a
/// sampler (or coder) that drops or misplaces them is caught.
pub fn random_arm(cfg: &ModelConfig, seed: u64) -> Arm {
    let arm = Arm::new(cfg, seed, DType::F32, &Device::Cpu).unwrap();
    for (name, var) in arm.params().vars() {
        if name.contains("cond") || name.contains("ctx") {
            let v: Vec<f32> = (0..var.elem_count())
                .map(|i| 2.0 * (1.7 * i as f32 + 0.3).sin())
                .collect();
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    arm
}
