//! `scheduler/scheduler_config.json` as diffusers writes it, with string options as enums.
//!
//! Every key is optional: a key the file lacks takes the diffusers default of the scheduler
//! class being built (diffusers 0.42.1, the `__init__` defaults of `DPMSolverMultistepScheduler`,
//! `DDIMScheduler`, `EulerAncestralDiscreteScheduler`, `SASolverScheduler`, `DDPMScheduler` and `LCMScheduler`), exactly as
//! `Class.from_config(file)` does. Unknown keys are ignored. diffusers writes non-finite floats
//! as the bare JSON extensions `-Infinity`, `Infinity` and `NaN` (PixArt-Σ's file has
//! `"lambda_min_clipped": -Infinity`); they are accepted here and then validated.
use std::path::Path;

use pixart_core::{Error, Result};
use serde::{Deserialize, Deserializer};

/// `_class_name` values this crate can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerClass {
    /// `DPMSolverMultistepScheduler`.
    DpmSolverMultistep,
    /// `DDIMScheduler`.
    Ddim,
    /// `EulerAncestralDiscreteScheduler`.
    EulerAncestralDiscrete,
    /// `SASolverScheduler`.
    SaSolver,
    /// `DDPMScheduler`.
    Ddpm,
    /// `LCMScheduler`.
    Lcm,
}

impl SchedulerClass {
    /// The class for a diffusers `_class_name`, if supported.
    pub fn from_class_name(name: &str) -> Option<Self> {
        match name {
            "DPMSolverMultistepScheduler" => Some(Self::DpmSolverMultistep),
            "DDIMScheduler" => Some(Self::Ddim),
            "EulerAncestralDiscreteScheduler" => Some(Self::EulerAncestralDiscrete),
            "SASolverScheduler" => Some(Self::SaSolver),
            "DDPMScheduler" => Some(Self::Ddpm),
            "LCMScheduler" => Some(Self::Lcm),
            _ => None,
        }
    }
}

/// `beta_schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end, T)` in f32.
    Linear,
    /// `linspace(√beta_start, √beta_end, T)²` in f32.
    ScaledLinear,
    /// Cosine schedule (`betas_for_alpha_bar`, computed in f64, max beta 0.999).
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// `timestep_spacing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

/// `prediction_type`: what the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise ε.
    Epsilon,
    /// v = α ε − σ x0.
    VPrediction,
    /// The clean sample x0.
    Sample,
    /// Flow matching velocity (parsed, not supported by these samplers).
    FlowPrediction,
}

/// `algorithm_type` (DPM-Solver values and SA-Solver values share the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AlgorithmType {
    /// `dpmsolver++` (diffusers also maps the legacy `deis` to it).
    #[serde(rename = "dpmsolver++", alias = "deis")]
    DpmSolverPp,
    /// `sde-dpmsolver++` (parsed, not supported).
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPp,
    /// `dpmsolver` (deprecated in diffusers; parsed, not supported).
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    /// `sde-dpmsolver` (deprecated in diffusers; parsed, not supported).
    #[serde(rename = "sde-dpmsolver")]
    SdeDpmSolver,
    /// SA-Solver in data-prediction mode.
    #[serde(rename = "data_prediction")]
    DataPrediction,
    /// SA-Solver in noise-prediction mode (parsed, not supported).
    #[serde(rename = "noise_prediction")]
    NoisePrediction,
}

/// `solver_type` of DPM-Solver++ second-order steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    /// diffusers maps the UniPC/DEIS names `logrho`, `bh1`, `bh2` to midpoint.
    #[serde(alias = "logrho", alias = "bh1", alias = "bh2")]
    Midpoint,
    Heun,
}

/// `final_sigmas_type`: the noise level after the last DPM-Solver++ step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmasType {
    /// σ = 0: the last step returns the data prediction.
    Zero,
    /// σ = σ(t = 0) of the training schedule.
    SigmaMin,
}

/// diffusers' `scheduler_config.json`: every key optional, unknown keys ignored.
///
/// Build a sampler from it with [`crate::from_config`]; the per-class configs
/// ([`crate::DpmSolverConfig`], ...) resolve the missing keys to that class's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<usize>,
    #[serde(default, deserialize_with = "de_f64")]
    pub beta_start: Option<f64>,
    #[serde(default, deserialize_with = "de_f64")]
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<BetaSchedule>,
    #[serde(default, deserialize_with = "de_f64_vec")]
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<PredictionType>,
    pub timestep_spacing: Option<TimestepSpacing>,
    pub steps_offset: Option<i64>,
    pub rescale_betas_zero_snr: Option<bool>,
    pub thresholding: Option<bool>,
    #[serde(default, deserialize_with = "de_f64")]
    pub dynamic_thresholding_ratio: Option<f64>,
    #[serde(default, deserialize_with = "de_f64")]
    pub sample_max_value: Option<f64>,
    pub variance_type: Option<String>,
    // DPM-Solver / SA-Solver
    pub algorithm_type: Option<AlgorithmType>,
    pub solver_order: Option<usize>,
    pub solver_type: Option<SolverType>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub use_flow_sigmas: Option<bool>,
    pub use_dynamic_shifting: Option<bool>,
    #[serde(default, deserialize_with = "de_f64")]
    pub flow_shift: Option<f64>,
    pub final_sigmas_type: Option<FinalSigmasType>,
    #[serde(default, deserialize_with = "de_f64")]
    pub lambda_min_clipped: Option<f64>,
    pub predictor_order: Option<usize>,
    pub corrector_order: Option<usize>,
    // DDIM
    pub clip_sample: Option<bool>,
    #[serde(default, deserialize_with = "de_f64")]
    pub clip_sample_range: Option<f64>,
    pub set_alpha_to_one: Option<bool>,
    // LCM
    pub original_inference_steps: Option<usize>,
    #[serde(default, deserialize_with = "de_f64")]
    pub timestep_scaling: Option<f64>,
}

impl SchedulerConfig {
    /// PixArt-Σ's `scheduler/scheduler_config.json` (PixArt-alpha/PixArt-Sigma-XL-2-1024-MS).
    pub fn pixart_sigma() -> Self {
        Self {
            class_name: Some("DPMSolverMultistepScheduler".into()),
            num_train_timesteps: Some(1000),
            beta_start: Some(1e-4),
            beta_end: Some(0.02),
            beta_schedule: Some(BetaSchedule::Linear),
            prediction_type: Some(PredictionType::Epsilon),
            timestep_spacing: Some(TimestepSpacing::Linspace),
            steps_offset: Some(0),
            thresholding: Some(false),
            algorithm_type: Some(AlgorithmType::DpmSolverPp),
            solver_order: Some(2),
            solver_type: Some(SolverType::Midpoint),
            lower_order_final: Some(true),
            euler_at_final: Some(false),
            use_karras_sigmas: Some(false),
            use_lu_lambdas: Some(false),
            final_sigmas_type: Some(FinalSigmasType::Zero),
            lambda_min_clipped: Some(f64::NEG_INFINITY),
            ..Self::default()
        }
    }

    /// Reads and validates a `scheduler_config.json`; errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text).map_err(|msg| Error::config(path, msg))
    }

    /// Parses and validates config JSON held in memory.
    pub fn from_json(text: &str) -> Result<Self> {
        Self::parse(text).map_err(|msg| Error::InvalidInput(format!("scheduler config: {msg}")))
    }

    fn parse(text: &str) -> std::result::Result<Self, String> {
        let text = quote_non_finite(text);
        let de = &mut serde_json::Deserializer::from_str(&text);
        let cfg: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            if key.is_empty() || key == "." {
                format!("invalid scheduler config: {inner}")
            } else {
                format!("invalid scheduler config: key `{key}`: {inner}")
            }
        })?;
        cfg.check().map_err(|e| format!("invalid scheduler config: {e}"))?;
        Ok(cfg)
    }

    /// Checks values that no scheduler accepts: non-finite floats (`lambda_min_clipped` may be
    /// −∞, its default), zero training timesteps.
    pub fn validate(&self) -> Result<()> {
        self.check()
            .map_err(|e| Error::InvalidInput(format!("invalid scheduler config: {e}")))
    }

    fn check(&self) -> std::result::Result<(), String> {
        let finite = [
            ("beta_start", self.beta_start),
            ("beta_end", self.beta_end),
            ("dynamic_thresholding_ratio", self.dynamic_thresholding_ratio),
            ("sample_max_value", self.sample_max_value),
            ("flow_shift", self.flow_shift),
            ("clip_sample_range", self.clip_sample_range),
            ("timestep_scaling", self.timestep_scaling),
        ];
        for (key, v) in finite {
            if let Some(v) = v {
                if !v.is_finite() {
                    return Err(format!("`{key}` must be a finite number, got {v}"));
                }
            }
        }
        if let Some(betas) = &self.trained_betas {
            if let Some((i, b)) = betas.iter().enumerate().find(|(_, b)| !b.is_finite()) {
                return Err(format!("`trained_betas[{i}]` must be a finite number, got {b}"));
            }
        }
        if let Some(l) = self.lambda_min_clipped {
            if l.is_nan() || l == f64::INFINITY {
                return Err(format!("`lambda_min_clipped` must be a number or -Infinity, got {l}"));
            }
        }
        if self.num_train_timesteps == Some(0) {
            return Err("`num_train_timesteps` must be at least 1".into());
        }
        if let Some(n) = self.num_train_timesteps.filter(|n| *n > MAX_TRAIN_TIMESTEPS) {
            return Err(format!(
                "`num_train_timesteps` is {n}, more than this engine supports ({MAX_TRAIN_TIMESTEPS})"
            ));
        }
        Ok(())
    }

    /// The class named by `_class_name`, if any and supported.
    pub fn class(&self) -> Option<SchedulerClass> {
        self.class_name.as_deref().and_then(SchedulerClass::from_class_name)
    }
}

/// The largest training schedule accepted (diffusers' schedulers use 1000).
const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// Quotes the bare non-finite float tokens Python's `json` writes (`-Infinity`, `Infinity`,
/// `NaN`) outside strings, so that serde_json can read them as strings.
fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else {
            let token = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|t| rest.starts_with(t));
            if let Some(t) = token {
                out.push('"');
                out.push_str(t);
                out.push('"');
                rest = &rest[t.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonF64 {
    Num(f64),
    Str(String),
}

impl JsonF64 {
    fn value<E: serde::de::Error>(self) -> std::result::Result<f64, E> {
        match self {
            JsonF64::Num(v) => Ok(v),
            JsonF64::Str(s) => match s.as_str() {
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                "NaN" => Ok(f64::NAN),
                _ => Err(E::custom(format!("expected a number, got the string {s:?}"))),
            },
        }
    }
}

fn de_f64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    Option::<JsonF64>::deserialize(d)?.map(JsonF64::value).transpose()
}

fn de_f64_vec<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Vec<f64>>, D::Error> {
    match Option::<Vec<JsonF64>>::deserialize(d)? {
        None => Ok(None),
        Some(v) => v
            .into_iter()
            .map(JsonF64::value)
            .collect::<std::result::Result<_, _>>()
            .map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pixart_file_with_infinity() {
        let text = r#"{"_class_name": "DPMSolverMultistepScheduler", "_diffusers_version": "0.22.0.dev0",
            "algorithm_type": "dpmsolver++", "beta_end": 0.02, "beta_schedule": "linear",
            "beta_start": 0.0001, "dynamic_thresholding_ratio": 0.995, "euler_at_final": false,
            "lambda_min_clipped": -Infinity, "lower_order_final": true, "num_train_timesteps": 1000,
            "prediction_type": "epsilon", "sample_max_value": 1.0, "solver_order": 2,
            "solver_type": "midpoint", "steps_offset": 0, "thresholding": false,
            "timestep_spacing": "linspace", "trained_betas": null, "use_karras_sigmas": false,
            "use_lu_lambdas": false, "variance_type": null, "note": "NaN -Infinity \" NaN"}"#;
        let cfg = SchedulerConfig::from_json(text).unwrap();
        assert_eq!(cfg.lambda_min_clipped, Some(f64::NEG_INFINITY));
        assert_eq!(cfg.class(), Some(SchedulerClass::DpmSolverMultistep));
        assert_eq!(cfg.algorithm_type, Some(AlgorithmType::DpmSolverPp));
        assert_eq!(cfg.trained_betas, None);
    }

    #[test]
    fn rejects_non_finite_and_bad_enums() {
        let e = SchedulerConfig::from_json(r#"{"beta_end": NaN}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("beta_end") && e.contains("finite"), "{e}");
        let e = SchedulerConfig::from_json(r#"{"beta_start": Infinity}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("beta_start"), "{e}");
        let e = SchedulerConfig::from_json(r#"{"lambda_min_clipped": Infinity}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lambda_min_clipped"), "{e}");
        let e = SchedulerConfig::from_json(r#"{"trained_betas": [0.1, NaN]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trained_betas[1]"), "{e}");
        let e = SchedulerConfig::from_json(r#"{"timestep_spacing": "sideways"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("timestep_spacing"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
