//! PixArt's own DPM-Solver: the sampler of the original repository's default
//! `scripts/inference.py --sampling_algo dpm-solver` (PixArt-alpha/PixArt-sigma@1ce521a,
//! `diffusion/dpm_solver.py` `DPMS` and `diffusion/model/dpm_solver.py`: `NoiseScheduleVP`
//! ("discrete"), `model_wrapper`, `DPM_Solver.sample(order=2, skip_type="time_uniform",
//! method="multistep", lower_order_final=True, solver_type="dpmsolver")` with
//! `algorithm_type="dpmsolver++"`).
//!
//! It differs from diffusers' `DPMSolverMultistepScheduler` (the `dpm++` sampler) in its time
//! grid: continuous times uniform in t from 1 to 1/N, the discrete schedule's log ᾱ interpolated
//! piecewise-linearly between the training timesteps (so the model sees fractional timesteps
//! `(t − 1/N)·1000`: 999, 949.05, ...), and the last step always of first order. The update
//! itself is DPM-Solver++(2M): data prediction x̂0 = (x − σ_t ε)/α_t, then
//! `x_t = (σ_t/σ_s) x − α_t (e^{−h} − 1) x̂0_s − ½ α_t (e^{−h} − 1) D1` with
//! `D1 = (x̂0_s − x̂0_{s'}) · h / h_0`.
//!
//! Arithmetic follows the original's float widths: the betas in f64 (numpy), log ᾱ summed in
//! f64 and stored as f32, every schedule quantity and update in f32.
use candle_core::Tensor;
use pixart_core::{Error, Result};

use crate::config::{BetaSchedule, PredictionType, SchedulerConfig};
use crate::dpm_solver_pp::{beta_config, unsupported_common};
use crate::schedule::{torch_linspace_f32, BetaConfig};
use crate::{f32, mul_s, same_shape, Scheduler, StepCounter};

/// The original DPM-Solver's options.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginalDpmSolverConfig {
    pub betas: BetaConfig,
}

impl OriginalDpmSolverConfig {
    /// The training schedule of `cfg` (PixArt: linear 1e-4..0.02 over 1000 steps). Only noise
    /// prediction is supported, as the original wraps PixArt's ε output.
    pub fn from_scheduler_config(cfg: &SchedulerConfig) -> Result<Self> {
        let mut rest = cfg.clone();
        rest.variance_type = None;
        rest.validate()?;
        unsupported_common(&rest, "dpm-solver")?;
        if let Some(p) = cfg.prediction_type.filter(|p| *p != PredictionType::Epsilon) {
            return Err(Error::InvalidInput(format!(
                "dpm-solver: prediction_type {p:?} is not supported (the original wraps an epsilon model)"
            )));
        }
        Ok(Self {
            betas: beta_config(cfg),
        })
    }
}

/// The discrete VP schedule as `NoiseScheduleVP("discrete")` holds it: keypoints t_i = (i+1)/N
/// and log ᾱ_i^{1/2} (f32), interpolated piecewise-linearly (extrapolated beyond the ends).
#[derive(Debug, Clone)]
struct DiscreteVp {
    t: Vec<f32>,
    log_alpha: Vec<f32>,
}

impl DiscreteVp {
    fn new(betas: &BetaConfig) -> Result<Self> {
        // `gd.get_named_beta_schedule("linear", N)` is numpy f64; other schedules take
        // diffusers' f32 betas.
        let b: Vec<f64> = match (&betas.trained_betas, betas.beta_schedule) {
            (None, BetaSchedule::Linear) => {
                crate::schedule::np_linspace(betas.beta_start, betas.beta_end, betas.num_train_timesteps)
            }
            _ => betas.betas()?.into_iter().map(f64::from).collect(),
        };
        let mut acc = 0f64;
        let mut log_alphas: Vec<f64> = b
            .iter()
            .map(|beta| {
                acc += (1.0 - beta).ln();
                0.5 * acc
            })
            .collect();
        // `numerical_clip_alpha`: drop the tail where λ < −5.1 (not reached by PixArt's schedule).
        let lambda = |la: f64| la - 0.5 * (1.0 - (2.0 * la).exp()).ln();
        let keep = log_alphas.iter().take_while(|&&la| lambda(la) >= -5.1).count();
        log_alphas.truncate(keep.max(2));
        let n = log_alphas.len();
        let t = torch_linspace_f32(0.0, 1.0, n + 1).split_off(1);
        Ok(Self {
            t,
            log_alpha: log_alphas.into_iter().map(|v| v as f32).collect(),
        })
    }

    fn n(&self) -> usize {
        self.t.len()
    }

    /// `interpolate_fn(t, t_array, log_alpha_array)`.
    fn log_mean_coeff(&self, t: f32) -> f32 {
        interpolate(t, &self.t, &self.log_alpha)
    }

    fn alpha(&self, t: f32) -> f32 {
        self.log_mean_coeff(t).exp()
    }

    fn sigma(&self, t: f32) -> f32 {
        (1.0 - (2.0 * self.log_mean_coeff(t)).exp()).sqrt()
    }

    fn lambda(&self, t: f32) -> f32 {
        let l = self.log_mean_coeff(t);
        l - 0.5 * (1.0 - (2.0 * l).exp()).ln()
    }
}

/// Piecewise-linear interpolation through (xp, yp) (xp increasing), extrapolating with the
/// outermost segments: `start_y + (x − start_x)·(end_y − start_y)/(end_x − start_x)` in f32.
fn interpolate(x: f32, xp: &[f32], yp: &[f32]) -> f32 {
    let k = xp.len();
    // The segment: the last keypoint index j with xp[j] <= x, clamped to [0, k − 2].
    let j = xp.partition_point(|&v| v <= x).saturating_sub(1).min(k - 2);
    let (x0, x1, y0, y1) = (xp[j], xp[j + 1], yp[j], yp[j + 1]);
    y0 + (x - x0) * (y1 - y0) / (x1 - x0)
}

/// The original DPM-Solver (see the module docs).
#[derive(Debug, Clone)]
pub struct OriginalDpmSolver {
    config: OriginalDpmSolverConfig,
    schedule: DiscreteVp,
    /// Continuous times t_0 = 1 > ... > t_n = 1/N (n + 1 values).
    times: Vec<f32>,
    /// The model's timestep at each step: (t_i − 1/N)·1000.
    timesteps: Vec<f64>,
    /// (t, x̂0) of the last two model evaluations.
    history: Vec<(f32, Tensor)>,
    counter: StepCounter,
}

impl OriginalDpmSolver {
    /// Builds the sampler (call [`Scheduler::set_timesteps`] next).
    pub fn new(config: OriginalDpmSolverConfig) -> Result<Self> {
        let schedule = DiscreteVp::new(&config.betas)?;
        Ok(Self {
            config,
            schedule,
            times: Vec::new(),
            timesteps: Vec::new(),
            history: Vec::new(),
            counter: StepCounter::default(),
        })
    }

    /// The resolved options.
    pub fn config(&self) -> &OriginalDpmSolverConfig {
        &self.config
    }
}

impl Scheduler for OriginalDpmSolver {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        crate::schedule::check_steps(n, self.schedule.n())?;
        let big_n = self.schedule.n();
        let t_end = 1.0 / big_n as f64;
        self.times = torch_linspace_f32(1.0, t_end, n + 1);
        let eps = t_end as f32;
        self.timesteps = self.times[..n].iter().map(|&t| f64::from((t - eps) * 1000.0)).collect();
        self.history.clear();
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
        _noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let n = self.timesteps.len();
        self.counter.begin(step_index, n)?;
        same_shape("model_output", sample, model_output)?;
        if step_index == 0 {
            self.history.clear();
        }
        let ns = &self.schedule;
        let (s, t) = (self.times[step_index], self.times[step_index + 1]);
        let out_dtype = model_output.dtype();
        let (eps, x) = (f32(model_output)?, f32(sample)?);
        // x̂0 = (x − σ_s ε) / α_s.
        let x0 = crate::div_s(&(&x - mul_s(&eps, ns.sigma(s))?)?, ns.alpha(s))?;
        self.history.push((s, x0));
        if self.history.len() > 2 {
            self.history.remove(0);
        }
        // First order at the first and the last step (lower_order_final), second otherwise.
        let order = if step_index == 0 || step_index + 1 == n { 1 } else { 2 };
        let (sigma_t, alpha_t) = (ns.sigma(t), ns.alpha(t));
        let lambda_t = ns.lambda(t);
        let (s0, m0) = &self.history[self.history.len() - 1];
        let h = lambda_t - ns.lambda(*s0);
        let phi_1 = (-h).exp_m1();
        let mut x_t = (mul_s(&x, sigma_t / ns.sigma(*s0))? - mul_s(m0, alpha_t * phi_1)?)?;
        if order == 2 {
            let (s1, m1) = &self.history[0];
            let h_0 = ns.lambda(*s0) - ns.lambda(*s1);
            let r0 = h_0 / h;
            let d1 = mul_s(&(m0 - m1)?, 1.0 / r0)?;
            x_t = (x_t - mul_s(&d1, 0.5 * (alpha_t * phi_1))?)?;
        }
        self.counter.finish(step_index);
        Ok(x_t.to_dtype(out_dtype)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        same_shape("noise", original, noise)?;
        let t = *self.times.get(step_index).ok_or_else(|| {
            Error::InvalidInput(format!(
                "step index {step_index} out of range ({} steps)",
                self.timesteps.len()
            ))
        })?;
        let ns = &self.schedule;
        let dtype = original.dtype();
        let x = (mul_s(&f32(original)?, ns.alpha(t))? + mul_s(&f32(noise)?, ns.sigma(t))?)?;
        Ok(x.to_dtype(dtype)?)
    }

    fn needs_noise(&self) -> bool {
        false
    }

    fn num_train_timesteps(&self) -> usize {
        self.config.betas.num_train_timesteps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_and_time_grid() {
        let xp = [0.1f32, 0.2, 0.4];
        let yp = [1.0f32, 2.0, 0.0];
        for (x, want) in [(0.15, 1.5), (0.3, 1.0), (0.0, 0.0), (0.5, -1.0)] {
            // (0.0 and 0.5 are extrapolated from the outer segments.)
            assert!((interpolate(x, &xp, &yp) - want).abs() < 1e-6, "{x}");
        }
        let mut s = OriginalDpmSolver::new(
            OriginalDpmSolverConfig::from_scheduler_config(&SchedulerConfig::pixart_sigma()).unwrap(),
        )
        .unwrap();
        s.set_timesteps(20).unwrap();
        let t = s.timesteps();
        assert_eq!(t.len(), 20);
        assert!((t[0] - 999.0).abs() < 1e-3 && (t[1] - 949.05).abs() < 1e-2, "{t:?}");
    }
}
