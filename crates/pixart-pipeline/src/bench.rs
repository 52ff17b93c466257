//! The denoising-loop benchmark: the full PixArt-Σ transformer with random weights, `steps`
//! DPM-Solver++ steps with classifier-free guidance (model batch 2), as [`crate::generate`]
//! runs them: the caption projection and cross-attention keys/values once, then
//! [`denoise_step`] per step. No text encoder, VAE or files.
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use pixart_core::{Error, Result};
use pixart_model::bench::{forward_flops, process_cpu_seconds, random_controlnet, random_transformer};
use pixart_model::TransformerConfig;
use pixart_schedulers::{from_config, Scheduler, SchedulerConfig};

use crate::pipeline::denoise_step;

/// What to run.
#[derive(Debug, Clone)]
pub struct DenoiseBenchSpec {
    pub config: TransformerConfig,
    /// Image size in pixels (latent = size / 8), square.
    pub size: usize,
    pub steps: usize,
    /// Caption positions (the padded length, 300 in PixArt-Σ).
    pub tokens: usize,
    /// Valid positions of the prompt row (the unconditional row, an empty negative prompt,
    /// has one, as in `pixart generate`).
    pub valid_tokens: usize,
    pub guidance: f64,
    pub dtype: DType,
    pub device: Device,
    /// A ControlNet of this many block copies (random weights, scale 1) on random control
    /// latents; `None`: without.
    pub controlnet_layers: Option<usize>,
}

/// Timings of one loop.
#[derive(Debug, Clone)]
pub struct DenoiseBenchResult {
    /// The whole loop: context + every step.
    pub seconds: f64,
    /// CPU seconds of all threads over the loop, when the OS reports them.
    pub cpu_seconds: Option<f64>,
    /// The caption projection and cross-attention keys/values (once).
    pub context_seconds: f64,
    pub step_seconds: Vec<f64>,
    /// The work diffusers does for the same loop: `steps` full forwards on all `tokens`.
    pub reference_flops: f64,
    pub build_seconds: f64,
}

/// Builds the model and runs the loop once; `on_step(i, seconds)` after every step.
pub fn bench_denoise(spec: &DenoiseBenchSpec, mut on_step: impl FnMut(usize, f64)) -> Result<DenoiseBenchResult> {
    if spec.steps == 0 || spec.tokens == 0 || spec.valid_tokens == 0 || spec.valid_tokens > spec.tokens {
        return Err(Error::InvalidInput(format!(
            "denoise bench: need steps ≥ 1 and 1 ≤ valid tokens ({}) ≤ tokens ({})",
            spec.valid_tokens, spec.tokens
        )));
    }
    let t0 = Instant::now();
    let model = random_transformer(&spec.config, spec.dtype, &spec.device)?;
    let controlnet = spec
        .controlnet_layers
        .map(|n| random_controlnet(n, &spec.config, spec.dtype, &spec.device))
        .transpose()?;
    let build_seconds = t0.elapsed().as_secs_f64();
    let dev = &spec.device;
    let lat = spec.size / 8;
    let cap = spec.config.caption_channels.unwrap_or(spec.config.inner_dim());
    let y = Tensor::randn(0f32, 1.0, (2, spec.tokens, cap), dev)?; // (2, l, cap): [uncond, cond]
    let mut mask = vec![0f32; 2 * spec.tokens];
    mask[0] = 1.0;
    mask[spec.tokens..spec.tokens + spec.valid_tokens].fill(1.0);
    let mask = Tensor::from_vec(mask, (2, spec.tokens), dev)?;
    let mut scheduler = from_config(&SchedulerConfig::pixart_sigma(), None)?;
    scheduler.set_timesteps(spec.steps)?;
    let latents = Tensor::randn(0f32, 1.0, (1, spec.config.in_channels, lat, lat), dev)?;
    let mut latents = (latents * scheduler.init_noise_sigma())?.to_dtype(model.dtype())?;

    dev.synchronize()?;
    let cpu0 = process_cpu_seconds();
    let start = Instant::now();
    let ctx = model.encode_context_with_controlnet(&y, Some(&mask), controlnet.as_ref())?;
    // Control latents of the model batch (2: guidance).
    let cond = Tensor::randn(0f32, 1.0, (2, spec.config.in_channels, lat, lat), dev)?.to_dtype(model.dtype())?;
    let control = controlnet.as_ref().map(|adapter| pixart_model::Control {
        adapter,
        cond: &cond,
        scale: 1.0,
    });
    dev.synchronize()?;
    let context_seconds = start.elapsed().as_secs_f64();
    let mut step_seconds = Vec::with_capacity(spec.steps);
    for i in 0..spec.steps {
        let s0 = Instant::now();
        latents = denoise_step(
            &model,
            &ctx,
            control.as_ref(),
            &mut scheduler,
            &latents,
            i,
            Some(spec.guidance),
            None,
            None,
        )?
        .0;
        dev.synchronize()?;
        let s = s0.elapsed().as_secs_f64();
        step_seconds.push(s);
        on_step(i, s);
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = match (cpu0, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok(DenoiseBenchResult {
        seconds,
        cpu_seconds,
        context_seconds,
        step_seconds,
        reference_flops: spec.steps as f64 * forward_flops(&spec.config, 2, lat, lat, spec.tokens),
        build_seconds,
    })
}
