//! The model flags `generate` and `serve` share (`--model`, `--base`, `--text-encoder`, `--vae`,
//! `--lora`, `--kv-compress`), their parsing, and the hub downloads they may start.
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device};
use clap::Args;
use pixart_model::config::KvCompressSpec;
use pixart_model::lora::LoraSpec;
use pixart_pipeline::{ComponentOptions, ComponentPaths, DownloadProgress, HubConfig, ResolvedPaths};

use super::usage;
use crate::UsageError;

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A diffusers PixArt-Σ pipeline folder, a hub id (owner/name[@revision], downloaded into the
    /// Hugging Face cache: HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN; HF_HUB_OFFLINE=1 uses the
    /// cache only), or a transformer folder / weight file (then --base). Default (or `builtin`):
    /// the project's own small built-in model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A LoRA adapter (PEFT/diffusers keys) merged into the transformer: FILE[:SCALE];
    /// repeat for several.
    #[arg(long = "lora")]
    pub lora: Vec<String>,
    /// A pipeline folder or hub id supplying the text encoder, tokenizer, VAE and scheduler
    /// --model lacks [default: PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers, fetched only when
    /// --model lacks something].
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// T5 encoder override: a folder (or hub id), or one file: a llama.cpp GGUF (`t5-v1_1-xxl-
    /// encoder-Q8_0.gguf`) or a single-file safetensors (`t5xxl_fp16`, fp8, scaled fp8).
    #[arg(long = "text-encoder")]
    pub text_encoder: Option<PathBuf>,
    /// VAE folder (or hub id) override.
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// KV token compression: SAMPLING[:R[:LAYERS]] (conv, uniform, ave) or none.
    #[arg(long = "kv-compress")]
    pub kv_compress: Option<String>,
    /// A ControlNet-Transformer (PixArt-δ): the diffusers example's adapter folder, a folder
    /// holding controlnet/, an original PixArt-ControlNet .pth, or a hub id. Without it a
    /// controlnet/ folder beside the pipeline's components is used when there is one.
    #[arg(long)]
    pub controlnet: Option<PathBuf>,
}

/// [`ModelArgs`] checked and resolved to local folders.
pub struct ModelChoice {
    /// The model as given (the built-in model's folder when none or `builtin` was given).
    pub model: PathBuf,
    /// Every component's folder, hub ids downloaded.
    pub resolved: ResolvedPaths,
    /// How to load: the device and dtype given, `--kv-compress` and `--lora`.
    pub options: ComponentOptions,
}

impl ModelArgs {
    /// The model folder, file or hub id (the built-in model's folder by default).
    pub fn model_path(&self) -> Result<PathBuf> {
        match self.model.as_deref() {
            Some(m) if !m.to_str().is_some_and(pixart_pipeline::is_builtin) => Ok(m.to_path_buf()),
            _ => pixart_pipeline::builtin_model_dir().map_err(usage),
        }
    }

    /// How the model is named to clients and in the images' parameters ([`model_label`]).
    pub fn label(&self) -> String {
        model_label(self.model.as_deref())
    }

    /// Parses the flags and finds every component: hub ids are downloaded here (what is missing
    /// from the cache, with progress on stderr), before anything is loaded. Usage errors for
    /// bad flags and unusable folders.
    pub fn resolve(&self, device: Device, dtype: DType) -> Result<ModelChoice> {
        let model = self.model_path()?;
        let loras = self
            .lora
            .iter()
            .map(|s| LoraSpec::parse(s).map_err(|m| UsageError(format!("--lora: {m}"))))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if self.controlnet.as_deref().and_then(|p| p.to_str()) == Some("builtin") {
            return Err(UsageError(
                "--controlnet builtin: the built-in model has no ControlNet yet; give a ControlNet folder, file or hub id"
                    .into(),
            )
            .into());
        }
        let paths = ComponentPaths {
            model: model.clone(),
            controlnet: self.controlnet.clone(),
            base: Some(
                self.base
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(pixart_pipeline::DEFAULT_BASE)),
            ),
            text_encoder: self.text_encoder.clone(),
            vae: self.vae.clone(),
            override_hints: true,
            ..Default::default()
        };
        let mut downloads = DownloadDisplay {
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            bar: None,
            current: None,
        };
        let resolved = paths
            .resolve_with(&HubConfig::from_env(), &mut downloads)
            .map_err(|e| {
                // Name the default base when it is the part that could not be had.
                let hint = format!(
                    "{} is the default --base, for the components --model lacks; pass --base DIR",
                    pixart_pipeline::DEFAULT_BASE
                );
                let about_default = self.base.is_none() && e.to_string().contains(pixart_pipeline::DEFAULT_BASE);
                match e {
                    pixart_core::Error::InvalidInput(m) if about_default => UsageError(format!("{m} ({hint})")).into(),
                    other if about_default => anyhow::Error::from(other).context(hint),
                    other => usage(other),
                }
            })?;
        // Parsed here, without the model; fitted to its depth when it is loaded.
        let kv_compress = self.kv_compress.as_deref().map(parse_kv_compress).transpose()?;
        Ok(ModelChoice {
            model,
            resolved,
            options: ComponentOptions {
                device,
                dtype,
                kv_compress,
                loras,
                keep_text_encoder: false,
            },
        })
    }
}

/// Parses `--kv-compress` (`SAMPLING[:R[:LAYERS]]` or `none`); whether its layers exist is
/// checked when the model is opened.
pub fn parse_kv_compress(spec: &str) -> Result<KvCompressSpec> {
    KvCompressSpec::parse(spec).map_err(|m| UsageError(format!("--kv-compress: {m}")).into())
}

/// Hub downloads: a progress bar per file on a terminal; otherwise a line per file, and one per
/// tenth of a large file.
struct DownloadDisplay {
    tty: bool,
    bar: Option<indicatif::ProgressBar>,
    /// `repo/file`, size, bytes so far, start time.
    current: Option<(String, u64, u64, std::time::Instant)>,
}

impl DownloadProgress for DownloadDisplay {
    fn start(&mut self, repo: &str, file: &str, size: u64) {
        let name = format!("{repo}/{file}");
        if self.tty {
            let bar = indicatif::ProgressBar::new(size);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} [{eta_precise}]",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(name.clone());
            self.bar = Some(bar);
        } else {
            eprintln!("downloading {name} ({})", indicatif::HumanBytes(size));
        }
        self.current = Some((name, size, 0, std::time::Instant::now()));
    }

    fn advance(&mut self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
        if let Some((name, size, done, _)) = &mut self.current {
            let tenth = (*size / 10).max(1);
            let before = *done / tenth;
            *done += bytes;
            if !self.tty && *size >= 64 << 20 && *done / tenth > before && *done < *size {
                eprintln!("  {name}: {}%", *done * 100 / *size);
            }
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
        if let Some((name, size, _, t)) = self.current.take() {
            if !self.tty {
                eprintln!(
                    "downloaded {name} ({}, {:.1} s)",
                    indicatif::HumanBytes(size),
                    t.elapsed().as_secs_f64()
                );
            }
        }
    }

    fn note(&mut self, message: &str) {
        eprintln!("note: {message}");
    }
}

/// How a model (`--model`, none: the built-in one) is named to clients and in the images'
/// parameters: `builtin`, a folder's (or file's) name or a hub id, never a path.
pub fn model_label(model: Option<&Path>) -> String {
    match model {
        Some(m) if !m.to_str().is_some_and(pixart_pipeline::is_builtin) => {
            if m.exists() {
                m.canonicalize()
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "model".into())
            } else {
                m.to_string_lossy().into_owned()
            }
        }
        _ => "builtin".to_string(),
    }
}
