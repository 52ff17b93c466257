//! All of pixart-rs's hand-written compute, behind one dispatch layer.
//!
//! - [`ops`]: **the dispatch layer** the model crates call (`pixart-model`, `pixart-text`,
//!   `pixart-vae`). Each op decides once, from its inputs, where it runs ([`ops::Path`]): the
//!   project's CUDA kernel, the CPU kernel, the CPU kernel with a backward (training), or
//!   candle's composed ops (other devices and dtypes, and the reference the kernels are tested
//!   against).
//! - [`cpu`]: the CPU kernels: the f32 and bf16 GEMMs and their packing, fused attention, the
//!   row ops (softmax, GELU, LayerNorm + modulation, gated residual), T5's fused RMS norm and
//!   gated GELU, the VAE's convolutions and GroupNorm, and the ops with a backward.
//! - [`cuda`]: the CUDA kernels (`cuda/*.cu`, compiled to PTX by `build.rs` with the `cuda`
//!   feature; tested on the CPU under the host emulation `cuda/emulate.hpp`), their launch code,
//!   and the Linear layers as cuBLASLt calls.
//! - [`linear`]: [`Linear`], a drop-in for `candle_nn::Linear` on the native GEMMs, and the
//!   inference-only [`PackedLinear`].
//! - [`quant_linear`]: [`QuantLinear`] and [`QuantEmbedding`], layers whose weights stay
//!   quantized (GGUF block formats) in memory.
//! - [`checkpoint`]: gradient checkpointing (candle has none).
//! - [`profile`]: per-stage timings of a forward.
//!
//! A new kernel: the CPU version in `cpu/`, the CUDA one in `cuda/` (+ `cuda/*.cu`), one entry
//! in [`ops`] choosing between them and the composed reference, and a test against that
//! reference (docs/architecture.md).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod checkpoint;
pub mod cpu;
pub mod cuda;
pub mod linear;
pub mod ops;
pub mod profile;
pub mod quant_linear;

pub use cpu::contiguous_data;
pub use linear::{linear, linear_b, linear_no_bias, Linear, PackedLinear};
pub use quant_linear::{QuantEmbedding, QuantLinear};
