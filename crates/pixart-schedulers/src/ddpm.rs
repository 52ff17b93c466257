//! Ancestral DDPM sampling: diffusers' `DDPMScheduler` (diffusers 0.42.1,
//! `schedulers/scheduling_ddpm.py`: `set_timesteps`, `_get_variance`, `step`,
//! `previous_timestep`), and the original PixArt repository's IDDPM sampler built on it.
//!
//! Each step takes the posterior mean of q(x_{t'} | x_t, x̂0) to the previous timestep t' of the
//! run and, except at t = 0, adds `σ · noise` with the noise passed in. σ² is the posterior
//! variance (`fixed_small`), β of the (respaced) step (`fixed_large`), or — for a model trained
//! with learned sigma, like every PixArt transformer — interpolated in log space between the two
//! by the model's extra output channels (`learned_range`, Nichol & Dhariwal 2021).
//!
//! **IDDPM** ([`DdpmConfig::iddpm`], the CLI's `iddpm`) is what PixArt's own
//! `scripts/inference.py --sampling_algo iddpm` runs (PixArt-alpha/PixArt-sigma@1ce521a:
//! `diffusion/iddpm.py`, `diffusion/model/respace.py`, `diffusion/model/gaussian_diffusion.py`
//! `p_sample` with `clip_denoised=False`): the training schedule respaced to n steps by
//! `space_timesteps(T, "n")`, learned-range variance, no clipping. A respaced β is
//! 1 − ᾱ_t / ᾱ_t' over the kept timesteps, which is exactly diffusers' `current_beta_t` with
//! custom timesteps, so the same step serves both (tools/golden/gen_schedulers.py checks the
//! diffusers trajectory against an f64 transcription of the original equations).
use candle_core::Tensor;
use pixart_core::{Error, Result};

use crate::config::{PredictionType, SchedulerClass, SchedulerConfig, TimestepSpacing};
use crate::ddim::add_noise_vp;
use crate::dpm_solver_pp::{beta_config, unsupported_common};
use crate::schedule::{self, BetaConfig};
use crate::{at, div_s, f32, mul_s, predict_x0, same_shape, Scheduler, StepCounter};

/// `variance_type`: the σ² of each step's added noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarianceType {
    /// The posterior variance β̃ = (1 − ᾱ_t')/(1 − ᾱ_t)·β (diffusers' default).
    FixedSmall,
    /// β̃ as well, computed as exp(½ log β̃) (diffusers' `fixed_small_log`).
    FixedSmallLog,
    /// β of the step.
    FixedLarge,
    /// The model's extra channels are σ² itself.
    Learned,
    /// The model's extra channels v ∈ [−1, 1] give log σ² = ½(v+1) log β + ½(1−v) log β̃.
    LearnedRange,
}

impl VarianceType {
    /// Parses diffusers' `variance_type` string.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "fixed_small" => Self::FixedSmall,
            "fixed_small_log" => Self::FixedSmallLog,
            "fixed_large" => Self::FixedLarge,
            "learned" => Self::Learned,
            "learned_range" => Self::LearnedRange,
            // diffusers takes √(log β) there, which is NaN for every β < 1.
            "fixed_large_log" => {
                return Err(Error::InvalidInput(
                    "DDPM: variance_type \"fixed_large_log\" is not supported (diffusers' DDPMScheduler turns it into NaN)"
                        .into(),
                ))
            }
            other => {
                return Err(Error::InvalidInput(format!(
                    "DDPM: unknown variance_type {other:?}; expected fixed_small, fixed_small_log, fixed_large, learned or learned_range"
                )))
            }
        })
    }

    /// Whether the model's output carries the variance in extra channels.
    pub fn is_learned(self) -> bool {
        matches!(self, Self::Learned | Self::LearnedRange)
    }
}

/// Where the n inference timesteps sit in the training schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdpmSpacing {
    /// diffusers' `timestep_spacing` (with `steps_offset` for leading).
    Diffusers(TimestepSpacing),
    /// IDDPM's `space_timesteps(T, "n")`: `round(i · (T−1)/(n−1))` for i < n, the fractional
    /// stride accumulated by addition and rounded half to even as Python's `round`.
    Respaced,
}

/// `DDPMScheduler`'s options.
#[derive(Debug, Clone, PartialEq)]
pub struct DdpmConfig {
    pub betas: BetaConfig,
    pub prediction_type: PredictionType,
    pub variance_type: VarianceType,
    /// Clamp x̂0 to ±`clip_sample_range`. diffusers' class default is true; as for DDIM it is
    /// only on by default when the file itself is a `DDPMScheduler` file.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub steps_offset: i64,
    pub spacing: DdpmSpacing,
}

impl Default for DdpmConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::default(),
            prediction_type: PredictionType::Epsilon,
            variance_type: VarianceType::FixedSmall,
            clip_sample: false,
            clip_sample_range: 1.0,
            steps_offset: 0,
            spacing: DdpmSpacing::Diffusers(TimestepSpacing::Leading),
        }
    }
}

impl DdpmConfig {
    /// Resolves a config file (missing keys: `DDPMScheduler` class defaults; `clip_sample` and
    /// `variance_type` are read only from a `DDPMScheduler` file: another class's file, such as
    /// PixArt's DPM-Solver++ one, gives no clipping and `fixed_small`).
    pub fn from_scheduler_config(cfg: &SchedulerConfig) -> Result<Self> {
        cfg.validate()?;
        let own_file = cfg.class() == Some(SchedulerClass::Ddpm);
        let mut rest = cfg.clone();
        rest.variance_type = None;
        unsupported_common(&rest, "DDPM")?;
        let d = Self::default();
        let variance_type = match cfg.variance_type.as_deref() {
            Some(v) if own_file => VarianceType::parse(v)?,
            _ => d.variance_type,
        };
        Ok(Self {
            betas: beta_config(cfg),
            prediction_type: cfg.prediction_type.unwrap_or(d.prediction_type),
            variance_type,
            clip_sample: cfg.clip_sample.unwrap_or(own_file),
            clip_sample_range: cfg.clip_sample_range.unwrap_or(d.clip_sample_range),
            steps_offset: cfg.steps_offset.unwrap_or(d.steps_offset),
            spacing: DdpmSpacing::Diffusers(cfg.timestep_spacing.unwrap_or(TimestepSpacing::Leading)),
        })
    }

    /// PixArt's IDDPM sampler on the training schedule (and prediction type) of `cfg`:
    /// respaced timesteps, learned-range variance, no clipping.
    pub fn iddpm(cfg: &SchedulerConfig) -> Result<Self> {
        let mut rest = cfg.clone();
        rest.variance_type = None;
        rest.validate()?;
        unsupported_common(&rest, "IDDPM")?;
        Ok(Self {
            betas: beta_config(cfg),
            prediction_type: cfg.prediction_type.unwrap_or(PredictionType::Epsilon),
            variance_type: VarianceType::LearnedRange,
            clip_sample: false,
            clip_sample_range: 1.0,
            steps_offset: 0,
            spacing: DdpmSpacing::Respaced,
        })
    }
}

/// IDDPM's `space_timesteps(num_timesteps, str(n))` (one section), descending.
pub fn respaced_timesteps(num_timesteps: usize, n: usize) -> Vec<f64> {
    let stride = if n <= 1 {
        1.0
    } else {
        (num_timesteps - 1) as f64 / (n - 1) as f64
    };
    let mut cur = 0.0f64;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(cur.round_ties_even());
        cur += stride;
    }
    v.dedup();
    v.reverse();
    v
}

/// DDPM / IDDPM sampler (see the module docs).
#[derive(Debug, Clone)]
pub struct Ddpm {
    config: DdpmConfig,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    counter: StepCounter,
}

impl Ddpm {
    /// Builds the sampler (call [`Scheduler::set_timesteps`] next).
    pub fn new(config: DdpmConfig) -> Result<Self> {
        if !(config.clip_sample_range.is_finite() && config.clip_sample_range > 0.0) {
            return Err(Error::InvalidInput(format!(
                "DDPM: clip_sample_range must be > 0, got {}",
                config.clip_sample_range
            )));
        }
        let alphas_cumprod = config.betas.alphas_cumprod()?;
        Ok(Self {
            config,
            alphas_cumprod,
            timesteps: Vec::new(),
            counter: StepCounter::default(),
        })
    }

    /// The resolved options.
    pub fn config(&self) -> &DdpmConfig {
        &self.config
    }

    fn alpha_prod(&self, t: i64) -> Result<f32> {
        if t >= 0 {
            at(&self.alphas_cumprod, t as usize, "timestep")
        } else {
            Ok(1.0)
        }
    }
}

impl Scheduler for Ddpm {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let cfg = &self.config;
        let train = cfg.betas.num_train_timesteps;
        schedule::check_steps(n, train)?;
        self.timesteps = match cfg.spacing {
            DdpmSpacing::Diffusers(spacing) => schedule::single_step_timesteps(spacing, n, train, cfg.steps_offset),
            DdpmSpacing::Respaced => respaced_timesteps(train, n),
        };
        if let Some(t) = self.timesteps.iter().find(|&&t| t < 0.0 || t >= train as f64) {
            return Err(Error::InvalidInput(format!(
                "DDPM: timestep {t} (steps_offset {}) is outside the training schedule",
                cfg.steps_offset
            )));
        }
        self.counter.reset();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let n = self.timesteps.len();
        self.counter.begin(step_index, n)?;
        let cfg = &self.config;
        let c = sample.dim(1)?;
        // A learned variance travels in channels C..2C of the model output: (b, 2c, h, w).
        let (mo, predicted_variance) = if cfg.variance_type.is_learned() {
            if model_output.dim(1)? != 2 * c {
                return Err(Error::Shape(format!(
                    "DDPM with a learned variance needs the model's variance channels: model_output has {} channels, the sample {c} (expected {})",
                    model_output.dim(1)?,
                    2 * c
                )));
            }
            (model_output.narrow(1, 0, c)?, Some(model_output.narrow(1, c, c)?))
        } else {
            (model_output.clone(), None)
        };
        same_shape("model_output", sample, &mo)?;
        let t = at(&self.timesteps, step_index, "timestep")? as i64;
        let prev_t = match self.timesteps.get(step_index + 1) {
            Some(&p) => p as i64,
            None => -1,
        };
        let alpha_prod_t = self.alpha_prod(t)?;
        let alpha_prod_t_prev = self.alpha_prod(prev_t)?;
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
        let current_beta_t = 1.0 - current_alpha_t;

        let out_dtype = model_output.dtype();
        let (mo, sample) = (f32(&mo)?, f32(sample)?);
        let clip = cfg.clip_sample.then_some(cfg.clip_sample_range);
        let x0 = predict_x0(cfg.prediction_type, &mo, &sample, alpha_prod_t, clip, "DDPM")?;
        let x0_coeff = (alpha_prod_t_prev.sqrt() * current_beta_t) / beta_prod_t;
        let sample_coeff = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t;
        let mut prev = (mul_s(&x0, x0_coeff)? + mul_s(&sample, sample_coeff)?)?;
        if t > 0 {
            let noise = noise.ok_or_else(|| Error::InvalidInput("DDPM needs noise at every step".into()))?;
            same_shape("noise", &sample, noise)?;
            let noise = f32(noise)?;
            // β̃, clamped as diffusers does before taking its log.
            let variance = (beta_prod_t_prev / beta_prod_t * current_beta_t).max(1e-20);
            let scaled = match (cfg.variance_type, &predicted_variance) {
                (VarianceType::FixedSmall, _) => mul_s(&noise, variance.sqrt())?,
                (VarianceType::FixedSmallLog, _) => mul_s(&noise, (0.5 * variance.ln()).exp())?,
                (VarianceType::FixedLarge, _) => mul_s(&noise, current_beta_t.sqrt())?,
                (VarianceType::Learned, Some(v)) => (f32(v)?.sqrt()? * noise)?,
                (VarianceType::LearnedRange, Some(v)) => {
                    let (min_log, max_log) = (variance.ln(), current_beta_t.ln());
                    let frac = div_s(&(f32(v)? + 1.0)?, 2.0)?;
                    // frac·log β + (1 − frac)·log β̃, then σ = exp(½ log σ²).
                    let log_var = (mul_s(&frac, max_log)? + mul_s(&frac.affine(-1.0, 1.0)?, min_log)?)?;
                    (mul_s(&log_var, 0.5)?.exp()? * noise)?
                }
                (VarianceType::Learned | VarianceType::LearnedRange, None) => {
                    return Err(Error::InvalidInput("DDPM: the learned variance is missing".into()))
                }
            };
            prev = (prev + scaled)?;
        }
        self.counter.finish(step_index);
        Ok(prev.to_dtype(out_dtype)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        add_noise_vp(&self.alphas_cumprod, &self.timesteps, original, noise, step_index)
    }

    fn needs_noise(&self) -> bool {
        true
    }

    fn model_variance(&self) -> bool {
        self.config.variance_type.is_learned()
    }

    fn num_train_timesteps(&self) -> usize {
        self.config.betas.num_train_timesteps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respacing_matches_space_timesteps() {
        // space_timesteps(1000, "100"): round(k · 999/99) accumulated, 0 and 999 included.
        let t = respaced_timesteps(1000, 100);
        assert_eq!(t.len(), 100);
        assert_eq!((t[0], t[1], t[98], t[99]), (999.0, 989.0, 10.0, 0.0));
        assert_eq!(respaced_timesteps(1000, 1), vec![0.0]);
        assert_eq!(
            respaced_timesteps(10, 10),
            (0..10).rev().map(f64::from).collect::<Vec<_>>()
        );
        // 4 of 7: stride 2 exactly.
        assert_eq!(respaced_timesteps(7, 4), vec![6.0, 4.0, 2.0, 0.0]);
    }

    #[test]
    fn variance_types_parse_or_explain() {
        assert_eq!(
            VarianceType::parse("learned_range").unwrap(),
            VarianceType::LearnedRange
        );
        let e = VarianceType::parse("fixed_large_log").unwrap_err().to_string();
        assert!(e.contains("NaN"), "{e}");
        let e = VarianceType::parse("wide").unwrap_err().to_string();
        assert!(e.contains("\"wide\"") && e.contains("learned_range"), "{e}");
    }
}
