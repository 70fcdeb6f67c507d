//! Kernels the project writes itself where candle is slow or wrong, each a candle custom op with forward
//! and backward, tested against a naive loop.

pub mod shifted_conv;
