//! The VAE's configuration: diffusers' `vae/config.json`.
//!
//! Field names and defaults mirror `AutoencoderKL.__init__` in diffusers 0.42.1
//! (`src/diffusers/models/autoencoders/autoencoder_kl.py`).
use std::path::Path;

use pixart_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// `vae/config.json` as diffusers writes it. Unknown keys (`_class_name`,
/// `_diffusers_version`, ...) are ignored; missing keys take diffusers' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKlConfig {
    #[serde(default = "d_three")]
    pub in_channels: usize,
    #[serde(default = "d_three")]
    pub out_channels: usize,
    #[serde(default = "d_down_types")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_up_types")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_block_out")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_one")]
    pub layers_per_block: usize,
    #[serde(default = "d_act")]
    pub act_fn: String,
    #[serde(default = "d_latent")]
    pub latent_channels: usize,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    /// Image size the model was trained at (diffusers uses it as its tile size). diffusers
    /// accepts an int or a `[h, w]` pair; we keep the first value.
    #[serde(default = "d_sample", deserialize_with = "de_sample_size")]
    pub sample_size: usize,
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    #[serde(default = "d_true")]
    pub force_upcast: bool,
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
}

fn d_three() -> usize {
    3
}
fn d_down_types() -> Vec<String> {
    vec![DOWN_BLOCK.to_string()]
}
fn d_up_types() -> Vec<String> {
    vec![UP_BLOCK.to_string()]
}
fn d_block_out() -> Vec<usize> {
    vec![64]
}
fn d_one() -> usize {
    1
}
fn d_act() -> String {
    "silu".to_string()
}
fn d_latent() -> usize {
    4
}
fn d_groups() -> usize {
    32
}
fn d_sample() -> usize {
    32
}
fn d_scaling() -> f64 {
    0.18215
}
fn d_true() -> bool {
    true
}

fn de_sample_size<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        One(usize),
        Many(Vec<usize>),
    }
    match Size::deserialize(d)? {
        Size::One(s) => Ok(s),
        Size::Many(v) => v
            .first()
            .copied()
            .ok_or_else(|| serde::de::Error::custom("sample_size: empty list")),
    }
}

/// The only down block type the KL autoencoders use.
pub const DOWN_BLOCK: &str = "DownEncoderBlock2D";
/// The only up block type the KL autoencoders use.
pub const UP_BLOCK: &str = "UpDecoderBlock2D";

impl Default for AutoencoderKlConfig {
    /// diffusers' defaults (a one-block toy model); see [`AutoencoderKlConfig::sdxl`].
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: d_down_types(),
            up_block_types: d_up_types(),
            block_out_channels: d_block_out(),
            layers_per_block: 1,
            act_fn: d_act(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 32,
            scaling_factor: d_scaling(),
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl AutoencoderKlConfig {
    /// The SDXL VAE that PixArt-Σ uses (`pixart_sigma_sdxlvae_T5_diffusers/vae/config.json`,
    /// which matches `madebyollin/sdxl-vae-fp16-fix`): channels 128/256/512/512, two layers
    /// per block, 32 groups, 4 latent channels, scaling factor 0.13025, no shift.
    pub fn sdxl() -> Self {
        Self {
            down_block_types: vec![DOWN_BLOCK.to_string(); 4],
            up_block_types: vec![UP_BLOCK.to_string(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            sample_size: 512,
            scaling_factor: 0.13025,
            force_upcast: false,
            ..Self::default()
        }
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let class = pixart_core::config::ConfigClass {
            component: "a VAE",
            key: "_class_name",
            names: &["AutoencoderKL"],
        };
        let cfg: Self = pixart_core::config::read_component_config(path, class)?;
        cfg.validate().map_err(|m| Error::config(path, m))?;
        Ok(cfg)
    }

    /// An upper bound of the parameter count, in u128 so that no config can overflow it:
    /// encoder and decoder, (layers + 1) resnets of two 3×3 convs per block at the widest width.
    pub fn parameters_estimate(&self) -> u128 {
        let widest = self.block_out_channels.iter().copied().max().unwrap_or(0) as u128;
        let convs = 2 * (2 * self.layers_per_block as u128 + 3) * self.block_out_channels.len() as u128;
        convs * 9 * widest * widest
    }

    /// Image pixels per latent pixel along each side: `2^(blocks - 1)` (8 for SDXL).
    pub fn downsample_factor(&self) -> usize {
        1usize << self.block_out_channels.len().saturating_sub(1)
    }

    /// Checks what this implementation supports; the message names the offending key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("block_out_channels: must not be empty".into());
        }
        if n > 8 {
            return Err(format!(
                "block_out_channels: {n} blocks is more than this VAE supports (8)"
            ));
        }
        if self.down_block_types.len() != n {
            return Err(format!(
                "down_block_types: {} entries, but block_out_channels has {n}",
                self.down_block_types.len()
            ));
        }
        if self.up_block_types.len() != n {
            return Err(format!(
                "up_block_types: {} entries, but block_out_channels has {n}",
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self.down_block_types.iter().find(|t| *t != DOWN_BLOCK) {
            return Err(format!("down_block_types: `{t}` is not supported (only {DOWN_BLOCK})"));
        }
        if let Some(t) = self.up_block_types.iter().find(|t| *t != UP_BLOCK) {
            return Err(format!("up_block_types: `{t}` is not supported (only {UP_BLOCK})"));
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(format!("act_fn: `{}` is not supported (only silu)", self.act_fn));
        }
        if self.norm_num_groups == 0 {
            return Err("norm_num_groups: must be at least 1".into());
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| **c == 0 || *c % self.norm_num_groups != 0)
        {
            return Err(format!(
                "block_out_channels: {c} is not a positive multiple of norm_num_groups ({})",
                self.norm_num_groups
            ));
        }
        let widest = self.block_out_channels.iter().copied().max().unwrap_or(0);
        pixart_core::config::check_at_most(&[
            ("block_out_channels", widest, 16384),
            ("layers_per_block", self.layers_per_block, 64),
            ("in_channels", self.in_channels, 1024),
            ("out_channels", self.out_channels, 1024),
            ("latent_channels", self.latent_channels, 1024),
            ("sample_size", self.sample_size, 65536),
        ])?;
        pixart_core::config::check_parameters(self.parameters_estimate())?;
        if self.layers_per_block == 0 {
            return Err("layers_per_block: must be at least 1".into());
        }
        for (key, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ] {
            if v == 0 {
                return Err(format!("{key}: must be at least 1"));
            }
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(format!(
                "scaling_factor: {} is not a positive number",
                self.scaling_factor
            ));
        }
        Ok(())
    }
}
