//! What to generate: [`GenerationRequest`] as a caller fills it in, and [`ValidatedRequest`],
//! the only form [`crate::generate`] accepts. Every check on user input happens in
//! [`GenerationRequest::validate`], before any compute.
use candle_core::Tensor;
use pixart_core::{Error, Result};
use pixart_schedulers::SamplerKind;
use pixart_vae::{TileConfig, Tiling};

use crate::aspect_bins;
use crate::components::ModelGeometry;
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

/// diffusers' image-to-image default `strength`.
pub const DEFAULT_STRENGTH: f64 = 0.8;
/// The default `strength` with a mask: the masked part is drawn anew (diffusers' SD
/// inpainting default).
pub const DEFAULT_INPAINT_STRENGTH: f64 = 1.0;

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
    /// Denoising steps (> 0).
    pub steps: usize,
    /// CFG scale; CFG is skipped when it is ≤ 1 (as diffusers does).
    pub guidance: f64,
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
}

impl Default for GenerationRequest {
    /// The diffusers `PixArtSigmaPipeline.__call__` defaults (20 steps, guidance 4.5, binning).
    fn default() -> Self {
        Self {
            prompts: Vec::new(),
            negative_prompt: String::new(),
            width: None,
            height: None,
            steps: 20,
            guidance: 4.5,
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
}

impl ValidatedRequest {
    /// The denoising steps the loop runs: all of them, or the last `steps · strength` for image
    /// to image.
    pub fn steps_to_run(&self) -> usize {
        self.steps - self.start_step
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidInput(msg.into())
}

impl GenerationRequest {
    /// Checks the request against the model's geometry (from [`crate::PipelineComponents::geometry`],
    /// or, before loading, [`crate::ResolvedPaths::geometry`]) and resolves sizes.
    pub fn validate(self, geometry: &ModelGeometry) -> Result<ValidatedRequest> {
        if self.prompts.is_empty() {
            return Err(invalid("no prompt given"));
        }
        if self.steps == 0 {
            return Err(invalid("--steps must be at least 1"));
        }
        if self.steps > 1000 {
            return Err(invalid(format!("--steps {} is more than 1000", self.steps)));
        }
        if !self.guidance.is_finite() {
            return Err(invalid(format!(
                "guidance must be a finite number, got {}",
                self.guidance
            )));
        }
        if self.images_per_prompt == 0 {
            return Err(invalid("--batch must be at least 1"));
        }
        let batch = self
            .prompts
            .len()
            .checked_mul(self.images_per_prompt)
            .filter(|n| *n <= MAX_IMAGES)
            .ok_or_else(|| {
                invalid(format!(
                    "{} prompt(s) × --batch {} is more than {MAX_IMAGES} images in one run",
                    self.prompts.len(),
                    self.images_per_prompt
                ))
            })?;
        if self.previews == Previews::Every(0) {
            return Err(invalid("previews every 0 steps: give at least 1"));
        }
        let mut start_step = 0;
        if let Some(init) = &self.init_image {
            let s = init.strength;
            if !(s.is_finite() && s > 0.0 && s <= 1.0) {
                return Err(invalid(format!("--strength must be in (0, 1], got {s}")));
            }
            // diffusers' `get_timesteps`: int(num_inference_steps · strength) steps run.
            let run = ((self.steps as f64 * s) as usize).min(self.steps);
            if run == 0 {
                return Err(invalid(format!(
                    "--strength {s} of {} steps leaves no step to run (steps x strength must be at least 1)",
                    self.steps
                )));
            }
            if self.latents.is_some() {
                return Err(invalid("initial latents and an init image cannot both be given"));
            }
            init.image.check()?;
            if let Some(m) = &init.mask {
                m.check()?;
                if (m.width, m.height) != (init.image.width, init.image.height) {
                    return Err(invalid(format!(
                        "the mask is {}x{} but the image is {}x{}; they must be the same size",
                        m.width, m.height, init.image.width, init.image.height
                    )));
                }
            }
            start_step = self.steps - run;
        }
        let g = geometry;
        let f = g.vae_factor;
        let multiple = f * g.patch_size;
        let default_side = g.sample_size * f;
        let (default_w, default_h) = match &self.init_image {
            Some(init) => (init.image.width, init.image.height),
            None => (default_side, default_side),
        };
        let out_height = self.height.unwrap_or(default_h);
        let out_width = self.width.unwrap_or(default_w);
        for (what, v) in [("height", out_height), ("width", out_width)] {
            if v == 0 || v > MAX_SIDE {
                return Err(invalid(format!("--{what} {v} must be between 1 and {MAX_SIDE}")));
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
            aspect_bins::classify(out_height, out_width, table)?
        } else {
            if !out_height.is_multiple_of(multiple) || !out_width.is_multiple_of(multiple) {
                let why = if self.resolution_binning {
                    format!("this model (sample_size {}) has no resolution bins, so ", g.sample_size)
                } else {
                    "with resolution binning off, ".to_string()
                };
                return Err(invalid(format!(
                    "{why}width and height must be multiples of {multiple}, got {out_width}x{out_height}"
                )));
            }
            (out_height, out_width)
        };
        let pixels = batch * gen_height.max(out_height) * gen_width.max(out_width);
        if pixels > MAX_PIXELS {
            return Err(invalid(format!(
                "{batch} image(s) of {out_width}x{out_height} is more than one run makes ({MAX_PIXELS} pixels in all, e.g. 64 images of 1024x1024)"
            )));
        }
        let latent_shape = [batch, g.in_channels, gen_height / f, gen_width / f];
        if let Some(l) = &self.latents {
            if l.dims() != latent_shape {
                return Err(invalid(format!(
                    "initial latents have shape {:?}, this request needs {:?} (batch, channels, {}/{f}, {}/{f})",
                    l.dims(),
                    latent_shape,
                    gen_height,
                    gen_width
                )));
            }
        }
        Ok(ValidatedRequest {
            prompts: self.prompts,
            negative_prompt: self.negative_prompt,
            images_per_prompt: self.images_per_prompt,
            batch,
            gen_height,
            gen_width,
            out_height,
            out_width,
            steps: self.steps,
            guidance: self.guidance,
            cfg: self.guidance > 1.0,
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(sample_size: usize) -> ModelGeometry {
        ModelGeometry {
            sample_size,
            patch_size: 2,
            in_channels: 4,
            vae_factor: 4,
        }
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
            sample_size: 16,
            patch_size: 2,
            in_channels: 4,
            vae_factor: 8,
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
}
