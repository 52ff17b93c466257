//! Shared pieces of pixart-rs.
//!
//! - [`error`]: the library error type ([`Error`]), used by every pixart crate.
//! - [`weights`]: reading weight files (safetensors, sharded safetensors, PyTorch `.pth`) into
//!   named tensors, and [`weights::CheckedWeights`], a `VarBuilder` backend that checks a file
//!   against what a model asks for and reports every missing, mis-shaped and unexpected tensor
//!   at once.
//! - [`gguf`]: GGUF files (v2, v3): a bounds-checked reader over a memory map, and a writer.
//! - [`files`]: atomic writes (temp file + rename), also re-exported from [`weights`].
//! - [`config`]: reading JSON config files with errors that name the file.
//! - [`mem`]: peak resident memory, for benchmarks.
//! - [`mask`]: reading tokenizer attention masks (prefix lengths).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;
pub mod device;
pub mod error;
pub mod files;
pub mod gguf;
pub mod mask;
pub mod mem;
pub mod testing;
pub mod weights;

pub use error::{Error, Field, Result};
