//! PixelCNN++'s discretized logistic mixture (Salimans et al. 2017), generalised from 256 to any L ≥ 2 bins.
//!
//! A value x ∈ {0..L−1} sits at the centre x̃ = 2x/(L−1) − 1 ∈ [−1, 1] of a bin of half-width h = 1/(L−1).
//! A component with mean μ and scale s gives the bin the logistic mass between its edges,
//! CDF((x̃ + h − μ)/s) − CDF((x̃ − h − μ)/s), except that the lowest bin takes everything below its upper edge
//! and the highest everything above its lower edge, so the L bins always sum to one.
//! Everything is in log space and in nats; the functions are differentiable through candle's autograd.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use super::categorical;
use crate::error::{Error, Result};

/// Log-scales are floored here, as in PixelCNN++: s ≥ e⁻⁷ keeps 1/s finite and stops a component from
/// collapsing onto one bin centre, where the density (and so the mid-bin fallback) would blow up.
pub(crate) const LOG_SCALE_MIN: f64 = -7.0;

/// Below this bin mass, CDF(up) − CDF(lo) of two CDFs near 1 is a few f32 ulps (or exactly 0, whose log is −∞),
/// so the mass is approximated by the density at the bin centre times the bin width, as PixelCNN++ does.
const MID_BIN_THRESHOLD: f64 = 1e-5;

/// The difference is clamped here before its log: the branch is then unselected (mass ≤ 1e-5 takes the
/// fallback), but `where_cond` still backpropagates zeros into it and 0 · (1/0) would be NaN.
const DELTA_FLOOR: f64 = 1e-12;

/// PixelCNN++'s linear channel dependence, as (channel whose mean shifts, coefficient block, channel whose bin
/// centre it multiplies): μ_G += c0·x̃_R, μ_B += c1·x̃_R + c2·x̃_G.
const RGB_DEPENDENCE: [(usize, usize, usize); 3] = [(1, 0, 0), (2, 1, 0), (2, 2, 1)];

/// Where each block lies in one gray position's `[3M]` parameters: M logits, M means, M log-scales.
struct GrayLayout {
    width: usize,
    logits: Range<usize>,
    means: Range<usize>,
    log_scales: Range<usize>,
}

fn gray_layout(n_mix: usize) -> GrayLayout {
    GrayLayout {
        width: 3 * n_mix,
        logits: 0..n_mix,
        means: n_mix..2 * n_mix,
        log_scales: 2 * n_mix..3 * n_mix,
    }
}

/// Where each block lies in one RGB position's `[10M]` parameters (PixelCNN++'s order): M logits, then for
/// channel c = R, G, B in turn M means, M log-scales and M raw coefficients, the coefficient block of channel c
/// holding c_c (c0: G on R, c1: B on R, c2: B on G, each squashed by tanh).
struct RgbLayout {
    width: usize,
    logits: Range<usize>,
    means: [Range<usize>; 3],
    log_scales: [Range<usize>; 3],
    coeffs: [Range<usize>; 3],
}

fn rgb_layout(n_mix: usize) -> RgbLayout {
    let block = |c: usize, j: usize| {
        let start = n_mix + 3 * n_mix * c + n_mix * j;
        start..start + n_mix
    };
    RgbLayout {
        width: 10 * n_mix,
        logits: 0..n_mix,
        means: [0, 1, 2].map(|c| block(c, 0)),
        log_scales: [0, 1, 2].map(|c| block(c, 1)),
        coeffs: [0, 1, 2].map(|c| block(c, 2)),
    }
}

/// Network outputs per gray position: 3M.
pub fn gray_params_len(n_mix: usize) -> usize {
    gray_layout(n_mix).width
}

/// Network outputs per RGB position: 10M.
pub fn rgb_params_len(n_mix: usize) -> usize {
    rgb_layout(n_mix).width
}

/// params `[N, 3M]` (M logits, M means, M log-scales), x `[N]` (u32, values 0..L) → log p(x) `[N]` in nats.
pub fn log_prob_gray(params: &Tensor, x: &Tensor, n_mix: usize, num_bins: usize) -> Result<Tensor> {
    let lay = gray_layout(n_mix);
    check_shapes(params, x, lay.width, None, n_mix, num_bins)?;
    let means = cols(params, &lay.means)?;
    let log_scales = floor_log_scales(&cols(params, &lay.log_scales)?)?;
    let log_mix = candle_nn::ops::log_softmax(&cols(params, &lay.logits)?, 1)?; // [N, M]
    let log_bin = log_prob_bins(x, &means, &log_scales, num_bins)?; // [N, M]
    log_sum_exp(&(log_mix + log_bin)?)
}

/// params `[N, 10M]` in the layout of [`rgb_layout`]: M logits, then for R, G, B in turn M means, M log-scales
/// and M raw coefficients (block of R: c0 = G on R, of G: c1 = B on R, of B: c2 = B on G; tanh applied here);
/// x `[N, 3]` (u32, values 0..L) → log p(x) `[N]`, the three channels of one pixel summed, in nats.
/// One component is shared by the three channels; given it, μ_G += c0·x̃_R and μ_B += c1·x̃_R + c2·x̃_G.
/// The joint form, the reference for [`rgb_channel_params`], which the models use.
pub fn log_prob_rgb(params: &Tensor, x: &Tensor, n_mix: usize, num_bins: usize) -> Result<Tensor> {
    let (xs, means) = rgb_shifted_means(params, x, n_mix, num_bins)?;
    let lay = rgb_layout(n_mix);
    let mut log_p = candle_nn::ops::log_softmax(&cols(params, &lay.logits)?, 1)?; // [N, M]
    for c in 0..3 {
        let log_scales = floor_log_scales(&cols(params, &lay.log_scales[c])?)?;
        log_p = (log_p + log_prob_bins(&xs[c], &means[c], &log_scales, num_bins)?)?;
    }
    log_sum_exp(&log_p)
}

/// PixelCNN++'s pixel mixture as three conditionals, one gray mixture per colour: params `[N, 10M]` (the
/// layout of [`log_prob_rgb`]), x `[N, 3]` → `[N, 3, 3M]`, the parameters of R, of G given R and of B given
/// R and G. Colour c's means are shifted by the earlier colours' bin centres, and its mixture logits are the
/// pixel's plus Σ_{j<c} log P(x_j | component) — after the softmax, the components' posterior given the
/// earlier colours. So Σ_c log_prob_gray(out[:, c], x[:, c]) = log_prob_rgb(params, x) (tested), colour c's
/// parameters read x only at the colours before c, and a sampler that draws the colours one at a time from
/// these draws exactly from the pixel mixture.
pub fn rgb_channel_params(params: &Tensor, x: &Tensor, n_mix: usize, num_bins: usize) -> Result<Tensor> {
    let (xs, means) = rgb_shifted_means(params, x, n_mix, num_bins)?;
    let lay = rgb_layout(n_mix);
    let mut logits = cols(params, &lay.logits)?;
    let mut out = Vec::with_capacity(3);
    for c in 0..3 {
        let log_scales = cols(params, &lay.log_scales[c])?;
        out.push(Tensor::cat(&[&logits, &means[c], &log_scales], 1)?);
        if c < 2 {
            let log_bin = log_prob_bins(&xs[c], &means[c], &floor_log_scales(&log_scales)?, num_bins)?;
            logits = (logits + log_bin)?;
        }
    }
    Ok(Tensor::stack(&out, 1)?)
}

/// [`rgb_channel_params`] for one pixel in plain scalar f32 with `libm`'s functions (the codec's exact
/// arithmetic: the same bits on every machine): params `[10M]`, the pixel's values `x` (only `x[..colour]`
/// are read) → the parameters `[3M]` of colour `colour` given the earlier colours.
pub fn rgb_channel_params_exact(params: &[f32], x: &[u32], colour: usize, n_mix: usize, num_bins: usize) -> Vec<f32> {
    let lay = rgb_layout(n_mix);
    let centre = |v: u32| v as f32 * (2.0 / (num_bins - 1) as f32) - 1.0;
    let means = |c: usize| -> Vec<f32> {
        let mut m = params[lay.means[c].clone()].to_vec();
        for &(shifted, k, on) in RGB_DEPENDENCE.iter().filter(|d| d.0 == c) {
            debug_assert_eq!(shifted, c);
            for (j, mj) in m.iter_mut().enumerate() {
                *mj += libm::tanhf(params[lay.coeffs[k].start + j]) * centre(x[on]);
            }
        }
        m
    };
    let mut logits = params[lay.logits.clone()].to_vec();
    for (c, &xc) in x.iter().enumerate().take(colour) {
        let (m, log_scales) = (means(c), &params[lay.log_scales[c].clone()]);
        for j in 0..n_mix {
            logits[j] += log_prob_bin_exact(xc, m[j], log_scales[j].max(LOG_SCALE_MIN as f32), num_bins);
        }
    }
    logits.extend(means(colour));
    logits.extend_from_slice(&params[lay.log_scales[colour].clone()]);
    logits
}

/// [`log_prob_bins`] for one value and one component, in scalar f32 with `libm` (the same rules: edge bins,
/// the mid-bin fallback below [`MID_BIN_THRESHOLD`]); `log_scale` already floored.
fn log_prob_bin_exact(x: u32, mean: f32, log_scale: f32, num_bins: usize) -> f32 {
    let softplus = |v: f32| v.max(0.0) + libm::logf(1.0 + libm::expf(-v.abs()));
    let log_sigmoid = |v: f32| -softplus(-v);
    let h = 1.0 / (num_bins - 1) as f32;
    let inv_scale = libm::expf(-log_scale);
    let j = 2.0 * x as f32;
    let plus_in = ((j + 1.0) * h - 1.0 - mean) * inv_scale;
    let min_in = ((j - 1.0) * h - 1.0 - mean) * inv_scale;
    if x == 0 {
        return log_sigmoid(plus_in);
    }
    if x as usize == num_bins - 1 {
        return -softplus(min_in);
    }
    let delta = libm::expf(log_sigmoid(plus_in)) - libm::expf(log_sigmoid(min_in));
    if delta > MID_BIN_THRESHOLD as f32 {
        return libm::logf(delta.max(DELTA_FLOOR as f32));
    }
    let mid_in = (x as f32 * (2.0 * h) - 1.0 - mean) * inv_scale;
    mid_in - log_scale - 2.0 * softplus(mid_in) + libm::logf(2.0 * h)
}

/// The channels of x `[N, 3]` (`[N]` each) and the three channels' component means `[N, M]` with the linear
/// dependence on the earlier channels' bin centres applied.
fn rgb_shifted_means(params: &Tensor, x: &Tensor, n_mix: usize, num_bins: usize) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    let lay = rgb_layout(n_mix);
    check_shapes(params, x, lay.width, Some(3), n_mix, num_bins)?;
    let xs = (0..3)
        .map(|c| x.narrow(1, c, 1)?.squeeze(1))
        .collect::<candle_core::Result<Vec<_>>>()?; // [N] each
    let centres = xs
        .iter()
        .map(|xc| bin_centre(xc, params.dtype(), num_bins)?.unsqueeze(1))
        .collect::<candle_core::Result<Vec<_>>>()?; // [N, 1] each
    let mut means = lay.means.iter().map(|r| cols(params, r)).collect::<Result<Vec<_>>>()?;
    for &(c, k, on) in &RGB_DEPENDENCE {
        let coeff = cols(params, &lay.coeffs[k])?.tanh()?;
        means[c] = (&means[c] + coeff.broadcast_mul(&centres[on])?)?;
    }
    Ok((xs, means))
}

/// Exact probabilities of all L bins for one gray position's params `[3M]`: exp of [`log_prob_gray`] for each
/// value, computed in f64 on the CPU.
pub fn bin_probs_gray(params: &[f32], n_mix: usize, num_bins: usize) -> Result<Vec<f64>> {
    let dev = Device::Cpu;
    let row = Tensor::from_slice(params, (1, params.len()), &dev)?.to_dtype(DType::F64)?;
    let rows = row.broadcast_as((num_bins, params.len()))?.contiguous()?;
    let x = Tensor::arange(0u32, num_bins as u32, &dev)?;
    Ok(log_prob_gray(&rows, &x, n_mix, num_bins)?.exp()?.to_vec1::<f64>()?)
}

/// Draws one gray value from a position's params `[3M]` with noise fixed outside: `u_mix` ∈ [0, 1) picks the
/// component by the inverse CDF of softmax(logits), `u` ∈ (0, 1) the value by the logistic inverse CDF, which
/// then falls into exactly one bin; so the draw has the bin probabilities of [`log_prob_gray`] (bar the
/// mid-bin approximation of masses below 1e-5). A temperature T ≠ 1 draws the component from softmax(logits / T)
/// and the value with the logistic scale times T: colder samples, closer to the modes.
pub fn sample_gray(params: &[f32], u_mix: f64, u: f64, temperature: f64, n_mix: usize, num_bins: usize) -> u32 {
    let lay = gray_layout(n_mix);
    assert_eq!(
        params.len(),
        lay.width,
        "sample_gray: {n_mix} components need {} params",
        lay.width
    );
    let k = categorical::sample_with_noise(&params[lay.logits], u_mix, temperature) as usize;
    let mean = params[lay.means][k] as f64;
    let log_scale = (params[lay.log_scales][k] as f64).max(LOG_SCALE_MIN) + temperature.max(1e-6).ln();
    to_bin(logistic_quantile(mean, log_scale, u), num_bins)
}

/// The logistic inverse CDF μ + s·log(u/(1−u)). u = 0 or 1 give ∓∞, which [`to_bin`] clamps into the edge
/// bins, exactly where that mass lies.
pub(crate) fn logistic_quantile(mean: f64, log_scale: f64, u: f64) -> f64 {
    mean + log_scale.exp() * (u.ln() - (-u).ln_1p())
}

/// The bin of a continuous value v: bin k holds [x̃_k − h, x̃_k + h), the edge bins everything beyond.
fn to_bin(v: f64, num_bins: usize) -> u32 {
    let top = (num_bins - 1) as f64;
    // Clamp before the cast: ±∞ land in the edge bins (a NaN, from a NaN u, would cast to 0).
    ((v + 1.0) * 0.5 * top).round().clamp(0.0, top) as u32
}

/// The columns `r` of a `[N, P]` tensor.
fn cols(t: &Tensor, r: &Range<usize>) -> Result<Tensor> {
    Ok(t.narrow(1, r.start, r.len())?)
}

/// x `[N]` (integers 0..L) → the bin centres x̃ = 2x/(L−1) − 1 `[N]` in `dtype`.
fn bin_centre(x: &Tensor, dtype: DType, num_bins: usize) -> candle_core::Result<Tensor> {
    x.to_dtype(dtype)?.affine(2.0 / (num_bins - 1) as f64, -1.0)
}

/// log s floored at [`LOG_SCALE_MIN`]; below the floor the gradient is zero.
fn floor_log_scales(log_scales: &Tensor) -> Result<Tensor> {
    Ok(log_scales.maximum(LOG_SCALE_MIN)?)
}

/// softplus(x) = log(1 + eˣ) = max(x, 0) + log(1 + e^−|x|): the exponent is never positive, so it cannot
/// overflow for large |x| (candle has no softplus op).
pub(crate) fn softplus(x: &Tensor) -> Result<Tensor> {
    Ok((x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

/// log σ(x) = −softplus(−x), finite for any finite x.
fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok(softplus(&x.neg()?)?.neg()?)
}

/// log Σ_m exp(xs[n, m]) `[N, M]` → `[N]`, shifted by the row maximum so no exp overflows. The shift cancels
/// exactly, so it is detached (its gradient is zero; ties would only split a zero).
pub(crate) fn log_sum_exp(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(1)?.detach();
    Ok((xs.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + max)?.squeeze(1)?)
}

/// log P(bin of x | component) `[N, M]` for x `[N]` (integers 0..L), the component means `[N, M]` (already
/// shifted, for RGB) and floored log-scales `[N, M]`.
fn log_prob_bins(x: &Tensor, means: &Tensor, log_scales: &Tensor, num_bins: usize) -> Result<Tensor> {
    let dtype = means.dtype();
    let half_width = 1.0 / (num_bins - 1) as f64;
    // Edge j (= 2x ± 1, exact in floats) sits at j/(L−1) − 1: the upper edge of bin k and the lower edge of
    // bin k+1 come out as the same float, so the bin masses telescope to one even in f32. (Computed as
    // x̃ ± h the two round differently; magnified by 1/s ≤ e⁷, that doubled the worst f32 error of the total.)
    let edge = |side: f64| -> Result<Tensor> {
        let j = x.to_dtype(dtype)?.affine(2.0, side)?;
        Ok(j.affine(half_width, -1.0)?.unsqueeze(1)?.broadcast_sub(means)?) // edge − μ
    };
    let inv_scale = log_scales.neg()?.exp()?; // ≤ e⁷ thanks to the floor
    let plus_in = (edge(1.0)? * &inv_scale)?; // upper edge, standardised
    let min_in = (edge(-1.0)? * &inv_scale)?; // lower edge, standardised
    let mid_in = (bin_centre(x, dtype, num_bins)?.unsqueeze(1)?.broadcast_sub(means)? * &inv_scale)?;

    // Lowest bin: log CDF(upper edge) = log σ(plus_in) = plus_in − softplus(plus_in).
    let log_cdf_plus = log_sigmoid(&plus_in)?;
    // Highest bin: log(1 − CDF(lower edge)) = log σ(−min_in) = −softplus(min_in).
    let log_one_minus_cdf_min = softplus(&min_in)?.neg()?;
    // Interior bins: log(CDF(up) − CDF(lo)), both CDFs from log σ so neither overflows.
    let cdf_delta = (log_cdf_plus.exp()? - log_sigmoid(&min_in)?.exp()?)?;
    let log_delta = cdf_delta.maximum(DELTA_FLOOR)?.log()?;
    // Fallback for masses below 1e-5: log pdf at the centre (in x̃ units) + log of the bin width 2/(L−1);
    // log pdf = z − log s − 2·softplus(z) at z = mid_in. For L = 256 this is PixelCNN++'s − log(127.5).
    let log_pdf_mid = ((&mid_in - log_scales)? - (softplus(&mid_in)? * 2.0)?)?;
    let log_mass_mid = (log_pdf_mid + (2.0 * half_width).ln())?;
    let interior = cdf_delta.gt(MID_BIN_THRESHOLD)?.where_cond(&log_delta, &log_mass_mid)?;

    // The edges are chosen by the integer value, not by x̃ (which is only near ±1 after rounding); for L = 2
    // both bins are edges. `where_cond` needs the mask in the full [N, M] shape.
    let shape = means.shape();
    let is_low = x.eq(0u32)?.unsqueeze(1)?.broadcast_as(shape)?.contiguous()?;
    let is_high = x
        .eq((num_bins - 1) as u32)?
        .unsqueeze(1)?
        .broadcast_as(shape)?
        .contiguous()?;
    let upper = is_high.where_cond(&log_one_minus_cdf_min, &interior)?;
    Ok(is_low.where_cond(&log_cdf_plus, &upper)?)
}

/// params `[N, width]` with x `[N]` (gray) or `[N, channels]` (RGB); at least one component and two bins.
fn check_shapes(
    params: &Tensor,
    x: &Tensor,
    width: usize,
    channels: Option<usize>,
    n_mix: usize,
    num_bins: usize,
) -> Result<()> {
    if n_mix == 0 || num_bins < 2 {
        return Err(Error::Config(format!(
            "a logistic mixture needs at least one component and two bins, got {n_mix} and {num_bins}"
        )));
    }
    let (n, p) = params.dims2()?;
    let x_ok = match channels {
        None => x.dims() == [n],
        Some(c) => x.dims() == [n, c],
    };
    if p != width || !x_ok {
        return Err(Error::Invalid(format!(
            "logistic mixture with {n_mix} components: params {:?} (want [N, {width}]) do not fit x {:?}",
            params.dims(),
            x.dims()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{IndexOp, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Random gray params for one position, mixing ordinary with extreme components: means far outside
    /// [−1, 1], log-scales at or below the floor (very peaked) or large (nearly flat), logits far apart.
    fn random_gray(rng: &mut ChaCha8Rng, n_mix: usize) -> Vec<f32> {
        let mut p = Vec::with_capacity(3 * n_mix);
        p.extend((0..n_mix).map(|_| rng.random_range(-8.0f32..8.0)));
        p.extend((0..n_mix).map(|_| match rng.random_range(0..4) {
            0 => rng.random_range(-40.0f32..40.0),
            _ => rng.random_range(-1.3f32..1.3),
        }));
        p.extend((0..n_mix).map(|_| match rng.random_range(0..4) {
            0 => -7.0,
            1 => rng.random_range(-12.0f32..-7.0),
            2 => rng.random_range(1.0f32..4.0),
            _ => rng.random_range(-7.0f32..1.0),
        }));
        p
    }

    fn random_rgb(rng: &mut ChaCha8Rng, n_mix: usize) -> Vec<f32> {
        let lay = rgb_layout(n_mix);
        let gray = |rng: &mut ChaCha8Rng| random_gray(rng, n_mix);
        let mut p = vec![0f32; lay.width];
        p[lay.logits.clone()].copy_from_slice(&gray(rng)[..n_mix]);
        for c in 0..3 {
            let g = gray(rng);
            p[lay.means[c].clone()].copy_from_slice(&g[n_mix..2 * n_mix]);
            p[lay.log_scales[c].clone()].copy_from_slice(&g[2 * n_mix..]);
            for v in &mut p[lay.coeffs[c].clone()] {
                *v = rng.random_range(-4.0f32..4.0); // tanh saturates beyond ±3
            }
        }
        p
    }

    fn log_sigmoid_f64(z: f64) -> f64 {
        -(-z).exp().ln_1p() // fine for the moderate z used here
    }

    #[test]
    fn matches_hand_computed_values() -> Result<()> {
        let dev = Device::Cpu;
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        // L = 3 (centres −1, 0, 1, half-width ½), one component at μ = 0, s = 1.
        let params = Tensor::new(&[[0.3f64, 0.0, 0.0]; 3], &dev)?;
        let x = Tensor::new(&[0u32, 1, 2], &dev)?;
        let lp = log_prob_gray(&params, &x, 1, 3)?.to_vec1::<f64>()?;
        let want = [sig(-0.5), sig(0.5) - sig(-0.5), 1.0 - sig(0.5)];
        for (l, w) in lp.iter().zip(want) {
            assert!((l - w.ln()).abs() < 1e-12, "{l} vs {}", w.ln());
        }
        // RGB, L = 3, one component, all means 0 and scales 1, one coefficient at tanh(atanh ½) = ½, pixel
        // (2, 0, 0) at x̃ = (1, −1, −1): R takes all above ½; G and B take all below −½ from their shifted means.
        // c0 (G on R): μ_G = ½; c1 (B on R): μ_B = ½; c2 (B on G): μ_B = −½.
        let lay = rgb_layout(1);
        let r = 1.0 - sig(0.5);
        for (k, g, b) in [
            (0, sig(-1.0), sig(-0.5)),
            (1, sig(-0.5), sig(-1.0)),
            (2, sig(-0.5), sig(0.0)),
        ] {
            let mut p = vec![0f64; lay.width];
            p[lay.coeffs[k].start] = 0.5f64.atanh();
            let params = Tensor::from_slice(&p, (1, lay.width), &dev)?;
            let lp = log_prob_rgb(&params, &Tensor::new(&[[2u32, 0, 0]], &dev)?, 1, 3)?.to_vec1::<f64>()?;
            let want = (r * g * b).ln();
            assert!((lp[0] - want).abs() < 1e-12, "c{k}: {} vs {want}", lp[0]);
        }
        Ok(())
    }

    #[test]
    fn gray_bins_sum_to_one() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let dev = Device::Cpu;
        for num_bins in [2, 3, 16, 256] {
            for trial in 0..60 {
                let n_mix = 1 + trial % 5;
                let p = random_gray(&mut rng, n_mix);
                // An adversarially placed peaked component can miss by up to ~1.8e-5, through the mid-bin
                // approximation (see fallback_error_stays_small); these seeded draws stay within 1e-5.
                let probs = bin_probs_gray(&p, n_mix, num_bins)?;
                let total: f64 = probs.iter().sum();
                assert!(
                    (total - 1.0).abs() < 1e-5,
                    "L = {num_bins}, params {p:?}: f64 sum {total}"
                );
                // The same in f32, summed in f64.
                let rows = Tensor::from_slice(&p, (1, p.len()), &dev)?.broadcast_as((num_bins, p.len()))?;
                let x = Tensor::arange(0u32, num_bins as u32, &dev)?;
                let lp = log_prob_gray(&rows.contiguous()?, &x, n_mix, num_bins)?.to_vec1::<f32>()?;
                assert!(lp.iter().all(|v| v.is_finite()), "L = {num_bins}, params {p:?}: {lp:?}");
                let total: f64 = lp.iter().map(|&v| (v as f64).exp()).sum();
                assert!(
                    (total - 1.0).abs() < 1e-5,
                    "L = {num_bins}, params {p:?}: f32 sum {total}"
                );
            }
        }
        Ok(())
    }

    /// All L³ triples of one position's RGB params, as ([L³, 10M] params, [L³, 3] x).
    fn all_triples(p: &[f64], num_bins: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
        let l = num_bins as u32;
        let n = num_bins.pow(3);
        let xs: Vec<u32> = (0..n as u32).flat_map(|i| [i / (l * l), (i / l) % l, i % l]).collect();
        let rows = Tensor::from_slice(p, (1, p.len()), dev)?
            .broadcast_as((n, p.len()))?
            .contiguous()?;
        Ok((rows, Tensor::from_vec(xs, (n, 3), dev)?))
    }

    #[test]
    fn rgb_triples_sum_to_one() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let dev = Device::Cpu;
        for trial in 0..60 {
            let n_mix = 1 + trial % 4;
            let p: Vec<f64> = random_rgb(&mut rng, n_mix).iter().map(|&v| v as f64).collect();
            let (rows, x) = all_triples(&p, 4, &dev)?;
            let lp = log_prob_rgb(&rows, &x, n_mix, 4)?.to_vec1::<f64>()?;
            assert!(lp.iter().all(|v| v.is_finite()), "params {p:?}: {lp:?}");
            let total: f64 = lp.iter().map(|v| v.exp()).sum();
            assert!((total - 1.0).abs() < 1e-5, "params {p:?}: sum {total}");
        }
        Ok(())
    }

    #[test]
    fn far_components_fill_the_edge_bins() -> Result<()> {
        for num_bins in [2, 5, 256] {
            for (mean, bin) in [(-30f32, 0), (30.0, num_bins - 1)] {
                for log_scale in [-7f32, 0.0] {
                    let probs = bin_probs_gray(&[0.0, mean, log_scale], 1, num_bins)?;
                    assert!(probs[bin] > 1.0 - 1e-9, "μ = {mean}, L = {num_bins}: {:?}", &probs[..2]);
                    assert!(probs.iter().all(|p| p.is_finite()));
                }
            }
        }
        // Even absurdly far, every bin's log-probability stays finite, in f32 too.
        let dev = Device::Cpu;
        let params = Tensor::new(&[[0f32, -1e4, -7.0], [0., 1e4, -7.0], [0., 1e4, 20.0]], &dev)?;
        for v in [0u32, 1, 128, 255] {
            let lp = log_prob_gray(&params, &Tensor::new(&[v; 3], &dev)?, 1, 256)?.to_vec1::<f32>()?;
            assert!(lp.iter().all(|l| l.is_finite()), "x = {v}: {lp:?}");
        }
        Ok(())
    }

    #[test]
    fn mid_bin_fallback_is_used_and_finite() -> Result<()> {
        // L = 256, a component at the floor scale centred on bin 100: bins two or more away hold masses below
        // 1e-5 (bin 200's CDF difference is exactly 0 even in f64) and take the mid-bin approximation.
        let num_bins = 256usize;
        let h = 1.0 / 255.0;
        let mean = 2.0 * 100.0 * h - 1.0;
        let dev = Device::Cpu;
        for bin in [102u32, 110, 200] {
            let params = Var::new(&[[0f64, mean, -7.0]], &dev)?;
            let lp = log_prob_gray(params.as_tensor(), &Tensor::new(&[bin], &dev)?, 1, num_bins)?;
            let got = lp.to_vec1::<f64>()?[0];
            let z = (2.0 * bin as f64 * h - 1.0 - mean) * 7f64.exp();
            let want = z + 7.0 - 2.0 * (z + (-z).exp().ln_1p()) + (2.0 * h).ln();
            assert!(
                got.is_finite() && (got - want).abs() < 1e-9 * want.abs(),
                "bin {bin}: {got} vs {want}"
            );
            assert!(
                got < MID_BIN_THRESHOLD.ln(),
                "bin {bin} should be on the fallback path: {got}"
            );
            let grads = lp.sum_all()?.backward()?;
            let g = grads.get(params.as_tensor()).expect("grad").to_vec2::<f64>()?;
            assert!(g[0].iter().all(|v| v.is_finite()), "bin {bin}: {g:?}");
        }
        // The fallback underestimates a bin at the edge of the threshold, but keeps the order of magnitude.
        let probs = bin_probs_gray(&[0.0, mean as f32, -7.0], 1, num_bins)?;
        let true_mass = |k: f64| {
            let (lo, up) = (
                ((2.0 * k - 1.0) * h - 1.0 - mean) * 7f64.exp(),
                ((2.0 * k + 1.0) * h - 1.0 - mean) * 7f64.exp(),
            );
            (log_sigmoid_f64(-lo)).exp() - (log_sigmoid_f64(-up)).exp()
        };
        assert!(probs[102] < true_mass(102.0) && probs[102] > 0.05 * true_mass(102.0));
        Ok(())
    }

    /// Central differences of Σ log_prob over all params, compared with candle's gradient.
    fn check_gradient(f: impl Fn(&Tensor) -> Result<Tensor>, p: Vec<f64>, rows: usize, cols: usize) -> Result<()> {
        let dev = Device::Cpu;
        let var = Var::from_vec(p.clone(), (rows, cols), &dev)?;
        let grads = f(var.as_tensor())?.sum_all()?.backward()?;
        let g = grads
            .get(var.as_tensor())
            .expect("grad")
            .flatten_all()?
            .to_vec1::<f64>()?;
        let eval = |q: &[f64]| -> Result<f64> {
            Ok(f(&Tensor::from_slice(q, (rows, cols), &dev)?)?
                .sum_all()?
                .to_scalar::<f64>()?)
        };
        let eps = 1e-6;
        for i in 0..p.len() {
            let (mut hi, mut lo) = (p.clone(), p.clone());
            hi[i] += eps;
            lo[i] -= eps;
            let fd = (eval(&hi)? - eval(&lo)?) / (2.0 * eps);
            assert!(g[i].is_finite(), "param {i}: gradient {}", g[i]);
            assert!(
                (g[i] - fd).abs() < 1e-5 * (1.0 + fd.abs()),
                "param {i}: autograd {} vs fd {fd}",
                g[i]
            );
        }
        Ok(())
    }

    #[test]
    fn gray_gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (n_mix, num_bins) = (3, 256);
        // Values on both edges and inside; params smooth (log-scales off the floor) except two rows below:
        // one with a log-scale under the floor (gradient 0 there), one on the mid-bin fallback path.
        let xs = [0u32, 255, 128, 17, 200, 1, 254, 128];
        let mut p: Vec<f64> = Vec::new();
        for _ in 0..6 {
            p.extend((0..n_mix).map(|_| rng.random_range(-2.0..2.0)));
            p.extend((0..n_mix).map(|_| rng.random_range(-1.2..1.2)));
            p.extend((0..n_mix).map(|_| rng.random_range(-4.0..0.5)));
        }
        p.extend([0.5, -0.2, 0.1, 0.9, -0.3, 0.2, -9.0, -2.0, -1.0]); // row 6: component 0 below the floor
        p.extend([0.5, -0.2, 0.1, -0.5, -0.6, -0.7, -4.0, -4.5, -5.0]); // row 7: x̃ ≈ 0 far out in every tail
        let x = Tensor::new(&xs, &dev)?;
        check_gradient(|t| log_prob_gray(t, &x, n_mix, num_bins), p, xs.len(), 3 * n_mix)
    }

    #[test]
    fn rgb_gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (n_mix, num_bins) = (2, 16);
        let xs = [[0u32, 15, 7], [15, 0, 0], [3, 4, 5], [8, 8, 15], [1, 14, 2]];
        let mut p: Vec<f64> = Vec::new();
        for _ in 0..xs.len() {
            let lay = rgb_layout(n_mix);
            let mut row = vec![0f64; lay.width];
            for (i, v) in row.iter_mut().enumerate() {
                *v = if lay.log_scales.iter().any(|r| r.contains(&i)) {
                    rng.random_range(-3.5..0.5)
                } else {
                    rng.random_range(-1.5..1.5)
                };
            }
            p.extend(row);
        }
        let x = Tensor::new(&xs, &dev)?;
        check_gradient(|t| log_prob_rgb(t, &x, n_mix, num_bins), p, xs.len(), 10 * n_mix)
    }

    #[test]
    fn gray_sampling_matches_bin_probabilities() -> Result<()> {
        // A Fibonacci lattice (N = F₂₁ points, (i/N, i·F₂₀/N mod 1)) covers the unit square far more evenly
        // than random noise, so the frequencies match up to O(log N / N), not O(1/√N).
        let (n, step) = (17_711usize, 10_946usize);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (num_bins, n_mix) in [(2, 2), (7, 3), (16, 4)] {
            for _ in 0..5 {
                let p = random_gray(&mut rng, n_mix);
                let probs = bin_probs_gray(&p, n_mix, num_bins)?;
                let mut counts = vec![0usize; num_bins];
                for i in 0..n {
                    let u_mix = (i as f64 + 0.5) / n as f64;
                    let u = ((i * step) % n) as f64 / n as f64 + 0.5 / n as f64;
                    let v = sample_gray(&p, u_mix, u, 1.0, n_mix, num_bins) as usize;
                    assert!(v < num_bins);
                    counts[v] += 1;
                }
                for (k, (&c, &q)) in counts.iter().zip(&probs).enumerate() {
                    let freq = c as f64 / n as f64;
                    assert!(
                        (freq - q).abs() < 3e-3,
                        "L = {num_bins}, bin {k}: {freq} vs {q}, params {p:?}"
                    );
                }
            }
        }
        // Noise at its extremes still lands in range.
        let p = random_gray(&mut rng, 3);
        for (u_mix, u) in [(0.0, 0.0), (0.0, 1.0), (0.999_999_999, 1e-300), (0.5, 1.0 - 1e-16)] {
            assert!(sample_gray(&p, u_mix, u, 1.0, 3, 256) < 256);
        }
        Ok(())
    }

    /// Draws one pixel colour by colour, as the models' samplers do: colour c from the gray mixture of
    /// [`rgb_channel_params`] given the colours drawn before it.
    fn sample_rgb_by_channel(
        p: &[f32],
        u_mix: [f64; 3],
        u: [f64; 3],
        n_mix: usize,
        num_bins: usize,
    ) -> Result<[u32; 3]> {
        let dev = Device::Cpu;
        let params = Tensor::from_slice(p, (1, p.len()), &dev)?;
        let mut v = [0u32; 3];
        for c in 0..3 {
            let x = Tensor::new(&[v], &dev)?;
            let per = rgb_channel_params(&params, &x, n_mix, num_bins)?
                .i((0, c))?
                .to_vec1::<f32>()?;
            v[c] = sample_gray(&per, u_mix[c], u[c], 1.0, n_mix, num_bins);
        }
        Ok(v)
    }

    /// The three conditionals multiply to the joint: Σ_c log_prob_gray(colour c | earlier) = log_prob_rgb,
    /// for every pixel of 4 levels; and colour c's parameters do not move when later colours change.
    #[test]
    fn rgb_channel_conditionals_multiply_to_the_joint() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let dev = Device::Cpu;
        for trial in 0..20 {
            let n_mix = 1 + trial % 4;
            let p: Vec<f64> = random_rgb(&mut rng, n_mix).iter().map(|&v| v as f64).collect();
            let (rows, x) = all_triples(&p, 4, &dev)?;
            let joint = log_prob_rgb(&rows, &x, n_mix, 4)?.to_vec1::<f64>()?;
            let per = rgb_channel_params(&rows, &x, n_mix, 4)?; // [64, 3, 3M]
            let mut sum = Tensor::zeros(64, DType::F64, &dev)?;
            for c in 0..3 {
                let pc = per.i((.., c))?.contiguous()?;
                sum = (sum + log_prob_gray(&pc, &x.i((.., c))?.contiguous()?, n_mix, 4)?)?;
            }
            let sum = sum.to_vec1::<f64>()?;
            for (i, (a, b)) in sum.iter().zip(&joint).enumerate() {
                assert!((a - b).abs() < 1e-9, "n_mix {n_mix}, triple {i}: {a} vs {b}");
            }
            // Triple i is (i / 16, i / 4 % 4, i % 4): R's parameters are the same for all 64, G's for the 16
            // with R = 0, B's for the 4 with R = G = 0; and G's and B's do read the earlier colours.
            let per: Vec<Vec<Vec<f64>>> = per.to_vec3()?;
            for (i, row) in per.iter().enumerate() {
                assert_eq!(row[0], per[0][0]);
                if i < 16 {
                    assert_eq!(row[1], per[0][1]);
                }
                if i < 4 {
                    assert_eq!(row[2], per[0][2]);
                }
            }
            assert_ne!(per[16][1], per[0][1]);
            assert_ne!(per[4][2], per[0][2]);
        }
        Ok(())
    }

    /// The codec's scalar conditionals agree with the tensor ones (to f32 rounding), for every triple.
    #[test]
    fn exact_rgb_channel_params_match_the_tensor_ones() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let dev = Device::Cpu;
        for trial in 0..10 {
            let n_mix = 1 + trial % 3;
            let p = random_rgb(&mut rng, n_mix);
            let p64: Vec<f64> = p.iter().map(|&v| v as f64).collect();
            let (rows, x) = all_triples(&p64, 4, &dev)?;
            let per: Vec<Vec<Vec<f64>>> = rgb_channel_params(&rows, &x, n_mix, 4)?.to_vec3()?;
            let xs: Vec<Vec<u32>> = x.to_vec2()?;
            for (i, xi) in xs.iter().enumerate() {
                for (c, want) in per[i].iter().enumerate() {
                    let exact = rgb_channel_params_exact(&p, xi, c, n_mix, 4);
                    for (a, b) in exact.iter().zip(want) {
                        assert!(
                            (*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()),
                            "triple {i} colour {c}: {a} vs {b}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn rgb_sampling_is_in_range_deterministic_and_follows_log_prob() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let noise = |rng: &mut ChaCha8Rng| {
            (
                [0; 3].map(|_: u8| rng.random::<f64>()),
                [0; 3].map(|_: u8| rng.random::<f64>()),
            )
        };
        for (num_bins, n_mix) in [(256, 5), (2, 3)] {
            let p = random_rgb(&mut rng, n_mix);
            for _ in 0..300 {
                let (u_mix, u) = noise(&mut rng);
                let s = sample_rgb_by_channel(&p, u_mix, u, n_mix, num_bins)?;
                assert!(s.iter().all(|&v| (v as usize) < num_bins), "{s:?}");
                assert_eq!(s, sample_rgb_by_channel(&p, u_mix, u, n_mix, num_bins)?);
            }
        }
        // With L = 4, the frequencies of 20k draws match the 64 exact probabilities of the joint: colour by
        // colour sampling from the conditionals is sampling from the pixel mixture. Scales narrower than a bin
        // and strong coefficients make the shift by the rounded (not the continuous) earlier colours matter.
        let (num_bins, n_mix, draws) = (4usize, 3usize, 20_000usize);
        let lay = rgb_layout(n_mix);
        let mut p = vec![0f32; lay.width];
        for (i, v) in p.iter_mut().enumerate() {
            *v = if lay.log_scales.iter().any(|r| r.contains(&i)) {
                rng.random_range(-2.5..-1.5)
            } else if lay.coeffs.iter().any(|r| r.contains(&i)) {
                rng.random_range(-3.0..3.0)
            } else {
                rng.random_range(-1.0..1.0)
            };
        }
        let p64: Vec<f64> = p.iter().map(|&v| v as f64).collect();
        let (rows, x) = all_triples(&p64, num_bins, &dev)?;
        let probs: Vec<f64> = log_prob_rgb(&rows, &x, n_mix, num_bins)?.exp()?.to_vec1()?;
        let mut counts = vec![0usize; 64];
        for _ in 0..draws {
            let (u_mix, u) = noise(&mut rng);
            let [r, g, b] = sample_rgb_by_channel(&p, u_mix, u, n_mix, num_bins)?;
            counts[(r * 16 + g * 4 + b) as usize] += 1;
        }
        for (i, (&c, &q)) in counts.iter().zip(&probs).enumerate() {
            let freq = c as f64 / draws as f64;
            // 5 standard deviations of a binomial frequency, never below 2e-3.
            let tol = (5.0 * (q * (1.0 - q) / draws as f64).sqrt()).max(2e-3);
            assert!((freq - q).abs() < tol, "triple {i}: {freq} vs {q}");
        }
        Ok(())
    }

    #[test]
    fn bins_telescope_exactly_without_the_fallback() -> Result<()> {
        // Shared edge floats make the interior masses telescope: when no bin takes the mid-bin approximation
        // the total is one up to rounding, far inside the 1e-5 of the random test.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let dev = Device::Cpu;
        let mut checked = 0;
        for num_bins in [2, 5, 16, 64] {
            for trial in 0..40 {
                let n_mix = 1 + trial % 3;
                let mut p = Vec::new();
                p.extend((0..n_mix).map(|_| rng.random_range(-3.0f32..3.0)));
                p.extend((0..n_mix).map(|_| rng.random_range(-1.2f32..1.2)));
                p.extend((0..n_mix).map(|_| rng.random_range(-1.5f32..1.0)));
                // Precondition: every component gives every bin more than the fallback threshold.
                let per_component_min = (0..n_mix)
                    .map(|m| bin_probs_gray(&[0.0, p[n_mix + m], p[2 * n_mix + m]], 1, num_bins))
                    .collect::<Result<Vec<_>>>()?
                    .iter()
                    .flatten()
                    .fold(1f64, |a, &b| a.min(b));
                if per_component_min <= 2.0 * MID_BIN_THRESHOLD {
                    continue;
                }
                let total: f64 = bin_probs_gray(&p, n_mix, num_bins)?.iter().sum();
                assert!(
                    (total - 1.0).abs() < 1e-12,
                    "L = {num_bins}, params {p:?}: f64 sum {total}"
                );
                let rows = Tensor::from_slice(&p, (1, p.len()), &dev)?.broadcast_as((num_bins, p.len()))?;
                let x = Tensor::arange(0u32, num_bins as u32, &dev)?;
                let lp = log_prob_gray(&rows.contiguous()?, &x, n_mix, num_bins)?.to_vec1::<f32>()?;
                let total: f64 = lp.iter().map(|&v| (v as f64).exp()).sum();
                assert!(
                    (total - 1.0).abs() < 1e-6,
                    "L = {num_bins}, params {p:?}: f32 sum {total}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 80, "only {checked} of 160 draws met the precondition");
        Ok(())
    }

    #[test]
    fn fallback_error_stays_small() -> Result<()> {
        // The mid-bin approximation underestimates a tail bin (the density is convex there); a bin just under
        // the 1e-5 threshold loses most of its mass. A sweep of peaked components over one bin width finds the
        // worst total near L = 100, log s ≈ −6.35: 1.83e-5 short of one (PixelCNN++ has the same error).
        let num_bins = 100;
        let mut worst = 0f64;
        for log_scale in [-7.0f32, -6.6, -6.35, -6.0] {
            for i in 0..400 {
                let mean = (2.0 * (50.0 + i as f64 / 400.0) / 99.0 - 1.0) as f32;
                let total: f64 = bin_probs_gray(&[0.0, mean, log_scale], 1, num_bins)?.iter().sum();
                worst = worst.max((total - 1.0).abs());
            }
        }
        assert!(worst < 2e-5, "worst deviation {worst}");
        Ok(())
    }

    #[test]
    fn bad_shapes_and_mixtures_are_errors() {
        let dev = Device::Cpu;
        let params = Tensor::zeros((2, 9), DType::F32, &dev).unwrap();
        let x = Tensor::zeros(2, DType::U32, &dev).unwrap();
        assert!(log_prob_gray(&params, &x, 3, 256).is_ok());
        // θ that does not fit the mixture or x: the caller's tensors; a mixture of one bin: its config.
        assert!(matches!(log_prob_gray(&params, &x, 2, 256), Err(Error::Invalid(_))));
        assert!(matches!(log_prob_gray(&params, &x, 3, 1), Err(Error::Config(_))));
        assert!(matches!(log_prob_rgb(&params, &x, 3, 256), Err(Error::Invalid(_))));
    }
}
