//! Times the causal conv kernel alone at the seed net's sizes: `cargo run --release --example kernel_timing`.
use armory::nn::kernels::causal_conv1d::{backward, forward, ConvGeometry};
use std::time::Instant;

fn main() {
    for &(b, c_in, c_out) in &[(64, 256, 256), (64, 1, 256), (64, 256, 17), (1, 256, 256)] {
        let g = ConvGeometry {
            b,
            l: 64,
            c_in,
            c_out,
            k: 7,
            dilation: 1,
            pad: 6,
        };
        let x: Vec<f32> = (0..b * 64 * c_in).map(|i| ((i * 7919) % 13) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..c_out * c_in * 7)
            .map(|i| ((i * 104729) % 17) as f32 * 0.01)
            .collect();
        let go: Vec<f32> = (0..b * 64 * c_out).map(|i| ((i * 31) % 11) as f32 * 0.1).collect();
        let reps = if b == 1 { 200 } else { 10 };
        let _ = forward(&x, &w, &g);
        let s = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(forward(&x, &w, &g));
        }
        let f = s.elapsed().as_secs_f64() * 1e3 / reps as f64;
        let s = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(backward(&x, &w, &go, &g, c_in > 1));
        }
        let bw = s.elapsed().as_secs_f64() * 1e3 / reps as f64;
        let gflop = 2.0 * (b * 64 * c_in * c_out * 7) as f64 / 1e9;
        println!(
            "b={b} {c_in}->{c_out}: forward {f:.3} ms ({:.0} GFLOP/s), backward {bw:.3} ms ({:.0} GFLOP/s)",
            gflop / f * 1e3,
            2.0 * gflop / bw * 1e3
        );
    }
}
