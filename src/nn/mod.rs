//! Layers: small structs holding their tensors and a `Copy` config, in candle-nn's shape.

pub mod activation;
pub mod causal_conv1d;
pub mod dropout;
pub mod exact;
pub mod flow;
pub mod kernels;
pub mod linear;
pub mod masked_conv2d;
pub mod step;

pub use activation::{gate, leaky_relu, relu};
pub use causal_conv1d::{causal_conv1d, CausalConv1d, CausalConv1dConfig, ConvType};
pub use dropout::{dropout, Mode};
pub use exact::Arithmetic;
pub use flow::{Flow, Full, Stepping};
pub use linear::{linear, Linear};
pub use masked_conv2d::{conv1x1, down_shift, masked_conv2d, planned_conv2d, PlannedConv2d};
pub use step::StepConv;
