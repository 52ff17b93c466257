//! The PixArt-Σ diffusion transformer.
//!
//! - [`config`]: `transformer/config.json` ([`TransformerConfig`]) and the `kv_compress`
//!   extension ([`KvCompressConfig`]).
//! - [`embeddings`], [`attention`], [`block`], [`transformer`]: the model, one struct per
//!   diffusers module, fields named as the checkpoint keys.
//! - [`original`]: the original PixArt checkpoint layout (`blocks.{i}.attn.qkv`, ...) mapped
//!   to the diffusers one, and conversion between them.
//! - [`init`]: fresh weights for training from scratch, initialised as PixArt does.
//! - [`loading`]: building a model from a folder or file, checking every tensor.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod attention;
pub mod bench;
pub mod block;
pub mod checkpointing;
pub mod config;
pub mod cuda;
pub mod embeddings;
pub mod grad_ops;
pub mod init;
pub mod kernels;
pub mod loading;
pub mod lora;
pub mod ops;
pub mod original;
pub mod profile;
pub mod transformer;

pub use config::{KvCompressConfig, KvSampling, TransformerConfig};
pub use embeddings::AddedCond;
pub use loading::{load_transformer, LoadOptions, LoadedTransformer};
pub use transformer::{BuildReport, Context, PixArtTransformer, Trace};
