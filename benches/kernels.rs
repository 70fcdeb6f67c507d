//! Criterion benches of the kernels, one figure each (`cargo bench --bench kernels`): the seed net's middle
//! convolution (256 → 256 channels, kernel 7, 64 positions) forward at batch 64 and 1 and backward at batch
//! 64, the gated unit on a gated PixelCNN layer's activations, and one cached-sampling step of that
//! convolution for 16 sequences. Side-by-side figures against PyTorch are `armory bench`'s.

use armory::nn::kernels::shifted_conv::{backward, forward, Geometry, TapPlan};
use armory::nn::{gate, StepConv};
use candle_core::{Device, Tensor};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

/// Runs a bench on a worker of a 2-thread pool, as the command line runs everything (`armory::with_threads`).
/// The convolution kernels move onto a worker by themselves (`on_worker`); the gate and the step do not.
fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    POOL.get_or_init(|| rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a pool"))
        .install(f)
}

fn seed_layer(b: usize) -> Geometry {
    Geometry {
        b,
        h: 1,
        w: 64,
        c_in: 256,
        c_out: 256,
        n_k: 7,
        plan: TapPlan::causal_1d(7, 1, 6),
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    // A cheap deterministic spread in [−1, 1).
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

fn conv(c: &mut Criterion) {
    for b in [64, 1] {
        let g = seed_layer(b);
        let (x, w, bias) = (values(b * 64 * 256, 1), values(256 * 256 * 7, 2), values(256, 3));
        c.bench_function(&format!("conv forward, seed layer, batch {b}"), |bench| {
            bench.iter(|| forward(black_box(&x), black_box(&w), black_box(&bias), &g))
        });
    }
    let g = seed_layer(64);
    let (x, w, go) = (
        values(64 * 64 * 256, 1),
        values(256 * 256 * 7, 2),
        values(64 * 64 * 256, 4),
    );
    c.bench_function("conv backward, seed layer, batch 64", |bench| {
        bench.iter(|| backward(black_box(&x), black_box(&w), black_box(&go), &g, true))
    });
}

fn gates(c: &mut Criterion) {
    // A gated PixelCNN layer at batch 64: [64, 8, 8, 2·64] → [64, 8, 8, 64].
    let x = Tensor::from_vec(values(64 * 8 * 8 * 128, 5), (64, 8, 8, 128), &Device::Cpu).unwrap();
    c.bench_function("gate forward, gated layer, batch 64", |bench| {
        in_pool(|| bench.iter(|| gate(black_box(&x)).unwrap()))
    });
}

fn step(c: &mut Criterion) {
    let dev = Device::Cpu;
    let w = Tensor::from_vec(values(256 * 256 * 7, 2), (256, 256, 7), &dev).unwrap();
    let bias = Tensor::from_vec(values(256, 3), 256, &dev).unwrap();
    let mut conv = StepConv::new(&w, Some(&bias), &TapPlan::causal_1d(7, 1, 6), (1, 64), 16).unwrap();
    conv.set(0..64, &values(64 * 16 * 256, 6));
    c.bench_function("cached step, seed layer, 16 sequences", |bench| {
        in_pool(|| bench.iter(|| conv.output(black_box(40..41))))
    });
}

criterion_group!(benches, conv, gates, step);
criterion_main!(benches);
