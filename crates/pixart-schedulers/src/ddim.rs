//! DDIM (Song et al. 2020), as diffusers' `DDIMScheduler` (diffusers 0.42.1,
//! `schedulers/scheduling_ddim.py`: `set_timesteps`, `_get_variance`, `step`, `add_noise`).
//!
//! η = 0 is deterministic; η > 0 adds `std_dev_t · noise` with the noise passed in.
use candle_core::Tensor;
use pixart_core::{Error, Result};

use crate::config::{PredictionType, SchedulerClass, SchedulerConfig, TimestepSpacing};
use crate::dpm_solver_pp::{beta_config, unsupported_common};
use crate::schedule::{self, BetaConfig};
use crate::{at, div_s, f32, mul_s, same_shape, Scheduler, StepCounter};

/// `DDIMScheduler`'s options.
#[derive(Debug, Clone, PartialEq)]
pub struct DdimConfig {
    pub betas: BetaConfig,
    pub prediction_type: PredictionType,
    /// Clamp x̂0 to ±`clip_sample_range`. diffusers' class default is true; [`Self::default`]
    /// and a DDIM built from another class's file (the CLI's `--sampler ddim` on PixArt's
    /// DPM-Solver++ file) leave it off, as latent diffusion needs.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// ᾱ after the last step: 1 (true, default) or ᾱ_0.
    pub set_alpha_to_one: bool,
    pub steps_offset: i64,
    /// Default leading (diffusers' DDIM class default).
    pub timestep_spacing: TimestepSpacing,
    /// η: 0 (default) deterministic DDIM, 1 DDPM-like.
    pub eta: f64,
}

impl Default for DdimConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::default(),
            prediction_type: PredictionType::Epsilon,
            clip_sample: false,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            timestep_spacing: TimestepSpacing::Leading,
            eta: 0.0,
        }
    }
}

impl DdimConfig {
    /// Resolves a config file (missing keys: DDIM class defaults; `clip_sample` defaults to true
    /// only when the file itself is a `DDIMScheduler` file, as diffusers would have it).
    pub fn from_scheduler_config(cfg: &SchedulerConfig) -> Result<Self> {
        cfg.validate()?;
        unsupported_common(cfg, "DDIM")?;
        let d = Self::default();
        let own_file = cfg.class() == Some(SchedulerClass::Ddim);
        Ok(Self {
            betas: beta_config(cfg),
            prediction_type: cfg.prediction_type.unwrap_or(d.prediction_type),
            clip_sample: cfg.clip_sample.unwrap_or(own_file),
            clip_sample_range: cfg.clip_sample_range.unwrap_or(d.clip_sample_range),
            set_alpha_to_one: cfg.set_alpha_to_one.unwrap_or(d.set_alpha_to_one),
            steps_offset: cfg.steps_offset.unwrap_or(d.steps_offset),
            timestep_spacing: cfg.timestep_spacing.unwrap_or(d.timestep_spacing),
            eta: d.eta,
        })
    }
}

/// DDIM sampler (see the module docs).
#[derive(Debug, Clone)]
pub struct Ddim {
    config: DdimConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    counter: StepCounter,
}

impl Ddim {
    /// Builds the sampler (call [`Scheduler::set_timesteps`] next).
    pub fn new(config: DdimConfig) -> Result<Self> {
        if !config.eta.is_finite() || config.eta < 0.0 {
            return Err(Error::InvalidInput(format!(
                "DDIM: eta must be >= 0, got {}",
                config.eta
            )));
        }
        let alphas_cumprod = config.betas.alphas_cumprod()?;
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            at(&alphas_cumprod, 0, "alphas_cumprod")?
        };
        Ok(Self {
            config,
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps: Vec::new(),
            counter: StepCounter::default(),
        })
    }

    /// Sets η (0: deterministic).
    pub fn set_eta(&mut self, eta: f64) -> Result<()> {
        if !eta.is_finite() || eta < 0.0 {
            return Err(Error::InvalidInput(format!("DDIM: eta must be >= 0, got {eta}")));
        }
        self.config.eta = eta;
        Ok(())
    }

    /// The resolved options.
    pub fn config(&self) -> &DdimConfig {
        &self.config
    }

    fn alpha_prod(&self, t: i64) -> Result<f32> {
        if t >= 0 {
            at(&self.alphas_cumprod, t as usize, "timestep")
        } else {
            Ok(self.final_alpha_cumprod)
        }
    }
}

impl Scheduler for Ddim {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let cfg = &self.config;
        schedule::check_steps(n, cfg.betas.num_train_timesteps)?;
        self.timesteps =
            schedule::single_step_timesteps(cfg.timestep_spacing, n, cfg.betas.num_train_timesteps, cfg.steps_offset);
        if let Some(t) = self
            .timesteps
            .iter()
            .find(|&&t| t < 0.0 || t >= cfg.betas.num_train_timesteps as f64)
        {
            return Err(Error::InvalidInput(format!(
                "DDIM: timestep {t} (steps_offset {}) is outside the training schedule",
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
        same_shape("model_output", sample, model_output)?;
        let cfg = &self.config;
        let t = at(&self.timesteps, step_index, "timestep")? as i64;
        let prev_t = t - (cfg.betas.num_train_timesteps / n) as i64;
        let alpha_prod_t = self.alpha_prod(t)?;
        let alpha_prod_t_prev = self.alpha_prod(prev_t)?;
        let beta_prod_t = 1.0 - alpha_prod_t;

        let out_dtype = model_output.dtype();
        let (mo, sample) = (f32(model_output)?, f32(sample)?);
        let (sa, sb) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());
        let (mut x0, eps) = match cfg.prediction_type {
            PredictionType::Epsilon => (div_s(&(&sample - mul_s(&mo, sb)?)?, sa)?, mo.clone()),
            PredictionType::Sample => (mo.clone(), div_s(&(&sample - mul_s(&mo, sa)?)?, sb)?),
            PredictionType::VPrediction => (
                (mul_s(&sample, sa)? - mul_s(&mo, sb)?)?,
                (mul_s(&mo, sa)? + mul_s(&sample, sb)?)?,
            ),
            PredictionType::FlowPrediction => {
                return Err(Error::InvalidInput("DDIM: flow_prediction is not supported".into()))
            }
        };
        if cfg.clip_sample {
            let r = cfg.clip_sample_range as f32;
            x0 = x0.clamp(-r, r)?;
        }
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = cfg.eta as f32 * variance.sqrt();
        let direction = mul_s(&eps, (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt())?;
        let mut prev = (mul_s(&x0, alpha_prod_t_prev.sqrt())? + direction)?;
        if cfg.eta > 0.0 {
            let noise =
                noise.ok_or_else(|| Error::InvalidInput("DDIM with eta > 0 needs noise at every step".into()))?;
            same_shape("noise", &sample, noise)?;
            prev = (prev + mul_s(&f32(noise)?, std_dev_t)?)?;
        }
        self.counter.finish(step_index);
        Ok(prev.to_dtype(out_dtype)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        add_noise_vp(&self.alphas_cumprod, &self.timesteps, original, noise, step_index)
    }

    fn needs_noise(&self) -> bool {
        self.config.eta > 0.0
    }

    fn num_train_timesteps(&self) -> usize {
        self.config.betas.num_train_timesteps
    }
}

/// √ᾱ_t·x0 + √(1 − ᾱ_t)·noise at the training timestep of step `step_index` (the `add_noise`
/// of DDIM, DDPM, LCM and SA-Solver).
pub(crate) fn add_noise_vp(
    alphas_cumprod: &[f32],
    timesteps: &[f64],
    original: &Tensor,
    noise: &Tensor,
    step_index: usize,
) -> Result<Tensor> {
    same_shape("noise", original, noise)?;
    let t = at(timesteps, step_index, "timestep")? as usize;
    let a = at(alphas_cumprod, t, "timestep")?;
    let dtype = original.dtype();
    let x = (mul_s(&f32(original)?, a.sqrt())? + mul_s(&f32(noise)?, (1.0 - a).sqrt())?)?;
    Ok(x.to_dtype(dtype)?)
}
