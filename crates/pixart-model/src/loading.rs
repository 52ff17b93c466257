//! Building a [`PixArtTransformer`] from files: a diffusers `transformer/` folder (or a
//! pipeline folder holding one), a single weight file, either checkpoint layout.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use pixart_core::weights::{CheckedWeights, FileKind, Recording, Shared, WeightFile};
use pixart_core::{Error, Field, Result};

use crate::config::{KvCompressSpec, TransformerConfig};
use crate::lora::{lora_deltas, LoraMerge};
use crate::original;
use crate::transformer::{BuildReport, PixArtTransformer};

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
    /// Replace the config's KV compression ([`KvCompressSpec::Off`] turns it off); the spec is
    /// fitted to the model's depth here, where its config is read.
    pub kv_compress: Option<KvCompressSpec>,
    /// Replace the PE interpolation scale.
    pub interpolation_scale: Option<f64>,
    /// For an original checkpoint without config.json: number of heads (default hidden/72).
    pub heads: Option<usize>,
    /// For an original checkpoint without config.json and without a `pos_embed` buffer.
    pub default_sample_size: usize,
    /// LoRA adapters merged into the weights.
    pub loras: Vec<crate::lora::LoraSpec>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            kv_compress: None,
            interpolation_scale: None,
            heads: None,
            default_sample_size: 128,
            loras: Vec::new(),
        }
    }
}

/// The two checkpoint layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Diffusers,
    Original,
}

/// A loaded model and what loading found.
#[derive(Debug)]
pub struct LoadedTransformer {
    pub model: PixArtTransformer,
    pub config: TransformerConfig,
    pub report: BuildReport,
    pub layout: Layout,
    pub weights: PathBuf,
}

/// Weight file names looked for in a folder, in order.
const WEIGHT_NAMES: [&str; 4] = [
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors",
    "model.safetensors.index.json",
];

/// Finds the weight file and the config in `path` (a folder, a pipeline folder or a file).
pub fn locate(path: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    locate_component(path, "transformer", &WEIGHT_NAMES, "")
}

/// Finds a component's weight file and `config.json` in `path`: a weight file (its folder's
/// config.json, if any), a component folder, or a pipeline folder holding `sub/` (one without a
/// config.json of its own). In a folder the files `names` are looked for in order, else the one
/// `.safetensors` or `.pth` there. `what` (`""`, `"ControlNet "`) names the component in errors.
pub fn locate_component(path: &Path, sub: &str, names: &[&str], what: &str) -> Result<(PathBuf, Option<PathBuf>)> {
    if path.is_file() {
        let cfg = path.parent().map(|d| d.join("config.json")).filter(|c| c.is_file());
        return Ok((path.to_path_buf(), cfg));
    }
    if !path.is_dir() {
        return Err(Error::weights(path, format!("no such {what}file or folder")));
    }
    let dir = if !path.join("config.json").is_file() && path.join(sub).is_dir() {
        path.join(sub)
    } else {
        path.to_path_buf()
    };
    let cfg = Some(dir.join("config.json")).filter(|c| c.is_file());
    if let Some(w) = names.iter().map(|n| dir.join(n)).find(|p| p.is_file()) {
        return Ok((w, cfg));
    }
    // A single other weight file (e.g. an original `.pth` or `.safetensors`).
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(FileKind::of(p), Some(FileKind::Safetensors | FileKind::Pth)))
        .collect();
    files.sort();
    match files.len() {
        1 => Ok((files.remove(0), cfg)),
        0 => Err(Error::weights(
            &dir,
            format!("no {what}weight file (diffusion_pytorch_model.safetensors, *.safetensors or *.pth)"),
        )),
        _ => Err(Error::weights(&dir, "several weight files; name the one to use")),
    }
}

/// Opens the checkpoint at `path` and resolves its config (from config.json, or inferred
/// from an original-layout checkpoint), applying the overrides of `opts`.
pub fn open_checkpoint(path: &Path, opts: &LoadOptions) -> Result<(WeightFile, TransformerConfig, Layout)> {
    let (weights, cfg_path) = locate(path)?;
    let file = WeightFile::open(&weights)?;
    let layout = if original::is_original_layout(file.infos()) {
        Layout::Original
    } else {
        Layout::Diffusers
    };
    let mut config = match (&cfg_path, layout) {
        (Some(c), _) => TransformerConfig::from_file(c)?,
        (None, Layout::Original) => original::infer_config(file.infos(), opts.heads, opts.default_sample_size)
            .map_err(|m| Error::weights(&weights, m))?,
        (None, Layout::Diffusers) => {
            return Err(Error::config(
                weights.with_file_name("config.json"),
                "missing: a diffusers checkpoint needs its config.json beside it",
            ))
        }
    };
    if config.kv_compress.is_none() {
        config.kv_compress = original::kv_compress_from_weights(file.infos());
    }
    if let Some(spec) = &opts.kv_compress {
        config.kv_compress = spec
            .resolve(config.num_layers)
            .map_err(|m| Error::request(Field::KvCompress, m))?;
    }
    if let Some(s) = opts.interpolation_scale {
        config.interpolation_scale = Some(s);
    }
    let cfg_err = |m: String| Error::config(cfg_path.clone().unwrap_or_else(|| weights.clone()), m);
    config.validate().map_err(cfg_err)?;
    Ok((file, config, layout))
}

fn checked(file: WeightFile, layout: Layout, config: &TransformerConfig) -> CheckedWeights {
    // KV-compression weights of layers the config does not compress are dropped on purpose
    // (e.g. `--kv-compress none` on a compressed checkpoint), not reported.
    let kv_unused: Vec<String> = file
        .infos()
        .keys()
        .filter(|k| k.contains(".attn.sr.") || k.contains(".attn.norm.") || k.contains(".attn1.kv_compress."))
        .filter(|k| {
            let layer = k.split('.').nth(1).and_then(|i| i.parse::<usize>().ok());
            !layer.is_some_and(|l| config.kv_compress.as_ref().is_some_and(|kv| kv.applies_to(l)))
        })
        .cloned()
        .collect();
    let mut cw = CheckedWeights::new(file).ignoring(kv_unused);
    if layout == Layout::Original {
        cw = cw
            .with_renamer(Box::new(original::source_for))
            .ignoring(original::IGNORED.iter().map(|s| s.to_string()));
    }
    cw
}

/// Loads a transformer; every missing, mis-shaped or unexpected tensor is reported at once.
pub fn load_transformer(path: &Path, opts: &LoadOptions) -> Result<LoadedTransformer> {
    let (file, config, layout) = open_checkpoint(path, opts)?;
    let weights = file.path().to_path_buf();
    let backend = Shared(Arc::new(checked(file, layout, &config)));
    let (model, report) = if opts.loras.is_empty() {
        let vb = VarBuilder::from_backend(Box::new(backend.clone()), opts.dtype, opts.device.clone());
        let built = PixArtTransformer::new(&config, vb);
        backend.0.finish()?;
        built?
    } else {
        let merge = Shared(Arc::new(LoraMerge::new(backend.clone(), lora_deltas(&opts.loras)?)));
        let vb = VarBuilder::from_backend(Box::new(merge.clone()), opts.dtype, opts.device.clone());
        let built = PixArtTransformer::new(&config, vb);
        backend.0.finish()?;
        let files: Vec<String> = opts.loras.iter().map(|l| l.path.display().to_string()).collect();
        let mismatched = merge.0.mismatched();
        if !mismatched.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{}: LoRA adapters of another model's sizes: {}",
                files.join(", "),
                mismatched.join("; ")
            )));
        }
        let unused = merge.0.unused();
        if !unused.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{}: LoRA adapters for layers this transformer does not have: {}",
                files.join(", "),
                unused.join(", ")
            )));
        }
        built?
    };
    Ok(LoadedTransformer {
        model,
        config,
        report,
        layout,
        weights,
    })
}

/// Reads a checkpoint (either layout) and returns its tensors under the diffusers names,
/// checked against its config, plus that config: what `pixart convert` writes.
pub fn to_diffusers(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(
    std::collections::BTreeMap<String, candle_core::Tensor>,
    TransformerConfig,
)> {
    let (file, config, layout) = open_checkpoint(path, opts)?;
    let rec = Shared(Arc::new(Recording::new(checked(file, layout, &config))));
    let vb = VarBuilder::from_backend(Box::new(rec.clone()), opts.dtype, opts.device.clone());
    let built = PixArtTransformer::new(&config, vb);
    rec.0.inner().finish()?;
    built?;
    Ok((rec.0.tensors(), config))
}

/// Writes a diffusers `transformer/` folder: `config.json` (with `_class_name`) and
/// `diffusion_pytorch_model.safetensors`, each file atomically.
pub fn save_diffusers(
    dir: &Path,
    tensors: &std::collections::BTreeMap<String, candle_core::Tensor>,
    config: &TransformerConfig,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let map: std::collections::HashMap<_, _> = tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    pixart_core::weights::save_safetensors(&map, &dir.join("diffusion_pytorch_model.safetensors"))?;
    let mut json = serde_json::to_value(config).map_err(|e| Error::config(dir.join("config.json"), e.to_string()))?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert("_class_name".into(), "PixArtTransformer2DModel".into());
    }
    pixart_core::config::write_json(&dir.join("config.json"), &json)
}
