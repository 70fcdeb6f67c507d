//! Properties every model family must have, checked on tiny configs of each:
//! causality, normalisation by enumeration, f64 finite-difference gradients, a training smoke test and a
//! checkpoint round trip.

mod common;

use armory::models::{causal_conv, mlp, rnn, wavenet, Arm, ColourMixture, InputEncoding, Mode, ModelConfig, Network};
use armory::train::{self, RunDir, TrainConfig};
use candle_core::{DType, Device, Tensor};
use common::{check_gradients, gated, gated_colours, pixelcnn, pixelcnn_colours, quiet, random_x, small_digits};

/// Tiny members of every family, for K values and images of h × w (1-D models: D = h·w), with either
/// likelihood: the 1-D families take the logistic mixture as the 2-D ones do.
fn families(k: usize, h: usize, w: usize) -> Vec<(&'static str, ModelConfig)> {
    let d = h * w;
    let seq = |net| ModelConfig::sequence(net, k, d);
    let conv = |hidden, kernel, dilations, leaky_slope| {
        Network::CausalConv(causal_conv::Config {
            hidden,
            kernel,
            dilations,
            layer_types: None,
            leaky_slope,
        })
    };
    let rnn = |cell| {
        Network::Rnn(rnn::Config {
            cell,
            hidden: 5,
            embedding: 3,
        })
    };
    let wavenet = Network::Wavenet(wavenet::Config {
        residual_channels: 4,
        skip_channels: 5,
        kernel: 2,
        dilations: vec![1, 2, 4],
    });
    let mut residual = gated(k, h, w, None).with_dropout(0.2);
    common::gated_net(&mut residual).vertical_residual = true;
    vec![
        ("pixelcnn", pixelcnn(k, h, w)),
        ("gated_pixelcnn", gated(k, h, w, None)),
        ("gated_pixelcnn logistic mixture", gated(k, h, w, None).with_mixture(2)),
        ("gated_pixelcnn residual vertical stack", residual),
        ("causal_conv", seq(conv(5, 2, vec![1, 2, 1], 0.01))),
        (
            "causal_conv one-hot",
            seq(conv(4, 3, vec![3, 1], 0.2)).with_input(InputEncoding::OneHot),
        ),
        (
            "causal_conv logistic mixture",
            seq(conv(5, 2, vec![1, 2, 1], 0.01)).with_mixture(2),
        ),
        (
            "mlp",
            seq(Network::Mlp(mlp::Config { memory: 2, hidden: 6 })).with_input(InputEncoding::Scaled),
        ),
        (
            "mlp logistic mixture",
            seq(Network::Mlp(mlp::Config { memory: 2, hidden: 6 })).with_mixture(3),
        ),
        ("lstm", seq(rnn(rnn::Cell::Lstm))),
        ("gru", seq(rnn(rnn::Cell::Gru))),
        ("gru logistic mixture", seq(rnn(rnn::Cell::Gru)).with_mixture(2)),
        ("wavenet", seq(wavenet.clone())),
        ("wavenet logistic mixture", seq(wavenet).with_mixture(2)),
    ]
}

/// Perturbing x_j changes no θ_d for d ≤ j, and changes θ_{j+1} (every family sees the previous value).
#[test]
fn perturbing_x_j_changes_no_output_at_or_before_j() {
    let (k, d) = (5, 12);
    // 4 rows of 3: narrow enough that θ at a row's start sees the previous row's end even in the plain
    // PixelCNN (its blind spot is further right).
    for (name, cfg) in families(k, 4, 3) {
        let arm = Arm::new(&cfg, 1, DType::F64, &Device::Cpu).unwrap();
        let x = random_x(3, d, k, 2);
        let base = arm.forward(&x, Mode::Eval).unwrap();
        for j in 0..d {
            let mut v = x.to_vec2::<u32>().unwrap();
            for row in v.iter_mut() {
                row[j] = (row[j] + 1 + j as u32 % 3) % k as u32;
            }
            let moved = arm.forward(&Tensor::new(v, &Device::Cpu).unwrap(), Mode::Eval).unwrap();
            let diff = (moved - &base)
                .unwrap()
                .abs()
                .unwrap()
                .max(2)
                .unwrap()
                .max(0)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for (pos, &delta) in diff.iter().enumerate().take(j + 1) {
                assert_eq!(delta, 0.0, "{name}: θ_{pos} changed when x_{j} did");
            }
            if j + 1 < d {
                assert!(diff[j + 1] > 0.0, "{name}: θ_{} should see x_{j}", j + 1);
            }
        }
    }
}

/// Σ over all 27 sequences of D = 3, K = 3 of p(x) = 1.
#[test]
fn probabilities_sum_to_one_on_tiny_config() {
    for (name, cfg) in families(3, 1, 3) {
        let arm = Arm::new(&cfg, 4, DType::F32, &Device::Cpu).unwrap();
        let all: Vec<u32> = (0..27u32).flat_map(|i| [i / 9, (i / 3) % 3, i % 3]).collect();
        let x = Tensor::from_vec(all, (27, 3), &Device::Cpu).unwrap();
        let p = arm
            .log_prob(&x)
            .unwrap()
            .exp()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let total: f64 = p.iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "{name}: Σ p(x) = {total}");
        assert!(
            p.iter().all(|&v| v > 0.0),
            "{name}: every sequence has positive probability"
        );
    }
}

/// The loss gradient of every parameter tensor against central finite differences, in f64.
#[test]
fn model_gradients_match_finite_differences_f64() {
    let (k, d) = (4, 9);
    for (name, cfg) in families(k, 3, 3) {
        check_gradients(name, &cfg, k, d);
    }
    check_gradients("colour pixelcnn", &colour_pixelcnn(k, 2, 2, None), k, 12);
    // PixelCNN++'s pixel mixture: the gradient flows through the colours' conditionals too.
    check_gradients(
        "colour gated pixelcnn, pixel mixture",
        &gated_colours(k, 2, 2, 3, None).with_mixture(2),
        k,
        12,
    );
}

/// An RGB PixelCNN: each colour in its own block of channels.
fn colour_pixelcnn(k: usize, h: usize, w: usize, n_mix: Option<usize>) -> ModelConfig {
    let mut m = pixelcnn_colours(k, h, w, 3);
    if let Network::Pixelcnn(c) = &mut m.network {
        (c.hidden, c.head_hidden) = (12, 6);
    }
    match n_mix {
        Some(n) => m.with_mixture(n),
        None => m,
    }
}

/// Colour images in PixelCNN's order — pixel by pixel, R before G before B — for PixelCNN and the gated
/// PixelCNN (conditional too), categorical, PixelCNN++'s pixel mixture and per-colour mixtures: perturbing sub-pixel j changes no θ_d for d ≤ j (so R
/// never sees its own pixel's G or B) and does change θ_{j+1}; all 27 images of one pixel with 3 values each
/// have total probability 1.
#[test]
fn colour_models_order_r_before_g_before_b() {
    let k = 3;
    let gated_colour = |h, w, n_mix: Option<usize>, num_classes| {
        let mut m = gated_colours(k, h, w, 3, num_classes);
        let net = common::gated_net(&mut m);
        (net.channels, net.head_hidden) = (12, 12); // 4 per colour: with fewer, ReLU can silence a colour's block
        match n_mix {
            Some(n) => m.with_mixture(n),
            None => m,
        }
    };
    let per_colour = ColourMixture::PerColour;
    type Make<'a> = Box<dyn Fn(usize, usize) -> ModelConfig + 'a>;
    let makers: Vec<(&str, Make)> = vec![
        ("pixelcnn", Box::new(move |h, w| colour_pixelcnn(k, h, w, None))),
        (
            "pixelcnn pixel mixture",
            Box::new(move |h, w| colour_pixelcnn(k, h, w, Some(2))),
        ),
        (
            "pixelcnn per-colour mixture",
            Box::new(move |h, w| colour_pixelcnn(k, h, w, Some(2)).with_colour_mixture(per_colour)),
        ),
        ("gated", Box::new(move |h, w| gated_colour(h, w, None, None))),
        (
            "gated pixel mixture",
            Box::new(move |h, w| gated_colour(h, w, Some(2), None)),
        ),
        (
            "gated per-colour mixture",
            Box::new(move |h, w| gated_colour(h, w, Some(2), None).with_colour_mixture(per_colour)),
        ),
        (
            "gated conditional",
            Box::new(move |h, w| gated_colour(h, w, None, Some(2))),
        ),
        (
            "gated conditional pixel mixture",
            Box::new(move |h, w| gated_colour(h, w, Some(2), Some(2))),
        ),
    ];
    for (name, make) in makers {
        let arm = Arm::new(&make(3, 3), 1, DType::F64, &Device::Cpu).unwrap();
        // Non-zero class biases, so that a label could leak a colour it should not.
        for (pname, var) in arm.params().vars() {
            if pname.contains("cond_") {
                let v: Vec<f64> = (0..var.elem_count()).map(|i| (1.3 * i as f64).sin()).collect();
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        let labels = arm
            .num_classes()
            .map(|_| Tensor::new(&[0u32, 1, 1], &Device::Cpu).unwrap());
        let forward = |x: &Tensor| arm.forward_labelled(x, labels.as_ref(), Mode::Eval).unwrap();
        let d = 27;
        let x = random_x(3, d, k, 2);
        let base = forward(&x);
        for j in 0..d {
            let mut v = x.to_vec2::<u32>().unwrap();
            for row in v.iter_mut() {
                row[j] = (row[j] + 1) % k as u32;
            }
            let moved = forward(&Tensor::new(v, &Device::Cpu).unwrap());
            let diff = (moved - &base).unwrap().abs().unwrap().max(2).unwrap().max(0).unwrap();
            let diff = diff.to_vec1::<f64>().unwrap();
            for (pos, &delta) in diff.iter().enumerate().take(j + 1) {
                assert_eq!(delta, 0.0, "{name}: θ_{pos} changed when x_{j} did");
            }
            if j + 1 < d {
                assert!(diff[j + 1] > 0.0, "{name}: θ_{} should see x_{j}", j + 1);
            }
        }
        let one_pixel = Arm::new(&make(1, 1), 4, DType::F64, &Device::Cpu).unwrap();
        let all: Vec<u32> = (0..27u32).flat_map(|i| [i / 9, (i / 3) % 3, i % 3]).collect();
        let x = Tensor::from_vec(all, (27, 3), &Device::Cpu).unwrap();
        let labels = one_pixel
            .num_classes()
            .map(|_| Tensor::new(&[1u32; 27], &Device::Cpu).unwrap());
        let p = one_pixel.log_prob_labelled(&x, labels.as_ref()).unwrap();
        let total = p.exp().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!((total - 1.0).abs() < 1e-9, "{name}: Σ p(x) = {total}");
    }
    // A colour model's channels must split into its colours.
    let mut bad = colour_pixelcnn(k, 2, 2, None);
    if let Network::Pixelcnn(c) = &mut bad.network {
        c.hidden = 10;
    }
    let e = Arm::new(&bad, 0, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("multiple of 6"), "{e}");
    // PixelCNN++'s pixel mixture is an R, G, B mixture.
    let two = pixelcnn_colours(k, 2, 2, 2).with_mixture(2);
    let e = Arm::new(&two, 0, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("colors = 3") && e.contains("per_colour"), "{e}");
}

/// A few dozen steps on digits lower the loss, and the best checkpoint reloads to identical log-probs.
#[test]
fn every_family_trains_and_round_trips_its_checkpoint() {
    let splits = small_digits(192, 64);
    let recipe = TrainConfig {
        lr: 5e-3,
        batch_size: 32,
        max_epochs: 5,
        patience: 100,
        seed: 1,
        grad_clip: Some(5.0),
        ..TrainConfig::default()
    };
    let x = splits.test.batch(&(0..16).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    for (name, cfg) in families(17, 8, 8) {
        let arm = Arm::new(&cfg, 0, DType::F32, &Device::Cpu).unwrap();
        let before = train::evaluate(&arm, &splits.train, 256).unwrap().nll;
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        train::train(&arm, &splits, &recipe, &run, false, &quiet()).unwrap();
        let after = train::evaluate(&arm, &splits.train, 256).unwrap().nll;
        assert!(after < before - 5.0, "{name}: train NLL {before:.2} → {after:.2}");

        let lp = arm.log_prob(&x).unwrap().to_vec1::<f32>().unwrap();
        let other = Arm::new(&cfg, 9, DType::F32, &Device::Cpu).unwrap();
        other.params().load(&run.file("best.safetensors")).unwrap();
        assert_eq!(other.log_prob(&x).unwrap().to_vec1::<f32>().unwrap(), lp, "{name}");
    }
}

/// The earlier positions j < d whose value moves θ_d (every value of x changed by one, in turn).
fn positions_moving(arm: &Arm, x: &Tensor, d: usize, k: u32) -> Vec<usize> {
    let base = arm.forward(x, Mode::Eval).unwrap();
    (0..d)
        .filter(|&j| {
            let mut v = x.to_vec2::<u32>().unwrap();
            v[0][j] = (v[0][j] + 1) % k;
            let moved = arm.forward(&Tensor::new(v, &Device::Cpu).unwrap(), Mode::Eval).unwrap();
            let delta = (moved - &base)
                .unwrap()
                .narrow(1, d, 1)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            delta.to_scalar::<f64>().unwrap() > 0.0
        })
        .collect()
}

/// WaveNet's receptive field is k + (k−1)·Σ dilations — the formula, and the farthest input that moves θ_d.
#[test]
fn wavenet_receptive_field_equals_the_formula() {
    let cfg = wavenet::Config {
        residual_channels: 3,
        skip_channels: 3,
        kernel: 3,
        dilations: vec![1, 2, 4],
    };
    assert_eq!(cfg.receptive_field(40), 3 + 2 * 7);
    let arm = Arm::new(
        &ModelConfig::sequence(Network::Wavenet(cfg), 3, 40),
        0,
        DType::F64,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(arm.receptive_field(), 17);
    let d = 35;
    let farthest = positions_moving(&arm, &random_x(1, 40, 3, 0), d, 3)
        .iter()
        .map(|j| d - j)
        .max();
    assert_eq!(
        farthest,
        Some(17),
        "θ_{d} is moved by inputs up to {farthest:?} positions back"
    );
}

/// Dilations that leave gaps: the receptive field counts the positions seen, not the span (kernel 2,
/// dilations 4 and 4 see 1, 5 and 9 positions back — `armory info` said 9), as measured, for the causal
/// convolutions and WaveNet alike.
#[test]
fn the_receptive_field_counts_the_positions_seen_through_gaps() {
    let conv = causal_conv::Config {
        hidden: 3,
        kernel: 2,
        dilations: vec![4, 4],
        ..Default::default()
    };
    let wave = wavenet::Config {
        residual_channels: 3,
        skip_channels: 3,
        kernel: 2,
        dilations: vec![3, 6],
    };
    let d = 25;
    for (network, back) in [
        (Network::CausalConv(conv), vec![1, 5, 9]),
        (Network::Wavenet(wave), vec![1, 2, 4, 5, 7, 8, 10, 11]),
    ] {
        let arm = Arm::new(&ModelConfig::sequence(network, 3, 30), 0, DType::F64, &Device::Cpu).unwrap();
        let mut measured: Vec<usize> = (0..3)
            .flat_map(|seed| positions_moving(&arm, &random_x(1, 30, 3, seed), d, 3))
            .map(|j| d - j)
            .collect();
        measured.sort();
        measured.dedup();
        assert_eq!(measured, back);
        assert_eq!(arm.receptive_field(), back.len());
    }
}

/// Dropout changes training passes (deterministically per seed) and leaves evaluation alone.
#[test]
fn dropout_is_active_in_training_only_and_seeded() {
    for (name, mut cfg) in families(5, 2, 4) {
        cfg.dropout = 0.5;
        let arm = Arm::new(&cfg, 0, DType::F32, &Device::Cpu).unwrap();
        let x = random_x(2, 8, 5, 1);
        let eval = arm.forward(&x, Mode::Eval).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(eval, arm.forward(&x, Mode::Eval).unwrap().to_vec3::<f32>().unwrap());
        let t1 = arm
            .forward(&x, Mode::Train { seed: 1 })
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert_eq!(
            t1,
            arm.forward(&x, Mode::Train { seed: 1 })
                .unwrap()
                .to_vec3::<f32>()
                .unwrap(),
            "{name}"
        );
        assert_ne!(t1, eval, "{name}: dropout had no effect");
    }
}

/// Which of the 64 input pixels of an 8×8 image move θ at pixel (y, x), over a few random images (one
/// image can hide a path behind ReLUs that happen to be off).
fn pixels_seen(arm: &Arm, y: usize, x: usize) -> Vec<(usize, usize)> {
    let mut seen = [false; 64];
    for seed in 0..3 {
        let img = random_x(1, 64, 3, seed);
        let base = arm.forward(&img, Mode::Eval).unwrap();
        for (j, s) in seen.iter_mut().enumerate() {
            let mut v = img.to_vec2::<u32>().unwrap();
            v[0][j] = (v[0][j] + 1) % 3;
            let moved = arm.forward(&Tensor::new(v, &Device::Cpu).unwrap(), Mode::Eval).unwrap();
            let delta = (moved - &base)
                .unwrap()
                .narrow(1, y * 8 + x, 1)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            *s |= delta.to_scalar::<f64>().unwrap() > 0.0;
        }
    }
    (0..64).filter(|&j| seen[j]).map(|j| (j / 8, j % 8)).collect()
}

/// The gated PixelCNN sees every pixel before (4, 2) in raster order; the plain PixelCNN, as deep, misses the
/// ones up and to the right beyond its first layer's reach — the blind spot of van den Oord et al. 2016c,
/// Figure 1. Both `receptive_field()`s (traced through the tap plans) equal the measured counts.
#[test]
fn gated_pixelcnn_has_no_blind_spot_and_pixelcnn_has_the_one_the_paper_describes() {
    let preceding: Vec<(usize, usize)> = (0..4 * 8 + 2).map(|j| (j / 8, j % 8)).collect();
    let mut g = gated(3, 8, 8, None);
    let net = common::gated_net(&mut g);
    (net.first_kernel, net.layers) = (7, 4);
    let arm = Arm::new(&g, 0, DType::F64, &Device::Cpu).unwrap();
    assert_eq!(pixels_seen(&arm, 4, 2), preceding);
    assert_eq!(arm.receptive_field(), pixels_seen(&arm, 7, 7).len());

    let mut p = pixelcnn(3, 8, 8);
    if let Network::Pixelcnn(c) = &mut p.network {
        (c.first_kernel, c.blocks) = (7, 4);
    }
    let arm = Arm::new(&p, 0, DType::F64, &Device::Cpu).unwrap();
    let seen = pixels_seen(&arm, 4, 2);
    assert!(seen.iter().all(|px| preceding.contains(px)), "PixelCNN sees the future");
    // The first 7×7 layer reaches 3 columns right in the rows above; each later 3×3 layer adds at most one
    // column right per row it climbs, and none in the current row. So one row up, x + 4 … is never seen,
    // two rows up x + 5 …: (3, 6), (3, 7) and (2, 7), though all precede (4, 2).
    let blind: Vec<_> = preceding.iter().filter(|px| !seen.contains(px)).cloned().collect();
    assert_eq!(blind, vec![(2, 7), (3, 6), (3, 7)]);
    assert_eq!(arm.receptive_field(), pixels_seen(&arm, 7, 7).len());
}

/// A class-conditional gated PixelCNN: causal for every label, normalised for every label, and its
/// distribution depends on the label; labels are required and range-checked.
#[test]
fn class_conditional_gated_pixelcnn_depends_on_the_label() {
    let cfg = gated(3, 1, 3, Some(4));
    let arm = Arm::new(&cfg, 2, DType::F32, &Device::Cpu).unwrap();
    // Zero-initialised class biases make every label the same model; give them values.
    for (name, var) in arm.params().vars() {
        if name.contains("cond_") {
            // Fixed, distinct values (candle's randn is not seeded, and a test must not depend on luck).
            let v: Vec<f32> = (0..var.elem_count())
                .map(|i| 2.0 * (1.7 * i as f32 + 0.3).sin())
                .collect();
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    let all: Vec<u32> = (0..27u32).flat_map(|i| [i / 9, (i / 3) % 3, i % 3]).collect();
    let x = Tensor::from_vec(all, (27, 3), &Device::Cpu).unwrap();
    let mut per_label = vec![];
    for label in 0..4u32 {
        let labels = Tensor::from_vec(vec![label; 27], 27, &Device::Cpu).unwrap();
        let p = arm
            .log_prob_labelled(&x, Some(&labels))
            .unwrap()
            .exp()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let total: f32 = p.iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "label {label}: Σ p(x | label) = {total}");
        per_label.push(p);
    }
    assert!(
        per_label[0]
            .iter()
            .zip(&per_label[1])
            .any(|(a, b)| (a - b).abs() > 1e-3),
        "labels change nothing"
    );
    let e = arm.log_prob(&x).unwrap_err().to_string();
    assert!(e.contains("class-conditional"), "{e}");
    let bad = Tensor::from_vec(vec![9u32; 27], 27, &Device::Cpu).unwrap();
    assert!(arm
        .log_prob_labelled(&x, Some(&bad))
        .unwrap_err()
        .to_string()
        .contains("label 9 is outside 0..3"));
}

/// The naive sampler works for every family and likelihood: values in 0..K, the same for the same seed.
#[test]
fn every_family_samples_in_range_and_deterministically() {
    use armory::sample::{sample_naive, Noise};
    for (name, cfg) in families(5, 2, 3) {
        let arm = Arm::new(&cfg, 0, DType::F32, &Device::Cpu).unwrap();
        let a = sample_naive(&arm, &Noise::new(4, 6, 1), 1.0, None).unwrap();
        assert_eq!(
            a,
            sample_naive(&arm, &Noise::new(4, 6, 1), 1.0, None).unwrap(),
            "{name}"
        );
        assert!(a.iter().all(|&v| v < 5), "{name}: {a:?}");
        let x = Tensor::from_vec(a, (4, 6), &Device::Cpu).unwrap();
        assert!(
            arm.log_prob(&x)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|v| v.is_finite()),
            "{name}"
        );
    }
}

/// Decoders conditioned on a context vector (a latent code): the gated PixelCNN (z → every gate's bias) and
/// the dense network (no autoregression). For a fixed context: causal in x, normalised over every x; the
/// distribution moves with the context; f64 finite differences of every parameter and of the context.
#[test]
fn context_conditioned_decoders_are_causal_normalised_and_differentiable() {
    let k = 3;
    let dense = ModelConfig::sequence(
        Network::Dense(armory::models::dense::Config { hidden: 5, layers: 2 }),
        k,
        3,
    );
    let mut gated_z = gated(k, 1, 3, None);
    let mut colour = gated_colours(k, 1, 1, 3, Some(2)).with_mixture(2);
    common::gated_net(&mut colour).channels = 6;
    for m in [&mut gated_z, &mut colour] {
        m.context = 4;
    }
    let mut dense_z = dense.clone();
    dense_z.context = 4;
    // A dense network with nothing to read is refused; so is a context for a family that takes none.
    let e = dense.validate().unwrap_err().to_string();
    assert!(e.contains("context = 0"), "{e}");
    let mut conv = families(k, 1, 3).remove(4).1;
    conv.context = 2;
    let e = conv.validate().unwrap_err().to_string();
    assert!(e.contains("takes no context"), "{e}");

    let z = |seed: f64| Tensor::new(&[[seed, -0.5, 1.0, 0.25]], &Device::Cpu).unwrap();
    for (name, cfg) in [
        ("gated", &gated_z),
        ("colour gated, pixel mixture", &colour),
        ("dense", &dense_z),
    ] {
        let arm = common::random_arm(cfg, 1);
        let arm64 = Arm::new(cfg, 1, DType::F64, &Device::Cpu).unwrap();
        let labels = arm.num_classes().map(|_| Tensor::new(&[1u32], &Device::Cpu).unwrap());
        let all: Vec<u32> = (0..27u32).flat_map(|i| [i / 9, (i / 3) % 3, i % 3]).collect();
        let x = Tensor::from_vec(all, (27, 3), &Device::Cpu).unwrap();
        let rep = |t: &Tensor| t.repeat(27).unwrap();
        let z27 = |s| rep(&z(s)).to_dtype(DType::F32).unwrap();
        let l27 = labels.as_ref().map(|l| l.repeat(27).unwrap());
        let lp = |s| {
            arm.log_prob_context(&x, l27.as_ref(), Some(&z27(s)), Mode::Eval)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (a, b) = (lp(0.3), lp(-2.0));
        let total: f64 = a.iter().map(|&v| (v as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{name}: Σ p(x | z) = {total}");
        assert_ne!(a, b, "{name}: the context changes nothing");
        // Causal in x for a fixed z: θ_d moves with no x_j, j ≥ d.
        let zz = Some(z(0.3)).map(|t| t.repeat(2).unwrap()).unwrap();
        let l2 = labels.as_ref().map(|l| l.repeat(2).unwrap());
        let theta = |x: &Tensor| arm64.forward_context(x, l2.as_ref(), Some(&zz), Mode::Eval).unwrap();
        let x0 = random_x(2, 3, k, 4);
        let base = theta(&x0);
        for j in 0..3 {
            let mut v = x0.to_vec2::<u32>().unwrap();
            v.iter_mut().for_each(|r| r[j] = (r[j] + 1) % k as u32);
            let moved = theta(&Tensor::new(v, &Device::Cpu).unwrap());
            let diff = (moved - &base).unwrap().abs().unwrap().max(2).unwrap().max(0).unwrap();
            let diff = diff.to_vec1::<f64>().unwrap();
            assert!(
                diff[..=j].iter().all(|&d| d == 0.0),
                "{name}: θ moved with x_{j}: {diff:?}"
            );
        }
        // Gradients in f64: every parameter, and the context itself.
        let x4 = random_x(4, 3, k, 5);
        let l4 = labels.as_ref().map(|l| l.repeat(4).unwrap());
        let zv = candle_core::Var::from_tensor(&z(0.3).repeat(4).unwrap()).unwrap();
        let loss = |arm: &Arm, z: &Tensor| {
            arm.log_prob_context(&x4, l4.as_ref(), Some(z), Mode::Eval)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grads = loss(&arm64, zv.as_tensor()).backward().unwrap();
        let mut vars: Vec<(String, candle_core::Var)> = arm64.params().vars();
        vars.push(("context".into(), zv.clone()));
        for (pname, var) in vars {
            // No gradient: the parameter does not reach the loss (the last layer's vertical stack), so the
            // finite differences must be 0 too.
            let g = match grads.get(&var) {
                Some(g) => g.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                None => vec![0.0; var.elem_count()],
            };
            let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let set = |v: Vec<f64>| {
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap()
            };
            for i in (0..base.len()).step_by(1 + base.len() / 6) {
                let mut v = base.clone();
                v[i] += 1e-6;
                set(v.clone());
                let up = loss(&arm64, zv.as_tensor()).to_scalar::<f64>().unwrap();
                v[i] -= 2e-6;
                set(v);
                let down = loss(&arm64, zv.as_tensor()).to_scalar::<f64>().unwrap();
                set(base.clone());
                let fd = (up - down) / 2e-6;
                assert!(
                    (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{name} {pname}[{i}]: fd {fd} vs {}",
                    g[i]
                );
            }
        }
    }
}
