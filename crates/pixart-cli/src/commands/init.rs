//! `pixart init <component>`: components with fresh random weights, for training from scratch.
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use crate::UsageError;

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(subcommand)]
    component: Component,
}

#[derive(Debug, Subcommand)]
enum Component {
    /// A T5 encoder (transformers `T5EncoderModel` folder: config.json + model.safetensors)
    /// initialised as transformers' `T5PreTrainedModel._init_weights`.
    TextEncoder(ComponentArgs),
    /// A PixArt transformer (diffusers `transformer/` folder: config.json +
    /// diffusion_pytorch_model.safetensors) with PixArt's initialisation, as `pixart train`
    /// starts from scratch.
    Transformer(ComponentArgs),
    /// An AutoencoderKL (diffusers `vae/` folder) with PyTorch's default initialisation, as
    /// `pixart train-vae` starts from scratch.
    Vae(ComponentArgs),
}

#[derive(Debug, Args)]
struct ComponentArgs {
    /// The component's config: a diffusers config.json for the transformer and the VAE (e.g. a
    /// released model's `transformer/config.json`); for the text encoder a T5 config JSON
    /// (vocab_size, d_model, d_kv, d_ff, num_layers, num_heads, feed_forward_proj, ...; missing
    /// keys take transformers' T5Config defaults).
    #[arg(long)]
    config: PathBuf,
    /// Seed of the random weights (same config and seed, same file).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (created; its files are replaced atomically).
    #[arg(long)]
    out: PathBuf,
    /// Dtype of the written weights: f32, bf16 or f16 (transformer only; the others are f32).
    #[arg(long, default_value = "f32")]
    dtype: String,
}

pub fn run(a: InitArgs) -> Result<()> {
    let (Component::TextEncoder(c) | Component::Transformer(c) | Component::Vae(c)) = &a.component;
    super::output_folder_ok(&c.out)?;
    match a.component {
        Component::TextEncoder(a) => text_encoder(a),
        Component::Transformer(a) => transformer(a),
        Component::Vae(a) => vae(a),
    }
}

/// An error building from `--config` (a model too large for this machine): a usage error
/// naming the config; other failures as they are.
fn of_config(a: &ComponentArgs, e: pixart_core::Error) -> anyhow::Error {
    match e {
        pixart_core::Error::InvalidInput(m) => UsageError(format!("{}: {m}", a.config.display())).into(),
        other => other.into(),
    }
}

fn check_config(path: &std::path::Path) -> Result<()> {
    if !path.is_file() {
        bail!(UsageError(format!("{}: no such config file", path.display())));
    }
    Ok(())
}

fn only_f32(a: &ComponentArgs, what: &str) -> Result<()> {
    if a.dtype != "f32" {
        bail!(UsageError(format!("--dtype {}: the {what} is written in f32", a.dtype)));
    }
    Ok(())
}

fn transformer(a: ComponentArgs) -> Result<()> {
    check_config(&a.config)?;
    let dtype = super::dtype(&a.dtype)?;
    let config = pixart_model::TransformerConfig::from_file(&a.config).map_err(|e| UsageError(e.to_string()))?;
    let mut weights = pixart_train::trainer::fresh_weights(&config, a.seed).map_err(|e| of_config(&a, e))?;
    let mut params = 0;
    for t in weights.values_mut() {
        params += t.elem_count();
        *t = t.to_dtype(dtype)?;
    }
    pixart_model::loading::save_diffusers(&a.out, &weights, &config)?;
    eprintln!(
        "transformer: {} layers, width {}, {params} parameters ({}), seed {}",
        config.num_layers,
        config.inner_dim(),
        a.dtype,
        a.seed
    );
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

fn vae(a: ComponentArgs) -> Result<()> {
    check_config(&a.config)?;
    only_f32(&a, "VAE")?;
    let config = pixart_vae::AutoencoderKlConfig::from_file(&a.config).map_err(|e| UsageError(e.to_string()))?;
    let varmap =
        pixart_vae::training::init_varmap(&config, a.seed, &candle_core::Device::Cpu).map_err(|e| of_config(&a, e))?;
    pixart_vae::training::save_diffusers(&a.out, &config, &varmap)?;
    let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    eprintln!("vae: {params} parameters, seed {}", a.seed);
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

fn text_encoder(a: ComponentArgs) -> Result<()> {
    check_config(&a.config)?;
    only_f32(&a, "text encoder")?;
    let (config, factor) = pixart_text::read_init_config(&a.config).map_err(|e| UsageError(e.to_string()))?;
    let files = pixart_text::init_text_encoder(&config, &factor, a.seed, &a.out).map_err(|e| of_config(&a, e))?;
    eprintln!(
        "T5 encoder: {} layers, d_model {}, {} parameters, seed {}",
        config.num_layers,
        config.d_model,
        config.num_parameters(),
        a.seed
    );
    for f in files {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}
