//! `pixart train-vae`: trains a small AutoencoderKL from a TOML config (pixart_train::vae).
use anyhow::Result;
use clap::Args;
use pixart_train::vae::{train_vae, Event, Outcome, VaeTrainConfig};
use std::path::PathBuf;

use crate::{Cancelled, UsageError};

#[derive(Debug, Args)]
pub struct TrainVaeArgs {
    /// The training config (TOML; see configs/builtin/vae.toml). Relative paths in it are taken
    /// from its folder.
    #[arg(long)]
    pub config: PathBuf,
    /// Continue the run in the config's output folder from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Use this data list instead of the config's `data.jsonl`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Use this output folder instead of the config's `output.dir`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Skipped files printed one by one; the rest are only counted.
const SKIPPED_SHOWN: usize = 10;

pub fn run(a: TrainVaeArgs) -> Result<()> {
    if a.config.is_dir() {
        return Err(UsageError(format!(
            "--config {}: is a folder, not a config file",
            a.config.display()
        ))
        .into());
    }
    if !a.config.is_file() {
        return Err(UsageError(format!("--config {}: no such config file", a.config.display())).into());
    }
    let cfg = VaeTrainConfig::from_file_with(&a.config, a.data.as_deref(), a.out.as_deref())
        .map_err(|e| UsageError(e.to_string()))?;
    super::output_folder_ok(&cfg.output.dir)?;
    let device = super::device(&a.device)?;

    // Ctrl-C: checkpoint after the current step and stop.
    let cancel =
        super::cancel_on_ctrl_c("stopping after the current step with a checkpoint (Ctrl-C again to quit now)")?;

    let vae = cfg.vae_config();
    eprintln!(
        "train-vae: blocks {:?}, {} layer(s) per block, {} latent channels (factor {}), {} px, batch {}, {} steps, lr {}, into {}",
        vae.block_out_channels,
        vae.layers_per_block,
        vae.latent_channels,
        vae.downsample_factor(),
        cfg.size(),
        cfg.train.batch_size,
        cfg.train.steps,
        cfg.train.lr,
        cfg.output.dir.display()
    );
    let (bar, tty) = super::progress_bar(
        cfg.train.steps as usize,
        "{wide_bar} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]",
    );
    let say = |msg: String| {
        if tty {
            bar.suspend(|| eprintln!("{msg}"));
        } else {
            eprintln!("{msg}");
        }
    };
    let mut on_event = |e: Event| match e {
        Event::Loading { done, total } => {
            if done == total || !tty {
                say(format!("read {done}/{total} images"));
            }
        }
        Event::DataReady { images, skipped } => {
            for (p, why) in skipped.iter().take(SKIPPED_SHOWN) {
                say(format!("warning: skipped {}: {why}", p.display()));
            }
            if !skipped.is_empty() {
                say(format!("warning: {} unreadable image(s) skipped", skipped.len()));
            }
            say(format!("{images} images in memory"));
        }
        Event::Resumed { step } => {
            bar.set_position(step);
            say(format!("resumed at step {step}"));
        }
        Event::Warning(m) => say(format!("warning: {m}")),
        Event::Step {
            step,
            steps,
            loss,
            seconds_per_step,
            record,
        } => {
            if tty {
                bar.set_position(step);
                bar.set_message(format!("loss {loss:.4}, {seconds_per_step:.2} s/step"));
            }
            if let Some(r) = record {
                say(format!(
                    "step {}/{steps}: loss {:.5} (l1 {:.5}, l2 {:.5}, kl {:.3e}), lr {:.2e}, grad norm {:.3}, {:.1} samples/s",
                    r.step, r.loss, r.l1, r.l2, r.kl, r.lr, r.grad_norm, r.samples_per_s
                ));
            }
        }
        Event::Samples { path, eval } => say(format!(
            "reconstructions: {} (PSNR {:.2} dB, L1 {:.4})",
            path.display(),
            eval.psnr,
            eval.l1
        )),
        Event::Checkpoint { path, step } => say(format!("checkpoint: {} (step {step})", path.display())),
    };
    let outcome = train_vae(&cfg, a.resume, &device, &mut on_event, &cancel).map_err(super::usage)?;
    bar.finish_and_clear();
    match outcome {
        Outcome::Finished {
            vae_dir,
            steps,
            latent_std,
            suggested_scaling_factor,
            scaling_factor,
        } => {
            eprintln!("trained {steps} steps; latent std over the data {latent_std:.5}");
            eprintln!(
                "suggested scaling_factor (1/std): {suggested_scaling_factor:.5}; config.json has {scaling_factor:.5}"
            );
            println!("{}", vae_dir.display());
            Ok(())
        }
        Outcome::Cancelled { step, checkpoint } => Err(Cancelled(format!(
            "stopped at step {step}; checkpoint {} (continue with --resume)",
            checkpoint.display()
        ))
        .into()),
    }
}
