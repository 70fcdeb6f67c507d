//! The gemm crate's throughput on this machine for the seed net's main product shape.
use std::time::Instant;
fn main() {
    for &(m, n, k, lrs) in &[
        (4480usize, 256usize, 1792usize, 1792usize),
        (4480, 256, 1792, 256),
        (1792, 256, 4480, 0),
        (4480, 1792, 256, 256),
    ] {
        let a = vec![1.0f32; m * k];
        let b = vec![1.0f32; k * n];
        let mut c = vec![0.0f32; m * n];
        for threads in [1usize, 2] {
            let par = if threads == 1 {
                gemm::Parallelism::None
            } else {
                gemm::Parallelism::Rayon(2)
            };
            let run = |c: &mut Vec<f32>| unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    lrs.max(1) as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            };
            run(&mut c);
            let s = Instant::now();
            for _ in 0..10 {
                run(&mut c);
            }
            let t = s.elapsed().as_secs_f64() / 10.0;
            println!(
                "{m}x{n}x{k} lhs_rs {lrs} threads {threads}: {:.2} ms, {:.0} GFLOP/s",
                t * 1e3,
                2.0 * (m * n * k) as f64 / t / 1e9
            );
        }
    }
}
