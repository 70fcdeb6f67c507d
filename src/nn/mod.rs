//! Layers: small structs holding their tensors and a `Copy` config, in candle-nn's shape.

pub mod activation;
pub mod causal_conv1d;
pub mod dropout;
pub mod kernels;
pub mod linear;

pub use activation::leaky_relu;
pub use causal_conv1d::{causal_conv1d, CausalConv1d, CausalConv1dConfig, ConvType};
pub use dropout::{dropout, Mode};
pub use linear::{linear, Linear};
