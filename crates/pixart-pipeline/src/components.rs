//! The models and files of a pipeline, found in a local diffusers folder
//! (`model_index.json` + `transformer/ text_encoder/ tokenizer/ vae/ scheduler/`), or in a
//! transformer-only folder plus a `base` pipeline folder for the rest, with per-component
//! overrides.
//!
//! The transformer and the VAE are loaded by [`PipelineComponents::load`]; the T5 encoder (the
//! largest part by far) is only located there and is loaded by [`crate::generate`] for the
//! text-encoding step, then dropped before denoising.
use crate::text::TextFeatures;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use pixart_core::{Error, Result};
use pixart_model::config::KvCompressSpec;
use pixart_model::{load_transformer, LoadOptions, PixArtControlNetAdapter, PixArtTransformer, TransformerConfig};
use pixart_schedulers::SchedulerConfig;
use pixart_text::T5Tokenizer;
use pixart_vae::{load_vae, AutoencoderKl};

use crate::geometry::ModelGeometry;
use crate::hub::{DownloadProgress, HubConfig};
use crate::request::MAX_SEQUENCE_LENGTH;

/// Where the components come from.
#[derive(Debug, Clone, Default)]
pub struct ComponentPaths {
    /// A diffusers pipeline folder, or a transformer folder (or weight file) whose other
    /// components come from `base`.
    pub model: PathBuf,
    /// A pipeline folder supplying whatever `model` lacks (text encoder, tokenizer, VAE, scheduler).
    pub base: Option<PathBuf>,
    /// Overrides: a `text_encoder/` folder (or a folder holding one, or one `.gguf` /
    /// `.safetensors` file: see `pixart_text::single_file`), a `tokenizer/` folder, a
    /// `vae/` folder, a `scheduler/` folder or `scheduler_config.json`.
    pub text_encoder: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    pub scheduler: Option<PathBuf>,
    /// A ControlNet-Transformer ([`pixart_model::controlnet`]): an adapter folder, a folder
    /// holding `controlnet/`, an original `.pth`, or a hub id. Without it, a `controlnet/`
    /// folder beside the model's other components is used when there is one.
    pub controlnet: Option<PathBuf>,
    /// Whether the caller offers the override flags (`--text-encoder DIR`, `--vae DIR`): a
    /// missing component's error suggests them only then, and `--base DIR` always.
    pub override_hints: bool,
}

/// How to load.
#[derive(Debug, Clone)]
pub struct ComponentOptions {
    pub device: Device,
    /// Transformer dtype (and VAE dtype off the CPU). The T5 encoder runs in f32 when this is
    /// f32 and in bf16 otherwise (f16 overflows in T5 v1.1); the VAE runs in f32 on the CPU.
    pub dtype: DType,
    /// Replace the transformer config's KV compression ([`KvCompressSpec::Off`] turns it
    /// off); fitted to the model's depth when it is loaded.
    pub kv_compress: Option<KvCompressSpec>,
    /// LoRA adapters merged into the transformer.
    pub loras: Vec<pixart_model::lora::LoraSpec>,
    /// Load the T5 encoder now and keep it, instead of loading it for each generation and
    /// dropping it before denoising ([`crate::text`]).
    pub keep_text_encoder: bool,
}

impl Default for ComponentOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            kv_compress: None,
            loras: Vec::new(),
            keep_text_encoder: false,
        }
    }
}

/// Resolved component locations.
#[derive(Debug, Clone)]
pub struct ResolvedPaths {
    pub transformer: PathBuf,
    pub text_encoder: PathBuf,
    pub tokenizer: PathBuf,
    pub vae: PathBuf,
    pub scheduler_config: PathBuf,
    /// The ControlNet, given or found beside the model's components.
    pub controlnet: Option<PathBuf>,
    /// Caption tokens: 300 (PixArt-Σ), or 120 when the pipeline folder's `model_index.json`
    /// names `PixArtAlphaPipeline` (PixArt-α and PixArt-LCM, as diffusers runs them).
    pub max_sequence_length: usize,
}

/// Caption tokens of a diffusers `PixArtAlphaPipeline` (`max_sequence_length` default).
pub const ALPHA_MAX_SEQUENCE_LENGTH: usize = 120;

/// The caption length of the pipeline whose `model_index.json` is in `dir`: 120 for
/// `PixArtAlphaPipeline`, else 300 (also when there is none). A file that is not a JSON
/// object is an error naming it (it used to be ignored, the caption length silently 300).
fn max_sequence_length_of(dir: &Path) -> Result<usize> {
    let path = dir.join("model_index.json");
    if !path.is_file() {
        return Ok(MAX_SEQUENCE_LENGTH);
    }
    let index: serde_json::Map<String, serde_json::Value> = pixart_core::config::read_json(&path)?;
    Ok(match index.get("_class_name").and_then(|c| c.as_str()) {
        Some("PixArtAlphaPipeline") => ALPHA_MAX_SEQUENCE_LENGTH,
        _ => MAX_SEQUENCE_LENGTH,
    })
}

impl ResolvedPaths {
    /// The sampler the model's `scheduler_config.json` names, if it is readable and names one
    /// (for defaults before loading; loading reports a bad file).
    pub fn scheduler_kind(&self) -> Option<pixart_schedulers::SamplerKind> {
        SchedulerConfig::from_file(&self.scheduler_config)
            .ok()?
            .class()
            .map(pixart_schedulers::SamplerKind::of_class)
    }

    /// The geometry from the config files alone (no weights read), to validate a request before
    /// loading. Fails for a transformer without `config.json` (an original checkpoint).
    pub fn geometry(&self) -> Result<ModelGeometry> {
        self.geometry_with(None)
    }

    /// [`Self::geometry`] of the model as it will be loaded with the KV compression `kv`
    /// ([`ComponentOptions::kv_compress`]).
    pub fn geometry_with(&self, kv: Option<&KvCompressSpec>) -> Result<ModelGeometry> {
        let (_, cfg) = pixart_model::loading::locate(&self.transformer)?;
        let cfg = cfg.ok_or_else(|| Error::config(&self.transformer, "no config.json"))?;
        let mut t = TransformerConfig::from_file(&cfg)?;
        if let Some(spec) = kv {
            t.kv_compress = spec
                .resolve(t.num_layers)
                .map_err(|m| Error::request(pixart_core::Field::KvCompress, m))?;
        }
        let vae_cfg = pixart_vae::loading::vae_dir(&self.vae)?.join("config.json");
        let v = pixart_vae::AutoencoderKlConfig::from_file(&vae_cfg)?;
        let scheduler = SchedulerConfig::from_file(&self.scheduler_config)?;
        let mut g = ModelGeometry::new(&t, v.downsample_factor(), scheduler);
        g.controlnet = self.controlnet.is_some();
        Ok(g)
    }
}

/// Loaded components.
pub struct PipelineComponents {
    pub transformer: PixArtTransformer,
    pub vae: AutoencoderKl,
    pub tokenizer: T5Tokenizer,
    pub scheduler_config: SchedulerConfig,
    pub paths: ResolvedPaths,
    pub device: Device,
    pub dtype: DType,
    /// The T5 encoder's dtype.
    pub text_dtype: DType,
    /// The T5 encoder when kept, and the features of recent texts.
    pub text: TextFeatures,
    /// The ControlNet-Transformer, when one was given or found.
    pub controlnet: Option<PixArtControlNetAdapter>,
}

impl std::fmt::Debug for PipelineComponents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineComponents")
            .field("paths", &self.paths)
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

/// The pipeline that gives a transformer-only model (the 256 / 512 / 2K repos, an original
/// checkpoint) its text encoder, tokenizer, VAE and scheduler when no base is named: the
/// SDXL-VAE + T5-XXL pipeline PixArt-Σ's checkpoints use.
pub const DEFAULT_BASE: &str = "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers";

/// A missing component; `flag` is the override that would give it.
fn missing(component: &str, paths: &ComponentPaths, flag: Option<&str>) -> Error {
    let base = match &paths.base {
        Some(b) => format!(" or {}", b.display()),
        None => String::new(),
    };
    let or_flag = match flag {
        Some(f) if paths.override_hints => format!(" or {f}"),
        _ => String::new(),
    };
    Error::InvalidInput(format!(
        "missing component `{component}`: no {component}/ folder in {}{base}; pass --base DIR (a diffusers pipeline folder){or_flag}",
        paths.model.display()
    ))
}

/// `dir/sub` if it is a folder.
fn no_such_model(model: &Path) -> Error {
    Error::InvalidInput(format!("{}: no such model folder or file", model.display()))
}

fn sub(dir: &Path, name: &str) -> Option<PathBuf> {
    Some(dir.join(name)).filter(|p| p.is_dir())
}

impl ComponentPaths {
    /// Finds every component: the override, else the model folder's subfolder, else the base
    /// folder's. Fails with one message naming the first missing component.
    /// Every path may also be a hub id (`owner/name[@revision]`), fetched into the HF cache as
    /// the environment says ([`HubConfig::from_env`]), without a progress display.
    pub fn resolve(&self) -> Result<ResolvedPaths> {
        self.resolve_with(&HubConfig::from_env(), &mut ())
    }

    /// [`ComponentPaths::resolve`] with the hub settings and a download progress display.
    /// Only the components each hub repository must supply are fetched: the overrides first,
    /// then from `model` whatever they do not cover, then from `base` whatever `model` lacks.
    pub fn resolve_with(&self, hub: &HubConfig, progress: &mut dyn DownloadProgress) -> Result<ResolvedPaths> {
        let mut fetch = |p: &Option<PathBuf>, wanted: &[&str]| {
            p.as_deref()
                .map(|p| crate::hub::resolve(p, hub, wanted, &mut *progress))
                .transpose()
        };
        let text_encoder = fetch(&self.text_encoder, &["text_encoder", "tokenizer"])?;
        let tokenizer = fetch(&self.tokenizer, &["tokenizer"])?;
        let vae = fetch(&self.vae, &["vae"])?;
        let scheduler = fetch(&self.scheduler, &["scheduler"])?;
        let controlnet = fetch(&self.controlnet, &["controlnet"])?;
        let mut wanted = vec!["transformer"];
        for (name, given) in [
            ("text_encoder", &text_encoder),
            ("tokenizer", &tokenizer),
            ("vae", &vae),
            ("scheduler", &scheduler),
        ] {
            if given.is_none() {
                wanted.push(name);
            }
        }
        let model = crate::hub::resolve(&self.model, hub, &wanted, &mut *progress)?;
        // A mistyped local path is named before the base is fetched for it.
        if !model.exists() {
            return Err(no_such_model(&model));
        }
        // So is a file that is no checkpoint (a picture given as --model): its header read,
        // before any hub access for the base (which used to report a DNS failure instead).
        if model.is_file() {
            pixart_core::weights::WeightFile::open(&model)?;
        }
        let from_base: Vec<&str> = wanted[1..]
            .iter()
            .filter(|c| !(model.is_dir() && model.join(c).is_dir()))
            .copied()
            .collect();
        // A hub base that has nothing to give is not fetched.
        let base = match &self.base {
            Some(b) if from_base.is_empty() && !b.exists() && b.to_str().is_some_and(crate::hub::is_hub_id) => None,
            Some(b) => Some(crate::hub::resolve(b, hub, &from_base, &mut *progress)?),
            None => None,
        };
        let local = ComponentPaths {
            model,
            base,
            text_encoder,
            tokenizer,
            vae,
            scheduler,
            controlnet,
            override_hints: self.override_hints,
        };
        local.resolve_local()
    }

    fn resolve_local(&self) -> Result<ResolvedPaths> {
        let model = &self.model;
        if !model.exists() {
            return Err(no_such_model(model));
        }
        if let Some(b) = &self.base {
            if !b.is_dir() {
                return Err(Error::InvalidInput(format!("{}: no such base folder", b.display())));
            }
        }
        for (flag, p) in [
            ("--text-encoder", &self.text_encoder),
            ("--tokenizer", &self.tokenizer),
            ("--vae", &self.vae),
            ("--scheduler", &self.scheduler),
            ("--controlnet", &self.controlnet),
        ] {
            if let Some(p) = p {
                if !p.exists() {
                    return Err(Error::InvalidInput(format!("{flag} {}: no such folder", p.display())));
                }
            }
        }
        let find = |name: &str| -> Option<PathBuf> {
            (model.is_dir().then(|| sub(model, name)).flatten())
                .or_else(|| self.base.as_deref().and_then(|b| sub(b, name)))
        };
        let transformer = if model.is_dir() && model.join("model_index.json").is_file() {
            sub(model, "transformer").ok_or_else(|| {
                Error::InvalidInput(format!(
                    "missing component `transformer`: no transformer/ folder in {}; pass a transformer folder as --model",
                    model.display()
                ))
            })?
        } else {
            model.clone()
        };
        let text_encoder = match &self.text_encoder {
            Some(p) => p.clone(),
            None => find("text_encoder").ok_or_else(|| missing("text_encoder", self, Some("--text-encoder DIR")))?,
        };
        let tokenizer = match &self.tokenizer {
            Some(p) => p.clone(),
            None => find("tokenizer")
                .or_else(|| self.text_encoder.as_deref().and_then(|t| sub(t, "tokenizer")))
                .or_else(|| {
                    self.text_encoder
                        .as_deref()
                        .and_then(Path::parent)
                        .and_then(|t| sub(t, "tokenizer"))
                })
                .ok_or_else(|| {
                    missing(
                        "tokenizer",
                        self,
                        Some("--text-encoder DIR with a tokenizer/ beside it"),
                    )
                })?,
        };
        let vae = match &self.vae {
            Some(p) => p.clone(),
            None => find("vae").ok_or_else(|| missing("vae", self, Some("--vae DIR")))?,
        };
        let scheduler_config = match &self.scheduler {
            Some(p) if p.is_file() => p.clone(),
            Some(p) => p.join("scheduler_config.json"),
            None => find("scheduler")
                .map(|d| d.join("scheduler_config.json"))
                .ok_or_else(|| missing("scheduler", self, None))?,
        };
        if !scheduler_config.is_file() {
            return Err(Error::InvalidInput(format!(
                "{}: missing scheduler config",
                scheduler_config.display()
            )));
        }
        // A ControlNet beside the model's own components (not the base's: a base pipeline's
        // ControlNet belongs to its own transformer).
        let controlnet = match &self.controlnet {
            Some(p) => Some(p.clone()),
            None => model.is_dir().then(|| sub(model, "controlnet")).flatten(),
        };
        // The pipeline class of the folder the transformer comes from, else of the base.
        let max_sequence_length = if model.is_dir() && model.join("model_index.json").is_file() {
            max_sequence_length_of(model)?
        } else {
            self.base
                .as_deref()
                .map_or(Ok(MAX_SEQUENCE_LENGTH), max_sequence_length_of)?
        };
        Ok(ResolvedPaths {
            transformer,
            text_encoder,
            tokenizer,
            vae,
            scheduler_config,
            controlnet,
            max_sequence_length,
        })
    }
}

impl PipelineComponents {
    /// Resolves and loads everything but the T5 encoder (whose folder and weights are checked
    /// to exist), unless [`ComponentOptions::keep_text_encoder`].
    pub fn load(paths: &ComponentPaths, opts: &ComponentOptions) -> Result<Self> {
        Self::load_resolved(paths.resolve()?, opts)
    }

    /// [`PipelineComponents::load`] from components already found (by
    /// [`ComponentPaths::resolve_with`]).
    pub fn load_resolved(paths: ResolvedPaths, opts: &ComponentOptions) -> Result<Self> {
        // A folder (config.json + weights), or one file (GGUF, single-file safetensors) whose
        // config comes from its header.
        let (text_config, text_config_path) = if pixart_text::single_file::is_single_file(&paths.text_encoder) {
            let config = pixart_text::single_file::read_config(&paths.text_encoder)?;
            (config, paths.text_encoder.clone())
        } else {
            let text_dir = pixart_text::loading::text_encoder_dir(&paths.text_encoder)?;
            pixart_text::loading::locate_weights(&text_dir)?;
            let path = text_dir.join("config.json");
            (pixart_text::T5Config::from_file(&path)?, path)
        };
        let tokenizer = T5Tokenizer::from_dir(&paths.tokenizer)?;
        // Every id the tokenizer can produce must have an embedding row.
        if tokenizer.vocab_size() > text_config.vocab_size {
            return Err(Error::config(
                &text_config_path,
                format!(
                    "the tokenizer ({}) has {} tokens, more than this text encoder's vocab_size {}",
                    paths.tokenizer.display(),
                    tokenizer.vocab_size(),
                    text_config.vocab_size
                ),
            ));
        }
        let scheduler_config = SchedulerConfig::from_file(&paths.scheduler_config)?;
        // The sampler the file names is built now, so that a value it cannot run with is
        // reported against the file, before anything heavy is loaded.
        if scheduler_config.class().is_some() {
            pixart_schedulers::from_config(&scheduler_config, None)
                .map_err(|e| Error::config(&paths.scheduler_config, e.to_string()))?;
        }
        let load_opts = LoadOptions {
            dtype: opts.dtype,
            device: opts.device.clone(),
            kv_compress: opts.kv_compress.clone(),
            loras: opts.loras.clone(),
            ..LoadOptions::default()
        };
        let loaded = load_transformer(&paths.transformer, &load_opts)?;
        let controlnet = match &paths.controlnet {
            Some(p) => Some(pixart_model::load_controlnet(p, &loaded.config, opts.dtype, &opts.device)?.adapter),
            None => None,
        };
        let transformer = loaded.model;
        let vae_dtype = if opts.device.is_cpu() { DType::F32 } else { opts.dtype };
        let vae = load_vae(&paths.vae, vae_dtype, &opts.device)?;
        let text_dtype = if opts.dtype == DType::F32 {
            DType::F32
        } else {
            DType::BF16
        };
        let resident = match opts.keep_text_encoder {
            true => Some(pixart_text::load_text_encoder(
                &paths.text_encoder,
                text_dtype,
                &opts.device,
            )?),
            false => None,
        };
        Ok(Self {
            transformer,
            vae,
            tokenizer,
            scheduler_config,
            paths,
            device: opts.device.clone(),
            dtype: opts.dtype,
            text_dtype,
            text: TextFeatures::new(resident),
            controlnet,
        })
    }

    /// The transformer's config.
    pub fn transformer_config(&self) -> &TransformerConfig {
        self.transformer.config()
    }

    /// What request validation needs.
    pub fn geometry(&self) -> ModelGeometry {
        let mut g = ModelGeometry::new(
            self.transformer_config(),
            self.vae_factor(),
            self.scheduler_config.clone(),
        );
        g.controlnet = self.controlnet.is_some();
        g
    }

    /// Image pixels per latent pixel (8 for the SDXL VAE).
    pub fn vae_factor(&self) -> usize {
        self.vae.downsample_factor()
    }
}
