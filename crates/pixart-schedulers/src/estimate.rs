//! [`CleanEstimate`]: the denoised sample x̂0 that a model output implies at any step, for
//! previews. Every sampler here runs a variance-preserving schedule, so at model timestep t the
//! model input is `x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε` whatever the sampler (Euler ancestral's
//! `scale_model_input` brings its σ-scaled sample to this form), and x̂0 follows from the
//! prediction as in diffusers' DDPM `step` (`pred_original_sample`). Fractional timesteps (the
//! original DPM-Solver's) take ᾱ linearly interpolated between the neighbouring integers.
use candle_core::Tensor;
use pixart_core::Result;

use crate::config::{PredictionType, SchedulerConfig};
use crate::{f32, predict_x0};

/// x̂0 from a model output, for any sampler of one scheduler config.
#[derive(Debug, Clone)]
pub struct CleanEstimate {
    alphas_cumprod: Vec<f32>,
    prediction_type: PredictionType,
}

impl CleanEstimate {
    /// The training schedule and prediction type of `cfg` (errors as the samplers do on a
    /// schedule they cannot build).
    pub fn new(cfg: &SchedulerConfig) -> Result<Self> {
        Ok(Self {
            alphas_cumprod: crate::dpm_solver_pp::beta_config(cfg).alphas_cumprod()?,
            prediction_type: cfg.prediction_type.unwrap_or(PredictionType::Epsilon),
        })
    }

    /// ᾱ at model timestep `t` (clamped to the schedule; linear between integers).
    pub fn alpha_prod(&self, t: f64) -> f32 {
        let last = self.alphas_cumprod.len().saturating_sub(1);
        let t = if t.is_finite() { t.clamp(0.0, last as f64) } else { 0.0 };
        let (lo, hi) = (t.floor() as usize, (t.ceil() as usize).min(last));
        let w = (t - lo as f64) as f32;
        let a = self.alphas_cumprod.get(lo).copied().unwrap_or(1.0);
        let b = self.alphas_cumprod.get(hi).copied().unwrap_or(a);
        a + (b - a) * w
    }

    /// x̂0 (f32) from `model_output` (the prediction channels only) at model timestep `t`,
    /// where `model_input` is what the model was given (after `scale_model_input`).
    pub fn x0(&self, model_output: &Tensor, t: f64, model_input: &Tensor) -> Result<Tensor> {
        // ᾱ is kept away from 0 so that ε-prediction at the last training step stays finite.
        let a = self.alpha_prod(t).max(1e-6);
        predict_x0(
            self.prediction_type,
            &f32(model_output)?,
            &f32(model_input)?,
            a,
            None,
            "preview",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn x0_inverts_the_forward_process() {
        let cfg = SchedulerConfig::pixart_sigma();
        let est = CleanEstimate::new(&cfg).unwrap();
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[0.5f32, -1.0, 2.0], &dev).unwrap();
        let eps = Tensor::new(&[1.0f32, 0.25, -0.5], &dev).unwrap();
        for t in [0.0, 10.0, 499.5, 999.0] {
            let a = est.alpha_prod(t) as f64;
            let xt = ((&x0 * a.sqrt()).unwrap() + (&eps * (1.0 - a).sqrt()).unwrap()).unwrap();
            let got = est.x0(&eps, t, &xt).unwrap().to_vec1::<f32>().unwrap();
            for (g, w) in got.iter().zip([0.5f32, -1.0, 2.0]) {
                assert!((g - w).abs() < 2e-3 * (1.0 / a as f32).sqrt(), "t {t}: {got:?}");
            }
        }
        // Interpolation between integer timesteps, and clamping outside the schedule.
        let mid = est.alpha_prod(10.5);
        assert!(mid < est.alpha_prod(10.0) && mid > est.alpha_prod(11.0));
        assert_eq!(est.alpha_prod(-3.0), est.alpha_prod(0.0));
        assert_eq!(est.alpha_prod(5000.0), est.alpha_prod(999.0));
    }
}
