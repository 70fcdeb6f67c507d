//! LeakyReLU with PyTorch's derivative: 1 where x > 0, the slope elsewhere (x = 0 included).
//!
//! Composing it from candle ops gets the kink wrong (candle's relu has derivative 1 at 0, its `minimum`
//! splits ties ½–½), and exact zeros do occur, e.g. where a channel sees only zero padding. The reference
//! gradients caught this. As one custom op it is also one pass over memory each way instead of several.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
struct LeakyRelu {
    slope: f64,
}

const CHUNK: usize = 1 << 14;

fn map<T: WithDType>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, i)| {
        for (o, &i) in o.iter_mut().zip(i) {
            *o = f(i);
        }
    });
    out
}

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "leaky-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("leaky_relu: input must be contiguous")
        };
        fn run<T: WithDType>(x: &[T], slope: f64) -> Vec<T> {
            let s = T::from_f64(slope);
            map(x, |v| if v > T::zero() { v } else { v * s })
        }
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(run(&v[start..end], self.slope)),
            CpuStorage::F64(v) => CpuStorage::F64(run(&v[start..end], self.slope)),
            _ => candle_core::bail!("leaky_relu: supports f32 and f64"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        fn run<T: WithDType>(x: &Tensor, g: &Tensor, slope: f64) -> Result<Tensor> {
            let xs = x.flatten_all()?.to_vec1::<T>()?;
            let gs = g.contiguous()?.flatten_all()?.to_vec1::<T>()?;
            let s = T::from_f64(slope);
            let mut out = vec![T::zero(); xs.len()];
            out.par_chunks_mut(CHUNK)
                .zip(xs.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK)))
                .for_each(|(o, (x, g))| {
                    for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                        *o = if x > T::zero() { g } else { g * s };
                    }
                });
            Tensor::from_vec(out, x.shape(), x.device())
        }
        Ok(Some(match arg.dtype() {
            candle_core::DType::F32 => run::<f32>(arg, grad, self.slope)?,
            candle_core::DType::F64 => run::<f64>(arg, grad, self.slope)?,
            dt => candle_core::bail!("leaky_relu: unsupported dtype {dt:?}"),
        }))
    }
}

/// x if x > 0, else slope·x; derivative 1 or slope (slope at 0, as PyTorch).
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(LeakyRelu { slope })
    } else {
        x.gt(0.0)?.where_cond(x, &(x * slope)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn derivative_is_the_slope_at_zero_like_pytorch() -> Result<()> {
        let x = Var::new(&[-2.0f64, 0.0, 3.0], &Device::Cpu)?;
        let y = leaky_relu(x.as_tensor(), 0.01)?;
        assert_eq!(y.to_vec1::<f64>()?, vec![-0.02, 0.0, 3.0]);
        let g = y.sum_all()?.backward()?;
        assert_eq!(g.get(&x).unwrap().to_vec1::<f64>()?, vec![0.01, 0.01, 1.0]);
        Ok(())
    }

    #[test]
    fn gradient_matches_finite_differences_f64() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f64, 1.0, 40_000, &dev)?; // several chunks, both threads
        let w = Tensor::randn(0f64, 1.0, 40_000, &dev)?;
        let f = |x: &Tensor| -> Result<f64> { (leaky_relu(x, 0.2)?.sqr()? * &w)?.sum_all()?.to_scalar::<f64>() };
        let g = (leaky_relu(x.as_tensor(), 0.2)?.sqr()? * &w)?.sum_all()?.backward()?;
        let g = g.get(&x).unwrap().to_vec1::<f64>()?;
        let base = x.as_tensor().to_vec1::<f64>()?;
        for i in (0..base.len()).step_by(997) {
            let at = |d: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += d;
                f(&Tensor::new(v, &dev)?)
            };
            let fd = (at(1e-6)? - at(-1e-6)?) / 2e-6;
            assert!(
                (fd - g[i]).abs() < 1e-5 * (1.0 + fd.abs()),
                "[{i}]: fd {fd} vs {}",
                g[i]
            );
        }
        Ok(())
    }
}
