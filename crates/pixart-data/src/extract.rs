//! `pixart extract`: precomputes what training reads, as PixArt's feature extraction does
//! (spec §6.3): per image the VAE posterior mean and std of the bucketed image, per caption
//! (short and long) the T5 features and mask.
//!
//! The plan is deterministic: records are read in file order, grouped by bucket (in order of
//! first appearance) and cut into shards of at most `shard_size` rows. Each shard is written
//! atomically, then the index; a rerun with the same configuration skips the shards the index
//! marks done. Images whose header cannot be read are left out of the plan; images that fail
//! to decode are skipped when their shard is made; both are listed in the index and counted.
//!
//! Caption features: each caption is preprocessed as diffusers does (lower-cased, stripped),
//! tokenised to at most `max_length` tokens (`</s>` included) and encoded; a shard stores
//! `L` = its longest caption's token count positions, the features of the valid tokens and
//! zeros (mask 0) after them. The padded positions are masked in the transformer's cross
//! attention, so this equals storing `max_length` positions.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use pixart_core::{Error, Result};
use pixart_text::{T5Encoder, T5Tokenizer};
use pixart_vae::{AutoencoderKl, Tiling};

use crate::images::{image_size, load_rgb, resize_cover_crop, to_unit_range, BucketMode, Buckets};
use crate::index::{
    shard_file, ExtractConfig, Index, IndexRecord, ShardEntry, SkippedImage, FORMAT_VERSION, NULL_CAPTION_FILE,
};
use crate::records::{read_records, Record};

/// What [`extract`] needs.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    pub data: PathBuf,
    pub vae: PathBuf,
    pub text_encoder: PathBuf,
    pub tokenizer: PathBuf,
    pub out: PathBuf,
    pub resolution: usize,
    pub buckets: BucketMode,
    pub max_length: usize,
    /// Images (and captions) per forward pass.
    pub batch: usize,
    pub shard_size: usize,
    /// Compute dtype (f32 or bf16); the files hold f32.
    pub dtype: DType,
    pub device: Device,
}

/// Progress reports of [`extract`].
#[derive(Debug, Clone, PartialEq)]
pub enum ExtractEvent {
    /// The plan: images in it, shards, shards already done, images left out (unreadable).
    Planned {
        images: usize,
        shards: usize,
        done_shards: usize,
        to_process: usize,
        unreadable: usize,
    },
    /// `done` of the `total` images of this run's shards processed.
    Images { done: usize, total: usize },
    /// An image was skipped.
    Skipped { source: String, reason: String },
    /// A shard was written.
    ShardWritten {
        file: String,
        rows: usize,
        height: usize,
        width: usize,
        seconds: f64,
    },
}

/// What [`extract`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractSummary {
    /// Records in the captions file.
    pub records: usize,
    /// Images encoded in this run.
    pub extracted: usize,
    /// Images found in shards done by an earlier run.
    pub reused: usize,
    /// Images skipped (unreadable header or undecodable), over all runs.
    pub skipped: usize,
    pub shards_written: usize,
    pub shards_reused: usize,
    /// Captions longer than `max_length` tokens (cut) in this run.
    pub truncated_captions: usize,
    /// `(height, width, images)` per bucket.
    pub buckets: Vec<(usize, usize, usize)>,
    pub seconds: f64,
}

fn absolute(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// The models and settings used for every shard.
struct Encoders {
    vae: AutoencoderKl,
    t5: T5Encoder,
    tokenizer: T5Tokenizer,
    max_length: usize,
    batch: usize,
}

/// One caption set of a shard: (rows, tokens, d) features and (rows, tokens) mask.
struct Captions {
    features: Vec<f32>,
    mask: Vec<u8>,
    tokens: usize,
    truncated: usize,
}

impl Encoders {
    /// Encodes captions (preprocessed here) in batches; see the module docs for the layout.
    fn captions(&self, texts: &[&str]) -> Result<Captions> {
        let d = self.t5.config().d_model;
        let mut encs = Vec::with_capacity(texts.len());
        let mut truncated = 0;
        for t in texts {
            let e = self
                .tokenizer
                .encode(&pixart_text::preprocess_caption(t, false), self.max_length)?;
            truncated += usize::from(e.truncated > 0);
            encs.push(e);
        }
        let tokens = encs.iter().map(|e| e.len()).max().unwrap_or(1).max(1);
        let n = texts.len();
        let mut features = vec![0f32; n * tokens * d];
        let mut mask = vec![0u8; n * tokens];
        for (c, chunk) in encs.chunks(self.batch).enumerate() {
            let lb = chunk.iter().map(|e| e.len()).max().unwrap_or(1);
            let b = chunk.len();
            let ids: Vec<u32> = chunk.iter().flat_map(|e| e.ids[..lb].iter().copied()).collect();
            let m: Vec<u32> = chunk
                .iter()
                .flat_map(|e| e.attention_mask[..lb].iter().copied())
                .collect();
            let dev = self.t5.device();
            let ids = Tensor::from_vec(ids, (b, lb), dev)?;
            let m = Tensor::from_vec(m, (b, lb), dev)?;
            let y = self.t5.forward(&ids, Some(&m))?; // (b, lb, d)
            let y = y
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (j, e) in chunk.iter().enumerate() {
                let row = c * self.batch + j;
                let valid = e.len();
                let src = &y[j * lb * d..(j * lb + valid) * d];
                features[row * tokens * d..(row * tokens + valid) * d].copy_from_slice(src);
                mask[row * tokens..row * tokens + valid].fill(1);
            }
        }
        Ok(Captions {
            features,
            mask,
            tokens,
            truncated,
        })
    }

    /// VAE posterior mean and std of (n, 3, h, w) images in [−1, 1], in batches.
    fn latents(&self, pixels: &[f32], n: usize, (h, w): (usize, usize)) -> Result<(Tensor, Tensor)> {
        let per = 3 * h * w;
        let mut means = Vec::new();
        let mut stds = Vec::new();
        if pixels.len() != n * per {
            return Err(Error::Shape(format!(
                "{} pixel values for {n} images of {h}x{w}",
                pixels.len()
            )));
        }
        for chunk in pixels.chunks(self.batch * per) {
            let b = chunk.len() / per;
            let x = Tensor::from_slice(chunk, (b, 3, h, w), self.vae.device())?;
            let post = self.vae.encode(&x, Tiling::Auto)?;
            means.push(post.mean.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
            stds.push(post.std.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
        }
        Ok((Tensor::cat(&means, 0)?, Tensor::cat(&stds, 0)?))
    }
}

/// The largest image side (`resolution`) extraction accepts.
pub const MAX_RESOLUTION: usize = 4096;
/// The smallest.
pub const MIN_RESOLUTION: usize = 8;
/// The most tokens per caption (PixArt-Σ uses 300).
pub const MAX_LENGTH: usize = 4096;

fn check_options(o: &ExtractOptions) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidInput(m));
    if !(1..=MAX_LENGTH).contains(&o.max_length) {
        return bad(format!(
            "max length {} must be between 1 and {MAX_LENGTH}",
            o.max_length
        ));
    }
    if !(MIN_RESOLUTION..=MAX_RESOLUTION).contains(&o.resolution) {
        return bad(format!(
            "resolution {} must be between {MIN_RESOLUTION} and {MAX_RESOLUTION}",
            o.resolution
        ));
    }
    if o.batch == 0 {
        return bad("batch must be at least 1".into());
    }
    if o.shard_size == 0 {
        return bad("shard size must be at least 1".into());
    }
    if !matches!(o.dtype, DType::F32 | DType::BF16) {
        return bad(format!("dtype {:?}: extraction runs in f32 or bf16", o.dtype));
    }
    Ok(())
}

/// A planned shard: its bucket `(height, width)` and the record indices it holds.
type PlannedShard = ((usize, usize), Vec<usize>);

/// The shards of the plan: `(bucket, sources)` in order (see the module docs), plus the
/// records whose header could not be read.
fn plan(records: &[Record], buckets: &Buckets, shard_size: usize) -> (Vec<PlannedShard>, Vec<SkippedImage>) {
    let mut groups: Vec<PlannedShard> = Vec::new();
    let mut skipped = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let bucket = image_size(&r.image).and_then(|(h, w)| buckets.bucket_for(h, w));
        match bucket {
            Ok(b) => match groups.iter_mut().find(|g| g.0 == b) {
                Some(g) => g.1.push(i),
                None => groups.push((b, vec![i])),
            },
            Err(e) => skipped.push(SkippedImage {
                source: r.source.clone(),
                reason: e.to_string(),
            }),
        }
    }
    let shards = groups
        .into_iter()
        .flat_map(|(b, ids)| ids.chunks(shard_size).map(|c| (b, c.to_vec())).collect::<Vec<_>>())
        .collect();
    (shards, skipped)
}

fn write_null_caption(enc: &Encoders, out: &Path) -> Result<()> {
    let path = out.join(NULL_CAPTION_FILE);
    if path.is_file() {
        return Ok(());
    }
    let c = enc.captions(&[""])?;
    let d = enc.t5.config().d_model;
    let map = HashMap::from([
        (
            "feature".to_string(),
            Tensor::from_vec(c.features, (1, c.tokens, d), &Device::Cpu)?,
        ),
        (
            "mask".to_string(),
            Tensor::from_vec(c.mask, (1, c.tokens), &Device::Cpu)?,
        ),
    ]);
    pixart_core::weights::save_safetensors(&map, &path)
}

/// Runs the extraction (see the module docs), reporting progress through `on_event`.
pub fn extract(opts: &ExtractOptions, on_event: &mut dyn FnMut(ExtractEvent)) -> Result<ExtractSummary> {
    let t0 = Instant::now();
    check_options(opts)?;
    let records = read_records(&opts.data)?;
    let vae = pixart_vae::load_vae(&opts.vae, opts.dtype, &opts.device)?;
    let factor = vae.downsample_factor();
    let buckets = Buckets::new(opts.buckets, opts.resolution, 2 * factor)?;
    let tokenizer = T5Tokenizer::from_dir(&opts.tokenizer)?;
    let t5 = pixart_text::load_text_encoder(&opts.text_encoder, opts.dtype, &opts.device)?;
    if tokenizer.vocab_size() > t5.config().vocab_size {
        return Err(Error::InvalidInput(format!(
            "the tokenizer in {} has {} tokens but the text encoder in {} only {} embeddings",
            opts.tokenizer.display(),
            tokenizer.vocab_size(),
            opts.text_encoder.display(),
            t5.config().vocab_size
        )));
    }
    let config = ExtractConfig {
        data: absolute(&opts.data),
        vae: absolute(&opts.vae),
        text_encoder: absolute(&opts.text_encoder),
        tokenizer: absolute(&opts.tokenizer),
        resolution: opts.resolution,
        buckets: opts.buckets,
        max_length: opts.max_length,
        shard_size: opts.shard_size,
        dtype: pixart_core::device::dtype_name(opts.dtype).to_string(),
        caption_preprocessing: "lower-case and strip (diffusers without clean_caption)".into(),
    };
    let (shards, unreadable) = plan(&records, &buckets, opts.shard_size);
    if shards.is_empty() {
        // Nothing written: a rerun after fixing the images starts afresh.
        return Err(no_readable_images(&opts.data, unreadable.len()));
    }
    let planned: Vec<ShardEntry> = shards
        .iter()
        .enumerate()
        .map(|(i, ((h, w), ids))| ShardEntry {
            file: shard_file(i),
            height: *h,
            width: *w,
            planned: ids.iter().map(|&r| records[r].source.clone()).collect(),
            rows: 0,
            short_tokens: 0,
            long_tokens: 0,
            done: false,
        })
        .collect();
    let created_out = !opts.out.exists();
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let index_path = opts.out.join(crate::index::INDEX_FILE);
    let mut index = if index_path.is_file() {
        let old = Index::read(&opts.out)?;
        resume_from(old, &config, &planned, &opts.out)?
    } else {
        Index {
            format: FORMAT_VERSION,
            config,
            scaling_factor: vae.config().scaling_factor,
            shift_factor: vae.config().shift_factor,
            latent_channels: vae.config().latent_channels,
            vae_downsample: factor,
            d_model: t5.config().d_model,
            null_caption: NULL_CAPTION_FILE.into(),
            shards: planned,
            records: Vec::new(),
            skipped: Vec::new(),
            complete: false,
        }
    };
    // Header failures are re-found by every run's plan; decode failures come from the index.
    index
        .skipped
        .retain(|s| !unreadable.iter().any(|u| u.source == s.source));
    index.skipped.extend(unreadable.iter().cloned());
    index.skipped.sort_by(|a, b| a.source.cmp(&b.source));
    for s in &unreadable {
        on_event(ExtractEvent::Skipped {
            source: s.source.clone(),
            reason: s.reason.clone(),
        });
    }
    let enc = Encoders {
        vae,
        t5,
        tokenizer,
        max_length: opts.max_length,
        batch: opts.batch,
    };
    write_null_caption(&enc, &opts.out)?;
    let todo: Vec<usize> = (0..index.shards.len()).filter(|&i| !index.shards[i].done).collect();
    let total: usize = todo.iter().map(|&i| index.shards[i].planned.len()).sum();
    let reused: usize = index.shards.iter().filter(|s| s.done).map(|s| s.rows).sum();
    on_event(ExtractEvent::Planned {
        images: shards.iter().map(|s| s.1.len()).sum(),
        shards: index.shards.len(),
        done_shards: index.shards.len() - todo.len(),
        to_process: total,
        unreadable: unreadable.len(),
    });
    index.write(&opts.out)?;
    let mut done = 0;
    let mut extracted = 0;
    let mut truncated = 0;
    for &si in &todo {
        let ts = Instant::now();
        let ids = &shards[si].1;
        let (h, w) = shards[si].0;
        let mut kept: Vec<&Record> = Vec::new();
        let mut pixels: Vec<f32> = Vec::new();
        index
            .skipped
            .retain(|s| !ids.iter().any(|&r| records[r].source == s.source));
        for &r in ids {
            let rec = &records[r];
            match load_rgb(&rec.image) {
                Ok(img) => {
                    pixels.extend(to_unit_range(&resize_cover_crop(&img, (h, w))));
                    kept.push(rec);
                }
                Err(e) => {
                    let reason = e.to_string();
                    on_event(ExtractEvent::Skipped {
                        source: rec.source.clone(),
                        reason: reason.clone(),
                    });
                    index.skipped.retain(|s| s.source != rec.source);
                    index.skipped.push(SkippedImage {
                        source: rec.source.clone(),
                        reason,
                    });
                }
            }
        }
        let file = index.shards[si].file.clone();
        let n = kept.len();
        let (mut short_tokens, mut long_tokens) = (0, 0);
        if n > 0 {
            let mut tensors = HashMap::new();
            for (name, texts) in [
                ("short", kept.iter().map(|r| r.caption.as_str()).collect::<Vec<_>>()),
                ("long", kept.iter().map(|r| r.long_caption.as_str()).collect::<Vec<_>>()),
            ] {
                let c = enc.captions(&texts)?;
                truncated += c.truncated;
                let d = enc.t5.config().d_model;
                if name == "short" {
                    short_tokens = c.tokens;
                } else {
                    long_tokens = c.tokens;
                }
                tensors.insert(
                    format!("{name}_feature"),
                    Tensor::from_vec(c.features, (n, c.tokens, d), &Device::Cpu)?,
                );
                tensors.insert(
                    format!("{name}_mask"),
                    Tensor::from_vec(c.mask, (n, c.tokens), &Device::Cpu)?,
                );
            }
            let (mean, std) = enc.latents(&pixels, n, (h, w))?;
            tensors.insert("latent_mean".into(), mean);
            tensors.insert("latent_std".into(), std);
            pixart_core::weights::save_safetensors(&tensors, &opts.out.join(&file))?;
        }
        index.records.retain(|r| r.shard != si);
        index
            .records
            .extend(kept.iter().enumerate().map(|(row, r)| IndexRecord {
                source: r.source.clone(),
                shard: si,
                row,
                height: h,
                width: w,
            }));
        index.records.sort_by_key(|r| (r.shard, r.row));
        index.skipped.sort_by(|a, b| a.source.cmp(&b.source));
        let entry = &mut index.shards[si];
        entry.rows = n;
        entry.short_tokens = short_tokens;
        entry.long_tokens = long_tokens;
        entry.done = true;
        index.complete = index.shards.iter().all(|s| s.done);
        index.write(&opts.out)?;
        extracted += n;
        done += ids.len();
        on_event(ExtractEvent::Images { done, total });
        on_event(ExtractEvent::ShardWritten {
            file,
            rows: n,
            height: h,
            width: w,
            seconds: ts.elapsed().as_secs_f64(),
        });
    }
    if todo.is_empty() && !index.complete {
        index.complete = true;
        index.write(&opts.out)?;
    }
    if index.records.is_empty() {
        // Every image failed to decode: leave no index (a rerun would take its empty shards
        // as done) and no folder this run made.
        let _ = std::fs::remove_file(&index_path);
        let _ = std::fs::remove_file(opts.out.join(NULL_CAPTION_FILE));
        if created_out {
            let _ = std::fs::remove_dir(&opts.out);
        }
        return Err(no_readable_images(&opts.data, index.skipped.len()));
    }
    Ok(ExtractSummary {
        records: records.len(),
        extracted,
        reused,
        skipped: index.skipped.len(),
        shards_written: todo.len(),
        shards_reused: index.shards.len() - todo.len(),
        truncated_captions: truncated,
        buckets: index.bucket_sizes(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The error when no image of `data` could be read (a run-time failure, not a usage error).
fn no_readable_images(data: &Path, skipped: usize) -> Error {
    Error::io(
        data,
        std::io::Error::other(format!("no readable images ({skipped} skipped)")),
    )
}

/// Checks that an existing index was made with `config` and the same plan, and marks shards
/// whose file went missing as not done.
fn resume_from(mut old: Index, config: &ExtractConfig, planned: &[ShardEntry], out: &Path) -> Result<Index> {
    let path = out.join(crate::index::INDEX_FILE);
    if &old.config != config {
        let a = serde_json::to_value(&old.config).unwrap_or_default();
        let b = serde_json::to_value(config).unwrap_or_default();
        let differs: Vec<String> = match (a.as_object(), b.as_object()) {
            (Some(a), Some(b)) => a
                .iter()
                .filter(|(k, v)| b.get(k.as_str()) != Some(v))
                .map(|(k, v)| format!("{k} was {v}"))
                .collect(),
            _ => Vec::new(),
        };
        return Err(Error::config(
            &path,
            format!(
                "this folder was made with another configuration ({}); use another --out",
                differs.join(", ")
            ),
        ));
    }
    let same_plan = old.shards.len() == planned.len()
        && old
            .shards
            .iter()
            .zip(planned)
            .all(|(a, b)| a.file == b.file && (a.height, a.width) == (b.height, b.width) && a.planned == b.planned);
    if !same_plan {
        return Err(Error::config(
            &path,
            "the images or captions changed since this folder was made (the shard plan differs); use another --out",
        ));
    }
    for (i, s) in old.shards.iter_mut().enumerate() {
        // A shard cut short (a full disk, a copy interrupted) is as good as missing.
        let file = out.join(&s.file);
        if s.done && s.rows > 0 && pixart_core::weights::WeightFile::open(&file).is_err() {
            log::warn!("{}: missing or unreadable, extracting it again", file.display());
            s.done = false;
            s.rows = 0;
            old.records.retain(|r| r.shard != i);
        }
    }
    Ok(old)
}
