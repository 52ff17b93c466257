//! The memory a generation needs, estimated before the work, against what the process may
//! have ([`pixart_core::mem::allowance`]): a request that cannot fit is refused with the
//! figures (or its VAE decode is tiled where that makes it fit) instead of the process
//! aborting on a failed allocation halfway through.
//!
//! The estimate is an upper bound built from the shapes, in bytes:
//! - weights: the T5 encoder (when it is still to be loaded) and the transformer and VAE
//!   (when not loaded yet), parameters × element size of the dtype they load in;
//! - the transformer: `TRANSFORMER_LIVE_WIDTHS` tensors of (batch·cfg, tokens, hidden) live at
//!   once at the widest point of a block (input, residual, the modulated norm, q/k/v and their
//!   split-head copies, the MLP's 4·hidden), plus the attention's bounded score buffer
//!   ([`pixart_kernels::ops::MAX_SCORE_ELEMENTS`]) and the sampler's latents;
//! - the VAE decode: `VAE_LIVE_TENSORS` f32 tensors at the full resolution with the channels
//!   of the decoder's last upsampling (`block_out_channels[1]`), for the whole image or for one
//!   tile when tiled, plus the decoded image.
//!
//! Checked against measured peaks on the built-in model in `tests/memory.rs` of pixart-cli.
use candle_core::DType;
use pixart_core::mem::Allowance;
use pixart_core::{Error, Field, Result};
use pixart_vae::TileConfig;

use crate::request::{VaeTiling, ValidatedRequest};
use crate::{ComponentOptions, PipelineComponents, ResolvedPaths};

/// (batch·cfg, tokens, hidden) tensors live at once at the widest point of a transformer block.
const TRANSFORMER_LIVE_WIDTHS: u64 = 16;
/// Full-resolution f32 tensors (of `block_out_channels[1]` channels) live at once in the
/// decoder's last blocks; ~2 GiB for a 512 px SDXL tile, as measured for [`TileConfig`].
const VAE_LIVE_TENSORS: u64 = 8;

/// What the estimate needs to know about the models.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryModel {
    /// Transformer width (`num_attention_heads · attention_head_dim`).
    pub hidden: u64,
    /// Bytes per transformer activation (its dtype).
    pub activation_bytes: u64,
    /// The VAE's `block_out_channels`.
    pub vae_channels: Vec<u64>,
    /// Image pixels per latent pixel.
    pub vae_factor: u64,
    /// Bytes of T5 weights loaded for the text encoding (0 when it stays loaded).
    pub text_weights: u64,
    /// Bytes of transformer and VAE weights not loaded yet (0 once loaded).
    pub denoise_weights: u64,
}

/// The estimate, bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    /// T5 weights loaded for the text encoding (then dropped unless kept).
    pub text_weights: u64,
    /// Transformer and VAE weights still to load.
    pub weights: u64,
    /// The denoising loop's activations at the largest pass.
    pub transformer: u64,
    /// The VAE decode as requested (tiled or not), image included.
    pub vae: u64,
    /// The VAE decode tiled, when it is not tiled as requested.
    pub vae_tiled: Option<u64>,
}

impl MemoryEstimate {
    /// The peak: the text encoding (T5 beside the other weights), or the denoising and the
    /// decode with the weights.
    pub fn total(&self) -> u64 {
        (self.text_weights + self.weights).max(self.weights + self.transformer.max(self.vae))
    }
}

impl MemoryModel {
    /// Before loading: from the config files of the components found.
    pub fn from_paths(paths: &ResolvedPaths, opts: &ComponentOptions) -> Result<Self> {
        let (_, cfg) = pixart_model::loading::locate(&paths.transformer)?;
        let cfg = cfg.ok_or_else(|| Error::config(&paths.transformer, "no config.json"))?;
        let t = pixart_model::TransformerConfig::from_file(&cfg)?;
        let vae_cfg = pixart_vae::loading::vae_dir(&paths.vae)?.join("config.json");
        let v = pixart_vae::AutoencoderKlConfig::from_file(&vae_cfg)?;
        let text_dir = pixart_text::loading::text_encoder_dir(&paths.text_encoder)?;
        let text = pixart_text::T5Config::from_file(&text_dir.join("config.json"))?;
        let dtype_bytes = opts.dtype.size_in_bytes() as u64;
        let text_bytes = text_dtype(opts.dtype).size_in_bytes() as u64;
        let vae_bytes = vae_dtype(opts).size_in_bytes() as u64;
        Ok(Self {
            hidden: (t.num_attention_heads * t.attention_head_dim) as u64,
            activation_bytes: dtype_bytes,
            vae_channels: v.block_out_channels.iter().map(|&c| c as u64).collect(),
            vae_factor: v.downsample_factor() as u64,
            text_weights: text.num_parameters() as u64 * text_bytes,
            denoise_weights: t.parameters_estimate() as u64 * dtype_bytes + v.parameters_estimate() as u64 * vae_bytes,
        })
    }

    /// For loaded components: their weights are held already; the T5 encoder is loaded again
    /// for each new text unless it is kept.
    pub fn from_components(c: &PipelineComponents) -> Result<Self> {
        let t = c.transformer_config();
        let v = c.vae.config();
        let text_weights = if c.text.resident().is_some() {
            0
        } else {
            let text_dir = pixart_text::loading::text_encoder_dir(&c.paths.text_encoder)?;
            let text = pixart_text::T5Config::from_file(&text_dir.join("config.json"))?;
            text.num_parameters() as u64 * c.text_dtype.size_in_bytes() as u64
        };
        Ok(Self {
            hidden: (t.num_attention_heads * t.attention_head_dim) as u64,
            activation_bytes: c.dtype.size_in_bytes() as u64,
            vae_channels: v.block_out_channels.iter().map(|&c| c as u64).collect(),
            vae_factor: v.downsample_factor() as u64,
            text_weights,
            denoise_weights: 0,
        })
    }

    /// The estimate for `r` (its VAE tiling as requested; `Auto` as the decoder decides it).
    pub fn estimate(&self, r: &ValidatedRequest) -> MemoryEstimate {
        // The largest pass: the first, or the upscaled second.
        let (h, w) = match &r.upscale {
            Some(u) => (u.height.max(r.gen_height) as u64, u.width.max(r.gen_width) as u64),
            None => (r.gen_height as u64, r.gen_width as u64),
        };
        let batch = r.batch as u64;
        let rows = batch * if r.cfg { 2 } else { 1 };
        let channels = r.latent_shape[1] as u64;
        let latents = batch * channels * (h / self.vae_factor) * (w / self.vae_factor) * 4;
        // Tokens: the latent grid over 2×2 patches (every released PixArt model).
        let tokens = (h / self.vae_factor).div_ceil(2) * (w / self.vae_factor).div_ceil(2);
        let transformer = rows * tokens * self.hidden * self.activation_bytes * TRANSFORMER_LIVE_WIDTHS
            + pixart_kernels::ops::MAX_SCORE_ELEMENTS as u64 * 4
            + 8 * latents;
        let image = batch * 3 * h * w * (4 + 1);
        let decode = |th: u64, tw: u64| {
            let c = self
                .vae_channels
                .get(1)
                .or(self.vae_channels.first())
                .copied()
                .unwrap_or(0);
            VAE_LIVE_TENSORS * th * tw * c * 4
        };
        let whole = batch * decode(h, w) + image;
        let tile = TileConfig::default();
        let tile_px = (tile.tile_latent as u64 * self.vae_factor).min(h.max(w));
        // Tiles are decoded one at a time; their outputs blend into the image (held twice).
        let tiled = decode(tile_px.min(h), tile_px.min(w)) + 2 * image;
        let (lh, lw) = ((h / self.vae_factor) as usize, (w / self.vae_factor) as usize);
        let tiles = r.vae_tiling.tiling().resolve(lh, lw).is_some();
        MemoryEstimate {
            text_weights: self.text_weights,
            weights: self.denoise_weights,
            transformer,
            vae: if tiles { tiled } else { whole },
            vae_tiled: (!tiles).then_some(tiled),
        }
    }

    /// Checks `r` against `allowance`: `Ok(None)` when it fits, `Ok(Some(note))` when it fits
    /// only with the VAE decode tiled (and `r` now asks for tiling), else an
    /// [`Error::InvalidRequest`] on the size with the figures. Without an allowance (a platform
    /// that reports none) or with `PIXART_MEMORY_CHECK=off`, nothing is checked.
    pub fn check(&self, r: &mut ValidatedRequest, allowance: Option<Allowance>) -> Result<Option<String>> {
        let Some(allow) = allowance else {
            return Ok(None);
        };
        if std::env::var("PIXART_MEMORY_CHECK").is_ok_and(|v| v == "off") {
            return Ok(None);
        }
        let e = self.estimate(r);
        if e.total() <= allow.bytes {
            return Ok(None);
        }
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        if let Some(tiled) = e.vae_tiled.filter(|_| r.vae_tiling == VaeTiling::Auto) {
            let with_tiles = MemoryEstimate { vae: tiled, ..e };
            if with_tiles.total() <= allow.bytes {
                r.vae_tiling = VaeTiling::On;
                return Ok(Some(format!(
                    "the VAE decode is tiled to fit in memory: {:.1} GiB whole, {:.1} GiB tiled; {:.1} GiB free ({})",
                    gib(e.total()),
                    gib(with_tiles.total()),
                    gib(allow.bytes),
                    allow.limit
                )));
            }
        }
        let what = format!(
            "{} image(s) of {}x{}",
            r.batch,
            r.upscale.as_ref().map_or(r.gen_width, |u| u.width),
            r.upscale.as_ref().map_or(r.gen_height, |u| u.height)
        );
        Err(Error::request(
            Field::Size,
            format!(
                "{what} need about {:.1} GiB (weights {:.1}, text encoder {:.1}, denoising {:.1}, VAE decode {:.1}{}), more than the {:.1} GiB this process may have ({}); give a smaller size or batch{}",
                gib(e.total()),
                gib(e.weights),
                gib(e.text_weights),
                gib(e.transformer),
                gib(e.vae),
                if e.vae_tiled.is_some() { ", untiled" } else { "" },
                gib(allow.bytes),
                allow.limit,
                if self.activation_bytes > 2 { ", or --dtype bf16" } else { "" }
            ),
        ))
    }
}

/// The dtype T5 loads in for a pipeline dtype (as [`PipelineComponents::load_resolved`]).
fn text_dtype(dtype: DType) -> DType {
    if dtype == DType::F32 {
        DType::F32
    } else {
        DType::BF16
    }
}

/// The VAE's dtype: f32 on the CPU (as [`PipelineComponents::load_resolved`]).
fn vae_dtype(opts: &ComponentOptions) -> DType {
    if opts.device.is_cpu() {
        DType::F32
    } else {
        opts.dtype
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::GenerationRequest;
    use crate::ModelGeometry;

    /// The built-in model's shapes: hidden 192, VAE [32, 64, 64] (factor 4).
    fn builtin() -> MemoryModel {
        MemoryModel {
            hidden: 192,
            activation_bytes: 4,
            vae_channels: vec![32, 64, 64],
            vae_factor: 4,
            text_weights: 1 << 20,
            denoise_weights: 20 << 20,
        }
    }

    fn request(side: usize, tiling: VaeTiling) -> ValidatedRequest {
        let geometry = ModelGeometry::for_tests(16);
        GenerationRequest {
            prompts: vec!["a red circle".into()],
            width: Some(side),
            height: Some(side),
            resolution_binning: false,
            vae_tiling: tiling,
            ..Default::default()
        }
        .validate(&geometry)
        .unwrap()
    }

    fn allow(bytes: u64) -> Option<Allowance> {
        Some(Allowance {
            bytes,
            limit: "a test limit",
        })
    }

    /// Fits as asked, fits with the decode tiled (and the request now tiles), or is refused
    /// naming the size with the figures; `Off` is never switched to tiles.
    #[test]
    fn large_work_is_tiled_to_fit_or_refused_with_the_figures() {
        let m = builtin();
        let r = request(512, VaeTiling::Auto);
        let e = m.estimate(&r);
        // 512 px: latent 128, untiled under Auto; the untiled decode is the larger part.
        let tiled = e.vae_tiled.expect("512 px is not tiled under auto");
        assert!(e.vae > e.transformer && tiled < e.vae, "{e:?}");
        let whole = e.total();
        let with_tiles = MemoryEstimate { vae: tiled, ..e }.total();

        let mut fits = r.clone();
        assert_eq!(m.check(&mut fits, allow(whole)).unwrap(), None);
        assert_eq!(fits.vae_tiling, VaeTiling::Auto);

        let mut tiles = r.clone();
        let note = m.check(&mut tiles, allow(with_tiles)).unwrap().expect("a note");
        assert!(note.starts_with("the VAE decode is tiled to fit in memory"), "{note}");
        assert_eq!(tiles.vae_tiling, VaeTiling::On);

        let mut off = request(512, VaeTiling::Off);
        let err = m.check(&mut off, allow(with_tiles)).unwrap_err();
        assert!(matches!(err, Error::InvalidRequest { field: Field::Size, .. }), "{err}");

        let mut big = request(8192, VaeTiling::Auto);
        let err = m.check(&mut big, allow(1 << 30)).unwrap_err().to_string();
        assert!(
            err.contains("1 image(s) of 8192x8192 need about ")
                && err.contains("more than the 1.0 GiB this process may have (a test limit)")
                && err.contains("--dtype bf16"),
            "{err}"
        );
        // No allowance known: nothing is refused.
        assert_eq!(m.check(&mut big, None).unwrap(), None);
    }

    /// The transformer's part grows with tokens × width × rows (CFG doubles the rows).
    #[test]
    fn the_estimate_follows_tokens_width_and_guidance() {
        let m = builtin();
        let small = m.estimate(&request(512, VaeTiling::On)).transformer;
        let large = m.estimate(&request(1024, VaeTiling::On)).transformer;
        let fixed = pixart_kernels::ops::MAX_SCORE_ELEMENTS as u64 * 4;
        // Four times the tokens: four times the activations (the score buffer is fixed).
        let ratio = (large - fixed) as f64 / (small - fixed) as f64;
        assert!((ratio - 4.0).abs() < 0.01, "{ratio}");
        let mut no_cfg = request(512, VaeTiling::On);
        no_cfg.cfg = false;
        let half = m.estimate(&no_cfg).transformer - fixed;
        // (The sampler's latents, ~2 % here, do not double.)
        assert!(((small - fixed) as f64 / half as f64 - 2.0).abs() < 0.05);
    }
}
