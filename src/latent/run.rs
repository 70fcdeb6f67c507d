//! A VAE as the command line uses it: trained by the same loop as the ARMs ([`Trainable`]), evaluated
//! (−ELBO, KL, the importance-weighted −log p(x), active units), sampled (z from the prior, x from the decoder
//! by its cached stepper), encoded (posterior means), and drawn (samples, reconstructions, interpolations).

use candle_core::{DType, Tensor};
use serde::Serialize;

use super::Vae;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::nn::Mode;
use crate::sample::{sample_cached_given, Noise};
use crate::train::{Evaluation, Trainable};

/// Examples per batch when evaluating or encoding.
const BATCH: usize = 64;

impl Trainable for Vae {
    fn params(&self) -> &crate::params::ParamStore {
        Vae::params(self)
    }
    fn device(&self) -> &candle_core::Device {
        Vae::device(self)
    }
    fn uses_labels(&self) -> bool {
        false
    }
    /// [`Vae::objective`], its noise drawn from the step's seed.
    fn objective(&self, x: &Tensor, _labels: Option<&Tensor>, mode: Mode, epoch: usize) -> Result<Tensor> {
        let seed = match mode {
            Mode::Train { seed } => seed,
            Mode::Eval => 0,
        };
        self.objective(x, mode, seed, epoch)
    }
    /// The bound trained on, on the same noise every epoch: the −ELBO (one sample per example), or with
    /// `train_samples` = k > 1 minus the k-sample importance-weighted bound. Early stopping selects on it.
    fn validate(&self, data: &Dataset) -> Result<Evaluation> {
        let nll = match self.config().train_samples {
            1 => self.elbo_over(data, 0)?.0,
            k => self.iwae_over(data, k, 0, k, &|_| {})?,
        };
        Ok(Evaluation {
            nll,
            bpd: nll / (data.dim as f64 * std::f64::consts::LN_2),
            examples: data.len(),
        })
    }
}

/// A VAE's figures on a data set, nats per example.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatentEvaluation {
    /// −ELBO, one sample of z per example.
    pub neg_elbo: f64,
    /// Its KL term (KL(q(z|x) ‖ p(z)), analytic for the standard normal prior, else estimated).
    pub kl: f64,
    /// The part of `kl` that is KL(q(z) ‖ p(z)) for the aggregate posterior q(z) over these examples (the
    /// rest is the mutual information I(x; z)): all a better prior could win here ([`Vae::marginal_kl`],
    /// 10 draws per example from `seed`).
    pub marginal_kl: f64,
    /// −log p(x) by the importance-weighted estimate with `importance_samples` samples (an upper bound on
    /// the true −log p(x) in expectation, tightening with K).
    pub nll: f64,
    /// The same in bits per dimension.
    pub bpd: f64,
    pub importance_samples: usize,
    pub seed: u64,
    /// Latent dimensions in use (Burda et al. 2016: Cov_x E_q[z_l | x] > 0.01), of `latents`.
    pub active_units: usize,
    pub latents: usize,
    pub examples: usize,
}

impl Vae {
    /// Runs `f(i, x)` on every batch x of `data` in order (batch i of `BATCH` examples), with the weights
    /// frozen for the whole pass; an empty `data` is refused.
    fn for_each_batch(&self, data: &Dataset, mut f: impl FnMut(usize, &Tensor) -> Result<()>) -> Result<()> {
        if data.is_empty() {
            return Err(Error::Invalid("cannot evaluate on an empty dataset".into()));
        }
        let idx: Vec<usize> = (0..data.len()).collect();
        crate::nn::kernels::shifted_conv::with_frozen_weights(|| -> Result<()> {
            for (i, chunk) in idx.chunks(BATCH).enumerate() {
                f(i, &data.batch(chunk, self.device())?)?;
            }
            Ok(())
        })
    }

    /// Minus the `k`-sample importance-weighted bound averaged over `data` (batch i from seed + i), `per_pass`
    /// samples through the networks at a time; `progress` is told the importance samples done so far
    /// (examples × `k` in all).
    pub fn iwae_over(
        &self,
        data: &Dataset,
        k: usize,
        seed: u64,
        per_pass: usize,
        progress: &dyn Fn(usize),
    ) -> Result<f64> {
        let (mut total, mut done) = (0.0, 0);
        self.for_each_batch(data, |i, x| {
            let b = x.dim(0)?;
            let lp = self.iwae_reporting(x, k, seed.wrapping_add(i as u64), per_pass, &|samples| {
                progress(done + b * samples)
            })?;
            total -= lp.to_vec1::<f64>()?.iter().sum::<f64>();
            done += b * k;
            progress(done);
            Ok(())
        })?;
        Ok(total / data.len() as f64)
    }

    /// (−ELBO, KL) averaged over `data`, one sample per example from `seed` (batch i from seed + i).
    pub fn elbo_over(&self, data: &Dataset, seed: u64) -> Result<(f64, f64)> {
        let (mut elbo, mut kl_sum) = (0.0, 0.0);
        self.for_each_batch(data, |i, x| {
            let (log_px, kl) = self.elbo_terms(x, Mode::Eval, seed.wrapping_add(i as u64))?;
            let sum = |t: Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?) };
            let kl = sum(kl)?;
            elbo += sum(log_px)? - kl;
            kl_sum += kl;
            Ok(())
        })?;
        let n = data.len() as f64;
        Ok((-elbo / n, kl_sum / n))
    }

    /// The figures of [`LatentEvaluation`] on `data`: the importance-weighted estimate with `k` samples
    /// (`k` ≥ 1), seeded; `progress` is told the importance samples done so far (examples × `k` in all),
    /// after every pass through the decoder.
    pub fn evaluate(&self, data: &Dataset, k: usize, seed: u64, progress: &dyn Fn(usize)) -> Result<LatentEvaluation> {
        if k == 0 {
            return Err(Error::Invalid(
                "--importance-samples must be at least 1 (1 gives the ELBO; 1000 is the usual choice)".into(),
            ));
        }
        let (neg_elbo, kl) = self.elbo_over(data, seed)?;
        let idx: Vec<usize> = (0..data.len()).collect();
        // Samples per pass: up to 64 × 64 rows through the decoder at once, fewer for a decoder whose
        // activations for them would pass 2 GiB (estimated as for training, which keeps more).
        let mut rows = 4096;
        while rows > BATCH && self.decoder().config().activation_bytes(rows) > 2 << 30 {
            rows /= 2;
        }
        let per_pass = (rows / BATCH).clamp(1, k);
        let nll = self.iwae_over(data, k, seed, per_pass, progress)?;
        for (what, value) in [("−ELBO", neg_elbo), ("−log p(x)", nll)] {
            if !value.is_finite() {
                return Err(Error::NonFiniteOutput {
                    what: format!("the model's {what} over {} examples", data.len()),
                    value,
                });
            }
        }
        let x = data.batch(&idx, self.device())?;
        Ok(LatentEvaluation {
            neg_elbo,
            kl,
            marginal_kl: self.marginal_kl(&x, 10, seed, BATCH)?,
            nll,
            bpd: nll / (data.dim as f64 * std::f64::consts::LN_2),
            importance_samples: k,
            seed,
            active_units: self.active_units(&x, BATCH)?.count,
            latents: self.latents(),
            examples: data.len(),
        })
    }

    /// The posterior means E_q[z | x] of every example of `data`, `[N][L]` flattened.
    pub fn encode_means(&self, data: &Dataset) -> Result<Vec<f32>> {
        let idx: Vec<usize> = (0..data.len()).collect();
        let mut out = Vec::with_capacity(data.len() * self.latents());
        for chunk in idx.chunks(BATCH) {
            let x = data.batch(chunk, self.device())?;
            self.check_input(&x)?;
            let (mean, _) = self.encoder().forward(&x)?;
            out.extend(mean.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// x drawn from the decoder given z `[N][L]` flattened, with `noise` (one uniform per example and
    /// position) at `temperature`, by the decoder's cached stepper (every family that takes a context has
    /// one; its draws are exactly the naive sampler's).
    pub fn decode(&self, z: &[f32], noise: &Noise, temperature: f64) -> Result<Vec<u32>> {
        if z.len() != noise.len() * self.latents() {
            return Err(Error::Invalid(format!(
                "{} latent values for {} examples of {} latents",
                z.len(),
                noise.len(),
                self.latents()
            )));
        }
        sample_cached_given(self.decoder(), noise, temperature, None, Some(z))
    }

    /// `n` samples: z from the prior (`seed`), then x from the decoder (noise from `seed` + 1).
    pub fn sample(&self, n: usize, seed: u64, temperature: f64) -> Result<Vec<u32>> {
        crate::sample::check_size(self.decoder(), n)?;
        let z = self.prior().sample(n, seed)?;
        let z = z.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.decode(&z, &Noise::new(n, self.dim(), seed.wrapping_add(1)), temperature)
    }

    /// The pictures of a trained VAE in `run`: `samples.png` (64 samples), `reconstructions.png` (the first
    /// 32 test images, each followed by the decoder's draw given its posterior mean), `interpolations.png`
    /// (8 rows: between the posterior means of two test images in 8 steps, each decoded with the same noise),
    /// and the learning curve with the ARMs' `real.png` (see [`crate::train::pictures::draw_data`]).
    pub fn draw(&self, run: &crate::train::RunDir, test: &Dataset, seed: u64) -> Result<()> {
        use crate::viz::image_grid_png;
        let (c, h, w) = test.image_shape;
        let levels = self.num_values() as u32;
        let rows = |flat: &[u32]| -> Vec<Vec<u32>> { flat.chunks(self.dim()).map(|s| s.to_vec()).collect() };
        let samples = self.sample(64, seed, 1.0)?;
        image_grid_png(&run.file("samples.png"), &rows(&samples), h, w, c, levels, 8, 4)?;

        let n = test.len().min(32);
        let means = self.encode_means(&test.slice(0..n))?;
        let recon = self.decode(&means, &Noise::new(n, self.dim(), seed), 1.0)?;
        let mut pairs = vec![];
        for (i, r) in rows(&recon).into_iter().enumerate() {
            pairs.push(test.example(i).to_vec());
            pairs.push(r);
        }
        image_grid_png(&run.file("reconstructions.png"), &pairs, h, w, c, levels, 8, 4)?;

        let l = self.latents();
        let pairs_n = (n / 2).min(8);
        let mut z = Vec::with_capacity(pairs_n * 8 * l);
        for p in 0..pairs_n {
            let (a, b) = (
                &means[2 * p * l..(2 * p + 1) * l],
                &means[(2 * p + 1) * l..(2 * p + 2) * l],
            );
            for step in 0..8 {
                let t = step as f32 / 7.0;
                z.extend(a.iter().zip(b).map(|(a, b)| a + t * (b - a)));
            }
        }
        if pairs_n > 0 {
            // One noise row for the whole grid: what changes along a row is z alone.
            let one = Noise::new(1, self.dim(), seed);
            let noise = Noise {
                u: one.u.repeat(pairs_n * 8),
                dim: self.dim(),
            };
            let grid = self.decode(&z, &noise, 1.0)?;
            image_grid_png(&run.file("interpolations.png"), &rows(&grid), h, w, c, levels, 8, 4)?;
        }
        Ok(())
    }
}
