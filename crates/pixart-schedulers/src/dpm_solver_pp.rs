//! DPM-Solver++ multistep (Lu et al. 2022), as diffusers' `DPMSolverMultistepScheduler`
//! (diffusers 0.42.1, `schedulers/scheduling_dpmsolver_multistep.py`: `set_timesteps`,
//! `convert_model_output`, `dpm_solver_first_order_update`,
//! `multistep_dpm_solver_{second,third}_order_update`, `step`, `add_noise`).
//!
//! PixArt-Σ's default: order 2, midpoint, linspace spacing, lower_order_final, final σ = 0.
use candle_core::Tensor;
use pixart_core::{Error, Result};

use crate::config::{AlgorithmType, FinalSigmasType, PredictionType, SchedulerConfig, SolverType, TimestepSpacing};
use crate::schedule::{self, alpha_sigma, lambda, BetaConfig};
use crate::{at, div_s, f32, mul_s, same_shape, Scheduler, StepCounter};

/// `DPMSolverMultistepScheduler`'s options (defaults = diffusers' class defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct DpmSolverConfig {
    pub betas: BetaConfig,
    /// 1, 2 or 3 (default 2).
    pub solver_order: usize,
    pub prediction_type: PredictionType,
    pub solver_type: SolverType,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub use_karras_sigmas: bool,
    pub final_sigmas_type: FinalSigmasType,
    pub lambda_min_clipped: f64,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: i64,
}

impl Default for DpmSolverConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::default(),
            solver_order: 2,
            prediction_type: PredictionType::Epsilon,
            solver_type: SolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
            use_karras_sigmas: false,
            final_sigmas_type: FinalSigmasType::Zero,
            lambda_min_clipped: f64::NEG_INFINITY,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
        }
    }
}

impl DpmSolverConfig {
    /// Resolves a config file for this class: missing keys take the class defaults; options
    /// this implementation does not cover are refused with a one-line error.
    pub fn from_scheduler_config(cfg: &SchedulerConfig) -> Result<Self> {
        cfg.validate()?;
        let d = Self::default();
        unsupported_common(cfg, "DPM-Solver++")?;
        for (key, on) in [
            ("use_exponential_sigmas", cfg.use_exponential_sigmas),
            ("use_beta_sigmas", cfg.use_beta_sigmas),
            ("use_lu_lambdas", cfg.use_lu_lambdas),
            ("use_dynamic_shifting", cfg.use_dynamic_shifting),
        ] {
            if on == Some(true) {
                return Err(Error::InvalidInput(format!("DPM-Solver++: `{key}` is not supported")));
            }
        }
        match cfg.algorithm_type {
            None | Some(AlgorithmType::DpmSolverPp) => {}
            // SA-Solver's values: a file of another class; use this class's default.
            Some(AlgorithmType::DataPrediction | AlgorithmType::NoisePrediction) => {}
            Some(other) => {
                return Err(Error::InvalidInput(format!(
                    "DPM-Solver++: algorithm_type {other:?} is not supported (only dpmsolver++)"
                )))
            }
        }
        Ok(Self {
            betas: beta_config(cfg),
            solver_order: cfg.solver_order.unwrap_or(d.solver_order),
            prediction_type: cfg.prediction_type.unwrap_or(d.prediction_type),
            solver_type: cfg.solver_type.unwrap_or(d.solver_type),
            lower_order_final: cfg.lower_order_final.unwrap_or(d.lower_order_final),
            euler_at_final: cfg.euler_at_final.unwrap_or(d.euler_at_final),
            use_karras_sigmas: cfg.use_karras_sigmas.unwrap_or(d.use_karras_sigmas),
            final_sigmas_type: cfg.final_sigmas_type.unwrap_or(d.final_sigmas_type),
            lambda_min_clipped: cfg.lambda_min_clipped.unwrap_or(d.lambda_min_clipped),
            timestep_spacing: cfg.timestep_spacing.unwrap_or(d.timestep_spacing),
            steps_offset: cfg.steps_offset.unwrap_or(d.steps_offset),
        })
    }
}

/// The training-schedule keys with diffusers' defaults (the same in all four classes).
pub(crate) fn beta_config(cfg: &SchedulerConfig) -> BetaConfig {
    let d = BetaConfig::default();
    BetaConfig {
        num_train_timesteps: cfg.num_train_timesteps.unwrap_or(d.num_train_timesteps),
        beta_start: cfg.beta_start.unwrap_or(d.beta_start),
        beta_end: cfg.beta_end.unwrap_or(d.beta_end),
        beta_schedule: cfg.beta_schedule.unwrap_or(d.beta_schedule),
        trained_betas: cfg.trained_betas.clone(),
    }
}

/// Refuses the options none of the samplers here implement.
pub(crate) fn unsupported_common(cfg: &SchedulerConfig, who: &str) -> Result<()> {
    for (key, on) in [
        ("thresholding", cfg.thresholding),
        ("rescale_betas_zero_snr", cfg.rescale_betas_zero_snr),
        ("use_flow_sigmas", cfg.use_flow_sigmas),
    ] {
        if on == Some(true) {
            return Err(Error::InvalidInput(format!("{who}: `{key}` is not supported")));
        }
    }
    if let Some(v) = &cfg.variance_type {
        return Err(Error::InvalidInput(format!(
            "{who}: variance_type {v:?} is not supported"
        )));
    }
    if cfg.prediction_type == Some(PredictionType::FlowPrediction) {
        return Err(Error::InvalidInput(format!(
            "{who}: prediction_type flow_prediction is not supported"
        )));
    }
    Ok(())
}

/// Data prediction x̂0 from the model output at noise level `sigma` (f32 sample and output).
pub(crate) fn data_prediction(
    prediction_type: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    let (alpha_t, sigma_t) = alpha_sigma(sigma);
    match prediction_type {
        PredictionType::Epsilon => div_s(&(sample - mul_s(model_output, sigma_t)?)?, alpha_t),
        PredictionType::Sample => Ok(model_output.clone()),
        PredictionType::VPrediction => Ok((mul_s(sample, alpha_t)? - mul_s(model_output, sigma_t)?)?),
        PredictionType::FlowPrediction => Err(Error::InvalidInput("flow_prediction is not supported".into())),
    }
}

/// DPM-Solver++ multistep sampler (see the module docs).
#[derive(Debug, Clone)]
pub struct DpmSolverPp {
    config: DpmSolverConfig,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    /// Data predictions of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    counter: StepCounter,
}

impl DpmSolverPp {
    /// Builds the sampler (no timesteps yet: call [`Scheduler::set_timesteps`]).
    pub fn new(config: DpmSolverConfig) -> Result<Self> {
        if !(1..=3).contains(&config.solver_order) {
            return Err(Error::InvalidInput(format!(
                "DPM-Solver++: solver_order must be 1, 2 or 3, got {}",
                config.solver_order
            )));
        }
        if config.lambda_min_clipped.is_nan() || config.lambda_min_clipped == f64::INFINITY {
            return Err(Error::InvalidInput(
                "DPM-Solver++: lambda_min_clipped must be a number or -inf".into(),
            ));
        }
        let alphas_cumprod = config.betas.alphas_cumprod()?;
        Ok(Self {
            model_outputs: vec![None; config.solver_order],
            config,
            alphas_cumprod,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            lower_order_nums: 0,
            counter: StepCounter::default(),
        })
    }

    /// The resolved options.
    pub fn config(&self) -> &DpmSolverConfig {
        &self.config
    }

    fn sigma(&self, i: usize) -> Result<f32> {
        at(&self.sigmas, i, "sigma")
    }

    fn history(&self, back: usize) -> Result<&Tensor> {
        let n = self.model_outputs.len();
        n.checked_sub(1 + back)
            .and_then(|i| self.model_outputs.get(i))
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::InvalidInput("DPM-Solver++: missing multistep history".into()))
    }

    fn first_order(&self, i: usize, x0: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigma(i + 1)?);
        let (alpha_s, sigma_s) = alpha_sigma(self.sigma(i)?);
        let h = (alpha_t.ln() - sigma_t.ln()) - (alpha_s.ln() - sigma_s.ln());
        Ok((mul_s(sample, sigma_t / sigma_s)? - mul_s(x0, alpha_t * ((-h).exp() - 1.0))?)?)
    }

    fn second_order(&self, i: usize, sample: &Tensor) -> Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigma(i + 1)?);
        let (_, sigma_s0) = alpha_sigma(self.sigma(i)?);
        let lambda_t = lambda(self.sigma(i + 1)?);
        let lambda_s0 = lambda(self.sigma(i)?);
        let lambda_s1 = lambda(self.sigma(i.wrapping_sub(1))?);
        let (m0, m1) = (self.history(0)?, self.history(1)?);
        let h = lambda_t - lambda_s0;
        let h_0 = lambda_s0 - lambda_s1;
        let r0 = h_0 / h;
        let d1 = mul_s(&(m0 - m1)?, 1.0 / r0)?;
        let e = (-h).exp() - 1.0;
        let x = (mul_s(sample, sigma_t / sigma_s0)? - mul_s(m0, alpha_t * e)?)?;
        Ok(match self.config.solver_type {
            SolverType::Midpoint => (x - mul_s(&d1, 0.5 * (alpha_t * e))?)?,
            SolverType::Heun => (x + mul_s(&d1, alpha_t * (e / h + 1.0))?)?,
        })
    }

    fn third_order(&self, i: usize, sample: &Tensor) -> Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigma(i + 1)?);
        let (_, sigma_s0) = alpha_sigma(self.sigma(i)?);
        let lambda_t = lambda(self.sigma(i + 1)?);
        let lambda_s0 = lambda(self.sigma(i)?);
        let lambda_s1 = lambda(self.sigma(i.wrapping_sub(1))?);
        let lambda_s2 = lambda(self.sigma(i.wrapping_sub(2))?);
        let (m0, m1, m2) = (self.history(0)?, self.history(1)?, self.history(2)?);
        let h = lambda_t - lambda_s0;
        let (h_0, h_1) = (lambda_s0 - lambda_s1, lambda_s1 - lambda_s2);
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d1_0 = mul_s(&(m0 - m1)?, 1.0 / r0)?;
        let d1_1 = mul_s(&(m1 - m2)?, 1.0 / r1)?;
        let diff = (&d1_0 - &d1_1)?;
        let d1 = (&d1_0 + mul_s(&diff, r0 / (r0 + r1))?)?;
        let d2 = mul_s(&diff, 1.0 / (r0 + r1))?;
        let e = (-h).exp() - 1.0;
        let x = (mul_s(sample, sigma_t / sigma_s0)? - mul_s(m0, alpha_t * e)?)?;
        let x = (x + mul_s(&d1, alpha_t * (e / h + 1.0))?)?;
        Ok((x - mul_s(&d2, alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5))?)?)
    }
}

impl Scheduler for DpmSolverPp {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let cfg = &self.config;
        let t_train = cfg.betas.num_train_timesteps;
        schedule::check_steps(n, t_train)?;
        let last = schedule::last_timestep(&self.alphas_cumprod, cfg.lambda_min_clipped);
        let mut timesteps = schedule::multistep_timesteps(cfg.timestep_spacing, n, t_train, last, cfg.steps_offset);
        let train_sigmas = schedule::train_sigmas(&self.alphas_cumprod);
        let mut sigmas: Vec<f64> = if cfg.use_karras_sigmas {
            let (Some(&lo), Some(&hi)) = (train_sigmas.first(), train_sigmas.last()) else {
                return Err(Error::InvalidInput("empty training schedule".into()));
            };
            let sig = schedule::karras_sigmas(lo as f64, hi as f64, n);
            let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
            let round = cfg.betas.beta_schedule != crate::BetaSchedule::SquaredcosCapV2;
            timesteps = sig
                .iter()
                .map(|&s| {
                    let t = schedule::sigma_to_t(s, &log_sigmas);
                    // `.round()` unless cosine, then `.to(int64)` (truncation).
                    if round {
                        t.round_ties_even()
                    } else {
                        t.trunc()
                    }
                })
                .collect();
            sig
        } else {
            timesteps.iter().map(|&t| schedule::interp(t, &train_sigmas)).collect()
        };
        let sigma_last = match cfg.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => at(&train_sigmas, 0, "sigma")? as f64,
        };
        sigmas.push(sigma_last);
        self.sigmas = sigmas.into_iter().map(|s| s as f32).collect();
        self.timesteps = timesteps;
        self.model_outputs = vec![None; cfg.solver_order];
        self.lower_order_nums = 0;
        self.counter.reset();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
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
        let cfg = &self.config;
        let i = step_index;
        let lower_order_final = i == n - 1
            && (cfg.euler_at_final
                || (cfg.lower_order_final && n < 15)
                || cfg.final_sigmas_type == FinalSigmasType::Zero);
        let lower_order_second = i + 2 == n && cfg.lower_order_final && n < 15;

        let out_dtype = model_output.dtype();
        let sample = f32(sample)?;
        let x0 = data_prediction(cfg.prediction_type, &f32(model_output)?, &sample, self.sigma(i)?)?;
        self.model_outputs.rotate_left(1);
        if let Some(last) = self.model_outputs.last_mut() {
            *last = Some(x0.clone());
        }

        let order = cfg.solver_order;
        let prev = if order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(i, &x0, &sample)?
        } else if order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(i, &sample)?
        } else {
            self.third_order(i, &sample)?
        };
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        self.counter.finish(i);
        Ok(prev.to_dtype(out_dtype)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        same_shape("noise", original, noise)?;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigma(step_index)?);
        let dtype = original.dtype();
        let x = (mul_s(&f32(original)?, alpha_t)? + mul_s(&f32(noise)?, sigma_t)?)?;
        Ok(x.to_dtype(dtype)?)
    }

    fn needs_noise(&self) -> bool {
        false
    }

    fn num_train_timesteps(&self) -> usize {
        self.config.betas.num_train_timesteps
    }
}
