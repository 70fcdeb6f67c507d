//! LeakyReLU with PyTorch's derivative: 1 where x > 0, the slope elsewhere (x = 0 included).
//!
//! Composing it from candle ops gets the kink wrong (candle's relu has derivative 1 at 0, its `minimum`
//! splits ties ½–½), and exact zeros do occur, e.g. where a channel sees only zero padding. The reference
//! gradients caught this. As one custom op it is also one pass over memory each way instead of several.

use std::mem::MaybeUninit;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};

use super::kernels::elementwise::zip_map;
use super::kernels::shifted_conv::with_slice;
use super::kernels::{par_build, CHUNK};

#[derive(Debug, Clone, Copy)]
struct LeakyRelu {
    slope: f64,
}

fn map<T: WithDType>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    // SAFETY: piece i is no longer than x[i·CHUNK..]: the zip writes every element.
    unsafe {
        par_build(x.len(), CHUNK, |i, o| {
            for (o, &x) in o.iter_mut().zip(&x[i * CHUNK..]) {
                o.write(f(x));
            }
        })
    }
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
            // Both sides computed, then chosen: a select, not a branch on the sign (see shifted_conv's output pass).
            map(x, |v| {
                let scaled = v * s;
                if v > T::zero() {
                    v
                } else {
                    scaled
                }
            })
        }
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(run(&v[start..end], self.slope)),
            CpuStorage::F64(v) => CpuStorage::F64(run(&v[start..end], self.slope)),
            _ => candle_core::bail!("leaky_relu: supports f32 and f64"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        leaky_relu_backward(arg, grad, self.slope).map(Some)
    }
}

/// The gradient through an elementwise rule, `rule(x_i, g_i)` for every i of the input `x` and the output's
/// gradient `g` (f32 or f64), both read in place (no copy of either), on every core.
fn elementwise_gradient<R: ElementwiseRule>(x: &Tensor, g: &Tensor, rule: R) -> Result<Tensor> {
    fn run<T: WithDType, R: ElementwiseRule>(x: &Tensor, g: &Tensor, rule: R) -> Result<Tensor> {
        let out = with_slice::<T, _>(x, |xs| {
            with_slice::<T, _>(g, |gs| zip_map(xs, gs, |x, g| rule.gradient(x, g)))
        })??;
        Tensor::from_vec(out, x.shape(), x.device())
    }
    if x.dims() != g.dims() {
        candle_core::bail!("{}: gradient {:?} for an input {:?}", R::NAME, g.dims(), x.dims());
    }
    match x.dtype() {
        candle_core::DType::F32 => run::<f32, R>(x, g, rule),
        candle_core::DType::F64 => run::<f64, R>(x, g, rule),
        dt => candle_core::bail!("{}: unsupported dtype {dt:?}", R::NAME),
    }
}

/// An activation's derivative rule, for [`elementwise_gradient`].
trait ElementwiseRule: Copy + Sync {
    const NAME: &'static str;
    /// The input gradient at input `x` for output gradient `g`.
    fn gradient<T: WithDType>(self, x: T, g: T) -> T;
}

impl ElementwiseRule for LeakyRelu {
    const NAME: &'static str = "leaky_relu";
    fn gradient<T: WithDType>(self, x: T, g: T) -> T {
        let scaled = g * T::from_f64(self.slope);
        if x > T::zero() {
            g
        } else {
            scaled
        }
    }
}

/// The gradient through a LeakyReLU of `slope`: `grad` where `x` > 0, `grad · slope` elsewhere. `x` is the
/// input, or (for slope ≥ 0) the output, which is > 0 exactly where the input is.
pub(crate) fn leaky_relu_backward(x: &Tensor, grad: &Tensor, slope: f64) -> Result<Tensor> {
    elementwise_gradient(x, grad, LeakyRelu { slope })
}

/// x if x > 0, else slope·x; derivative 1 or slope (slope at 0, as PyTorch).
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(LeakyRelu { slope })
    } else {
        x.gt(0.0)?.where_cond(x, &(x * slope)?)
    }
}

/// candle's ReLU — max(x, 0), derivative 1 where x ≥ 0 (0 included), its own rule, so that models trained
/// with it keep their bits — as one op on every core: candle's runs on one thread, its backward in three
/// passes (a comparison into bytes, their conversion, a product), ≈ 1.3 % of a gated PixelCNN step (its
/// head's two ReLUs) on one thread, with the other core waiting.
#[derive(Debug, Clone, Copy)]
struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("relu: input must be contiguous")
        };
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(map(&v[start..end], |v| v.max(0.0))),
            CpuStorage::F64(v) => CpuStorage::F64(map(&v[start..end], |v| v.max(0.0))),
            _ => candle_core::bail!("relu: supports f32 and f64"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        elementwise_gradient(arg, grad, Relu).map(Some)
    }
}

impl ElementwiseRule for Relu {
    const NAME: &'static str = "relu";
    /// candle's product with the converted comparison: g · 1 or g · 0 (−0 for g < 0).
    fn gradient<T: WithDType>(self, x: T, g: T) -> T {
        let mask = if x >= T::zero() { T::one() } else { T::zero() };
        g * mask
    }
}

/// max(x, 0) with candle's derivative (1 at 0), on every core ([`Relu`]); candle's own off the CPU.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64) {
        x.contiguous()?.apply_op1(Relu)
    } else {
        x.relu()
    }
}

/// The scalar functions of the gated unit, one definition for the training kernel and the cached sampler
/// (so that both compute bitwise the same gates).
pub trait GateFloat: WithDType + Send + Sync {
    /// σ(x) = 1 / (1 + e^(−x)).
    fn sigmoid(self) -> Self;
    /// tanh(x) = 2σ(2x) − 1: one exponential, which is cheaper than the library tanh.
    fn tanh_via_sigmoid(self) -> Self {
        let two = Self::from_f64(2.0);
        two * (two * self).sigmoid() - Self::one()
    }
    /// Gates of rows of 2C numbers (`x`) into rows of C (`out`).
    fn gate_rows_into(x: &[Self], c: usize, out: &mut [MaybeUninit<Self>]) {
        gate_rows_scalar(x, c, out)
    }
    /// The gradient through the gates: `g` rows of C, `x` and `out` rows of 2C.
    fn gate_grad_rows_into(x: &[Self], g: &[Self], c: usize, out: &mut [MaybeUninit<Self>]) {
        gate_grad_rows_scalar(x, g, c, out)
    }
    /// tanh and σ of rows of 2C numbers, kept for the gradient ([`halves_rows_scalar`]).
    fn halves_rows_into(x: &[Self], c: usize, ts: &mut [MaybeUninit<Self>]) {
        halves_rows_scalar(x, c, ts)
    }
    /// The gradient through the gates from kept halves ([`gate_grad_kept_rows_scalar`]).
    fn gate_grad_kept_rows_into(ts: &[Self], g: &[Self], c: usize, out: &mut [MaybeUninit<Self>]) {
        gate_grad_kept_rows_scalar(ts, g, c, out)
    }
}

#[inline(always)]
fn gate_rows_scalar<T: GateFloat>(x: &[T], c: usize, out: &mut [MaybeUninit<T>]) {
    // Zipped iterators, no indexing: no bounds checks, so the loop vectorises.
    for (o, x) in out.chunks_mut(c).zip(x.chunks(2 * c)) {
        let (a, b) = x.split_at(c);
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            o.write(gate_value(a, b));
        }
    }
}

#[inline(always)]
fn gate_grad_rows_scalar<T: GateFloat>(x: &[T], g: &[T], c: usize, out: &mut [MaybeUninit<T>]) {
    grad_rows(x, g, c, out, |a, b| (a.tanh_via_sigmoid(), b.sigmoid()))
}

/// The gradient through the gates of rows of 2C numbers (`rows`: the inputs, or kept halves) whose two halves
/// `halves` turns into t = tanh(a) and s = σ(b): ∂/∂a = g·s·(1 − t²), ∂/∂b = g·t·s·(1 − s).
#[inline(always)]
fn grad_rows<T: GateFloat>(rows: &[T], g: &[T], c: usize, out: &mut [MaybeUninit<T>], halves: impl Fn(T, T) -> (T, T)) {
    for ((o, x), g) in out.chunks_mut(2 * c).zip(rows.chunks(2 * c)).zip(g.chunks(c)) {
        let (oa, ob) = o.split_at_mut(c);
        let (xa, xb) = x.split_at(c);
        for ((((oa, ob), &a), &b), &g) in oa.iter_mut().zip(ob.iter_mut()).zip(xa).zip(xb).zip(g) {
            let (t, s) = halves(a, b);
            oa.write(g * s * (T::one() - t * t));
            ob.write(g * t * s * (T::one() - s));
        }
    }
}

/// tanh and σ of each row's halves: rows of 2C numbers (`x`) into rows of 2C (`ts`: the C values of t, then
/// the C values of s), what the gradient needs, kept by the forward pass so that the backward pass need not
/// compute them again. `t · s` is then the gate, bit for bit ([`gate_value`]).
#[inline(always)]
fn halves_rows_scalar<T: GateFloat>(x: &[T], c: usize, ts: &mut [MaybeUninit<T>]) {
    for (o, x) in ts.chunks_mut(2 * c).zip(x.chunks(2 * c)) {
        let (ot, os) = o.split_at_mut(c);
        let (xa, xb) = x.split_at(c);
        for (((t, s), &a), &b) in ot.iter_mut().zip(os.iter_mut()).zip(xa).zip(xb) {
            t.write(a.tanh_via_sigmoid());
            s.write(b.sigmoid());
        }
    }
}

/// [`gate_grad_rows_scalar`] from kept halves (`ts`, as [`halves_rows_scalar`] writes them): the same
/// arithmetic on the same t and s, so the same bits.
#[inline(always)]
fn gate_grad_kept_rows_scalar<T: GateFloat>(ts: &[T], g: &[T], c: usize, out: &mut [MaybeUninit<T>]) {
    grad_rows(ts, g, c, out, |t, s| (t, s))
}

/// The f32 loops compiled for the widest SIMD level the CPU has (the codec's dispatch): every level gives
/// the same bits, as each element has its own operations and none is fused.
mod wide {
    use super::{gate_grad_kept_rows_scalar, gate_grad_rows_scalar, gate_rows_scalar, halves_rows_scalar};
    use crate::nn::exact::{simd_level, Simd};
    use std::mem::MaybeUninit;

    /// `pub fn name(args)`: `scalar(args)` compiled for the widest SIMD level the CPU has.
    macro_rules! dispatched {
        ($($name:ident => $scalar:ident($($arg:ident: $ty:ty),*);)*) => {$(
            pub fn $name($($arg: $ty),*) {
                #[cfg(target_arch = "x86_64")]
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $scalar($($arg),*)
                }
                #[cfg(target_arch = "x86_64")]
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    $scalar($($arg),*)
                }
                match simd_level() {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: simd_level() only returns a level the CPU supports.
                    Simd::Avx512 => unsafe { avx512($($arg),*) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    Simd::Avx2 => unsafe { avx2($($arg),*) },
                    _ => $scalar($($arg),*),
                }
            }
        )*};
    }

    dispatched! {
        gates => gate_rows_scalar(x: &[f32], c: usize, out: &mut [MaybeUninit<f32>]);
        grads => gate_grad_rows_scalar(x: &[f32], g: &[f32], c: usize, out: &mut [MaybeUninit<f32>]);
        halves => halves_rows_scalar(x: &[f32], c: usize, ts: &mut [MaybeUninit<f32>]);
        grads_kept => gate_grad_kept_rows_scalar(ts: &[f32], g: &[f32], c: usize, out: &mut [MaybeUninit<f32>]);
    }
}
impl GateFloat for f32 {
    fn gate_rows_into(x: &[f32], c: usize, out: &mut [MaybeUninit<f32>]) {
        wide::gates(x, c, out)
    }
    fn gate_grad_rows_into(x: &[f32], g: &[f32], c: usize, out: &mut [MaybeUninit<f32>]) {
        wide::grads(x, g, c, out)
    }
    fn halves_rows_into(x: &[f32], c: usize, ts: &mut [MaybeUninit<f32>]) {
        wide::halves(x, c, ts)
    }
    fn gate_grad_kept_rows_into(ts: &[f32], g: &[f32], c: usize, out: &mut [MaybeUninit<f32>]) {
        wide::grads_kept(ts, g, c, out)
    }
    fn sigmoid(self) -> f32 {
        // Plain-arithmetic exp (Cephes' expf, within 2 ulp): the gate loops vectorise, where the library's
        // `expf` is a call per element (7 % of a gated PixelCNN epoch); the codec's exact gates use it too.
        super::exact::sigmoid(self)
    }
}

impl GateFloat for f64 {
    fn sigmoid(self) -> f64 {
        1.0 / (1.0 + (-self).exp())
    }
}

/// tanh(a) · σ(b): the gated unit of WaveNet and the gated PixelCNN.
pub fn gate_value<T: GateFloat>(a: T, b: T) -> T {
    a.tanh_via_sigmoid() * b.sigmoid()
}

/// The gated unit over the last dimension as one op: `[…, 2C]` → `[…, C]`, tanh of the first half of each row
/// times the sigmoid of the second half. One pass over memory each way, on every core (composing it from
/// candle ops cost ~45 % of a gated PixelCNN's forward pass in single-threaded library tanh calls).
///
/// In training, when a gradient may be asked for (the input is tracked), the forward pass keeps tanh and σ of
/// the halves (as much memory as the input, until the backward pass) and the backward pass reads them instead
/// of computing both again: the same numbers, so the same bits, without the backward pass's two exponentials
/// per unit (2–3 % of a gated PixelCNN's train step).
#[derive(Debug, Default)]
struct Gate {
    kept: Option<Mutex<Option<CpuStorage>>>,
}

impl Gate {
    /// The kept halves' slot, if this gate keeps them.
    fn kept(&self) -> Result<Option<std::sync::MutexGuard<'_, Option<CpuStorage>>>> {
        self.kept
            .as_ref()
            .map(|k| {
                k.lock()
                    .map_err(|_| candle_core::Error::Msg("gate: a poisoned lock".into()))
            })
            .transpose()
    }
}

/// Rows per parallel task.
fn rows_per_task(c: usize) -> usize {
    (CHUNK / (2 * c).max(1)).max(1)
}

/// A gradient loop over rows: (rows of 2C, the gradient's rows of C, C, the rows of 2C it writes).
type RowsInto<T> = fn(&[T], &[T], usize, &mut [MaybeUninit<T>]);

impl CustomOp1 for Gate {
    fn name(&self) -> &'static str {
        "gate"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("gate: input must be contiguous")
        };
        let mut dims = l.dims().to_vec();
        let c2 = dims.last().copied().unwrap_or(0);
        if c2 % 2 != 0 {
            candle_core::bail!("gate: the last dimension must be even, got {c2}");
        }
        let c = c2 / 2;
        let keep = self.kept.is_some();
        /// The gates, and tanh and σ of the halves if `keep`, from rows of 2C numbers.
        fn run<T: GateFloat>(x: &[T], c: usize, keep: bool) -> (Vec<T>, Option<Vec<T>>) {
            let piece = rows_per_task(c) * c.max(1);
            // SAFETY (the three builds): piece i is whole rows — of C gates, or of 2C halves — whose inputs
            // are the rows of 2C in x (or ts) from number 2i·piece on; the row loops write every number of
            // every row.
            if !keep {
                let out = unsafe { par_build(x.len() / 2, piece, |i, o| T::gate_rows_into(&x[2 * i * piece..], c, o)) };
                return (out, None);
            }
            let ts = unsafe {
                par_build(x.len(), 2 * piece, |i, o| {
                    T::halves_rows_into(&x[2 * i * piece..], c, o)
                })
            };
            let out = unsafe {
                par_build(x.len() / 2, piece, |i, o| {
                    for (o, ts) in o.chunks_mut(c).zip(ts[2 * i * piece..].chunks(2 * c)) {
                        let (t, s) = ts.split_at(c);
                        for ((o, &t), &s) in o.iter_mut().zip(t).zip(s) {
                            o.write(t * s); // gate_value's product of the same t and s
                        }
                    }
                })
            };
            (out, Some(ts))
        }
        let (out, ts) = match s {
            CpuStorage::F32(v) => {
                let (out, ts) = run(&v[start..end], c, keep);
                (CpuStorage::F32(out), ts.map(CpuStorage::F32))
            }
            CpuStorage::F64(v) => {
                let (out, ts) = run(&v[start..end], c, keep);
                (CpuStorage::F64(out), ts.map(CpuStorage::F64))
            }
            _ => candle_core::bail!("gate: supports f32 and f64"),
        };
        if let Some(mut kept) = self.kept()? {
            *kept = ts;
        }
        if let Some(last) = dims.last_mut() {
            *last = c;
        }
        Ok((out, Shape::from(dims)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        /// The gradient from `rows` (rows of 2C: the input itself, or the kept halves) by `rows_into`.
        fn run<T: GateFloat>(rows: &[T], g: &Tensor, x: &Tensor, rows_into: RowsInto<T>) -> Result<Tensor> {
            let c = x.dims().last().copied().unwrap_or(0) / 2;
            if 2 * g.elem_count() != x.elem_count() || rows.len() != x.elem_count() {
                candle_core::bail!("gate: gradient {:?} for an input {:?}", g.dims(), x.dims());
            }
            // Read in place: no copy of the gradient.
            let out = with_slice::<T, _>(g, |gs| {
                let piece = rows_per_task(c) * c.max(1);
                // SAFETY: each piece is whole rows of 2C, with their rows of `rows` and of C in gs (sizes checked
                // above); `rows_into` writes every number of every row.
                unsafe {
                    par_build(rows.len(), 2 * piece, |i, o| {
                        rows_into(&rows[2 * i * piece..], &gs[i * piece..], c, o)
                    })
                }
            })?;
            Tensor::from_vec(out, x.shape(), x.device())
        }
        let kept = self.kept()?.and_then(|mut kept| kept.take());
        Ok(Some(match (kept, arg.dtype()) {
            (Some(CpuStorage::F32(ts)), _) => run::<f32>(&ts, grad, arg, f32::gate_grad_kept_rows_into)?,
            (Some(CpuStorage::F64(ts)), _) => run::<f64>(&ts, grad, arg, f64::gate_grad_kept_rows_into)?,
            (_, candle_core::DType::F32) => {
                with_slice::<f32, _>(arg, |xs| run(xs, grad, arg, f32::gate_grad_rows_into))??
            }
            (_, candle_core::DType::F64) => {
                with_slice::<f64, _>(arg, |xs| run(xs, grad, arg, f64::gate_grad_rows_into))??
            }
            (_, dt) => candle_core::bail!("gate: unsupported dtype {dt:?}"),
        }))
    }
}

/// tanh(x[…, :C]) ⊙ σ(x[…, C:]) over the last dimension (of even size 2C): `[…, 2C]` → `[…, C]`.
pub fn gate(x: &Tensor) -> Result<Tensor> {
    gate_in(x, true)
}

/// [`gate`], keeping tanh and σ for a backward pass only in `training` (and when the input is tracked): an
/// evaluation pass asks for no gradient, and keeping them would cost it memory and time for nothing.
pub fn gate_in(x: &Tensor, training: bool) -> Result<Tensor> {
    let c2 = x.dims().last().copied().unwrap_or(0);
    if c2 % 2 != 0 {
        candle_core::bail!("gate: the last dimension must be even, got {c2}");
    }
    let c = c2 / 2;
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(Gate {
            kept: (training && x.track_op()).then(Default::default),
        })
    } else {
        let last = x.rank() - 1;
        x.narrow(last, 0, c)?.tanh()? * candle_nn::ops::sigmoid(&x.narrow(last, c, c)?)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The parallel ReLU is candle's, bit for bit, forward and backward: exact zeros (where candle's rule gives
    /// the gradient through), negative zeros, negative gradients (whose products with 0 are −0), NaN, and a
    /// tensor large enough to run in pieces.
    #[test]
    fn relu_is_candles_to_the_bit() -> Result<()> {
        let n = super::super::kernels::PAR_MIN + 1_001;
        let mut xs: Vec<f32> = Tensor::randn(0f32, 1.0, n, &Device::Cpu)?.to_vec1()?;
        (xs[0], xs[1], xs[2], xs[3]) = (0.0, -0.0, f32::NAN, 3.0);
        let x = Var::from_vec(xs, n, &Device::Cpu)?;
        let g = Tensor::randn(0f32, 1.0, n, &Device::Cpu)?;
        let bits = |t: &Tensor| -> Result<Vec<u32>> { Ok(t.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect()) };
        let (ours, theirs) = (relu(x.as_tensor())?, x.as_tensor().relu()?);
        assert_eq!(bits(&ours)?, bits(&theirs)?, "forward");
        let grad_of = |y: &Tensor| -> Result<Vec<u32>> {
            let grads = (y * &g)?.sum_all()?.backward()?;
            bits(grads.get(x.as_tensor()).expect("a gradient"))
        };
        let (ours, theirs) = (grad_of(&ours)?, grad_of(&theirs)?);
        assert_eq!(ours, theirs, "gradient");
        assert_eq!(
            ours[0],
            g.get(0)?.to_scalar::<f32>()?.to_bits(),
            "the gradient passes at 0"
        );
        Ok(())
    }

    /// `n` numbers from `f`, which must write every one of them (the promise the kernels' builds rely on):
    /// the buffer starts as a NaN with a payload no arithmetic here produces, and none may be left.
    fn written(n: usize, f: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
        const LEFT: u32 = 0x7fa0_dead;
        let mut v = vec![MaybeUninit::new(f32::from_bits(LEFT)); n];
        f(&mut v);
        // SAFETY: every element was initialised to start with.
        let v: Vec<f32> = v.into_iter().map(|x| unsafe { x.assume_init() }).collect();
        let left = v.iter().filter(|x| x.to_bits() == LEFT).count();
        assert_eq!(left, 0, "{left} of {n} numbers left unwritten");
        v
    }

    /// The ops on a tensor big enough to run in parallel pieces, against the row loops on the whole: the gate
    /// and its gradient, and LeakyReLU and its gradient, bit for bit.
    #[test]
    fn ops_in_parallel_pieces_equal_the_loops_on_the_whole() -> Result<()> {
        let c = 48; // rows of 2C = 96 numbers: pieces do not fall on a power of two
        let rows = super::super::kernels::PAR_MIN / c + 77;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (rows, 2 * c), &Device::Cpu)?))?;
        let g = Tensor::randn(0f32, 1.0, (rows, c), &Device::Cpu)?;
        let y = gate(x.as_tensor())?;
        let grad = (&y * &g)?.sum_all()?.backward()?;
        let (xs, gs) = (x.flatten_all()?.to_vec1::<f32>()?, g.flatten_all()?.to_vec1::<f32>()?);
        let want_y = written(rows * c, |o| gate_rows_scalar(&xs, c, o));
        let want_g = written(rows * 2 * c, |o| gate_grad_rows_scalar(&xs, &gs, c, o));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y.flatten_all()?.to_vec1::<f32>()?), bits(&want_y), "gate");
        let gradient = |grads: &candle_core::backprop::GradStore| -> Result<Vec<f32>> {
            grads
                .get(x.as_tensor())
                .expect("a gradient")
                .flatten_all()?
                .to_vec1::<f32>()
        };
        assert_eq!(bits(&gradient(&grad)?), bits(&want_g), "gate gradient");
        // The halves were kept for that gradient and taken by it: a second backward pass computes them
        // again, from the input; an untracked input keeps nothing. The same bits each way.
        let again = (&y * &g)?.sum_all()?.backward()?;
        assert_eq!(bits(&gradient(&again)?), bits(&want_g), "gate gradient, computed again");
        let untracked = gate(&x.as_tensor().detach())?;
        assert_eq!(
            bits(&untracked.flatten_all()?.to_vec1::<f32>()?),
            bits(&want_y),
            "gate, untracked"
        );
        let evaluating = gate_in(x.as_tensor(), false)?; // tracked, nothing kept: the gradient computes them
        assert_eq!(
            bits(&evaluating.flatten_all()?.to_vec1::<f32>()?),
            bits(&want_y),
            "gate, evaluating"
        );
        let grad = (&evaluating * &g)?.sum_all()?.backward()?;
        assert_eq!(bits(&gradient(&grad)?), bits(&want_g), "gate gradient, nothing kept");
        let y = leaky_relu(x.as_tensor(), 0.2)?;
        let grad = (&y * x.as_tensor().ones_like()?)?.sum_all()?.backward()?;
        let want: Vec<f32> = xs.iter().map(|&v| if v > 0.0 { v } else { v * 0.2f32 }).collect();
        assert_eq!(bits(&y.flatten_all()?.to_vec1::<f32>()?), bits(&want), "leaky relu");
        let want: Vec<f32> = xs.iter().map(|&v| if v > 0.0 { 1.0 } else { 0.2f32 }).collect();
        assert_eq!(bits(&gradient(&grad)?), bits(&want), "leaky relu gradient");
        Ok(())
    }

    #[test]
    fn derivative_is_the_slope_at_zero_like_pytorch() -> Result<()> {
        let x = Var::new(&[-2.0f64, 0.0, 3.0], &Device::Cpu)?;
        let y = leaky_relu(x.as_tensor(), 0.01)?;
        assert_eq!(y.to_vec1::<f64>()?, vec![-0.02, 0.0, 3.0]);
        let g = y.sum_all()?.backward()?;
        assert_eq!(g.get(&x).unwrap().to_vec1::<f64>()?, vec![0.01, 0.01, 1.0]);
        Ok(())
    }

    /// The gates and their gradients compiled for the CPU's widest SIMD level give the baseline loops' bits,
    /// over ordinary, large, tiny and non-finite inputs.
    #[test]
    fn wide_gate_loops_equal_the_baseline_bitwise() {
        let c = 37;
        let x: Vec<f32> = (0..2 * c * 5)
            .map(|i| match i % 7 {
                0 => 1e3 * (i as f32).sin(),
                1 => 1e-30 * (i as f32),
                2 if i == 23 => f32::NAN,
                _ => 8.0 * ((i as f32) * 0.37).cos(),
            })
            .collect();
        let g: Vec<f32> = (0..c * 5).map(|i| ((i as f32) * 0.11).sin()).collect();
        let a = written(c * 5, |o| wide::gates(&x, c, o));
        let b = written(c * 5, |o| gate_rows_scalar(&x, c, o));
        assert!(
            a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
            "gates differ"
        );
        let a = written(2 * c * 5, |o| wide::grads(&x, &g, c, o));
        let b = written(2 * c * 5, |o| gate_grad_rows_scalar(&x, &g, c, o));
        assert!(
            a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
            "gradients differ"
        );
        // From kept halves: the same gradient's bits.
        let ts = written(2 * c * 5, |o| wide::halves(&x, c, o));
        let want = written(2 * c * 5, |o| halves_rows_scalar(&x, c, o));
        assert!(
            ts.iter().zip(&want).all(|(p, q)| p.to_bits() == q.to_bits()),
            "halves differ"
        );
        let a = written(2 * c * 5, |o| wide::grads_kept(&ts, &g, c, o));
        assert!(
            a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
            "gradients from kept halves differ"
        );
    }

    /// The gates' exponential against f64's over the whole clamped range and near 0, within 2 ulp.
    #[test]
    fn gate_exp_is_within_two_ulp() {
        use crate::nn::exact::exp as exp_f32;
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            for x in [x, x * 1e-3, x * 1e-6] {
                let want = (x as f64).exp();
                let ulp = (want as f32).abs() * f32::EPSILON;
                worst = worst.max(((exp_f32(x) as f64 - want) / ulp as f64).abs());
            }
            x += 0.0137;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) > 0.0 && exp_f32(1000.0).is_finite());
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

    /// The fused gate against the same function composed from candle ops, forward and gradient (f64, several
    /// parallel tasks), and its gradient against finite differences.
    #[test]
    fn gate_matches_candle_ops_and_finite_differences_f64() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f64, 2.0, (3, 700, 10), &dev)?;
        let w = Tensor::randn(0f64, 1.0, (3, 700, 5), &dev)?;
        let slow = |x: &Tensor| -> Result<Tensor> {
            x.narrow(2, 0, 5)?.tanh()? * candle_nn::ops::sigmoid(&x.narrow(2, 5, 5)?)?
        };
        let (fast_y, slow_y) = (gate(x.as_tensor())?, slow(x.as_tensor())?);
        assert_eq!(fast_y.dims(), &[3, 700, 5]);
        let diff = (fast_y - &slow_y)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "forward differs by {diff}");
        let gf = (gate(x.as_tensor())? * &w)?.sum_all()?.backward()?;
        let gs = (slow(x.as_tensor())? * &w)?.sum_all()?.backward()?;
        let (gf, gs) = (gf.get(&x).unwrap(), gs.get(&x).unwrap());
        let diff = (gf - gs)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "gradient differs by {diff}");
        let base = x.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        let g = gf.flatten_all()?.to_vec1::<f64>()?;
        for i in (0..base.len()).step_by(331) {
            let at = |d: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += d;
                (gate(&Tensor::from_vec(v, (3, 700, 10), &dev)?)? * &w)?
                    .sum_all()?
                    .to_scalar::<f64>()
            };
            let fd = (at(1e-6)? - at(-1e-6)?) / 2e-6;
            assert!(
                (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                "[{i}]: fd {fd} vs {}",
                g[i]
            );
        }
        Ok(())
    }
}
