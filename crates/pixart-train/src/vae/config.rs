//! The `pixart train-vae` config file (TOML). Unknown keys are rejected, and every impossible
//! value is rejected before any work, with the key named.
//!
//! Relative paths (`data.jsonl`, `model.init_from`, `output.dir`) are taken from the config
//! file's folder, so a config works from any working directory.
use std::path::{Path, PathBuf};

use pixart_core::{Error, Result};
use pixart_vae::AutoencoderKlConfig;
use serde::{Deserialize, Serialize};

use crate::config::parse_toml;
use crate::optim::OptimizerConfig;

/// The largest `train.batch_size`.
pub const MAX_BATCH_SIZE: usize = 4096;
/// The widest `model.block_out_channels` entry.
pub const MAX_CHANNELS: usize = 8192;
/// The largest `model.layers_per_block`.
pub const MAX_LAYERS_PER_BLOCK: usize = 16;

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeTrainConfig {
    pub model: ModelSection,
    pub data: DataSection,
    pub train: TrainSection,
    #[serde(default)]
    pub loss: LossSection,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    pub output: OutputSection,
}

/// `[model]`: the `AutoencoderKL` to train (the keys of its diffusers `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// The image size the model is made for (diffusers' `sample_size`); also the default
    /// training size.
    pub sample_size: usize,
    /// Written into `config.json`. Left out, the trainer writes the suggestion it measures at
    /// the end (1 / std of the latents over the data, as LDM's `scale_by_std`).
    #[serde(default)]
    pub scaling_factor: Option<f64>,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// Fine-tune: start from this diffusers VAE folder instead of a fresh initialisation. Its
    /// architecture must equal the keys above.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
}

/// `[data]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// A JSON-lines file of records `{"path": ...}` (other keys ignored); paths relative to
    /// the jsonl's folder.
    pub jsonl: PathBuf,
    /// Training size: images are resized (shorter side) and centre-cropped to size × size.
    /// Default: `model.sample_size`.
    #[serde(default)]
    pub size: Option<usize>,
}

/// `[train]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub batch_size: usize,
    /// Optimiser steps in all (a resumed run continues up to this).
    pub steps: u64,
    /// Peak learning rate (after warm-up).
    pub lr: f64,
    /// Linear warm-up from 0 over this many steps (diffusers' constant schedule with warm-up).
    #[serde(default)]
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this (left out: no clipping).
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// Seeds the initialisation, the data order and the posterior noise.
    #[serde(default)]
    pub seed: u64,
}

/// `[loss]`: weights of the parts (see `pixart_vae::training`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossSection {
    #[serde(default = "one_f")]
    pub l1: f64,
    #[serde(default)]
    pub l2: f64,
    #[serde(default = "kl_default")]
    pub kl: f64,
}

impl Default for LossSection {
    fn default() -> Self {
        Self {
            l1: 1.0,
            l2: 0.0,
            kl: kl_default(),
        }
    }
}

/// `[output]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// Receives `vae/`, `checkpoint.safetensors`, `metrics.jsonl`, `loss.png`, `samples/`.
    pub dir: PathBuf,
    #[serde(default = "five_hundred")]
    pub checkpoint_every: u64,
    #[serde(default = "one_hundred")]
    pub sample_every: u64,
    #[serde(default = "ten")]
    pub log_every: u64,
    /// Images in each reconstruction PNG (the first ones of the data).
    #[serde(default = "eight")]
    pub samples: usize,
}

fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn eight() -> usize {
    8
}
fn thirty_two() -> usize {
    32
}
fn yes() -> bool {
    true
}
fn one_f() -> f64 {
    1.0
}
fn kl_default() -> f64 {
    1e-6
}
fn ten() -> u64 {
    10
}
fn one_hundred() -> u64 {
    100
}
fn five_hundred() -> u64 {
    500
}

impl VaeTrainConfig {
    /// Reads `path`, resolves relative paths against its folder and validates everything
    /// (including that the data file exists). Errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_file_with(path, None, None)
    }

    /// [`Self::from_file`] with `data.jsonl` and `output.dir` replaced by `data` and `out`
    /// (as given: relative to the working directory) when set.
    pub fn from_file_with(path: &Path, data: Option<&Path>, out: Option<&Path>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg = Self::from_toml(&text).map_err(|m| Error::config(path, m))?;
        let base = path.parent().unwrap_or(Path::new(""));
        cfg.data.jsonl = data.map_or_else(|| base.join(&cfg.data.jsonl), Path::to_path_buf);
        cfg.output.dir = out.map_or_else(|| base.join(&cfg.output.dir), Path::to_path_buf);
        cfg.model.init_from = cfg.model.init_from.map(|p| base.join(p));
        if !cfg.data.jsonl.is_file() {
            return Err(Error::config(
                path,
                format!("data.jsonl: {}: no such file", cfg.data.jsonl.display()),
            ));
        }
        if let Some(p) = &cfg.model.init_from {
            if !p.exists() {
                return Err(Error::config(
                    path,
                    format!("model.init_from: {}: no such folder", p.display()),
                ));
            }
        }
        Ok(cfg)
    }

    /// Parses and validates TOML text (paths left as written).
    pub fn from_toml(text: &str) -> std::result::Result<Self, String> {
        let cfg: Self = parse_toml(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The training image size.
    pub fn size(&self) -> usize {
        self.data.size.unwrap_or(self.model.sample_size)
    }

    /// The diffusers config of the model to train.
    pub fn vae_config(&self) -> AutoencoderKlConfig {
        let m = &self.model;
        let n = m.block_out_channels.len();
        AutoencoderKlConfig {
            down_block_types: vec![pixart_vae::config::DOWN_BLOCK.to_string(); n],
            up_block_types: vec![pixart_vae::config::UP_BLOCK.to_string(); n],
            block_out_channels: m.block_out_channels.clone(),
            layers_per_block: m.layers_per_block,
            latent_channels: m.latent_channels,
            norm_num_groups: m.norm_num_groups,
            sample_size: m.sample_size,
            scaling_factor: m.scaling_factor.unwrap_or(1.0),
            mid_block_add_attention: m.mid_block_add_attention,
            force_upcast: false,
            ..AutoencoderKlConfig::default()
        }
    }

    /// Rejects impossible values, naming the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        // Sizes first, before anything derived from them.
        let m = &self.model;
        if let Some(c) = m.block_out_channels.iter().find(|c| **c > MAX_CHANNELS) {
            return Err(format!("model.block_out_channels: {c} is more than {MAX_CHANNELS}"));
        }
        for (key, v, max) in [
            ("model.latent_channels", m.latent_channels, MAX_CHANNELS),
            ("model.norm_num_groups", m.norm_num_groups, MAX_CHANNELS),
            ("model.layers_per_block", m.layers_per_block, MAX_LAYERS_PER_BLOCK),
            ("train.batch_size", self.train.batch_size, MAX_BATCH_SIZE),
        ] {
            if v > max {
                return Err(format!("{key}: {v} is more than {max}"));
            }
        }
        let vae = self.vae_config();
        vae.validate().map_err(|m| format!("model.{m}"))?;
        let f = vae.downsample_factor();
        if self.model.sample_size == 0 || !self.model.sample_size.is_multiple_of(f) {
            return Err(format!(
                "model.sample_size: {} is not a positive multiple of the downsampling factor {f}",
                self.model.sample_size
            ));
        }
        if let Some(s) = self.data.size {
            if s == 0 || !s.is_multiple_of(f) {
                return Err(format!(
                    "data.size: {s} is not a positive multiple of the downsampling factor {f}"
                ));
            }
        }
        if self.size() > 4096 {
            return Err(format!("data.size: {} is larger than 4096", self.size()));
        }
        if let Some(s) = self.model.scaling_factor {
            if !(s.is_finite() && s > 0.0) {
                return Err(format!("model.scaling_factor: {s} is not a positive number"));
            }
        }
        let t = &self.train;
        if t.batch_size == 0 {
            return Err("train.batch_size: must be at least 1".into());
        }
        if t.steps == 0 {
            return Err("train.steps: must be at least 1".into());
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return Err(format!("train.lr: {} is not a positive number", t.lr));
        }
        if let Some(c) = t.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(format!("train.grad_clip: {c} is not a positive number"));
            }
        }
        let l = &self.loss;
        for (key, w) in [("loss.l1", l.l1), ("loss.l2", l.l2), ("loss.kl", l.kl)] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(format!("{key}: {w} is not a number ≥ 0"));
            }
        }
        if l.l1 == 0.0 && l.l2 == 0.0 {
            return Err("loss.l1, loss.l2: at least one reconstruction weight must be positive".into());
        }
        self.optimizer.validate()?;
        let o = &self.output;
        for (key, v) in [
            ("output.checkpoint_every", o.checkpoint_every),
            ("output.sample_every", o.sample_every),
            ("output.log_every", o.log_every),
        ] {
            if v == 0 {
                return Err(format!("{key}: must be at least 1"));
            }
        }
        if o.samples == 0 || o.samples > 64 {
            return Err(format!("output.samples: {} is not in 1..=64", o.samples));
        }
        Ok(())
    }
}
