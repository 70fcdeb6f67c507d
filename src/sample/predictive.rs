//! Predictive sampling (Wiggers & Hoogeboom 2020) by fixed-point iteration: with the noise fixed, the
//! sample is the unique fixed point of "run the ARM on the current guess and redraw every position".
//! Each pass runs the whole network in parallel over all positions; every position before the first
//! change is final, and at least one more position becomes final per pass, so it ends in ≤ D + 1 passes
//! — often far fewer, when the ARM's guess for a position does not depend on the positions still moving.
//! It returns exactly the naive sampler's sample for the same noise.

use candle_core::Tensor;

use super::Noise;
use crate::error::Result;
use crate::models::{Arm, Mode};
use crate::nn::kernels::shifted_conv::with_frozen_weights;

/// The samples `[N, D]` and the number of ARM calls (full forward passes) it took.
pub fn sample_predictive(
    arm: &Arm,
    noise: &Noise,
    temperature: f64,
    labels: Option<&[u32]>,
) -> Result<(Vec<u32>, usize)> {
    // The weights stay as they are: each convolution packs its kernel once for every pass.
    with_frozen_weights(|| predictive(arm, noise, temperature, labels))
}

fn predictive(arm: &Arm, noise: &Noise, temperature: f64, labels: Option<&[u32]>) -> Result<(Vec<u32>, usize)> {
    let (n, dim) = (noise.len(), arm.dim());
    let labels = labels
        .map(|l| Tensor::from_slice(l, l.len(), arm.device()))
        .transpose()?;
    let mut x = vec![0u32; n * dim]; // the first guess: all zeros
                                     // Per example, positions before `done[i]` are final (equal to the naive sampler's).
    let mut done = vec![0usize; n];
    let mut calls = 0;
    while done.iter().any(|&d| d < dim) {
        let theta = arm.forward_labelled(
            &Tensor::from_vec(x.clone(), (n, dim), arm.device())?,
            labels.as_ref(),
            Mode::Eval,
        )?;
        let theta = theta.to_dtype(candle_core::DType::F32)?.to_vec3::<f32>()?; // [N, D, P]
        calls += 1;
        for i in 0..n {
            // θ_d at the first unfinished position sees only final values, so its draw is final; redraw
            // every later position from this pass as the next guess.
            let first = done[i];
            let mut changed_at = dim;
            for d in first..dim {
                let row = super::finite_theta(&theta[i][d], d)?;
                let v = arm.likelihood().sample_with_noise(row, noise.at(i, d), temperature);
                if v != x[i * dim + d] && changed_at == dim {
                    changed_at = d;
                }
                x[i * dim + d] = v;
            }
            // Every draw up to and including the first change was made from final, unchanged inputs, so it
            // is final; later draws read a value that just changed and are only a guess.
            done[i] = (changed_at + 1).min(dim);
        }
    }
    Ok((x, calls))
}
