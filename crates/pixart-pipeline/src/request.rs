//! What to generate: [`GenerationRequest`] as a caller fills it in, and [`ValidatedRequest`],
//! the only form [`crate::generate`] accepts. Every check on user input happens in
//! [`GenerationRequest::validate`], before any compute.
use candle_core::Tensor;
use pixart_core::{Error, Field, Result};
use pixart_schedulers::{default_guidance, default_steps, from_config, SamplerKind, Scheduler};
use pixart_vae::{TileConfig, Tiling};

use crate::aspect_bins;
use crate::geometry::ModelGeometry;
use crate::image::RgbImage;

/// Largest accepted image side in pixels.
pub const MAX_SIDE: usize = 8192;
/// The most images one request makes (prompts × images per prompt); they are denoised as one
/// batch.
pub const MAX_IMAGES: usize = 64;
/// The most pixels one request makes, all images together (one 8192² image, or 64 of
/// 1024²): more cannot be held at once.
pub const MAX_PIXELS: usize = MAX_SIDE * MAX_SIDE;

/// Tokens per prompt (PixArt-Σ's `max_sequence_length`).
pub const MAX_SEQUENCE_LENGTH: usize = 300;

/// The most denoising steps a request runs.
pub const MAX_STEPS: usize = 1000;
/// The largest guidance scale (CFG at 50 is far past anything useful; more is a typo).
pub const MAX_GUIDANCE: f64 = 50.0;

/// The largest two-pass upscaling factor.
pub const MAX_UPSCALE: f64 = 4.0;
/// The second pass's strength by default: half its schedule runs.
pub const DEFAULT_UPSCALE_STRENGTH: f64 = 0.5;

/// Whether the VAE decodes in tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VaeTiling {
    /// Tile only large latents ([`Tiling::Auto`]).
    #[default]
    Auto,
    /// Always tile (default tile size).
    On,
    /// Never tile.
    Off,
}

impl VaeTiling {
    /// Parses `auto`, `on` or `off`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err(Error::InvalidInput(format!(
                "unknown VAE tiling `{s}` (expected auto, on or off)"
            ))),
        }
    }

    /// The VAE crate's setting.
    pub fn tiling(self) -> Tiling {
        match self {
            Self::Auto => Tiling::Auto,
            Self::On => Tiling::On(TileConfig::default()),
            Self::Off => Tiling::Off,
        }
    }
}

/// The input of image-to-image generation.
#[derive(Debug, Clone, PartialEq)]
pub struct InitImage {
    /// The picture to start from (resized to cover the generation size, centre-cropped).
    pub image: RgbImage,
    /// How much of the noise schedule runs, in (0, 1]: the last `int(steps · strength)` steps
    /// from the image noised to their first level (diffusers' img2img `strength`; 1 keeps
    /// nothing of the image but its influence through the noised start).
    pub strength: f64,
    /// Inpainting: white (luma ≥ 0.5) where the picture is repainted, black where it is kept;
    /// the image's size.
    pub mask: Option<RgbImage>,
}

/// The ControlNet's input: a control picture (already preprocessed, e.g. Canny edges) and the
/// scale of the ControlNet's residuals.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlImage {
    /// Resized to the generation size as the reference pipeline does (stretched, no crop).
    pub image: RgbImage,
    /// Multiplies each ControlNet block's `after_proj` output, in 0..=[`MAX_CONTROL_SCALE`]
    /// (0: the ControlNet is skipped).
    pub scale: f64,
    /// For the image's parameters ([`crate::parameters_text`]): the control picture's path, the
    /// preprocessing applied to it (`canny:100:200`) and the ControlNet's name, where known.
    pub source: Option<String>,
    pub preprocess: Option<String>,
    pub controlnet: Option<String>,
}

/// The largest ControlNet scale.
pub const MAX_CONTROL_SCALE: f64 = 10.0;

/// diffusers' image-to-image default `strength`.
pub const DEFAULT_STRENGTH: f64 = 0.8;
/// The default `strength` with a mask: the masked part is drawn anew (diffusers' SD
/// inpainting default).
pub const DEFAULT_INPAINT_STRENGTH: f64 = 1.0;

/// Two-pass upscaling ("hires fix") as asked for: each image of the first pass is enlarged
/// `factor` times and run through image to image at that size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Upscale {
    /// In (1, [`MAX_UPSCALE`]]; the sides are rounded to the model's pixel multiple.
    pub factor: f64,
    /// The second pass's strength, in (0, 1]; `None`: [`DEFAULT_UPSCALE_STRENGTH`].
    pub strength: Option<f64>,
    /// The second pass's steps (it runs `int(steps · strength)` of them); `None`: those of the
    /// first pass.
    pub steps: Option<usize>,
}

/// [`Upscale`] checked, with its defaults resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpscalePlan {
    pub factor: f64,
    pub strength: f64,
    pub steps: usize,
    /// The size of the upscaled images, pixels.
    pub width: usize,
    pub height: usize,
}

/// `(width, height)` times `factor`, each rounded to a multiple of `multiple` (at least one).
pub fn upscaled_size(width: usize, height: usize, factor: f64, multiple: usize) -> (usize, usize) {
    let side = |s: usize| ((s as f64 * factor / multiple as f64).round() as usize).max(1) * multiple;
    (side(width), side(height))
}

/// Live previews: the image the denoised estimate x̂0 of a step decodes to, sent as
/// [`crate::Progress::Preview`] while the loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Previews {
    /// None.
    #[default]
    Off,
    /// After every `n`-th step (the last step included when it is one of them).
    Every(usize),
    /// As often as keeps the previews' decoding within a quarter of the denoising time, the
    /// first after step 1, none after the last step (the final image comes next).
    Auto,
}

/// What [`crate::generate`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputKind {
    /// Decoded RGB images.
    #[default]
    Image,
    /// The final latents, undecoded (diffusers' `output_type="latent"`).
    Latent,
}

/// A generation request as given; [`Self::validate`] turns it into a [`ValidatedRequest`].
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// One or more prompts.
    pub prompts: Vec<String>,
    /// The negative prompt (diffusers' default: empty), used for every image when CFG is on.
    pub negative_prompt: String,
    /// Requested size in pixels; `None`: the init image's size, else `sample_size · vae factor`
    /// (1024 for the 1024 model).
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Denoising steps, 1 to [`MAX_STEPS`]; `None`: the default of the sampler that runs
    /// (`default_steps`: 20, 25 for sa-solver, 100 for iddpm, 4 for lcm).
    pub steps: Option<usize>,
    /// CFG scale in 0..=[`MAX_GUIDANCE`]; CFG is skipped when it is ≤ 1 (as diffusers does).
    /// `None`: the default of the sampler that runs (4.5; 0 for lcm).
    pub guidance: Option<f64>,
    /// Image `k` of the batch draws its noise from seed `seed + k`.
    pub seed: u64,
    /// Images per prompt.
    pub images_per_prompt: usize,
    /// Sampler; `None`: the one `scheduler_config.json` names.
    pub sampler: Option<SamplerKind>,
    /// Generate at the nearest aspect-ratio bin, then resize + crop to the requested size
    /// (models whose sample_size has no bin table generate at the requested size).
    pub resolution_binning: bool,
    /// Skip the lower-casing of prompts (the strip still happens).
    pub keep_case: bool,
    pub vae_tiling: VaeTiling,
    pub output: OutputKind,
    /// Initial latents x_T (batch, in_channels, h/f, w/f) in place of seeded noise (they are
    /// still multiplied by the sampler's `init_noise_sigma`).
    pub latents: Option<Tensor>,
    /// Image-to-image: start from this picture instead of pure noise.
    pub init_image: Option<InitImage>,
    /// Live previews while denoising.
    pub previews: Previews,
    /// Two-pass upscaling of every image made.
    pub upscale: Option<Upscale>,
    /// ControlNet: one control picture for every image (needs a ControlNet with the model).
    pub control: Option<ControlImage>,
}

impl Default for GenerationRequest {
    /// The diffusers `PixArtSigmaPipeline.__call__` defaults (binning; steps and guidance those
    /// of the sampler that runs).
    fn default() -> Self {
        Self {
            prompts: Vec::new(),
            negative_prompt: String::new(),
            width: None,
            height: None,
            steps: None,
            guidance: None,
            seed: 0,
            images_per_prompt: 1,
            sampler: None,
            resolution_binning: true,
            keep_case: false,
            vae_tiling: VaeTiling::Auto,
            output: OutputKind::Image,
            latents: None,
            init_image: None,
            previews: Previews::Off,
            upscale: None,
            control: None,
        }
    }
}

/// A checked request with every size resolved.
#[derive(Debug, Clone)]
pub struct ValidatedRequest {
    pub prompts: Vec<String>,
    pub negative_prompt: String,
    pub images_per_prompt: usize,
    /// Total images: `prompts.len() · images_per_prompt`.
    pub batch: usize,
    /// Size generated at (the bin when binning), pixels.
    pub gen_height: usize,
    pub gen_width: usize,
    /// Size returned, pixels.
    pub out_height: usize,
    pub out_width: usize,
    pub steps: usize,
    pub guidance: f64,
    /// Whether CFG runs (`guidance > 1`).
    pub cfg: bool,
    pub seed: u64,
    pub sampler: Option<SamplerKind>,
    /// Whether the size was binned (asked for, and the model has a bin table).
    pub resolution_binning: bool,
    pub keep_case: bool,
    pub vae_tiling: VaeTiling,
    pub output: OutputKind,
    pub latents: Option<Tensor>,
    pub init_image: Option<InitImage>,
    pub previews: Previews,
    /// The sampler step the loop starts at: `steps − int(steps · strength)` for image to image,
    /// else 0.
    pub start_step: usize,
    /// Latent shape (batch, channels, h, w).
    pub latent_shape: [usize; 4],
    /// Two-pass upscaling ([`crate::generate`] runs the second passes).
    pub upscale: Option<UpscalePlan>,
    /// ControlNet input (checked: the model has a ControlNet).
    pub control: Option<ControlImage>,
}

impl ValidatedRequest {
    /// The denoising steps the loop runs: all of them, or the last `steps · strength` for image
    /// to image.
    pub fn steps_to_run(&self) -> usize {
        self.steps - self.start_step
    }
}

fn invalid(field: Field, msg: impl Into<String>) -> Error {
    Error::request(field, msg)
}

impl GenerationRequest {
    /// Checks the request against the model (from [`crate::PipelineComponents::geometry`], or,
    /// before loading, [`crate::ResolvedPaths::geometry`]) and resolves its defaults and sizes.
    /// Every failure is an [`Error::InvalidRequest`] naming the field at fault. An empty prompt
    /// is allowed, for the CLI and the server alike: unconditional generation, as in diffusers.
    pub fn validate(self, geometry: &ModelGeometry) -> Result<ValidatedRequest> {
        if self.prompts.is_empty() {
            return Err(invalid(Field::Prompt, "is missing: give at least one"));
        }
        // Steps and guidance default to those of the sampler that runs: the requested one,
        // else the one the model's scheduler_config.json names (an LCM model: 4 steps, no CFG).
        let (default_steps, default_guidance) = request_defaults(self.sampler, geometry);
        let steps = self.steps.unwrap_or(default_steps);
        check_steps(Field::Steps, steps)?;
        let guidance = self.guidance.unwrap_or(default_guidance);
        if !guidance.is_finite() {
            return Err(invalid(
                Field::Guidance,
                format!("must be a finite number, got {guidance}"),
            ));
        }
        if !(0.0..=MAX_GUIDANCE).contains(&guidance) {
            return Err(invalid(
                Field::Guidance,
                format!("must be between 0 and {MAX_GUIDANCE}, got {guidance}"),
            ));
        }
        if self.images_per_prompt == 0 {
            return Err(invalid(Field::Batch, "must be at least 1"));
        }
        let batch = self
            .prompts
            .len()
            .checked_mul(self.images_per_prompt)
            .filter(|n| *n <= MAX_IMAGES)
            .ok_or_else(|| {
                invalid(
                    Field::Batch,
                    format!(
                        "{} × {} prompt(s) is more than {MAX_IMAGES} images in one run",
                        self.images_per_prompt,
                        self.prompts.len()
                    ),
                )
            })?;
        if self.previews == Previews::Every(0) {
            return Err(invalid(Field::Previews, "every 0 steps: give at least 1"));
        }
        if let Some(control) = &self.control {
            if !geometry.controlnet {
                return Err(invalid(
                    Field::Control,
                    "needs a ControlNet: none was given and the model has no controlnet/ folder",
                ));
            }
            control
                .image
                .check()
                .map_err(|e| invalid(Field::Control, format!("is unusable: {e}")))?;
            let s = control.scale;
            if !(s.is_finite() && (0.0..=MAX_CONTROL_SCALE).contains(&s)) {
                return Err(invalid(
                    Field::ControlScale,
                    format!("must be between 0 and {MAX_CONTROL_SCALE}, got {s}"),
                ));
            }
        }
        let mut start_step = 0;
        if let Some(init) = &self.init_image {
            let s = init.strength;
            if !(s.is_finite() && s > 0.0 && s <= 1.0) {
                return Err(invalid(Field::Strength, format!("must be in (0, 1], got {s}")));
            }
            // diffusers' `get_timesteps`: int(num_inference_steps · strength) steps run.
            let run = ((steps as f64 * s) as usize).min(steps);
            if run == 0 {
                return Err(invalid(
                    Field::Strength,
                    format!("{s} of {steps} steps leaves no step to run (steps x strength must be at least 1)"),
                ));
            }
            if self.latents.is_some() {
                return Err(invalid(Field::Latents, "cannot go with an init image"));
            }
            init.image
                .check()
                .map_err(|e| invalid(Field::Image, format!("is unusable: {e}")))?;
            if let Some(m) = &init.mask {
                m.check()
                    .map_err(|e| invalid(Field::Mask, format!("is unusable: {e}")))?;
                if (m.width, m.height) != (init.image.width, init.image.height) {
                    return Err(invalid(
                        Field::Mask,
                        format!(
                            "does not fit: the mask is {}x{} but the image is {}x{}; they must be the same size",
                            m.width, m.height, init.image.width, init.image.height
                        ),
                    ));
                }
            }
            start_step = steps - run;
        }
        let g = geometry;
        let f = g.vae_factor;
        let multiple = g.pixel_multiple();
        let default_side = g.sample_size * f;
        let (default_w, default_h) = match &self.init_image {
            Some(init) => (init.image.width, init.image.height),
            None => (default_side, default_side),
        };
        let out_height = self.height.unwrap_or(default_h);
        let out_width = self.width.unwrap_or(default_w);
        for (field, v) in [(Field::Height, out_height), (Field::Width, out_width)] {
            if v == 0 || v > MAX_SIDE {
                return Err(invalid(field, format!("{v} must be between 1 and {MAX_SIDE}")));
            }
        }
        // Binning needs diffusers' table for this sample_size (32, 64, 128 or 256); a model
        // without one (the built-in 16) generates at the requested size.
        let table = if self.resolution_binning {
            aspect_bins::table_for_sample_size(g.sample_size)
        } else {
            None
        };
        let binned = table.is_some();
        let (gen_height, gen_width) = if let Some(table) = table {
            aspect_bins::classify(out_height, out_width, table).map_err(|e| invalid(Field::Size, e.to_string()))?
        } else {
            // The size of the start image, when no --width/--height was given: its fault.
            let (field, what) = match &self.init_image {
                Some(_) if self.width.is_none() && self.height.is_none() => (Field::Image, "the start image is "),
                _ => (Field::Size, ""),
            };
            if out_height < multiple || out_width < multiple {
                return Err(invalid(
                    field,
                    format!(
                        "{what}{out_width}x{out_height}: smaller than the smallest image this model makes ({multiple}x{multiple} px)"
                    ),
                ));
            }
            if !out_height.is_multiple_of(multiple) || !out_width.is_multiple_of(multiple) {
                let why = if self.resolution_binning {
                    format!("this model (sample_size {}) has no resolution bins, so ", g.sample_size)
                } else {
                    "with resolution binning off, ".to_string()
                };
                return Err(invalid(
                    field,
                    format!("{what}{out_width}x{out_height}: {why}width and height must be multiples of {multiple}"),
                ));
            }
            (out_height, out_width)
        };
        let pixels = batch * gen_height.max(out_height) * gen_width.max(out_width);
        if pixels > MAX_PIXELS {
            return Err(invalid(
                Field::Batch,
                format!(
                    "{batch} image(s) of {out_width}x{out_height} is more than one run makes ({MAX_PIXELS} pixels in all, e.g. 64 images of 1024x1024)"
                ),
            ));
        }
        let latent_shape = [batch, g.in_channels, gen_height / f, gen_width / f];
        if let Some(l) = &self.latents {
            if l.dims() != latent_shape {
                return Err(invalid(
                    Field::Latents,
                    format!(
                        "have shape {:?}; the initial latents of this request have shape {:?} (batch, channels, {}/{f}, {}/{f})",
                        l.dims(),
                        latent_shape,
                        gen_height,
                        gen_width
                    ),
                ));
            }
        }
        check_model_fit(geometry, self.sampler, steps, gen_width, gen_height)?;
        let upscale = match self.upscale {
            None => None,
            Some(u) => Some(check_upscale(u, steps, &self)?),
        };
        let mut validated = ValidatedRequest {
            prompts: self.prompts,
            negative_prompt: self.negative_prompt,
            images_per_prompt: self.images_per_prompt,
            batch,
            gen_height,
            gen_width,
            out_height,
            out_width,
            steps,
            guidance,
            cfg: guidance > 1.0,
            seed: self.seed,
            sampler: self.sampler,
            resolution_binning: binned,
            keep_case: self.keep_case,
            vae_tiling: self.vae_tiling,
            output: self.output,
            latents: self.latents,
            init_image: self.init_image,
            previews: self.previews,
            start_step,
            latent_shape,
            upscale,
            control: self.control,
        };
        // The second pass must be runnable too: checked now on a stand-in of the first pass's
        // size, so that it cannot fail after the first pass's work.
        if upscale.is_some() {
            let stand_in = RgbImage::filled(out_width, out_height, [0; 3]);
            let second = validated.upscale_pass(0, stand_in, geometry)?;
            if let Some(plan) = &mut validated.upscale {
                (plan.width, plan.height) = (second.out_width, second.out_height);
            }
        }
        Ok(validated)
    }
}

/// The steps and guidance of a request that gives neither: those of the sampler that runs,
/// `sampler` or else the one the model's scheduler_config.json names (an LCM model: 4 steps, no
/// CFG; 20 and 4.5 when neither is known).
pub fn request_defaults(sampler: Option<SamplerKind>, geometry: &ModelGeometry) -> (usize, f64) {
    let runs = sampler.or_else(|| geometry.model_sampler());
    (default_steps(runs), default_guidance(runs))
}

/// `steps` of `field` in 1..=[`MAX_STEPS`].
fn check_steps(field: Field, steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(invalid(field, "must be at least 1"));
    }
    if steps > MAX_STEPS {
        return Err(invalid(field, format!("{steps} is more than {MAX_STEPS}")));
    }
    Ok(())
}

/// The checks that need the model beyond its sizes: the sampler can be built from the model's
/// scheduler config and run `steps` steps, it gets the variance it needs, and the token grid
/// holds one window of the KV compression. [`crate::generate`] repeats them, for a request
/// validated against other components.
pub(crate) fn check_model_fit(
    g: &ModelGeometry,
    sampler: Option<SamplerKind>,
    steps: usize,
    gen_width: usize,
    gen_height: usize,
) -> Result<()> {
    if let Some(r) = g.kv_ratio {
        let step = g.pixel_multiple();
        let (gh, gw) = (gen_height / step, gen_width / step);
        if gh.min(gw) < r {
            return Err(invalid(
                Field::Size,
                format!(
                    "{gen_width}x{gen_height} has {gw}x{gh} tokens, fewer than the model's KV compression with ratio {r} needs ({r}x{r})"
                ),
            ));
        }
    }
    let mut scheduler = match from_config(&g.scheduler, sampler) {
        Ok(s) => s,
        // The model's own sampler that cannot be built is its config file's fault, reported
        // against the file when the model is loaded.
        Err(_) if sampler.is_none() && g.scheduler.class().is_some() => return Ok(()),
        Err(e) => return Err(invalid(Field::Sampler, format!("cannot run: {e}"))),
    };
    scheduler
        .set_timesteps(steps)
        .map_err(|e| invalid(Field::Steps, format!("{steps} cannot run: {e}")))?;
    if scheduler.model_variance() && g.out_channels != 2 * g.in_channels {
        return Err(invalid(
            Field::Sampler,
            format!(
                "{0} cannot run: sampler {0} uses the variance the transformer predicts, but this transformer has out_channels {1} (a learned-sigma model has 2 x in_channels = {2}); choose another sampler",
                scheduler.kind(),
                g.out_channels,
                2 * g.in_channels
            ),
        ));
    }
    Ok(())
}

/// [`Upscale`] checked against the first pass, defaults resolved.
fn check_upscale(u: Upscale, steps: usize, r: &GenerationRequest) -> Result<UpscalePlan> {
    let f = u.factor;
    if !(f.is_finite() && f > 1.0 && f <= MAX_UPSCALE) {
        return Err(invalid(
            Field::Upscale,
            format!("{f} must be above 1 and at most {MAX_UPSCALE}"),
        ));
    }
    if r.output == OutputKind::Latent {
        return Err(invalid(
            Field::Output,
            "latent cannot go with upscaling, which makes images",
        ));
    }
    if r.init_image.is_some() || r.latents.is_some() {
        return Err(invalid(
            Field::Upscale,
            "upscales generated images; it cannot go with an init image or initial latents",
        ));
    }
    let strength = u.strength.unwrap_or(DEFAULT_UPSCALE_STRENGTH);
    if !(strength.is_finite() && strength > 0.0 && strength <= 1.0) {
        return Err(invalid(
            Field::UpscaleStrength,
            format!("must be in (0, 1], got {strength}"),
        ));
    }
    let steps = u.steps.unwrap_or(steps);
    check_steps(Field::UpscaleSteps, steps)?;
    Ok(UpscalePlan {
        factor: f,
        strength,
        steps,
        // Set once the second pass is validated.
        width: 0,
        height: 0,
    })
}

impl ValidatedRequest {
    /// The second pass of two-pass upscaling for image `k` of this (first-pass) request, made
    /// as `image`: image to image at the enlarged size exactly (no binning), with image k's
    /// prompt and seed (`seed + k`) and the upscaling's strength and steps. Errors name
    /// `upscale` (the factor makes a second pass that cannot run) unless they are about the
    /// second pass's own strength or steps.
    pub fn upscale_pass(&self, k: usize, image: RgbImage, geometry: &ModelGeometry) -> Result<ValidatedRequest> {
        let Some(plan) = self.upscale else {
            return Err(invalid(Field::Upscale, "is not set on this request"));
        };
        let (w, h) = upscaled_size(image.width, image.height, plan.factor, geometry.pixel_multiple());
        let prompt = self
            .prompts
            .get(k / self.images_per_prompt.max(1))
            .cloned()
            .unwrap_or_default();
        GenerationRequest {
            prompts: vec![prompt],
            negative_prompt: self.negative_prompt.clone(),
            width: Some(w),
            height: Some(h),
            steps: Some(plan.steps),
            guidance: Some(self.guidance),
            seed: self.seed.wrapping_add(k as u64),
            images_per_prompt: 1,
            sampler: self.sampler,
            resolution_binning: false,
            keep_case: self.keep_case,
            vae_tiling: self.vae_tiling,
            output: OutputKind::Image,
            latents: None,
            init_image: Some(InitImage {
                image,
                strength: plan.strength,
                mask: None,
            }),
            previews: self.previews,
            upscale: None,
            control: self.control.clone(),
        }
        .validate(geometry)
        .map_err(|e| match e {
            Error::InvalidRequest {
                field: Field::Strength,
                message,
            } => invalid(Field::UpscaleStrength, message),
            Error::InvalidRequest {
                field: Field::Steps,
                message,
            } => invalid(Field::UpscaleSteps, message),
            other => invalid(
                Field::Upscale,
                format!("{}: the second pass ({w}x{h}) cannot run: {other}", plan.factor),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(sample_size: usize) -> ModelGeometry {
        ModelGeometry::for_tests(sample_size)
    }

    fn request(width: Option<usize>, height: Option<usize>) -> GenerationRequest {
        GenerationRequest {
            prompts: vec!["a red circle".into()],
            width,
            height,
            ..Default::default()
        }
    }

    #[test]
    fn image_counts_and_pixels_are_bounded() {
        let g = ModelGeometry {
            vae_factor: 8,
            ..geometry(16)
        };
        let ask = |n: usize, side: usize| {
            GenerationRequest {
                images_per_prompt: n,
                resolution_binning: false,
                ..request(Some(side), Some(side))
            }
            .validate(&g)
        };
        assert_eq!(ask(64, 1024).unwrap().batch, 64);
        assert!(ask(1, 8192).is_ok());
        let e = ask(65, 64).unwrap_err().to_string();
        assert!(e.contains("more than 64 images"), "{e}");
        let e = ask(usize::MAX, 64).unwrap_err().to_string();
        assert!(e.contains("more than 64 images"), "{e}");
        let e = ask(2, 8192).unwrap_err().to_string();
        assert!(e.contains("2 image(s) of 8192x8192 is more than one run makes"), "{e}");
    }

    #[test]
    fn binning_applies_only_where_diffusers_has_a_table() -> Result<()> {
        // sample_size 32 has a table: 100x60 is classified into a bin and resized back.
        let v = request(Some(100), Some(60)).validate(&geometry(32))?;
        assert!(v.resolution_binning);
        assert_eq!((v.out_width, v.out_height), (100, 60));
        assert_ne!((v.gen_width, v.gen_height), (100, 60));
        // sample_size 16 (the built-in model) has none: the default 64 px is generated as is.
        let v = request(None, None).validate(&geometry(16))?;
        assert!(!v.resolution_binning);
        assert_eq!((v.gen_width, v.gen_height, v.out_width, v.out_height), (64, 64, 64, 64));
        assert_eq!(v.latent_shape, [1, 4, 16, 16]);
        // ... and a size that is not a multiple of 8 is refused with the reason.
        let err = request(Some(100), Some(60))
            .validate(&geometry(16))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no resolution bins") && err.contains("multiples of 8"),
            "{err}"
        );
        Ok(())
    }

    /// A start image too small for the model is named as such, and as the image's fault when
    /// no size was given (a 1×1 image was reported as "--width/--height 1x1: ... multiples of 8").
    #[test]
    fn a_start_image_too_small_is_named() {
        let image = |w: usize, h: usize| InitImage {
            image: crate::image::RgbImage {
                width: w,
                height: h,
                data: vec![0; w * h * 3],
            },
            strength: 0.8,
            mask: None,
        };
        let with = |w, h, size: Option<usize>| GenerationRequest {
            init_image: Some(image(w, h)),
            ..request(size, size)
        };
        let g = geometry(16);
        match with(1, 1, None).validate(&g) {
            Err(Error::InvalidRequest { field, message }) => {
                assert_eq!(field, Field::Image);
                assert!(
                    message
                        .contains("the start image is 1x1: smaller than the smallest image this model makes (8x8 px)"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(field_of(with(12, 8, None), &g), Field::Image);
        // A size that is given is the size's fault.
        assert_eq!(field_of(with(64, 64, Some(4)), &g), Field::Size);
        assert!(with(16, 8, None).validate(&g).is_ok());
    }

    #[test]
    fn an_empty_prompt_is_unconditional_generation() {
        let v = GenerationRequest {
            prompts: vec![String::new()],
            ..request(None, None)
        }
        .validate(&geometry(16))
        .unwrap();
        assert_eq!(v.prompts, vec![String::new()]);
        let e = GenerationRequest {
            prompts: vec![],
            ..request(None, None)
        }
        .validate(&geometry(16))
        .unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidRequest {
                    field: Field::Prompt,
                    ..
                }
            ),
            "{e}"
        );
    }

    /// The field an invalid request names.
    fn field_of(r: GenerationRequest, g: &ModelGeometry) -> Field {
        match r.validate(g) {
            Err(Error::InvalidRequest { field, .. }) => field,
            other => panic!("expected an invalid request, got {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_the_sampler_that_runs_and_ranges_are_the_engines() {
        let g = geometry(16);
        let v = request(None, None).validate(&g).unwrap();
        assert_eq!((v.steps, v.guidance, v.cfg), (20, 4.5, true));
        let lcm = GenerationRequest {
            sampler: Some(SamplerKind::Lcm),
            ..request(None, None)
        };
        let v = lcm.validate(&g).unwrap();
        assert_eq!((v.steps, v.guidance, v.cfg), (4, 0.0, false));
        let with = |steps: Option<usize>, guidance: Option<f64>| GenerationRequest {
            steps,
            guidance,
            ..request(None, None)
        };
        assert!(with(Some(1000), Some(50.0)).validate(&g).is_ok());
        assert!(with(None, Some(0.0)).validate(&g).is_ok());
        for bad in [-3.0, 50.5, 1e30, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(field_of(with(None, Some(bad)), &g), Field::Guidance, "{bad}");
        }
        assert_eq!(field_of(with(Some(0), None), &g), Field::Steps);
        assert_eq!(field_of(with(Some(1001), None), &g), Field::Steps);
        let e = with(None, Some(-3.0)).validate(&g).unwrap_err().to_string();
        assert_eq!(e, "guidance must be between 0 and 50, got -3");
    }

    #[test]
    fn model_checks_name_their_field_before_any_compute() {
        // A sampler that takes the learned variance, on a model that predicts none.
        let no_sigma = ModelGeometry {
            out_channels: 4,
            ..geometry(16)
        };
        let iddpm = GenerationRequest {
            sampler: Some(SamplerKind::Iddpm),
            ..request(None, None)
        };
        assert!(iddpm.clone().validate(&geometry(16)).is_ok());
        let e = iddpm.validate(&no_sigma).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidRequest {
                    field: Field::Sampler,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("out_channels 4"), "{e}");
        // KV compression with ratio 4 needs a 4x4 token grid: 64 px / (4 x 2) = 8 tokens, 24
        // px = 3 tokens.
        let kv = ModelGeometry {
            kv_ratio: Some(4),
            ..geometry(16)
        };
        let small = GenerationRequest {
            resolution_binning: false,
            ..request(Some(24), Some(64))
        };
        assert!(request(None, None).validate(&kv).is_ok());
        assert_eq!(field_of(small.clone(), &kv), Field::Size);
        assert!(small.validate(&geometry(16)).is_ok());
    }

    #[test]
    fn upscaling_is_checked_with_its_second_pass() {
        let g = geometry(16);
        let up = |factor: f64, strength: Option<f64>, steps: Option<usize>| GenerationRequest {
            upscale: Some(Upscale {
                factor,
                strength,
                steps,
            }),
            ..request(None, None)
        };
        let v = up(2.0, None, None).validate(&g).unwrap();
        assert_eq!(
            v.upscale,
            Some(UpscalePlan {
                factor: 2.0,
                strength: DEFAULT_UPSCALE_STRENGTH,
                steps: 20,
                width: 128,
                height: 128,
            })
        );
        // The second pass: image k's seed and prompt, the enlarged size, image to image.
        let second = v.upscale_pass(0, RgbImage::filled(64, 64, [0; 3]), &g).unwrap();
        assert_eq!((second.out_width, second.out_height, second.seed), (128, 128, 0));
        assert_eq!((second.steps, second.steps_to_run()), (20, 10));
        assert!(second.upscale.is_none() && !second.resolution_binning);
        for (bad, field) in [
            (up(1.0, None, None), Field::Upscale),
            (up(4.5, None, None), Field::Upscale),
            (up(f64::NAN, None, None), Field::Upscale),
            (up(2.0, Some(0.0), None), Field::UpscaleStrength),
            (up(2.0, Some(1.5), None), Field::UpscaleStrength),
            (up(2.0, None, Some(0)), Field::UpscaleSteps),
            // 1 step x 0.5 leaves none to run in the second pass.
            (up(2.0, None, Some(1)), Field::UpscaleStrength),
        ] {
            assert_eq!(field_of(bad, &g), field);
        }
        let latent = GenerationRequest {
            output: OutputKind::Latent,
            ..up(2.0, None, None)
        };
        assert_eq!(field_of(latent, &g), Field::Output);
        // 4 x 4096 is past the largest side: the factor is at fault.
        let big = GenerationRequest {
            width: Some(4096),
            height: Some(4096),
            ..up(4.0, None, None)
        };
        assert_eq!(field_of(big, &g), Field::Upscale);
    }
}
