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
    TextEncoder(TextEncoderArgs),
}

#[derive(Debug, Args)]
struct TextEncoderArgs {
    /// A T5 config JSON (vocab_size, d_model, d_kv, d_ff, num_layers, num_heads,
    /// feed_forward_proj, ...; missing keys take transformers' T5Config defaults).
    #[arg(long)]
    config: PathBuf,
    /// Seed of the random weights (same config and seed, same file).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (created; its files are replaced atomically).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: InitArgs) -> Result<()> {
    match a.component {
        Component::TextEncoder(a) => text_encoder(a),
    }
}

fn text_encoder(a: TextEncoderArgs) -> Result<()> {
    if !a.config.is_file() {
        bail!(UsageError(format!("{}: no such config file", a.config.display())));
    }
    let (config, factor) = pixart_text::read_init_config(&a.config).map_err(|e| UsageError(e.to_string()))?;
    let files = pixart_text::init_text_encoder(&config, &factor, a.seed, &a.out)?;
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
