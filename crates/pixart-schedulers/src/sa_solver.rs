//! SA-Solver (Xue et al. 2023): stochastic Adams predictor-corrector, as diffusers'
//! `SASolverScheduler` in data-prediction mode (diffusers 0.42.1,
//! `schedulers/scheduling_sasolver.py`: `set_timesteps`, `get_coefficients_exponential_positive`,
//! `lagrange_polynomial_coefficient`, `get_coefficients_fn`, `stochastic_adams_bashforth_update`,
//! `stochastic_adams_moulton_update`, `step`, `add_noise`).
//!
//! PixArt's demo: predictor order 2, corrector order 2, τ(t) = 1 for 200 ≤ t ≤ 800 else 0
//! (also the class default). Each step's noise is passed in and kept for the next corrector.
//! The scalar coefficients suffer cancellation in f32; they are computed with diffusers' f32
//! operations in diffusers' order so that the result tracks it closely.
use candle_core::Tensor;
use pixart_core::{Error, Result};

use crate::config::{AlgorithmType, PredictionType, SchedulerConfig, TimestepSpacing};
use crate::ddim::add_noise_vp;
use crate::dpm_solver_pp::{beta_config, data_prediction, unsupported_common};
use crate::schedule::{self, alpha_sigma, lambda, BetaConfig};
use crate::{at, f32, mul_s, same_shape, Scheduler, StepCounter};

/// τ(t): the stochasticity, `value` for `t_min ≤ t ≤ t_max`, else 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tau {
    pub value: f32,
    pub t_min: f64,
    pub t_max: f64,
}

impl Default for Tau {
    /// diffusers' default `tau_func` and PixArt's demo: 1 on [200, 800].
    fn default() -> Self {
        Self {
            value: 1.0,
            t_min: 200.0,
            t_max: 800.0,
        }
    }
}

impl Tau {
    fn at(&self, t: f64) -> f32 {
        if t >= self.t_min && t <= self.t_max {
            self.value
        } else {
            0.0
        }
    }
}

/// `SASolverScheduler`'s options (data-prediction mode only).
#[derive(Debug, Clone, PartialEq)]
pub struct SaSolverConfig {
    pub betas: BetaConfig,
    /// 1..=4 (default 2).
    pub predictor_order: usize,
    /// 1..=4 (default 2).
    pub corrector_order: usize,
    pub prediction_type: PredictionType,
    pub tau: Tau,
    pub lower_order_final: bool,
    pub use_karras_sigmas: bool,
    pub lambda_min_clipped: f64,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: i64,
}

impl Default for SaSolverConfig {
    fn default() -> Self {
        Self {
            betas: BetaConfig::default(),
            predictor_order: 2,
            corrector_order: 2,
            prediction_type: PredictionType::Epsilon,
            tau: Tau::default(),
            lower_order_final: true,
            use_karras_sigmas: false,
            lambda_min_clipped: f64::NEG_INFINITY,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
        }
    }
}

impl SaSolverConfig {
    /// Resolves a config file. A file of another class (PixArt's DPM-Solver++ file) is read as
    /// PixArt's demo does: `algorithm_type` data_prediction, orders from the file or 2.
    pub fn from_scheduler_config(cfg: &SchedulerConfig) -> Result<Self> {
        cfg.validate()?;
        unsupported_common(cfg, "SA-Solver")?;
        for (key, on) in [
            ("use_exponential_sigmas", cfg.use_exponential_sigmas),
            ("use_beta_sigmas", cfg.use_beta_sigmas),
        ] {
            if on == Some(true) {
                return Err(Error::InvalidInput(format!("SA-Solver: `{key}` is not supported")));
            }
        }
        if cfg.algorithm_type == Some(AlgorithmType::NoisePrediction) {
            return Err(Error::InvalidInput(
                "SA-Solver: algorithm_type noise_prediction is not supported (only data_prediction)".into(),
            ));
        }
        let d = Self::default();
        Ok(Self {
            betas: beta_config(cfg),
            predictor_order: cfg.predictor_order.unwrap_or(d.predictor_order),
            corrector_order: cfg.corrector_order.unwrap_or(d.corrector_order),
            prediction_type: cfg.prediction_type.unwrap_or(d.prediction_type),
            tau: d.tau,
            lower_order_final: cfg.lower_order_final.unwrap_or(d.lower_order_final),
            use_karras_sigmas: cfg.use_karras_sigmas.unwrap_or(d.use_karras_sigmas),
            lambda_min_clipped: cfg.lambda_min_clipped.unwrap_or(d.lambda_min_clipped),
            timestep_spacing: cfg.timestep_spacing.unwrap_or(d.timestep_spacing),
            steps_offset: cfg.steps_offset.unwrap_or(d.steps_offset),
        })
    }
}

/// SA-Solver sampler (see the module docs).
#[derive(Debug, Clone)]
pub struct SaSolver {
    config: SaSolverConfig,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    /// Data predictions of the last steps, oldest first (`max(p, c − 1)` slots).
    model_outputs: Vec<Option<Tensor>>,
    timestep_list: Vec<Option<f64>>,
    lower_order_nums: usize,
    /// (sample, noise) of the previous predictor step, for the corrector.
    last: Option<(Tensor, Option<Tensor>)>,
    this_corrector_order: usize,
    counter: StepCounter,
}

impl SaSolver {
    /// Builds the sampler (call [`Scheduler::set_timesteps`] next).
    pub fn new(config: SaSolverConfig) -> Result<Self> {
        for (what, o) in [
            ("predictor_order", config.predictor_order),
            ("corrector_order", config.corrector_order),
        ] {
            if !(1..=4).contains(&o) {
                return Err(Error::InvalidInput(format!("SA-Solver: {what} must be 1..=4, got {o}")));
            }
        }
        if !config.tau.value.is_finite() {
            return Err(Error::InvalidInput("SA-Solver: tau must be finite".into()));
        }
        let alphas_cumprod = config.betas.alphas_cumprod()?;
        let slots = config.predictor_order.max(config.corrector_order - 1);
        Ok(Self {
            config,
            alphas_cumprod,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: vec![None; slots],
            timestep_list: vec![None; slots],
            lower_order_nums: 0,
            last: None,
            this_corrector_order: 1,
            counter: StepCounter::default(),
        })
    }

    /// The resolved options.
    pub fn config(&self) -> &SaSolverConfig {
        &self.config
    }

    fn lambda_at(&self, i: usize) -> Result<f32> {
        Ok(lambda(at(&self.sigmas, i, "sigma")?))
    }

    /// Lambdas of steps `i, i-1, ..., i-order+1`.
    fn lambda_list(&self, i: usize, order: usize) -> Result<Vec<f32>> {
        (0..order)
            .map(|k| {
                let si = i
                    .checked_sub(k)
                    .ok_or_else(|| Error::InvalidInput("SA-Solver: order exceeds the history".into()))?;
                self.lambda_at(si)
            })
            .collect()
    }

    /// The shared tail of both updates:
    /// `exp(−τ²h)·(σ_t/σ_s0)·x + Σ (1+τ²)σ_t e^{−τ²λ_t} c_k m_k + σ_t √(1 − e^{−2τ²h})·noise`.
    #[allow(clippy::too_many_arguments)]
    fn update(
        x: &Tensor,
        outputs: &[&Tensor],
        coeffs: &[f32],
        noise: Option<&Tensor>,
        sigma_t: f32,
        sigma_s0: f32,
        lambda_t: f32,
        h: f32,
        tau: f32,
    ) -> Result<Tensor> {
        let t2 = tau * tau;
        let k = 1.0 + t2;
        // (1 + τ²) · σ_t · exp(−τ² λ_t), then · c_k, as diffusers multiplies left to right.
        let scale = k * sigma_t * (-t2 * lambda_t).exp();
        let mut grad: Option<Tensor> = None;
        for (c, m) in coeffs.iter().zip(outputs) {
            let term = mul_s(m, scale * c)?;
            grad = Some(match grad {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        let grad = grad.ok_or_else(|| Error::InvalidInput("SA-Solver: empty update".into()))?;
        let mut x_t = (mul_s(x, (-t2 * h).exp() * (sigma_t / sigma_s0))? + grad)?;
        let noise_coeff = sigma_t * (1.0 - (-2.0 * t2 * h).exp()).sqrt();
        if noise_coeff != 0.0 {
            let noise = noise.ok_or_else(|| Error::InvalidInput("SA-Solver needs noise at every step".into()))?;
            x_t = (x_t + mul_s(noise, noise_coeff)?)?;
        }
        Ok(x_t)
    }
}

/// ∫ e^{(1+τ²)λ} λ^order dλ over [start, end] in closed form, f32
/// (`get_coefficients_exponential_positive`).
fn exp_positive(order: usize, start: f32, end: f32, tau: f32) -> Result<f32> {
    let k = 1.0 + tau * tau;
    let ec = k * end;
    let sc = k * start;
    let e = (-(ec - sc)).exp();
    Ok(match order {
        0 => ec.exp() * (1.0 - e) / k,
        1 => ec.exp() * ((ec - 1.0) - (sc - 1.0) * e) / (k * k),
        2 => ec.exp() * ((ec * ec - 2.0 * ec + 2.0) - (sc * sc - 2.0 * sc + 2.0) * e) / (k * k * k),
        3 => {
            ec.exp()
                * ((ec * ec * ec - 3.0 * (ec * ec) + 6.0 * ec - 6.0)
                    - (sc * sc * sc - 3.0 * (sc * sc) + 6.0 * sc - 6.0) * e)
                / (k * k * k * k)
        }
        _ => return Err(Error::InvalidInput(format!("SA-Solver: order {order} unsupported"))),
    })
}

/// Coefficients of the Lagrange basis polynomials through `l` (`lagrange_polynomial_coefficient`),
/// row i = coefficients of ℓ_i from the highest power down.
fn lagrange(l: &[f32]) -> Result<Vec<Vec<f32>>> {
    Ok(match *l {
        [_] => vec![vec![1.0]],
        [l0, l1] => vec![
            vec![1.0 / (l0 - l1), -l1 / (l0 - l1)],
            vec![1.0 / (l1 - l0), -l0 / (l1 - l0)],
        ],
        [l0, l1, l2] => {
            let d1 = (l0 - l1) * (l0 - l2);
            let d2 = (l1 - l0) * (l1 - l2);
            let d3 = (l2 - l0) * (l2 - l1);
            vec![
                vec![1.0 / d1, (-l1 - l2) / d1, l1 * l2 / d1],
                vec![1.0 / d2, (-l0 - l2) / d2, l0 * l2 / d2],
                vec![1.0 / d3, (-l0 - l1) / d3, l0 * l1 / d3],
            ]
        }
        [l0, l1, l2, l3] => {
            let d1 = (l0 - l1) * (l0 - l2) * (l0 - l3);
            let d2 = (l1 - l0) * (l1 - l2) * (l1 - l3);
            let d3 = (l2 - l0) * (l2 - l1) * (l2 - l3);
            let d4 = (l3 - l0) * (l3 - l1) * (l3 - l2);
            vec![
                vec![
                    1.0 / d1,
                    (-l1 - l2 - l3) / d1,
                    (l1 * l2 + l1 * l3 + l2 * l3) / d1,
                    (-l1 * l2 * l3) / d1,
                ],
                vec![
                    1.0 / d2,
                    (-l0 - l2 - l3) / d2,
                    (l0 * l2 + l0 * l3 + l2 * l3) / d2,
                    (-l0 * l2 * l3) / d2,
                ],
                vec![
                    1.0 / d3,
                    (-l0 - l1 - l3) / d3,
                    (l0 * l1 + l0 * l3 + l1 * l3) / d3,
                    (-l0 * l1 * l3) / d3,
                ],
                vec![
                    1.0 / d4,
                    (-l0 - l1 - l2) / d4,
                    (l0 * l1 + l0 * l2 + l1 * l2) / d4,
                    (-l0 * l1 * l2) / d4,
                ],
            ]
        }
        _ => return Err(Error::InvalidInput(format!("SA-Solver: order {} unsupported", l.len()))),
    })
}

/// `get_coefficients_fn` in data-prediction mode.
fn coefficients(start: f32, end: f32, lambdas: &[f32], tau: f32) -> Result<Vec<f32>> {
    let order = lambdas.len();
    let lag = lagrange(lambdas)?;
    let mut out = Vec::with_capacity(order);
    for row in &lag {
        let mut c = 0f32;
        for (j, &lij) in row.iter().enumerate() {
            c += lij * exp_positive(order - 1 - j, start, end, tau)?;
        }
        out.push(c);
    }
    Ok(out)
}

impl Scheduler for SaSolver {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let cfg = &self.config;
        let t_train = cfg.betas.num_train_timesteps;
        schedule::check_steps(n, t_train)?;
        let last = schedule::last_timestep(&self.alphas_cumprod, cfg.lambda_min_clipped);
        let mut timesteps = schedule::multistep_timesteps(cfg.timestep_spacing, n, t_train, last, cfg.steps_offset);
        let train_sigmas = schedule::train_sigmas(&self.alphas_cumprod);
        let sigmas: Vec<f64> = if cfg.use_karras_sigmas {
            let (Some(&lo), Some(&hi)) = (train_sigmas.first(), train_sigmas.last()) else {
                return Err(Error::InvalidInput("empty training schedule".into()));
            };
            let mut sig = schedule::karras_sigmas(lo as f64, hi as f64, n);
            let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
            timesteps = sig
                .iter()
                .map(|&s| schedule::sigma_to_t(s, &log_sigmas).round_ties_even())
                .collect();
            let last = sig.last().copied().unwrap_or(lo as f64);
            sig.push(last);
            sig
        } else {
            let mut sig: Vec<f64> = timesteps.iter().map(|&t| schedule::interp(t, &train_sigmas)).collect();
            sig.push(at(&train_sigmas, 0, "sigma")? as f64);
            sig
        };
        self.sigmas = sigmas.into_iter().map(|s| s as f32).collect();
        self.timesteps = timesteps;
        let slots = self.model_outputs.len();
        self.model_outputs = vec![None; slots];
        self.timestep_list = vec![None; slots];
        self.lower_order_nums = 0;
        self.last = None;
        self.this_corrector_order = 1;
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
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let n = self.timesteps.len();
        self.counter.begin(step_index, n)?;
        same_shape("model_output", sample, model_output)?;
        if let Some(noise) = noise {
            same_shape("noise", sample, noise)?;
        }
        let i = step_index;
        let cfg = self.config.clone();
        let out_dtype = model_output.dtype();
        let mut sample = f32(sample)?;
        let x0 = data_prediction(
            cfg.prediction_type,
            &f32(model_output)?,
            &sample,
            at(&self.sigmas, i, "sigma")?,
        )?;

        // Corrector: refine this step's sample with the new data prediction.
        if let (true, Some((last_sample, last_noise))) = (i > 0, self.last.as_ref()) {
            let prev_t = self.timestep_list.last().copied().flatten().unwrap_or(f64::NAN);
            let tau = cfg.tau.at(prev_t);
            let order = self.this_corrector_order;
            let sigma_t = at(&self.sigmas, i, "sigma")?;
            let sigma_s0 = at(&self.sigmas, i - 1, "sigma")?;
            let (_, st) = alpha_sigma(sigma_t);
            let (_, ss0) = alpha_sigma(sigma_s0);
            let (lambda_t, lambda_s0) = (lambda(sigma_t), lambda(sigma_s0));
            let h = lambda_t - lambda_s0;
            let lambdas = self.lambda_list(i, order)?;
            let mut c = coefficients(lambda_s0, lambda_t, &lambdas, tau)?;
            if order == 2 {
                let k = 1.0 + tau * tau;
                let corr = 1.0 * (k * lambda_t).exp() * (h / 2.0 - (h * k - 1.0 + (k * -h).exp()) / (k * k * h));
                c[0] += corr;
                c[1] -= corr;
            }
            // model_prev_list = model_outputs + [this], newest first.
            let mut outputs: Vec<&Tensor> = vec![&x0];
            for slot in self.model_outputs.iter().rev().take(order.saturating_sub(1)) {
                outputs.push(
                    slot.as_ref()
                        .ok_or_else(|| Error::InvalidInput("SA-Solver: missing history".into()))?,
                );
            }
            sample = Self::update(
                last_sample,
                &outputs,
                &c,
                last_noise.as_ref(),
                st,
                ss0,
                lambda_t,
                h,
                tau,
            )?;
        }

        let t = at(&self.timesteps, i, "timestep")?;
        self.model_outputs.rotate_left(1);
        self.timestep_list.rotate_left(1);
        if let Some(s) = self.model_outputs.last_mut() {
            *s = Some(x0);
        }
        if let Some(s) = self.timestep_list.last_mut() {
            *s = Some(t);
        }

        let (p, c) = if cfg.lower_order_final {
            (cfg.predictor_order.min(n - i), cfg.corrector_order.min(n - i + 1))
        } else {
            (cfg.predictor_order, cfg.corrector_order)
        };
        let predictor_order = p.min(self.lower_order_nums + 1);
        self.this_corrector_order = c.min(self.lower_order_nums + 2);
        let noise = noise.map(f32).transpose()?;
        self.last = Some((sample.clone(), noise.clone()));

        // Predictor: stochastic Adams-Bashforth to the next level.
        let tau = cfg.tau.at(t);
        let sigma_t = at(&self.sigmas, i + 1, "sigma")?;
        let sigma_s0 = at(&self.sigmas, i, "sigma")?;
        let (_, st) = alpha_sigma(sigma_t);
        let (_, ss0) = alpha_sigma(sigma_s0);
        let (lambda_t, lambda_s0) = (lambda(sigma_t), lambda(sigma_s0));
        let h = lambda_t - lambda_s0;
        let lambdas = self.lambda_list(i, predictor_order)?;
        let mut coeffs = coefficients(lambda_s0, lambda_t, &lambdas, tau)?;
        if predictor_order == 2 {
            let k = 1.0 + tau * tau;
            let temp_lambda_s = self.lambda_at(i.wrapping_sub(1))?;
            let corr = 1.0 * (k * lambda_t).exp() * (h * h / 2.0 - (h * k - 1.0 + (k * -h).exp()) / (k * k))
                / (lambda_s0 - temp_lambda_s);
            coeffs[0] += corr;
            coeffs[1] -= corr;
        }
        let mut outputs: Vec<&Tensor> = Vec::with_capacity(predictor_order);
        for slot in self.model_outputs.iter().rev().take(predictor_order) {
            outputs.push(
                slot.as_ref()
                    .ok_or_else(|| Error::InvalidInput("SA-Solver: missing history".into()))?,
            );
        }
        let prev = Self::update(&sample, &outputs, &coeffs, noise.as_ref(), st, ss0, lambda_t, h, tau)?;

        if self.lower_order_nums < self.model_outputs.len() {
            self.lower_order_nums += 1;
        }
        self.counter.finish(i);
        Ok(prev.to_dtype(out_dtype)?)
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
