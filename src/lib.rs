//! armory: deep autoregressive generative models (ARMs) on candle.
//!
//! An ARM factorises p(x) = Π_d p(x_d | x_<d): a causal network ([`models::CausalNet`]) computes θ_d from
//! x_<d for every d in one pass, and a per-dimension distribution ([`likelihood::Likelihood`]) scores or
//! samples x_d given θ_d.
//!
//! - [`data`]: datasets as `[N, D]` integer arrays, the embedded digits set, splits
//! - [`nn`]: layers (causal convolutions) and the project's own kernels
//! - [`likelihood`]: the categorical distribution
//! - [`models`]: the ARM and its network families
//! - [`sample`]: the samplers
//! - [`train`]: the training loop, optimisers, early stopping, checkpoints, metrics
//! - [`codec`]: lossless compression with a trained ARM (`armory compress` / `decompress`)
//! - [`viz`]: pictures of data, samples and learning curves

pub mod codec;
pub mod config;
pub mod data;
pub mod error;
pub mod likelihood;
pub mod models;
pub mod nn;
pub mod params;
pub mod sample;
pub mod train;
pub mod viz;

pub use error::{Error, Result};
