//! In-place elementwise updates for the optimizer and the weight average: one parallel pass over the
//! buffers each, with no allocation. Composed from candle ops, one Adamax step was ten passes, each
//! allocating a new tensor, on one thread (candle's own pool is off, see `with_threads`).
//!
//! Every rule computes exactly what the candle composition it replaces computed, operation for operation
//! (`t * c` is candle's `affine(c, 0)`: `t·c + 0`; `t + ε` is `affine(1, ε)`; `t / c` multiplies by `1/c`), so
//! training is bitwise the same as before; `tests` below hold the composition as the reference.

use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, WithDType};
use num_traits::Float;
use rayon::prelude::*;

use crate::nn::kernels::{contiguous_data, PAR_MIN};

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

/// `d ← rule(d, a, b)` element by element, the rule's variant chosen once for the whole slice (so the loop
/// vectorises; `b` is ignored by the one-source rules).
#[inline(always)]
fn apply_each<T: WithDType + Float>(rule: Rule, d: &mut [T], a: &[T], b: &[T]) {
    #[inline(always)]
    fn each<T: Copy>(d: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T, T) -> T) {
        for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
            *d = f(*d, a, b);
        }
    }
    // Each arm rebuilds its rule from the fields, so that inside the loop the variant is a constant.
    match rule {
        Rule::FirstMoment { b1 } => each(d, a, b, |d, a, b| Rule::FirstMoment { b1 }.apply(d, a, b)),
        Rule::SecondMoment { b2 } => each(d, a, b, |d, a, b| Rule::SecondMoment { b2 }.apply(d, a, b)),
        Rule::InfinityNorm { b2, eps } => each(d, a, b, |d, a, b| Rule::InfinityNorm { b2, eps }.apply(d, a, b)),
        Rule::AdamStep {
            decay: Some(k),
            inv_c2,
            eps,
            c1,
        } => each(d, a, b, |d, a, b| {
            Rule::AdamStep {
                decay: Some(k),
                inv_c2,
                eps,
                c1,
            }
            .apply(d, a, b)
        }),
        Rule::AdamStep {
            decay: None,
            inv_c2,
            eps,
            c1,
        } => each(d, a, b, |d, a, b| {
            Rule::AdamStep {
                decay: None,
                inv_c2,
                eps,
                c1,
            }
            .apply(d, a, b)
        }),
        Rule::AdamaxStep { decay: Some(k), c1 } => each(d, a, b, |d, a, b| {
            Rule::AdamaxStep { decay: Some(k), c1 }.apply(d, a, b)
        }),
        Rule::AdamaxStep { decay: None, c1 } => {
            each(d, a, b, |d, a, b| Rule::AdamaxStep { decay: None, c1 }.apply(d, a, b))
        }
        Rule::Average { d: k } => each(d, a, b, |d, a, b| Rule::Average { d: k }.apply(d, a, b)),
    }
}

fn update_slices<T: WithDType + Float>(rule: Rule, dst: &mut [T], a: &[T], b: &[T]) {
    let b = if b.is_empty() { a } else { b };
    let run = |(d, (a, b)): (&mut [T], (&[T], &[T]))| apply_each(rule, d, a, b);
    if dst.len() <= CHUNK.max(PAR_MIN) {
        run((dst, (a, b)));
    } else {
        dst.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(run);
    }
}

struct Op(Rule);

/// Runs the rule on `dst` with the sources' contiguous data.
fn run_op(rule: Rule, dst: &mut CpuStorage, dst_l: &Layout, srcs: &[(&CpuStorage, &Layout)]) -> Result<()> {
    let Some((start, end)) = dst_l.contiguous_offsets() else {
        candle_core::bail!("in-place update: the destination must be contiguous")
    };
    fn run<T: WithDType + Float>(rule: Rule, dst: &mut [T], srcs: &[(&CpuStorage, &Layout)]) -> Result<()> {
        let a = contiguous_data::<T>(srcs[0].0, srcs[0].1, "in-place update")?;
        let b = match srcs.get(1) {
            Some(s) => contiguous_data::<T>(s.0, s.1, "in-place update")?,
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

/// One parameter's optimizer state, plain vectors in its dtype: the first moment and the second (Adam) or
/// the infinity norm (Adamax). Held outside candle so that one pass can update them and the weights.
#[derive(Debug, Clone)]
pub enum Moments {
    F32(Vec<f32>, Vec<f32>),
    F64(Vec<f64>, Vec<f64>),
}

impl Moments {
    /// Zeros for a parameter like `w`.
    pub fn zeros(w: &Tensor) -> Result<Self> {
        let n = w.elem_count();
        match w.dtype() {
            DType::F32 => Ok(Moments::F32(vec![0.0; n], vec![0.0; n])),
            DType::F64 => Ok(Moments::F64(vec![0.0; n], vec![0.0; n])),
            dt => candle_core::bail!("optimizer: unsupported dtype {dt:?}"),
        }
    }

    /// From saved tensors, in `dtype`.
    pub fn from_tensors(m: &Tensor, v: &Tensor, dtype: DType) -> Result<Self> {
        let flat = |t: &Tensor| t.to_dtype(dtype)?.flatten_all();
        match dtype {
            DType::F32 => Ok(Moments::F32(flat(m)?.to_vec1()?, flat(v)?.to_vec1()?)),
            DType::F64 => Ok(Moments::F64(flat(m)?.to_vec1()?, flat(v)?.to_vec1()?)),
            dt => candle_core::bail!("optimizer: unsupported dtype {dt:?}"),
        }
    }

    /// The two moments as tensors of `shape` (copies), to save.
    pub fn tensors(&self, shape: &candle_core::Shape, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        match self {
            Moments::F32(m, v) => Ok((
                Tensor::from_slice(m, shape, device)?,
                Tensor::from_slice(v, shape, device)?,
            )),
            Moments::F64(m, v) => Ok((
                Tensor::from_slice(m, shape, device)?,
                Tensor::from_slice(v, shape, device)?,
            )),
        }
    }
}

/// An optimizer step as one op on the weights: the moments' rules and the weight's rule element by element.
struct Fused<'a> {
    rules: (Rule, Rule, Rule),
    state: std::sync::Mutex<&'a mut Moments>,
}

fn fused_slices<T: WithDType + Float>(
    (first, second, step): (Rule, Rule, Rule),
    w: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
) {
    // A piece at a time (in cache), each rule over the piece: the same arithmetic per element as m, v and w
    // in turn, with each rule's loop vectorised.
    const PIECE: usize = 256;
    let run = |w: &mut [T], g: &[T], m: &mut [T], v: &mut [T]| {
        let pieces = w.chunks_mut(PIECE).zip(g.chunks(PIECE));
        for ((w, g), (m, v)) in pieces.zip(m.chunks_mut(PIECE).zip(v.chunks_mut(PIECE))) {
            apply_each(first, m, g, g);
            apply_each(second, v, g, g);
            apply_each(step, w, m, v);
        }
    };
    if w.len() <= CHUNK.max(PAR_MIN) {
        run(w, g, m, v);
    } else {
        w.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((w, g), m), v)| run(w, g, m, v));
    }
}

impl InplaceOp2 for Fused<'_> {
    fn name(&self) -> &'static str {
        "optimizer step"
    }
    fn cpu_fwd(&self, w: &mut CpuStorage, wl: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        let Some((start, end)) = wl.contiguous_offsets() else {
            candle_core::bail!("optimizer step: the weights must be contiguous")
        };
        let mut state = self
            .state
            .lock()
            .map_err(|_| candle_core::Error::Msg("optimizer state poisoned".into()))?;
        let n = end - start;
        let check = |lens: [usize; 3]| -> Result<()> {
            if lens.iter().any(|&l| l != n) {
                candle_core::bail!("optimizer step: sizes differ ({n}, {lens:?})");
            }
            Ok(())
        };
        match (w, &mut **state) {
            (CpuStorage::F32(w), Moments::F32(m, v)) => {
                let g = contiguous_data::<f32>(g, gl, "optimizer step")?;
                check([g.len(), m.len(), v.len()])?;
                fused_slices(self.rules, &mut w[start..end], g, m, v);
            }
            (CpuStorage::F64(w), Moments::F64(m, v)) => {
                let g = contiguous_data::<f64>(g, gl, "optimizer step")?;
                check([g.len(), m.len(), v.len()])?;
                fused_slices(self.rules, &mut w[start..end], g, m, v);
            }
            _ => candle_core::bail!("optimizer step: the weights, gradient and state must share a dtype (f32 or f64)"),
        }
        Ok(())
    }
}

/// One optimizer step on the weights `w` with gradient `g`, in one pass over memory: element by element
/// m ← `first`(m, g), v ← `second`(v, g), w ← `step`(w, m, v) — the same arithmetic as three [`update`]s.
pub fn optimizer_step(
    (first, second, step): (Rule, Rule, Rule),
    w: &Tensor,
    g: &Tensor,
    state: &mut Moments,
) -> Result<()> {
    let op = Fused {
        rules: (first, second, step),
        state: std::sync::Mutex::new(state),
    };
    w.inplace_op2(&g.contiguous()?, &op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused optimizer step against the three updates it replaces, bit for bit, Adam and Adamax (with
    /// weight decay), f32 and f64, serial and parallel sizes, over a few steps.
    #[test]
    fn fused_step_equals_three_updates_bitwise() -> Result<()> {
        let dev = Device::Cpu;
        for n in [7, PAR_MIN + 3 * CHUNK + 5] {
            for dtype in [DType::F32, DType::F64] {
                let (b1, b2, eps, c1) = (0.9, 0.999, 1e-8, 1e-3);
                let rules = [
                    (
                        Rule::SecondMoment { b2 },
                        Rule::AdamStep {
                            decay: Some(0.99),
                            inv_c2: 3.0,
                            eps,
                            c1,
                        },
                    ),
                    (Rule::InfinityNorm { b2, eps }, Rule::AdamaxStep { decay: None, c1 }),
                ];
                for (second, step) in rules {
                    let w = Tensor::randn(0f32, 1.0, n, &dev)?.to_dtype(dtype)?;
                    let (m, v) = (w.zeros_like()?, w.zeros_like()?);
                    let fused_w = w.copy()?;
                    let mut state = Moments::zeros(&w)?;
                    for t in 0..3 {
                        let g = Tensor::randn(0f32, 1.0, n, &dev)?.to_dtype(dtype)?;
                        update(Rule::FirstMoment { b1 }, &m, &[&g])?;
                        update(second, &v, &[&g])?;
                        update(step, &w, &[&m, &v])?;
                        optimizer_step((Rule::FirstMoment { b1 }, second, step), &fused_w, &g, &mut state)?;
                        let bits = |t: &Tensor| -> Result<Vec<u64>> {
                            Ok(t.to_dtype(DType::F64)?
                                .to_vec1::<f64>()?
                                .iter()
                                .map(|x| x.to_bits())
                                .collect())
                        };
                        let (sm, sv) = state.tensors(w.shape(), &dev)?;
                        assert_eq!(bits(&fused_w)?, bits(&w)?, "{step:?} {dtype:?} n={n} step {t}: weights");
                        assert_eq!(
                            (bits(&sm)?, bits(&sv)?),
                            (bits(&m)?, bits(&v)?),
                            "{step:?} {dtype:?}: moments"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Each rule (both steps with and without decay) against the candle composition it replaces, bit for bit,
    /// in f32 and f64, on sizes below and above the parallel chunk.
    #[test]
    fn rules_equal_the_candle_compositions_bitwise() -> Result<()> {
        let dev = Device::Cpu;
        for n in [7, PAR_MIN + 3 * CHUNK + 5] {
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
                        Rule::AdamStep {
                            decay: None,
                            inv_c2: 1.0 / s,
                            eps,
                            c1,
                        },
                        vec![&m, &v],
                        d.sub(&(m.div(&((v.sqrt()? / s)? + eps)?)? * c1)?)?,
                    ),
                    (
                        Rule::AdamaxStep { decay: None, c1 },
                        vec![&m, &v],
                        d.sub(&(m.div(&v)? * c1)?)?,
                    ),
                    (
                        Rule::AdamaxStep { decay: Some(k), c1 },
                        vec![&m, &v],
                        (&d * k)?.sub(&(m.div(&v)? * c1)?)?,
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
