//! Training data for PixArt-Σ.
//!
//! - [`records`]: the caption dataset (`train.jsonl`: image path, short and long caption).
//! - [`images`]: buckets (square, or aspect-ratio bins) and the resize + centre crop.
//! - [`extract`]: `pixart extract`, precomputing VAE posteriors and T5 features into
//!   safetensors shards plus `index.json` ([`index`]), resumable.
//! - [`dataset`]: [`FeatureDataset`], the in-memory reader the trainer draws batches from.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod dataset;
pub mod extract;
pub mod images;
pub mod index;
pub mod records;

pub use dataset::{Batch, BucketInfo, FeatureDataset};
pub use extract::{extract, ExtractEvent, ExtractOptions, ExtractSummary};
pub use images::{BucketMode, Buckets};
pub use index::Index;
pub use records::{read_captions, read_records, training_texts, Record};
