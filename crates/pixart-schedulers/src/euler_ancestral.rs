//! Euler ancestral sampling (Karras et al. 2022, k-diffusion's `sample_euler_ancestral`), as
//! diffusers' `EulerAncestralDiscreteScheduler` (diffusers 0.42.1,
//! `schedulers/scheduling_euler_ancestral_discrete.py`: `set_timesteps`, `init_noise_sigma`,
//! `scale_model_input`, `step`, `add_noise`). The ancestral noise is passed in.
use candle_core::Tensor;
use pixart_core::{Error, Result};

use crate::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use crate::dpm_solver_pp::{beta_config, unsupported_common};
use crate::schedule::{self, BetaConfig};
use crate::{at, div_s, f32, mul_s, same_shape, Scheduler, StepCounter};

/// `EulerAncestralDiscreteScheduler`'s options.
#[derive(Debug, Clone, PartialEq)]
pub struct EulerAncestralConfig {
    pub betas: BetaConfig,
    /// epsilon or v_prediction (diffusers does not implement sample).
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: i64,
}

impl Default for EulerAncestralConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::default(),
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
        }
    }
}

impl EulerAncestralConfig {
    /// Resolves a config file (missing keys: this class's defaults).
    pub fn from_scheduler_config(cfg: &SchedulerConfig) -> Result<Self> {
        cfg.validate()?;
        unsupported_common(cfg, "Euler ancestral")?;
        let d = Self::default();
        Ok(Self {
            betas: beta_config(cfg),
            prediction_type: cfg.prediction_type.unwrap_or(d.prediction_type),
            timestep_spacing: cfg.timestep_spacing.unwrap_or(d.timestep_spacing),
            steps_offset: cfg.steps_offset.unwrap_or(d.steps_offset),
        })
    }
}

/// Euler ancestral sampler (see the module docs).
#[derive(Debug, Clone)]
pub struct EulerAncestral {
    config: EulerAncestralConfig,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    counter: StepCounter,
}

impl EulerAncestral {
    /// Builds the sampler (call [`Scheduler::set_timesteps`] next).
    pub fn new(config: EulerAncestralConfig) -> Result<Self> {
        if config.prediction_type == PredictionType::Sample || config.prediction_type == PredictionType::FlowPrediction
        {
            return Err(Error::InvalidInput(format!(
                "Euler ancestral: prediction_type {:?} is not supported (epsilon or v_prediction)",
                config.prediction_type
            )));
        }
        let alphas_cumprod = config.betas.alphas_cumprod()?;
        Ok(Self {
            config,
            alphas_cumprod,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            counter: StepCounter::default(),
        })
    }

    /// The resolved options.
    pub fn config(&self) -> &EulerAncestralConfig {
        &self.config
    }

    fn max_sigma(&self) -> f32 {
        // Before set_timesteps diffusers holds the full training sigmas.
        let s = if self.sigmas.is_empty() {
            schedule::train_sigmas(&self.alphas_cumprod)
        } else {
            self.sigmas.clone()
        };
        s.into_iter().fold(0f32, f32::max)
    }
}

impl Scheduler for EulerAncestral {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let cfg = &self.config;
        let t_train = cfg.betas.num_train_timesteps;
        schedule::check_steps(n, t_train)?;
        // Timesteps are float32 here.
        let timesteps: Vec<f32> = match cfg.timestep_spacing {
            TimestepSpacing::Linspace => {
                let mut v: Vec<f32> = schedule::np_linspace(0.0, (t_train - 1) as f64, n)
                    .into_iter()
                    .map(|t| t as f32)
                    .collect();
                v.reverse();
                v
            }
            TimestepSpacing::Leading => {
                let ratio = t_train / n;
                let mut v: Vec<f32> = (0..n).map(|i| (i * ratio) as f32 + cfg.steps_offset as f32).collect();
                v.reverse();
                v
            }
            TimestepSpacing::Trailing => schedule::np_arange(t_train as f64, 0.0, -(t_train as f64 / n as f64))
                .into_iter()
                .map(|t| t.round_ties_even() as f32 - 1.0)
                .collect(),
        };
        let train_sigmas = schedule::train_sigmas(&self.alphas_cumprod);
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| schedule::interp(t as f64, &train_sigmas) as f32)
            .collect();
        sigmas.push(0.0);
        self.sigmas = sigmas;
        self.timesteps = timesteps.into_iter().map(|t| t as f64).collect();
        self.counter.reset();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn init_noise_sigma(&self) -> f64 {
        let max = self.max_sigma();
        match self.config.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt() as f64,
        }
    }

    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor> {
        let sigma = at(&self.sigmas, step_index, "sigma")?;
        div_s(sample, (sigma * sigma + 1.0).sqrt())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.counter.begin(step_index, self.timesteps.len())?;
        same_shape("model_output", sample, model_output)?;
        let sigma = at(&self.sigmas, step_index, "sigma")?;
        let sigma_to = at(&self.sigmas, step_index + 1, "sigma")?;
        let out_dtype = model_output.dtype();
        let (mo, sample) = (f32(model_output)?, f32(sample)?);
        let x0 = match self.config.prediction_type {
            PredictionType::Epsilon => (&sample - mul_s(&mo, sigma)?)?,
            PredictionType::VPrediction => {
                (mul_s(&mo, -sigma / (sigma * sigma + 1.0).sqrt())? + div_s(&sample, sigma * sigma + 1.0)?)?
            }
            other => {
                return Err(Error::InvalidInput(format!(
                    "Euler ancestral: {other:?} is not supported"
                )))
            }
        };
        let sigma_from = sigma;
        let sigma_up = ((sigma_to * sigma_to) * (sigma_from * sigma_from - sigma_to * sigma_to)
            / (sigma_from * sigma_from))
            .sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let derivative = div_s(&(&sample - x0)?, sigma)?;
        let dt = sigma_down - sigma;
        let mut prev = (&sample + mul_s(&derivative, dt)?)?;
        if sigma_up != 0.0 {
            let noise = noise.ok_or_else(|| Error::InvalidInput("Euler ancestral needs noise at every step".into()))?;
            same_shape("noise", &sample, noise)?;
            prev = (prev + mul_s(&f32(noise)?, sigma_up)?)?;
        }
        self.counter.finish(step_index);
        Ok(prev.to_dtype(out_dtype)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        same_shape("noise", original, noise)?;
        let sigma = at(&self.sigmas, step_index, "sigma")?;
        let dtype = original.dtype();
        Ok((f32(original)? + mul_s(&f32(noise)?, sigma)?)?.to_dtype(dtype)?)
    }

    fn needs_noise(&self) -> bool {
        true
    }

    fn num_train_timesteps(&self) -> usize {
        self.config.betas.num_train_timesteps
    }
}
