//! The SDXL VAE (diffusers' `AutoencoderKL`) that PixArt-Σ decodes its latents with.
//!
//! - [`config`]: `vae/config.json` ([`AutoencoderKlConfig`], with [`AutoencoderKlConfig::sdxl`]).
//! - [`blocks`], [`model`]: the model, one struct per diffusers module, fields named as the
//!   checkpoint keys ([`AutoencoderKl`], [`DiagonalGaussian`]).
//! - [`tiling`]: tiled decode/encode with linear blending, for images of any size
//!   ([`Tiling`], [`TileConfig`]).
//! - [`loading`]: [`load_vae`] from a diffusers folder; legacy attention names are mapped.
//! - [`training`]: the model in [`Mode::Training`] over trainable variables (fresh PyTorch-default
//!   initialisation or a checkpoint), the posterior sample, the loss (L1/L2 + KL), the
//!   diffusers-layout save.
//!
//! The functions below are what the CLI calls: [`run_vae_decode`], [`run_vae_encode`] and
//! [`bench_vae_decode`].
//!
//! GroupNorm (+ SiLU), the convolutions and the attention go through `pixart_kernels::ops::vae`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![forbid(unsafe_code)]

pub mod blocks;
pub mod config;
pub mod loading;
pub mod model;
pub mod tiling;
pub mod training;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use pixart_core::{Error, Result};

pub use blocks::Mode;
pub use config::AutoencoderKlConfig;
pub use loading::{load_vae, random_vae};
pub use model::{AutoencoderKl, DiagonalGaussian, TileNorm};
pub use tiling::{TileConfig, Tiling, AUTO_TILE_THRESHOLD_LATENT};

fn input<'a>(inputs: &'a HashMap<String, Tensor>, name: &str) -> Result<&'a Tensor> {
    inputs
        .get(name)
        .ok_or_else(|| Error::InvalidInput(format!("missing input tensor `{name}`")))
}

fn tiling_of(tile: Option<TileConfig>) -> Tiling {
    match tile {
        Some(cfg) => Tiling::On(cfg),
        None => Tiling::Auto,
    }
}

/// Decodes `inputs["z"]` (b, latent_channels, h, w), VAE latents already divided by the
/// scaling factor, with the VAE in `model_dir` (f32, CPU). Returns `{"sample": (b, 3, 8h, 8w)}`
/// in f32. `tile`: `Some(cfg)` tiles with `cfg`; `None` tiles automatically
/// ([`Tiling::Auto`]: only latents above [`AUTO_TILE_THRESHOLD_LATENT`]).
pub fn run_vae_decode(
    model_dir: &Path,
    inputs: &HashMap<String, Tensor>,
    tile: Option<TileConfig>,
) -> Result<HashMap<String, Tensor>> {
    let z = input(inputs, "z")?;
    let vae = load_vae(model_dir, DType::F32, &Device::Cpu)?;
    let sample = vae.decode(z, tiling_of(tile))?.to_dtype(DType::F32)?;
    Ok(HashMap::from([("sample".to_string(), sample)]))
}

/// Encodes `inputs["sample"]` (b, 3, H, W) in [-1, 1], H and W multiples of 8, with the VAE in
/// `model_dir` (f32, CPU). Returns `{"latent_mean", "latent_std"}`, each (b, 4, H/8, W/8) in
/// f32 (unscaled VAE latents). With `inputs["noise"]` (shape of the mean) it also returns
/// `"latent_sample"` = mean + std · noise. `tile` as in [`run_vae_decode`].
pub fn run_vae_encode(
    model_dir: &Path,
    inputs: &HashMap<String, Tensor>,
    tile: Option<TileConfig>,
) -> Result<HashMap<String, Tensor>> {
    let x = input(inputs, "sample")?;
    let vae = load_vae(model_dir, DType::F32, &Device::Cpu)?;
    let post = vae.encode(x, tiling_of(tile))?;
    let mut out = HashMap::new();
    if let Some(noise) = inputs.get("noise") {
        out.insert("latent_sample".to_string(), post.sample(noise)?.to_dtype(DType::F32)?);
    }
    out.insert("latent_mean".to_string(), post.mean.to_dtype(DType::F32)?);
    out.insert("latent_std".to_string(), post.std.to_dtype(DType::F32)?);
    Ok(out)
}

/// What [`bench_vae_decode`] / [`bench_vae_encode`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchResult {
    /// Wall time of the decode alone (model construction excluded).
    pub seconds: f64,
    /// Peak resident memory of the process so far (`VmHWM`), if the platform reports it.
    pub peak_rss_bytes: Option<u64>,
    /// Number of tiles decoded (1 when untiled).
    pub tiles: usize,
}

/// The SDXL VAE with random weights (f32, CPU) and its downsampling factor, after checking
/// that `size_px` is a positive multiple of it.
fn random_sdxl_vae(size_px: usize) -> Result<(AutoencoderKlConfig, AutoencoderKl, usize)> {
    let cfg = AutoencoderKlConfig::sdxl();
    let f = cfg.downsample_factor();
    if size_px == 0 || !size_px.is_multiple_of(f) {
        return Err(Error::InvalidInput(format!(
            "image size {size_px} is not a positive multiple of {f}"
        )));
    }
    let vae = random_vae(&cfg, DType::F32, &Device::Cpu)?;
    Ok((cfg, vae, f))
}

/// Decodes one random latent of `size_px / 8` square with the full SDXL VAE architecture and
/// random weights (f32, CPU; no file needed), and reports the time and the process's peak
/// RSS. Run one size per process: the peak RSS is the process's high-water mark.
/// `progress(done, total, seconds_so_far)` is called after each tile.
pub fn bench_vae_decode(
    size_px: usize,
    tiling: Tiling,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<BenchResult> {
    let (cfg, vae, f) = random_sdxl_vae(size_px)?;
    let n = size_px / f;
    let z = Tensor::randn(0f32, 1f32, (1, cfg.latent_channels, n, n), &Device::Cpu)?;
    let start = std::time::Instant::now();
    let mut tiles = 0;
    let out = vae.decode_with_progress(&z, tiling, &mut |done, total| {
        tiles = total;
        progress(done, total, start.elapsed().as_secs_f64());
    })?;
    // Force the result (candle is eager on the CPU, but keep the output alive until timed).
    let dims = out.dims().to_vec();
    let seconds = start.elapsed().as_secs_f64();
    if dims != [1, cfg.out_channels, size_px, size_px] {
        return Err(Error::Shape(format!("decoded shape {dims:?}")));
    }
    Ok(BenchResult {
        seconds,
        peak_rss_bytes: pixart_core::mem::peak_rss_bytes(),
        tiles,
    })
}

/// Encodes one random image of `size_px` square (values in [-1, 1]) with the full SDXL VAE
/// encoder and random weights (f32, CPU), as image to image does, and reports the time of the
/// encode (posterior moments) and the process's peak RSS. `tiles` is 1 untiled, else 0 (the
/// tiled encoder does not count its tiles).
pub fn bench_vae_encode(size_px: usize, tiling: Tiling) -> Result<BenchResult> {
    let (cfg, vae, f) = random_sdxl_vae(size_px)?;
    let x = Tensor::rand(-1f32, 1f32, (1, cfg.in_channels, size_px, size_px), &Device::Cpu)?;
    let start = std::time::Instant::now();
    let posterior = vae.encode(&x, tiling)?;
    let dims = posterior.mean.dims().to_vec();
    let seconds = start.elapsed().as_secs_f64();
    let n = size_px / f;
    if dims != [1, cfg.latent_channels, n, n] {
        return Err(Error::Shape(format!("encoded shape {dims:?}")));
    }
    let untiled = matches!(tiling, Tiling::Off);
    Ok(BenchResult {
        seconds,
        peak_rss_bytes: pixart_core::mem::peak_rss_bytes(),
        tiles: usize::from(untiled),
    })
}
