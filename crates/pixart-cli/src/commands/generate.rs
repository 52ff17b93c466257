//! `pixart generate`: text to image with a local diffusers PixArt-Σ pipeline folder.
//! Parsing, progress display and file writing only; `pixart-pipeline` does the work.
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, ValueEnum};
use pixart_pipeline::memory::MemoryModel;
use pixart_pipeline::{
    generate, parameters_text, random_seed, read_parameters, sampler_name, Generated, GenerationRequest, ImageFormat,
    InitImage, Output, OutputKind, Parameters, PipelineComponents, Previews, Progress, RgbImage, SeededNoise, Upscale,
    VaeTiling, ValidatedRequest, DEFAULT_INPAINT_STRENGTH, DEFAULT_STRENGTH,
};

use super::model::{ModelArgs, ModelChoice};
use super::{cancel_on_ctrl_c, device, dtype, output_folder_exists, progress_bar, read_inputs, sampler, take, usage};
use crate::{Cancelled, UsageError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputType {
    /// A PNG per image.
    Image,
    /// The final latents as safetensors (tensor `latents`), no VAE decode.
    Latent,
}

#[derive(Debug, Args)]
#[command(
    after_help = "With --batch N > 1 (or several --prompt, or --prompts-file), images are written as \
OUT.png, OUT-1.png, OUT-2.png, ... (image k uses seed SEED+k). Each PNG carries the generation \
parameters in a tEXt chunk named `parameters`. Ctrl-C stops between steps and writes nothing of the \
run in progress."
)]
pub struct GenerateArgs {
    /// The prompt (repeat for several prompts, denoised together as one batch).
    #[arg(short = 'p', long = "prompt", required_unless_present_any = ["prompts_file", "from"])]
    prompt: Vec<String>,
    /// A text file of prompts, one per line (blank lines and lines starting with # skipped),
    /// generated one after the other with the model loaded once (--batch images each); image k
    /// of the whole file uses seed SEED+k, so it is what one run of all the prompts would make.
    #[arg(long = "prompts-file", conflicts_with = "prompt")]
    prompts_file: Option<PathBuf>,
    /// Take the prompt and settings from an image this program (or a tool writing the same
    /// `parameters` text) made: a PNG, JPEG or WebP. Flags given as well override its values
    /// (e.g. --seed for a variation); without --model, its model when that can be found.
    #[arg(long, conflicts_with = "prompts_file")]
    from: Option<PathBuf>,
    /// The negative prompt (used when --guidance > 1).
    #[arg(short = 'n', long = "negative-prompt")]
    negative_prompt: Option<String>,
    /// Image width in pixels (default: the model's native size, e.g. 1024).
    #[arg(long, allow_negative_numbers = true)]
    width: Option<usize>,
    /// Image height in pixels (default: the model's native size).
    #[arg(long, allow_negative_numbers = true)]
    height: Option<usize>,
    /// Denoising steps (default 20; 25 for sa-solver and 100 for iddpm, as PixArt's own
    /// inference script, and 4 for lcm; the sampler is --scheduler or the model's own).
    #[arg(long, allow_negative_numbers = true)]
    steps: Option<usize>,
    /// Classifier-free guidance scale; ≤ 1 turns CFG off (default 4.5; 0 with the lcm sampler).
    #[arg(long, allow_negative_numbers = true)]
    guidance: Option<f64>,
    /// Sampler (the list in `--help` comes from the samplers the code knows, see
    /// [`super::sampler_help`]).
    #[arg(long)]
    scheduler: Option<String>,
    /// Random seed, 0 to 2^64 − 1; -1 (as A1111 and stable-diffusion.cpp take it) or none: a
    /// random seed, printed and stored in the image.
    #[arg(long, allow_negative_numbers = true, value_parser = parse_seed)]
    seed: Option<Seed>,
    /// Images per prompt.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Output file: an image (default out.png; a `.jpg` / `.jpeg` name writes a JPEG, `.webp` a
    /// lossless WebP), or a
    /// safetensors file with --output-type latent (default out.safetensors). Written atomically.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// image (PNG) or latent (safetensors with tensor `latents`).
    #[arg(long = "output-type", value_enum, default_value_t = OutputType::Image)]
    output_type: OutputType,
    /// JPEG quality (1–100) when the output name ends in .jpg or .jpeg.
    #[arg(long = "jpeg-quality", default_value_t = 95)]
    jpeg_quality: u8,
    /// Transformer dtype: f32, bf16 or f16 (default f32).
    #[arg(long)]
    dtype: Option<String>,
    /// VAE tiled decoding: auto (large images only), on or off.
    #[arg(long = "vae-tiling", default_value = "auto")]
    vae_tiling: String,
    /// Generate at exactly --width x --height (multiples of 16) instead of the nearest
    /// aspect-ratio bin followed by resize + crop.
    #[arg(long = "no-resolution-binning")]
    no_resolution_binning: bool,
    /// Do not lower-case the prompts (diffusers lower-cases; the original PixArt code does not).
    #[arg(long = "keep-case")]
    keep_case: bool,
    /// Initial noise x_T from a safetensors file (tensor `latents`, (batch, 4, h/8, w/8)).
    #[arg(long, conflicts_with_all = ["image", "prompts_file"])]
    latents: Option<PathBuf>,
    /// Image to image: start from this picture (PNG, JPEG or WebP) instead of pure noise. It is
    /// resized to cover the generation size and centre-cropped; the default size is its own.
    #[arg(long)]
    image: Option<PathBuf>,
    /// With --image: how much of the schedule runs, in (0, 1] (the last steps x strength
    /// steps); low values keep more of the image. Default 0.8, with --mask 1.
    #[arg(long, requires = "image", allow_negative_numbers = true)]
    strength: Option<f64>,
    /// With --image: inpainting. A picture of the image's size, white where it is repainted and
    /// black where it is kept (binarised at half brightness).
    #[arg(long, requires = "image")]
    mask: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// cpu, cuda, cuda:N or auto (the first GPU of a CUDA build when there is one, else the CPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Live preview: while denoising, write the image the current denoised estimate decodes to
    /// (a PNG, the batch side by side; rewritten atomically each time, so an image viewer that
    /// reloads shows the progress). By default as often as keeps the previews within a quarter
    /// of the denoising time.
    #[arg(long)]
    preview: Option<PathBuf>,
    /// Two-pass upscaling ("hires fix"): each image made is then enlarged FACTOR times
    /// (1 < FACTOR ≤ 4; sides rounded to the model's multiple of 16 px) and run through image to
    /// image at that size with --upscale-strength: the composition stays, detail is added at
    /// the larger size. The upscaled images are written.
    #[arg(long, conflicts_with_all = ["image", "latents"])]
    upscale: Option<f64>,
    /// With --upscale: the share of the second pass's schedule that runs, in (0, 1] (default 0.5).
    #[arg(long = "upscale-strength", requires = "upscale")]
    upscale_strength: Option<f64>,
    /// With --upscale: the second pass's steps (default: those of the first; it runs
    /// int(steps x strength) of them).
    #[arg(long = "upscale-steps", requires = "upscale")]
    upscale_steps: Option<usize>,
    /// With --preview: after every N-th step instead (the VAE decodes each one).
    #[arg(long = "preview-every", requires = "preview")]
    preview_every: Option<usize>,
    /// ControlNet: the control picture (PNG, JPEG or WebP), one for every image, resized to the
    /// generation size. Needs --controlnet (or a controlnet/ folder beside the pipeline's
    /// components).
    #[arg(long)]
    control: Option<PathBuf>,
    /// With --control: multiplies the ControlNet's residuals (default 1.0; 0 runs without it).
    #[arg(long = "control-scale", requires = "control", allow_negative_numbers = true)]
    control_scale: Option<f64>,
    /// With --control: none (the picture is the control, e.g. an edge map), or canny[:LOW:HIGH]
    /// (Canny edges of the picture, thresholds on the gradient magnitude, default 100:200).
    #[arg(long = "control-preprocess", requires = "control")]
    control_preprocess: Option<String>,
}

/// `OUT.png`, `OUT-1.png`, ... for image `k`.
pub fn numbered(path: &Path, k: usize) -> PathBuf {
    if k == 0 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{k}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{k}"),
    };
    path.with_file_name(name)
}

/// How images are written, from the output's extension (case-insensitive): JPEG for `.jpg` and
/// `.jpeg` (the parameters in a COM segment), lossless WebP for `.webp` (in XMP), PNG for `.png`
/// or none (`-o /dev/stdout`); any other extension is a usage error rather than a PNG under a
/// misleading name.
fn image_format(path: &Path, jpeg_quality: u8) -> Result<ImageFormat> {
    if !(1..=100).contains(&jpeg_quality) {
        return Err(UsageError(format!("--jpeg-quality {jpeg_quality} must be between 1 and 100")).into());
    }
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
    match ext.as_deref() {
        None | Some("png") => Ok(ImageFormat::Png),
        Some("jpg" | "jpeg") => Ok(ImageFormat::Jpeg { quality: jpeg_quality }),
        Some("webp") => Ok(ImageFormat::Webp),
        Some(other) => Err(UsageError(format!(
            "{}: cannot write .{other} images; name the output .png, .jpg or .webp",
            path.display()
        ))
        .into()),
    }
}

/// `cpu`, `cuda:N`, ... for the messages.
fn device_name(dev: &candle_core::Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// `--image`, `--mask`: a PNG, JPEG or WebP file (usage errors name it).
fn read_image(path: &Path) -> Result<RgbImage> {
    if path.is_dir() {
        return Err(UsageError(format!("{}: is a folder, not an image", path.display())).into());
    }
    let bytes = std::fs::read(path).map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    RgbImage::decode(&bytes, &path.display().to_string()).map_err(usage)
}

/// `--latents`: tensor `latents` of a float dtype, every value finite (usage errors).
fn initial_latents(path: &Path) -> Result<candle_core::Tensor> {
    let inputs = read_inputs(path)?;
    let t = take(&inputs, path, "latents").map_err(|e| UsageError(e.to_string()))?;
    if !t.dtype().is_float() {
        return Err(UsageError(format!(
            "{}: tensor `latents` is {:?}; initial latents must be floats",
            path.display(),
            t.dtype()
        ))
        .into());
    }
    pixart_pipeline::ensure_finite(t, || format!("{}: the values of tensor `latents`", path.display()))
        .map_err(|e| UsageError(e.to_string()))?;
    Ok(t.clone())
}

/// `--from`: the settings of the image fill every flag not given.
fn apply_from(a: &mut GenerateArgs) -> Result<()> {
    let Some(path) = a.from.clone() else {
        return Ok(());
    };
    let what = path.display().to_string();
    if path.is_dir() {
        return Err(UsageError(format!("{what}: is a folder, not an image")).into());
    }
    let bytes = std::fs::read(&path).map_err(|e| UsageError(format!("{what}: {e}")))?;
    let text = read_parameters(&bytes, &what)
        .map_err(usage)?
        .ok_or_else(|| UsageError(format!("{what}: holds no generation parameters")))?;
    let p = Parameters::parse(&text).map_err(|e| UsageError(format!("{what}: {e}")))?;
    if a.prompt.is_empty() {
        a.prompt = vec![p.prompt.clone()];
    }
    a.negative_prompt = a.negative_prompt.take().or(Some(p.negative_prompt.clone()));
    a.steps = a.steps.or(p.steps);
    a.guidance = a.guidance.or(p.guidance);
    a.scheduler = a.scheduler.take().or(p.sampler.clone());
    a.seed = a.seed.or(p.seed.map(Seed::Fixed));
    a.width = a.width.or(p.width);
    a.height = a.height.or(p.height);
    a.dtype = a.dtype.take().or(p.dtype.clone());
    a.no_resolution_binning |= p.resolution_binning == Some(false);
    // The control settings: the control image's path, when it is still there.
    if a.control.is_none() {
        if let Some(c) = &p.control_image {
            if Path::new(c).is_file() {
                a.control = Some(PathBuf::from(c));
                a.control_scale = a.control_scale.or(p.control_scale);
                a.control_preprocess = a.control_preprocess.take().or(p.control_preprocess.clone());
                if a.model.controlnet.is_none() {
                    a.model.controlnet = p
                        .controlnet
                        .as_deref()
                        .filter(|m| Path::new(m).exists())
                        .map(PathBuf::from);
                }
            } else {
                eprintln!("note: {what} was made with the control image {c:?}, which is not here; give --control");
            }
        }
    }
    if a.image.is_none() && a.latents.is_none() {
        a.upscale = a.upscale.or(p.upscale);
        a.upscale_steps = a.upscale_steps.or(p.upscale_steps);
        a.upscale_strength = a.upscale_strength.or(p.upscale_strength);
    }
    if a.image.is_some() {
        a.strength = a.strength.or(p.strength);
    } else if let Some(s) = p.strength {
        let what_kind = if p.inpainting { "inpainting" } else { "image to image" };
        eprintln!("note: {what} was made by {what_kind} (strength {s}); give --image (and --mask) to do the same");
    }
    // Its model, when that names one here: the built-in model, a folder that exists, or a hub
    // id (owner/name); else the model given or the default one, with a note.
    if let Some(m) = p.model.as_deref().filter(|_| a.model.model.is_none()) {
        let hub_like = m.split('/').count() == 2 && !m.starts_with(['/', '.', '~']) && !Path::new(m).exists();
        if pixart_pipeline::is_builtin(m) || Path::new(m).exists() || hub_like {
            a.model.model = Some(PathBuf::from(m));
        } else {
            eprintln!("note: {what} was made with model {m:?}, which is not here; using the default model");
        }
    }
    eprintln!("settings from {what}");
    Ok(())
}

/// `--seed`: a number, or -1 for a random one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seed {
    Fixed(u64),
    Random,
}

fn parse_seed(s: &str) -> std::result::Result<Seed, String> {
    match s.trim() {
        "-1" => Ok(Seed::Random),
        t => t
            .parse::<u64>()
            .map(Seed::Fixed)
            .map_err(|_| format!("{t:?} is not a seed: give 0 to {} or -1 for a random one", u64::MAX)),
    }
}

pub fn run(mut a: GenerateArgs) -> Result<()> {
    apply_from(&mut a)?;
    // Parse and check everything the user typed before loading anything.
    let sampler = sampler(a.scheduler.as_deref())?;
    // A Cell: the memory check before loading may switch tiling on for every run.
    let vae_tiling = std::cell::Cell::new(VaeTiling::parse(&a.vae_tiling).map_err(usage)?);
    let dtype_name = a.dtype.clone().unwrap_or_else(|| "f32".to_string());
    let dt = dtype(&dtype_name)?;
    let dev = device(&a.device)?;
    let output = a.output.clone().unwrap_or_else(|| match a.output_type {
        OutputType::Image => PathBuf::from("out.png"),
        OutputType::Latent => PathBuf::from("out.safetensors"),
    });
    output_folder_exists(&output)?;
    // Temp files of an earlier run killed mid-write (a preview, an image) are tidied away.
    for p in std::iter::once(&output).chain(a.preview.as_ref()) {
        for stale in pixart_core::weights::remove_stale_temp_files(p.parent().unwrap_or(Path::new(""))) {
            eprintln!("removed {}, left by a process that was killed", stale.display());
        }
    }
    // Latents are a safetensors file: never under an image's name.
    let image_name = ["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"]
        .iter()
        .any(|e| has_extension(&output, e));
    if a.output_type == OutputType::Latent && image_name {
        return Err(UsageError(format!(
            "{}: --output-type latent writes safetensors, not an image; name the output .safetensors",
            output.display()
        ))
        .into());
    }
    let previews = match (&a.preview, a.preview_every) {
        (None, _) => Previews::Off,
        (Some(_), Some(0)) => return Err(UsageError("--preview-every must be at least 1".into()).into()),
        (Some(_), Some(n)) => Previews::Every(n),
        (Some(_), None) => Previews::Auto,
    };
    if let Some(p) = &a.preview {
        let ext = p.extension().map(|e| e.to_string_lossy().to_lowercase());
        if !matches!(ext.as_deref(), None | Some("png")) {
            return Err(UsageError(format!("{}: previews are PNG; name the file .png", p.display())).into());
        }
        output_folder_exists(p)?;
        pixart_core::weights::check_output_path(p).map_err(usage)?;
    }
    let format = match a.output_type {
        OutputType::Image => Some(image_format(&output, a.jpeg_quality)?),
        OutputType::Latent => None,
    };
    // --upscale, --upscale-strength and --upscale-steps are checked with the request.
    let upscale = a.upscale.map(|factor| Upscale {
        factor,
        strength: a.upscale_strength,
        steps: a.upscale_steps,
    });
    let latents = match &a.latents {
        Some(p) => Some(initial_latents(p)?),
        None => None,
    };
    let init_image = match &a.image {
        Some(p) => Some(InitImage {
            image: read_image(p)?,
            strength: a.strength.unwrap_or(if a.mask.is_some() {
                DEFAULT_INPAINT_STRENGTH
            } else {
                DEFAULT_STRENGTH
            }),
            mask: a.mask.as_deref().map(read_image).transpose()?,
        }),
        None => None,
    };
    // Named in the parameters as the server names it: `builtin`, a folder's name or a hub id.
    let model_label = a.model.label();
    let control = match &a.control {
        Some(p) => {
            let spec = a.control_preprocess.as_deref().unwrap_or("none");
            let preprocess = pixart_pipeline::ControlPreprocess::parse(spec)
                .map_err(|m| UsageError(format!("--control-preprocess {m}")))?;
            Some(pixart_pipeline::ControlImage {
                image: preprocess.apply(read_image(p)?),
                scale: a.control_scale.unwrap_or(1.0),
                source: Some(p.display().to_string()),
                preprocess: Some(spec.to_string()).filter(|s| s != "none"),
                controlnet: a.model.controlnet.as_ref().map(|c| c.display().to_string()),
            })
        }
        None => None,
    };
    let ModelChoice {
        model,
        resolved,
        options,
    } = a.model.resolve(dev, dt)?;
    if control.is_some() && resolved.controlnet.is_none() {
        return Err(UsageError(
            "--control needs --controlnet DIR|ID (the model has no controlnet/ folder beside its components)".into(),
        )
        .into());
    }
    let seed = match a.seed {
        Some(Seed::Fixed(s)) => s,
        Some(Seed::Random) | None => random_seed(),
    };

    let cancel = cancel_on_ctrl_c("stopping after the current step (Ctrl-C again to quit now)")?;

    let output_kind = match a.output_type {
        OutputType::Image => OutputKind::Image,
        OutputType::Latent => OutputKind::Latent,
    };
    // The runs: every --prompt as one batch, or each prompt of --prompts-file on its own (the
    // model loaded once, T5 kept between runs). Run r starts at image `first` of the whole, so
    // its seed is SEED + first and image k of the whole uses SEED + k either way.
    let groups: Vec<Vec<String>> = match &a.prompts_file {
        Some(f) => read_prompts(f)?.into_iter().map(|p| vec![p]).collect(),
        None => vec![a.prompt.clone()],
    };
    let many = groups.len() > 1;
    let request_for = |prompts: Vec<String>, seed: u64| GenerationRequest {
        prompts,
        negative_prompt: a.negative_prompt.clone().unwrap_or_default(),
        width: a.width,
        height: a.height,
        steps: a.steps,
        guidance: a.guidance,
        seed,
        images_per_prompt: a.batch,
        sampler,
        resolution_binning: !a.no_resolution_binning,
        keep_case: a.keep_case,
        vae_tiling: vae_tiling.get(),
        output: output_kind,
        latents: latents.clone(),
        init_image: init_image.clone(),
        previews,
        upscale,
        control: control.clone(),
    };
    // Validate against the config files first (the KV compression as it will be loaded), so
    // that a bad request, its upscaling included, fails before loading.
    match resolved.geometry_with(options.kv_compress.as_ref()) {
        Ok(geometry) => {
            // ... and against the memory the process may have (weights, the loop, the decode).
            let memory = MemoryModel::from_paths(&resolved, &options)?;
            let allowance = pixart_core::mem::allowance();
            for g in &groups {
                let mut r = request_for(g.clone(), seed).validate(&geometry).map_err(usage)?;
                if let Some(note) = memory.check(&mut r, allowance).map_err(usage)? {
                    eprintln!("note: {note}");
                    vae_tiling.set(r.vae_tiling);
                }
            }
        }
        // --kv-compress naming layers the model lacks.
        Err(e @ pixart_core::Error::InvalidRequest { .. }) => return Err(usage(e)),
        // No config files to check against (an original checkpoint): checked once loaded.
        Err(_) => {}
    }
    // Every output's path, so that none fails after the work (a folder named out-1.png).
    let outputs = match output_kind {
        OutputKind::Image => groups.iter().map(|g| g.len().saturating_mul(a.batch)).sum::<usize>(),
        OutputKind::Latent => groups.len(),
    };
    for k in 1..outputs.min(100_000) {
        pixart_core::weights::check_output_path(&numbered(&output, k)).map_err(usage)?;
    }

    let start = std::time::Instant::now();
    eprintln!("loading {} on {}", model.display(), device_name(&options.device));
    let options = pixart_pipeline::ComponentOptions {
        keep_text_encoder: many,
        ..options
    };
    let components = PipelineComponents::load_resolved(resolved, &options).map_err(usage)?;
    let load_seconds = start.elapsed().as_secs_f64();
    let runs = groups.len();
    let mut first = 0usize;
    for (r, prompts) in groups.into_iter().enumerate() {
        if many {
            eprintln!("prompt {}/{runs}: {}", r + 1, prompts[0]);
        }
        let mut request = request_for(prompts, seed.wrapping_add(first as u64))
            .validate(&components.geometry())
            .map_err(usage)?;
        // Checked again with the weights loaded (an original checkpoint is checked only here).
        if let Some(note) = MemoryModel::from_components(&components)?
            .check(&mut request, pixart_core::mem::allowance())
            .map_err(usage)?
        {
            eprintln!("note: {note}");
        }
        let written = if many {
            format!(
                " of prompt {}/{runs} ({first} image(s) of the earlier prompts were written)",
                r + 1
            )
        } else {
            String::new()
        };
        // With --upscale each image goes through its second pass too; the parameters keep the
        // first pass's settings and name the second's, so that --from repeats both.
        let out = run_one(&a, &components, &request, &cancel, &written)?;
        match output_kind {
            OutputKind::Latent => {
                let path = numbered(&output, r);
                let map = std::collections::HashMap::from([("latents".to_string(), out.latents.clone())]);
                pixart_core::weights::save_safetensors(&map, &path)?;
                eprintln!("wrote {}", path.display());
            }
            OutputKind::Image => {
                let sampler_name = sampler_name(&components, sampler);
                for (k, img) in out.images.iter().enumerate() {
                    let params = parameters_text(&request, k, img, &sampler_name, &model_label, &dtype_name);
                    let path = numbered(&output, first + k);
                    let bytes = format.unwrap_or(ImageFormat::Png).encode(img, &params)?;
                    pixart_core::weights::write_atomic(&path, &bytes)?;
                    eprintln!("wrote {}", path.display());
                }
            }
        }
        first += request.batch;
        summary(&out, load_seconds, start);
    }
    Ok(())
}

/// `--prompts-file`: one prompt per line; blank lines and lines starting with `#` are skipped.
fn read_prompts(path: &Path) -> Result<Vec<String>> {
    if path.is_dir() {
        return Err(UsageError(format!("{}: is a folder, not a prompts file", path.display())).into());
    }
    let bytes = std::fs::read(path).map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    let text = String::from_utf8(bytes).map_err(|e| UsageError(format!("{}: not UTF-8 text ({e})", path.display())))?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if prompts.is_empty() {
        return Err(UsageError(format!("{}: holds no prompt (one per line)", path.display())).into());
    }
    Ok(prompts)
}

/// One generation of the run loop (with `--upscale`, each image's second pass too), with its
/// progress display; a Ctrl-C stop is [`Cancelled`] (`written` says what earlier runs left).
fn run_one(
    a: &GenerateArgs,
    components: &PipelineComponents,
    request: &ValidatedRequest,
    cancel: &std::sync::atomic::AtomicBool,
    written: &str,
) -> Result<Output> {
    let seed = request.seed;
    let sampler_name = sampler_name(components, request.sampler);
    let steps = match &request.init_image {
        Some(init) => format!(
            "{} of {} steps ({}, strength {})",
            request.steps_to_run(),
            request.steps,
            if init.mask.is_some() {
                "inpainting"
            } else {
                "image to image"
            },
            init.strength
        ),
        None => format!("{} steps", request.steps),
    };
    eprintln!(
        "{} image(s) of {}x{} (generated at {}x{}), {steps}, guidance {}, seed {seed}, sampler {sampler_name}",
        request.batch, request.out_width, request.out_height, request.gen_width, request.gen_height, request.guidance
    );

    let template = super::STEP_BAR;
    let (bar, tty) = progress_bar(request.steps_to_run(), template);
    // The pass that runs: its bar and its steps (a second pass of --upscale gets new ones).
    let bar = std::cell::RefCell::new(bar);
    let pass_steps = std::cell::Cell::new(request.steps_to_run());
    let mut on_progress = |p: Progress| match p {
        Progress::Stage(s) if !tty => eprintln!("{}", s.name()),
        Progress::Step { done, total, seconds } => {
            let bar = bar.borrow();
            if tty {
                bar.set_position(done as u64);
                bar.set_message(format!("{seconds:.2} s/step"));
                if done == total {
                    bar.finish();
                }
            } else {
                eprintln!("step {done}/{total}: {seconds:.3} s");
            }
        }
        Progress::Upscale {
            image,
            of,
            from,
            to,
            seed,
            steps,
            steps_to_run,
        } => {
            let strength = request.upscale.map_or(0.0, |u| u.strength);
            eprintln!("upscale {}/{of}: {}x{} to {}x{}", image + 1, from.0, from.1, to.0, to.1);
            eprintln!(
                "1 image(s) of {0}x{1} (generated at {0}x{1}), {steps_to_run} of {steps} steps (image to image, strength {strength}), guidance {2}, seed {seed}, sampler {sampler_name}",
                to.0, to.1, request.guidance
            );
            pass_steps.set(steps_to_run);
            *bar.borrow_mut() = progress_bar(steps_to_run, template).0;
        }
        Progress::Preview { done, total, images } => {
            if let Some(path) = &a.preview {
                let bar = bar.borrow();
                let written = pixart_pipeline::encode_png(&RgbImage::side_by_side(&images), "")
                    .map_err(anyhow::Error::from)
                    .and_then(|png| Ok(pixart_core::weights::write_atomic(path, &png)?));
                // A preview that cannot be written does not stop the generation.
                match written {
                    Err(e) => bar.suspend(|| eprintln!("warning: preview after step {done} not written: {e}")),
                    Ok(()) if tty => bar.set_message(format!("preview at step {done}")),
                    Ok(()) => eprintln!("preview after step {done}/{total}: {}", path.display()),
                }
            }
        }
        Progress::Truncated {
            prompt,
            negative,
            dropped,
            limit,
        } => {
            let which = if negative {
                "the negative prompt".to_string()
            } else {
                format!("prompt {}", prompt + 1)
            };
            bar.borrow().suspend(|| {
                eprintln!("warning: {which} is longer than {limit} tokens; its last {dropped} tokens were dropped")
            });
        }
        _ => {}
    };
    let mut noise = SeededNoise::new(seed);
    let generated = generate(components, request, &mut noise, &mut on_progress, cancel).map_err(usage)?;
    match generated {
        Generated::Finished(o) => Ok(o),
        Generated::Cancelled { completed_steps } => {
            bar.borrow().abandon();
            Err(Cancelled(format!(
                "cancelled after {completed_steps} of {} steps; nothing written{written}",
                pass_steps.get()
            ))
            .into())
        }
    }
}

/// The time per stage and the peak memory of one run.
fn summary(out: &Output, load_seconds: f64, start: std::time::Instant) {
    let mut parts = vec![format!("load {load_seconds:.2} s")];
    parts.extend(out.timings.stages.iter().map(|(s, t)| format!("{} {t:.2} s", s.name())));
    let n = out.timings.steps.len().max(1) as f64;
    let per_step = out.timings.steps.iter().sum::<f64>() / n;
    let rss = pixart_core::mem::peak_rss_bytes()
        .map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64))
        .unwrap_or_else(|| "n/a".into());
    eprintln!(
        "time: {} ({per_step:.3} s/step); total {:.2} s; peak RSS {rss}",
        parts.join(", "),
        start.elapsed().as_secs_f64()
    );
}

/// Whether `path` ends in `.ext` (any case).
fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_minus_one_is_random_and_other_negatives_are_refused() {
        assert_eq!(parse_seed("-1"), Ok(Seed::Random));
        assert_eq!(parse_seed("0"), Ok(Seed::Fixed(0)));
        assert_eq!(parse_seed(&u64::MAX.to_string()), Ok(Seed::Fixed(u64::MAX)));
        for bad in ["-2", "abc", "1.5", "18446744073709551616", ""] {
            assert!(parse_seed(bad).is_err(), "{bad}");
        }
    }
}
