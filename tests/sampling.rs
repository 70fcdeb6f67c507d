//! Fast samplers against the naive one: the same noise gives the same samples.

use armory::models::{causal_conv, gated_pixelcnn, mlp, rnn, wavenet, Arm, InputEncoding, Mode, ModelConfig};
use armory::nn::ConvType;
use armory::sample::{sample_cached, sample_naive, sample_predictive, Noise};
use candle_core::{DType, Device, Tensor};

fn conv(dilations: Vec<usize>, input: InputEncoding, types: Option<Vec<ConvType>>) -> ModelConfig {
    ModelConfig::CausalConv(causal_conv::Config {
        num_values: 5,
        length: 14,
        hidden: 6,
        kernel: 3,
        dilations,
        layer_types: types,
        leaky_slope: 0.1,
        input,
        dropout: 0.0,
    })
}

/// Small members of every family with a cached stepper, D = 14, K = 5.
fn conv_configs() -> Vec<ModelConfig> {
    let wavenet = |input| {
        ModelConfig::Wavenet(wavenet::Config {
            num_values: 5,
            length: 14,
            residual_channels: 4,
            skip_channels: 3,
            kernel: 2,
            dilations: vec![1, 2, 4, 1],
            input,
            dropout: 0.0,
        })
    };
    let rnn = |cell| {
        ModelConfig::Rnn(rnn::Config {
            num_values: 5,
            length: 14,
            cell,
            hidden: 6,
            embedding: 3,
            dropout: 0.0,
        })
    };
    let mlp = |input| {
        ModelConfig::Mlp(mlp::Config {
            num_values: 5,
            length: 14,
            memory: 3,
            hidden: 7,
            input,
            dropout: 0.0,
        })
    };
    vec![
        conv(vec![1, 1, 1], InputEncoding::Raw, None),
        conv(vec![1, 2, 4], InputEncoding::OneHot, None),
        conv(vec![2, 1], InputEncoding::Scaled, Some(vec![ConvType::A, ConvType::A])),
        wavenet(InputEncoding::OneHot),
        wavenet(InputEncoding::Raw),
        rnn(rnn::Cell::Lstm),
        rnn(rnn::Cell::Gru),
        mlp(InputEncoding::Raw),
        mlp(InputEncoding::OneHot),
    ]
}

#[test]
fn cached_sampling_reproduces_the_naive_sampler() {
    for cfg in conv_configs() {
        let arm = Arm::new(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
        for (n, seed) in [(1, 0), (3, 1), (5, 2)] {
            let noise = Noise::new(n, 14, seed);
            let naive = sample_naive(&arm, &noise, 1.0, None).unwrap();
            assert_eq!(sample_cached(&arm, &noise, 1.0, None).unwrap(), naive, "{cfg:?} n={n}");
            assert_eq!(
                sample_cached(&arm, &noise, 0.5, None).unwrap(),
                sample_naive(&arm, &noise, 0.5, None).unwrap()
            );
        }
    }
}

/// The stepper's θ at every position equals the full forward pass's on the same sequence.
#[test]
fn cached_step_matches_the_forward_pass_at_every_position() {
    for cfg in conv_configs() {
        let arm = Arm::new(&cfg, 4, DType::F32, &Device::Cpu).unwrap();
        let x = sample_naive(&arm, &Noise::new(2, 14, 9), 1.0, None).unwrap();
        let full = arm
            .forward(&Tensor::from_vec(x.clone(), (2, 14), &Device::Cpu).unwrap(), Mode::Eval)
            .unwrap();
        let full = full.to_vec3::<f32>().unwrap();
        let mut stepper = arm.stepper(2).unwrap().expect("the family has a stepper");
        let mut prev: Option<Vec<u32>> = None;
        for d in 0..14 {
            let theta = stepper.step(prev.as_deref()).unwrap();
            for i in 0..2 {
                let err = theta[i]
                    .iter()
                    .zip(&full[i][d])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(err < 1e-4, "{cfg:?}: position {d}, example {i}: {err}");
            }
            prev = Some(vec![x[d], x[14 + d]]);
        }
    }
}

/// Predictive sampling returns the naive sample for every family tried, class-conditional too, in at most
/// D + 1 ARM calls; with a peaked model (low temperature) it needs far fewer.
#[test]
fn predictive_sampling_reproduces_the_naive_sampler() {
    let gated = gated_pixelcnn::Config {
        num_values: 4,
        height: 3,
        width: 4,
        channels: 4,
        first_kernel: 3,
        layers: 1,
        kernel: 3,
        head_hidden: 4,
        num_classes: Some(3),
        input: InputEncoding::OneHot,
        dropout: 0.0,
        n_mix: None,
    };
    let mut cases: Vec<(ModelConfig, Option<Vec<u32>>)> = conv_configs().into_iter().map(|c| (c, None)).collect();
    cases.push((ModelConfig::GatedPixelcnn(gated.clone()), Some(vec![0, 2, 1, 2])));
    cases.push((
        ModelConfig::GatedPixelcnn(gated_pixelcnn::Config {
            num_classes: None,
            n_mix: Some(2),
            ..gated
        }),
        None,
    ));
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

#[test]
fn cached_sampling_is_refused_where_there_is_no_stepper() {
    let cfg = ModelConfig::GatedPixelcnn(gated_pixelcnn::Config {
        num_values: 3,
        height: 2,
        width: 2,
        channels: 2,
        first_kernel: 3,
        layers: 1,
        kernel: 3,
        head_hidden: 2,
        num_classes: None,
        input: InputEncoding::OneHot,
        dropout: 0.0,
        n_mix: None,
    });
    let arm = Arm::new(&cfg, 0, DType::F32, &Device::Cpu).unwrap();
    let e = sample_cached(&arm, &Noise::new(1, 4, 0), 1.0, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no cached sampler"), "{e}");
}
