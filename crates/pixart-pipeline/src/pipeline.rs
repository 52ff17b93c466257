//! [`generate`]: text to image in numbered steps, as diffusers 0.42.1
//! `PixArtSigmaPipeline.__call__` (`pipelines/pixart_alpha/pipeline_pixart_sigma.py`), and image
//! to image with the start of diffusers' `StableDiffusionImg2ImgPipeline`
//! (`pipelines/stable_diffusion/pipeline_stable_diffusion_img2img.py`: `get_timesteps`,
//! `prepare_latents`) — and inpainting with the mask blending of diffusers'
//! `StableDiffusionXLInpaintPipeline` for models without mask channels
//! (`pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl_inpaint.py`, the
//! `num_channels_unet == 4` branch).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use pixart_core::{Error, Result};
use pixart_model::{Context, Control, PixArtTransformer};
use pixart_schedulers::{from_config, CleanEstimate, Sampler, SamplerKind, Scheduler};
use pixart_text::{load_text_encoder, preprocess_caption, to_tensors};

use crate::aspect_bins::resize_and_crop;
use crate::components::PipelineComponents;
use crate::image::RgbImage;
use crate::noise::{NoiseSource, SeededNoise};
use crate::request::{check_model_fit, InitImage, OutputKind, Previews, ValidatedRequest};

/// The stages of a generation, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Loading the T5 encoder from disk.
    LoadTextEncoder,
    /// Tokenising and running the T5 encoder.
    EncodeText,
    /// Caption projection and every block's cross-attention K/V, once.
    EncodeContext,
    /// Initial latents.
    PrepareLatents,
    /// Image to image: the init image through the VAE encoder, then noised.
    EncodeImage,
    /// ControlNet: the control image through the VAE encoder.
    EncodeControl,
    /// The denoising loop.
    Denoise,
    /// VAE decode.
    Decode,
    /// Back-mapping to the requested size and conversion to 8-bit RGB.
    Postprocess,
}

impl Stage {
    /// A short name for summaries.
    pub fn name(self) -> &'static str {
        match self {
            Self::LoadTextEncoder => "load text encoder",
            Self::EncodeText => "text encode",
            Self::EncodeContext => "context",
            Self::PrepareLatents => "latents",
            Self::EncodeImage => "vae encode",
            Self::EncodeControl => "control encode",
            Self::Denoise => "denoise",
            Self::Decode => "vae decode",
            Self::Postprocess => "postprocess",
        }
    }
}

/// Progress events.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A stage begins.
    Stage(Stage),
    /// Denoising step `done` of `total` finished, taking `seconds`.
    Step { done: usize, total: usize, seconds: f64 },
    /// VAE tile `done` of `total` decoded.
    DecodeTile { done: usize, total: usize },
    /// A live preview after denoising step `done` of `total` ([`Previews`]): the images the
    /// step's denoised estimate x̂0 decodes to, one per image of the batch, at the output size.
    Preview {
        done: usize,
        total: usize,
        images: Arc<Vec<RgbImage>>,
    },
    /// Two-pass upscaling: the second pass of image `image` (of `of`) begins, from the first
    /// pass's `from` (width, height) to `to`, with seed `seed`, running `steps_to_run` of its
    /// `steps` steps; its own events follow.
    Upscale {
        image: usize,
        of: usize,
        from: (usize, usize),
        to: (usize, usize),
        seed: u64,
        steps: usize,
        steps_to_run: usize,
    },
    /// A prompt (`negative: true`: the negative prompt) was cut to `limit` tokens (300, 120 for
    /// a PixArt-α pipeline); `dropped` tokens were lost (diffusers warns the same way).
    Truncated {
        prompt: usize,
        negative: bool,
        dropped: usize,
        limit: usize,
    },
}

/// Wall time per stage and per denoising step, in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    pub stages: Vec<(Stage, f64)>,
    pub steps: Vec<f64>,
    /// Seconds each preview took (x̂0 decode and conversion), in order.
    pub previews: Vec<f64>,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Output {
    /// The final latents (batch, channels, h, w), f32 on the CPU (before the VAE scaling).
    pub latents: Tensor,
    /// Decoded images in [0, 1], (batch, 3, height, width) f32 on the CPU
    /// (diffusers' `output_type="np"`, channels first); `None` for [`OutputKind::Latent`].
    pub pixels: Option<Tensor>,
    /// The images as 8-bit RGB (`round(255 · pixel)`); empty for [`OutputKind::Latent`].
    pub images: Vec<RgbImage>,
    pub timings: Timings,
}

/// What [`generate`] ended with.
#[derive(Debug, Clone)]
pub enum Generated {
    Finished(Output),
    /// The cancel flag was seen after `completed_steps` denoising steps; nothing was produced.
    Cancelled {
        completed_steps: usize,
    },
}

struct Clock<'a> {
    progress: &'a mut dyn FnMut(Progress),
    timings: Timings,
}

impl Clock<'_> {
    fn run<T>(&mut self, stage: Stage, f: impl FnOnce(&mut dyn FnMut(Progress)) -> Result<T>) -> Result<T> {
        (self.progress)(Progress::Stage(stage));
        let start = Instant::now();
        let out = f(self.progress)?;
        self.timings.stages.push((stage, start.elapsed().as_secs_f64()));
        Ok(out)
    }
}

/// A (batch, …) tensor of per-image noise from `noise`, in `dtype` on `device`.
/// Fails when `t` holds NaN or an infinity: a broken weight or input spreads them through
/// every later step, and they would come out as a black image. One reduction to a scalar.
pub fn ensure_finite(t: &Tensor, what: impl FnOnce() -> String) -> Result<()> {
    // x − x is 0 for every finite x and NaN for NaN and ±∞.
    #[allow(clippy::eq_op)] // x − x is the probe, not a mistake
    let probe = (t - t)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    if probe.is_nan() {
        return Err(Error::NonFinite(format!("{} hold NaN or infinite values", what())));
    }
    Ok(())
}

fn draw(noise: &mut dyn NoiseSource, shape: [usize; 4], dtype: DType, device: &Device) -> Result<Tensor> {
    let per = shape[1] * shape[2] * shape[3];
    let mut all = Vec::with_capacity(shape[0] * per);
    for k in 0..shape[0] {
        let v = noise.draw(k, per);
        if v.len() != per {
            return Err(Error::Shape(format!(
                "noise source gave {} values, expected {per}",
                v.len()
            )));
        }
        all.extend(v);
    }
    Ok(Tensor::from_vec(all, shape.to_vec(), &Device::Cpu)?
        .to_device(device)?
        .to_dtype(dtype)?)
}

/// One step of the denoising loop, as diffusers' `PixArtSigmaPipeline`: the model on the
/// scaled input (duplicated when `guidance` is set: classifier-free guidance with the
/// unconditional rows first in `ctx`), the first `in_channels` of a learned-sigma output,
/// ε = ε_u + g(ε_c − ε_u), then sampler step `i`. `noise` is the step's noise for samplers
/// that draw some ([`Scheduler::needs_noise`]). latents: (b, c, h, w) -> (b, c, h, w).
///
/// Samplers that take the model's variance ([`Scheduler::model_variance`]) get all 2c output
/// channels, the variance channels from the conditional rows. PixArt's IDDPM sampler guides as
/// the original `PixArtMS.forward_with_cfg` does (PixArt-alpha/PixArt-sigma@1ce521a,
/// diffusion/model/nets/PixArtMS.py: `eps, rest = model_out[:, :3], model_out[:, 3:]`): only the
/// first three latent channels; the fourth, like the variance, is the conditional prediction.
/// With `estimate`, also the step's denoised estimate x̂0 (f32, (b, c, h, w)), from the guided
/// prediction and the model input as [`CleanEstimate::x0`] (live previews).
/// With `control`, the ControlNet runs in the model (its control latents have the model
/// input's batch: 2b with guidance, the same control for both halves, as the reference
/// pipeline's `torch.cat([image] * 2)`; `ctx` encoded with the ControlNet).
#[allow(clippy::too_many_arguments)]
pub fn denoise_step(
    model: &PixArtTransformer,
    ctx: &Context,
    control: Option<&Control>,
    scheduler: &mut Sampler,
    latents: &Tensor,
    i: usize,
    guidance: Option<f64>,
    noise: Option<&Tensor>,
    estimate: Option<&CleanEstimate>,
) -> Result<(Tensor, Option<Tensor>)> {
    let batch = latents.dim(0)?;
    let t = *scheduler.timesteps().get(i).ok_or_else(|| {
        Error::InvalidInput(format!(
            "step {i} is past the sampler's {} steps",
            scheduler.timesteps().len()
        ))
    })?;
    let x_in = match guidance {
        Some(_) => Tensor::cat(&[latents, latents], 0)?, // (2b, c, h, w)
        None => latents.clone(),
    };
    let x_in = scheduler.scale_model_input(&x_in, i)?;
    let t_in = Tensor::full(t as f32, x_in.dim(0)?, latents.device())?;
    let out = model.forward_with_control(&x_in, &t_in, ctx, None, control)?;
    let (in_ch, out_ch) = (model.config().in_channels, model.config().out_channels());
    let learned_sigma = out_ch == 2 * in_ch;
    // The channels the sampler takes, and those of them that are guided.
    let keep = if learned_sigma && !scheduler.model_variance() {
        in_ch
    } else {
        out_ch
    };
    let guided = if scheduler.kind() == SamplerKind::Iddpm {
        ORIGINAL_GUIDED_CHANNELS.min(in_ch)
    } else {
        keep.min(in_ch)
    };
    let eps = match guidance {
        Some(g) => {
            let u = out.narrow(0, 0, batch)?.narrow(1, 0, guided)?;
            let cond = out.narrow(0, batch, batch)?;
            let mixed = (&u + (cond.narrow(1, 0, guided)? - &u)?.affine(g, 0.0)?)?;
            if keep > guided {
                // (b, guided, h, w) ++ (b, keep - guided, h, w) -> (b, keep, h, w)
                Tensor::cat(&[&mixed, &cond.narrow(1, guided, keep - guided)?], 1)?
            } else {
                mixed
            }
        }
        None if keep < out_ch => out.narrow(1, 0, keep)?.contiguous()?, // (b, 2c, h, w) -> (b, c, h, w)
        None => out,
    };
    let x0 = match estimate {
        // The prediction channels of the guided output and the model input of the first b rows.
        Some(e) => Some(e.x0(&eps.narrow(1, 0, in_ch)?, t, &x_in.narrow(0, 0, batch)?)?),
        None => None,
    };
    Ok((scheduler.step(&eps, i, latents, noise)?, x0))
}

/// The latent channels the original PixArt code guides under its IDDPM sampler.
const ORIGINAL_GUIDED_CHANNELS: usize = 3;

/// Inpainting state: after every step the kept region (mask 0) is replaced by the image's
/// latents noised to the level of the next step (clean after the last), as diffusers' SDXL
/// inpainting does for models without mask input channels.
struct Inpaint {
    /// (1, 1, h, w): 1 where the picture is repainted, in the latents' dtype.
    mask: Tensor,
    /// 1 − mask.
    keep: Tensor,
    /// (batch, c, h, w) f32: the image's latents (posterior sample · scaling factor).
    image_latents: Tensor,
    /// (batch, c, h, w) f32: the noise of the initial latents, reused at every step.
    noise: Tensor,
}

impl Inpaint {
    /// `(1 − m)·proper + m·latents`, `proper` the image latents at the level of step `next`.
    fn blend(&self, latents: &Tensor, scheduler: &Sampler, next: usize) -> Result<Tensor> {
        let proper = if next < scheduler.timesteps().len() {
            scheduler.add_noise(&self.image_latents, &self.noise, next)?
        } else {
            self.image_latents.clone()
        };
        let proper = proper.to_dtype(latents.dtype())?;
        Ok((self.keep.broadcast_mul(&proper)? + self.mask.broadcast_mul(latents)?)?)
    }
}

/// Image to image: the init image resized to cover the generation size and centre-cropped
/// (bilinear, as the back-mapping after binning), in [-1, 1], through the VAE encoder; per image
/// k a posterior sample `mean + std · ε_k` times the scaling factor (diffusers'
/// `latent_dist.sample()` · `scaling_factor`), then the sampler's `add_noise` with fresh noise
/// at step `start_step` (diffusers' img2img `prepare_latents`). Both draws come from image k's
/// own stream, so image k is what a single-image run with seed + k makes (diffusers draws one
/// posterior sample for the whole batch). With a mask (inpainting) and strength 1 the start is
/// the fresh noise times `init_noise_sigma` instead, as diffusers' SDXL inpainting. Returns
/// (batch, c, h, w) f32 latents and the inpainting state.
fn init_latents(
    c: &PipelineComponents,
    r: &ValidatedRequest,
    init: &InitImage,
    scheduler: &Sampler,
    noise: &mut dyn NoiseSource,
) -> Result<(Tensor, Option<Inpaint>)> {
    let vae = &c.vae;
    let image = &init.image;
    let (gh, gw) = (r.gen_height, r.gen_width);
    let planes = resize_and_crop(image.to_planes(), 3, (image.height, image.width), (gh, gw));
    let x = Tensor::from_vec(planes, (1, 3, gh, gw), &c.device)?.to_dtype(vae.dtype())?; // (1, 3, H, W)
    let posterior = vae.encode(&x, r.vae_tiling.tiling())?;
    let (mean, std) = (
        posterior.mean.to_dtype(DType::F32)?,
        posterior.std.to_dtype(DType::F32)?,
    );
    ensure_finite(&mean, || "the VAE's encoding of the init image".into())?;
    let eps = draw(noise, r.latent_shape, DType::F32, &c.device)?;
    let z = mean.broadcast_add(&std.broadcast_mul(&eps)?)?; // (1, c, h, w) -> (batch, c, h, w)
    let z = vae.scale_latents(&z)?;
    let fresh = draw(noise, r.latent_shape, DType::F32, &c.device)?;
    let Some(mask) = &init.mask else {
        return Ok((scheduler.add_noise(&z, &fresh, r.start_step)?, None));
    };
    let [_, _, lh, lw] = r.latent_shape;
    let m = latent_mask(mask, (gh, gw), (lh, lw));
    let mask = Tensor::from_vec(m, (1, 1, lh, lw), &c.device)?.to_dtype(c.transformer.dtype())?;
    let keep = mask.affine(-1.0, 1.0)?; // 1 − m
    let latents = if init.strength >= 1.0 {
        (&fresh * scheduler.init_noise_sigma())?
    } else {
        scheduler.add_noise(&z, &fresh, r.start_step)?
    };
    Ok((
        latents,
        Some(Inpaint {
            mask,
            keep,
            image_latents: z,
            noise: fresh,
        }),
    ))
}

/// The control latents of a ControlNet run, as the reference pipeline makes them
/// (diffusers@58eb52c, examples/research_projects/pixart/pipeline_pixart_alpha_controlnet.py:
/// `prepare_image`, `prepare_image_latents`): the control image resized to the generation size
/// (`PixArtImageProcessor.preprocess(image, height, width)`: a plain resize, no crop; Lanczos
/// here through the `image` crate, PIL's Lanczos there), in [-1, 1], through the VAE encoder to
/// its posterior **mean** (the reference draws a sample with the global RNG; the mean gives the
/// same picture for the same seed) times the scaling factor; the same latents for every image
/// of the batch, twice with guidance (unconditional rows first, as the model input).
/// Returns (model batch, c, h, w) in the transformer's dtype.
fn control_latents(c: &PipelineComponents, r: &ValidatedRequest, image: &RgbImage) -> Result<Tensor> {
    let vae = &c.vae;
    let (gh, gw) = (r.gen_height, r.gen_width);
    let resized = image.resized(gw, gh)?;
    let x = Tensor::from_vec(resized.to_planes(), (1, 3, gh, gw), &c.device)?.to_dtype(vae.dtype())?; // (1, 3, H, W)
    let posterior = vae.encode(&x, r.vae_tiling.tiling())?;
    let mean = posterior.mean.to_dtype(DType::F32)?;
    ensure_finite(&mean, || "the VAE's encoding of the control image".into())?;
    let z = vae.scale_latents(&mean)?; // (1, c, h, w)
    let rows = if r.cfg { 2 * r.batch } else { r.batch };
    let [_, ch, lh, lw] = r.latent_shape;
    Ok(z.broadcast_as((rows, ch, lh, lw))?
        .contiguous()?
        .to_dtype(c.transformer.dtype())?) // (rows, c, h, w)
}

/// The inpainting mask at latent size, 1 = repaint: the mask picture's luma (PIL's
/// `convert("L")`: (19595 R + 38470 G + 7471 B + 2¹⁵) >> 16), nearest-neighbour resized to cover
/// the generation size and centre-cropped like the image, binarised at 0.5 (diffusers' mask
/// processor), then sampled at latent size as `F.interpolate(mode="nearest")`: row
/// `floor(i · H/h)`, column `floor(j · W/w)`.
fn latent_mask(mask: &RgbImage, (gh, gw): (usize, usize), (lh, lw): (usize, usize)) -> Vec<f32> {
    let (mh, mw) = (mask.height, mask.width);
    // Cover: scale by max(gh/mh, gw/mw), then crop the centre.
    let r = (gh as f64 / mh as f64).max(gw as f64 / mw as f64);
    let (rh, rw) = (((mh as f64 * r) as usize).max(gh), ((mw as f64 * r) as usize).max(gw));
    let (oy, ox) = ((rh - gh) / 2, (rw - gw) / 2);
    let repaint = |y: usize, x: usize| -> f32 {
        let sy = ((y + oy) * mh / rh).min(mh - 1);
        let sx = ((x + ox) * mw / rw).min(mw - 1);
        let p = 3 * (sy * mw + sx);
        let (r, g, b) = (mask.data[p] as u32, mask.data[p + 1] as u32, mask.data[p + 2] as u32);
        let luma = (19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16;
        if luma as f32 / 255.0 >= 0.5 {
            1.0
        } else {
            0.0
        }
    };
    let (sh, sw) = (gh as f32 / lh as f32, gw as f32 / lw as f32);
    let mut out = Vec::with_capacity(lh * lw);
    for i in 0..lh {
        let y = ((i as f32 * sh).floor() as usize).min(gh - 1);
        for j in 0..lw {
            let x = ((j as f32 * sw).floor() as usize).min(gw - 1);
            out.push(repaint(y, x));
        }
    }
    out
}

/// Generates `request` with `components`. `noise` supplies the initial latents (unless the
/// request carries them) and the per-step noise of samplers that need it; `progress` receives
/// [`Progress`] events; `cancel` is checked between steps (set it from a signal handler).
///
/// With two-pass upscaling ([`ValidatedRequest::upscale`]) each image of this first pass then
/// goes through its second pass ([`ValidatedRequest::upscale_pass`]), which draws its noise
/// from [`SeededNoise`] with the image's own seed (`seed + k`, as a one-image run with that
/// seed), announced by [`Progress::Upscale`]. The output holds the upscaled images (their
/// latents and pixels stacked), and the timings of every pass.
pub fn generate(
    components: &PipelineComponents,
    request: &ValidatedRequest,
    noise: &mut dyn NoiseSource,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<Generated> {
    let first = match generate_pass(components, request, noise, progress, cancel)? {
        Generated::Finished(out) => out,
        cancelled => return Ok(cancelled),
    };
    if request.upscale.is_none() {
        return Ok(Generated::Finished(first));
    }
    let geometry = components.geometry();
    let of = first.images.len();
    let mut timings = first.timings;
    let (mut latents, mut pixels, mut images) = (Vec::new(), Vec::new(), Vec::with_capacity(of));
    for (k, image) in first.images.into_iter().enumerate() {
        let from = (image.width, image.height);
        let second = request.upscale_pass(k, image, &geometry)?;
        progress(Progress::Upscale {
            image: k,
            of,
            from,
            to: (second.out_width, second.out_height),
            seed: second.seed,
            steps: second.steps,
            steps_to_run: second.steps_to_run(),
        });
        let mut noise = SeededNoise::new(second.seed);
        match generate_pass(components, &second, &mut noise, progress, cancel)? {
            Generated::Finished(out) => {
                timings.stages.extend(out.timings.stages);
                timings.steps.extend(out.timings.steps);
                timings.previews.extend(out.timings.previews);
                latents.push(out.latents);
                pixels.extend(out.pixels);
                images.extend(out.images);
            }
            cancelled => return Ok(cancelled),
        }
    }
    Ok(Generated::Finished(Output {
        latents: Tensor::cat(&latents, 0)?,
        pixels: if pixels.is_empty() {
            None
        } else {
            Some(Tensor::cat(&pixels, 0)?)
        },
        images,
        timings,
    }))
}

/// One pass of [`generate`]: the request as it is, without its upscaling.
fn generate_pass(
    components: &PipelineComponents,
    request: &ValidatedRequest,
    noise: &mut dyn NoiseSource,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<Generated> {
    let c = components;
    let r = request;
    let device = &c.device;
    let model = &c.transformer;
    let mut clock = Clock {
        progress,
        timings: Timings::default(),
    };
    // The request's checks that need the model ([`crate::request`]), in case it was validated
    // against other components; then the sampler, before any heavy work.
    check_model_fit(&c.geometry(), r.sampler, r.steps, r.gen_width, r.gen_height)?;
    let mut scheduler = from_config(&c.scheduler_config, r.sampler)?;
    scheduler.set_timesteps(r.steps)?;

    // 1. Preprocess the prompts (strip, lower-case unless keep_case; diffusers'
    //    `_text_preprocessing` with `clean_caption=False`) and tokenise them: 300 tokens (120 for a
    //    PixArt-α pipeline), padded,
    //    with the attention mask. With CFG the negative prompt comes first: [negative, prompts...].
    let mut texts: Vec<String> = Vec::with_capacity(r.prompts.len() + 1);
    if r.cfg {
        texts.push(preprocess_caption(&r.negative_prompt, r.keep_case));
    }
    texts.extend(r.prompts.iter().map(|p| preprocess_caption(p, r.keep_case)));
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let limit = c.paths.max_sequence_length;
    let encodings = c.tokenizer.encode_batch(&refs, limit)?;
    for (i, e) in encodings.iter().enumerate().filter(|(_, e)| e.truncated > 0) {
        (clock.progress)(Progress::Truncated {
            prompt: i.saturating_sub(usize::from(r.cfg)),
            negative: r.cfg && i == 0,
            dropped: e.truncated,
            limit,
        });
    }
    let (_, mask) = to_tensors(&encodings, device)?;

    // 2. T5-encode the texts, each at its own valid length (texts of equal length together),
    //    zero-padded back to 300: the valid positions are what diffusers computes on the padded
    //    batch with the mask, the padded ones are masked out in the cross-attention anyway, and
    //    a text's features do not depend on which texts share the batch. Texts seen recently
    //    come from the cache ([`crate::text`]); the encoder is loaded only when some text is
    //    new and none is kept, and then dropped right after, before denoising.
    let cached = c.text.lookup(&encodings);
    let loaded = if cached.iter().any(Option::is_none) && c.text.resident().is_none() {
        Some(clock.run(Stage::LoadTextEncoder, |_| {
            load_text_encoder(&c.paths.text_encoder, c.text_dtype, device)
        })?)
    } else {
        None
    };
    let hidden = clock.run(Stage::EncodeText, |_| {
        c.text.assemble(&encodings, cached, |missing| {
            let t5 = c
                .text
                .resident()
                .or(loaded.as_ref())
                .ok_or_else(|| Error::InvalidInput("no text encoder loaded".into()))?;
            let (ids, mask) = to_tensors(missing, device)?;
            t5.forward_valid(&ids, &mask)
        })
    })?;
    drop(loaded);

    // 3. The caption projection and the cross-attention K/V of every block, once for the whole
    //    run. Batch rows: [uncond × batch, cond × batch] with CFG, [cond × batch] without; image
    //    k uses prompt k / images_per_prompt (diffusers repeats each prompt's rows in place).
    let offset = usize::from(r.cfg);
    let mut rows: Vec<u32> = Vec::with_capacity(2 * r.batch);
    if r.cfg {
        rows.extend(std::iter::repeat_n(0u32, r.batch));
    }
    rows.extend((0..r.batch).map(|k| (offset + k / r.images_per_prompt) as u32));
    let ctx = clock.run(Stage::EncodeContext, |_| {
        let rows = Tensor::new(rows.as_slice(), hidden.device())?;
        let y = hidden.index_select(&rows, 0)?;
        let m = mask.index_select(&rows.to_device(mask.device())?, 0)?;
        let controlnet = c.controlnet.as_ref().filter(|_| r.control.is_some());
        model.encode_context_with_controlnet(&y, Some(&m), controlnet)
    })?;
    drop(hidden);

    // 3b. ControlNet: the control latents, once ([`control_latents`]).
    let control_cond = match (&r.control, &c.controlnet) {
        (Some(control), Some(_)) => Some(clock.run(Stage::EncodeControl, |_| control_latents(c, r, &control.image))?),
        (Some(_), None) => {
            return Err(Error::request(
                pixart_core::Field::Control,
                "needs a ControlNet: none was given and the model has no controlnet/ folder",
            ))
        }
        _ => None,
    };
    let control = match (&r.control, &c.controlnet, &control_cond) {
        (Some(ci), Some(adapter), Some(cond)) => Some(Control {
            adapter,
            cond,
            scale: ci.scale,
        }),
        _ => None,
    };

    // 4. Initial latents: the given x_T, or standard normal noise per image (seed + k), drawn
    //    here rather than in the sampler; both times the sampler's init_noise_sigma. Image to
    //    image instead starts at step `start_step` from the init image's latents noised to that
    //    step's level ([`init_latents`]).
    let start = r.start_step;
    let (mut latents, inpaint) = match &r.init_image {
        Some(init) => clock.run(Stage::EncodeImage, |_| {
            let (x, inpaint) = init_latents(c, r, init, &scheduler, noise)?;
            Ok((x.to_dtype(model.dtype())?, inpaint))
        })?,
        None => clock.run(Stage::PrepareLatents, |_| {
            let x = match &r.latents {
                Some(l) => l.to_device(device)?.to_dtype(DType::F32)?,
                None => draw(noise, r.latent_shape, DType::F32, device)?,
            };
            Ok(((x * scheduler.init_noise_sigma())?.to_dtype(model.dtype())?, None))
        })?,
    };

    // 5. The denoising loop ([`denoise_step`]), with live previews when asked for.
    let total = scheduler.timesteps().len();
    let guidance = r.cfg.then_some(r.guidance);
    let estimate = match r.previews {
        Previews::Off => None,
        _ => Some(CleanEstimate::new(&c.scheduler_config)?),
    };
    let mut preview_seconds = 0.0;
    let mut last_preview: Option<f64> = None;
    (clock.progress)(Progress::Stage(Stage::Denoise));
    let denoise_start = Instant::now();
    for i in start..total {
        if cancel.load(Ordering::Relaxed) {
            return Ok(Generated::Cancelled {
                completed_steps: i - start,
            });
        }
        let step_start = Instant::now();
        let (done, run) = (i + 1 - start, total - start);
        // Whether this step ends with a preview (decided before it runs: the step then keeps
        // its x̂0). Auto: the previews so far plus this one (as long as the last) within a
        // quarter of the denoising time at the end of this step.
        let preview = match r.previews {
            Previews::Off => false,
            Previews::Every(n) => done % n.max(1) == 0,
            Previews::Auto => {
                let denoised = denoise_start.elapsed().as_secs_f64() - preview_seconds
                    + clock.timings.steps.last().copied().unwrap_or(0.0);
                done < run && preview_seconds + last_preview.unwrap_or(0.0) <= PREVIEW_SHARE * denoised
            }
        };
        let step_noise = if scheduler.needs_noise() {
            Some(draw(noise, r.latent_shape, latents.dtype(), device)?)
        } else {
            None
        };
        let est = estimate.as_ref().filter(|_| preview);
        let (next, x0) = denoise_step(
            model,
            &ctx,
            control.as_ref(),
            &mut scheduler,
            &latents,
            i,
            guidance,
            step_noise.as_ref(),
            est,
        )?;
        latents = next;
        if let Some(p) = &inpaint {
            latents = p.blend(&latents, &scheduler, i + 1)?;
        }
        ensure_finite(&latents, || format!("the latents after step {done} of {run}")).map_err(
            |e| match blame_weights(&e, &[&c.paths.transformer, &c.paths.text_encoder]) {
                Some(file_error) => file_error,
                None => Error::NonFinite(format!("{e} (the dtype overflowed, or an input holds them)")),
            },
        )?;
        let seconds = step_start.elapsed().as_secs_f64();
        clock.timings.steps.push(seconds);
        (clock.progress)(Progress::Step {
            done,
            total: run,
            seconds,
        });
        if let Some(x0) = x0 {
            let preview_start = Instant::now();
            // An inpainting preview shows the kept part as it will end: the image's own latents.
            let x0 = match &inpaint {
                Some(p) => p.blend(&x0.to_dtype(latents.dtype())?, &scheduler, total)?,
                None => x0,
            };
            let decoded = vae_decode(c, r, &x0, &mut |_, _| {})?;
            let (_, images) = postprocess(&decoded, r)?;
            let took = preview_start.elapsed().as_secs_f64();
            preview_seconds += took;
            last_preview = Some(took);
            clock.timings.previews.push(took);
            (clock.progress)(Progress::Preview {
                done,
                total: run,
                images: Arc::new(images),
            });
        }
    }
    clock
        .timings
        .stages
        .push((Stage::Denoise, denoise_start.elapsed().as_secs_f64()));
    drop(ctx);
    let latents = latents.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    if r.output == OutputKind::Latent {
        return Ok(Generated::Finished(Output {
            latents,
            pixels: None,
            images: Vec::new(),
            timings: clock.timings,
        }));
    }
    if cancel.load(Ordering::Relaxed) {
        return Ok(Generated::Cancelled {
            completed_steps: total - start,
        });
    }

    // 6. Decode latents / scaling_factor with the VAE (tiled when large, or as requested).
    let decoded = clock.run(Stage::Decode, |progress| {
        vae_decode(c, r, &latents, &mut |done, total| {
            progress(Progress::DecodeTile { done, total })
        })
    })?;

    // 7. Back to the requested size and 8-bit RGB ([`postprocess`]).
    let (pixels, images) = clock.run(Stage::Postprocess, |_| postprocess(&decoded, r))?;
    Ok(Generated::Finished(Output {
        latents,
        pixels: Some(pixels),
        images,
        timings: clock.timings,
    }))
}

/// The share of the denoising time that [`Previews::Auto`] spends on previews.
const PREVIEW_SHARE: f64 = 0.25;

/// Diffusion latents (b, c, h, w) through the VAE: `latents / scaling_factor`, decoded (tiled
/// when large, or as requested) into (b, 3, H, W) f32 on the CPU in [-1, 1].
fn vae_decode(
    c: &PipelineComponents,
    r: &ValidatedRequest,
    latents: &Tensor,
    on_tile: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    let vae = &c.vae;
    let z = vae.unscale_latents(&latents.to_device(&c.device)?.to_dtype(vae.dtype())?)?;
    let image = vae.decode_with_progress(&z, r.vae_tiling.tiling(), on_tile)?;
    let image = image.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    ensure_finite(&image, || "the VAE's decoded pixels".into())
        .map_err(|e| blame_weights(&e, &[&c.paths.vae]).unwrap_or(e))?;
    Ok(image)
}

/// When a run turned NaN (`e`): the weight file of `components` (folders or files) that holds
/// NaN or infinite values, as an [`Error::Weights`] naming it and the tensor (a bad input
/// file, not a failure of the run); `None` when every one is finite (the dtype overflowed).
fn blame_weights(e: &Error, components: &[&std::path::Path]) -> Option<Error> {
    for component in components {
        let Ok((file, _)) = pixart_model::loading::locate(component) else {
            continue;
        };
        let Ok(weights) = pixart_core::weights::WeightFile::open(&file) else {
            continue;
        };
        if let Ok(Some(name)) = weights.first_non_finite() {
            return Some(Error::weights(
                &file,
                format!("tensor `{name}` holds NaN or infinite values ({e})"),
            ));
        }
    }
    None
}

/// Decoded pixels (b, 3, H, W) in [-1, 1] back to the requested size when binned (bilinear
/// resize + centre crop, in [-1, 1]), then `clamp(x/2 + 0.5, 0, 1)` and `round(255 · x)`
/// (diffusers' postprocess): the [0, 1] tensor and the 8-bit images.
fn postprocess(decoded: &Tensor, r: &ValidatedRequest) -> Result<(Tensor, Vec<RgbImage>)> {
    let (b, ch, h, w) = decoded.dims4()?;
    let (oh, ow) = (r.out_height, r.out_width);
    let data = decoded.flatten_all()?.to_vec1::<f32>()?;
    let data = if r.resolution_binning {
        resize_and_crop(data, b * ch, (h, w), (oh, ow))
    } else {
        data
    };
    let (oh, ow) = if r.resolution_binning { (oh, ow) } else { (h, w) };
    let data: Vec<f32> = data.iter().map(|&x| (x * 0.5 + 0.5).clamp(0.0, 1.0)).collect();
    if data.len() != b * ch * oh * ow || ch != 3 {
        return Err(Error::Shape(format!(
            "decoded image has {ch} channels and {} values; expected 3 × {b} × {oh} × {ow}",
            data.len()
        )));
    }
    let plane = oh * ow;
    let images = data
        .chunks_exact(3 * plane)
        .map(|img| RgbImage {
            width: ow,
            height: oh,
            data: (0..plane)
                .flat_map(|p| (0..3).map(move |c| (img[c * plane + p] * 255.0).round() as u8))
                .collect(),
        })
        .collect();
    let pixels = Tensor::from_vec(data, (b, ch, oh, ow), &Device::Cpu)?;
    Ok((pixels, images))
}
