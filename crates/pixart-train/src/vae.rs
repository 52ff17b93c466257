//! Training a small `AutoencoderKL` (`pixart train-vae`): the loop, checkpoints, metrics and
//! the diffusers-layout output.
//!
//! - [`config`]: the TOML config ([`VaeTrainConfig`]).
//! - [`data`]: images from a JSON-lines list, in memory; the seeded data order and noise.
//! - [`plot`]: the reconstruction grid and loss-curve PNGs.
//!
//! Each step: a batch in the seeded order, the posterior sampled with seeded noise, the loss of
//! `pixart_vae::training` (L1/L2 + KL), backward, global-norm clipping, the optimiser step with
//! the warmed-up learning rate (`crate::optim`). Everything random is a function of the seed and
//! the step ([`data::derive_seed`]), so the RNG state of a checkpoint is its seed and step, and
//! `--resume` continues exactly.
//!
//! Output folder:
//! - `vae/`: `config.json` + `diffusion_pytorch_model.safetensors` as diffusers writes them,
//!   with `scaling_factor` = 1 / std of the latents over the data unless the config sets it
//!   (LDM's `scale_by_std`, CompVis/latent-diffusion `ldm/models/diffusion/ddpm.py`
//!   `LatentDiffusion.on_train_batch_start`);
//! - `checkpoint.safetensors`: weights (`model.*`), optimiser state (`optimizer.*`), step and
//!   seed (`meta.*`), written atomically;
//! - `metrics.jsonl`: one record per logged step (`step`, `loss`, `l1`, `l2`, `kl` (means over
//!   the steps since the last record), `lr`, `grad_norm`, `samples_per_s`, `seconds`), and
//!   `{"step", "eval": {...}}` records for the reconstructions;
//! - `loss.png`: the loss curve; `samples/step-NNNNNN.png`: inputs (top row) and their
//!   reconstructions (bottom row).
pub mod config;
pub mod data;
pub mod plot;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use pixart_core::{Error, Result};
use pixart_vae::training::{self, LossWeights};
use pixart_vae::{AutoencoderKl, AutoencoderKlConfig, Tiling};

pub use config::VaeTrainConfig;
use data::{derive_seed, seeded_normal, Dataset, Order, STREAM_INIT, STREAM_NOISE};

use crate::optim::{clip_grad_norm, warmup_factor, Grads, Optimizer};

/// The checkpoint file in the output folder.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// The metrics file in the output folder.
pub const METRICS: &str = "metrics.jsonl";
/// At most this many images are encoded to measure the latent std at the end.
pub const LATENT_STATS_MAX_IMAGES: usize = 2048;

/// One logged step.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub loss: f64,
    pub l1: f64,
    pub l2: f64,
    pub kl: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub samples_per_s: f64,
    /// Wall seconds since this run (or resume) started.
    pub seconds: f64,
}

/// How well the fixed sample images are reconstructed (posterior mean, inference mode).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalRecord {
    pub images: usize,
    /// mean |x − x̂| in [-1, 1] units.
    pub l1: f64,
    /// PSNR in dB of the images in [0, 1].
    pub psnr: f64,
}

/// What the trainer reports while it runs.
#[derive(Debug)]
pub enum Event<'a> {
    /// Images decoded so far.
    Loading { done: usize, total: usize },
    /// The data is in memory; unreadable files were skipped.
    DataReady {
        images: usize,
        skipped: &'a [(PathBuf, String)],
    },
    /// Continuing from a checkpoint at this step.
    Resumed { step: u64 },
    /// Something the user should know that does not stop training.
    Warning(String),
    /// After every optimiser step (`record` is set on logged steps).
    Step {
        step: u64,
        steps: u64,
        loss: f64,
        seconds_per_step: f64,
        record: Option<&'a StepRecord>,
    },
    /// A reconstruction PNG was written.
    Samples { path: &'a Path, eval: EvalRecord },
    /// A checkpoint was written.
    Checkpoint { path: &'a Path, step: u64 },
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished {
        /// The diffusers-layout `vae/` folder.
        vae_dir: PathBuf,
        steps: u64,
        /// Std of the posterior samples over the data.
        latent_std: f64,
        /// 1 / `latent_std`: the suggested `scaling_factor`.
        suggested_scaling_factor: f64,
        /// What `config.json` holds.
        scaling_factor: f64,
    },
    /// Stopped by the cancel flag; the checkpoint holds `step` steps.
    Cancelled { step: u64, checkpoint: PathBuf },
}

/// The trainable state: config, variables by name, and the model over them.
struct State {
    vae_cfg: AutoencoderKlConfig,
    varmap: VarMap,
    params: BTreeMap<String, Var>,
    model: AutoencoderKl,
}

fn params_of(varmap: &VarMap) -> Result<BTreeMap<String, Var>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::InvalidInput("VarMap lock poisoned".into()))?;
    Ok(data.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn build_state(cfg: &VaeTrainConfig, device: &Device) -> Result<State> {
    let vae_cfg = cfg.vae_config();
    let varmap = match &cfg.model.init_from {
        Some(dir) => {
            let (loaded, varmap) = training::load_varmap(dir, device)?;
            check_same_architecture(&vae_cfg, &loaded, dir)?;
            varmap
        }
        None => training::init_varmap(&vae_cfg, derive_seed(cfg.train.seed, STREAM_INIT, 0), device)?,
    };
    let model = training::trainable(&vae_cfg, &varmap, device)?;
    Ok(State {
        params: params_of(&varmap)?,
        vae_cfg,
        varmap,
        model,
    })
}

fn check_same_architecture(want: &AutoencoderKlConfig, got: &AutoencoderKlConfig, dir: &Path) -> Result<()> {
    let as_json = |c: &AutoencoderKlConfig| serde_json::to_value(c).unwrap_or_default();
    let (w, g) = (as_json(want), as_json(got));
    for key in [
        "block_out_channels",
        "layers_per_block",
        "latent_channels",
        "norm_num_groups",
        "mid_block_add_attention",
        "use_quant_conv",
        "use_post_quant_conv",
    ] {
        if w.get(key) != g.get(key) {
            return Err(Error::config(
                dir.join("config.json"),
                format!(
                    "{key} is {}, but the training config's model.{key} is {}",
                    g.get(key).cloned().unwrap_or_default(),
                    w.get(key).cloned().unwrap_or_default()
                ),
            ));
        }
    }
    Ok(())
}

/// The inference-mode model over a copy of the current weights (fast kernels, no graph).
fn inference_model(state: &State, device: &Device) -> Result<AutoencoderKl> {
    let tensors = training::varmap_tensors(&state.varmap)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    AutoencoderKl::new(&state.vae_cfg, vb)
}

/// The part of the config that must not change for a resume to be exact (everything but the
/// step count and the output intervals), as JSON.
fn resume_key(cfg: &VaeTrainConfig) -> Result<String> {
    let mut c = cfg.clone();
    c.train.steps = 0;
    c.output = config::OutputSection {
        dir: PathBuf::new(),
        checkpoint_every: 1,
        sample_every: 1,
        log_every: 1,
        samples: 1,
    };
    serde_json::to_string(&c).map_err(|e| Error::InvalidInput(format!("config: {e}")))
}

fn scalar_i64(v: u64) -> Result<Tensor> {
    Ok(Tensor::new(&[v as i64], &Device::Cpu)?)
}

fn read_i64(t: &HashMap<String, Tensor>, name: &str, path: &Path) -> Result<u64> {
    let v = t
        .get(name)
        .ok_or_else(|| Error::weights(path, format!("missing `{name}` (not a train-vae checkpoint?)")))?
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1::<i64>()?;
    v.first()
        .map(|&x| x as u64)
        .ok_or_else(|| Error::weights(path, format!("`{name}` is empty")))
}

/// Writes the checkpoint of `step` atomically.
fn save_checkpoint(path: &Path, cfg: &VaeTrainConfig, state: &State, opt: &dyn Optimizer, step: u64) -> Result<()> {
    let mut t: HashMap<String, Tensor> = HashMap::new();
    for (k, v) in &state.params {
        t.insert(format!("model.{k}"), v.as_tensor().to_device(&Device::Cpu)?);
    }
    let (st, opt_steps) = opt.state();
    for (k, v) in st {
        t.insert(format!("optimizer.{k}"), v.to_device(&Device::Cpu)?);
    }
    t.insert("meta.step".into(), scalar_i64(step)?);
    t.insert("meta.optimizer_steps".into(), scalar_i64(opt_steps)?);
    t.insert("meta.seed".into(), scalar_i64(cfg.train.seed)?);
    let key = resume_key(cfg)?.into_bytes();
    let n = key.len();
    t.insert("meta.config".into(), Tensor::from_vec(key, n, &Device::Cpu)?);
    pixart_core::weights::save_safetensors(&t, path)
}

/// Restores weights and optimiser state from `path`; returns the step it holds.
fn load_checkpoint(
    path: &Path,
    cfg: &VaeTrainConfig,
    state: &State,
    opt: &mut dyn Optimizer,
    device: &Device,
    events: &mut dyn FnMut(Event),
) -> Result<u64> {
    if !path.is_file() {
        return Err(Error::InvalidInput(format!(
            "--resume: {}: no checkpoint to resume from",
            path.display()
        )));
    }
    let t = candle_core::safetensors::load(path, device)
        .map_err(|e| Error::weights(path, format!("not a readable checkpoint: {e}")))?;
    let step = read_i64(&t, "meta.step", path)?;
    let opt_steps = read_i64(&t, "meta.optimizer_steps", path)?;
    if read_i64(&t, "meta.seed", path)? != cfg.train.seed {
        events(Event::Warning(
            "train.seed differs from the checkpoint's: the run will not continue exactly".into(),
        ));
    }
    if let Some(k) = t.get("meta.config") {
        let saved = String::from_utf8(k.to_vec1::<u8>()?).unwrap_or_default();
        if saved != resume_key(cfg)? {
            events(Event::Warning(
                "the config differs from the checkpoint's (beyond train.steps and [output]): the run will not continue exactly"
                    .into(),
            ));
        }
    }
    let mut problems = Vec::new();
    for (name, var) in &state.params {
        match t.get(&format!("model.{name}")) {
            Some(w) if w.dims() == var.dims() => var.set(&w.to_dtype(DType::F32)?)?,
            Some(w) => problems.push(format!(
                "model.{name}: shape {:?}, the model has {:?}",
                w.dims(),
                var.dims()
            )),
            None => problems.push(format!("model.{name}: missing")),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Weights {
            path: path.to_path_buf(),
            problems,
        });
    }
    let opt_state: HashMap<String, Tensor> = t
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("optimizer.").map(|k| (k.to_string(), v.clone())))
        .collect();
    opt.load_state(opt_state, opt_steps)?;
    Ok(step)
}

/// The logged step records in `metrics.jsonl` up to `step`; the file is rewritten without the
/// records after it (they will be logged again).
fn truncate_metrics(path: &Path, step: u64) -> Result<Vec<StepRecord>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let mut kept = String::new();
    let mut history = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue; // a line cut short by a crash
        };
        if v.get("step").and_then(|s| s.as_u64()).is_some_and(|s| s <= step) {
            kept.push_str(line);
            kept.push('\n');
            if let Ok(r) = serde_json::from_value::<StepRecord>(v) {
                history.push(r);
            }
        }
    }
    pixart_core::weights::write_atomic(path, kept.as_bytes())?;
    Ok(history)
}

fn append_line(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let line = serde_json::to_string(value).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::io(path, e))
}

fn write_loss_curve(path: &Path, history: &[StepRecord], w: LossWeights) -> Result<()> {
    let pts = |f: fn(&StepRecord) -> f64| history.iter().map(|r| (r.step, f(r))).collect::<Vec<_>>();
    let total = pts(|r| r.loss);
    let l1 = pts(|r| r.l1);
    let l2 = pts(|r| r.l2);
    let mut series = vec![plot::Series {
        points: &total,
        color: [31, 119, 180],
    }];
    if w.l1 > 0.0 && w.l2 > 0.0 {
        series.push(plot::Series {
            points: &l1,
            color: [255, 127, 14],
        });
        series.push(plot::Series {
            points: &l2,
            color: [44, 160, 44],
        });
    }
    plot::loss_curve(&series, path)
}

/// Encodes `x` with `vae` and decodes the posterior mean; returns the reconstruction and its
/// evaluation.
fn reconstruct(vae: &AutoencoderKl, x: &Tensor) -> Result<(Tensor, EvalRecord)> {
    let post = vae.encode(x, Tiling::Off)?;
    let rec = vae.decode(&post.mean, Tiling::Off)?.clamp(-1f32, 1f32)?;
    let diff = (&rec - x)?;
    let l1 = diff.abs()?.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    // MSE of images in [0, 1] = MSE in [-1, 1] / 4.
    let mse = diff.sqr()?.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()? / 4.0;
    let psnr = -10.0 * mse.max(1e-12).log10();
    Ok((
        rec,
        EvalRecord {
            images: x.dim(0)?,
            l1,
            psnr,
        },
    ))
}

/// The std of posterior samples over (up to [`LATENT_STATS_MAX_IMAGES`]) images of `data`,
/// all latent values pooled (unbiased, as torch's `std`).
fn latent_std(vae: &AutoencoderKl, data: &Dataset, batch: usize, seed: u64, device: &Device) -> Result<f64> {
    let n = data.len().min(LATENT_STATS_MAX_IMAGES);
    let (mut sum, mut sum_sq, mut count) = (0f64, 0f64, 0f64);
    let mut start = 0;
    while start < n {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let x = data.batch(&idx, device)?;
        let post = vae.encode(&x, Tiling::Off)?;
        let noise = seeded_normal(
            derive_seed(seed, STREAM_NOISE, u64::MAX - start as u64),
            post.mean.dims(),
            device,
        )?;
        let z = post.sample(&noise)?.to_dtype(DType::F64)?;
        sum += z.sum_all()?.to_scalar::<f64>()?;
        sum_sq += z.sqr()?.sum_all()?.to_scalar::<f64>()?;
        count += z.elem_count() as f64;
        start += batch;
    }
    let mean = sum / count;
    let var = (sum_sq - count * mean * mean) / (count - 1.0).max(1.0);
    Ok(var.max(0.0).sqrt())
}

/// Runs (or, with `resume`, continues) the training that `cfg` describes on `device`.
/// `events` receives progress; `cancel` stops the run after the current step with a
/// checkpoint. The config must have come through [`VaeTrainConfig::from_file`] or
/// [`VaeTrainConfig::from_toml`] (validated).
pub fn train_vae(
    cfg: &VaeTrainConfig,
    resume: bool,
    device: &Device,
    events: &mut dyn FnMut(Event),
    cancel: &AtomicBool,
) -> Result<Outcome> {
    cfg.validate().map_err(Error::InvalidInput)?;
    let out = &cfg.output.dir;
    let ckpt_path = out.join(CHECKPOINT);
    if !resume && ckpt_path.exists() {
        return Err(Error::InvalidInput(format!(
            "{}: a run is already there; pass --resume to continue it, or choose another output.dir",
            ckpt_path.display()
        )));
    }
    std::fs::create_dir_all(out.join("samples")).map_err(|e| Error::io(out, e))?;

    // 1. Data.
    let size = cfg.size();
    let data = Dataset::load(&cfg.data.jsonl, size, &mut |done, total| {
        events(Event::Loading { done, total })
    })?;
    events(Event::DataReady {
        images: data.len(),
        skipped: &data.skipped,
    });

    // 2. Model and optimiser (fresh, fine-tune, or from the checkpoint).
    let state = build_state(cfg, device)?;
    let mut opt = cfg.optimizer.build(state.params.clone());
    let metrics_path = out.join(METRICS);
    let loss_png = out.join("loss.png");
    let mut start_step = 0;
    let mut history = Vec::new();
    if resume {
        start_step = load_checkpoint(&ckpt_path, cfg, &state, opt.as_mut(), device, events)?;
        history = truncate_metrics(&metrics_path, start_step)?;
        events(Event::Resumed { step: start_step });
    } else if metrics_path.exists() {
        std::fs::remove_file(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
    }

    // 3. The loop.
    let weights = LossWeights {
        l1: cfg.loss.l1,
        l2: cfg.loss.l2,
        kl: cfg.loss.kl,
    };
    let t = &cfg.train;
    let sample_idx: Vec<usize> = (0..cfg.output.samples.min(data.len())).collect();
    let sample_x = data.batch(&sample_idx, device)?;
    let mut order = Order::new(t.seed, data.len());
    let lat = cfg.vae_config().latent_channels;
    let f = state.vae_cfg.downsample_factor();
    let run_start = Instant::now();
    let mut acc = [0f64; 4]; // loss, l1, l2, kl since the last record
    let (mut acc_steps, mut acc_seconds) = (0u64, 0f64);
    let mut step = start_step;
    while step < t.steps {
        if cancel.load(Ordering::SeqCst) {
            save_checkpoint(&ckpt_path, cfg, &state, opt.as_ref(), step)?;
            events(Event::Checkpoint { path: &ckpt_path, step });
            return Ok(Outcome::Cancelled {
                step,
                checkpoint: ckpt_path,
            });
        }
        let t0 = Instant::now();
        let lr = t.lr * warmup_factor(step, t.warmup_steps);
        let x = data.batch(&order.batch(step, t.batch_size), device)?;
        let noise = seeded_normal(
            derive_seed(t.seed, STREAM_NOISE, step),
            &[t.batch_size, lat, size / f, size / f],
            device,
        )?;
        let fw = training::forward(&state.model, &x, &noise)?;
        let loss = training::vae_loss(&x, &fw.reconstruction, &fw.posterior, weights)?;
        let store = loss.total.backward()?;
        let mut grads: Grads = state
            .params
            .iter()
            .filter_map(|(k, v)| store.get(v.as_tensor()).map(|g| (k.clone(), g.clone())))
            .collect();
        drop(store);
        let grad_norm = clip_grad_norm(&mut grads, t.grad_clip)?;
        opt.step(&grads, lr)?;
        step += 1;

        let parts = [&loss.total, &loss.l1, &loss.l2, &loss.kl].map(|v| {
            v.to_dtype(DType::F64)
                .and_then(|v| v.to_scalar::<f64>())
                .unwrap_or(f64::NAN)
        });
        for (a, p) in acc.iter_mut().zip(parts) {
            *a += p;
        }
        acc_steps += 1;
        let dt = t0.elapsed().as_secs_f64();
        acc_seconds += dt;
        let last = step == t.steps;
        let record = if step.is_multiple_of(cfg.output.log_every) || last {
            let n = acc_steps.max(1) as f64;
            let r = StepRecord {
                step,
                loss: acc[0] / n,
                l1: acc[1] / n,
                l2: acc[2] / n,
                kl: acc[3] / n,
                lr,
                grad_norm,
                samples_per_s: (acc_steps as f64 * t.batch_size as f64) / acc_seconds.max(1e-9),
                seconds: run_start.elapsed().as_secs_f64(),
            };
            acc = [0.0; 4];
            (acc_steps, acc_seconds) = (0, 0.0);
            append_line(&metrics_path, &r)?;
            history.push(r.clone());
            write_loss_curve(&loss_png, &history, weights)?;
            Some(r)
        } else {
            None
        };
        events(Event::Step {
            step,
            steps: t.steps,
            loss: parts[0],
            seconds_per_step: dt,
            record: record.as_ref(),
        });
        if step.is_multiple_of(cfg.output.sample_every) || last {
            let vae = inference_model(&state, device)?;
            let (rec, eval) = reconstruct(&vae, &sample_x)?;
            let path = out.join("samples").join(format!("step-{step:06}.png"));
            plot::reconstruction_grid(&sample_x, &rec, &path)?;
            append_line(&metrics_path, &serde_json::json!({"step": step, "eval": eval}))?;
            events(Event::Samples { path: &path, eval });
        }
        if step.is_multiple_of(cfg.output.checkpoint_every) || last {
            save_checkpoint(&ckpt_path, cfg, &state, opt.as_ref(), step)?;
            events(Event::Checkpoint { path: &ckpt_path, step });
        }
    }

    // 4. The diffusers folder, with the scaling factor measured over the data.
    let vae = inference_model(&state, device)?;
    let std = latent_std(&vae, &data, t.batch_size.max(16), t.seed, device)?;
    let suggested = if std > 0.0 { 1.0 / std } else { 1.0 };
    let scaling_factor = cfg.model.scaling_factor.unwrap_or(suggested);
    let mut vae_cfg = state.vae_cfg.clone();
    vae_cfg.scaling_factor = scaling_factor;
    let vae_dir = out.join("vae");
    training::save_diffusers(&vae_dir, &vae_cfg, &state.varmap)?;
    Ok(Outcome::Finished {
        vae_dir,
        steps: step,
        latent_std: std,
        suggested_scaling_factor: suggested,
        scaling_factor,
    })
}
