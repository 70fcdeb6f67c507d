//! Elementwise ops on every core: the sum of two tensors and the product with a fixed mask (dropout). candle's
//! own run on one thread here (its thread pool is off: rayon runs the kernels), and the backward of its
//! product also computes a gradient for the mask, which nothing reads.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};

use super::shifted_conv::with_slice;
use super::{contiguous_data, par_build, CHUNK};

/// `f(a_i, b_i)` for every i, in parallel (`b` at least as long as `a`).
pub(crate) fn zip_map<T: WithDType, U: WithDType>(a: &[T], b: &[U], f: impl Fn(T, U) -> T + Sync) -> Vec<T> {
    assert!(b.len() >= a.len(), "zip_map: {} numbers for {}", b.len(), a.len());
    // SAFETY: piece i has the length of a[i·CHUNK..] up to the piece's end, and b is as long as a: the zip
    // writes every element.
    unsafe {
        par_build(a.len(), CHUNK, |i, o| {
            for ((o, &a), &b) in o.iter_mut().zip(&a[i * CHUNK..]).zip(&b[i * CHUNK..]) {
                o.write(f(a, b));
            }
        })
    }
}

/// a + b, the gradient passed to both.
struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("add: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(zip_map(
                contiguous_data::<f32>(s1, l1, "add")?,
                contiguous_data::<f32>(s2, l2, "add")?,
                |a, b| a + b,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(zip_map(
                contiguous_data::<f64>(s1, l1, "add")?,
                contiguous_data::<f64>(s2, l2, "add")?,
                |a, b| a + b,
            )),
            _ => candle_core::bail!("add: supports two f32 or two f64 tensors"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, _a: &Tensor, _b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(grad.clone())))
    }
}

/// a + b for two tensors of one shape, on every core (candle's sum where they differ or off the CPU).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu() && a.dims() == b.dims() && a.dtype() == b.dtype() {
        a.contiguous()?.apply_op2(&b.contiguous()?, Add)
    } else {
        a + b
    }
}

/// x ⊙ mask for a fixed mask of f32 numbers (in x's dtype); the gradient is grad ⊙ mask, and none for the mask.
struct MulByMask {
    mask: Arc<Vec<f32>>,
}

impl MulByMask {
    fn apply<T: WithDType>(&self, x: &[T], op: &str) -> Result<Vec<T>> {
        if x.len() != self.mask.len() {
            candle_core::bail!("{op}: {} numbers for a mask of {}", x.len(), self.mask.len());
        }
        Ok(zip_map(x, &self.mask, |x, m| x * T::from_f64(f64::from(m))))
    }
}

impl CustomOp1 for MulByMask {
    fn name(&self) -> &'static str {
        "mul-by-mask"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(self.apply(contiguous_data::<f32>(s, l, "mask")?, "mask")?),
            CpuStorage::F64(_) => CpuStorage::F64(self.apply(contiguous_data::<f64>(s, l, "mask")?, "mask")?),
            _ => candle_core::bail!("mask: supports f32 and f64"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let out = match grad.dtype() {
            candle_core::DType::F32 => {
                let g = with_slice::<f32, _>(grad, |g| self.apply(g, "mask gradient"))??;
                Tensor::from_vec(g, grad.shape(), grad.device())?
            }
            candle_core::DType::F64 => {
                let g = with_slice::<f64, _>(grad, |g| self.apply(g, "mask gradient"))??;
                Tensor::from_vec(g, grad.shape(), grad.device())?
            }
            dt => candle_core::bail!("mask: unsupported dtype {dt:?}"),
        };
        Ok(Some(out))
    }
}

/// x ⊙ mask, the mask `[x.elem_count()]` f32 numbers in x's element order, on every core (candle's product
/// off the CPU).
pub fn mul_by_mask(x: &Tensor, mask: Vec<f32>) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(MulByMask { mask: Arc::new(mask) })
    } else {
        x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// Values and gradients of `fast` and `slow` (candle's ops) on the same inputs, in f32 and f64, over
    /// more elements than one parallel task takes.
    fn same_as_candle(
        fast: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
        slow: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        for dtype in [DType::F32, DType::F64] {
            let n = super::super::PAR_MIN + 3 * CHUNK + 5; // parallel, several chunks
            let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n / 5, 5), &Device::Cpu)?.to_dtype(dtype)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n / 5, 5), &Device::Cpu)?.to_dtype(dtype)?)?;
            let weights = Tensor::randn(0f32, 1.0, (n / 5, 5), &Device::Cpu)?.to_dtype(dtype)?;
            let mut got = vec![];
            for f in [&fast as &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>, &slow] {
                let y = f(a.as_tensor(), b.as_tensor())?;
                let grads = (&y * &weights)?.sum_all()?.backward()?;
                let flat = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>();
                let ga = grads.get(a.as_tensor()).map(flat).transpose()?;
                let gb = grads.get(b.as_tensor()).map(flat).transpose()?;
                got.push((flat(&y)?, ga, gb));
            }
            assert_eq!(got[0], got[1], "{dtype:?}: values and gradients differ from candle's");
        }
        Ok(())
    }

    #[test]
    fn add_is_candles_sum() -> Result<()> {
        same_as_candle(add, |a, b| a + b)
    }

    /// The mask's product and gradient as candle's product with a constant (no gradient for the mask).
    #[test]
    fn mul_by_mask_is_candles_product() -> Result<()> {
        let mask = |n: usize| (0..n).map(|i| [0.0, 2.0, 0.5][i % 3]).collect::<Vec<f32>>();
        same_as_candle(
            |a, b| mul_by_mask(&(a + b)?, mask(a.elem_count())),
            |a, b| {
                let m = Tensor::from_vec(mask(a.elem_count()), a.shape(), a.device())?.to_dtype(a.dtype())?;
                (a + b)? * m
            },
        )
    }

    /// A tensor that reaches the loss along two paths gets the sum of the two gradients, element by element as
    /// an f32 (f64) sum of the two products — what the vendored backward adds on every core for large
    /// tensors (`add_on_every_core`) and on one thread for small ones: x ⊙ u + x ⊙ v for x of 2^17 + 3
    /// numbers (parallel) and of 7 (not).
    #[test]
    fn gradients_meeting_at_a_tensor_are_their_sums() -> Result<()> {
        for dtype in [DType::F32, DType::F64] {
            for n in [(1 << 17) + 3, 7] {
                let randn = || Tensor::randn(0f32, 1.0, n, &Device::Cpu)?.to_dtype(dtype);
                let (x, u, v, w) = (Var::from_tensor(&randn()?)?, randn()?, randn()?, randn()?);
                let y = ((x.as_tensor() * &u)? + (x.as_tensor() * &v)?)?;
                let grads = (&y * &w)?.sum_all()?.backward()?;
                let got = grads
                    .get(x.as_tensor())
                    .expect("a gradient")
                    .to_dtype(DType::F64)?
                    .to_vec1::<f64>()?;
                // The two paths' gradients, each a product in the tensors' own type, then their sum in it.
                let want = ((&w * &u)? + (&w * &v)?)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                assert_eq!(got, want, "{dtype:?}, {n} numbers");
            }
        }
        Ok(())
    }

    #[test]
    fn refuses_what_it_cannot_do() -> Result<()> {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
        assert!(mul_by_mask(&x, vec![1.0; 5]).is_err());
        // Different shapes go to candle's sum, which refuses them too.
        assert!(add(&x, &Tensor::ones(3, DType::F32, &Device::Cpu)?).is_err());
        // A strided view is read correctly (made contiguous first).
        let t = Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((3, 2))?.t()?;
        assert_eq!(add(&x, &t)?.to_vec2::<f32>()?, [[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]]);
        Ok(())
    }
}
