//! Sampling. The noise (one uniform per example and position) is drawn in advance from the seed, so every
//! sampler draws exactly the same values for the same seed: the naive sampler is the spec the fast ones meet.

pub mod naive;

use rand::{Rng, SeedableRng};
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

pub use naive::sample_naive;
