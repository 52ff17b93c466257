//! `pixart eval demo`: generates the demo dataset's evaluation prompts with a model, checks each
//! image with the rule-based checker, prints accuracy per attribute for held-out and seen
//! prompts, and writes a contact sheet and a JSON summary (pixart-demo does the work).
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use pixart_demo::dataset::read_eval;
use pixart_demo::eval::{contact_sheet, evaluate, item_results, validate, CaptionKind, EvalOptions, Report};
use pixart_pipeline::{builtin_model_dir, is_builtin, ComponentOptions, ComponentPaths, PipelineComponents, RgbImage};

use super::{cancel_on_ctrl_c, device, dtype, output_folder_exists, progress_bar, sampler, usage};
use crate::{Cancelled, UsageError};

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    what: EvalCommand,
}

#[derive(Debug, Subcommand)]
enum EvalCommand {
    /// Prompt adherence on the demo dataset's evaluation prompts (pixart demo-data), checked by rule.
    Demo(DemoEvalArgs),
}

#[derive(Debug, Args)]
#[command(
    after_help = "Prompt i uses seed SEED+i. Held-out targets: colour ≥ 90 %, position ≥ 80 %, shape ≥ 70 %. \
The contact sheet frames each image green (every attribute right) or red, in the order of the jsonl \
(held-out prompts in the odd columns counting from 1, seen ones in the even columns)."
)]
pub struct DemoEvalArgs {
    /// A diffusers PixArt-Σ pipeline folder (default: the built-in model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The evaluation prompts: eval.jsonl written by `pixart demo-data`.
    #[arg(long)]
    data: PathBuf,
    /// Denoising steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Classifier-free guidance scale; ≤ 1 turns CFG off.
    #[arg(long, default_value_t = 4.5, allow_negative_numbers = true)]
    guidance: f64,
    /// Seed of the first prompt.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate only the first N prompts (they alternate held-out and seen).
    #[arg(long)]
    limit: Option<usize>,
    /// The prompt: the short caption ("a red circle") or the long one (every attribute).
    #[arg(long, default_value = "long")]
    caption: String,
    /// Sampler: dpm++, sa-solver, ddim or euler-a (default: the one scheduler_config.json names).
    #[arg(long)]
    scheduler: Option<String>,
    /// Prompts per pipeline call.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// The contact sheet (PNG), written atomically.
    #[arg(long)]
    out: PathBuf,
    /// The summary and every prompt's verdict as JSON, written atomically.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Transformer dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: EvalArgs) -> Result<()> {
    match a.what {
        EvalCommand::Demo(d) => demo(d),
    }
}

fn demo(a: DemoEvalArgs) -> Result<()> {
    // Everything the user typed is checked before the model loads.
    let caption = CaptionKind::parse(&a.caption).map_err(usage)?;
    let sampler = sampler(a.scheduler.as_deref())?;
    let dt = dtype(&a.dtype)?;
    let dev = device(&a.device)?;
    if a.limit == Some(0) {
        return Err(UsageError("--limit must be at least 1".into()).into());
    }
    output_folder_exists(&a.out)?;
    if let Some(j) = &a.json {
        output_folder_exists(j)?;
    }
    let mut records = read_eval(&a.data).map_err(usage)?;
    if let Some(n) = a.limit {
        records.truncate(n);
    }
    let model = match &a.model {
        Some(m) if !is_builtin(&m.to_string_lossy()) => m.clone(),
        _ => builtin_model_dir().map_err(usage)?,
    };
    let opts = EvalOptions {
        steps: a.steps,
        guidance: a.guidance,
        seed: a.seed,
        caption,
        batch: a.batch,
        sampler,
    };

    let paths = ComponentPaths {
        model: model.clone(),
        ..Default::default()
    };
    // Validate against the config files first, so that a bad request fails before loading.
    if let Ok(geometry) = paths.resolve().map_err(usage)?.geometry() {
        validate(&geometry, &records, &opts).map_err(usage)?;
    }
    eprintln!("loading {}", model.display());
    let components = PipelineComponents::load(
        &paths,
        &ComponentOptions {
            device: dev,
            dtype: dt,
            ..ComponentOptions::default()
        },
    )
    .map_err(usage)?;
    validate(&components.geometry(), &records, &opts).map_err(usage)?;
    let cancel = cancel_on_ctrl_c("stopping after the current step (Ctrl-C again to quit now)")?;
    let start = std::time::Instant::now();
    let (bar, tty) = progress_bar(
        records.len(),
        "{bar:40} {pos}/{len} prompts [{elapsed_precise}<{eta_precise}]",
    );
    let mut on_progress = |done: usize, total: usize| {
        if tty {
            bar.set_position(done as u64);
        } else if done > 0 {
            eprintln!("{done}/{total} prompts");
        }
    };
    let items = match evaluate(&components, &records, &opts, &mut on_progress, &cancel).map_err(usage)? {
        Some(items) => items,
        None => {
            bar.abandon();
            return Err(Cancelled("cancelled; nothing written".into()).into());
        }
    };
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();

    let report = Report::new(&items);
    println!(
        "{} prompts from {}, {} steps, guidance {}, seed {}, {} captions ({seconds:.1} s)",
        items.len(),
        a.data.display(),
        a.steps,
        a.guidance,
        a.seed,
        a.caption
    );
    print!("{}", report.table());

    let framed: Vec<(&RgbImage, bool)> = items.iter().map(|i| (&i.image, i.check.all())).collect();
    // An even number of columns, so held-out prompts (even positions in eval.jsonl) fill the
    // even columns.
    let columns = ((items.len() as f64).sqrt().ceil() as usize).next_multiple_of(2);
    let sheet = contact_sheet(&framed, columns)?;
    pixart_core::weights::write_atomic(&a.out, &sheet.to_png(None)?)?;
    eprintln!("wrote {}", a.out.display());
    if let Some(j) = &a.json {
        let summary = serde_json::json!({
            "model": model,
            "data": a.data,
            "steps": a.steps,
            "guidance": a.guidance,
            "seed": a.seed,
            "caption": caption,
            "scheduler": a.scheduler,
            "seconds": seconds,
            "heldout": report.heldout,
            "seen": report.seen,
            "targets": report.targets,
            "results": item_results(&items, caption),
        });
        pixart_core::weights::write_atomic(j, &serde_json::to_vec_pretty(&summary)?)?;
        eprintln!("wrote {}", j.display());
    }
    Ok(())
}
