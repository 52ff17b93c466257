//! `pixart train --config FILE.toml [--resume]`: trains or fine-tunes the transformer on
//! features from `pixart extract` (see pixart_train and docs/training.md).
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pixart_train::{Event, TrainConfig, Trainer};

use crate::{Cancelled, UsageError};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The training config (TOML; see configs/ and docs/training.md).
    #[arg(long)]
    config: PathBuf,
    /// Continue the run in the config's output folder from its latest checkpoint.
    #[arg(long)]
    resume: bool,
}

pub fn run(a: TrainArgs) -> Result<()> {
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
    let cfg = TrainConfig::from_file(&a.config).map_err(super::usage)?;
    super::output_folder_ok(&cfg.output.dir)?;
    let data = pixart_data::FeatureDataset::open(&cfg.data.features).map_err(super::usage)?;
    let total = cfg.train.steps;
    let mut trainer = Trainer::new(cfg, a.resume).map_err(super::usage)?;
    eprintln!(
        "training {} parameters on {} samples ({} layers, hidden {}, sample_size {}), from step {}",
        trainer.trainable_parameters(),
        pixart_train::TrainData::len(&data),
        trainer.transformer_config().num_layers,
        trainer.transformer_config().inner_dim(),
        trainer.transformer_config().sample_size,
        trainer.step()
    );

    let cancel = Arc::new(AtomicBool::new(false));
    {
        let flag = cancel.clone();
        ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\nstopping after the current step and writing a checkpoint (Ctrl-C again to quit now)");
        })
        .context("installing the Ctrl-C handler")?;
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if tty {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template("{wide_bar} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_position(trainer.step());
        Some(b)
    } else {
        None
    };
    let mut last_print = std::time::Instant::now();
    let summary = trainer.run(
        &data,
        &mut |e| match e {
            Event::Step {
                step,
                total,
                loss,
                lr,
                samples_per_s,
            } => {
                let msg = format!("loss {loss:.4}  lr {lr:.2e}  {samples_per_s:.1} samples/s");
                match &bar {
                    Some(b) => {
                        b.set_position(step);
                        b.set_message(msg);
                    }
                    None if last_print.elapsed().as_secs_f64() > 10.0 || step == total => {
                        eprintln!("step {step}/{total}  {msg}");
                        last_print = std::time::Instant::now();
                    }
                    None => {}
                }
            }
            Event::Checkpoint(p) => {
                let line = format!("checkpoint {}", p.display());
                match &bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Event::Samples(p) => {
                let line = format!("samples {}", p.display());
                match &bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Event::Note(n) => match &bar {
                Some(b) => b.println(n),
                None => eprintln!("{n}"),
            },
        },
        &cancel,
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!(
        "{} steps in {:.1} s; final loss {}{}",
        summary.steps_done,
        summary.seconds,
        summary
            .final_loss
            .map(|l| format!("{l:.4}"))
            .unwrap_or_else(|| "-".into()),
        summary
            .exported
            .as_ref()
            .map(|p| format!("; model written to {}", p.display()))
            .unwrap_or_default()
    );
    if summary.cancelled {
        return Err(Cancelled("training stopped by Ctrl-C; continue with --resume".into()).into());
    }
    Ok(())
}
