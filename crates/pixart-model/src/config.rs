//! The transformer's configuration: diffusers' `transformer/config.json` plus our
//! `kv_compress` extension.
//!
//! Field names and defaults mirror `PixArtTransformer2DModel.__init__` in diffusers
//! (`src/diffusers/models/transformers/pixart_transformer_2d.py`, v0.42.1).
use std::path::Path;

use pixart_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// `transformer/config.json` as diffusers writes it. Unknown keys (`_class_name`,
/// `_diffusers_version`, `dropout`, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformerConfig {
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_head_dim")]
    pub attention_head_dim: usize,
    #[serde(default = "d_in")]
    pub in_channels: usize,
    /// `None` means `in_channels`.
    #[serde(default = "d_out")]
    pub out_channels: Option<usize>,
    #[serde(default = "d_layers")]
    pub num_layers: usize,
    #[serde(default = "d_cross")]
    pub cross_attention_dim: Option<usize>,
    #[serde(default = "d_true")]
    pub attention_bias: bool,
    #[serde(default = "d_sample")]
    pub sample_size: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_act")]
    pub activation_fn: String,
    #[serde(default = "d_num_embeds")]
    pub num_embeds_ada_norm: Option<usize>,
    #[serde(default = "d_norm_type")]
    pub norm_type: String,
    #[serde(default)]
    pub norm_elementwise_affine: bool,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    /// PE interpolation; `None` means `max(sample_size // 64, 1)` as in diffusers.
    #[serde(default)]
    pub interpolation_scale: Option<f64>,
    /// PixArt-α micro-conditions. Informational only: whether they are used is decided from
    /// the weights (see [`crate::PixArtTransformer::new`]); an explicit `true` without the
    /// embedder weights is a loading error.
    #[serde(default)]
    pub use_additional_conditions: Option<bool>,
    /// Width of the text features (T5-XXL: 4096). `None`: no caption projection.
    #[serde(default)]
    pub caption_channels: Option<usize>,
    /// KV token compression (our extension; the original code's `kv_compress_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_compress: Option<KvCompressConfig>,
}

fn d_heads() -> usize {
    16
}
fn d_head_dim() -> usize {
    72
}
fn d_in() -> usize {
    4
}
fn d_out() -> Option<usize> {
    Some(8)
}
fn d_layers() -> usize {
    28
}
fn d_cross() -> Option<usize> {
    Some(1152)
}
fn d_true() -> bool {
    true
}
fn d_sample() -> usize {
    128
}
fn d_patch() -> usize {
    2
}
fn d_act() -> String {
    "gelu-approximate".into()
}
fn d_num_embeds() -> Option<usize> {
    Some(1000)
}
fn d_norm_type() -> String {
    "ada_norm_single".into()
}
fn d_eps() -> f64 {
    1e-6
}

/// How keys and values are compressed (`AttentionKVCompress.downsample_2d` in
/// PixArt-alpha/PixArt-sigma@1ce521af, `diffusion/model/nets/PixArt_blocks.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvSampling {
    /// Depthwise R×R stride-R conv + LayerNorm (eps 1e-5), one module shared by K and V.
    Conv,
    /// Every R-th row and column (`tensor[:, :, ::R, ::R]`).
    Uniform,
    /// `F.interpolate(scale_factor=1/R, mode="nearest")`: for integer R the same pick as
    /// `uniform`.
    Ave,
}

impl KvSampling {
    /// Parses `conv`, `uniform` or `ave`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "conv" => Some(Self::Conv),
            "uniform" => Some(Self::Uniform),
            "ave" => Some(Self::Ave),
            _ => None,
        }
    }
}

/// `"kv_compress": {"sampling": "conv", "scale_factor": 2, "layers": [14, ..., 27]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCompressConfig {
    pub sampling: KvSampling,
    pub scale_factor: usize,
    /// 0-based indices of the blocks whose self-attention compresses K and V.
    #[serde(alias = "kv_compress_layer")]
    pub layers: Vec<usize>,
}

impl KvCompressConfig {
    /// Parses the CLI form `SAMPLING[:R[:LAYERS]]` ([`KvCompressSpec::parse`]) and fits it to a
    /// model of `num_layers` blocks ([`KvCompressSpec::resolve`]). `none` or `off` gives `None`.
    pub fn parse_spec(spec: &str, num_layers: usize) -> std::result::Result<Option<Self>, String> {
        KvCompressSpec::parse(spec)?.resolve(num_layers)
    }

    /// Checks the values against a model with `num_layers` blocks.
    pub fn check(&self, num_layers: usize) -> std::result::Result<(), String> {
        if !(1..=MAX_KV_RATIO).contains(&self.scale_factor) {
            return Err(format!(
                "kv_compress.scale_factor must be between 1 and {MAX_KV_RATIO}, got {}",
                self.scale_factor
            ));
        }
        if let Some(&bad) = self.layers.iter().find(|&&l| l >= num_layers) {
            return Err(out_of_range(bad, num_layers));
        }
        Ok(())
    }

    /// Whether block `layer` compresses K and V.
    pub fn applies_to(&self, layer: usize) -> bool {
        self.scale_factor > 1 && self.layers.contains(&layer)
    }
}

fn out_of_range(layer: usize, num_layers: usize) -> String {
    format!(
        "kv_compress.layers names layer {layer}, but the model has {num_layers} layers (0..{})",
        num_layers.saturating_sub(1)
    )
}

/// The largest KV compression ratio (the paper uses 2; a token grid is at most 1024 wide).
pub const MAX_KV_RATIO: usize = 64;

/// A KV compression setting as the CLI spells it, parsed without the model:
/// `SAMPLING[:R[:LAYERS]]` (`conv`, `conv:2`, `uniform:2:14-27`, `conv:2:0,3,10-12`), or `none` /
/// `off`. R defaults to 2 and the layers to the deeper half of the model; which layers those
/// are, and whether the listed ones exist, is settled by [`Self::resolve`] against the model's
/// depth when it is opened ([`crate::loading::open_checkpoint`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCompressSpec {
    /// `none` / `off`: no compression, also on a checkpoint that has it.
    Off,
    /// Compress K and V of the given layers.
    On {
        sampling: KvSampling,
        /// R, in `1..=MAX_KV_RATIO`.
        scale_factor: usize,
        layers: KvLayers,
    },
}

/// The layers of a [`KvCompressSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvLayers {
    /// `num_layers / 2 .. num_layers` (the paper's choice for PixArt-Σ: the deeper half).
    DeeperHalf,
    /// Inclusive ranges as listed (`5` is `(5, 5)`), each with start ≤ end.
    Listed(Vec<(usize, usize)>),
}

impl From<Option<KvCompressConfig>> for KvCompressSpec {
    /// A resolved setting as a spec (`None`: off).
    fn from(kv: Option<KvCompressConfig>) -> Self {
        match kv {
            None => Self::Off,
            Some(kv) => Self::On {
                sampling: kv.sampling,
                scale_factor: kv.scale_factor,
                layers: KvLayers::Listed(kv.layers.iter().map(|&l| (l, l)).collect()),
            },
        }
    }
}

impl KvCompressSpec {
    /// Parses `SAMPLING[:R[:LAYERS]]` or `none` / `off`; the message says what is wrong.
    pub fn parse(spec: &str) -> std::result::Result<Self, String> {
        let spec = spec.trim();
        if spec == "none" || spec == "off" {
            return Ok(Self::Off);
        }
        let mut parts = spec.splitn(3, ':');
        let sampling_s = parts.next().unwrap_or_default();
        let sampling = KvSampling::parse(sampling_s).ok_or_else(|| {
            format!("unknown KV compression sampling `{sampling_s}` (expected conv, uniform, ave or none)")
        })?;
        let scale_factor = match parts.next() {
            None => 2,
            Some(r) => r
                .parse::<usize>()
                .map_err(|_| format!("KV compression ratio `{r}` is not a whole number"))?,
        };
        if !(1..=MAX_KV_RATIO).contains(&scale_factor) {
            return Err(format!(
                "kv_compress.scale_factor must be between 1 and {MAX_KV_RATIO}, got {scale_factor}"
            ));
        }
        let layers = match parts.next() {
            None => KvLayers::DeeperHalf,
            Some(list) => KvLayers::Listed(parse_layer_list(list)?),
        };
        Ok(Self::On {
            sampling,
            scale_factor,
            layers,
        })
    }

    /// The setting for a model of `num_layers` blocks (`None`: off); fails when a listed layer
    /// is not in the model (the message follows the setting's name: `names layer 30, ...`) (checked before a range is expanded, so `0-1000000000000` is
    /// refused rather than allocated).
    pub fn resolve(&self, num_layers: usize) -> std::result::Result<Option<KvCompressConfig>, String> {
        let Self::On {
            sampling,
            scale_factor,
            layers,
        } = self
        else {
            return Ok(None);
        };
        let layers = match layers {
            KvLayers::DeeperHalf => (num_layers / 2..num_layers).collect(),
            KvLayers::Listed(ranges) => {
                if let Some(&(_, b)) = ranges.iter().find(|(_, b)| *b >= num_layers) {
                    return Err(format!(
                        "names layer {b}, but the model has {num_layers} layers (0..{})",
                        num_layers.saturating_sub(1)
                    ));
                }
                let mut out: Vec<usize> = ranges.iter().flat_map(|&(a, b)| a..=b).collect();
                out.sort_unstable();
                out.dedup();
                out
            }
        };
        let kv = KvCompressConfig {
            sampling: *sampling,
            scale_factor: *scale_factor,
            layers,
        };
        kv.check(num_layers)?;
        Ok(Some(kv))
    }
}

/// `2,5,14-27` as inclusive ranges, in the order given (a range's end below its start is
/// refused); whether the layers exist is [`KvCompressSpec::resolve`]'s to check.
fn parse_layer_list(list: &str) -> std::result::Result<Vec<(usize, usize)>, String> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad layer `{s}` in KV compression layer list `{list}`"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("empty layer range `{part}`"));
                }
                out.push((a, b));
            }
            None => {
                let l = num(part)?;
                out.push((l, l));
            }
        }
    }
    Ok(out)
}

impl Default for TransformerConfig {
    /// PixArt-Σ XL/2 at 1024 px as released (`PixArt-Sigma-XL-2-1024-MS/transformer/config.json`).
    fn default() -> Self {
        Self {
            num_attention_heads: 16,
            attention_head_dim: 72,
            in_channels: 4,
            out_channels: Some(8),
            num_layers: 28,
            cross_attention_dim: Some(1152),
            attention_bias: true,
            sample_size: 128,
            patch_size: 2,
            activation_fn: d_act(),
            num_embeds_ada_norm: Some(1000),
            norm_type: d_norm_type(),
            norm_elementwise_affine: false,
            norm_eps: 1e-6,
            interpolation_scale: Some(2.0),
            use_additional_conditions: Some(false),
            caption_channels: Some(4096),
            kv_compress: None,
        }
    }
}

impl TransformerConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let class = pixart_core::config::ConfigClass {
            component: "a PixArt transformer",
            key: "_class_name",
            names: &["PixArtTransformer2DModel", "Transformer2DModel"],
        };
        let cfg: Self = pixart_core::config::read_component_config(path, class)?;
        cfg.validate().map_err(|msg| Error::config(path, msg))?;
        Ok(cfg)
    }

    /// The released PixArt-Σ XL/2 configuration for a latent `sample_size` (32, 64, 128, 256),
    /// with `interpolation_scale = sample_size / 64`.
    pub fn sigma_xl2(sample_size: usize) -> Self {
        Self {
            sample_size,
            interpolation_scale: Some(sample_size as f64 / 64.0),
            ..Self::default()
        }
    }

    /// Checks that the values describe a model we can build; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("in_channels", self.in_channels),
            ("num_layers", self.num_layers),
            ("sample_size", self.sample_size),
            ("patch_size", self.patch_size),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(format!("`{key}` must be positive"));
            }
        }
        pixart_core::config::check_at_most(&[
            ("num_attention_heads", self.num_attention_heads, 1024),
            ("attention_head_dim", self.attention_head_dim, 1024),
            ("in_channels", self.in_channels, 1024),
            ("out_channels", self.out_channels.unwrap_or(0), 1024),
            ("num_layers", self.num_layers, 1024),
            // Latent pixels: 8192 px images with an 8× VAE.
            ("sample_size", self.sample_size, 1024),
            ("patch_size", self.patch_size, 64),
            ("caption_channels", self.caption_channels.unwrap_or(0), 65536),
            ("cross_attention_dim", self.cross_attention_dim.unwrap_or(0), 1 << 20),
        ])?;
        pixart_core::config::check_parameters(self.parameters_estimate())?;
        if self.out_channels == Some(0) {
            return Err("`out_channels` must be positive".into());
        }
        if self.norm_type != "ada_norm_single" {
            return Err(format!(
                "`norm_type` is `{}`; PixArt transformers use `ada_norm_single`",
                self.norm_type
            ));
        }
        if self.norm_elementwise_affine {
            return Err("`norm_elementwise_affine: true` is not supported (PixArt norms have no weights)".into());
        }
        if self.activation_fn != "gelu-approximate" {
            return Err(format!(
                "`activation_fn` is `{}`; only `gelu-approximate` is supported",
                self.activation_fn
            ));
        }
        if let Some(cross) = self.cross_attention_dim {
            if cross != self.inner_dim() {
                return Err(format!(
                    "`cross_attention_dim` ({cross}) must equal num_attention_heads × attention_head_dim ({})",
                    self.inner_dim()
                ));
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err("`norm_eps` must be a positive number".into());
        }
        if let Some(s) = self.interpolation_scale {
            if !(s.is_finite() && s > 0.0) {
                return Err("`interpolation_scale` must be a positive number".into());
            }
        }
        if !self.inner_dim().is_multiple_of(4) {
            return Err(
                "the hidden size (heads × head dim) must be a multiple of 4 for the 2-D position embedding".into(),
            );
        }
        if let Some(kv) = &self.kv_compress {
            kv.check(self.num_layers)?;
        }
        Ok(())
    }

    /// The parameter count to within the biases and norms, in u128 so that no config can
    /// overflow it: per block q, k, v, out of self- and cross-attention (8 C²) and the 4× MLP
    /// (8 C²); the caption projection, adaLN and the patch embedding and projection.
    pub fn parameters_estimate(&self) -> u128 {
        let c = self.inner_dim() as u128;
        let caption = self.caption_channels.unwrap_or(0) as u128;
        let patch =
            (self.patch_size as u128).pow(2) * (self.in_channels as u128 + self.out_channels.unwrap_or(0) as u128);
        self.num_layers as u128 * 16 * c * c + caption * c + 8 * c * c + patch * c
    }

    /// Hidden size C = heads × head dim.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Output channels (8 for learned sigma).
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// The PE interpolation scale in force (`max(sample_size // 64, 1)` when unset).
    pub fn interpolation_scale(&self) -> f64 {
        self.interpolation_scale
            .unwrap_or_else(|| (self.sample_size / 64).max(1) as f64)
    }

    /// `base_size` of the position embedding: `sample_size // patch_size`.
    pub fn base_size(&self) -> usize {
        self.sample_size / self.patch_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_spec_parsing() {
        let c = KvCompressConfig::parse_spec("conv", 28).unwrap().unwrap();
        assert_eq!(c.scale_factor, 2);
        assert_eq!(c.layers, (14..28).collect::<Vec<_>>());
        let c = KvCompressConfig::parse_spec("uniform:3:0,2-4", 28).unwrap().unwrap();
        assert_eq!(c.sampling, KvSampling::Uniform);
        assert_eq!(c.scale_factor, 3);
        assert_eq!(c.layers, vec![0, 2, 3, 4]);
        assert!(KvCompressConfig::parse_spec("none", 28).unwrap().is_none());
        assert!(KvCompressConfig::parse_spec("bilinear", 28).is_err());
        assert!(KvCompressConfig::parse_spec("conv:x", 28).is_err());
        assert!(KvCompressConfig::parse_spec("conv:2:5-3", 28).is_err());
        // Bounds are checked before anything is built from them (a range is not expanded).
        let e = KvCompressConfig::parse_spec("conv:2:0-1000000000000", 28).unwrap_err();
        assert!(e.contains("names layer 1000000000000"), "{e}");
        let e = KvCompressConfig::parse_spec("conv:1000000000000", 28).unwrap_err();
        assert!(e.contains("between 1 and 64"), "{e}");
        assert!(KvCompressConfig::parse_spec("conv:2:28", 28).is_err());
    }

    #[test]
    fn kv_specs_parse_without_the_model_and_resolve_against_its_depth() {
        // The default layers are the deeper half of whatever model the spec meets.
        let spec = KvCompressSpec::parse("conv:3").unwrap();
        assert_eq!(spec.resolve(28).unwrap().unwrap().layers, (14..28).collect::<Vec<_>>());
        assert_eq!(spec.resolve(2).unwrap().unwrap().layers, vec![1]);
        // Listed layers are checked only against a model: 9 is fine for 28 blocks, not for 2.
        let spec = KvCompressSpec::parse("conv:2:9").unwrap();
        assert_eq!(spec.resolve(28).unwrap().unwrap().layers, vec![9]);
        let e = spec.resolve(2).unwrap_err();
        assert!(e.contains("names layer 9, but the model has 2 layers"), "{e}");
        assert_eq!(KvCompressSpec::parse(" off ").unwrap(), KvCompressSpec::Off);
        assert_eq!(KvCompressSpec::Off.resolve(28).unwrap(), None);
        // Syntax and ratio errors need no model.
        assert!(KvCompressSpec::parse("conv:2:5-3").is_err());
        assert!(KvCompressSpec::parse("conv:0")
            .unwrap_err()
            .contains("between 1 and 64"));
        // A resolved config round-trips through the spec.
        let kv = KvCompressConfig::parse_spec("uniform:3:0,2-4", 28).unwrap();
        assert_eq!(KvCompressSpec::from(kv.clone()).resolve(28).unwrap(), kv);
    }

    #[test]
    fn interpolation_scale_default_follows_diffusers() {
        let mut c = TransformerConfig::sigma_xl2(32);
        c.interpolation_scale = None;
        assert_eq!(c.interpolation_scale(), 1.0);
        c.sample_size = 256;
        assert_eq!(c.interpolation_scale(), 4.0);
        c.sample_size = 96;
        assert_eq!(c.interpolation_scale(), 1.0);
    }

    #[test]
    fn kv_compress_json_names() {
        let j = r#"{"num_layers": 4, "kv_compress": {"sampling": "conv", "scale_factor": 2, "layers": [2, 3]}}"#;
        let c: TransformerConfig = serde_json::from_str(j).unwrap();
        assert!(c.validate().is_ok());
        let kv = c.kv_compress.unwrap();
        assert!(kv.applies_to(2) && !kv.applies_to(1));
    }
}
