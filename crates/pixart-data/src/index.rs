//! `index.json` of a feature folder: the configuration it was made with, the shards (one
//! bucket size each) and where each source image went.
use std::path::Path;

use pixart_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::images::BucketMode;

/// Version of the folder layout.
pub const FORMAT_VERSION: u32 = 1;

/// The file name of the index in a feature folder.
pub const INDEX_FILE: &str = "index.json";

/// The file holding the T5 features of the empty caption (`feature` [1, 1, D] f32, `mask`
/// [1, 1] u8): what diffusers encodes for an empty negative prompt, for caption dropout.
pub const NULL_CAPTION_FILE: &str = "null.safetensors";

/// What the features were made with. A rerun resumes only with an identical configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractConfig {
    /// The captions file (absolute path).
    pub data: String,
    /// The VAE folder (absolute path).
    pub vae: String,
    /// The text encoder folder (absolute path).
    pub text_encoder: String,
    /// The tokenizer folder (absolute path).
    pub tokenizer: String,
    /// Side of the square bucket (or of the 1:1 bin).
    pub resolution: usize,
    pub buckets: BucketMode,
    /// Tokens per caption, `</s>` included (longer captions are truncated).
    pub max_length: usize,
    /// Images per shard (at most).
    pub shard_size: usize,
    /// Compute dtype of the VAE and the text encoder (the files always hold f32).
    pub dtype: String,
    /// How captions were preprocessed before tokenisation.
    pub caption_preprocessing: String,
}

/// One shard file: all its rows share one bucket size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// File name inside the folder (`shard-00000.safetensors`).
    pub file: String,
    /// Bucket size in pixels.
    pub height: usize,
    pub width: usize,
    /// The source images assigned to this shard, in row order (unreadable ones are skipped,
    /// so the shard may hold fewer rows).
    pub planned: Vec<String>,
    /// Rows written (0 until done).
    pub rows: usize,
    /// Token positions stored per short / long caption (the longest caption of the shard).
    pub short_tokens: usize,
    pub long_tokens: usize,
    /// Whether the shard file is complete.
    pub done: bool,
}

/// Where one source image went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexRecord {
    /// `path` as in the captions file.
    pub source: String,
    /// Index into [`Index::shards`].
    pub shard: usize,
    pub row: usize,
    /// Bucket size in pixels.
    pub height: usize,
    pub width: usize,
}

/// A source image that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkippedImage {
    pub source: String,
    pub reason: String,
}

/// `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    pub config: ExtractConfig,
    /// The VAE's `scaling_factor`: the trainer multiplies sampled latents by it.
    pub scaling_factor: f64,
    /// The VAE's `shift_factor` (null for the SDXL VAE): latents = (z − shift) · scale.
    pub shift_factor: Option<f64>,
    pub latent_channels: usize,
    /// Image pixels per latent pixel.
    pub vae_downsample: usize,
    /// Width of the caption features (the text encoder's `d_model`).
    pub d_model: usize,
    /// [`NULL_CAPTION_FILE`].
    pub null_caption: String,
    pub shards: Vec<ShardEntry>,
    pub records: Vec<IndexRecord>,
    pub skipped: Vec<SkippedImage>,
    /// True once every shard is done.
    pub complete: bool,
}

impl Index {
    /// Reads `dir/index.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(INDEX_FILE);
        if !path.is_file() {
            return Err(Error::config(
                &path,
                "no index: not a feature folder (make one with `pixart extract`)",
            ));
        }
        let index: Self = pixart_core::config::read_json(&path)?;
        if index.format != FORMAT_VERSION {
            return Err(Error::config(
                &path,
                format!("format {} is not supported (expected {FORMAT_VERSION})", index.format),
            ));
        }
        Ok(index)
    }

    /// Writes `dir/index.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        pixart_core::config::write_json(&dir.join(INDEX_FILE), self)
    }

    /// `(height, width, rows)` of every bucket, in order of first appearance.
    pub fn bucket_sizes(&self) -> Vec<(usize, usize, usize)> {
        let mut out: Vec<(usize, usize, usize)> = Vec::new();
        for s in self.shards.iter().filter(|s| s.rows > 0) {
            match out.iter_mut().find(|b| (b.0, b.1) == (s.height, s.width)) {
                Some(b) => b.2 += s.rows,
                None => out.push((s.height, s.width, s.rows)),
            }
        }
        out
    }
}

/// The file name of shard `i`.
pub fn shard_file(i: usize) -> String {
    format!("shard-{i:05}.safetensors")
}
