//! Fast samplers against the naive one: the same noise gives the same samples.

use armory::models::{
    causal_conv, mlp, rnn, wavenet, Arithmetic, Arm, ColourMixture, InputEncoding, Mode, ModelConfig, Network,
};
use armory::nn::ConvType;
use armory::sample::{sample_cached, sample_naive, sample_predictive, Noise};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

mod common;

fn conv(dilations: Vec<usize>, input: InputEncoding, types: Option<Vec<ConvType>>) -> ModelConfig {
    let net = causal_conv::Config {
        hidden: 6,
        kernel: 3,
        dilations,
        layer_types: types,
        leaky_slope: 0.1,
    };
    ModelConfig::sequence(Network::CausalConv(net), 5, 14).with_input(input)
}

/// Small members of every family with a cached stepper, D = 14, K = 5, with either likelihood.
fn conv_configs() -> Vec<ModelConfig> {
    let wavenet = |input| {
        let net = wavenet::Config {
            residual_channels: 4,
            skip_channels: 3,
            kernel: 2,
            dilations: vec![1, 2, 4, 1],
        };
        ModelConfig::sequence(Network::Wavenet(net), 5, 14).with_input(input)
    };
    let rnn = |cell| {
        ModelConfig::sequence(
            Network::Rnn(rnn::Config {
                cell,
                hidden: 6,
                embedding: 3,
            }),
            5,
            14,
        )
    };
    let mlp =
        |input| ModelConfig::sequence(Network::Mlp(mlp::Config { memory: 3, hidden: 7 }), 5, 14).with_input(input);
    // A sequence network given an image reads it as one sequence of its H·W·C values (and steps so).
    let as_image = |m: ModelConfig, (h, w, c)| ModelConfig::image(m.network, 5, h, w, c).with_input(m.input);
    vec![
        as_image(conv(vec![1, 2], InputEncoding::Raw, None), (3, 4, 1)),
        as_image(wavenet(InputEncoding::OneHot), (2, 3, 2)),
        conv(vec![1, 1, 1], InputEncoding::Raw, None),
        conv(vec![1, 2, 4], InputEncoding::OneHot, None),
        conv(vec![2, 1], InputEncoding::Scaled, Some(vec![ConvType::A, ConvType::A])),
        conv(vec![1, 2], InputEncoding::Raw, None).with_mixture(2),
        wavenet(InputEncoding::OneHot),
        wavenet(InputEncoding::Raw),
        wavenet(InputEncoding::OneHot).with_mixture(3),
        rnn(rnn::Cell::Lstm),
        rnn(rnn::Cell::Gru),
        rnn(rnn::Cell::Lstm).with_mixture(2),
        mlp(InputEncoding::Raw),
        mlp(InputEncoding::OneHot),
        mlp(InputEncoding::Scaled).with_mixture(2),
    ]
}

/// A small class-conditional gated PixelCNN on 3×4 images with 4 values (`colors` colours).
fn gated_3x4(colors: usize) -> ModelConfig {
    let mut m = common::gated_colours(4, 3, 4, colors, Some(3));
    let net = common::gated_net(&mut m);
    (net.first_kernel, net.head_hidden) = (3, 4);
    if colors == 3 {
        (net.channels, net.head_hidden) = (12, 12);
    }
    m
}

/// Small 2-D models, 3×4 images: PixelCNN and the gated PixelCNN, categorical and mixture, conditional too.
fn image_configs() -> Vec<ModelConfig> {
    let pixelcnn = common::pixelcnn(4, 3, 4);
    let mut colour_residual = gated_3x4(3);
    common::gated_net(&mut colour_residual).vertical_residual = true;
    let mut colour_pixelcnn = common::pixelcnn_colours(4, 3, 4, 3).with_mixture(2);
    if let Network::Pixelcnn(c) = &mut colour_pixelcnn.network {
        (c.hidden, c.head_hidden) = (12, 6);
    }
    let mut unconditional = gated_3x4(1).with_mixture(2).with_input(InputEncoding::Scaled);
    let net = common::gated_net(&mut unconditional);
    (net.num_classes, net.first_kernel) = (None, 5);
    vec![
        // Colour images (R, G, B of each pixel in turn), conditional and mixture too.
        colour_residual,
        colour_pixelcnn.with_colour_mixture(ColourMixture::PerColour),
        // PixelCNN++'s pixel mixture: the network's column once per pixel, G and B from the head alone.
        gated_3x4(3).with_mixture(3),
        gated_3x4(1),
        unconditional,
        pixelcnn.clone(),
        pixelcnn.with_mixture(2).with_input(InputEncoding::Raw),
    ]
}

fn arm(cfg: &ModelConfig, seed: u64) -> Arm {
    common::random_arm(cfg, seed)
}

/// One label per example for class-conditional models (cycling through the classes), none otherwise.
fn labels_for(arm: &Arm, n: usize) -> Option<Vec<u32>> {
    arm.num_classes()
        .map(|k| (0..n).map(|i| ((i + 1) % k) as u32).collect())
}

#[test]
fn cached_sampling_reproduces_the_naive_sampler() {
    for cfg in conv_configs().into_iter().chain(image_configs()) {
        let arm = arm(&cfg, 3);
        for (n, seed) in [(1, 0), (3, 1), (5, 2)] {
            let noise = Noise::new(n, arm.dim(), seed);
            let labels = labels_for(&arm, n);
            for temperature in [1.0, 0.5] {
                assert_eq!(
                    sample_cached(&arm, &noise, temperature, labels.as_deref()).unwrap(),
                    sample_naive(&arm, &noise, temperature, labels.as_deref()).unwrap(),
                    "{cfg:?} n={n} T={temperature}"
                );
            }
        }
    }
}

/// The θ a stepper computing in `arithmetic` gives at every position, and the full forward pass's on the same
/// sequence (drawn by the naive sampler): `(stepped, full)`, both `[example][position][P]`.
#[allow(clippy::type_complexity)]
fn stepped_and_full(arm: &Arm, arithmetic: Arithmetic) -> (Vec<Vec<Vec<f32>>>, Vec<Vec<Vec<f32>>>) {
    let (n, d) = (2, arm.dim());
    let labels = labels_for(arm, n);
    let x = sample_naive(arm, &Noise::new(n, d, 9), 1.0, labels.as_deref()).unwrap();
    let label_tensor = labels
        .as_ref()
        .map(|l| Tensor::new(l.as_slice(), &Device::Cpu).unwrap());
    let full = arm
        .forward_labelled(
            &Tensor::from_vec(x.clone(), (n, d), &Device::Cpu).unwrap(),
            label_tensor.as_ref(),
            Mode::Eval,
        )
        .unwrap();
    let mut stepper = arm
        .stepper_with(n, labels.as_deref(), arithmetic)
        .unwrap()
        .expect("the family has a stepper");
    let mut stepped = vec![vec![]; n];
    let mut prev: Option<Vec<u32>> = None;
    for p in 0..d {
        for (i, theta) in stepper.step(prev.as_deref()).unwrap().into_iter().enumerate() {
            stepped[i].push(theta);
        }
        prev = Some((0..n).map(|i| x[i * d + p]).collect());
    }
    (stepped, full.to_vec3::<f32>().unwrap())
}

/// The stepper's θ at every position equals the full forward pass's on the same sequence.
#[test]
fn cached_step_matches_the_forward_pass_at_every_position() {
    for cfg in conv_configs().into_iter().chain(image_configs()) {
        let (stepped, full) = stepped_and_full(&arm(&cfg, 4), Arithmetic::Fast);
        for (i, (a, b)) in stepped.iter().zip(&full).enumerate() {
            for (p, (a, b)) in a.iter().zip(b).enumerate() {
                let err = a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(err < 1e-4, "{cfg:?}: position {p}, example {i}: {err}");
            }
        }
    }
}

/// `cfg`'s model with weights under which every output of every layer reads one input: in each output row
/// of a weight one entry is ±1, ±½ or ±¼ and the others are zero; biases are multiples of ⅛. Every product
/// is exact and every sum adds one term to its bias, so a layer's output is the same float in whatever
/// order its sum runs (gemm's, the training kernel's, the codec's).
fn one_read_arm(cfg: &ModelConfig, seed: u64) -> Arm {
    let arm = Arm::new(cfg, seed, DType::F32, &Device::Cpu).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (_, var) in arm.params().vars() {
        let (rows, n) = (var.dim(0).unwrap(), var.elem_count());
        let v: Vec<f32> = if var.rank() == 1 {
            (0..n).map(|_| rng.random_range(-8..=8) as f32 / 8.0).collect()
        } else {
            let mut v = vec![0f32; n];
            for r in 0..rows {
                let w = [1.0, 0.5, 0.25][rng.random_range(0..3)] * if rng.random() { 1.0 } else { -1.0 };
                v[r * (n / rows) + rng.random_range(0..n / rows)] = w;
            }
            v
        };
        var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    arm
}

/// With weights that make every sum exact ([`one_read_arm`]), the stepper's θ equals the full pass's to the
/// bit at every position, in either arithmetic, for the families written once over a `Flow` (the 1-D
/// convolutional ones, PixelCNN and the gated PixelCNN): the two run the same operations in the same order —
/// the layers, activations, gates, residual and skip sums, the class biases — or some θ would differ in its
/// last bits, which the tolerance of the test above lets through.
#[test]
fn cached_step_is_the_forward_pass_to_the_bit() {
    let flow_nets = conv_configs()
        .into_iter()
        .chain(image_configs())
        .filter(|c| !matches!(c.network, Network::Rnn(_) | Network::Dense(_)));
    for cfg in flow_nets {
        let arm = one_read_arm(&cfg, 6);
        // PixelCNN++'s pixel mixture (no colour masks on colour images): its exact head computes G's and B's
        // conditionals with libm, not candle's kernels — the network's part is checked in Fast.
        let pixel_mixture = cfg.network_colours() < cfg.colors();
        let arithmetics = [Arithmetic::Fast, Arithmetic::Exact];
        for &arithmetic in &arithmetics[..if pixel_mixture { 1 } else { 2 }] {
            let (stepped, full) = stepped_and_full(&arm, arithmetic);
            let spread = full.iter().flatten().flatten().fold(0f32, |m, v| m.max(v.abs()));
            assert!(spread > 0.0 && spread.is_finite(), "{cfg:?}: θ {spread}");
            for (i, (a, b)) in stepped.iter().zip(&full).enumerate() {
                for (p, (a, b)) in a.iter().zip(b).enumerate() {
                    assert_eq!(a, b, "{cfg:?} {arithmetic:?}: position {p}, example {i}");
                }
            }
        }
    }
}

/// Predictive sampling returns the naive sample for every family tried, class-conditional too, in at most
/// D + 1 ARM calls; with a peaked model (low temperature) it needs far fewer.
#[test]
fn predictive_sampling_reproduces_the_naive_sampler() {
    let mut gated = gated_3x4(1);
    common::gated_net(&mut gated).layers = 1;
    let mut mixture = gated.clone().with_mixture(2);
    common::gated_net(&mut mixture).num_classes = None;
    let mut cases: Vec<(ModelConfig, Option<Vec<u32>>)> = conv_configs().into_iter().map(|c| (c, None)).collect();
    cases.push((gated, Some(vec![0, 2, 1, 2])));
    cases.push((mixture, None));
    for (cfg, labels) in cases {
        let arm = Arm::new(&cfg, 5, DType::F32, &Device::Cpu).unwrap();
        let d = arm.dim();
        for temperature in [1.0, 0.05] {
            let noise = Noise::new(4, d, 11);
            let naive = sample_naive(&arm, &noise, temperature, labels.as_deref()).unwrap();
            let (fast, calls) = sample_predictive(&arm, &noise, temperature, labels.as_deref()).unwrap();
            assert_eq!(fast, naive, "{cfg:?} T={temperature}");
            assert!(calls <= d + 1, "{calls} calls for D = {d}");
        }
    }
}

/// A class-conditional model's cached sampler needs one label per example, within its classes; an
/// unconditional one takes none.
#[test]
fn cached_sampling_checks_its_labels() {
    let conditional = Arm::new(&image_configs()[0], 0, DType::F32, &Device::Cpu).unwrap();
    let noise = Noise::new(2, conditional.dim(), 0);
    let err = |arm: &Arm, labels: Option<&[u32]>| sample_cached(arm, &noise, 1.0, labels).unwrap_err().to_string();
    assert!(err(&conditional, None).contains("class-conditional"));
    assert!(err(&conditional, Some(&[0])).contains("1 labels for 2 examples"));
    assert!(err(&conditional, Some(&[0, 3])).contains("label 3 is outside 0..2"));
    let plain = Arm::new(&image_configs()[4], 0, DType::F32, &Device::Cpu).unwrap();
    assert!(err(&plain, Some(&[0, 1])).contains("not class-conditional"));
}

/// Given a context vector per example (a latent code), the cached sampler draws the naive sampler's samples
/// for the context-conditioned decoders: the gated PixelCNN (gray, colour with the pixel mixture, with
/// labels too) and the dense network; a wrong context size is refused.
#[test]
fn cached_equals_naive_given_a_context() {
    let mut cases = vec![];
    for (colors, n_mix) in [(1, None), (3, Some(2))] {
        let mut m = gated_3x4(colors);
        m.context = 3;
        let net = common::gated_net(&mut m);
        (net.channels, net.head_hidden) = (12, 12);
        cases.push(match n_mix {
            Some(n) => m.with_mixture(n),
            None => m,
        });
    }
    let mut dense = ModelConfig::sequence(
        Network::Dense(armory::models::dense::Config { hidden: 6, layers: 1 }),
        4,
        12,
    );
    dense.context = 3;
    cases.push(dense);
    for cfg in cases {
        let arm = arm(&cfg, 3);
        let n = 4;
        let noise = Noise::new(n, arm.dim(), 11);
        let labels: Option<Vec<u32>> = arm.num_classes().map(|c| (0..n as u32).map(|i| i % c as u32).collect());
        let z: Vec<f32> = (0..n * 3).map(|i| (0.7 * i as f32).sin() * 1.5).collect();
        let naive = armory::sample::sample_naive_given(&arm, &noise, 1.0, labels.as_deref(), Some(&z)).unwrap();
        let cached = armory::sample::sample_cached_given(&arm, &noise, 1.0, labels.as_deref(), Some(&z)).unwrap();
        assert_eq!(naive, cached, "{}", cfg.kind());
        let other: Vec<f32> = z.iter().map(|v| -v).collect();
        let moved = armory::sample::sample_cached_given(&arm, &noise, 1.0, labels.as_deref(), Some(&other)).unwrap();
        assert_ne!(moved, cached, "{}: the samples ignore the context", cfg.kind());
        assert!(armory::sample::sample_cached_given(&arm, &noise, 1.0, labels.as_deref(), Some(&z[..n * 2])).is_err());
    }
}
