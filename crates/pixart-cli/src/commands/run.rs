//! `pixart run <component>`: one component on tensors from a file, for exact comparisons.
use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::DType;
use clap::{Args, Subcommand};
use pixart_model::loading::{load_transformer, LoadOptions};
use pixart_model::AddedCond;

use super::{device, dtype, output_folder_exists, read_inputs, take, usage, write_outputs, MAX_TOKENS};
use crate::UsageError;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(subcommand)]
    component: Component,
}

#[derive(Debug, Subcommand)]
enum Component {
    /// The denoising transformer: `hidden_states`, `timestep`, `encoder_hidden_states`
    /// [, `encoder_attention_mask`] [, `controlnet_cond` with --controlnet] -> `sample`.
    Transformer(TransformerArgs),
    /// The T5 text encoder: `input_ids` [B,L] i64, `attention_mask` [B,L] i64 ->
    /// `last_hidden_state` [B,L,D] f32.
    TextEncoder(TextEncoderArgs),
    /// The VAE decoder: `z` [B,4,h,w] f32 (latents already divided by the scaling factor) ->
    /// `sample` [B,3,8h,8w] f32.
    VaeDecode(VaeArgs),
    /// The VAE encoder: `sample` [B,3,H,W] f32 in [-1, 1] -> `latent_mean`, `latent_std`
    /// [B,4,H/8,W/8] f32 (and `latent_sample` when the inputs hold `noise`).
    VaeEncode(VaeArgs),
    /// Tokenize TEXT exactly as given (no lower-casing or stripping); prints
    /// {"input_ids": [...], "attention_mask": [...]} on stdout.
    Tokenize(TokenizeArgs),
}

#[derive(Debug, Args)]
struct TextEncoderArgs {
    /// A transformers `text_encoder/` folder (config.json + model.safetensors or shards), a
    /// pipeline folder holding one, or one file: a llama.cpp GGUF (quantized weights stay
    /// quantized) or a single-file safetensors (F16/BF16/fp8, ComfyUI's scaled fp8).
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    inputs: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// f32 or bf16 (f16 overflows in T5's feed-forward and is refused).
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Debug, Args)]
struct VaeArgs {
    /// A diffusers `vae/` folder (config.json + weights), or a pipeline folder holding one.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    inputs: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Tiling: `auto` (tile large images), `off`, `on` (default tiles) or TILE:OVERLAP in latent
    /// pixels, e.g. 64:16.
    #[arg(long, default_value = "auto")]
    tile: String,
}

/// Parses `--tile`.
pub fn tiling(s: &str) -> Result<pixart_vae::Tiling> {
    use pixart_vae::{TileConfig, Tiling};
    match s {
        "auto" => Ok(Tiling::Auto),
        "off" => Ok(Tiling::Off),
        "on" => Ok(Tiling::On(TileConfig::default())),
        spec => {
            let bad = || {
                UsageError(format!(
                    "--tile `{spec}`: expected auto, off, on or TILE:OVERLAP (e.g. 64:16)"
                ))
            };
            let (t, o) = spec.split_once(':').ok_or_else(bad)?;
            let (tile_latent, overlap_latent) = (t.parse().map_err(|_| bad())?, o.parse().map_err(|_| bad())?);
            let config = TileConfig {
                tile_latent,
                overlap_latent,
            };
            config
                .validate()
                .map_err(|e| UsageError(format!("--tile `{spec}`: {e}")))?;
            Ok(Tiling::On(config))
        }
    }
}

#[derive(Debug, Args)]
struct TokenizeArgs {
    /// A tokenizer folder (spiece.model, or tokenizer.json), or a pipeline folder holding one.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = pixart_text::DEFAULT_MAX_LENGTH)]
    max_length: usize,
}

#[derive(Debug, Args)]
struct TransformerArgs {
    /// Folder with config.json and the weights (diffusers or original layout), a pipeline
    /// folder with transformer/, or a weight file.
    #[arg(long)]
    model: PathBuf,
    /// safetensors file with the inputs.
    #[arg(long)]
    inputs: PathBuf,
    /// safetensors file to write `sample` to.
    #[arg(long)]
    out: PathBuf,
    /// Override the PE interpolation scale.
    #[arg(long)]
    interpolation_scale: Option<f64>,
    /// KV token compression: SAMPLING[:R[:LAYERS]] (conv, uniform, ave) or none.
    #[arg(long)]
    kv_compress: Option<String>,
    /// A ControlNet-Transformer (PixArt-δ): the diffusers example's adapter folder
    /// (config.json + controlnet_blocks.*), a folder holding `controlnet/`, or an original
    /// PixArt-ControlNet `.pth`. The inputs then hold `controlnet_cond` [B,C,H,W] f32 (the
    /// control latents: VAE posterior mean times the scaling factor).
    #[arg(long)]
    controlnet: Option<PathBuf>,
    /// Multiplies each ControlNet block's after_proj output (0: the transformer alone).
    #[arg(long)]
    control_scale: Option<f64>,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: RunArgs) -> Result<()> {
    // The output path is checked before the compute.
    match &args.component {
        Component::Transformer(TransformerArgs { out, .. })
        | Component::TextEncoder(TextEncoderArgs { out, .. })
        | Component::VaeDecode(VaeArgs { out, .. })
        | Component::VaeEncode(VaeArgs { out, .. }) => output_folder_exists(out)?,
        Component::Tokenize(_) => {}
    }
    match args.component {
        Component::Transformer(a) => transformer(a),
        Component::TextEncoder(a) => text_encoder(a),
        Component::Tokenize(a) => tokenize(a),
        Component::VaeDecode(a) => vae(a, true),
        Component::VaeEncode(a) => vae(a, false),
    }
}

/// An error about the tensors of the inputs file, named after it: a usage error when the
/// tensors do not fit the model (shape, dtype), a failure otherwise.
fn input_fault(inputs: &std::path::Path, e: pixart_core::Error) -> anyhow::Error {
    let named = format!("{}: {e}", inputs.display());
    match e {
        pixart_core::Error::Shape(_) | pixart_core::Error::InvalidInput(_) => UsageError(named).into(),
        _ => anyhow::anyhow!(named),
    }
}

fn vae(a: VaeArgs, decode: bool) -> Result<()> {
    let tiling = tiling(&a.tile)?;
    let inputs = read_inputs(&a.inputs)?;
    let vae = pixart_vae::load_vae(&a.model, DType::F32, &candle_core::Device::Cpu).map_err(usage)?;
    let ctx = |e| input_fault(&a.inputs, e);
    if decode {
        let z = take(&inputs, &a.inputs, "z")?;
        let sample = vae.decode(z, tiling).map_err(ctx)?;
        write_outputs(&a.out, &[("sample", &sample)])
    } else {
        let x = take(&inputs, &a.inputs, "sample")?;
        let post = vae.encode(x, tiling).map_err(ctx)?;
        let sample = match inputs.get("noise") {
            Some(n) => Some(post.sample(n).map_err(ctx)?),
            None => None,
        };
        let mut outs = vec![("latent_mean", &post.mean), ("latent_std", &post.std)];
        if let Some(s) = &sample {
            outs.push(("latent_sample", s));
        }
        write_outputs(&a.out, &outs)
    }
}

fn text_encoder(a: TextEncoderArgs) -> Result<()> {
    let dtype = dtype(&a.dtype)?;
    let device = device(&a.device)?;
    let inputs = read_inputs(&a.inputs)?;
    let ids = take(&inputs, &a.inputs, "input_ids")?;
    let model = pixart_text::load_text_encoder(&a.model, dtype, &device).map_err(usage)?;
    // Shapes and ids that do not fit the model are named against the inputs file.
    let h = model
        .forward(ids, inputs.get("attention_mask"))
        .map_err(|e| input_fault(&a.inputs, e))?
        .to_dtype(DType::F32)?
        .to_device(&candle_core::Device::Cpu)?;
    write_outputs(&a.out, &[("last_hidden_state", &h)])
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    if !(1..=MAX_TOKENS).contains(&a.max_length) {
        bail!(UsageError(format!(
            "--max-length must be between 1 and {MAX_TOKENS}, got {}",
            a.max_length
        )));
    }
    let tok = pixart_text::T5Tokenizer::from_dir(&a.model).map_err(usage)?;
    let enc = tok.encode(&a.prompt, a.max_length)?;
    if enc.truncated > 0 {
        eprintln!(
            "warning: the prompt was truncated to {} tokens ({} tokens dropped)",
            a.max_length, enc.truncated
        );
    }
    println!(
        "{}",
        serde_json::json!({"input_ids": enc.ids, "attention_mask": enc.attention_mask})
    );
    Ok(())
}

fn transformer(a: TransformerArgs) -> Result<()> {
    let dtype = dtype(&a.dtype)?;
    let device = device(&a.device)?;
    if let Some(s) = a.interpolation_scale {
        if !(s.is_finite() && s > 0.0) {
            bail!(UsageError(format!(
                "--interpolation-scale must be a positive number, got {s}"
            )));
        }
    }
    match (a.control_scale, &a.controlnet) {
        (Some(_), None) => bail!(UsageError("--control-scale needs --controlnet".into())),
        (Some(s), Some(_)) if !s.is_finite() => {
            bail!(UsageError(format!("--control-scale must be a finite number, got {s}")))
        }
        _ => {}
    }
    let inputs = read_inputs(&a.inputs)?;
    // Parsed now; fitted to the model's depth when it is opened.
    let kv = a
        .kv_compress
        .as_deref()
        .map(super::model::parse_kv_compress)
        .transpose()?;
    let opts = LoadOptions {
        dtype,
        device,
        kv_compress: kv,
        interpolation_scale: a.interpolation_scale,
        ..LoadOptions::default()
    };
    let loaded = load_transformer(&a.model, &opts).map_err(usage)?;
    let model = &loaded.model;
    let x = take(&inputs, &a.inputs, "hidden_states")?;
    let t = take(&inputs, &a.inputs, "timestep")?.to_dtype(DType::F32)?;
    let y = take(&inputs, &a.inputs, "encoder_hidden_states")?;
    let mask = inputs.get("encoder_attention_mask");
    let cond = match (inputs.get("resolution"), inputs.get("aspect_ratio")) {
        (Some(r), Some(ar)) => Some(AddedCond {
            resolution: r.to_dtype(DType::F32)?.to_device(model.device())?,
            aspect_ratio: ar.to_dtype(DType::F32)?.to_device(model.device())?,
        }),
        _ => None,
    };
    let controlnet = match &a.controlnet {
        Some(path) => Some(pixart_model::load_controlnet(path, &loaded.config, dtype, model.device()).map_err(usage)?),
        None => None,
    };
    let control_cond = match controlnet {
        Some(_) => Some(take(&inputs, &a.inputs, "controlnet_cond")?),
        None => None,
    };
    let control = match (&controlnet, control_cond) {
        (Some(cn), Some(cond)) => Some(pixart_model::Control {
            adapter: &cn.adapter,
            cond,
            scale: a.control_scale.unwrap_or(1.0),
        }),
        _ => None,
    };
    let ctx = model
        .encode_context_with_controlnet(y, mask, controlnet.as_ref().map(|c| &c.adapter))
        .map_err(|e| input_fault(&a.inputs, e))?;
    let out = model
        .forward_with_control(x, &t, &ctx, cond.as_ref(), control.as_ref())
        .map_err(|e| input_fault(&a.inputs, e))?;
    write_outputs(&a.out, &[("sample", &out)])
}
