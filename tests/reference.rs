//! Parity with PyTorch: the seed ARM's logits, log-likelihoods and gradients as PyTorch 2.15 computes them
//! (`tests/data/reference/`, copied from the project's shared reference vectors; see its README).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use armory::config::RunConfig;
use armory::models::{Arm, Mode, Reduction};
use armory::nn::{CausalConv1d, CausalConv1dConfig, ConvType};
use armory::params::load_tensors;
use candle_core::{DType, Device, Tensor, Var};

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap())
}

fn reference(dir: &str) -> (PathBuf, HashMap<String, Tensor>, Tensor) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/reference")
        .join(dir);
    let expected = load_tensors(&dir.join("expected.safetensors")).unwrap();
    let x = expected["x"].to_dtype(DType::U32).unwrap();
    (dir, expected, x)
}

fn check_outputs(dir: &str) {
    let (dir, expected, x) = reference(dir);
    let arm = Arm::new(&RunConfig::seed().model, 0, DType::F32, &Device::Cpu).unwrap();
    arm.params().load(&dir.join("weights.safetensors")).unwrap();
    for (what, got) in [
        ("logits", arm.forward(&x, Mode::Eval).unwrap()),
        ("log_prob", arm.log_prob(&x).unwrap()),
        (
            "loss",
            arm.loss(&x, Reduction::Mean, Mode::Eval).unwrap().unsqueeze(0).unwrap(),
        ),
    ] {
        let err = max_abs_diff(&got, &expected[what]);
        assert!(err < 1e-4, "{dir:?}: {what} differs from PyTorch by {err}");
    }
}

/// The seed net written out layer by layer, with each LeakyReLU's derivative given by an explicit mask
/// (1 where the pre-activation counts as positive, else the slope). Returns the loss and the weight vars.
fn masked_loss(
    weights: &HashMap<String, Tensor>,
    x: &Tensor,
    masks: &[Tensor],
    dtype: DType,
) -> (Tensor, Vec<(String, Var)>) {
    let mut vars = vec![];
    let mut h = x.to_dtype(dtype).unwrap().unsqueeze(2).unwrap();
    for (layer, i) in [0, 2, 4, 6].into_iter().enumerate() {
        let mut get = |n: &str| {
            let name = format!("net.{i}.conv1d.{n}");
            let v = Var::from_tensor(&weights[&name].to_dtype(dtype).unwrap()).unwrap();
            vars.push((name, v.clone()));
            v
        };
        let (w, b) = (get("weight"), get("bias"));
        let kind = if layer == 0 { ConvType::A } else { ConvType::B };
        let conv = CausalConv1d::new(
            w.as_tensor().clone(),
            Some(b.as_tensor().clone()),
            CausalConv1dConfig {
                kernel: 7,
                dilation: 1,
                kind,
            },
        );
        h = conv.forward_blc(&h).unwrap();
        if layer < 3 {
            h = masks[layer].where_cond(&h, &(&h * 0.01).unwrap()).unwrap();
        }
    }
    let lp = armory::likelihood::categorical::log_prob(&h, x).unwrap();
    (lp.neg().unwrap().mean_all().unwrap(), vars)
}

/// Gradients to 1e-4 relative (max |Δ| / max |g|), per tensor.
///
/// One subtlety, measured on the random reference: a pre-activation can sit within f32 rounding of the
/// LeakyReLU kink (2.0e-6 in f64 for one unit of `net.2`), where PyTorch's summation order and ours may
/// land on different sides, giving a derivative of 1 on one side and 0.01 on the other. Such units
/// (|pre| < 1e-5 in f64) are toggled greedily, one at a time, keeping a toggle only if it brings the
/// gradients closer to PyTorch's, in passes until one changes nothing: measured, 1 flip of 25 candidates on
/// the random reference (then within 1.6e-6), none on the trained one (2.8e-6). A single pass was not
/// enough once the weight gradient ran by Winograd's F(2, 7): the same gradients to 5e-7 (relative, against
/// the direct products), yet the one pass stopped at 4.8e-4 after other flips. A wrong convolution backward
/// matches for no choice of sides (one output row left out of the weight gradient: 4.5e-3 and 2.8e-2 after
/// the search). The masked net is first checked to be the model's own gradient path (`Arm::loss().backward()`).
fn check_gradients(dir: &str) {
    let (dir, expected, x) = reference(dir);
    let weights = load_tensors(&dir.join("weights.safetensors")).unwrap();

    // Pre-activations in f64, to find the units within rounding of the kink.
    let mut pre = vec![];
    let mut h = x.to_dtype(DType::F64).unwrap().unsqueeze(2).unwrap();
    for (layer, i) in [0, 2, 4].into_iter().enumerate() {
        let w = weights[&format!("net.{i}.conv1d.weight")].to_dtype(DType::F64).unwrap();
        let b = weights[&format!("net.{i}.conv1d.bias")].to_dtype(DType::F64).unwrap();
        let kind = if layer == 0 { ConvType::A } else { ConvType::B };
        h = CausalConv1d::new(
            w,
            Some(b),
            CausalConv1dConfig {
                kernel: 7,
                dilation: 1,
                kind,
            },
        )
        .forward_blc(&h)
        .unwrap();
        pre.push(h.clone());
        h = armory::nn::leaky_relu(&h, 0.01).unwrap();
    }
    let positive: Vec<Vec<u8>> = pre
        .iter()
        .map(|p| p.gt(0.0).unwrap().flatten_all().unwrap().to_vec1::<u8>().unwrap())
        .collect();
    let mut near: Vec<(usize, usize)> = vec![];
    for (layer, p) in pre.iter().enumerate() {
        for (i, v) in p.flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().enumerate() {
            if v.abs() < 1e-5 {
                near.push((layer, i));
            }
        }
    }
    assert!(
        near.len() <= 64,
        "{} pre-activations within 1e-5 of the kink",
        near.len()
    );
    let masks_for = |flips: &[bool]| -> Vec<Tensor> {
        let mut pos = positive.clone();
        for (j, &(layer, i)) in near.iter().enumerate() {
            if flips[j] {
                pos[layer][i] ^= 1;
            }
        }
        pos.into_iter()
            .zip(&pre)
            .map(|(m, p)| Tensor::from_vec(m, p.shape(), &Device::Cpu).unwrap())
            .collect()
    };

    // The masked net (no flips) is the model's own gradient path.
    let arm = Arm::new(&RunConfig::seed().model, 0, DType::F32, &Device::Cpu).unwrap();
    arm.params().load(&dir.join("weights.safetensors")).unwrap();
    let model_grads = arm
        .loss(&x, Reduction::Mean, Mode::Train { seed: 0 })
        .unwrap()
        .backward()
        .unwrap();
    let (loss, vars) = masked_loss(&weights, &x, &masks_for(&vec![false; near.len()]), DType::F32);
    let grads = loss.backward().unwrap();
    let model_vars: HashMap<String, Var> = arm.params().vars().into_iter().collect();
    for (name, var) in &vars {
        let a = grads.get(var).unwrap();
        let b = model_grads.get(&model_vars[name]).unwrap();
        assert!(
            max_abs_diff(a, b) <= 1e-6 * max_abs(b),
            "{name}: the masked net is not the model's gradient path"
        );
    }

    // Worst relative gradient error over all tensors, for one assignment of the near-kink sides.
    let worst = |flips: &[bool]| -> (f32, String) {
        let (loss, vars) = masked_loss(&weights, &x, &masks_for(flips), DType::F32);
        let err = max_abs_diff(&loss.unsqueeze(0).unwrap(), &expected["loss"]);
        assert!(err < 1e-4, "{dir:?}: loss differs by {err}");
        let grads = loss.backward().unwrap();
        vars.iter()
            .map(|(name, var)| {
                let want = &expected[&format!("grad.{name}")];
                (
                    max_abs_diff(grads.get(var).unwrap(), want) / max_abs(want),
                    name.clone(),
                )
            })
            .fold((0f32, String::new()), |a, b| if b.0 > a.0 { b } else { a })
    };
    // Greedy: toggle one near-kink unit at a time, keeping each toggle that brings us closer to PyTorch, in
    // passes over all of them until a pass changes nothing (one pass can stop in a local minimum that depends
    // on the last bits of the sums).
    let mut flips = vec![false; near.len()];
    let mut best = worst(&flips);
    for _pass in 0..near.len() {
        let mut changed = false;
        for j in 0..near.len() {
            if best.0 < 1e-4 {
                break;
            }
            flips[j] = !flips[j];
            let w = worst(&flips);
            if w.0 < best.0 {
                best = w;
                changed = true;
            } else {
                flips[j] = !flips[j];
            }
        }
        if !changed || best.0 < 1e-4 {
            break;
        }
    }
    let flipped = flips.iter().filter(|&&f| f).count();
    assert!(
        best.0 < 1e-4,
        "{dir:?}: gradient of {} differs from PyTorch's by {:.2e} (relative), with {flipped} of {} near-kink units flipped",
        best.1,
        best.0,
        near.len()
    );
    eprintln!(
        "{dir:?}: gradients within {:.2e}; {flipped} of {} near-kink units on PyTorch's side",
        best.0,
        near.len()
    );
}

#[test]
fn random_seed_arm_matches_pytorch_logits_and_log_prob() {
    check_outputs("seed-arm-random");
}

#[test]
fn trained_seed_arm_matches_pytorch_logits_and_log_prob() {
    check_outputs("seed-arm-trained");
}

#[test]
fn random_seed_arm_matches_pytorch_gradients() {
    check_gradients("seed-arm-random");
}

#[test]
fn trained_seed_arm_matches_pytorch_gradients() {
    check_gradients("seed-arm-trained");
}
