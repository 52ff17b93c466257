//! Latent Consistency Model sampling, as diffusers' `LCMScheduler` (diffusers 0.42.1,
//! `schedulers/scheduling_lcm.py`: `set_timesteps`, `get_scalings_for_boundary_condition_discrete`,
//! `step`, `add_noise`): the sampler of consistency-distilled models such as
//! PixArt-alpha/PixArt-LCM-XL-2-1024-MS (4 steps, no classifier-free guidance).
//!
//! The timesteps are a subset of the distillation schedule `k·i − 1` (i = 1..=original steps,
//! k = T / original steps). Each step maps the model's x̂0 through the consistency boundary
//! condition, `c_out·x̂0 + c_skip·x`, and, except at the last step, noises it again to the next
//! timestep with the noise passed in.
use candle_core::Tensor;
use pixart_core::{Error, Result};

use crate::config::{PredictionType, SchedulerClass, SchedulerConfig};
use crate::ddim::add_noise_vp;
use crate::dpm_solver_pp::{beta_config, unsupported_common};
use crate::schedule::{self, BetaConfig};
use crate::{at, f32, mul_s, predict_x0, same_shape, Scheduler, StepCounter};

/// `LCMScheduler`'s options.
#[derive(Debug, Clone, PartialEq)]
pub struct LcmConfig {
    pub betas: BetaConfig,
    pub prediction_type: PredictionType,
    /// The length of the distillation schedule the timesteps are taken from (default 50).
    pub original_inference_steps: usize,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// Scales the timestep in the boundary condition (default 10).
    pub timestep_scaling: f64,
}

impl LcmConfig {
    /// Resolves a config file. Missing keys take the `LCMScheduler` class defaults; the betas
    /// of a file of another class are that file's (PixArt's linear 1e-4..0.02), those of an
    /// `LCMScheduler` file without them diffusers' scaled-linear 0.00085..0.012.
    pub fn from_scheduler_config(cfg: &SchedulerConfig) -> Result<Self> {
        cfg.validate()?;
        unsupported_common(cfg, "LCM")?;
        let mut betas = beta_config(cfg);
        if cfg.class() == Some(SchedulerClass::Lcm) {
            // The class's own defaults where its file is silent.
            if cfg.beta_schedule.is_none() {
                betas.beta_schedule = crate::BetaSchedule::ScaledLinear;
            }
            if cfg.beta_start.is_none() {
                betas.beta_start = 0.00085;
            }
            if cfg.beta_end.is_none() {
                betas.beta_end = 0.012;
            }
        }
        let scaling = cfg.timestep_scaling.unwrap_or(10.0);
        if scaling <= 0.0 {
            return Err(Error::InvalidInput(format!(
                "LCM: timestep_scaling must be > 0, got {scaling}"
            )));
        }
        let original = cfg.original_inference_steps.unwrap_or(50);
        if original == 0 || original > betas.num_train_timesteps {
            return Err(Error::InvalidInput(format!(
                "LCM: original_inference_steps {original} must be between 1 and the {} training timesteps",
                betas.num_train_timesteps
            )));
        }
        Ok(Self {
            betas,
            prediction_type: cfg.prediction_type.unwrap_or(PredictionType::Epsilon),
            original_inference_steps: original,
            clip_sample: cfg.clip_sample.unwrap_or(false),
            clip_sample_range: cfg.clip_sample_range.unwrap_or(1.0),
            timestep_scaling: scaling,
        })
    }
}

/// LCM sampler (see the module docs).
#[derive(Debug, Clone)]
pub struct Lcm {
    config: LcmConfig,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    counter: StepCounter,
}

impl Lcm {
    /// Builds the sampler (call [`Scheduler::set_timesteps`] next).
    pub fn new(config: LcmConfig) -> Result<Self> {
        let alphas_cumprod = config.betas.alphas_cumprod()?;
        Ok(Self {
            config,
            alphas_cumprod,
            timesteps: Vec::new(),
            counter: StepCounter::default(),
        })
    }

    /// The resolved options.
    pub fn config(&self) -> &LcmConfig {
        &self.config
    }
}

/// `np.floor(np.linspace(0, len, n, endpoint=False))` picks of the reversed distillation
/// schedule `k·i − 1`, i = 1..=`original` (k = `train / original`).
fn lcm_timesteps(train: usize, original: usize, n: usize) -> Vec<f64> {
    let k = train / original;
    let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
    let step = origin.len() as f64 / n as f64;
    (0..n)
        .map(|i| origin[((i as f64 * step).floor() as usize).min(origin.len() - 1)] as f64)
        .collect()
}

impl Scheduler for Lcm {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let cfg = &self.config;
        schedule::check_steps(n, cfg.betas.num_train_timesteps)?;
        if n > cfg.original_inference_steps {
            return Err(Error::InvalidInput(format!(
                "LCM: {n} steps are more than the {} steps of the distillation schedule (original_inference_steps)",
                cfg.original_inference_steps
            )));
        }
        self.timesteps = lcm_timesteps(cfg.betas.num_train_timesteps, cfg.original_inference_steps, n);
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
        let t = at(&self.timesteps, step_index, "timestep")?;
        let prev = self.timesteps.get(step_index + 1).copied().unwrap_or(t);
        let alpha_prod_t = at(&self.alphas_cumprod, t as usize, "timestep")?;
        let alpha_prod_t_prev = at(&self.alphas_cumprod, prev as usize, "timestep")?;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        // Boundary condition scalings (σ_data = 0.5), in f32 as torch computes them.
        let scaled = t as f32 * cfg.timestep_scaling as f32;
        let c_skip = 0.25 / (scaled * scaled + 0.25);
        let c_out = scaled / (scaled * scaled + 0.25).sqrt();

        let out_dtype = model_output.dtype();
        let (mo, sample) = (f32(model_output)?, f32(sample)?);
        let clip = cfg.clip_sample.then_some(cfg.clip_sample_range);
        let x0 = predict_x0(cfg.prediction_type, &mo, &sample, alpha_prod_t, clip, "LCM")?;
        let denoised = (mul_s(&x0, c_out)? + mul_s(&sample, c_skip)?)?;
        let prev_sample = if step_index + 1 < n {
            let noise =
                noise.ok_or_else(|| Error::InvalidInput("LCM needs noise at every step but the last".into()))?;
            same_shape("noise", &sample, noise)?;
            (mul_s(&denoised, alpha_prod_t_prev.sqrt())? + mul_s(&f32(noise)?, beta_prod_t_prev.sqrt())?)?
        } else {
            denoised
        };
        self.counter.finish(step_index);
        Ok(prev_sample.to_dtype(out_dtype)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        add_noise_vp(&self.alphas_cumprod, &self.timesteps, original, noise, step_index)
    }

    fn needs_noise(&self) -> bool {
        true
    }

    fn num_train_timesteps(&self) -> usize {
        self.config.betas.num_train_timesteps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_are_picks_of_the_distillation_schedule() {
        // diffusers' LCMScheduler(original_inference_steps=50).set_timesteps(4): 999, 759, 499, 259.
        assert_eq!(lcm_timesteps(1000, 50, 4), vec![999.0, 759.0, 499.0, 259.0]);
        assert_eq!(lcm_timesteps(1000, 50, 1), vec![999.0]);
        assert_eq!(lcm_timesteps(1000, 50, 50).last(), Some(&19.0));
    }
}
