//! Evaluating a VAE: the importance-weighted estimate of log p(x) (IWAE, Burda et al. 2016), and the
//! latent dimensions the model uses (active units, ibid.).

use candle_core::{DType, Tensor};

use super::vae::Vae;
use crate::error::{Error, Result};

/// A latent dimension is active when its posterior mean varies over the data by more than this
/// (Burda et al. 2016: Cov_x(E_q[z_l | x]) > 10⁻²).
pub const ACTIVE_UNIT_THRESHOLD: f64 = 0.01;

/// Which latent dimensions the encoder uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveUnits {
    /// Per dimension l, the variance over the examples of E_q[z_l | x] = μ_l(x) (divided by N).
    pub variances: Vec<f64>,
    /// How many of them exceed [`ACTIVE_UNIT_THRESHOLD`].
    pub count: usize,
}

/// A running log Σ exp(vᵢ) per example: the largest term so far and the sum of exp(vᵢ − largest), rescaled
/// when a larger term arrives, so nothing overflows or underflows whatever the order the terms come in.
struct LogSumExp {
    max: Vec<f64>,
    sum: Vec<f64>,
}

impl LogSumExp {
    fn new(n: usize) -> Self {
        Self {
            max: vec![f64::NEG_INFINITY; n],
            sum: vec![0.0; n],
        }
    }

    fn add(&mut self, i: usize, v: f64) {
        if v == f64::NEG_INFINITY {
            return; // a zero weight adds nothing (and −∞ − (−∞) would be NaN)
        }
        if v > self.max[i] {
            self.sum[i] = self.sum[i] * (self.max[i] - v).exp() + 1.0;
            self.max[i] = v;
        } else {
            self.sum[i] += (v - self.max[i]).exp(); // NaN (a broken model) propagates
        }
    }

    /// log Σ exp(vᵢ) − log n for each example: the log of the mean of n terms.
    fn log_mean(&self, n: usize) -> Vec<f64> {
        let log_n = (n as f64).ln();
        self.max
            .iter()
            .zip(&self.sum)
            .map(|(m, s)| m + s.ln() - log_n)
            .collect()
    }
}

impl Vae {
    /// The importance-weighted bound with `k` samples, for x `[B, D]` → `[B]` (f64, nats):
    /// log (1/k) Σ_j p(x|z_j)·p(z_j) / q(z_j|x), z_j ~ q(z|x). It is ≤ log p(x) in expectation, k = 1 is the
    /// ELBO (with the KL estimated), and it tightens as k grows, to log p(x).
    ///
    /// Samples go through the networks `chunk` at a time (a pass of `chunk`·B rows, so memory is bounded by
    /// `chunk`, not `k`), and their log-weights are summed in f64 by a running log-sum-exp. Sample j reads
    /// its noise ε `[B, L]` from stream j of the ChaCha8 generator of `seed`: the estimate is the same for
    /// any `chunk` (up to the rounding of the sums), and sample 0 is the one of [`Vae::elbo_terms`].
    pub fn iwae(&self, x: &Tensor, k: usize, seed: u64, chunk: usize) -> Result<Tensor> {
        self.iwae_reporting(x, k, seed, chunk, &|_| {})
    }

    /// [`Vae::iwae`], telling `progress` the samples done so far after each pass.
    pub fn iwae_reporting(
        &self,
        x: &Tensor,
        k: usize,
        seed: u64,
        chunk: usize,
        progress: &dyn Fn(usize),
    ) -> Result<Tensor> {
        if k == 0 || chunk == 0 {
            return Err(Error::Invalid(format!(
                "IWAE: samples (k = {k}) and chunk ({chunk}) must be at least 1"
            )));
        }
        self.check_input(x)?;
        let b = x.dim(0)?;
        if b == 0 {
            return Ok(Tensor::zeros(0, DType::F64, self.device())?);
        }
        let (mean, log_var) = self.encoder().forward(x)?;
        let (mean, log_var) = (mean.detach(), log_var.detach()); // evaluation: no graph back to the encoder
        let mut acc = LogSumExp::new(b);
        for start in (0..k).step_by(chunk) {
            let c = chunk.min(k - start);
            let log_w = self.log_weights(x, &mean, &log_var, start..start + c, seed, crate::nn::Mode::Eval, 1.0)?;
            let log_w = log_w.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            for (row, &v) in log_w.iter().enumerate() {
                acc.add(row % b, v);
            }
            progress(start + c);
        }
        Ok(Tensor::from_vec(acc.log_mean(k), b, self.device())?)
    }

    /// KL(q(z) ‖ p(z)) in nats, for the aggregate posterior q(z) = (1/N) Σ_n q(z|x_n) over the N examples of
    /// x `[N, D]` (Hoffman & Johnson 2016, "ELBO surgery"): the average KL term of the ELBO is I(x; z) + this,
    /// and this is all a better prior could win on these examples with the encoder and decoder fixed (the best
    /// prior being q(z) itself). Estimated by `samples` draws z ~ q(z|x_n) per example (stream s of `seed`
    /// for draw s), log q(z) by the exact mixture over the N posteriors, in f64. Encoded `batch` at a time.
    /// (With N examples I(x; z) ≤ log N: q(z) is a mixture of N.)
    pub fn marginal_kl(&self, x: &Tensor, samples: usize, seed: u64, batch: usize) -> Result<f64> {
        self.check_input(x)?;
        let (n, l) = (x.dim(0)?, self.latents());
        if n == 0 || samples == 0 || batch == 0 {
            return Err(Error::Invalid(format!(
                "the aggregate posterior's KL needs examples ({n}), samples ({samples}) and a batch ({batch})"
            )));
        }
        let f64s = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?) };
        let (mut mean, mut log_var) = (Vec::with_capacity(n * l), Vec::with_capacity(n * l));
        for start in (0..n).step_by(batch) {
            let (m, v) = self.encoder().forward(&x.narrow(0, start, batch.min(n - start))?)?;
            mean.extend(f64s(&m)?);
            log_var.extend(f64s(&v)?);
        }
        let mean_t = Tensor::from_vec(mean.clone(), (n, l), self.device())?.to_dtype(self.dtype())?;
        let log_var_t = Tensor::from_vec(log_var.clone(), (n, l), self.device())?.to_dtype(self.dtype())?;
        let inv_var: Vec<f64> = log_var.iter().map(|v| (-v).exp()).collect();
        // log N(z; μ_n, σ_n²) without the z-dependent part: −½ Σ_l (log σ² + log 2π).
        let norm: Vec<f64> = log_var
            .chunks(l)
            .map(|v| -0.5 * v.iter().sum::<f64>() - l as f64 * super::HALF_LOG_TWO_PI)
            .collect();
        let mut total = 0.0;
        for s in 0..samples as u64 {
            let eps = super::normal_noise(seed, s, (n, l), self.dtype(), self.device())?;
            let z = (&mean_t + (&log_var_t * 0.5)?.exp()?.mul(&eps)?)?;
            let log_p = f64s(&self.prior().log_density(&z)?)?;
            let z = f64s(&z)?;
            for (zm, lp) in z.chunks(l).zip(&log_p) {
                let mut acc = LogSumExp::new(1);
                for j in 0..n {
                    let (mu, iv) = (&mean[j * l..(j + 1) * l], &inv_var[j * l..(j + 1) * l]);
                    let sq: f64 = zm.iter().zip(mu).zip(iv).map(|((z, m), i)| (z - m) * (z - m) * i).sum();
                    acc.add(0, norm[j] - 0.5 * sq);
                }
                total += acc.log_mean(n)[0] - lp;
            }
        }
        Ok(total / (n * samples) as f64)
    }

    /// The active units of the encoder over the examples x `[N, D]` (N ≥ 1), encoded `batch` at a time.
    pub fn active_units(&self, x: &Tensor, batch: usize) -> Result<ActiveUnits> {
        self.check_input(x)?;
        let n = x.dim(0)?;
        if n == 0 || batch == 0 {
            return Err(Error::Invalid(format!(
                "active units: need at least one example and a batch of at least 1 (got {n} and {batch})"
            )));
        }
        let l = self.latents();
        let mut means = Vec::with_capacity(n * l); // [N, L] posterior means
        for start in (0..n).step_by(batch) {
            let rows = x.narrow(0, start, batch.min(n - start))?;
            let (mean, _) = self.encoder().forward(&rows)?;
            means.extend(mean.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?);
        }
        // Two passes (the mean, then the squared deviations): no cancellation between large sums.
        let variances: Vec<f64> = (0..l)
            .map(|d| {
                let col = || means.iter().skip(d).step_by(l);
                let avg = col().sum::<f64>() / n as f64;
                col().map(|v| (v - avg).powi(2)).sum::<f64>() / n as f64
            })
            .collect();
        let count = variances.iter().filter(|&&v| v > ACTIVE_UNIT_THRESHOLD).count();
        Ok(ActiveUnits { variances, count })
    }
}
