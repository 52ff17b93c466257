//! Choosing and building a sampler from a config file and an optional `--sampler` override.
use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;
use pixart_core::{Error, Result};

use crate::config::{SchedulerClass, SchedulerConfig};
use crate::{
    Ddim, DdimConfig, Ddpm, DdpmConfig, DdpmSpacing, DpmSolverConfig, DpmSolverPp, EulerAncestral,
    EulerAncestralConfig, Lcm, LcmConfig, OriginalDpmSolver, OriginalDpmSolverConfig, SaSolver, SaSolverConfig,
    Scheduler,
};

/// diffusers' `PixArtSigmaPipeline` default number of steps.
pub const DEFAULT_STEPS: usize = 20;
/// diffusers' `PixArtSigmaPipeline` default guidance scale.
pub const DEFAULT_GUIDANCE: f64 = 4.5;

/// Steps for a request that names none: [`SamplerKind::default_steps`] of the sampler that
/// runs (the requested one, else the model's own), [`DEFAULT_STEPS`] when neither is known.
pub fn default_steps(sampler: Option<SamplerKind>) -> usize {
    sampler.map_or(DEFAULT_STEPS, SamplerKind::default_steps)
}

/// Guidance for a request that names none: [`SamplerKind::default_guidance`] of the sampler
/// that runs, [`DEFAULT_GUIDANCE`] when it is not known.
pub fn default_guidance(sampler: Option<SamplerKind>) -> f64 {
    sampler.map_or(DEFAULT_GUIDANCE, SamplerKind::default_guidance)
}

/// The samplers, by their CLI names: `dpm++`, `sa-solver`, `ddim`, `euler-a`, `iddpm`, `ddpm`,
/// `lcm`, `dpm-solver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// `dpm++`: DPM-Solver++ multistep.
    DpmSolverPp,
    /// `sa-solver`: SA-Solver (data prediction, PixArt's demo settings).
    SaSolver,
    /// `ddim`: DDIM.
    Ddim,
    /// `euler-a`: Euler ancestral.
    EulerAncestral,
    /// `iddpm`: PixArt's IDDPM sampler (respaced DDPM with the model's learned variance; the
    /// original repository runs it with 100 steps).
    Iddpm,
    /// `ddpm`: diffusers' `DDPMScheduler` (from a `DDPMScheduler` file: its variance type;
    /// otherwise the fixed posterior variance).
    Ddpm,
    /// `lcm`: the LCM sampler of consistency-distilled models (4 steps, no guidance).
    Lcm,
    /// `dpm-solver`: the original PixArt repository's default sampler (its own DPM-Solver++
    /// 2M on time-uniform continuous steps), as opposed to diffusers' `dpm++`.
    DpmSolverOriginal,
}

impl SamplerKind {
    /// All kinds, in CLI order.
    pub const ALL: [SamplerKind; 8] = [
        Self::DpmSolverPp,
        Self::SaSolver,
        Self::Ddim,
        Self::EulerAncestral,
        Self::Iddpm,
        Self::Ddpm,
        Self::Lcm,
        Self::DpmSolverOriginal,
    ];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::DpmSolverPp => "dpm++",
            Self::SaSolver => "sa-solver",
            Self::Ddim => "ddim",
            Self::EulerAncestral => "euler-a",
            Self::Iddpm => "iddpm",
            Self::Ddpm => "ddpm",
            Self::Lcm => "lcm",
            Self::DpmSolverOriginal => "dpm-solver",
        }
    }

    /// Steps when the user names this sampler and no step count: PixArt's own defaults
    /// (PixArt-alpha/PixArt-sigma@1ce521a, scripts/inference.py `sample_steps_dict`: 20 for
    /// DPM-Solver, 25 for SA-Solver, 100 for IDDPM), else diffusers' pipeline default of 20.
    pub fn default_steps(self) -> usize {
        match self {
            Self::SaSolver => 25,
            Self::Iddpm => 100,
            Self::Lcm => 4,
            Self::DpmSolverPp | Self::Ddim | Self::EulerAncestral | Self::Ddpm | Self::DpmSolverOriginal => {
                DEFAULT_STEPS
            }
        }
    }

    /// Guidance when the request gives none: 0 (no classifier-free guidance) for `lcm`, as
    /// consistency-distilled models such as PixArt-LCM are run, else [`DEFAULT_GUIDANCE`].
    pub fn default_guidance(self) -> f64 {
        match self {
            Self::Lcm => 0.0,
            _ => DEFAULT_GUIDANCE,
        }
    }

    /// The kind a diffusers scheduler class maps to.
    pub fn of_class(class: SchedulerClass) -> Self {
        match class {
            SchedulerClass::DpmSolverMultistep => Self::DpmSolverPp,
            SchedulerClass::Ddim => Self::Ddim,
            SchedulerClass::EulerAncestralDiscrete => Self::EulerAncestral,
            SchedulerClass::SaSolver => Self::SaSolver,
            SchedulerClass::Ddpm => Self::Ddpm,
            SchedulerClass::Lcm => Self::Lcm,
        }
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| Error::InvalidInput(format!("unknown sampler {s:?}; expected one of: {}", kind_names())))
    }
}

/// A sampler of any kind; implements [`Scheduler`] by delegation.
#[derive(Debug, Clone)]
pub enum Sampler {
    DpmSolverPp(DpmSolverPp),
    SaSolver(SaSolver),
    Ddim(Ddim),
    EulerAncestral(EulerAncestral),
    /// `ddpm` and `iddpm` (told apart by [`Sampler::kind`]).
    Ddpm(Ddpm),
    Lcm(Lcm),
    DpmSolverOriginal(OriginalDpmSolver),
}

impl Sampler {
    /// Which kind this is.
    pub fn kind(&self) -> SamplerKind {
        match self {
            Self::DpmSolverPp(_) => SamplerKind::DpmSolverPp,
            Self::SaSolver(_) => SamplerKind::SaSolver,
            Self::Ddim(_) => SamplerKind::Ddim,
            Self::EulerAncestral(_) => SamplerKind::EulerAncestral,
            Self::Ddpm(d) if d.config().spacing == DdpmSpacing::Respaced => SamplerKind::Iddpm,
            Self::Ddpm(_) => SamplerKind::Ddpm,
            Self::Lcm(_) => SamplerKind::Lcm,
            Self::DpmSolverOriginal(_) => SamplerKind::DpmSolverOriginal,
        }
    }

    fn inner(&self) -> &dyn Scheduler {
        match self {
            Self::DpmSolverPp(s) => s,
            Self::SaSolver(s) => s,
            Self::Ddim(s) => s,
            Self::EulerAncestral(s) => s,
            Self::Ddpm(s) => s,
            Self::Lcm(s) => s,
            Self::DpmSolverOriginal(s) => s,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Scheduler {
        match self {
            Self::DpmSolverPp(s) => s,
            Self::SaSolver(s) => s,
            Self::Ddim(s) => s,
            Self::EulerAncestral(s) => s,
            Self::Ddpm(s) => s,
            Self::Lcm(s) => s,
            Self::DpmSolverOriginal(s) => s,
        }
    }
}

impl Scheduler for Sampler {
    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.inner_mut().set_timesteps(n)
    }
    fn timesteps(&self) -> &[f64] {
        self.inner().timesteps()
    }
    fn sigmas(&self) -> &[f32] {
        self.inner().sigmas()
    }
    fn init_noise_sigma(&self) -> f64 {
        self.inner().init_noise_sigma()
    }
    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor> {
        self.inner().scale_model_input(sample, step_index)
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.inner_mut().step(model_output, step_index, sample, noise)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        self.inner().add_noise(original, noise, step_index)
    }
    fn needs_noise(&self) -> bool {
        self.inner().needs_noise()
    }
    fn model_variance(&self) -> bool {
        self.inner().model_variance()
    }
    fn num_train_timesteps(&self) -> usize {
        self.inner().num_train_timesteps()
    }
}

/// Builds the sampler `cfg`'s `_class_name` names, or `kind_override` from the same training
/// schedule (missing keys take the built class's diffusers defaults, like
/// `Class.from_config(cfg)`). DDIM starts with η = 0 (set it with [`Ddim::set_eta`]).
pub fn from_config(cfg: &SchedulerConfig, kind_override: Option<SamplerKind>) -> Result<Sampler> {
    let kind = match (kind_override, cfg.class()) {
        (Some(k), _) => k,
        (None, Some(c)) => SamplerKind::of_class(c),
        (None, None) => {
            return Err(Error::InvalidInput(match &cfg.class_name {
                Some(name) => format!(
                    "scheduler class {name:?} is not supported; choose a sampler ({})",
                    kind_names()
                ),
                None => format!(
                    "scheduler config has no `_class_name`; choose a sampler ({})",
                    kind_names()
                ),
            }))
        }
    };
    Ok(match kind {
        SamplerKind::DpmSolverPp => {
            Sampler::DpmSolverPp(DpmSolverPp::new(DpmSolverConfig::from_scheduler_config(cfg)?)?)
        }
        SamplerKind::SaSolver => Sampler::SaSolver(SaSolver::new(SaSolverConfig::from_scheduler_config(cfg)?)?),
        SamplerKind::Ddim => Sampler::Ddim(Ddim::new(DdimConfig::from_scheduler_config(cfg)?)?),
        SamplerKind::EulerAncestral => {
            Sampler::EulerAncestral(EulerAncestral::new(EulerAncestralConfig::from_scheduler_config(cfg)?)?)
        }
        SamplerKind::Iddpm => Sampler::Ddpm(Ddpm::new(DdpmConfig::iddpm(cfg)?)?),
        SamplerKind::Ddpm => Sampler::Ddpm(Ddpm::new(DdpmConfig::from_scheduler_config(cfg)?)?),
        SamplerKind::Lcm => Sampler::Lcm(Lcm::new(LcmConfig::from_scheduler_config(cfg)?)?),
        SamplerKind::DpmSolverOriginal => Sampler::DpmSolverOriginal(OriginalDpmSolver::new(
            OriginalDpmSolverConfig::from_scheduler_config(cfg)?,
        )?),
    })
}

/// The CLI names, comma-separated.
fn kind_names() -> String {
    let names: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
    names.join(", ")
}
