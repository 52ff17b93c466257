//! `pixart bench <what>`: benchmarks with random weights; one JSON object per line.
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use pixart_model::bench::{bench_transformer, BenchSpec};
use pixart_model::{KvCompressConfig, TransformerConfig};
use serde_json::json;

use super::{device, dtype, MAX_TOKENS};
use crate::UsageError;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Forward of the full PixArt-Σ XL/2 transformer (0.6B) at batch 2 with 300 caption tokens.
    Transformer(TransformerBench),
    /// The T5 encoder with random weights.
    TextEncoder(TextEncoderBench),
    /// The full SDXL VAE decoder with random weights (f32, CPU).
    VaeDecode(VaeBench),
    /// The full SDXL VAE encoder with random weights (f32, CPU), as image to image runs it.
    VaeEncode(VaeBench),
    /// The denoising loop of one image: the transformer with random weights, DPM-Solver++
    /// with classifier-free guidance (model batch 2), caption keys/values computed once.
    Denoise(DenoiseBench),
}

#[derive(Debug, Args)]
struct DenoiseBench {
    /// Image size in pixels (square), a multiple of 16.
    #[arg(long, default_value_t = 512)]
    size: usize,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Caption positions (padded length).
    #[arg(long, default_value_t = 300)]
    tokens: usize,
    /// Valid positions of the prompt (the empty negative prompt has one); default: all.
    #[arg(long)]
    valid_tokens: Option<usize>,
    #[arg(long, default_value_t = 4.5)]
    guidance: f64,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also run a ControlNet-Transformer of this many block copies (PixArt-δ: 13), random
    /// weights, on random control latents.
    #[arg(long = "controlnet-layers")]
    controlnet_layers: Option<usize>,
}

#[derive(Debug, Args)]
struct VaeBench {
    /// Image size in pixels (square), a multiple of 8.
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// auto, off, on or TILE:OVERLAP (latent pixels).
    #[arg(long, default_value = "auto")]
    tile: String,
}

#[derive(Debug, Args)]
struct TextEncoderBench {
    /// `xxl` (T5 v1.1 XXL, 4.76B) or the path of a config.json.
    #[arg(long, default_value = "xxl")]
    config: String,
    /// f32 or bf16, or a GGUF type the weights are kept in (q8_0, q4_0, q4_1, q5_0, q5_1: random
    /// weights quantized at build as `pixart quantize` stores them, bf16 activations; CPU).
    #[arg(long, default_value = "bf16")]
    dtype: String,
    #[arg(long, default_value_t = 300)]
    tokens: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Debug, Args)]
struct TransformerBench {
    /// Image size in pixels (square): 256, 512, 1024, 2048 or 4096.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// KV token compression: SAMPLING[:R[:LAYERS]] (e.g. conv:2:14-27) or none.
    #[arg(long)]
    kv_compress: Option<String>,
    #[arg(long, default_value_t = 2)]
    batch: usize,
    #[arg(long, default_value_t = 300)]
    tokens: usize,
    /// Untimed forwards first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed forwards.
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also time every stage (projections, attention core, norms, MLP, ...): a `profile` object
    /// in the JSON (seconds per forward) and a table on stderr. Synchronises the device around
    /// each stage, so the total is a little slower.
    #[arg(long)]
    profile: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.what {
        What::Transformer(b) => transformer(b),
        What::TextEncoder(b) => text_encoder(b),
        What::VaeDecode(b) => vae_decode(b),
        What::VaeEncode(b) => vae_encode(b),
        What::Denoise(b) => denoise(b),
    }
}

/// PixArt-Σ XL/2 at its trained size for an image of `size` px.
fn sigma_config_for(size: usize) -> TransformerConfig {
    TransformerConfig::sigma_xl2(match size {
        s if s <= 256 => 32,
        s if s <= 512 => 64,
        s if s <= 1024 => 128,
        _ => 256,
    })
}

/// The most batch rows a benchmark takes (beyond them nothing fits).
const MAX_BATCH: usize = 1024;

fn check_size(size: usize) -> Result<()> {
    check_side(size, 16)
}

/// `--size`: a positive multiple of `multiple`, at most the pipeline's largest side.
fn check_side(size: usize, multiple: usize) -> Result<()> {
    let max = pixart_pipeline::MAX_SIDE;
    if size == 0 || !size.is_multiple_of(multiple) || size > max {
        bail!(UsageError(format!(
            "--size must be a positive multiple of {multiple} up to {max}, got {size}"
        )));
    }
    Ok(())
}

fn denoise(b: DenoiseBench) -> Result<()> {
    check_size(b.size)?;
    let valid = b.valid_tokens.unwrap_or(b.tokens);
    if !(1..=1000).contains(&b.steps) || !(1..=MAX_TOKENS).contains(&b.tokens) || valid == 0 || valid > b.tokens {
        bail!(UsageError(format!(
            "--steps must be 1 to 1000, --tokens 1 to {MAX_TOKENS} and 1 ≤ --valid-tokens ≤ --tokens, got {} / {} / {valid}",
            b.steps, b.tokens
        )));
    }
    let config = sigma_config_for(b.size);
    if let Some(n) = b.controlnet_layers {
        if n == 0 || n >= config.num_layers {
            bail!(UsageError(format!(
                "--controlnet-layers must be 1 to {} (the transformer has {} blocks), got {n}",
                config.num_layers - 1,
                config.num_layers
            )));
        }
    }
    let spec = pixart_pipeline::bench::DenoiseBenchSpec {
        config,
        size: b.size,
        steps: b.steps,
        tokens: b.tokens,
        valid_tokens: valid,
        guidance: b.guidance,
        dtype: dtype(&b.dtype)?,
        device: device(&b.device)?,
        controlnet_layers: b.controlnet_layers,
    };
    let r = pixart_pipeline::bench::bench_denoise(&spec, |i, s| {
        println!("{}", json!({"bench": "denoise", "step": i, "seconds": s}));
    })?;
    println!(
        "{}",
        json!({
            "bench": "denoise",
            "size": b.size,
            "steps": b.steps,
            "dtype": b.dtype,
            "device": b.device,
            "tokens": b.tokens,
            "valid_tokens": valid,
            "controlnet_layers": b.controlnet_layers,
            "seconds": r.seconds,
            "cpu_seconds": r.cpu_seconds,
            "context_seconds": r.context_seconds,
            "seconds_per_step": median_of(&r.step_seconds),
            "gflop_reference": r.reference_flops / 1e9,
            "gflops_reference": r.reference_flops / 1e9 / r.seconds,
            "build_seconds": r.build_seconds,
            "threads": candle_core::utils::get_num_threads(),
            "peak_rss_bytes": pixart_core::mem::peak_rss_bytes(),
        })
    );
    Ok(())
}

fn vae_decode(b: VaeBench) -> Result<()> {
    check_side(b.size, 8)?;
    let tiling = super::run::tiling(&b.tile)?;
    let r = pixart_vae::bench_vae_decode(b.size, tiling, &mut |done, total, s| {
        if total > 1 {
            println!(
                "{}",
                json!({"bench": "vae-decode", "tile": done, "tiles": total, "seconds": s,
                       "peak_rss_bytes": pixart_core::mem::peak_rss_bytes()})
            );
        }
    })?;
    println!(
        "{}",
        json!({
            "bench": "vae-decode",
            "size": b.size,
            "tile": b.tile,
            "tiles": r.tiles,
            "seconds_per_decode": r.seconds,
            "threads": candle_core::utils::get_num_threads(),
            "peak_rss_bytes": r.peak_rss_bytes,
        })
    );
    Ok(())
}

fn vae_encode(b: VaeBench) -> Result<()> {
    check_side(b.size, 8)?;
    let tiling = super::run::tiling(&b.tile)?;
    let r = pixart_vae::bench_vae_encode(b.size, tiling)?;
    println!(
        "{}",
        json!({
            "bench": "vae-encode",
            "size": b.size,
            "tile": b.tile,
            "seconds_per_encode": r.seconds,
            "threads": candle_core::utils::get_num_threads(),
            "peak_rss_bytes": r.peak_rss_bytes,
        })
    );
    Ok(())
}

fn text_encoder(b: TextEncoderBench) -> Result<()> {
    if !(1..=MAX_TOKENS).contains(&b.tokens) || !(1..=MAX_BATCH).contains(&b.batch) {
        bail!(UsageError(format!(
            "--tokens must be 1 to {MAX_TOKENS} and --batch 1 to {MAX_BATCH}"
        )));
    }
    let config = match b.config.as_str() {
        "xxl" => pixart_text::T5Config::xxl(),
        path => pixart_text::T5Config::from_file(std::path::Path::new(path)).map_err(super::usage)?,
    };
    let r = match pixart_core::gguf::GgmlType::parse(&b.dtype.to_ascii_lowercase()) {
        Some(ty) if !matches!(b.dtype.to_ascii_lowercase().as_str(), "f32" | "f16" | "bf16") => {
            if b.device != "cpu" {
                bail!(UsageError(format!(
                    "--dtype {} runs on the CPU only (--device cpu)",
                    b.dtype
                )));
            }
            pixart_text::bench_quantized_text_encoder(config, ty, candle_core::DType::BF16, b.tokens, b.batch)
                .map_err(|e| UsageError(format!("--dtype {}: {e}", b.dtype)))?
        }
        _ => pixart_text::bench_text_encoder_on(config, dtype(&b.dtype)?, b.tokens, b.batch, &device(&b.device)?)?,
    };
    println!(
        "{}",
        json!({
            "bench": "text-encoder",
            "config": b.config,
            "dtype": b.dtype,
            "device": b.device,
            "batch": b.batch,
            "tokens": b.tokens,
            "seconds_per_forward": r.seconds,
            "build_seconds": r.build_seconds,
            "threads": candle_core::utils::get_num_threads(),
            "peak_rss_bytes": r.peak_rss_bytes,
        })
    );
    Ok(())
}

/// Prints the stage table on stderr (largest first) and returns it as a JSON object of seconds per
/// forward.
fn print_profile(stages: &[(&'static str, f64, f64)], seconds_per_forward: f64) -> serde_json::Value {
    let mut rows = stages.to_vec();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let staged: f64 = rows.iter().map(|r| r.1).sum();
    eprintln!("{:<28} {:>12} {:>7} {:>9}", "stage", "ms/forward", "share", "calls");
    for (label, s, calls) in &rows {
        eprintln!(
            "{label:<28} {:>12.3} {:>6.1}% {calls:>9.0}",
            s * 1e3,
            100.0 * s / seconds_per_forward
        );
    }
    eprintln!(
        "{:<28} {:>12.3} {:>6.1}%",
        "(outside the stages)",
        (seconds_per_forward - staged) * 1e3,
        100.0 * (seconds_per_forward - staged) / seconds_per_forward
    );
    serde_json::Value::Object(stages.iter().map(|(l, s, _)| (l.to_string(), json!(s))).collect())
}

fn transformer(b: TransformerBench) -> Result<()> {
    check_size(b.size)?;
    if b.iters == 0 || !(1..=MAX_TOKENS).contains(&b.tokens) || !(1..=MAX_BATCH).contains(&b.batch) {
        bail!(UsageError(format!(
            "--iters must be positive, --tokens 1 to {MAX_TOKENS} and --batch 1 to {MAX_BATCH}"
        )));
    }
    let mut config = sigma_config_for(b.size);
    if let Some(spec) = &b.kv_compress {
        config.kv_compress = KvCompressConfig::parse_spec(spec, config.num_layers)
            .map_err(|m| UsageError(format!("--kv-compress: {m}")))?;
    }
    let spec = BenchSpec {
        config,
        size: b.size,
        batch: b.batch,
        tokens: b.tokens,
        dtype: dtype(&b.dtype)?,
        device: device(&b.device)?,
        warmup: b.warmup,
        iters: b.iters,
        profile: b.profile,
    };
    let kv_name = spec.config.kv_compress.as_ref().map(|kv| {
        format!(
            "{:?}:{}:{}-{}",
            kv.sampling,
            kv.scale_factor,
            kv.layers.first().unwrap_or(&0),
            kv.layers.last().unwrap_or(&0)
        )
        .to_lowercase()
    });
    let res = bench_transformer(&spec, |i, s| {
        let rss = pixart_core::mem::peak_rss_bytes();
        println!(
            "{}",
            json!({"bench": "transformer", "iter": i, "seconds_per_forward": s, "peak_rss_bytes": rss})
        );
    })?;
    let mut sorted = res.seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let mut line = json!({
        "bench": "transformer",
        "size": b.size,
        "dtype": b.dtype,
        "device": b.device,
        "batch": b.batch,
        "tokens": b.tokens,
        "kv_compress": kv_name,
        "iters": b.iters,
        "seconds_per_forward": median,
        "seconds_min": sorted[0],
        "cpu_seconds_per_forward": median_of(&res.cpu_seconds),
        "enqueue_seconds_per_forward": median_of(&res.enqueue_seconds),
        "gflop_per_forward": res.flops / 1e9,
        "gflops": res.flops / 1e9 / median,
        "build_seconds": res.build_seconds,
        "threads": candle_core::utils::get_num_threads(),
        "peak_rss_bytes": pixart_core::mem::peak_rss_bytes(),
    });
    if b.profile {
        let mean = res.seconds.iter().sum::<f64>() / res.seconds.len() as f64;
        line["profile"] = print_profile(&res.profile, mean);
    }
    println!("{line}");
    Ok(())
}

/// The median (upper middle) of `v`, or `None` when empty.
fn median_of(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}
