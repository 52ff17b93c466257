//! The PixArt-Σ diffusion transformer.
//!
//! - [`config`]: `transformer/config.json` ([`TransformerConfig`]) and the `kv_compress`
//!   extension ([`KvCompressConfig`]).
//! - [`embeddings`], [`attention`], [`block`], [`transformer`]: the model, one struct per
//!   diffusers module, fields named as the checkpoint keys.
//! - [`original`]: the original PixArt checkpoint layout (`blocks.{i}.attn.qkv`, ...) mapped
//!   to the diffusers one, and conversion between them.
//! - [`controlnet`]: PixArt-δ's ControlNet-Transformer (block copies feeding the first
//!   blocks), its adapter folder and the original `.pth` layout.
//! - [`init`]: fresh weights for training from scratch, initialised as PixArt does.
//! - [`loading`]: building a model from a folder or file, checking every tensor.
//!
//! All compute beyond candle's ops goes through `pixart_kernels::ops` (the dispatch layer).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![forbid(unsafe_code)]

pub mod attention;
pub mod bench;
pub mod block;
pub mod config;
pub mod controlnet;
pub mod embeddings;
pub mod init;
pub mod loading;
pub mod lora;
pub mod original;
pub mod transformer;

pub use config::{KvCompressConfig, KvSampling, TransformerConfig};
pub use controlnet::{load_controlnet, ControlNetConfig, LoadedControlNet, PixArtControlNetAdapter};
pub use embeddings::AddedCond;
pub use loading::{load_transformer, LoadOptions, LoadedTransformer};
/// Where checkpointed blocks put parameter gradients ([`PixArtTransformer::with_gradient_checkpointing`]).
pub use pixart_kernels::checkpoint::GradSink;
pub use transformer::{BuildReport, Context, Control, PixArtTransformer, Trace};
