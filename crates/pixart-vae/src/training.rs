//! Training the VAE: trainable weights in a `VarMap` (fresh or from a checkpoint), the
//! training-mode model over them, the posterior sample, the loss, and the diffusers-layout save.
//!
//! The model is built in [`Mode::Training`]: every layer is composed from candle ops that have
//! a backward (the fast CPU kernels of `pixart_kernels::ops::vae` would cut the autograd graph).
//!
//! The loss follows LDM's `LPIPSWithDiscriminator` without the perceptual and adversarial terms
//! (CompVis/latent-diffusion `ldm/modules/losses/contperceptual.py`) and diffusers'
//! `DiagonalGaussianDistribution.kl()` (0.42.1 `models/autoencoders/vae.py`):
//!
//! ```text
//! loss = w_l1 · mean|x − x̂| + w_l2 · mean (x − x̂)² + w_kl · Σ KL / (B·C·H·W)
//! KL   = 0.5 · (μ² + σ² − 1 − log σ²)     per latent value, log σ² clamped to [-30, 20]
//! ```
//!
//! Every part is a mean per image element: LDM sums the reconstruction error and the KL over
//! each sample and divides both by the batch size, so dividing both by the image elements per
//! sample keeps LDM's ratio, and its KL weight (1e-6) means the same here.
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use pixart_core::weights::{Recording, Shared};
use pixart_core::{Error, Result};
use rand::SeedableRng;
use rand_distr::Distribution;

use crate::blocks::Mode;
use crate::config::AutoencoderKlConfig;
use crate::loading::open_checked;
use crate::model::{AutoencoderKl, DiagonalGaussian};

/// The diffusers version whose `AutoencoderKL` the saved folders are written for.
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// A `VarBuilder` backend that creates every weight from its initialisation hint with a seeded
/// RNG (the same seed gives the same weights), in the order the model asks for them.
pub struct SeededInit {
    rng: Mutex<rand::rngs::StdRng>,
}

impl SeededInit {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
        }
    }
}

impl SimpleBackend for SeededInit {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let n = s.elem_count();
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("seeded init: RNG lock poisoned".into()))?;
        let values: Vec<f32> = match h {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } => {
                let d = rand_distr::Uniform::new(lo as f32, up as f32)
                    .map_err(|e| candle_core::Error::Msg(format!("{name}: init U({lo}, {up}): {e}")))?;
                (0..n).map(|_| d.sample(&mut *rng)).collect()
            }
            Init::Randn { mean, stdev } => {
                let d = rand_distr::Normal::new(mean as f32, stdev as f32)
                    .map_err(|e| candle_core::Error::Msg(format!("{name}: init N({mean}, {stdev}): {e}")))?;
                (0..n).map(|_| d.sample(&mut *rng)).collect()
            }
            Init::Kaiming { .. } => {
                return Err(candle_core::Error::Msg(format!(
                    "{name}: Kaiming hints are not used by the VAE"
                )))
            }
        };
        Tensor::from_vec(values, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::CannotFindTensor { path: name.into() })
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

/// Builds the model of `config` over `backend` (to record its weights) and returns them as
/// trainable f32 variables under the diffusers names.
fn record_into_varmap<B: SimpleBackend + 'static>(
    config: &AutoencoderKlConfig,
    backend: B,
    device: &Device,
    finish: impl FnOnce() -> Result<()>,
) -> Result<VarMap> {
    let rec = Shared(Arc::new(Recording::new(backend)));
    let vb = VarBuilder::from_backend(Box::new(rec.clone()), DType::F32, device.clone());
    AutoencoderKl::new(config, vb)?;
    finish()?;
    let varmap = VarMap::new();
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| Error::InvalidInput("VarMap lock poisoned".into()))?;
        for (name, t) in rec.0.tensors() {
            data.insert(name, Var::from_tensor(&t.to_dtype(DType::F32)?)?);
        }
    }
    Ok(varmap)
}

/// Fresh trainable weights for `config`, initialised as diffusers' `AutoencoderKL` is by
/// PyTorch's defaults ([`crate::blocks::torch_default_init`]: convolutions and linears
/// U(±1/√fan_in), GroupNorm weight 1 and bias 0), drawn from a RNG seeded with `seed`.
pub fn init_varmap(config: &AutoencoderKlConfig, seed: u64, device: &Device) -> Result<VarMap> {
    config.validate().map_err(Error::InvalidInput)?;
    pixart_core::mem::check_fits(config.parameters_estimate() * 4, "the VAE's f32 weights")
        .map_err(Error::InvalidInput)?;
    record_into_varmap(config, SeededInit::new(seed), device, || Ok(()))
}

/// The weights of the VAE in `dir` (a diffusers `vae/` folder or a pipeline folder holding one)
/// as trainable f32 variables, for fine-tuning; with its config. Every tensor is checked as in
/// [`crate::load_vae`].
pub fn load_varmap(dir: &Path, device: &Device) -> Result<(AutoencoderKlConfig, VarMap)> {
    let (config, checked) = open_checked(dir)?;
    let varmap = record_into_varmap(&config, checked.clone(), device, || checked.0.finish())?;
    Ok((config, varmap))
}

/// The training-mode model over the variables of `varmap` (from [`init_varmap`] or
/// [`load_varmap`]): its weights are those variables, so a backward pass reaches them.
pub fn trainable(config: &AutoencoderKlConfig, varmap: &VarMap, device: &Device) -> Result<AutoencoderKl> {
    let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
    AutoencoderKl::with_mode(config, Mode::Training, vb)
}

/// The variables of `varmap` as plain tensors, by name.
pub fn varmap_tensors(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::InvalidInput("VarMap lock poisoned".into()))?;
    Ok(data.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect())
}

/// `config.json` as diffusers writes it for an `AutoencoderKL` (`_class_name`,
/// `_diffusers_version`, then every `__init__` argument).
pub fn diffusers_config_json(config: &AutoencoderKlConfig) -> Result<String> {
    let mut v = serde_json::to_value(config).map_err(|e| Error::InvalidInput(format!("config: {e}")))?;
    if let serde_json::Value::Object(map) = &mut v {
        map.insert("_class_name".into(), "AutoencoderKL".into());
        map.insert("_diffusers_version".into(), DIFFUSERS_VERSION.into());
    }
    serde_json::to_string_pretty(&v).map_err(|e| Error::InvalidInput(format!("config: {e}")))
}

/// Writes a diffusers-layout VAE folder: `config.json` and `diffusion_pytorch_model.safetensors`
/// (f32, diffusers names), each atomically. The folder is created if needed.
pub fn save_diffusers(dir: &Path, config: &AutoencoderKlConfig, varmap: &VarMap) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    pixart_core::weights::save_safetensors(
        &varmap_tensors(varmap)?,
        &dir.join("diffusion_pytorch_model.safetensors"),
    )?;
    let json = diffusers_config_json(config)?;
    pixart_core::weights::write_atomic(&dir.join("config.json"), format!("{json}\n").as_bytes())
}

/// The weights of the loss parts (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWeights {
    /// Mean absolute reconstruction error.
    pub l1: f64,
    /// Mean squared reconstruction error.
    pub l2: f64,
    /// KL to N(0, I) per image element (LDM uses 1e-6 with L1).
    pub kl: f64,
}

impl Default for LossWeights {
    /// LDM's KL-regularised autoencoders without the perceptual and GAN terms: L1 and KL 1e-6.
    fn default() -> Self {
        Self {
            l1: 1.0,
            l2: 0.0,
            kl: 1e-6,
        }
    }
}

/// The loss and its (unweighted) parts, scalar f32 tensors in the autograd graph.
#[derive(Debug, Clone)]
pub struct VaeLoss {
    /// `l1 · w_l1 + l2 · w_l2 + kl · w_kl`: what to call `backward` on.
    pub total: Tensor,
    /// mean |x − x̂|
    pub l1: Tensor,
    /// mean (x − x̂)²
    pub l2: Tensor,
    /// Σ KL / (B·C·H·W): the KL summed over the batch and the latent, per image element.
    pub kl: Tensor,
}

/// One training forward: the posterior of `x`, its sample `z = mean + std · noise`, and the
/// reconstruction of `x` decoded from `z`.
#[derive(Debug, Clone)]
pub struct Forward {
    pub posterior: DiagonalGaussian,
    pub z: Tensor,
    pub reconstruction: Tensor,
}

/// Encodes images `x` (b, c, H, W) in [-1, 1], samples the posterior with `noise` (standard
/// normal, shape of the latent mean; drawn by the caller) and decodes the sample, untiled.
/// With `vae` in [`Mode::Training`], everything stays in the autograd graph.
pub fn forward(vae: &AutoencoderKl, x: &Tensor, noise: &Tensor) -> Result<Forward> {
    let posterior = vae.encode(x, crate::Tiling::Off)?;
    let z = posterior.sample(noise)?;
    let reconstruction = vae.decode(&z, crate::Tiling::Off)?;
    Ok(Forward {
        posterior,
        z,
        reconstruction,
    })
}

/// The loss of a reconstruction `rec` of `x` (same shape) from `posterior` (module docs).
pub fn vae_loss(x: &Tensor, rec: &Tensor, posterior: &DiagonalGaussian, w: LossWeights) -> Result<VaeLoss> {
    if x.dims() != rec.dims() {
        return Err(Error::Shape(format!(
            "reconstruction has shape {:?}, the images {:?}",
            rec.dims(),
            x.dims()
        )));
    }
    let x = x.to_dtype(DType::F32)?;
    let diff = (rec.to_dtype(DType::F32)? - &x)?;
    let l1 = diff.abs()?.mean_all()?;
    let l2 = diff.sqr()?.mean_all()?;
    let kl = (posterior.kl()?.to_dtype(DType::F32)?.sum_all()? / x.elem_count() as f64)?;
    let total = (((&l1 * w.l1)? + (&l2 * w.l2)?)? + (&kl * w.kl)?)?;
    Ok(VaeLoss { total, l1, l2, kl })
}
