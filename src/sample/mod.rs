//! Sampling. The noise (one uniform per example and position) is drawn in advance from the seed, so every
//! sampler draws exactly the same values for the same seed: the naive sampler is the spec the fast ones meet.

pub mod cached;
pub mod naive;
pub mod predictive;

use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::limits;
use crate::models::Arm;

/// How to draw samples; all give the same samples for the same noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// D full forward passes.
    Naive,
    /// One column of computation per position (models with a stepper).
    Cached,
    /// Fixed-point iteration with fixed noise; reports its ARM calls.
    Predictive,
}

impl std::fmt::Display for Method {
    /// The sampler's name in words: "naive", "cached", "predictive".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Naive => "naive",
            Method::Cached => "cached",
            Method::Predictive => "predictive",
        })
    }
}

impl Method {
    /// Cached where the model family has a stepper, naive otherwise (`labels`: one per example for
    /// class-conditional models).
    pub fn fastest_exact(arm: &Arm, labels: Option<&[u32]>) -> Result<Method> {
        Ok(match arm.stepper(1, labels.map(|l| &l[..1]))? {
            Some(_) => Method::Cached,
            None => Method::Naive,
        })
    }
}

/// Refuses to draw `n` examples at once beyond [`limits::MAX_SAMPLES`] examples, [`limits::MAX_SAMPLE_VALUES`]
/// values, or [`limits::MAX_ACTIVATION_BYTES`] of the model's activations for a batch of `n` (estimated):
/// checked before the noise (8 bytes a value) or any activation is allocated.
pub fn check_size(arm: &Arm, n: usize) -> Result<()> {
    let dim = arm.dim();
    limits::check("samples (-n)", limits::wide(n), limits::wide(limits::MAX_SAMPLES))?;
    limits::check(
        format!("values to draw ({n} samples × {dim} dimensions)"),
        limits::wide(n) * limits::wide(dim),
        limits::wide(limits::MAX_SAMPLE_VALUES),
    )?;
    limits::check(
        format!("activation memory of {n} samples at once (bytes, estimated; lower -n)"),
        arm.config().activation_bytes(n),
        limits::MAX_ACTIVATION_BYTES,
    )
}

/// The parameters θ the network gave for position `d`, refused if any is not finite: a draw from them would
/// be garbage (weights that overflow f32 arithmetic give NaN logits), so nothing is drawn.
pub(crate) fn finite_theta(theta: &[f32], d: usize) -> Result<&[f32]> {
    match theta.iter().find(|v| !v.is_finite()) {
        None => Ok(theta),
        Some(&v) => Err(Error::NonFiniteOutput {
            what: format!("the network's output at position {d}"),
            value: f64::from(v),
        }),
    }
}

/// Draws with `method`; returns the samples `[N, D]` and the number of full ARM calls (D for naive, 0 for
/// cached, which runs columns instead).
pub fn sample(
    arm: &Arm,
    method: Method,
    noise: &Noise,
    temperature: f64,
    labels: Option<&[u32]>,
) -> Result<(Vec<u32>, usize)> {
    check_size(arm, noise.len())?;
    match method {
        Method::Naive => Ok((sample_naive(arm, noise, temperature, labels)?, arm.dim())),
        Method::Cached => Ok((sample_cached(arm, noise, temperature, labels)?, 0)),
        Method::Predictive => sample_predictive(arm, noise, temperature, labels),
    }
}
use rand_chacha::ChaCha8Rng;

/// Uniforms in [0, 1), `[N, D]`, fixed by a seed.
#[derive(Debug, Clone)]
pub struct Noise {
    pub u: Vec<f64>,
    pub dim: usize,
}

impl Noise {
    pub fn new(n: usize, dim: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Self {
            u: (0..n * dim).map(|_| rng.random::<f64>()).collect(),
            dim,
        }
    }
    pub fn at(&self, i: usize, d: usize) -> f64 {
        self.u[i * self.dim + d]
    }
    pub fn len(&self) -> usize {
        self.u.len() / self.dim
    }
    pub fn is_empty(&self) -> bool {
        self.u.is_empty()
    }
}

pub use cached::{sample_cached, sample_cached_given};
pub use naive::{sample_naive, sample_naive_given};
pub use predictive::sample_predictive;
