//! Kernels the project writes itself where candle is slow or wrong, each a candle custom op with forward
//! and backward, tested against a naive loop.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Layout, Result, WithDType};
use rayon::prelude::*;

mod binary_input;
pub mod elementwise;
mod panels;
pub mod shifted_conv;
mod transpose;
pub mod winograd;

/// Elements per parallel task of an elementwise kernel (64 KiB of f32).
pub const CHUNK: usize = 1 << 14;

/// The contiguous data of a CPU storage in `T`; `op` names the op in the error for a strided one.
pub fn contiguous_data<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&T::cpu_storage_as_slice(s)?[start..end]),
        None => candle_core::bail!("{op}: inputs must be contiguous"),
    }
}

/// Below this many elements (512 KiB of f32) a pass over memory runs on the calling thread: handing half of it
/// to another core (waking it, and letting it sleep again) costs more than it saves. Measured on the gated
/// PixelCNN's training step: 2¹⁴ → 2¹⁷ made the step at batch 4 (8 layers) 5–10 % faster and left batch 64
/// as it was; 2¹⁹ slowed batch 64 by 20 %.
pub const PAR_MIN: usize = 1 << 17;

/// The fewest items of `per_item` elements a parallel task should take (see [`PAR_MIN`]).
pub fn min_len(per_item: usize) -> usize {
    PAR_MIN.div_ceil(per_item.max(1)).max(1)
}

/// A vector of `n` elements computed in parallel, `chunk` at a time: `fill(i, piece)` writes the i-th piece
/// (the last may be shorter) straight into the vector's memory — neither zeroed first by the calling thread
/// (`vec![0; n]`: one more pass over memory, on one core) nor by each task (a `memset` in cache: 3.5 % of the
/// gated PixelCNN's train step on two threads at AVX2, `perf record --call-graph dwarf`).
///
/// # Safety
/// `fill(i, piece)` writes every element of `piece`.
pub unsafe fn par_build<T: WithDType>(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    let task = |(i, piece): (usize, &mut [MaybeUninit<T>])| fill(i, piece);
    let spare = &mut v.spare_capacity_mut()[..n];
    if n <= chunk.max(PAR_MIN) {
        spare.chunks_mut(chunk.max(1)).enumerate().for_each(task);
    } else {
        spare
            .par_chunks_mut(chunk.max(1))
            .with_min_len(min_len(chunk))
            .enumerate()
            .for_each(task);
    }
    // SAFETY: the pieces cover the first n elements, each written by `fill` (the caller's promise).
    unsafe { v.set_len(n) };
    v
}

/// A test's override of a kernel's choice on this thread: `key` holds `Some(on)` while `f` runs, and its
/// earlier value again afterwards, also when `f` panics.
#[cfg(test)]
pub(crate) fn overriding<R>(
    key: &'static std::thread::LocalKey<std::cell::Cell<Option<bool>>>,
    on: bool,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore(
        &'static std::thread::LocalKey<std::cell::Cell<Option<bool>>>,
        Option<bool>,
    );
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.set(self.1);
        }
    }
    let _restore = Restore(key, key.replace(Some(on)));
    f()
}
