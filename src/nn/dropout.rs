//! Dropout with its randomness given explicitly, so training stays deterministic and resumable.

use std::mem::MaybeUninit;

use candle_core::{Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::kernels::elementwise::mul_by_mask;
use super::kernels::{par_build, CHUNK};

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
    let rng = ChaCha8Rng::seed_from_u64(seed ^ salt.wrapping_mul(0x9E3779B97F4A7C15));
    mul_by_mask(x, mask(rng, p, x.elem_count()))
}

/// The mask: element i is 0 when the i-th 32-bit word of `rng`'s stream is below p·2³², else 1/(1−p).
/// Drawn in parallel chunks, each starting at its own place in the sequential stream, so the mask is the
/// same for any number of threads (one word per element: half the stream an f64 per element took).
fn mask(rng: ChaCha8Rng, p: f64, n: usize) -> Vec<f32> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let threshold = (p * 4_294_967_296.0).round() as u64; // drop when word < threshold
    let fill = |i: usize, chunk: &mut [MaybeUninit<f32>]| {
        let mut rng = rng.clone();
        rng.set_word_pos((i * CHUNK) as u128);
        // The stream's words a block at a time (the same words as `next_u32` one by one), then
        // keep · [word ≥ threshold]: the same values as choosing, without a branch on a random bit (at p = 0.5
        // one mispredict in two: with the word-by-word draws, 4.6 % of the gated PixelCNN's train step in perf).
        let (keep, threshold) = (keep, threshold); // owned here, so the loop below keeps them in registers
        let mut words = [0u32; 256];
        for piece in chunk.chunks_mut(words.len()) {
            let words = &mut words[..piece.len()];
            rng.fill(words);
            for (v, &w) in piece.iter_mut().zip(words.iter()) {
                v.write(if u64::from(w) >= threshold { keep } else { 0.0 });
            }
        }
    };
    // SAFETY: `fill` writes every element of its piece, a block of words at a time.
    unsafe { par_build(n, CHUNK, fill) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::RngCore;

    /// The parallel mask is the sequential stream's, element for element, across several chunks.
    #[test]
    fn mask_is_the_sequential_stream() {
        let rng = ChaCha8Rng::seed_from_u64(42);
        let n = crate::nn::kernels::PAR_MIN + 3 * CHUNK + 17; // parallel, several chunks
        let mut seq = rng.clone();
        let threshold = (0.3 * 4_294_967_296.0f64).round() as u64;
        let want: Vec<f32> = (0..n)
            .map(|_| {
                if u64::from(seq.next_u32()) < threshold {
                    0.0
                } else {
                    (1.0 / 0.7f64) as f32
                }
            })
            .collect();
        assert_eq!(mask(rng, 0.3, n), want);
    }

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
