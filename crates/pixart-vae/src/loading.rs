//! Building an [`AutoencoderKl`] from a diffusers `vae/` folder (or a pipeline folder holding
//! one), checking every tensor, with the legacy attention names mapped.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use pixart_core::weights::{CheckedWeights, RandomWeights, Renamer, Shared, Source, WeightFile};
use pixart_core::{Error, Result};

use crate::config::AutoencoderKlConfig;
use crate::model::AutoencoderKl;

/// Weight file names looked for in the folder, in order.
const WEIGHT_NAMES: [&str; 4] = [
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors",
    "model.safetensors.index.json",
];

/// The current attention names and their pre-0.14 diffusers equivalents.
const LEGACY_ATTENTION: [(&str, &str); 4] = [
    (".to_q.", ".query."),
    (".to_k.", ".key."),
    (".to_v.", ".value."),
    (".to_out.0.", ".proj_attn."),
];

/// The VAE folder (holding `config.json`) for `path`: the folder itself, or its `vae/`.
pub fn vae_dir(path: &Path) -> Result<PathBuf> {
    if path.join("config.json").is_file() {
        Ok(path.to_path_buf())
    } else if path.join("vae").join("config.json").is_file() {
        Ok(path.join("vae"))
    } else if path.is_dir() {
        Err(Error::config(
            path.join("config.json"),
            "missing: a VAE folder needs config.json (or a vae/ subfolder holding one)",
        ))
    } else {
        Err(Error::weights(path, "no such folder"))
    }
}

/// Whether the file names the mid-block attention weights the legacy way
/// (`query`/`key`/`value`/`proj_attn`).
fn is_legacy(file: &WeightFile) -> bool {
    file.infos()
        .keys()
        .any(|k| k.contains(".attentions.") && LEGACY_ATTENTION.iter().any(|(_, old)| k.contains(old)))
}

/// Maps the current attention names to the legacy ones; everything else is unchanged.
fn legacy_renamer() -> Renamer {
    Box::new(|name: &str| {
        let mapped = LEGACY_ATTENTION
            .iter()
            .find(|(new, _)| name.contains(".attentions.") && name.contains(new))
            .map(|(new, old)| name.replacen(new, old, 1));
        Some(Source::whole(mapped.unwrap_or_else(|| name.to_string())))
    })
}

/// Loads the VAE in `dir` (a diffusers `vae/` folder with `config.json` and
/// `diffusion_pytorch_model.safetensors`, or a pipeline folder with a `vae/` subfolder).
/// Every missing, mis-shaped or unexpected tensor is reported at once.
///
/// On the CPU use f32 (or f16): candle has no bf16 convolution there.
pub fn load_vae(dir: &Path, dtype: DType, device: &Device) -> Result<AutoencoderKl> {
    check_dtype(dtype, device)?;
    let (config, backend) = open_checked(dir)?;
    let vb = VarBuilder::from_backend(Box::new(backend.clone()), dtype, device.clone());
    let built = AutoencoderKl::new(&config, vb);
    backend.0.finish()?;
    built
}

/// The validated config of the VAE in `dir` (as [`load_vae`] finds it) and a checked backend
/// over its weight file (legacy attention names mapped). Call `finish()` on it after building.
pub(crate) fn open_checked(dir: &Path) -> Result<(AutoencoderKlConfig, Shared<CheckedWeights>)> {
    let dir = vae_dir(dir)?;
    let config = AutoencoderKlConfig::from_file(&dir.join("config.json"))?;
    let weights = WEIGHT_NAMES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::weights(dir.join(WEIGHT_NAMES[0]), "no such weight file"))?;
    let file = WeightFile::open(&weights)?;
    let mut checked = CheckedWeights::new(file);
    if is_legacy(checked.file()) {
        checked = checked.with_renamer(legacy_renamer());
    }
    Ok((config, Shared(Arc::new(checked))))
}

/// Builds a model of `config` with random weights (for benchmarks; no file needed).
pub fn random_vae(config: &AutoencoderKlConfig, dtype: DType, device: &Device) -> Result<AutoencoderKl> {
    check_dtype(dtype, device)?;
    let vb = VarBuilder::from_backend(Box::new(RandomWeights { std: 0.02 }), dtype, device.clone());
    AutoencoderKl::new(config, vb)
}

fn check_dtype(dtype: DType, device: &Device) -> Result<()> {
    if device.is_cpu() && dtype == DType::BF16 {
        return Err(Error::InvalidInput(
            "the VAE cannot run in bf16 on the CPU (candle has no bf16 convolution there); use f32".into(),
        ));
    }
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
        return Err(Error::InvalidInput(format!(
            "the VAE needs a float dtype, not {dtype:?}"
        )));
    }
    Ok(())
}
