//! The training loop (PixArt-sigma@1ce521af `train_scripts/train.py`): precomputed VAE
//! posteriors and T5 features in, IDDPM loss, AdamW or CAME with linear warm-up, global-norm
//! clipping, gradient accumulation, optional EMA, caption dropout to the null caption,
//! full fine-tuning or LoRA, atomic checkpoints and exact resume.
//!
//! Every random draw of optimiser step k (batch, latent sample, timesteps, noise, dropout)
//! comes from a generator seeded with (seed, k, micro-batch), so a resumed run repeats the
//! uninterrupted run's steps exactly.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use pixart_core::weights::{Recording, Shared};
use pixart_core::{Error, Result};
use pixart_model::init::InitWeights;
use pixart_model::loading::{to_diffusers, LoadOptions};
use pixart_model::GradSink;
use pixart_model::{PixArtTransformer, TransformerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde_json::json;

use crate::checkpoint::{self, CheckpointData, TrainerState};
use crate::config::{CaptionInit, TrainConfig};
use crate::data::{Batch, TrainData};
use crate::diffusion::GaussianDiffusion;
use crate::lora::Lora;
use crate::metrics::{plot, Curve, JsonlLog};
use crate::optim::{clip_grad_norm, Ema, Grads, Optimizer};

/// What the loop reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// Step `step` of `total` finished.
    Step {
        step: u64,
        total: u64,
        loss: f64,
        lr: f64,
        samples_per_s: f64,
    },
    /// A checkpoint was written.
    Checkpoint(PathBuf),
    /// Sample images were written.
    Samples(PathBuf),
    /// Something worth a line (resume, warnings).
    Note(String),
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Summary {
    pub steps_done: u64,
    pub cancelled: bool,
    pub final_loss: Option<f64>,
    pub seconds: f64,
    /// The exported model (`transformer/`, or `lora.safetensors`).
    pub exported: Option<PathBuf>,
}

/// A prepared run.
pub struct Trainer {
    cfg: TrainConfig,
    tcfg: TransformerConfig,
    /// Trainable parameters (all weights, or the LoRA matrices), f32 master copies.
    params: BTreeMap<String, Var>,
    /// Frozen base weights of a LoRA run.
    frozen: BTreeMap<String, Tensor>,
    lora: Option<Lora>,
    opt: Box<dyn Optimizer>,
    ema: Option<Ema>,
    diffusion: GaussianDiffusion,
    /// (1, l, d) null-caption features and (1, l) mask, from the base text encoder.
    null_caption: (Tensor, Tensor),
    scaling_factor: f64,
    device: Device,
    dtype: DType,
    step: u64,
    out: PathBuf,
    /// Gradient checkpointing: where checkpointed blocks leave parameter gradients.
    sink: Option<Arc<GradSink>>,
}

fn mix(seed: u64, step: u64, micro: u64) -> u64 {
    // splitmix64 of the triple: distinct, well-spread seeds per (run, step, micro-batch).
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(step.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(micro.wrapping_mul(0x94D0_49BB_1331_11EB));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn randn(rng: &mut StdRng, shape: &[usize], device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// The full initial weights of `tcfg`, PixArt-initialised from `seed`.
pub fn fresh_weights(tcfg: &TransformerConfig, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    fresh_weights_with(tcfg, seed, false)
}

/// [`fresh_weights`], with PyTorch's default init on the caption path when `pytorch_caption`
/// (`[model] caption_init = "pytorch"`).
pub fn fresh_weights_with(
    tcfg: &TransformerConfig,
    seed: u64,
    pytorch_caption: bool,
) -> Result<BTreeMap<String, Tensor>> {
    pixart_core::mem::check_fits(tcfg.parameters_estimate() * 4, "the transformer's f32 weights")
        .map_err(Error::InvalidInput)?;
    let micro = tcfg.use_additional_conditions == Some(true);
    let init = InitWeights::new(seed, micro).pytorch_caption_path(pytorch_caption);
    let rec = Shared(Arc::new(Recording::new(init)));
    let vb = VarBuilder::from_backend(Box::new(rec.clone()), DType::F32, Device::Cpu);
    PixArtTransformer::new(tcfg, vb)?;
    Ok(rec.0.tensors())
}

/// Reads the VAE scaling factor from a pipeline folder's `vae/config.json`.
fn vae_scaling_factor(base: &Path) -> Result<f64> {
    let p = base.join("vae").join("config.json");
    let v: serde_json::Value = pixart_core::config::read_json(&p)?;
    Ok(v.get("scaling_factor").and_then(|s| s.as_f64()).unwrap_or(0.13025))
}

/// The T5 features of the empty caption (what the pipeline uses as the unconditional input)
/// with `max_length` tokens: (1, l, d) and (1, l).
fn null_caption(base: &Path, max_length: usize) -> Result<(Tensor, Tensor)> {
    let tok = pixart_text::T5Tokenizer::from_dir(&base.join("tokenizer"))?;
    let enc = tok.encode("", max_length)?;
    let ids: Vec<i64> = enc.ids.iter().map(|&i| i64::from(i)).collect();
    let mask: Vec<i64> = enc.attention_mask.iter().map(|&m| i64::from(m)).collect();
    let ids = Tensor::from_vec(ids, (1, max_length), &Device::Cpu)?;
    let mask = Tensor::from_vec(mask, (1, max_length), &Device::Cpu)?;
    let t5 = pixart_text::loading::load_text_encoder(&base.join("text_encoder"), DType::F32, &Device::Cpu)?;
    let feats = t5.forward(&ids, Some(&mask))?;
    Ok((feats.to_dtype(DType::F32)?, mask.to_dtype(DType::F32)?))
}

impl Trainer {
    /// Prepares a run: the model (fresh, from a checkpoint with the weak-to-strong switches,
    /// or resumed), the optimiser and the null caption. Fails before any work on a config
    /// that does not fit the checkpoint.
    pub fn new(cfg: TrainConfig, resume: bool) -> Result<Self> {
        let device = pixart_core::device::parse_device(&cfg.train.device)?;
        let dtype = pixart_core::device::parse_dtype(&cfg.train.dtype)?;
        let out = cfg.output.dir.clone();
        let ckpt_root = out.join("checkpoints");
        let existing = checkpoint::latest(&ckpt_root)?;
        if !resume && existing.is_some() {
            return Err(Error::InvalidInput(format!(
                "{} already holds checkpoints: pass --resume to continue that run, or choose another output.dir",
                out.display()
            )));
        }
        if resume && existing.is_none() {
            return Err(Error::InvalidInput(format!(
                "--resume: no checkpoint in {}",
                ckpt_root.display()
            )));
        }

        // The starting weights and architecture.
        let (mut weights, tcfg) = match (&cfg.model.config, &cfg.model.init) {
            (Some(c), _) => {
                let mut t = TransformerConfig::from_file(c)?;
                cfg.apply_overrides(&mut t)?;
                // f32 weights, their gradients and two optimizer moments.
                pixart_core::mem::check_fits(t.parameters_estimate() * 16, "training this transformer's weights")
                    .map_err(|m| Error::config(c, m))?;
                let pytorch_caption = cfg.model.caption_init == CaptionInit::Pytorch;
                (fresh_weights_with(&t, cfg.train.seed, pytorch_caption)?, t)
            }
            (None, Some(init)) => {
                let (_, base_cfg, _) = pixart_model::loading::open_checkpoint(init, &LoadOptions::default())?;
                let opts = LoadOptions {
                    kv_compress: cfg
                        .kv_override(base_cfg.num_layers)?
                        .map(pixart_model::config::KvCompressSpec::from),
                    interpolation_scale: cfg.model.interpolation_scale,
                    ..LoadOptions::default()
                };
                let (mut w, mut t) = to_diffusers(init, &opts)?;
                match cfg.model.patch_size {
                    Some(p) if p != t.patch_size && p != 1 => {
                        return Err(Error::InvalidInput(format!(
                            "model.patch_size: {p} differs from the checkpoint's {}; only 1 (a finer patch from a trained model) is supported",
                            t.patch_size
                        )))
                    }
                    Some(1) => crate::patch::to_unit_patch(&mut w, t.patch_size, t.out_channels.unwrap_or(t.in_channels))?,
                    _ => {}
                }
                cfg.apply_overrides(&mut t)?;
                (w, t)
            }
            (None, None) => return Err(Error::InvalidInput("model: no config and no init".into())),
        };
        // Layers that gained KV compression start from averaging (weak-to-strong (b)).
        let full = fresh_weights(&tcfg, cfg.train.seed)?;
        for (name, t) in &full {
            if !weights.contains_key(name) {
                if name.contains(".kv_compress.") {
                    weights.insert(name.clone(), t.clone());
                } else {
                    return Err(Error::InvalidInput(format!(
                        "model.init lacks weight `{name}` that the configured architecture needs"
                    )));
                }
            }
        }
        for (name, t) in &weights {
            match full.get(name) {
                Some(f) if f.dims() == t.dims() => {}
                Some(f) => {
                    return Err(Error::Shape(format!(
                        "model.init weight `{name}` is {:?}, the configured architecture needs {:?}",
                        t.dims(),
                        f.dims()
                    )))
                }
                None => {
                    return Err(Error::InvalidInput(format!(
                        "model.init has weight `{name}` that the configured architecture does not use"
                    )))
                }
            }
        }

        let mut step = 0;
        let mut opt_state = None;
        let mut ema_state = None;
        let mut lora_state = None;
        if let Some(dir) = existing.filter(|_| resume) {
            let ck = checkpoint::load(&dir)?;
            if ck.state.transformer != tcfg {
                return Err(Error::InvalidInput(format!(
                    "--resume: {} was trained with another architecture than this config describes",
                    dir.display()
                )));
            }
            if ck.state.lora_rank != cfg.lora.as_ref().map(|l| l.rank) {
                return Err(Error::InvalidInput(format!(
                    "--resume: {} has LoRA rank {:?}, the config {:?}",
                    dir.display(),
                    ck.state.lora_rank,
                    cfg.lora.as_ref().map(|l| l.rank)
                )));
            }
            if ck.state.seed != cfg.train.seed {
                return Err(Error::InvalidInput(format!(
                    "--resume: {} was trained with seed {}, the config says {}",
                    dir.display(),
                    ck.state.seed,
                    cfg.train.seed
                )));
            }
            weights = ck.weights;
            step = ck.state.step;
            opt_state = Some((ck.optimizer, ck.state.optimizer_steps));
            ema_state = ck.ema;
            lora_state = ck.lora;
        }

        // Trainable parameters.
        let to_var =
            |t: &Tensor| -> Result<Var> { Ok(Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(&device)?)?) };
        let (params, frozen, lora) = match &cfg.lora {
            None => {
                let p: BTreeMap<String, Var> = weights
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), to_var(t)?)))
                    .collect::<Result<_>>()?;
                (p, BTreeMap::new(), None)
            }
            Some(l) => {
                let lora = Lora::new(l, &weights, cfg.train.seed)?;
                let init = match lora_state {
                    Some(s) => s,
                    None => lora.init_tensors()?,
                };
                let p: BTreeMap<String, Var> = init
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), to_var(t)?)))
                    .collect::<Result<_>>()?;
                let frozen = weights
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), t.to_device(&device)?)))
                    .collect::<Result<_>>()?;
                (p, frozen, Some(lora))
            }
        };
        let mut opt = cfg.optimizer.build(params.clone());
        if let Some((s, n)) = opt_state {
            let s = s
                .into_iter()
                .map(|(k, t)| Ok((k, t.to_device(&device)?)))
                .collect::<Result<_>>()?;
            opt.load_state(s, n)?;
        }
        let ema = match cfg.train.ema {
            None => None,
            Some(decay) => {
                let mut e = Ema::new(decay, &params)?;
                if let Some(s) = ema_state {
                    e.shadow = s;
                }
                Some(e)
            }
        };
        let data_len = pixart_core::config::read_json::<serde_json::Value>(&cfg.data.features.join("index.json"))
            .ok()
            .and_then(|v| v.get("max_length").and_then(|m| m.as_u64()))
            .unwrap_or(120) as usize;
        let null_caption = null_caption(&cfg.model.base, data_len)?;
        let scaling_factor = vae_scaling_factor(&cfg.model.base)?;
        let sink = cfg
            .train
            .gradient_checkpointing
            .then(|| Arc::new(GradSink::new(params.values().cloned().collect())));
        let trainer = Self {
            sink,
            tcfg,
            params,
            frozen,
            lora,
            opt,
            ema,
            diffusion: GaussianDiffusion::linear(1000)?
                .with_weighting(cfg.train.loss_weighting)
                .with_object_weight(cfg.train.object_weight),
            null_caption,
            scaling_factor,
            device,
            dtype,
            step,
            out,
            cfg,
        };
        Ok(trainer)
    }

    /// Optimiser steps done so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The transformer architecture being trained.
    pub fn transformer_config(&self) -> &TransformerConfig {
        &self.tcfg
    }

    /// Number of trainable parameters.
    pub fn trainable_parameters(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }

    /// The current full weights (LoRA merged), detached, on the CPU.
    pub fn current_weights(&self) -> Result<BTreeMap<String, Tensor>> {
        match &self.lora {
            None => self
                .params
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().to_device(&Device::Cpu)?)))
                .collect(),
            Some(l) => {
                let p: BTreeMap<String, Tensor> = self
                    .params
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
                    .collect();
                l.merged(&self.frozen, &p)?
                    .into_iter()
                    .map(|(k, t)| Ok((k, t.detach().to_device(&Device::Cpu)?)))
                    .collect()
            }
        }
    }

    /// The model for one forward, built from the current parameters (tracked, so gradients
    /// reach them) in the training dtype.
    fn model(&self) -> Result<PixArtTransformer> {
        let tensors: BTreeMap<String, Tensor> = match &self.lora {
            None => self
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect(),
            Some(l) => {
                let p: BTreeMap<String, Tensor> = self
                    .params
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                    .collect();
                l.merged(&self.frozen, &p)?
            }
        };
        let tensors = tensors
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(self.dtype)?)))
            .collect::<Result<std::collections::HashMap<_, _>>>()?;
        let vb = VarBuilder::from_tensors(tensors, self.dtype, &self.device);
        let model = PixArtTransformer::new(&self.tcfg, vb)?.0;
        Ok(match &self.sink {
            Some(sink) => model.with_gradient_checkpointing(sink.clone()),
            None => model,
        })
    }

    /// Replaces the captions of the samples marked in `drop` by the null caption.
    fn drop_captions(&self, batch: &Batch, drop: &[bool]) -> Result<(Tensor, Tensor)> {
        if !drop.iter().any(|&d| d) {
            return Ok((batch.caption.clone(), batch.mask.clone()));
        }
        let (_, l, d) = batch.caption.dims3()?;
        let (nc, nm) = &self.null_caption;
        let (nl, nd) = (nc.dim(1)?, nc.dim(2)?);
        if nd != d {
            return Err(Error::Shape(format!(
                "the base text encoder gives {nd}-dim features, the data {d}: extract features with the same text encoder"
            )));
        }
        // Fit the null caption to the data's length (its valid token is the first).
        let (nc, nm) = if nl >= l {
            (nc.narrow(1, 0, l)?, nm.narrow(1, 0, l)?)
        } else {
            let pad_c = Tensor::zeros((1, l - nl, d), DType::F32, &Device::Cpu)?;
            let pad_m = Tensor::zeros((1, l - nl), DType::F32, &Device::Cpu)?;
            (Tensor::cat(&[nc, &pad_c], 1)?, Tensor::cat(&[nm, &pad_m], 1)?)
        };
        let mut caps = Vec::with_capacity(drop.len());
        let mut masks = Vec::with_capacity(drop.len());
        for (i, &dr) in drop.iter().enumerate() {
            if dr {
                caps.push(nc.clone());
                masks.push(nm.clone());
            } else {
                caps.push(batch.caption.narrow(0, i, 1)?.to_dtype(DType::F32)?);
                masks.push(batch.mask.narrow(0, i, 1)?.to_dtype(DType::F32)?);
            }
        }
        Ok((Tensor::cat(&caps, 0)?, Tensor::cat(&masks, 0)?))
    }

    /// One micro-batch: forward, loss, backward. Returns (loss, mse, vb) means and the
    /// gradients scaled by `1 / accum`.
    fn micro_step(&self, model: &PixArtTransformer, data: &dyn TrainData, micro: u64) -> Result<([f64; 3], Grads)> {
        let cfg = &self.cfg;
        let mut rng = StdRng::seed_from_u64(mix(cfg.train.seed, self.step, micro));
        let batch = data.sample_batch(&mut rng, cfg.train.batch_size, cfg.data.long_caption_ratio)?;
        let dev = &self.device;
        let mean = batch.latent_mean.to_dtype(DType::F32)?.to_device(dev)?;
        let std = batch.latent_std.to_dtype(DType::F32)?.to_device(dev)?;
        let dims = mean.dims().to_vec();
        let b = dims[0];
        // x0 = (mean + std·ε) · scaling_factor: a posterior sample, as PixArt's loader does.
        let eps_post = randn(&mut rng, &dims, dev)?;
        let sf = data.scaling_factor().unwrap_or(self.scaling_factor);
        let x0 = ((mean + (std * eps_post)?)? * sf)?;
        let drop: Vec<bool> = (0..b).map(|_| rng.random::<f64>() < cfg.data.caption_dropout).collect();
        let (caption, mask) = self.drop_captions(&batch, &drop)?;
        let t: Vec<usize> = (0..b)
            .map(|_| rng.random_range(0..self.diffusion.num_timesteps()))
            .collect();
        let noise = randn(&mut rng, &dims, dev)?;
        let x_t = self.diffusion.q_sample(&x0, &t, &noise)?;
        let tt = Tensor::from_vec(t.iter().map(|&v| v as f32).collect::<Vec<_>>(), b, dev)?;
        let out = model.forward(
            &x_t.to_dtype(self.dtype)?,
            &tt,
            &caption.to_device(dev)?.to_dtype(self.dtype)?,
            Some(&mask.to_device(dev)?),
        )?;
        let losses = self.diffusion.training_losses(&out, &x0, &x_t, &noise, &t)?;
        let accum = cfg.train.grad_accum as f64;
        let loss = (losses.loss.mean_all()? / accum)?;
        let grads = loss.backward()?;
        let mut inner = self.sink.as_ref().map(|s| s.take()).unwrap_or_default();
        let mut out_grads = Grads::new();
        for (name, var) in &self.params {
            let outer = grads.get(var.as_tensor()).cloned();
            let g = match (outer, inner.remove(&var.as_tensor().id())) {
                (Some(a), Some(b)) => Some((a + b)?),
                (a, b) => a.or(b),
            };
            if let Some(g) = g {
                out_grads.insert(name.clone(), g);
            }
        }
        let scalar = |t: &Tensor| -> Result<f64> { Ok(t.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
        Ok((
            [scalar(&losses.loss)?, scalar(&losses.mse)?, scalar(&losses.vb)?],
            out_grads,
        ))
    }

    fn state(&self) -> TrainerState {
        TrainerState {
            step: self.step,
            seed: self.cfg.train.seed,
            optimizer_steps: self.opt.steps(),
            transformer: self.tcfg.clone(),
            optimizer: match self.cfg.optimizer {
                crate::optim::OptimizerConfig::AdamW { .. } => "adamw".into(),
                crate::optim::OptimizerConfig::Came { .. } => "came".into(),
            },
            lora_rank: self.cfg.lora.as_ref().map(|l| l.rank),
        }
    }

    /// Writes a checkpoint of the current state.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let cpu = |m: &BTreeMap<String, Tensor>| -> Result<BTreeMap<String, Tensor>> {
            m.iter()
                .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?)))
                .collect()
        };
        let (weights, lora) = match &self.lora {
            None => (self.current_weights()?, None),
            Some(_) => {
                let p: BTreeMap<String, Tensor> = self
                    .params
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
                    .collect();
                (cpu(&self.frozen)?, Some(cpu(&p)?))
            }
        };
        let ema = match &self.ema {
            Some(e) if self.lora.is_none() => Some(cpu(&e.shadow)?),
            _ => None,
        };
        let (opt, _) = self.opt.state();
        let opt = opt
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        checkpoint::save(
            &self.out.join("checkpoints"),
            &CheckpointData {
                state: &self.state(),
                weights: &weights,
                ema: ema.as_ref(),
                lora: lora.as_ref(),
                optimizer: &opt,
            },
            self.cfg.output.keep_checkpoints,
        )
    }

    /// The weights to export/sample: the EMA when kept, else the current ones.
    fn export_weights(&self) -> Result<BTreeMap<String, Tensor>> {
        match &self.ema {
            Some(e) if self.lora.is_none() => Ok(e.shadow.clone()),
            _ => self.current_weights(),
        }
    }

    /// Writes the trained model: `<out>/transformer/` (diffusers layout), and for LoRA runs
    /// `<out>/lora.safetensors` as well.
    pub fn export(&self) -> Result<PathBuf> {
        let dir = self.out.join("transformer");
        pixart_model::loading::save_diffusers(&dir, &self.export_weights()?, &self.tcfg)?;
        if let Some(l) = &self.lora {
            let p: BTreeMap<String, Tensor> = self
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
                .collect();
            let file = self.out.join("lora.safetensors");
            l.save(&p, &file)?;
            return Ok(file);
        }
        Ok(dir)
    }

    /// Sample images of the fixed prompts with the current weights: one grid PNG.
    fn sample(&self) -> Result<PathBuf> {
        let o = &self.cfg.output;
        let tmp = self.out.join("samples").join(".transformer");
        pixart_model::loading::save_diffusers(&tmp, &self.export_weights()?, &self.tcfg)?;
        let paths = pixart_pipeline::ComponentPaths {
            model: tmp.clone(),
            base: Some(self.cfg.model.base.clone()),
            ..Default::default()
        };
        let comps = pixart_pipeline::PipelineComponents::load(&paths, &pixart_pipeline::ComponentOptions::default())?;
        let req = pixart_pipeline::GenerationRequest {
            prompts: o.sample_prompts.clone(),
            steps: Some(o.sample_steps),
            guidance: Some(o.sample_guidance),
            seed: o.sample_seed,
            // Samples at the size the model trains at: no aspect-ratio bins (small models have
            // no table for their sample_size).
            resolution_binning: false,
            ..Default::default()
        }
        .validate(&comps.geometry())?;
        let mut noise = pixart_pipeline::SeededNoise::new(o.sample_seed);
        let never = AtomicBool::new(false);
        let generated = pixart_pipeline::generate(&comps, &req, &mut noise, &mut |_| {}, &never)?;
        let images = match generated {
            pixart_pipeline::Generated::Finished(out) => out.images,
            pixart_pipeline::Generated::Cancelled { .. } => Vec::new(),
        };
        let path = self
            .out
            .join("samples")
            .join(format!("{}.png", checkpoint::step_name(self.step)));
        crate::metrics::save_grid(&path, &images, 8)?;
        let _ = std::fs::remove_dir_all(&tmp);
        Ok(path)
    }

    /// Checks that the data fits the model (latent channels, caption width) before any work.
    fn check_data(&self, data: &dyn TrainData) -> Result<()> {
        let b = data.sample_batch(&mut StdRng::seed_from_u64(0), 1, 0.5)?;
        let c = b.latent_mean.dim(1)?;
        if c != self.tcfg.in_channels {
            return Err(Error::InvalidInput(format!(
                "data.features: latents have {c} channels, the transformer takes {} (features of another VAE?)",
                self.tcfg.in_channels
            )));
        }
        let d = b.caption.dim(2)?;
        let want = self.tcfg.caption_channels.unwrap_or(self.tcfg.inner_dim());
        if d != want {
            return Err(Error::InvalidInput(format!(
                "data.features: captions have {d} features, the transformer's caption_channels is {want} (another text encoder?)"
            )));
        }
        let (h, w) = (b.latent_mean.dim(2)?, b.latent_mean.dim(3)?);
        let p = self.tcfg.patch_size;
        if h % p != 0 || w % p != 0 {
            return Err(Error::InvalidInput(format!(
                "data.features: latents of {h}x{w} are not a multiple of the patch size {p}"
            )));
        }
        Ok(())
    }

    /// Trains until `train.steps` (or until `cancel` is set, which ends the run after the
    /// current step with a checkpoint).
    pub fn run(&mut self, data: &dyn TrainData, events: &mut dyn FnMut(Event), cancel: &AtomicBool) -> Result<Summary> {
        if data.is_empty() {
            return Err(Error::InvalidInput("the training data holds no samples".into()));
        }
        self.check_data(data)?;
        std::fs::create_dir_all(&self.out).map_err(|e| Error::io(&self.out, e))?;
        let resumed = self.step > 0;
        if resumed {
            events(Event::Note(format!("resuming at step {}", self.step)));
        } else {
            let text = toml::to_string(&self.cfg).map_err(|e| Error::InvalidInput(e.to_string()))?;
            pixart_core::weights::write_atomic(&self.out.join("config.toml"), text.as_bytes())?;
        }
        let log_path = self.out.join("log.jsonl");
        let mut log = JsonlLog::open(&log_path, resumed.then_some(self.step))?;
        let total = self.cfg.train.steps;
        let start = Instant::now();
        let mut window = (0.0f64, 0.0f64, 0.0f64, 0u64, 0.0f64); // loss, mse, vb, steps, grad norm
        let mut window_start = Instant::now();
        let mut last_loss = None;
        let mut cancelled = false;
        while self.step < total {
            if cancel.load(Ordering::SeqCst) {
                cancelled = true;
                break;
            }
            let model = self.model()?;
            let mut sum = Grads::new();
            let mut parts = [0f64; 3];
            for micro in 0..self.cfg.train.grad_accum as u64 {
                let (p, g) = self.micro_step(&model, data, micro)?;
                for (acc, v) in parts.iter_mut().zip(p) {
                    *acc += v / self.cfg.train.grad_accum as f64;
                }
                for (k, t) in g {
                    let t = match sum.remove(&k) {
                        Some(prev) => (prev + t)?,
                        None => t,
                    };
                    sum.insert(k, t);
                }
            }
            drop(model);
            let norm = clip_grad_norm(&mut sum, self.cfg.train.grad_clip)?;
            let tr = &self.cfg.train;
            let lr = tr.lr * tr.lr_schedule.factor(self.step, tr.warmup, tr.steps);
            self.opt.step(&sum, lr)?;
            if let Some(e) = self.ema.as_mut() {
                e.update(&self.params)?;
            }
            self.step += 1;
            if !parts[0].is_finite() {
                return Err(Error::InvalidInput(format!(
                    "the loss is {} at step {}: training diverged (lower train.lr)",
                    parts[0], self.step
                )));
            }
            window = (
                window.0 + parts[0],
                window.1 + parts[1],
                window.2 + parts[2],
                window.3 + 1,
                window.4 + norm,
            );
            last_loss = Some(parts[0]);
            let samples = (self.cfg.train.batch_size * self.cfg.train.grad_accum) as f64;
            let sps = samples * window.3 as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
            events(Event::Step {
                step: self.step,
                total,
                loss: parts[0],
                lr,
                samples_per_s: sps,
            });
            if self.step.is_multiple_of(self.cfg.output.log_every) || self.step == total {
                let n = window.3.max(1) as f64;
                log.write(&json!({
                    "step": self.step,
                    "loss": window.0 / n,
                    "mse": window.1 / n,
                    "vb": window.2 / n,
                    "grad_norm": window.4 / n,
                    "lr": lr,
                    "samples_per_s": sps,
                    "elapsed_s": start.elapsed().as_secs_f64(),
                }))?;
                window = (0.0, 0.0, 0.0, 0, 0.0);
                window_start = Instant::now();
                self.plot_loss()?;
            }
            if self.step.is_multiple_of(self.cfg.output.checkpoint_every) || self.step == total {
                let p = self.save_checkpoint()?;
                events(Event::Checkpoint(p));
            }
            if self.cfg.output.sample_every > 0
                && (self.step.is_multiple_of(self.cfg.output.sample_every) || self.step == total)
            {
                let p = self.sample()?;
                events(Event::Samples(p));
            }
        }
        if cancelled && self.step > 0 {
            let p = self.save_checkpoint()?;
            events(Event::Checkpoint(p));
        }
        let exported = if self.step >= total { Some(self.export()?) } else { None };
        Ok(Summary {
            steps_done: self.step,
            cancelled,
            final_loss: last_loss,
            seconds: start.elapsed().as_secs_f64(),
            exported,
        })
    }

    /// Redraws `<out>/loss.png` from the log.
    pub fn plot_loss(&self) -> Result<()> {
        let log = self.out.join("log.jsonl");
        let loss = JsonlLog::series(&log, "loss")?;
        let mse = JsonlLog::series(&log, "mse")?;
        plot(
            &self.out.join("loss.png"),
            "training loss (IDDPM: mse + vb)",
            &[
                Curve {
                    label: "loss",
                    points: &loss,
                    color: [20, 90, 200],
                },
                Curve {
                    label: "mse",
                    points: &mse,
                    color: [220, 120, 20],
                },
            ],
            true,
        )
    }
}
