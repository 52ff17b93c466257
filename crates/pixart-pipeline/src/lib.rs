//! PixArt-Σ text-to-image: the orchestration of tokenizer, T5 encoder, transformer, sampler and
//! VAE, with the semantics of diffusers 0.42.1 `PixArtSigmaPipeline`
//! (`pipelines/pixart_alpha/pipeline_pixart_sigma.py`).
//!
//! - [`components`]: [`PipelineComponents`] from a local diffusers pipeline folder, or a
//!   transformer folder plus a base folder, with per-component overrides ([`ComponentPaths`]).
//! - [`geometry`]: [`ModelGeometry`], what request validation needs to know about the models.
//! - [`request`]: [`GenerationRequest`] → [`ValidatedRequest`]; every user-input check and
//!   default (steps and guidance by sampler, two-pass upscaling), errors naming the field.
//! - [`aspect_bins`]: the aspect-ratio bin tables, bin selection, and the resize + centre crop
//!   back to the requested size.
//! - [`builtin`]: where the project's own built-in model lives.
//! - [`image`]: [`RgbImage`] and its PNG encoding and decoding.
//! - [`hub`]: hub ids (`owner/name`) fetched into and resolved in the standard HF cache.
//! - [`image_file`]: PNG encoding with the generation parameters, the sampler's name.
//! - [`noise`]: [`NoiseSource`] and the seeded default ([`SeededNoise`]).
//! - [`pipeline`]: [`generate`], the numbered steps, with progress events and cancellation
//!   (and the second passes of two-pass upscaling);
//!   [`denoise_step`], one guided sampler step.
//! - [`bench`]: the denoising loop with random weights, timed (`pixart bench denoise`).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod aspect_bins;
pub mod bench;
pub mod builtin;
pub mod components;
pub mod control;
pub mod geometry;
pub mod hub;
pub mod image;
pub mod image_file;
pub mod memory;
pub mod noise;
pub mod parameters;
pub mod pipeline;
pub mod request;
pub mod text;

pub use builtin::{builtin_model_dir, is_builtin};
pub use components::{ComponentOptions, ComponentPaths, PipelineComponents, ResolvedPaths, DEFAULT_BASE};
pub use control::ControlPreprocess;
pub use geometry::ModelGeometry;
pub use hub::{DownloadProgress, HubConfig};
pub use image::RgbImage;
pub use image_file::{encode_png, parameters_text, sampler_name, ImageFormat};
pub use noise::{random_seed, NoiseSource, SeededNoise};
pub use parameters::{read_parameters, Parameters};
pub use pipeline::{denoise_step, ensure_finite, generate, Generated, Output, Progress, Stage, Timings};
pub use request::{
    request_defaults, upscaled_size, ControlImage, GenerationRequest, InitImage, OutputKind, Previews, Upscale,
    UpscalePlan, VaeTiling, ValidatedRequest, DEFAULT_INPAINT_STRENGTH, DEFAULT_STRENGTH, DEFAULT_UPSCALE_STRENGTH,
    MAX_CONTROL_SCALE, MAX_GUIDANCE, MAX_IMAGES, MAX_SEQUENCE_LENGTH, MAX_SIDE, MAX_STEPS, MAX_UPSCALE,
};
pub use text::{TextFeatures, CACHED_TEXTS};
