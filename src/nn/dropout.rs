//! Dropout with its randomness given explicitly, so training stays deterministic and resumable.

use candle_core::{Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Whether a forward pass is for training (dropout active, drawn from `seed`) or evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Eval,
    /// `seed` fixes every dropout mask of the pass (the trainer derives it from the run seed and step).
    Train {
        seed: u64,
    },
}

/// Zeroes each element with probability `p` and scales the rest by 1/(1−p) in training; identity in eval.
/// `salt` tells apart the layers of one pass.
pub fn dropout(x: &Tensor, p: f64, mode: Mode, salt: u64) -> Result<Tensor> {
    let Mode::Train { seed } = mode else {
        return Ok(x.clone());
    };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ salt.wrapping_mul(0x9E3779B97F4A7C15));
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep as f32 })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn dropout_is_seeded_scaled_and_off_in_eval() -> Result<()> {
        let x = Tensor::ones(10_000, candle_core::DType::F32, &Device::Cpu)?;
        assert_eq!(dropout(&x, 0.5, Mode::Eval, 0)?.to_vec1::<f32>()?, x.to_vec1::<f32>()?);
        let a = dropout(&x, 0.5, Mode::Train { seed: 1 }, 0)?.to_vec1::<f32>()?;
        assert_eq!(a, dropout(&x, 0.5, Mode::Train { seed: 1 }, 0)?.to_vec1::<f32>()?);
        assert_ne!(a, dropout(&x, 0.5, Mode::Train { seed: 1 }, 1)?.to_vec1::<f32>()?);
        let zeros = a.iter().filter(|&&v| v == 0.0).count();
        assert!((4_700..5_300).contains(&zeros), "{zeros}");
        assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
        Ok(())
    }
}
