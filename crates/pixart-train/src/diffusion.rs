//! The IDDPM training objective as PixArt trains it (PixArt-alpha/PixArt-sigma@1ce521af
//! `diffusion/model/gaussian_diffusion.py` `GaussianDiffusion.training_losses` with
//! `model_var_type=LEARNED_RANGE`, `loss_type=MSE`, `learn_sigma=True`, and
//! `diffusion/model/diffusion_utils.py` for the KL and the discretised Gaussian likelihood):
//!
//! - 1000 steps, linear betas 1e-4 … 0.02 (`get_named_beta_schedule("linear", 1000)`), in f64;
//! - `x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε`;
//! - the model predicts ε (first C channels) and v (last C channels), with
//!   `log σ² = frac·log β_t + (1−frac)·log β̃_t`, `frac = (v+1)/2`;
//! - `loss = mean_flat((ε − ε̂)²) + vb`, where vb is the KL between the true posterior
//!   q(x_{t−1}|x_t, x0) and p(x_{t−1}|x_t) built from the *detached* ε̂ and v (so vb trains
//!   only the variance), in bits per dimension; at t = 0 it is the discretised-Gaussian
//!   decoder NLL instead.
//!
//! Optionally (not PixArt's recipe) the ε term is weighted per timestep, see [`LossWeighting`],
//! and over the latent plane, see [`object_weights`].
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor, D};
use pixart_core::{Error, Result};

/// Coefficients of a discrete Gaussian diffusion, all in f64.
#[derive(Debug, Clone)]
pub struct GaussianDiffusion {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    sqrt_alphas_cumprod: Vec<f64>,
    sqrt_one_minus_alphas_cumprod: Vec<f64>,
    sqrt_recip_alphas_cumprod: Vec<f64>,
    sqrt_recipm1_alphas_cumprod: Vec<f64>,
    posterior_log_variance_clipped: Vec<f64>,
    posterior_mean_coef1: Vec<f64>,
    posterior_mean_coef2: Vec<f64>,
    log_betas: Vec<f64>,
    weighting: LossWeighting,
    object_weight: Option<f64>,
}

/// How the ε-MSE of each sample is weighted by its timestep (the vb term never is).
///
/// With ε-prediction the error of the implied x0 prediction counts with weight SNR(t) =
/// ᾱ/(1−ᾱ), which is below 0.002 for t > 800 under PixArt's schedule: the decisions that only
/// the caption can make (which colour, where the shape goes) are taken at high noise and weigh
/// almost nothing in the loss, so a small model trained for a few thousand steps learns to
/// denoise long before it learns to read the caption.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LossWeighting {
    /// PixArt's: every timestep's ε-MSE with weight 1.
    #[default]
    Epsilon,
    /// Min-SNR-γ (Hang et al. 2023, arXiv 2303.09556) for ε-prediction: min(SNR, γ) / SNR,
    /// which lowers the weight of the low-noise steps.
    MinSnr(f64),
    /// min(max(1/SNR, 1), γ): the x0 error weighs 1 (an x0 loss) where 1/γ ≤ SNR ≤ 1, the
    /// ε-MSE weighs γ at higher noise, 1 at lower noise. This raises the high-noise steps,
    /// where the caption decides, while the cap keeps the ε-parameterised network's small
    /// errors at t → T from dominating (1/SNR reaches 25000 at t = 999).
    InvSnr(f64),
}

impl LossWeighting {
    /// The weight of a sample at a timestep with signal-to-noise ratio `snr`.
    pub fn weight(self, snr: f64) -> f64 {
        match self {
            Self::Epsilon => 1.0,
            Self::MinSnr(gamma) => snr.min(gamma) / snr,
            Self::InvSnr(gamma) => (1.0 / snr).max(1.0).min(gamma),
        }
    }
}

impl FromStr for LossWeighting {
    type Err = String;

    /// `epsilon`, `min-snr:GAMMA` or `inv-snr:GAMMA`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let value = |name: &str| -> std::result::Result<f64, String> {
            let a = arg.ok_or_else(|| format!("`{name}` needs a value, e.g. `{name}:5`"))?;
            match a.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
                _ => Err(format!("`{name}:{a}`: the value must be a positive number")),
            }
        };
        match kind.trim() {
            "epsilon" if arg.is_none() => Ok(Self::Epsilon),
            "min-snr" => value("min-snr").map(Self::MinSnr),
            "inv-snr" => value("inv-snr").map(Self::InvSnr),
            _ => Err(format!(
                "unknown loss weighting `{s}` (expected `epsilon`, `min-snr:GAMMA` or `inv-snr:GAMMA`)"
            )),
        }
    }
}

impl TryFrom<String> for LossWeighting {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<LossWeighting> for String {
    fn from(w: LossWeighting) -> String {
        w.to_string()
    }
}

impl fmt::Display for LossWeighting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Epsilon => write!(f, "epsilon"),
            Self::MinSnr(g) => write!(f, "min-snr:{g}"),
            Self::InvSnr(g) => write!(f, "inv-snr:{g}"),
        }
    }
}

/// Per-sample loss terms, each (b,) f32.
#[derive(Debug, Clone)]
pub struct Losses {
    /// w(t)·mse + vb: what is minimised (its batch mean); w = 1 unless a [`LossWeighting`] is set.
    pub loss: Tensor,
    /// The unweighted ε-MSE.
    pub mse: Tensor,
    pub vb: Tensor,
}

impl GaussianDiffusion {
    /// PixArt's schedule: `steps` steps of linear betas from 1e-4 to 0.02, scaled by
    /// 1000 / steps as IDDPM does.
    pub fn linear(steps: usize) -> Result<Self> {
        if steps < 2 {
            return Err(Error::InvalidInput(format!(
                "diffusion steps must be at least 2, got {steps}"
            )));
        }
        let scale = 1000.0 / steps as f64;
        let (b0, b1) = (scale * 1e-4, scale * 0.02);
        // np.linspace(b0, b1, steps, dtype=np.float64)
        let betas = (0..steps)
            .map(|i| b0 + (b1 - b0) * i as f64 / (steps - 1) as f64)
            .collect();
        Ok(Self::from_betas(betas))
    }

    fn from_betas(betas: Vec<f64>) -> Self {
        let n = betas.len();
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut acc = 1.0;
        for b in &betas {
            acc *= 1.0 - b;
            alphas_cumprod.push(acc);
        }
        let prev = |i: usize| if i == 0 { 1.0 } else { alphas_cumprod[i - 1] };
        let posterior_variance: Vec<f64> = (0..n)
            .map(|i| betas[i] * (1.0 - prev(i)) / (1.0 - alphas_cumprod[i]))
            .collect();
        // log(append(posterior_variance[1], posterior_variance[1:])): the variance at t = 0 is 0.
        let posterior_log_variance_clipped = (0..n)
            .map(|i| posterior_variance[if i == 0 { 1.min(n - 1) } else { i }].ln())
            .collect();
        let map = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
        Self {
            sqrt_alphas_cumprod: map(&|i| alphas_cumprod[i].sqrt()),
            sqrt_one_minus_alphas_cumprod: map(&|i| (1.0 - alphas_cumprod[i]).sqrt()),
            sqrt_recip_alphas_cumprod: map(&|i| (1.0 / alphas_cumprod[i]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|i| (1.0 / alphas_cumprod[i] - 1.0).sqrt()),
            posterior_mean_coef1: map(&|i| betas[i] * prev(i).sqrt() / (1.0 - alphas_cumprod[i])),
            posterior_mean_coef2: map(&|i| (1.0 - prev(i)) * (1.0 - betas[i]).sqrt() / (1.0 - alphas_cumprod[i])),
            log_betas: map(&|i| betas[i].ln()),
            posterior_log_variance_clipped,
            alphas_cumprod,
            betas,
            weighting: LossWeighting::Epsilon,
            object_weight: None,
        }
    }

    /// The same diffusion with each latent cell's ε error weighted `weight` on the object and 1
    /// on the background ([`object_weights`]); `None` or 1 keeps PixArt's plain mean.
    pub fn with_object_weight(mut self, weight: Option<f64>) -> Self {
        self.object_weight = weight.filter(|&w| w != 1.0);
        self
    }

    /// The same diffusion with the ε-MSE weighted by `weighting`.
    pub fn with_weighting(mut self, weighting: LossWeighting) -> Self {
        self.weighting = weighting;
        self
    }

    /// The weight of the ε-MSE at each timestep of `t`, (b,) f32 on `device`.
    fn loss_weights(&self, t: &[usize], device: &candle_core::Device) -> Result<Tensor> {
        let w = t
            .iter()
            .map(|&ti| {
                let a = self.alphas_cumprod[ti];
                self.weighting.weight(a / (1.0 - a)) as f32
            })
            .collect::<Vec<_>>();
        Ok(Tensor::from_vec(w, t.len(), device)?)
    }

    /// Number of diffusion steps.
    pub fn num_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// `coef[t_i]` per sample as a (b, 1, 1, 1) f32 tensor on `like`'s device.
    fn gather(&self, coef: &[f64], t: &[usize], like: &Tensor) -> Result<Tensor> {
        let mut v = Vec::with_capacity(t.len());
        for &ti in t {
            let c = coef
                .get(ti)
                .ok_or_else(|| Error::InvalidInput(format!("timestep {ti} out of range 0..{}", coef.len())))?;
            v.push(*c as f32);
        }
        Ok(Tensor::from_vec(v, (t.len(), 1, 1, 1), like.device())?) // (b, 1, 1, 1)
    }

    /// The noised latents `x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε`. x0, noise: (b, c, h, w).
    pub fn q_sample(&self, x0: &Tensor, t: &[usize], noise: &Tensor) -> Result<Tensor> {
        let a = self.gather(&self.sqrt_alphas_cumprod, t, x0)?;
        let s = self.gather(&self.sqrt_one_minus_alphas_cumprod, t, x0)?;
        Ok((x0.broadcast_mul(&a)? + noise.broadcast_mul(&s)?)?)
    }

    /// The training losses for one batch: `model_output` (b, 2c, h, w) is the model's output
    /// at `x_t` (from [`Self::q_sample`] with `noise`), `t` the timesteps.
    pub fn training_losses(
        &self,
        model_output: &Tensor,
        x0: &Tensor,
        x_t: &Tensor,
        noise: &Tensor,
        t: &[usize],
    ) -> Result<Losses> {
        let (b, c2, h, w) = model_output.dims4()?;
        let c = x0.dim(1)?;
        if c2 != 2 * c || x0.dims4()? != (b, c, h, w) || t.len() != b {
            return Err(Error::Shape(format!(
                "training_losses: model output {:?} does not fit x0 {:?} and {} timesteps (learned sigma needs 2c channels)",
                model_output.dims(),
                x0.dims(),
                t.len()
            )));
        }
        let out = model_output.to_dtype(DType::F32)?;
        let eps = out.narrow(1, 0, c)?;
        let v = out.narrow(1, c, c)?;
        let err = (noise - &eps)?.sqr()?; // (b, c, h, w)
        let mse = mean_flat(&err)?;
        // What is minimised: the plain mean, or the object-weighted one.
        let eps_loss = match self.object_weight {
            None => mse.clone(),
            Some(alpha) => {
                let wmap = object_weights(x0, alpha)?; // (b, 1, h, w)
                let num = sum_flat(&err.broadcast_mul(&wmap)?)?;
                let den = (sum_flat(&wmap)? * c as f64)?;
                (num / den)?
            }
        };

        // The variance term sees ε̂ through a stop-gradient.
        let eps_frozen = eps.detach();
        let min_log = self.gather(&self.posterior_log_variance_clipped, t, x0)?;
        let max_log = self.gather(&self.log_betas, t, x0)?;
        let frac = ((v + 1.0)? / 2.0)?;
        let model_log_var = (frac.broadcast_mul(&max_log)? + (1.0 - &frac)?.broadcast_mul(&min_log)?)?;
        let c1 = self.gather(&self.posterior_mean_coef1, t, x0)?;
        let c2 = self.gather(&self.posterior_mean_coef2, t, x0)?;
        let pred_x0 = (x_t.broadcast_mul(&self.gather(&self.sqrt_recip_alphas_cumprod, t, x0)?)?
            - eps_frozen.broadcast_mul(&self.gather(&self.sqrt_recipm1_alphas_cumprod, t, x0)?)?)?;
        let model_mean = (pred_x0.broadcast_mul(&c1)? + x_t.broadcast_mul(&c2)?)?;
        let true_mean = (x0.broadcast_mul(&c1)? + x_t.broadcast_mul(&c2)?)?;

        let ln2 = std::f64::consts::LN_2;
        let kl = (mean_flat(&normal_kl(&true_mean, &min_log, &model_mean, &model_log_var)?)? / ln2)?;
        let nll = (mean_flat(&discretized_gaussian_log_likelihood(
            x0,
            &model_mean,
            &(model_log_var * 0.5)?,
        )?)? * (-1.0 / ln2))?;
        let is_t0: Vec<u8> = t.iter().map(|&ti| u8::from(ti == 0)).collect();
        let is_t0 = Tensor::from_vec(is_t0, b, x0.device())?;
        let vb = is_t0.where_cond(&nll, &kl)?;
        let weighted = match self.weighting {
            LossWeighting::Epsilon => eps_loss,
            _ => (&eps_loss * self.loss_weights(t, x0.device())?)?,
        };
        Ok(Losses {
            loss: (&weighted + &vb)?,
            mse,
            vb,
        })
    }
}

/// Mean over every dim but the first: (b, ...) -> (b,).
fn mean_flat(x: &Tensor) -> Result<Tensor> {
    let b = x.dim(0)?;
    Ok(x.reshape((b, ()))?.mean(D::Minus1)?) // (b, rest) -> (b,)
}

/// Sum over every dim but the first: (b, ...) -> (b,).
fn sum_flat(x: &Tensor) -> Result<Tensor> {
    let b = x.dim(0)?;
    Ok(x.reshape((b, ()))?.sum(D::Minus1)?) // (b, rest) -> (b,)
}

/// Per-cell weights (b, 1, h, w) f32 of the object-weighted ε-MSE (`[train] object_weight`, not
/// PixArt's recipe): `alpha` on the object's cells, 1 elsewhere.
///
/// Why: in an image of one small shape on a plain background, what tells a square from a
/// circle or a triangle is a few corner pixels (a 14 px square and its inscribed circle differ in
/// 42 of 4096 pixels), so the plain mean over the latent plane gives the shape almost no weight.
/// The object is found in the clean latent `x0` (b, c, h, w) by rule, the way the demo checker
/// finds it in pixels: the background is the per-channel median of the one-cell border ring;
/// a cell is object when its distance (L2 over channels) to the background exceeds half the
/// image's largest distance; the mask is then grown by one cell (3×3) to take in the partly
/// covered edge cells. An image with no distance at all (a blank latent) gets weight 1 everywhere.
pub fn object_weights(x0: &Tensor, alpha: f64) -> Result<Tensor> {
    let (b, c, h, w) = x0.dims4()?;
    if h < 3 || w < 3 {
        return Err(Error::Shape(format!(
            "object weighting needs a latent of 3x3 or more, got {h}x{w}"
        )));
    }
    let data = x0.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let plane = h * w;
    // The one-cell border ring, the same cells for every sample.
    let ring: Vec<usize> = (0..plane)
        .filter(|&i| {
            let (y, x) = (i / w, i % w);
            y == 0 || x == 0 || y == h - 1 || x == w - 1
        })
        .collect();
    let mut out = vec![1f32; b * plane];
    for (n, weights) in out.chunks_exact_mut(plane).enumerate() {
        let cell = |ch: usize, i: usize| data[(n * c + ch) * plane + i];
        let background: Vec<f32> = (0..c)
            .map(|ch| {
                let mut v: Vec<f32> = ring.iter().map(|&i| cell(ch, i)).collect();
                v.sort_by(f32::total_cmp);
                v[v.len() / 2]
            })
            .collect();
        let dist: Vec<f32> = (0..plane)
            .map(|i| {
                (0..c)
                    .map(|ch| (cell(ch, i) - background[ch]).powi(2))
                    .sum::<f32>()
                    .sqrt()
            })
            .collect();
        let max = dist.iter().copied().fold(0f32, f32::max);
        if max <= 0.0 {
            continue;
        }
        let object: Vec<bool> = dist.iter().map(|&d| d > 0.5 * max).collect();
        for (i, wt) in weights.iter_mut().enumerate() {
            let (y, x) = ((i / w) as isize, (i % w) as isize);
            let near = (-1..=1).any(|dy| {
                (-1..=1).any(|dx| {
                    let (yy, xx) = (y + dy, x + dx);
                    yy >= 0
                        && xx >= 0
                        && (yy as usize) < h
                        && (xx as usize) < w
                        && object[yy as usize * w + xx as usize]
                })
            });
            if near {
                *wt = alpha as f32;
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, 1, h, w), x0.device())?) // (b, 1, h, w)
}

/// KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), element-wise; log-variances broadcast.
fn normal_kl(mean1: &Tensor, logvar1: &Tensor, mean2: &Tensor, logvar2: &Tensor) -> Result<Tensor> {
    let d = logvar2.broadcast_sub(logvar1)?; // logvar2 - logvar1
    let e = (d.neg()?).exp()?; // exp(logvar1 - logvar2)
    let sq = (mean1 - mean2)?.sqr()?.mul(&logvar2.neg()?.exp()?)?;
    Ok((((d + e)? + sq)? - 1.0)?.affine(0.5, 0.0)?)
}

/// A fast approximation of the standard normal CDF (IDDPM `approx_standard_normal_cdf`).
fn approx_standard_normal_cdf(x: &Tensor) -> Result<Tensor> {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let inner = ((x + (x.powf(3.0)? * 0.044715)?)? * k)?;
    Ok(((inner.tanh()? + 1.0)? * 0.5)?)
}

/// Log-likelihood of `x` (data in [-1, 1], 256 bins) under a discretised Gaussian with
/// `means` and `log_scales`, element-wise (IDDPM `discretized_gaussian_log_likelihood`).
fn discretized_gaussian_log_likelihood(x: &Tensor, means: &Tensor, log_scales: &Tensor) -> Result<Tensor> {
    let centered = (x - means)?;
    let inv_stdv = log_scales.neg()?.exp()?;
    let cdf_plus = approx_standard_normal_cdf(&((&centered + 1.0 / 255.0)? * &inv_stdv)?)?;
    let cdf_min = approx_standard_normal_cdf(&((&centered - 1.0 / 255.0)? * &inv_stdv)?)?;
    let log_cdf_plus = cdf_plus.clamp(1e-12, f64::MAX)?.log()?;
    let log_one_minus_cdf_min = (1.0 - &cdf_min)?.clamp(1e-12, f64::MAX)?.log()?;
    let log_cdf_delta = (&cdf_plus - &cdf_min)?.clamp(1e-12, f64::MAX)?.log()?;
    let low = x.lt(-0.999)?;
    let high = x.gt(0.999)?;
    let mid = high.where_cond(&log_one_minus_cdf_min, &log_cdf_delta)?;
    Ok(low.where_cond(&log_cdf_plus, &mid)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn weightings_parse_and_weigh() {
        assert_eq!("epsilon".parse::<LossWeighting>(), Ok(LossWeighting::Epsilon));
        assert_eq!("min-snr:5".parse::<LossWeighting>(), Ok(LossWeighting::MinSnr(5.0)));
        assert_eq!("inv-snr:50".parse::<LossWeighting>(), Ok(LossWeighting::InvSnr(50.0)));
        for bad in ["inv-snr", "inv-snr:-1", "min-snr:x", "epsilon:3", "v"] {
            assert!(bad.parse::<LossWeighting>().is_err(), "{bad} parsed");
        }
        assert_eq!(LossWeighting::InvSnr(50.0).to_string(), "inv-snr:50");
        // min-snr: 1 at high noise, γ/SNR at low noise.
        assert_eq!(LossWeighting::MinSnr(5.0).weight(0.5), 1.0);
        assert!((LossWeighting::MinSnr(5.0).weight(20.0) - 0.25).abs() < 1e-12);
        // inv-snr: 1 at low noise, 1/SNR in between, γ at high noise.
        assert_eq!(LossWeighting::InvSnr(50.0).weight(3.0), 1.0);
        assert!((LossWeighting::InvSnr(50.0).weight(0.1) - 10.0).abs() < 1e-12);
        assert_eq!(LossWeighting::InvSnr(50.0).weight(1e-4), 50.0);
    }

    #[test]
    fn weighted_loss_is_w_mse_plus_vb() -> Result<()> {
        let dev = Device::Cpu;
        let x0 = Tensor::randn(0f32, 1.0, (3, 2, 4, 4), &dev)?;
        let noise = Tensor::randn(0f32, 1.0, (3, 2, 4, 4), &dev)?;
        let out = Tensor::randn(0f32, 0.5, (3, 4, 4, 4), &dev)?;
        let t = [10usize, 500, 990];
        let plain = GaussianDiffusion::linear(1000)?;
        let x_t = plain.q_sample(&x0, &t, &noise)?;
        let a = plain.training_losses(&out, &x0, &x_t, &noise, &t)?;
        let w = LossWeighting::InvSnr(20.0);
        let b = plain
            .clone()
            .with_weighting(w)
            .training_losses(&out, &x0, &x_t, &noise, &t)?;
        let (mse, vb, loss) = (
            a.mse.to_vec1::<f32>()?,
            a.vb.to_vec1::<f32>()?,
            b.loss.to_vec1::<f32>()?,
        );
        assert_eq!(b.mse.to_vec1::<f32>()?, mse, "the reported mse stays unweighted");
        for (i, &ti) in t.iter().enumerate() {
            let ab = plain.alphas_cumprod[ti];
            let expect = w.weight(ab / (1.0 - ab)) as f32 * mse[i] + vb[i];
            assert!(
                (loss[i] - expect).abs() <= 1e-5 * expect.abs().max(1.0),
                "t={ti}: {} vs {expect}",
                loss[i]
            );
        }
        // t = 990 sits at the cap, t = 10 at weight 1.
        assert!((loss[0] - (mse[0] + vb[0])).abs() < 1e-6);
        assert!((loss[2] - (20.0 * mse[2] + vb[2])).abs() < 1e-4);
        Ok(())
    }

    /// A 10×10 latent, 2 channels: background (0.3, −0.2), a 3×3 object at rows/cols 4..7 of
    /// (1.5, 0.8), one edge cell at a third of the way; returns it as (1, 2, 10, 10).
    fn one_object_latent(dev: &Device) -> Result<Tensor> {
        let mut v = Vec::new();
        for (bg, obj) in [(0.3f32, 1.5f32), (-0.2, 0.8)] {
            for y in 0..10 {
                for x in 0..10 {
                    v.push(match (y, x) {
                        (4..=6, 4..=6) => obj,
                        (5, 7) => bg + (obj - bg) / 3.0,
                        _ => bg,
                    });
                }
            }
        }
        Ok(Tensor::from_vec(v, (1, 2, 10, 10), dev)?) // (b, c, h, w)
    }

    #[test]
    fn object_weights_cover_the_object_grown_by_one_cell() -> Result<()> {
        let dev = Device::Cpu;
        let x0 = one_object_latent(&dev)?;
        let w = object_weights(&x0, 4.0)?;
        assert_eq!(w.dims(), &[1, 1, 10, 10]);
        let w = w.flatten_all()?.to_vec1::<f32>()?;
        for y in 0..10 {
            for x in 0..10 {
                // The 3x3 object (the edge cell is under half the largest distance) grown by one.
                let want = if (3..=7).contains(&y) && (3..=7).contains(&x) {
                    4.0
                } else {
                    1.0
                };
                assert_eq!(w[y * 10 + x], want, "cell ({y}, {x})");
            }
        }
        // A blank latent has no object: weight 1 everywhere. Too small a latent is an error.
        let blank = object_weights(&Tensor::full(0.7f32, (2, 2, 5, 5), &dev)?, 4.0)?;
        assert!(blank.flatten_all()?.to_vec1::<f32>()?.iter().all(|&v| v == 1.0));
        assert!(object_weights(&Tensor::zeros((1, 2, 2, 8), DType::F32, &dev)?, 4.0).is_err());
        Ok(())
    }

    #[test]
    fn object_weighted_loss_is_the_weighted_mean() -> Result<()> {
        let dev = Device::Cpu;
        let x0 = one_object_latent(&dev)?;
        let noise = Tensor::randn(0f32, 1.0, (1, 2, 10, 10), &dev)?;
        let t = [300usize];
        let plain = GaussianDiffusion::linear(1000)?;
        let x_t = plain.q_sample(&x0, &t, &noise)?;
        // The model's ε is right but for an error of 1 on one object cell and 2 on one
        // background cell (channel 0); its variance channels are zero.
        let mut delta = vec![0f32; 2 * 100];
        delta[5 * 10 + 5] = 1.0;
        delta[0] = 2.0;
        let eps = (&noise + Tensor::from_vec(delta, (1, 2, 10, 10), &dev)?)?;
        let out = Tensor::cat(&[&eps, &Tensor::zeros((1, 2, 10, 10), DType::F32, &dev)?], 1)?;
        let a = plain.training_losses(&out, &x0, &x_t, &noise, &t)?;
        let b = plain
            .clone()
            .with_object_weight(Some(4.0))
            .training_losses(&out, &x0, &x_t, &noise, &t)?;
        let (mse, vb) = (a.mse.to_vec1::<f32>()?[0], a.vb.to_vec1::<f32>()?[0]);
        assert!((mse - 5.0 / 200.0).abs() < 1e-6, "{mse}");
        assert_eq!(b.mse.to_vec1::<f32>()?[0], mse, "the reported mse stays unweighted");
        // 25 object cells at weight 4, 75 background cells at 1, 2 channels.
        let want = (4.0 * 1.0 + 1.0 * 4.0) / (2.0 * (25.0 * 4.0 + 75.0));
        let got = b.loss.to_vec1::<f32>()?[0] - vb;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // Weight 1 is the plain mean.
        let c = plain
            .with_object_weight(Some(1.0))
            .training_losses(&out, &x0, &x_t, &noise, &t)?;
        assert_eq!(c.loss.to_vec1::<f32>()?, a.loss.to_vec1::<f32>()?);
        Ok(())
    }
}
