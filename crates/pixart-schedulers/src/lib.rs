//! Samplers (diffusers "schedulers") for pixart-rs.
//!
//! Each sampler is a small state machine with the diffusers semantics:
//! [`Scheduler::set_timesteps`], then for every step `i` the model is evaluated on
//! [`Scheduler::scale_model_input`] at [`Scheduler::timesteps`]`[i]` and the result handed to
//! [`Scheduler::step`]. Randomness never comes from inside: samplers that inject noise
//! ([`Scheduler::needs_noise`]) take it as an argument, so a run is reproducible and golden tests
//! can feed the exact noise diffusers used.
//!
//! - [`DpmSolverPp`], `DPMSolverMultistepScheduler` (PixArt-Σ's default, orders 1–3).
//! - [`SaSolver`], `SASolverScheduler` (data prediction, PixArt's demo option).
//! - [`Ddim`], `DDIMScheduler`.
//! - [`EulerAncestral`], `EulerAncestralDiscreteScheduler`.
//! - [`Ddpm`], `DDPMScheduler`, and PixArt's own IDDPM sampler on top of it (learned variance).
//! - [`Lcm`], `LCMScheduler` (consistency-distilled models such as PixArt-LCM).
//! - [`OriginalDpmSolver`], the original PixArt repository's default DPM-Solver (time-uniform
//!   continuous steps on the interpolated discrete schedule).
//!
//! [`CleanEstimate`] gives the denoised sample a model output implies at any step (previews).
//!
//! [`SchedulerConfig`] reads diffusers' `scheduler/scheduler_config.json`; [`from_config`] builds
//! the sampler that file (or a [`SamplerKind`] override) names. The update arithmetic is done in
//! f32 with the same scalar operations, in the same order, as diffusers 0.42.1 on torch 2.15, and
//! the result is cast back to the model output's dtype.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;
pub mod ddim;
pub mod ddpm;
pub mod dpm_solver_original;
pub mod dpm_solver_pp;
pub mod estimate;
pub mod euler_ancestral;
pub mod factory;
pub mod lcm;
pub mod sa_solver;
pub mod schedule;

use candle_core::{DType, Tensor};
use pixart_core::{Error, Result};

pub use config::{
    AlgorithmType, BetaSchedule, FinalSigmasType, PredictionType, SchedulerClass, SchedulerConfig, SolverType,
    TimestepSpacing,
};
pub use ddim::{Ddim, DdimConfig};
pub use ddpm::{Ddpm, DdpmConfig, DdpmSpacing, VarianceType};
pub use dpm_solver_original::{OriginalDpmSolver, OriginalDpmSolverConfig};
pub use dpm_solver_pp::{DpmSolverConfig, DpmSolverPp};
pub use estimate::CleanEstimate;
pub use euler_ancestral::{EulerAncestral, EulerAncestralConfig};
pub use factory::{
    default_guidance, default_steps, from_config, Sampler, SamplerKind, DEFAULT_GUIDANCE, DEFAULT_STEPS,
};
pub use lcm::{Lcm, LcmConfig};
pub use sa_solver::{SaSolver, SaSolverConfig, Tau};
pub use schedule::BetaConfig;

/// A diffusion sampler. Tensors may have any shape; `model_output`, `sample` and `noise` of one
/// step share it.
pub trait Scheduler {
    /// Prepares `num_inference_steps` steps and resets the multistep history.
    /// Errors on 0 steps or more steps than training timesteps.
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()>;

    /// The model timestep of each step (integral for every sampler but Euler ancestral with
    /// linspace spacing, whose timesteps are fractional f32 values).
    fn timesteps(&self) -> &[f64];

    /// The noise levels σ of the steps plus the final one (empty for the samplers that work on
    /// ᾱ directly: DDIM, DDPM, LCM).
    fn sigmas(&self) -> &[f32] {
        &[]
    }

    /// Scale of the initial latent: `latents = noise · init_noise_sigma` (1 for the samplers
    /// that work on unscaled latents, which is all but Euler ancestral).
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// The model input at step `step_index` (the identity for all but Euler ancestral).
    fn scale_model_input(&self, sample: &Tensor, _step_index: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    /// One step from `sample` at `timesteps()[step_index]` to the next noise level.
    /// Steps must be taken in order (the first one may start anywhere, as for img2img).
    /// `noise` (standard normal, same shape) is required where [`Scheduler::needs_noise`].
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor>;

    /// `original` noised to the level the sampler expects as input of step `step_index`
    /// (diffusers' `add_noise` at `timesteps()[step_index]`).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor>;

    /// Whether [`Scheduler::step`] needs fresh noise at each step.
    fn needs_noise(&self) -> bool;

    /// Whether [`Scheduler::step`] takes the model's predicted variance too: a `model_output`
    /// of 2·C channels, the variance in channels C..2C (learned-sigma models), as DDPM with a
    /// learned variance does. The others take the C prediction channels only.
    fn model_variance(&self) -> bool {
        false
    }

    /// `num_train_timesteps` of the training schedule.
    fn num_train_timesteps(&self) -> usize;
}

/// `t · c`, elementwise in the tensor's dtype with `c` rounded to it (torch's tensor × 0-d).
pub(crate) fn mul_s(t: &Tensor, c: f32) -> Result<Tensor> {
    Ok(t.affine(c as f64, 0.0)?)
}

/// `t / c`, a true division like torch's (not a multiplication by the reciprocal).
pub(crate) fn div_s(t: &Tensor, c: f32) -> Result<Tensor> {
    let c = Tensor::new(c, t.device())?.to_dtype(t.dtype())?;
    Ok(t.broadcast_div(&c)?)
}

/// Upcasts to f32 (diffusers computes steps on f32 samples).
pub(crate) fn f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?)
}

/// x̂0 from an f32 model output at ᾱ_t (diffusers' DDPM / LCM `step`), clamped to
/// ±`clip` when given. `who` names the sampler in errors.
pub(crate) fn predict_x0(
    prediction_type: config::PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    alpha_prod_t: f32,
    clip: Option<f64>,
    who: &str,
) -> Result<Tensor> {
    use config::PredictionType as P;
    let (sa, sb) = (alpha_prod_t.sqrt(), (1.0 - alpha_prod_t).sqrt());
    let x0 = match prediction_type {
        P::Epsilon => div_s(&(sample - mul_s(model_output, sb)?)?, sa)?,
        P::Sample => model_output.clone(),
        P::VPrediction => (mul_s(sample, sa)? - mul_s(model_output, sb)?)?,
        P::FlowPrediction => return Err(Error::InvalidInput(format!("{who}: flow_prediction is not supported"))),
    };
    Ok(match clip {
        Some(r) => x0.clamp(-r as f32, r as f32)?,
        None => x0,
    })
}

/// Checks that `b` has the shape of `a`.
pub(crate) fn same_shape(what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(Error::Shape(format!(
            "{what} has shape {:?} but the sample has shape {:?}",
            b.dims(),
            a.dims()
        )));
    }
    Ok(())
}

/// Tracks the step index: errors before `set_timesteps`, past the end, or out of order.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepCounter {
    next: Option<usize>,
}

impl StepCounter {
    pub(crate) fn reset(&mut self) {
        self.next = None;
    }

    pub(crate) fn begin(&mut self, step_index: usize, num_steps: usize) -> Result<()> {
        if num_steps == 0 {
            return Err(Error::InvalidInput("call set_timesteps before step".into()));
        }
        if step_index >= num_steps {
            return Err(Error::InvalidInput(format!(
                "step index {step_index} is out of range for {num_steps} steps"
            )));
        }
        if let Some(next) = self.next {
            if next != step_index {
                return Err(Error::InvalidInput(format!(
                    "steps must be taken in order: expected step {next}, got {step_index}"
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn finish(&mut self, step_index: usize) {
        self.next = Some(step_index + 1);
    }
}

/// `xs[i]`, or an error naming the table.
pub(crate) fn at<T: Copy>(xs: &[T], i: usize, what: &str) -> Result<T> {
    xs.get(i)
        .copied()
        .ok_or_else(|| Error::InvalidInput(format!("{what} index {i} out of range ({} entries)", xs.len())))
}
