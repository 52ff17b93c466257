//! `pixart extract`: precomputes the VAE posteriors and T5 caption features a training run
//! reads (safetensors shards + index.json); resumable.
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use pixart_data::{extract, BucketMode, ExtractEvent, ExtractOptions};

use super::{device, dtype};
use crate::UsageError;

#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// Captions file (JSON lines: `path` relative to its folder, `caption`, `long_caption`).
    #[arg(long)]
    data: PathBuf,
    /// A diffusers `vae/` folder (or a pipeline folder holding one).
    #[arg(long)]
    vae: PathBuf,
    /// A transformers T5 encoder folder (or a pipeline folder holding `text_encoder/`).
    #[arg(long)]
    text_encoder: PathBuf,
    /// A tokenizer folder (tokenizer.json or spiece.model).
    #[arg(long)]
    tokenizer: PathBuf,
    /// Output folder; rerunning with the same arguments resumes (finished shards are kept).
    #[arg(long)]
    out: PathBuf,
    /// Image side in pixels (square), or the 1:1 bin's side (multi); 8 to 4096.
    #[arg(long, default_value_t = 64)]
    resolution: usize,
    /// square: every image cropped to resolution²; multi: aspect-ratio bins scaled to the resolution.
    #[arg(long, default_value = "square")]
    buckets: String,
    /// Tokens per caption, </s> included (longer captions are cut); at most 4096.
    #[arg(long, default_value_t = 120)]
    max_length: usize,
    /// Images (and captions) per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Images per shard file.
    #[arg(long, default_value_t = 2048)]
    shard_size: usize,
    /// Compute dtype of the VAE and T5: f32 or bf16 (the files hold f32).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: ExtractArgs) -> Result<()> {
    let buckets: BucketMode = a.buckets.parse().map_err(|e| UsageError(format!("--buckets: {e}")))?;
    for (flag, v) in [
        ("--max-length", a.max_length),
        ("--batch", a.batch),
        ("--shard-size", a.shard_size),
    ] {
        if v == 0 {
            bail!(UsageError(format!("{flag} must be at least 1")));
        }
    }
    use pixart_data::extract::{MAX_LENGTH, MAX_RESOLUTION, MIN_RESOLUTION};
    if !(MIN_RESOLUTION..=MAX_RESOLUTION).contains(&a.resolution) {
        bail!(UsageError(format!(
            "--resolution {} must be between {MIN_RESOLUTION} and {MAX_RESOLUTION}",
            a.resolution
        )));
    }
    if a.max_length > MAX_LENGTH {
        bail!(UsageError(format!(
            "--max-length {} is more than {MAX_LENGTH}",
            a.max_length
        )));
    }
    let dtype = dtype(&a.dtype)?;
    if !matches!(dtype, candle_core::DType::F32 | candle_core::DType::BF16) {
        bail!(UsageError(format!("--dtype {}: use f32 or bf16", a.dtype)));
    }
    for (flag, p) in [
        ("--vae", &a.vae),
        ("--text-encoder", &a.text_encoder),
        ("--tokenizer", &a.tokenizer),
    ] {
        if !p.is_dir() {
            bail!(UsageError(format!("{flag} {}: no such folder", p.display())));
        }
    }
    if !a.data.is_file() {
        bail!(UsageError(format!("--data {}: no such file", a.data.display())));
    }
    super::output_folder_ok(&a.out)?;
    let opts = ExtractOptions {
        data: a.data,
        vae: a.vae,
        text_encoder: a.text_encoder,
        tokenizer: a.tokenizer,
        out: a.out.clone(),
        resolution: a.resolution,
        buckets,
        max_length: a.max_length,
        batch: a.batch,
        shard_size: a.shard_size,
        dtype,
        device: device(&a.device)?,
    };
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(0);
    if tty {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{wide_bar} {pos}/{len} images {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    // indicatif drops println on a hidden bar: plain lines when stderr is not a terminal.
    let say = |msg: String| {
        if tty {
            bar.println(msg)
        } else {
            eprintln!("{msg}")
        }
    };
    let mut on_event = |e: ExtractEvent| match e {
        ExtractEvent::Planned {
            images,
            shards,
            done_shards,
            to_process,
            unreadable,
        } => {
            bar.set_length(to_process as u64);
            say(format!(
                "{images} images in {shards} shards ({done_shards} already done, {to_process} images to encode); {unreadable} unreadable"
            ));
        }
        ExtractEvent::Images { done, total } => {
            if tty {
                bar.set_position(done as u64);
            } else {
                eprintln!("{done}/{total} images");
            }
        }
        ExtractEvent::Skipped { source, reason } => say(format!("warning: skipped {source}: {reason}")),
        ExtractEvent::ShardWritten {
            file,
            rows,
            height,
            width,
            seconds,
        } => say(format!(
            "wrote {file}: {rows} images of {width}x{height} in {seconds:.1} s"
        )),
    };
    let result = extract(&opts, &mut on_event);
    bar.finish_and_clear();
    // Bad flags, configs, captions files or an out folder of another run: usage errors (exit 2).
    let s = result.map_err(|e| -> anyhow::Error {
        if matches!(
            e,
            pixart_core::Error::InvalidInput(_) | pixart_core::Error::Config { .. }
        ) {
            UsageError(e.to_string()).into()
        } else {
            e.into()
        }
    })?;
    let buckets: Vec<String> = s.buckets.iter().map(|(h, w, n)| format!("{w}x{h}: {n}")).collect();
    eprintln!(
        "{} records: {} encoded now, {} from earlier runs, {} skipped; {} shards written, {} kept; {} captions cut to {} tokens; buckets {}; {:.1} s",
        s.records,
        s.extracted,
        s.reused,
        s.skipped,
        s.shards_written,
        s.shards_reused,
        s.truncated_captions,
        opts.max_length,
        buckets.join(", "),
        s.seconds
    );
    eprintln!("wrote {}", opts.out.join(pixart_data::index::INDEX_FILE).display());
    Ok(())
}
