//! In-place elementwise updates for the optimizer and the weight average: one parallel pass over the
//! buffers each, with no allocation. Composed from candle ops, one Adamax step was ten passes, each
//! allocating a new tensor, on one thread (candle's own pool is off, see `with_threads`).
//!
//! Every rule computes exactly what the candle composition it replaces computed, operation for operation
//! (`t * c` is candle's `affine(c, 0)`: `t·c + 0`; `t + ε` is `affine(1, ε)`; `t / c` multiplies by `1/c`), so
//! training is bitwise the same as before; `tests` below hold the composition as the reference.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor, WithDType};
use num_traits::Float;
use rayon::prelude::*;

use crate::nn::kernels::PAR_MIN;

/// Elements per parallel task; smaller updates run on the calling thread.
const CHUNK: usize = 1 << 15;

/// What to compute at each element; `dst` is updated in place from the sources (a gradient, a moment).
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    /// m ← m·β₁ + g·(1 − β₁); source g.
    FirstMoment { b1: f64 },
    /// v ← v·β₂ + g²·(1 − β₂) (Adam); source g.
    SecondMoment { b2: f64 },
    /// u ← max(u·β₂, |g| + ε) (Adamax); source g.
    InfinityNorm { b2: f64, eps: f64 },
    /// w ← w·decay − (m / (√v·inv_c2 + ε))·c1 (Adam); sources m, v.
    AdamStep {
        decay: Option<f64>,
        inv_c2: f64,
        eps: f64,
        c1: f64,
    },
    /// w ← w·decay − (m / u)·c1 (Adamax); sources m, u.
    AdamaxStep { decay: Option<f64>, c1: f64 },
    /// s ← s·d + w·(1 − d) (the weight average); source w.
    Average { d: f64 },
}

/// candle's `affine(mul, add)`: x·mul + add, in T.
#[inline(always)]
fn affine<T: WithDType>(x: T, mul: f64, add: f64) -> T {
    x * T::from_f64(mul) + T::from_f64(add)
}

/// candle's `maximum`.
#[inline(always)]
fn maximum<T: WithDType>(a: T, b: T) -> T {
    if a < b {
        b
    } else {
        a
    }
}

impl Rule {
    /// One element: `d` is the destination's value, `a` and `b` the sources' (b unused by one-source rules).
    #[inline(always)]
    fn apply<T: WithDType + Float>(self, d: T, a: T, b: T) -> T {
        match self {
            Rule::FirstMoment { b1 } => affine(d, b1, 0.0) + affine(a, 1.0 - b1, 0.0),
            Rule::SecondMoment { b2 } => affine(d, b2, 0.0) + affine(a * a, 1.0 - b2, 0.0),
            Rule::InfinityNorm { b2, eps } => maximum(affine(d, b2, 0.0), affine(a.abs(), 1.0, eps)),
            Rule::AdamStep { decay, inv_c2, eps, c1 } => {
                let denom = affine(affine(b.sqrt(), inv_c2, 0.0), 1.0, eps);
                let w = decay.map_or(d, |k| affine(d, k, 0.0));
                w - affine(a / denom, c1, 0.0)
            }
            Rule::AdamaxStep { decay, c1 } => {
                let w = decay.map_or(d, |k| affine(d, k, 0.0));
                w - affine(a / b, c1, 0.0)
            }
            Rule::Average { d: k } => affine(d, k, 0.0) + affine(a, 1.0 - k, 0.0),
        }
    }

    fn sources(self) -> usize {
        match self {
            Rule::AdamStep { .. } | Rule::AdamaxStep { .. } => 2,
            _ => 1,
        }
    }
}

fn update_slices<T: WithDType + Float>(rule: Rule, dst: &mut [T], a: &[T], b: &[T]) {
    if b.is_empty() {
        let run = |(d, a): (&mut [T], &[T])| {
            for (d, &a) in d.iter_mut().zip(a) {
                *d = rule.apply(*d, a, T::zero());
            }
        };
        if dst.len() <= CHUNK.max(PAR_MIN) {
            run((dst, a));
        } else {
            dst.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).for_each(run);
        }
    } else {
        let run = |(d, (a, b)): (&mut [T], (&[T], &[T]))| {
            for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
                *d = rule.apply(*d, a, b);
            }
        };
        if dst.len() <= CHUNK.max(PAR_MIN) {
            run((dst, (a, b)));
        } else {
            dst.par_chunks_mut(CHUNK)
                .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
                .for_each(run);
        }
    }
}

struct Op(Rule);

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&T::cpu_storage_as_slice(s)?[start..end]),
        None => candle_core::bail!("in-place update: sources must be contiguous"),
    }
}

/// Runs the rule on `dst` with the sources' contiguous data.
fn run_op(rule: Rule, dst: &mut CpuStorage, dst_l: &Layout, srcs: &[(&CpuStorage, &Layout)]) -> Result<()> {
    let Some((start, end)) = dst_l.contiguous_offsets() else {
        candle_core::bail!("in-place update: the destination must be contiguous")
    };
    fn run<T: WithDType + Float>(rule: Rule, dst: &mut [T], srcs: &[(&CpuStorage, &Layout)]) -> Result<()> {
        let a = slice::<T>(srcs[0].0, srcs[0].1)?;
        let b = match srcs.get(1) {
            Some(s) => slice::<T>(s.0, s.1)?,
            None => &[],
        };
        if a.len() != dst.len() || (!b.is_empty() && b.len() != dst.len()) {
            candle_core::bail!(
                "in-place update: sizes differ ({}, {}, {})",
                dst.len(),
                a.len(),
                b.len()
            );
        }
        update_slices(rule, dst, a, b);
        Ok(())
    }
    match dst {
        CpuStorage::F32(v) => run(rule, &mut v[start..end], srcs),
        CpuStorage::F64(v) => run(rule, &mut v[start..end], srcs),
        _ => candle_core::bail!("in-place update: supports f32 and f64"),
    }
}

impl InplaceOp2 for Op {
    fn name(&self) -> &'static str {
        "in-place update"
    }
    fn cpu_fwd(&self, d: &mut CpuStorage, dl: &Layout, a: &CpuStorage, al: &Layout) -> Result<()> {
        run_op(self.0, d, dl, &[(a, al)])
    }
}

impl InplaceOp3 for Op {
    fn name(&self) -> &'static str {
        "in-place update"
    }
    fn cpu_fwd(
        &self,
        d: &mut CpuStorage,
        dl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<()> {
        run_op(self.0, d, dl, &[(a, al), (b, bl)])
    }
}

/// Applies `rule` to `dst` in place, reading `srcs` (one or two tensors of `dst`'s shape and dtype). `dst`
/// must be a tensor of its own: no view, no storage shared with a source.
pub fn update(rule: Rule, dst: &Tensor, srcs: &[&Tensor]) -> Result<()> {
    if srcs.len() != rule.sources() {
        candle_core::bail!("in-place update {rule:?}: {} sources given", srcs.len());
    }
    let op = Op(rule);
    match srcs {
        [a] => dst.inplace_op2(&a.contiguous()?, &op),
        [a, b] => dst.inplace_op3(&a.contiguous()?, &b.contiguous()?, &op),
        _ => unreachable!("checked above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Each rule against the candle composition it replaces, bit for bit, in f32 and f64, on sizes below and
    /// above the parallel chunk.
    #[test]
    fn rules_equal_the_candle_compositions_bitwise() -> Result<()> {
        let dev = Device::Cpu;
        for n in [7, 3 * CHUNK + 5] {
            for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
                let r = |s: f64| -> Result<Tensor> { Tensor::randn(0f64, s, n, &dev)?.to_dtype(dtype) };
                let (d, g, m) = (r(1.0)?, r(1e-2)?, r(1e-3)?);
                let v = r(1e-3)?.abs()?;
                let (b1, b2, eps, c1, s, k) = (0.9, 0.999, 1e-8, 1e-3 / 0.19, 0.03f64.sqrt(), 0.9998);
                let cases: Vec<(Rule, Vec<&Tensor>, Tensor)> = vec![
                    (Rule::FirstMoment { b1 }, vec![&g], ((&d * b1)? + (&g * (1.0 - b1))?)?),
                    (
                        Rule::SecondMoment { b2 },
                        vec![&g],
                        ((&d * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                    ),
                    (
                        Rule::InfinityNorm { b2, eps },
                        vec![&g],
                        (&d * b2)?.maximum(&(g.abs()? + eps)?)?,
                    ),
                    (
                        Rule::AdamStep {
                            decay: Some(k),
                            inv_c2: 1.0 / s,
                            eps,
                            c1,
                        },
                        vec![&m, &v],
                        (&d * k)?.sub(&(m.div(&((v.sqrt()? / s)? + eps)?)? * c1)?)?,
                    ),
                    (
                        Rule::AdamaxStep { decay: None, c1 },
                        vec![&m, &v],
                        d.sub(&(m.div(&v)? * c1)?)?,
                    ),
                    (Rule::Average { d: k }, vec![&g], ((&d * k)? + (&g * (1.0 - k))?)?),
                ];
                for (rule, srcs, want) in cases {
                    let got = d.copy()?;
                    update(rule, &got, &srcs)?;
                    let (got, want) = (
                        got.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?,
                        want.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?,
                    );
                    let differ = got
                        .iter()
                        .zip(&want)
                        .filter(|(a, b)| a.to_bits() != b.to_bits())
                        .count();
                    assert_eq!(differ, 0, "{rule:?} {dtype:?} n={n}: {differ} elements differ");
                }
            }
        }
        Ok(())
    }
}
