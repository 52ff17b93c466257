//! The training config (`pixart train --config FILE.toml`). Unknown keys and impossible values
//! are errors that name the key, before any work starts.
use std::path::{Path, PathBuf};

use pixart_core::{Error, Result};
use pixart_model::{KvCompressConfig, TransformerConfig};
use serde::{Deserialize, Serialize};

use crate::diffusion::LossWeighting;
use crate::optim::{positive, LrSchedule, OptimizerConfig};

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelSection,
    pub data: DataSection,
    pub train: TrainSection,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub lora: Option<LoraSection>,
    pub output: OutputSection,
}

/// `[model]`: what to train, and the weak-to-strong switches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A transformer `config.json` to train from scratch (PixArt's initialisation).
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// Or: a checkpoint to start from (a `transformer/` folder, a pipeline folder, a training
    /// checkpoint folder, an original `.pth`/`.safetensors`).
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// A diffusers pipeline folder with `text_encoder/`, `tokenizer/`, `vae/`, `scheduler/`:
    /// the null caption for caption dropout and the sample images come from it.
    pub base: PathBuf,
    /// Weak-to-strong (a): a new latent `sample_size` (resolution raised).
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// Weak-to-strong (a): the PE interpolation scale for the new resolution.
    #[serde(default)]
    pub interpolation_scale: Option<f64>,
    /// Weak-to-strong (b): KV compression, `conv:2:14-27` style (`none` turns it off); layers
    /// without weights start from averaging.
    #[serde(default)]
    pub kv_compress: Option<String>,
    /// Weak-to-strong (d): a finer patch. Only 1 is accepted when it differs from the
    /// checkpoint's; the patch layers are rewritten by [`crate::patch::to_unit_patch`] (pair it
    /// with `interpolation_scale` = the old patch size to keep positions in the trained range).
    #[serde(default)]
    pub patch_size: Option<usize>,
    /// How a from-scratch `config` initialises the caption path (`caption_projection` and the
    /// cross-attention output projections): `pixart` (the default: normal 0.02 and zero) or
    /// `pytorch` (nn.Linear's default uniform ±1/√fan_in, so the caption reaches the output
    /// from the first step).
    #[serde(default)]
    pub caption_init: CaptionInit,
}

/// See [`ModelSection::caption_init`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptionInit {
    #[default]
    Pixart,
    Pytorch,
}

/// `[data]`: precomputed features (`pixart extract`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub features: PathBuf,
    /// Probability of the long (dense) caption per sample (PixArt: 0.5).
    #[serde(default = "half")]
    pub long_caption_ratio: f64,
    /// Probability of replacing the caption by the null caption (PixArt: 0.1).
    #[serde(default = "tenth")]
    pub caption_dropout: f64,
}

fn half() -> f64 {
    0.5
}
fn tenth() -> f64 {
    0.1
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub steps: u64,
    pub batch_size: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    pub lr: f64,
    #[serde(default)]
    pub warmup: u64,
    /// After the warm-up: `constant` (the default, PixArt's), `cosine` or `linear` decay to 0 at
    /// the last step.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Max global gradient norm (PixArt-Σ: 0.01 with CAME; none: no clipping).
    #[serde(default)]
    pub grad_clip: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    /// Parameter dtype: f32 or bf16 (master weights and optimiser state stay f32).
    #[serde(default = "f32_name")]
    pub dtype: String,
    /// EMA decay of the weights (none: no EMA).
    #[serde(default)]
    pub ema: Option<f64>,
    /// Recompute each transformer block in the backward pass instead of keeping its
    /// activations.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// cpu, cuda, cuda:N or auto.
    #[serde(default = "cpu_name")]
    pub device: String,
    /// Per-timestep weight of the ε-MSE: `epsilon` (PixArt's, the default), `min-snr:GAMMA`
    /// or `inv-snr:GAMMA` (see [`LossWeighting`]).
    #[serde(default)]
    pub loss_weighting: LossWeighting,
    /// Weight of the object's latent cells in the ε-MSE, the background's being 1
    /// ([`crate::diffusion::object_weights`]; none: PixArt's plain mean). For images of one object
    /// on a plain background, such as the demo dataset.
    #[serde(default)]
    pub object_weight: Option<f64>,
}

fn one() -> usize {
    1
}
fn f32_name() -> String {
    "f32".into()
}
fn cpu_name() -> String {
    "cpu".into()
}

/// `[lora]`: train low-rank adapters on the named linear layers instead of all weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    pub rank: usize,
    #[serde(default)]
    pub alpha: Option<f64>,
    /// Suffixes of linear layers to adapt, e.g. `attn1.to_q`, `to_k`, `ff.net.2`.
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
}

fn default_targets() -> Vec<String> {
    ["to_q", "to_k", "to_v", "to_out.0"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub dir: PathBuf,
    #[serde(default = "hundred")]
    pub checkpoint_every: u64,
    #[serde(default = "two")]
    pub keep_checkpoints: usize,
    #[serde(default = "ten")]
    pub log_every: u64,
    /// Sample images every N steps (0: never) on fixed prompts and seeds.
    #[serde(default)]
    pub sample_every: u64,
    #[serde(default)]
    pub sample_prompts: Vec<String>,
    #[serde(default)]
    pub sample_seed: u64,
    #[serde(default = "twenty")]
    pub sample_steps: usize,
    #[serde(default = "guidance")]
    pub sample_guidance: f64,
}

fn hundred() -> u64 {
    100
}
fn two() -> usize {
    2
}
fn ten() -> u64 {
    10
}
fn twenty() -> usize {
    20
}
fn guidance() -> f64 {
    4.5
}

/// The largest `train.batch_size` (larger ones cannot be allocated).
pub const MAX_BATCH_SIZE: usize = 4096;
/// The largest `lora.rank`.
pub const MAX_LORA_RANK: usize = 1024;
/// The largest `output.sample_steps` (the pipeline's limit).
pub const MAX_SAMPLE_STEPS: usize = 1000;
/// The most `output.sample_prompts` (they are sampled as one batch).
pub const MAX_SAMPLE_PROMPTS: usize = 64;
/// The largest `output.sample_guidance`.
pub const MAX_SAMPLE_GUIDANCE: f64 = 50.0;

/// Parses a TOML config (`pixart train`, `pixart train-vae`). An error is one line:
/// `line L, column C: KEY: message`, the key (`train.lr`) where serde knows it (the toml crate's
/// own rendering is a multi-line snippet).
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> std::result::Result<T, String> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_error(text, &e, ""))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key.is_empty() || key == "." {
            String::new()
        } else {
            key
        };
        toml_error(text, e.inner(), &key)
    })
}

/// `line L, column C: KEY: message` (the parts that are known) for a toml error.
fn toml_error(text: &str, e: &toml::de::Error, key: &str) -> String {
    let mut out = String::new();
    if let Some(s) = e.span() {
        let (line, column) = line_column(text, s.start);
        out = format!("line {line}, column {column}: ");
    }
    if !key.is_empty() {
        out.push_str(key);
        out.push_str(": ");
    }
    out.push_str(&e.message().split_whitespace().collect::<Vec<_>>().join(" "));
    out
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

impl TrainConfig {
    /// Reads and checks `path`; relative paths in it are relative to the file's folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg: TrainConfig = parse_toml(&text).map_err(|m| Error::config(path, m))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(dir);
        cfg.validate().map_err(|m| Error::config(path, m))?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, dir: &Path) {
        // Absolute, so that the config.toml a run writes can be read from its own folder.
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                let joined = dir.join(&*p);
                *p = std::path::absolute(&joined).unwrap_or(joined);
            }
        };
        if let Some(p) = self.model.config.as_mut() {
            fix(p);
        }
        if let Some(p) = self.model.init.as_mut() {
            fix(p);
        }
        fix(&mut self.model.base);
        fix(&mut self.data.features);
        fix(&mut self.output.dir);
    }

    /// Checks values, naming the key at fault.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let m = &self.model;
        match (&m.config, &m.init) {
            (None, None) => {
                return Err("model: give `config` (train from scratch) or `init` (start from weights)".into())
            }
            (Some(_), Some(_)) => return Err("model: give either `config` or `init`, not both".into()),
            _ => {}
        }
        if let Some(p) = m.config.as_ref().filter(|p| !p.is_file()) {
            return Err(format!("model.config: {} does not exist", p.display()));
        }
        if let Some(p) = m.init.as_ref().filter(|p| !p.exists()) {
            return Err(format!("model.init: {} does not exist", p.display()));
        }
        if !m.base.is_dir() {
            return Err(format!("model.base: {} is not a folder", m.base.display()));
        }
        if m.sample_size == Some(0) {
            return Err("model.sample_size must be positive".into());
        }
        if m.caption_init != CaptionInit::Pixart && m.config.is_none() {
            return Err("model.caption_init applies only to a from-scratch `config`, not to `init` weights".into());
        }
        if m.patch_size == Some(0) {
            return Err("model.patch_size must be positive".into());
        }
        if let Some(s) = m.interpolation_scale.filter(|s| !positive(*s)) {
            return Err(format!("model.interpolation_scale must be positive, got {s}"));
        }
        let d = &self.data;
        if !d.features.is_dir() {
            return Err(format!("data.features: {} is not a folder", d.features.display()));
        }
        for (k, v) in [
            ("long_caption_ratio", d.long_caption_ratio),
            ("caption_dropout", d.caption_dropout),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("data.{k} must be in [0, 1], got {v}"));
            }
        }
        let t = &self.train;
        if t.steps == 0 {
            return Err("train.steps must be positive".into());
        }
        if t.batch_size == 0 {
            return Err("train.batch_size must be positive".into());
        }
        if t.batch_size > MAX_BATCH_SIZE {
            return Err(format!(
                "train.batch_size {} is more than {MAX_BATCH_SIZE}",
                t.batch_size
            ));
        }
        if t.grad_accum == 0 {
            return Err("train.grad_accum must be positive".into());
        }
        if !positive(t.lr) {
            return Err(format!("train.lr must be positive, got {}", t.lr));
        }
        if let Some(c) = t.grad_clip.filter(|c| !positive(*c)) {
            return Err(format!("train.grad_clip must be positive, got {c}"));
        }
        if let Some(w) = t.object_weight.filter(|w| !(w.is_finite() && *w >= 1.0)) {
            return Err(format!("train.object_weight must be a number ≥ 1, got {w}"));
        }
        if let Some(e) = t.ema.filter(|e| !(0.0..1.0).contains(e)) {
            return Err(format!("train.ema must be in [0, 1), got {e}"));
        }
        pixart_core::device::parse_dtype(&t.dtype).map_err(|e| format!("train.dtype: {e}"))?;
        self.optimizer.validate()?;
        if let Some(l) = &self.lora {
            if l.rank == 0 {
                return Err("lora.rank must be positive".into());
            }
            if l.rank > MAX_LORA_RANK {
                return Err(format!("lora.rank {} is more than {MAX_LORA_RANK}", l.rank));
            }
            if let Some(a) = l.alpha.filter(|a| !a.is_finite()) {
                return Err(format!("lora.alpha must be a finite number, got {a}"));
            }
            if l.targets.is_empty() {
                return Err("lora.targets must name at least one layer".into());
            }
        }
        let o = &self.output;
        if o.checkpoint_every == 0 || o.log_every == 0 {
            return Err("output.checkpoint_every and output.log_every must be positive".into());
        }
        if o.keep_checkpoints == 0 {
            return Err("output.keep_checkpoints must be at least 1".into());
        }
        if o.sample_every > 0 && o.sample_prompts.is_empty() {
            return Err("output.sample_prompts: give prompts when sample_every > 0".into());
        }
        // The sampling settings are checked here even when sampling is off, so that a bad
        // value never surfaces after training has run.
        if o.sample_prompts.len() > MAX_SAMPLE_PROMPTS {
            return Err(format!(
                "output.sample_prompts: {} prompts, more than {MAX_SAMPLE_PROMPTS}",
                o.sample_prompts.len()
            ));
        }
        if !(1..=MAX_SAMPLE_STEPS).contains(&o.sample_steps) {
            return Err(format!(
                "output.sample_steps must be between 1 and {MAX_SAMPLE_STEPS}, got {}",
                o.sample_steps
            ));
        }
        if !(o.sample_guidance.is_finite() && (0.0..=MAX_SAMPLE_GUIDANCE).contains(&o.sample_guidance)) {
            return Err(format!(
                "output.sample_guidance must be between 0 and {MAX_SAMPLE_GUIDANCE}, got {}",
                o.sample_guidance
            ));
        }
        Ok(())
    }

    /// The KV compression override, parsed for `num_layers`.
    pub fn kv_override(&self, num_layers: usize) -> Result<Option<Option<KvCompressConfig>>> {
        match &self.model.kv_compress {
            None => Ok(None),
            Some(spec) => KvCompressConfig::parse_spec(spec, num_layers)
                .map(Some)
                .map_err(|m| Error::InvalidInput(format!("model.kv_compress: {m}"))),
        }
    }

    /// Applies the weak-to-strong switches to a transformer config.
    pub fn apply_overrides(&self, cfg: &mut TransformerConfig) -> Result<()> {
        if let Some(s) = self.model.sample_size {
            cfg.sample_size = s;
        }
        if let Some(s) = self.model.interpolation_scale {
            cfg.interpolation_scale = Some(s);
        }
        if let Some(p) = self.model.patch_size {
            cfg.patch_size = p;
        }
        if let Some(kv) = self.kv_override(cfg.num_layers)? {
            cfg.kv_compress = kv;
        }
        cfg.validate()
            .map_err(|m| Error::InvalidInput(format!("model: the resulting transformer config is invalid: {m}")))
    }
}
