//! Noise schedules shared by the samplers: betas, ᾱ, timestep spacing, sigma conversions.
//!
//! Each function reproduces the arithmetic (and float width) of diffusers 0.42.1 / torch 2.15 /
//! numpy 2.4 so that timesteps come out identical and sigmas bit-for-bit or within an ulp.
use pixart_core::{Error, Result};

use crate::config::{BetaSchedule, TimestepSpacing};

/// The training noise schedule: the keys every scheduler class shares.
#[derive(Debug, Clone, PartialEq)]
pub struct BetaConfig {
    /// `num_train_timesteps` (diffusers default 1000).
    pub num_train_timesteps: usize,
    /// `beta_start` (default 0.0001).
    pub beta_start: f64,
    /// `beta_end` (default 0.02).
    pub beta_end: f64,
    /// `beta_schedule` (default linear).
    pub beta_schedule: BetaSchedule,
    /// `trained_betas`: overrides the schedule when present.
    pub trained_betas: Option<Vec<f64>>,
}

impl Default for BetaConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
        }
    }
}

impl BetaConfig {
    /// The f32 betas diffusers builds in `__init__` (`torch.linspace(..., dtype=float32)`,
    /// or `betas_for_alpha_bar` in f64 cast to f32). Errors unless every beta is in [0, 1).
    pub fn betas(&self) -> Result<Vec<f32>> {
        let n = self.num_train_timesteps;
        if n == 0 {
            return Err(Error::InvalidInput("num_train_timesteps must be at least 1".into()));
        }
        let betas = match &self.trained_betas {
            Some(b) => {
                if b.len() != n {
                    return Err(Error::InvalidInput(format!(
                        "trained_betas has {} values but num_train_timesteps is {n}",
                        b.len()
                    )));
                }
                b.iter().map(|&x| x as f32).collect()
            }
            None => match self.beta_schedule {
                BetaSchedule::Linear => torch_linspace_f32(self.beta_start, self.beta_end, n),
                BetaSchedule::ScaledLinear => torch_linspace_f32(self.beta_start.sqrt(), self.beta_end.sqrt(), n)
                    .into_iter()
                    .map(|x| x * x)
                    .collect(),
                BetaSchedule::SquaredcosCapV2 => betas_for_alpha_bar(n, 0.999),
            },
        };
        if let Some((i, b)) = betas.iter().enumerate().find(|(_, b)| !(0.0..1.0).contains(*b)) {
            return Err(Error::InvalidInput(format!(
                "beta {i} is {b}; every beta must be in [0, 1)"
            )));
        }
        Ok(betas)
    }

    /// ᾱ_t = Π(1 − β) as f32, like `torch.cumprod` on CPU (which accumulates in f64).
    pub fn alphas_cumprod(&self) -> Result<Vec<f32>> {
        let mut acc = 1f64;
        Ok(self
            .betas()?
            .into_iter()
            .map(|b| {
                acc *= (1f32 - b) as f64;
                acc as f32
            })
            .collect())
    }
}

/// `torch.linspace(start, end, steps, dtype=float32)` on CPU: f32 step, each value one fused
/// multiply-add from the nearer end (torch's vectorised kernel is compiled with FMA).
pub(crate) fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if steps == 1 {
        return vec![s];
    }
    let step = (e - s) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, s)
            } else {
                (-step).mul_add((steps - i - 1) as f32, e)
            }
        })
        .collect()
}

/// The cosine schedule of Nichol & Dhariwal (`betas_for_alpha_bar`, alpha_transform_type
/// "cosine", diffusers 0.42.1 `scheduling_ddim.py`), in f64 with the divisions in floating
/// point (candle's version divides integers and returns zeros), cast to f32 like diffusers.
pub fn betas_for_alpha_bar(num_diffusion_timesteps: usize, max_beta: f64) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
        c * c
    };
    let n = num_diffusion_timesteps as f64;
    (0..num_diffusion_timesteps)
        .map(|i| {
            let t1 = i as f64 / n;
            let t2 = (i + 1) as f64 / n;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta) as f32
        })
        .collect()
}

/// `np.linspace(start, stop, num)` in f64: `i * step + start`, the last value exactly `stop`.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    (0..num)
        .map(|i| if i + 1 == num { stop } else { i as f64 * step + start })
        .collect()
}

/// `np.arange(start, stop, step)` for floats: length `ceil((stop − start) / step)`, values
/// `start + i·((start + step) − start)` like numpy's fill.
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// Checks a requested number of inference steps against the training schedule.
pub(crate) fn check_steps(n: usize, num_train_timesteps: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidInput(
            "the number of sampling steps must be at least 1".into(),
        ));
    }
    if n > num_train_timesteps {
        return Err(Error::InvalidInput(format!(
            "{n} sampling steps exceed the {num_train_timesteps} training timesteps"
        )));
    }
    Ok(())
}

/// Integer timesteps of the multistep solvers (`DPMSolverMultistepScheduler.set_timesteps`,
/// identical in `SASolverScheduler`), `last_timestep` after `lambda_min_clipped`.
pub(crate) fn multistep_timesteps(
    spacing: TimestepSpacing,
    n: usize,
    num_train_timesteps: usize,
    last_timestep: usize,
    steps_offset: i64,
) -> Vec<f64> {
    let mut ts: Vec<f64> = match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> = np_linspace(0.0, last_timestep as f64 - 1.0, n + 1)
                .into_iter()
                .map(f64::round_ties_even)
                .collect();
            v.reverse();
            v.pop();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = (last_timestep / (n + 1)) as f64;
            let mut v: Vec<f64> = (0..=n).map(|i| i as f64 * ratio + steps_offset as f64).collect();
            v.reverse();
            v.pop();
            v
        }
        TimestepSpacing::Trailing => {
            let ratio = num_train_timesteps as f64 / n as f64;
            np_arange(last_timestep as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| t.round_ties_even() - 1.0)
                .collect()
        }
    };
    // `.astype(np.int64)`: truncation (values are integral already).
    ts.iter_mut().for_each(|t| *t = t.trunc());
    ts
}

/// Timesteps of DDIM (`np.linspace(0, T-1, n)`, `arange(n)·(T//n) + offset`, or trailing).
pub(crate) fn single_step_timesteps(
    spacing: TimestepSpacing,
    n: usize,
    num_train_timesteps: usize,
    steps_offset: i64,
) -> Vec<f64> {
    let t = num_train_timesteps;
    let mut v: Vec<f64> = match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, n)
            .into_iter()
            .map(f64::round_ties_even)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t / n;
            (0..n).map(|i| (i * ratio) as f64 + steps_offset as f64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t as f64 / n as f64;
            let mut a: Vec<f64> = np_arange(t as f64, 0.0, -ratio)
                .into_iter()
                .map(|x| x.round_ties_even() - 1.0)
                .collect();
            a.reverse();
            a
        }
    };
    v.reverse();
    v
}

/// σ_t = √((1 − ᾱ)/ᾱ) for every training timestep, in f32 (torch ops on the f32 ᾱ).
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
}

/// `np.interp(x, arange(len(fp)), fp)` in f64.
pub(crate) fn interp(x: f64, fp: &[f32]) -> f64 {
    let Some(&last) = fp.last() else { return f64::NAN };
    if x <= 0.0 {
        return fp.first().map_or(f64::NAN, |&v| v as f64);
    }
    if x >= (fp.len() - 1) as f64 {
        return last as f64;
    }
    let j = x.floor() as usize;
    let (lo, hi) = match (fp.get(j), fp.get(j + 1)) {
        (Some(&lo), Some(&hi)) => (lo as f64, hi as f64),
        _ => return last as f64,
    };
    if x == j as f64 {
        return lo;
    }
    let slope = hi - lo;
    slope * (x - j as f64) + lo
}

/// Karras et al. (2022) sigmas, ρ = 7, from σ_max down to σ_min (`_convert_to_karras`).
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// The fractional training timestep of a sigma (`_sigma_to_t`): linear interpolation in
/// log σ between neighbouring training sigmas. `log_sigmas` is f32 like numpy's `np.log` of
/// the f32 array.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    if n < 2 {
        return 0.0;
    }
    // argmax of cumsum(dists >= 0): the last index whose log σ is <= log_sigma (0 if none).
    let mut count = 0usize;
    let mut low_idx = 0usize;
    let mut best = 0usize;
    for (i, &ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls as f64 >= 0.0 {
            count += 1;
            if count > best {
                best = count;
                low_idx = i;
            }
        }
    }
    let low_idx = low_idx.min(n - 2);
    let high_idx = low_idx + 1;
    let (low, high) = match (log_sigmas.get(low_idx), log_sigmas.get(high_idx)) {
        (Some(&l), Some(&h)) => (l, h),
        _ => return 0.0,
    };
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// (α_t, σ_t) of a sigma in the VP parametrisation, in f32 as diffusers computes them:
/// α = 1/√(σ² + 1), σ_t = σ·α.
pub(crate) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// λ = log α − log σ_t of a sigma, in f32.
pub(crate) fn lambda(sigma: f32) -> f32 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
}

/// `last_timestep` after `lambda_min_clipped`: T − searchsorted(flip(λ), clip).
pub(crate) fn last_timestep(alphas_cumprod: &[f32], lambda_min_clipped: f64) -> usize {
    let t = alphas_cumprod.len();
    let clipped = alphas_cumprod
        .iter()
        .rev()
        .filter(|&&a| {
            let lam = a.sqrt().ln() - (1.0 - a).sqrt().ln();
            (lam as f64) < lambda_min_clipped
        })
        .count();
    t - clipped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixart_timesteps() {
        let t20 = multistep_timesteps(TimestepSpacing::Linspace, 20, 1000, 1000, 0);
        let want: Vec<f64> = vec![
            999., 949., 899., 849., 799., 749., 699., 649., 599., 549., 500., 450., 400., 350., 300., 250., 200., 150.,
            100., 50.,
        ];
        assert_eq!(t20, want);
        let t14 = multistep_timesteps(TimestepSpacing::Linspace, 14, 1000, 1000, 0);
        let want: Vec<f64> = vec![
            999., 928., 856., 785., 714., 642., 571., 500., 428., 357., 285., 214., 143., 71.,
        ];
        assert_eq!(t14, want);
    }

    #[test]
    fn cosine_betas_are_not_zero() {
        let b = betas_for_alpha_bar(10, 0.999);
        assert!(b.iter().all(|&x| x > 0.0), "{b:?}");
        assert!(
            (b[0] as f64
                - (1.0
                    - (0.108_f64 / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2)
                        / (0.008_f64 / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2)))
            .abs()
                < 1e-7
        );
        assert_eq!(b[9], 0.999);
    }
}
