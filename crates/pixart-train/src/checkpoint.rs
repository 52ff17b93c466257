//! Training checkpoints, written so that killing the process at any moment leaves the last
//! good one intact:
//!
//! ```text
//! <output>/checkpoints/
//!   step-000200/
//!     transformer/config.json, diffusion_pytorch_model.safetensors   (diffusers layout)
//!     transformer_ema/...                                              (with EMA)
//!     lora.safetensors                                                 (LoRA runs)
//!     optimizer.safetensors                                            (moments, `<param>.<slot>`)
//!     trainer_state.json                                               (step, seed, ...)
//!   latest                                                             ("step-000200")
//! ```
//!
//! A checkpoint is built in a temporary folder (every file fsynced), renamed into place, the
//! parent fsynced, and only then does `latest` (itself written atomically) point at it.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use pixart_core::{Error, Result};
use pixart_model::TransformerConfig;
use serde::{Deserialize, Serialize};

/// What besides the tensors a run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps done.
    pub step: u64,
    /// The run's seed: every random draw of step k derives from (seed, k).
    pub seed: u64,
    /// Optimiser updates applied (equals `step`).
    pub optimizer_steps: u64,
    /// The transformer architecture trained (to refuse resuming another one).
    pub transformer: TransformerConfig,
    /// `adamw` or `came`.
    pub optimizer: String,
    /// LoRA rank when adapters are trained.
    pub lora_rank: Option<usize>,
}

/// A checkpoint read back.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: TrainerState,
    pub weights: BTreeMap<String, Tensor>,
    pub ema: Option<BTreeMap<String, Tensor>>,
    pub lora: Option<BTreeMap<String, Tensor>>,
    pub optimizer: HashMap<String, Tensor>,
}

/// What to write.
pub struct CheckpointData<'a> {
    pub state: &'a TrainerState,
    pub weights: &'a BTreeMap<String, Tensor>,
    pub ema: Option<&'a BTreeMap<String, Tensor>>,
    pub lora: Option<&'a BTreeMap<String, Tensor>>,
    pub optimizer: &'a HashMap<String, Tensor>,
}

/// The folder name of step `step`.
pub fn step_name(step: u64) -> String {
    format!("step-{step:06}")
}

fn fsync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn to_hash(m: &BTreeMap<String, Tensor>) -> HashMap<String, Tensor> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Writes a checkpoint under `root` (the `checkpoints/` folder), points `latest` at it and
/// keeps only the newest `keep` checkpoints. Returns its folder.
pub fn save(root: &Path, data: &CheckpointData, keep: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let name = step_name(data.state.step);
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let write = || -> Result<()> {
        pixart_model::loading::save_diffusers(&tmp.join("transformer"), data.weights, &data.state.transformer)?;
        if let Some(ema) = data.ema {
            pixart_model::loading::save_diffusers(&tmp.join("transformer_ema"), ema, &data.state.transformer)?;
        }
        if let Some(lora) = data.lora {
            pixart_core::weights::save_safetensors(&to_hash(lora), &tmp.join("lora.safetensors"))?;
        }
        let mut opt = data.optimizer.clone();
        if opt.is_empty() {
            // safetensors needs at least one tensor to be a useful file; mark it empty.
            opt.insert(
                "__empty__".into(),
                Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu)?,
            );
        }
        pixart_core::weights::save_safetensors(&opt, &tmp.join("optimizer.safetensors"))?;
        pixart_core::config::write_json(&tmp.join("trainer_state.json"), data.state)?;
        fsync_dir(&tmp.join("transformer"));
        fsync_dir(&tmp);
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dest = root.join(&name);
    if dest.exists() {
        // Re-saving a step (after a resume): move the old one aside first.
        let old = root.join(format!(".old-{name}-{}", std::process::id()));
        std::fs::rename(&dest, &old).map_err(|e| Error::io(&dest, e))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
    fsync_dir(root);
    pixart_core::weights::write_atomic(&root.join("latest"), name.as_bytes())?;
    prune(root, keep)?;
    Ok(dest)
}

/// Removes leftovers of interrupted saves and all but the newest `keep` checkpoints (never
/// the one `latest` names).
fn prune(root: &Path, keep: usize) -> Result<()> {
    let latest = std::fs::read_to_string(root.join("latest")).unwrap_or_default();
    let mut steps: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))?.flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with(".tmp-") || n.starts_with(".old-") {
            let _ = std::fs::remove_dir_all(entry.path());
        } else if n.starts_with("step-") && entry.path().is_dir() {
            steps.push(n);
        }
    }
    steps.sort();
    let excess = steps.len().saturating_sub(keep);
    for n in steps.into_iter().take(excess).filter(|n| *n != latest.trim()) {
        let _ = std::fs::remove_dir_all(root.join(n));
    }
    Ok(())
}

/// The folder `latest` names under `root`, if any.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    let p = root.join("latest");
    if !p.is_file() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let dir = root.join(name.trim());
    if !dir.join("trainer_state.json").is_file() {
        return Err(Error::InvalidInput(format!(
            "{}: `latest` names {}, which is not a complete checkpoint",
            root.display(),
            dir.display()
        )));
    }
    Ok(Some(dir))
}

fn load_map(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let m = pixart_core::weights::read_safetensors(path)?;
    Ok(m.into_iter().collect())
}

/// Reads the checkpoint in `dir`.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let state_path = dir.join("trainer_state.json");
    let state: TrainerState = pixart_core::config::read_json(&state_path)?;
    let weights = load_map(&dir.join("transformer").join("diffusion_pytorch_model.safetensors"))?;
    let ema_path = dir.join("transformer_ema").join("diffusion_pytorch_model.safetensors");
    let ema = if ema_path.is_file() {
        Some(load_map(&ema_path)?)
    } else {
        None
    };
    let lora_path = dir.join("lora.safetensors");
    let lora = if lora_path.is_file() {
        Some(load_map(&lora_path)?)
    } else {
        None
    };
    let optimizer = load_map(&dir.join("optimizer.safetensors"))?
        .into_iter()
        .filter(|(k, _)| k != "__empty__")
        .collect();
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        state,
        weights,
        ema,
        lora,
        optimizer,
    })
}
