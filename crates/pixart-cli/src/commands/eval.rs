//! `pixart eval demo`: generates the demo dataset's evaluation prompts with a model, checks each
//! image with the rule-based checker, prints accuracy per attribute for held-out and seen
//! prompts, and writes a contact sheet and a JSON summary (pixart-demo does the work).
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use clap::{Args, Subcommand};
use pixart_demo::dataset::{read_eval, EvalRecord};
use pixart_demo::eval::{
    contact_sheet, evaluate, item_results, validate, Accuracy, CaptionKind, EvalItem, EvalOptions, Report,
};
use pixart_pipeline::{builtin_model_dir, is_builtin, ComponentOptions, ComponentPaths, PipelineComponents, RgbImage};
use pixart_schedulers::default_steps;
use pixart_train::metrics::{plot_in, Curve};
use pixart_train::TrainConfig;

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
    /// `eval demo` on the checkpoints of `pixart train` runs (their EMA weights when kept):
    /// accuracy against training step, as a chart (PNG) and JSON.
    Curve(CurveEvalArgs),
    /// The VAE's ceiling: demo images encoded and decoded, checked by rule like generated ones.
    Vae(VaeEvalArgs),
}

#[derive(Debug, Args)]
pub struct VaeEvalArgs {
    /// A diffusers AutoencoderKL folder, or a pipeline folder with vae/ (default: the built-in
    /// model's).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// Images with their attributes: train.jsonl written by `pixart demo-data`.
    #[arg(long)]
    data: PathBuf,
    /// The first N images.
    #[arg(long, default_value_t = 512)]
    limit: usize,
    /// Images per encode/decode call.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// A contact sheet of the first 64 reconstructions (framed green when every attribute reads
    /// back right), written atomically.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Prompt i uses seed SEED+i. With --seeds every prompt is generated once per listed seed \
(prompt i of the pass with seed S uses S+i) and the accuracy is pooled over all passes: one pass of 72 \
held-out prompts is good to about ±10 points, four to ±5. \
Held-out targets: colour ≥ 90 %, position ≥ 80 %, shape ≥ 70 %. The contact sheet frames each image green (every attribute right) or red, in the order of the jsonl \
(held-out prompts in the odd columns counting from 1, seen ones in the even columns)."
)]
pub struct DemoEvalArgs {
    /// A diffusers PixArt-Σ pipeline folder (default: the built-in model), or a transformer
    /// folder with --base.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The pipeline folder that gives the other components when --model is a transformer folder.
    #[arg(long)]
    base: Option<PathBuf>,
    #[command(flatten)]
    eval: EvalSettings,
    /// Generate every prompt once per seed (comma-separated first-prompt seeds, e.g.
    /// 0,1000,2000,3000) and pool the accuracy; instead of --seed.
    #[arg(long, value_delimiter = ',', conflicts_with = "seed")]
    seeds: Vec<u64>,
    /// The contact sheet (PNG), written atomically.
    #[arg(long)]
    out: PathBuf,
    /// The summary and every prompt's verdict as JSON, written atomically.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What both `eval demo` and `eval curve` take.
#[derive(Debug, Args)]
struct EvalSettings {
    /// The evaluation prompts: eval.jsonl written by `pixart demo-data`.
    #[arg(long)]
    data: PathBuf,
    /// Denoising steps (default 20; with --scheduler sa-solver 25 and iddpm 100, as PixArt's own
    /// inference script).
    #[arg(long)]
    steps: Option<usize>,
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
    /// Sampler (the list in `--help` comes from the samplers the code knows, see
    /// [`super::sampler_help`]).
    #[arg(long)]
    scheduler: Option<String>,
    /// Prompts per pipeline call.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Transformer dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Each run is a `pixart train` output folder: its config.toml names the base pipeline \
(tokenizer, text encoder, VAE, scheduler) and checkpoints/step-N/transformer are evaluated, with \
transformer/ (the final model) at the run's last step when that checkpoint is gone. The chart shows \
the held-out accuracy of --attribute for every run (solid) and the seen one (lighter)."
)]
pub struct CurveEvalArgs {
    /// A `pixart train` output folder (repeat to compare runs on one chart).
    #[arg(long = "run", required = true)]
    runs: Vec<PathBuf>,
    /// Only the checkpoints whose step is a multiple of N (the final model is always taken).
    #[arg(long)]
    every: Option<u64>,
    /// The attribute the chart shows: all, color, shape, position, size or background; a
    /// comma-separated list writes one chart per attribute (OUT with `-ATTRIBUTE` before `.png`).
    #[arg(long, default_value = "all", value_delimiter = ',')]
    attribute: Vec<String>,
    #[command(flatten)]
    eval: EvalSettings,
    /// The chart (PNG), written atomically.
    #[arg(long)]
    out: PathBuf,
    /// Every point (run, step, held-out and seen accuracy per attribute) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also chart the runs' training loss (log.jsonl, smoothed) against the step, to this PNG.
    #[arg(long)]
    loss_out: Option<PathBuf>,
}

/// Parsed [`EvalSettings`]: the prompts and how to generate them.
struct Prepared {
    records: Vec<EvalRecord>,
    opts: EvalOptions,
    component_opts: ComponentOptions,
}

impl EvalSettings {
    /// Everything the user typed is checked before a model loads.
    fn prepare(&self) -> Result<Prepared> {
        let caption = CaptionKind::parse(&self.caption).map_err(usage)?;
        let sampler = sampler(self.scheduler.as_deref())?;
        let dt = dtype(&self.dtype)?;
        let dev = device(&self.device)?;
        if self.limit == Some(0) {
            return Err(UsageError("--limit must be at least 1".into()).into());
        }
        let mut records = read_eval(&self.data).map_err(usage)?;
        if let Some(n) = self.limit {
            records.truncate(n);
        }
        Ok(Prepared {
            records,
            opts: EvalOptions {
                steps: self.steps.unwrap_or_else(|| default_steps(sampler)),
                guidance: self.guidance,
                seed: self.seed,
                caption,
                batch: self.batch,
                sampler,
            },
            // Every batch of prompts is a generation: T5 is kept between them.
            component_opts: ComponentOptions {
                device: dev,
                dtype: dt,
                keep_text_encoder: true,
                ..ComponentOptions::default()
            },
        })
    }
}

impl Prepared {
    /// Loads `paths` (checked against the config files first, so that a bad request fails
    /// before loading) and evaluates every prompt with a progress bar, once per seed of
    /// `seeds` (the first prompt's seed of each pass), the passes one after the other.
    /// `Ok(None)`: cancelled.
    fn run(&self, paths: &ComponentPaths, seeds: &[u64], cancel: &AtomicBool) -> Result<Option<Vec<EvalItem>>> {
        if let Ok(geometry) = paths.resolve().map_err(usage)?.geometry() {
            validate(&geometry, &self.records, &self.opts).map_err(usage)?;
        }
        eprintln!("loading {}", paths.model.display());
        let components = PipelineComponents::load(paths, &self.component_opts).map_err(usage)?;
        validate(&components.geometry(), &self.records, &self.opts).map_err(usage)?;
        let total = self.records.len() * seeds.len();
        let (bar, tty) = progress_bar(
            total,
            "{wide_bar} {pos}/{len} prompts [{elapsed_precise}<{eta_precise}]",
        );
        let mut all = Vec::with_capacity(total);
        for &seed in seeds {
            let before = all.len();
            let mut on_progress = |done: usize, _: usize| {
                if tty {
                    bar.set_position((before + done) as u64);
                } else if done > 0 {
                    eprintln!("{}/{total} prompts", before + done);
                }
            };
            let opts = EvalOptions { seed, ..self.opts };
            match evaluate(&components, &self.records, &opts, &mut on_progress, cancel).map_err(usage)? {
                Some(items) => all.extend(items),
                None => {
                    bar.abandon();
                    return Ok(None);
                }
            }
        }
        bar.finish_and_clear();
        Ok(Some(all))
    }
}

pub fn run(a: EvalArgs) -> Result<()> {
    match a.what {
        EvalCommand::Demo(d) => demo(d),
        EvalCommand::Curve(c) => curve(c),
        EvalCommand::Vae(v) => vae_ceiling(v),
    }
}

fn demo(a: DemoEvalArgs) -> Result<()> {
    let prepared = a.eval.prepare()?;
    output_folder_exists(&a.out)?;
    if let Some(j) = &a.json {
        output_folder_exists(j)?;
    }
    let seeds = if a.seeds.is_empty() {
        vec![a.eval.seed]
    } else {
        a.seeds.clone()
    };
    if let Some(s) = seeds
        .iter()
        .enumerate()
        .find_map(|(i, s)| seeds[..i].contains(s).then_some(s))
    {
        return Err(UsageError(format!("--seeds lists seed {s} twice")).into());
    }
    let model = match &a.model {
        Some(m) if !is_builtin(&m.to_string_lossy()) => m.clone(),
        _ if a.base.is_some() => {
            return Err(UsageError("--base needs --model (a transformer folder)".into()).into());
        }
        _ => builtin_model_dir().map_err(usage)?,
    };
    let paths = ComponentPaths {
        model: model.clone(),
        base: a.base.clone(),
        ..Default::default()
    };
    let cancel = cancel_on_ctrl_c("stopping after the current step (Ctrl-C again to quit now)")?;
    let start = std::time::Instant::now();
    let Some(items) = prepared.run(&paths, &seeds, &cancel)? else {
        return Err(Cancelled("cancelled; nothing written".into()).into());
    };
    let seconds = start.elapsed().as_secs_f64();
    let (e, caption) = (&a.eval, prepared.opts.caption);

    let report = Report::new(&items);
    let seed_list = seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    println!(
        "{} prompts from {}, {} steps, guidance {}, seed{} {seed_list}, {} captions ({seconds:.1} s)",
        items.len(),
        e.data.display(),
        prepared.opts.steps,
        e.guidance,
        if seeds.len() > 1 { "s" } else { "" },
        e.caption
    );
    print!("{}", report.table());
    if seeds.len() > 1 {
        // Each pass on its own: how far one pass's figure can be from the pooled one.
        let per_pass = items.len() / seeds.len();
        for (seed, pass) in seeds.iter().zip(items.chunks(per_pass)) {
            let r = Report::new(pass);
            let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
            println!(
                "seed {seed}: held-out color {}, position {}, shape {}",
                pct(r.heldout.color),
                pct(r.heldout.position),
                pct(r.heldout.shape)
            );
        }
    }

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
            "base": a.base,
            "data": e.data,
            "steps": prepared.opts.steps,
            "guidance": e.guidance,
            "seed": seeds[0],
            "seeds": seeds,
            "caption": caption,
            "scheduler": e.scheduler,
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

/// One line of a chart: label, (step, value) points, colour.
type Series = (String, Vec<(f64, f64)>, [u8; 3]);

/// Line colours of the runs, in order.
const PALETTE: [[u8; 3]; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [148, 103, 189],
    [255, 127, 14],
    [23, 190, 207],
];

fn run_name(run: &Path) -> String {
    run.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run.display().to_string())
}

/// The training loss of every run (exponential moving average over ~2 % of the run) on one chart.
fn loss_chart(path: &Path, runs: &[PathBuf]) -> Result<()> {
    let mut series = Vec::new();
    for run in runs {
        let log = run.join("log.jsonl");
        let raw = pixart_train::metrics::JsonlLog::series(&log, "loss").map_err(usage)?;
        let alpha = (50.0 / raw.len().max(1) as f64).clamp(0.02, 1.0);
        let mut ema = None;
        let smooth: Vec<(f64, f64)> = raw
            .iter()
            .map(|&(x, y)| {
                let v = ema.map_or(y, |e: f64| e * (1.0 - alpha) + y * alpha);
                ema = Some(v);
                (x, v)
            })
            .collect();
        series.push((run_name(run), smooth));
    }
    let curves: Vec<Curve> = series
        .iter()
        .enumerate()
        .map(|(k, (label, points))| Curve {
            label,
            points,
            color: PALETTE[k % PALETTE.len()],
        })
        .collect();
    // The y axis up to the 95th percentile (×1.2), so that the first steps of a run from
    // scratch (losses many times the rest) do not flatten every curve.
    let mut ys: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .filter(|v| v.is_finite())
        .collect();
    ys.sort_by(f64::total_cmp);
    let y_range = (!ys.is_empty()).then(|| (ys[0].min(0.0), 1.2 * ys[(ys.len() - 1) * 95 / 100]));
    plot_in(path, "training loss (smoothed)", &curves, false, y_range)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// One evaluated checkpoint of a run.
#[derive(serde::Serialize)]
struct CurvePoint {
    step: u64,
    transformer: PathBuf,
    heldout: Accuracy,
    seen: Accuracy,
}

/// The transformers of a `pixart train` run to evaluate: (step, folder), by step; a
/// checkpoint's `transformer_ema/` when it has one (what the run exports), else `transformer/`.
fn run_points(run: &Path, cfg: &TrainConfig, every: Option<u64>) -> Result<Vec<(u64, PathBuf)>> {
    let mut points = Vec::new();
    let ckpts = run.join("checkpoints");
    if let Ok(entries) = std::fs::read_dir(&ckpts) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(step) = name.strip_prefix("step-").and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            // What the run exports at that step: the EMA weights when it keeps them.
            let ema = e.path().join("transformer_ema");
            let t = if ema.join("config.json").is_file() {
                ema
            } else {
                e.path().join("transformer")
            };
            if t.join("config.json").is_file() && every.is_none_or(|n| step.is_multiple_of(n)) {
                points.push((step, t));
            }
        }
    }
    let last = cfg.train.steps;
    let fin = run.join("transformer");
    if fin.join("config.json").is_file() && !points.iter().any(|p| p.0 == last) {
        points.push((last, fin));
    }
    points.sort();
    if points.is_empty() {
        return Err(UsageError(format!(
            "{}: no checkpoints (checkpoints/step-N/transformer) and no final transformer/",
            run.display()
        ))
        .into());
    }
    Ok(points)
}

fn accuracy_of(a: &Accuracy, attribute: &str) -> Option<f64> {
    a.columns().iter().find(|c| c.0 == attribute).and_then(|c| c.1)
}

fn curve(a: CurveEvalArgs) -> Result<()> {
    let prepared = a.eval.prepare()?;
    const ATTRIBUTES: [&str; 6] = ["all", "color", "shape", "position", "size", "background"];
    if let Some(bad) = a.attribute.iter().find(|x| !ATTRIBUTES.contains(&x.as_str())) {
        return Err(UsageError(format!("--attribute {bad}: expected one of {}", ATTRIBUTES.join(", "))).into());
    }
    if a.every == Some(0) {
        return Err(UsageError("--every must be at least 1".into()).into());
    }
    output_folder_exists(&a.out)?;
    for p in [&a.json, &a.loss_out].into_iter().flatten() {
        output_folder_exists(p)?;
    }
    // Every run is read before the first model loads.
    let mut runs = Vec::new();
    for run in &a.runs {
        if !run.join("config.toml").is_file() {
            return Err(UsageError(format!(
                "{}: not a `pixart train` output folder (no config.toml)",
                run.display()
            ))
            .into());
        }
        let cfg = TrainConfig::from_file(&run.join("config.toml")).map_err(usage)?;
        let points = run_points(run, &cfg, a.every)?;
        runs.push((run_name(run), cfg.model.base.clone(), points));
    }
    if let Some(path) = &a.loss_out {
        loss_chart(path, &a.runs)?;
    }
    let cancel = cancel_on_ctrl_c("stopping after the current step (Ctrl-C again to quit now)")?;
    let mut results: Vec<(String, Vec<CurvePoint>)> = Vec::new();
    println!("run                  step  held-out: all  color  shape  position   seen: all");
    for (name, base, points) in &runs {
        let mut done = Vec::new();
        for (step, transformer) in points {
            eprintln!("{name}: step {step}");
            let paths = ComponentPaths {
                model: transformer.clone(),
                base: Some(base.clone()),
                ..Default::default()
            };
            let Some(items) = prepared.run(&paths, &[prepared.opts.seed], &cancel)? else {
                return Err(Cancelled("cancelled; nothing written".into()).into());
            };
            let report = Report::new(&items);
            let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.0}%", 100.0 * v));
            println!(
                "{name:<18} {step:>6}  {:>13}  {:>5}  {:>5}  {:>8}  {:>10}",
                pct(report.heldout.all),
                pct(report.heldout.color),
                pct(report.heldout.shape),
                pct(report.heldout.position),
                pct(report.seen.all)
            );
            done.push(CurvePoint {
                step: *step,
                transformer: transformer.clone(),
                heldout: report.heldout,
                seen: report.seen,
            });
        }
        results.push((name.clone(), done));
    }

    for attribute in &a.attribute {
        let out = if a.attribute.len() == 1 {
            a.out.clone()
        } else {
            let stem = a
                .out
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            a.out.with_file_name(format!("{stem}-{attribute}.png"))
        };
        let series: Vec<Series> = results
            .iter()
            .enumerate()
            .flat_map(|(k, (name, pts))| {
                let c = PALETTE[k % PALETTE.len()];
                let light = c.map(|v| ((v as u16 + 2 * 255) / 3) as u8);
                let line = |acc: &dyn Fn(&CurvePoint) -> Option<f64>| -> Vec<(f64, f64)> {
                    pts.iter().filter_map(|p| acc(p).map(|v| (p.step as f64, v))).collect()
                };
                [
                    (
                        format!("{name} held-out"),
                        line(&|p| accuracy_of(&p.heldout, attribute)),
                        c,
                    ),
                    (
                        format!("{name} seen"),
                        line(&|p| accuracy_of(&p.seen, attribute)),
                        light,
                    ),
                ]
            })
            .collect();
        let curves: Vec<Curve> = series
            .iter()
            .map(|(label, points, color)| Curve {
                label,
                points,
                color: *color,
            })
            .collect();
        let title = format!(
            "accuracy ({attribute}) on {} prompts, {} captions",
            prepared.records.len(),
            a.eval.caption
        );
        plot_in(&out, &title, &curves, false, Some((0.0, 1.0)))?;
        eprintln!("wrote {}", out.display());
    }
    if let Some(j) = &a.json {
        let runs: Vec<serde_json::Value> = results
            .iter()
            .map(|(name, points)| serde_json::json!({ "run": name, "points": points }))
            .collect();
        let summary = serde_json::json!({
            "data": a.eval.data,
            "steps": prepared.opts.steps,
            "guidance": a.eval.guidance,
            "seed": a.eval.seed,
            "caption": prepared.opts.caption,
            "runs": runs,
        });
        pixart_core::weights::write_atomic(j, &serde_json::to_vec_pretty(&summary)?)?;
        eprintln!("wrote {}", j.display());
    }
    Ok(())
}

/// (b, 3, h, w) in [-1, 1] → 8-bit images (diffusers' postprocess: clamp(x/2 + 0.5), round).
fn to_images(x: &candle_core::Tensor) -> Result<Vec<RgbImage>> {
    let (b, c, h, w) = x.dims4()?;
    // (b, 3, h, w) -> (b, h, w, 3)
    let v = x.permute((0, 2, 3, 1))?.flatten_all()?.to_vec1::<f32>()?;
    let per = h * w * c;
    Ok((0..b)
        .map(|k| RgbImage {
            width: w,
            height: h,
            data: v[k * per..(k + 1) * per]
                .iter()
                .map(|&x| ((x * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect(),
        })
        .collect())
}

fn vae_ceiling(a: VaeEvalArgs) -> Result<()> {
    use pixart_demo::check::check;
    if a.limit == 0 || a.batch == 0 {
        return Err(UsageError("--limit and --batch must be at least 1".into()).into());
    }
    if let Some(o) = &a.out {
        output_folder_exists(o)?;
    }
    let mut records = pixart_demo::dataset::read_train(&a.data).map_err(usage)?;
    records.truncate(a.limit);
    let root = a.data.parent().unwrap_or(Path::new("."));
    let dir = match &a.vae {
        Some(v) => v.clone(),
        None => builtin_model_dir().map_err(usage)?,
    };
    let dir = pixart_vae::loading::vae_dir(&dir).map_err(usage)?;
    let vae = pixart_vae::load_vae(&dir, candle_core::DType::F32, &candle_core::Device::Cpu).map_err(usage)?;
    let (bar, tty) = progress_bar(
        records.len(),
        "{wide_bar} {pos}/{len} images [{elapsed_precise}<{eta_precise}]",
    );
    let (mut originals, mut recons, mut sheet) = (Vec::new(), Vec::new(), Vec::new());
    let (mut sq_err, mut values) = (0.0f64, 0usize);
    for chunk in records.chunks(a.batch) {
        let mut images = Vec::with_capacity(chunk.len());
        for r in chunk {
            let p = root.join(&r.path);
            let bytes = std::fs::read(&p).map_err(|e| UsageError(format!("{}: {e}", p.display())))?;
            images.push(RgbImage::from_png(&bytes, &p.display().to_string()).map_err(usage)?);
        }
        let (w, h) = (images[0].width, images[0].height);
        if images.iter().any(|i| (i.width, i.height) != (w, h)) {
            return Err(UsageError(format!("{}: the images differ in size", a.data.display())).into());
        }
        // (b, h, w, 3) bytes -> (b, 3, h, w) in [-1, 1]
        let flat: Vec<f32> = images
            .iter()
            .flat_map(|i| i.data.iter().map(|&v| v as f32 / 127.5 - 1.0))
            .collect();
        let x = candle_core::Tensor::from_vec(flat, (images.len(), h, w, 3), &candle_core::Device::Cpu)?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        let z = vae.encode(&x, pixart_vae::Tiling::Off).map_err(usage)?.mean;
        let y = vae
            .decode(&z, pixart_vae::Tiling::Off)
            .map_err(usage)?
            .to_dtype(candle_core::DType::F32)?;
        pixart_pipeline::ensure_finite(&y, || format!("{}: the reconstructions", dir.display()))?;
        for (r, (img, rec)) in chunk.iter().zip(images.iter().zip(to_images(&y)?)) {
            sq_err += img
                .data
                .iter()
                .zip(&rec.data)
                .map(|(&p, &q)| (p as f64 - q as f64).powi(2))
                .sum::<f64>();
            values += img.data.len();
            originals.push(check(img, &r.attributes).map_err(usage)?);
            let c = check(&rec, &r.attributes).map_err(usage)?;
            if sheet.len() < 64 {
                sheet.push((rec, c.all()));
            }
            recons.push(c);
        }
        if tty {
            bar.inc(chunk.len() as u64);
        }
    }
    bar.finish_and_clear();
    let mse = sq_err / values.max(1) as f64;
    let psnr = 10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10();
    println!(
        "{} images of {} through {} (PSNR {psnr:.2} dB)",
        records.len(),
        a.data.display(),
        dir.display()
    );
    println!(
        "{:<16} {:>10} {:>7} {:>7} {:>7} {:>9} {:>7}",
        "images", "background", "color", "shape", "size", "position", "all"
    );
    for (name, acc) in [
        ("originals", Accuracy::of(&originals)),
        ("reconstructions", Accuracy::of(&recons)),
    ] {
        let cols = acc
            .columns()
            .map(|(_, v)| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v)));
        println!(
            "{name:<16} {:>10} {:>7} {:>7} {:>7} {:>9} {:>7}",
            cols[0], cols[1], cols[2], cols[3], cols[4], cols[5]
        );
    }
    // Shape is what the VAE loses first (small corners come back rounded): per size and shape.
    let mut by_kind: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for (r, c) in records.iter().zip(&recons) {
        let kind = format!("{} {}", r.attributes.size.name(), r.attributes.shape.name());
        let e = by_kind.entry(kind).or_default();
        e.0 += usize::from(c.shape);
        e.1 += 1;
    }
    let kinds: Vec<String> = by_kind.iter().map(|(k, (ok, n))| format!("{k} {ok}/{n}")).collect();
    println!("shape read back from the reconstructions: {}", kinds.join(", "));
    if let Some(o) = &a.out {
        let framed: Vec<(&RgbImage, bool)> = sheet.iter().map(|(i, ok)| (i, *ok)).collect();
        pixart_core::weights::write_atomic(o, &contact_sheet(&framed, 8)?.to_png(None)?)?;
        eprintln!("wrote {}", o.display());
    }
    Ok(())
}
