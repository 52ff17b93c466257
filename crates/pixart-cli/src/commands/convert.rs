//! `pixart convert`: an original PixArt checkpoint (or any transformer checkpoint we load) to
//! a diffusers-layout folder (config.json + diffusion_pytorch_model.safetensors).
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pixart_model::loading::{to_diffusers, LoadOptions};

use super::dtype;
use crate::UsageError;

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The checkpoint: an original `.pth` / `.safetensors`, or a folder.
    #[arg(long)]
    input: PathBuf,
    /// Output folder (created; its config.json and weights are replaced atomically).
    #[arg(long)]
    out: PathBuf,
    /// Number of attention heads, when the checkpoint has no config (default: hidden / 72).
    #[arg(long)]
    heads: Option<usize>,
    /// Latent sample size when the checkpoint has neither config nor `pos_embed` buffer.
    #[arg(long, default_value_t = 128)]
    sample_size: usize,
    /// PE interpolation scale to record (default: from the config, or sample_size / 64).
    #[arg(long)]
    interpolation_scale: Option<f64>,
    /// KV token compression to record: SAMPLING[:R[:LAYERS]] or none (default: from the weights).
    #[arg(long)]
    kv_compress: Option<String>,
    /// Weight dtype to write: f32 (as released), bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let dtype = dtype(&a.dtype)?;
    super::output_folder_ok(&a.out)?;
    if let Some(s) = a.interpolation_scale.filter(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(UsageError(format!("--interpolation-scale must be a positive number, got {s}")).into());
    }
    for (flag, v) in [("--heads", a.heads), ("--sample-size", Some(a.sample_size))] {
        if v == Some(0) {
            return Err(UsageError(format!("{flag} must be positive")).into());
        }
    }
    let mut opts = LoadOptions {
        dtype,
        heads: a.heads,
        default_sample_size: a.sample_size,
        interpolation_scale: a.interpolation_scale,
        ..LoadOptions::default()
    };
    // Parsed now; fitted to the checkpoint's depth when it is opened.
    opts.kv_compress = a
        .kv_compress
        .as_deref()
        .map(super::model::parse_kv_compress)
        .transpose()?;
    let (tensors, config) = to_diffusers(&a.input, &opts).map_err(super::usage)?;
    pixart_model::loading::save_diffusers(&a.out, &tensors, &config)?;
    eprintln!(
        "wrote {} tensors to {} ({} layers, sample_size {}, interpolation_scale {})",
        tensors.len(),
        a.out.display(),
        config.num_layers,
        config.sample_size,
        config.interpolation_scale()
    );
    Ok(())
}
