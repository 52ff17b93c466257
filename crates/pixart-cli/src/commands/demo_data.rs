//! `pixart demo-data`: writes the synthetic shapes dataset (pixart-demo does the work).
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use pixart_demo::dataset::{write_dataset, DatasetConfig};

use super::{progress_bar, usage};
use crate::UsageError;

#[derive(Debug, Args)]
#[command(
    after_help = "Writes DIR/images/NNNNNN.png, DIR/train.jsonl, DIR/eval.jsonl and DIR/dataset.json \
(docs/demo-dataset.md). The same seed gives byte-identical files. Rerunning with the same parameters \
resumes a killed run; train.jsonl is written last, atomically."
)]
pub struct DemoDataArgs {
    /// Output folder (new, empty, or a dataset folder with the same parameters to resume).
    #[arg(long)]
    out: PathBuf,
    /// Training images.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluation prompts per held-out combination (each with as many seen prompts).
    #[arg(long = "eval-repeat", default_value_t = 1)]
    eval_repeat: usize,
}

/// A `dataset.json` already in `out` must at least be JSON: else the resume check would say
/// "other parameters" about a file that is merely damaged.
fn check_dataset_json(out: &Path) -> Result<()> {
    let path = out.join("dataset.json");
    if !path.exists() {
        return Ok(());
    }
    let bytes = std::fs::read(&path).map_err(|e| UsageError(format!("{}: unreadable: {e}", path.display())))?;
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        return Err(UsageError(format!(
            "{}: unreadable ({e}); remove it or choose another --out",
            path.display()
        ))
        .into());
    }
    Ok(())
}

pub fn run(a: DemoDataArgs) -> Result<()> {
    let config = DatasetConfig {
        seed: a.seed,
        size: a.size,
        count: a.count,
        eval_repeat: a.eval_repeat,
    };
    config.validate().map_err(usage)?;
    super::output_folder_ok(&a.out)?;
    check_dataset_json(&a.out)?;
    let start = std::time::Instant::now();
    let (bar, tty) = progress_bar(
        a.count,
        "{wide_bar} {pos}/{len} images [{elapsed_precise}<{eta_precise}]",
    );
    let mut last_line = 0;
    let mut on_progress = |done: usize, total: usize| {
        if tty {
            bar.set_position(done as u64);
        } else if done == total || done >= last_line + total.div_ceil(10) {
            last_line = done;
            eprintln!("{done}/{total} images");
        }
    };
    let summary = write_dataset(&a.out, &config, &mut on_progress).map_err(usage)?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} images ({} already there), {} training records, {} evaluation prompts to {} in {:.1} s",
        summary.written,
        summary.skipped,
        summary.train_records,
        summary.eval_records,
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
