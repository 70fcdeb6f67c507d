//! Times the convolution kernel alone at the seed net's sizes: `cargo run --release --example kernel_timing`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use armory::nn::kernels::shifted_conv::{backward, forward, Geometry, TapPlan};
use std::time::Instant;

fn main() {
    let cases = [
        (64, 256, 256, 1),
        (64, 1, 256, 1),
        (64, 256, 17, 1),
        (1, 256, 256, 1),
        (16, 256, 256, 1),
        (16, 256, 256, 2),
    ];
    for &(b, c_in, c_out, d) in &cases {
        let g = Geometry {
            b,
            h: 1,
            w: 64,
            c_in,
            c_out,
            n_k: 7,
            plan: TapPlan::causal_1d(7, d, 6 * d),
        };
        let x: Vec<f32> = (0..b * 64 * c_in).map(|i| ((i * 7919) % 13) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..c_out * c_in * 7)
            .map(|i| ((i * 104729) % 17) as f32 * 0.01)
            .collect();
        let bias = vec![0.5f32; c_out];
        let go: Vec<f32> = (0..b * 64 * c_out).map(|i| ((i * 31) % 11) as f32 * 0.1).collect();
        let reps = if b == 1 { 200 } else { 10 };
        let _ = forward(&x, &w, &bias, &g);
        let s = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(forward(&x, &w, &bias, &g));
        }
        let f = s.elapsed().as_secs_f64() * 1e3 / reps as f64;
        let s = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(backward(&x, &w, &go, &g, c_in > 1));
        }
        let bw = s.elapsed().as_secs_f64() * 1e3 / reps as f64;
        let gflop = 2.0 * (b * 64 * c_in * c_out * 7) as f64 / 1e9;
        println!(
            "b={b} d={d} {c_in}->{c_out}: forward {f:.3} ms ({:.0} GFLOP/s), backward {bw:.3} ms ({:.0} GFLOP/s)",
            gflop / f * 1e3,
            2.0 * gflop / bw * 1e3
        );
    }
}
