//! The training dataset: a feature folder made by [`crate::extract`], held in memory.
//!
//! The whole folder is read at [`FeatureDataset::open`] (latent mean and std, both caption sets
//! and their masks as f32/u8 vectors per bucket): about `N · (2·C·h·w + (Ls + Ll)·D) · 4`
//! bytes, e.g. 20 000 images at 64 px with 8×8×4 latents, ~20 caption tokens and D = 256
//! take ~450 MB. That is fine for the project's synthetic datasets; larger ones would need
//! memory-mapped shards.
//!
//! Batches come from one bucket (all images of a batch share a size, as PixArt's
//! `AspectRatioBatchSampler`), chosen with probability proportional to its size. Each
//! sample's caption is its long caption with probability `long_caption_ratio` (PixArt-Σ's
//! `real_prompt_ratio` picks between the original and the dense caption the same way). Caption
//! tensors are padded with zeros (mask 0) to the longest caption of the dataset, so every
//! batch has the same `L`.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use pixart_core::{Error, Result};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::index::{Index, IndexRecord};

/// One caption set of a bucket: `n` rows of `tokens` positions.
#[derive(Debug, Clone)]
struct CaptionSet {
    tokens: usize,
    features: Vec<f32>,
    mask: Vec<u8>,
}

/// All samples of one bucket size.
#[derive(Debug, Clone)]
struct BucketData {
    height: usize,
    width: usize,
    /// Latent grid (h, w).
    latent: (usize, usize),
    n: usize,
    mean: Vec<f32>,
    std: Vec<f32>,
    short: CaptionSet,
    long: CaptionSet,
    /// Dataset sample ids of the rows.
    samples: Vec<usize>,
}

/// One bucket of the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketInfo {
    /// Image size in pixels.
    pub height: usize,
    pub width: usize,
    /// Latent size.
    pub latent_height: usize,
    pub latent_width: usize,
    /// Number of samples.
    pub len: usize,
}

/// A training batch (CPU tensors, f32).
#[derive(Debug, Clone)]
pub struct Batch {
    /// VAE posterior mean, unscaled: (B, C, h, w).
    pub latent_mean: Tensor,
    /// VAE posterior std: (B, C, h, w).
    pub latent_std: Tensor,
    /// T5 features of the chosen captions: (B, L, D).
    pub caption: Tensor,
    /// 1 for caption tokens, 0 for padding: (B, L) f32.
    pub mask: Tensor,
    /// Dataset sample id of each row (index into [`FeatureDataset::records`]).
    pub samples: Vec<usize>,
    /// Whether each row uses its long caption.
    pub long_caption: Vec<bool>,
    /// The bucket's image size in pixels.
    pub height: usize,
    pub width: usize,
}

/// The features of a folder made by `pixart extract`, in memory (see the module docs).
#[derive(Debug, Clone)]
pub struct FeatureDataset {
    dir: PathBuf,
    index: Index,
    buckets: Vec<BucketData>,
    /// Sample id -> (bucket, row in the bucket).
    locate: Vec<(usize, usize)>,
    records: Vec<IndexRecord>,
    tokens: usize,
    null_feature: Vec<f32>,
    null_mask: Vec<u8>,
}

fn take(map: &mut HashMap<String, Tensor>, path: &Path, name: &str, dims: &[usize], dtype: DType) -> Result<Tensor> {
    let t = map
        .remove(name)
        .ok_or_else(|| Error::weights(path, format!("missing tensor `{name}`")))?;
    if t.dims() != dims || t.dtype() != dtype {
        return Err(Error::weights(
            path,
            format!(
                "`{name}` is {:?} {:?}, expected {dtype:?} {dims:?}",
                t.dtype(),
                t.dims()
            ),
        ));
    }
    Ok(t)
}

fn f32s(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

fn u8s(t: &Tensor) -> Result<Vec<u8>> {
    Ok(t.flatten_all()?.to_vec1::<u8>()?)
}

/// Copies `n` rows of `tokens` positions into rows of `to` positions (zero padded).
fn widen<T: Copy + Default>(src: &[T], rows: usize, tokens: usize, width: usize, to: usize) -> Vec<T> {
    let mut out = vec![T::default(); rows * to * width];
    for r in 0..rows {
        out[r * to * width..(r * to + tokens) * width]
            .copy_from_slice(&src[r * tokens * width..(r + 1) * tokens * width]);
    }
    out
}

impl CaptionSet {
    fn empty() -> Self {
        Self {
            tokens: 0,
            features: Vec::new(),
            mask: Vec::new(),
        }
    }

    /// Appends `rows` rows of `tokens` positions, widening either side to the longer one.
    fn append(&mut self, rows_before: usize, rows: usize, tokens: usize, d: usize, feat: Vec<f32>, mask: Vec<u8>) {
        let to = self.tokens.max(tokens);
        if to > self.tokens {
            self.features = widen(&self.features, rows_before, self.tokens, d, to);
            self.mask = widen(&self.mask, rows_before, self.tokens, 1, to);
            self.tokens = to;
        }
        self.features.extend(widen(&feat, rows, tokens, d, to));
        self.mask.extend(widen(&mask, rows, tokens, 1, to));
    }
}

impl FeatureDataset {
    /// Reads and checks a feature folder: the index must be complete and every shard must hold
    /// the tensors, shapes and dtypes the index describes.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = Index::read(dir)?;
        let index_path = dir.join(crate::index::INDEX_FILE);
        if !index.complete {
            return Err(Error::config(
                &index_path,
                "the extraction is not finished: run `pixart extract` again with the same arguments to resume",
            ));
        }
        let (c, d, f) = (index.latent_channels, index.d_model, index.vae_downsample);
        if c == 0 || d == 0 || f == 0 {
            return Err(Error::config(
                &index_path,
                "latent_channels, d_model and vae_downsample must be positive",
            ));
        }
        let mut buckets: Vec<BucketData> = Vec::new();
        let mut by_shard_row: HashMap<(usize, usize), usize> = HashMap::new();
        for (i, r) in index.records.iter().enumerate() {
            by_shard_row.insert((r.shard, r.row), i);
        }
        let mut locate = vec![(usize::MAX, 0); index.records.len()];
        for (si, s) in index.shards.iter().enumerate() {
            if s.rows == 0 {
                continue;
            }
            let path = dir.join(&s.file);
            if !s.height.is_multiple_of(f) || !s.width.is_multiple_of(f) {
                return Err(Error::config(
                    &index_path,
                    format!("{}: bucket {}x{} is not a multiple of {f}", s.file, s.width, s.height),
                ));
            }
            let (lh, lw) = (s.height / f, s.width / f);
            let mut map = candle_core::safetensors::load(&path, &Device::Cpu)
                .map_err(|e| Error::weights(&path, format!("not a readable shard: {e}")))?;
            let n = s.rows;
            let mean = f32s(&take(&mut map, &path, "latent_mean", &[n, c, lh, lw], DType::F32)?)?;
            let std = f32s(&take(&mut map, &path, "latent_std", &[n, c, lh, lw], DType::F32)?)?;
            let sf = f32s(&take(
                &mut map,
                &path,
                "short_feature",
                &[n, s.short_tokens, d],
                DType::F32,
            )?)?;
            let sm = u8s(&take(&mut map, &path, "short_mask", &[n, s.short_tokens], DType::U8)?)?;
            let lf = f32s(&take(
                &mut map,
                &path,
                "long_feature",
                &[n, s.long_tokens, d],
                DType::F32,
            )?)?;
            let lm = u8s(&take(&mut map, &path, "long_mask", &[n, s.long_tokens], DType::U8)?)?;
            let bi = match buckets.iter().position(|b| (b.height, b.width) == (s.height, s.width)) {
                Some(bi) => bi,
                None => {
                    buckets.push(BucketData {
                        height: s.height,
                        width: s.width,
                        latent: (lh, lw),
                        n: 0,
                        mean: Vec::new(),
                        std: Vec::new(),
                        short: CaptionSet::empty(),
                        long: CaptionSet::empty(),
                        samples: Vec::new(),
                    });
                    buckets.len() - 1
                }
            };
            let b = &mut buckets[bi];
            for row in 0..n {
                let id = by_shard_row
                    .get(&(si, row))
                    .copied()
                    .ok_or_else(|| Error::config(&index_path, format!("no record for row {row} of {}", s.file)))?;
                locate[id] = (bi, b.n + row);
                b.samples.push(id);
            }
            b.mean.extend(mean);
            b.std.extend(std);
            b.short.append(b.n, n, s.short_tokens, d, sf, sm);
            b.long.append(b.n, n, s.long_tokens, d, lf, lm);
            b.n += n;
        }
        if let Some(id) = locate.iter().position(|l| l.0 == usize::MAX) {
            return Err(Error::config(
                &index_path,
                format!("record {} points to no shard row", index.records[id].source),
            ));
        }
        if buckets.is_empty() {
            return Err(Error::config(&index_path, "the folder holds no samples"));
        }
        let null_path = dir.join(&index.null_caption);
        let mut null = candle_core::safetensors::load(&null_path, &Device::Cpu)
            .map_err(|e| Error::weights(&null_path, format!("not readable: {e}")))?;
        let nt = null
            .get("mask")
            .map(|m| m.dims().last().copied().unwrap_or(0))
            .unwrap_or(0);
        let null_feature = f32s(&take(&mut null, &null_path, "feature", &[1, nt, d], DType::F32)?)?;
        let null_mask = u8s(&take(&mut null, &null_path, "mask", &[1, nt], DType::U8)?)?;
        let tokens = buckets
            .iter()
            .map(|b| b.short.tokens.max(b.long.tokens))
            .max()
            .unwrap_or(1)
            .max(nt);
        Ok(Self {
            dir: dir.to_path_buf(),
            records: index.records.clone(),
            index,
            buckets,
            locate,
            tokens,
            null_feature,
            null_mask,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.locate.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locate.is_empty()
    }

    /// The folder it was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The index (configuration, VAE scaling factor, ...).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Per-sample records (source image, bucket), indexed by sample id.
    pub fn records(&self) -> &[IndexRecord] {
        &self.records
    }

    /// The buckets, in order of first appearance.
    pub fn buckets(&self) -> Vec<BucketInfo> {
        self.buckets
            .iter()
            .map(|b| BucketInfo {
                height: b.height,
                width: b.width,
                latent_height: b.latent.0,
                latent_width: b.latent.1,
                len: b.n,
            })
            .collect()
    }

    /// `L` of every batch's caption tensors.
    pub fn caption_tokens(&self) -> usize {
        self.tokens
    }

    /// Width `D` of the caption features.
    pub fn d_model(&self) -> usize {
        self.index.d_model
    }

    /// The VAE's scaling factor (multiply sampled latents by it).
    pub fn scaling_factor(&self) -> f64 {
        self.index.scaling_factor
    }

    /// Features (1, L, D) and mask (1, L) f32 of the empty caption, padded to
    /// [`Self::caption_tokens`]: the T5 encoding diffusers uses for an empty negative prompt.
    pub fn null_caption(&self) -> Result<(Tensor, Tensor)> {
        let d = self.index.d_model;
        let nt = self.null_mask.len();
        let f = widen(&self.null_feature, 1, nt, d, self.tokens);
        let m: Vec<f32> = widen(&self.null_mask, 1, nt, 1, self.tokens)
            .into_iter()
            .map(f32::from)
            .collect();
        Ok((
            Tensor::from_vec(f, (1, self.tokens, d), &Device::Cpu)?,
            Tensor::from_vec(m, (1, self.tokens), &Device::Cpu)?,
        ))
    }

    /// A batch of `batch` samples from one bucket, drawn with probability proportional to its
    /// size; samples are drawn without replacement when the bucket holds at least `batch`,
    /// with replacement otherwise. Each caption is the long one with probability
    /// `long_caption_ratio`.
    pub fn sample_batch(&self, rng: &mut impl Rng, batch: usize, long_caption_ratio: f64) -> Result<Batch> {
        check_batch(batch, long_caption_ratio)?;
        let mut pick = rng.random_range(0..self.len());
        let mut bi = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            if pick < b.n {
                bi = i;
                break;
            }
            pick -= b.n;
        }
        let b = &self.buckets[bi];
        let rows: Vec<usize> = if b.n >= batch {
            rand::seq::index::sample(rng, b.n, batch).into_vec()
        } else {
            (0..batch).map(|_| rng.random_range(0..b.n)).collect()
        };
        let samples: Vec<usize> = rows.iter().map(|&r| b.samples[r]).collect();
        self.batch(&samples, rng, long_caption_ratio)
    }

    /// One epoch: every bucket's samples shuffled and cut into batches of `batch` (a bucket's
    /// last incomplete batch is dropped, as PixArt's `AspectRatioBatchSampler` never yields
    /// it), the batches shuffled. Feed each to [`Self::batch`].
    pub fn epoch(&self, rng: &mut impl Rng, batch: usize) -> Result<Vec<Vec<usize>>> {
        check_batch(batch, 0.0)?;
        let mut out = Vec::new();
        for b in &self.buckets {
            let mut ids = b.samples.clone();
            ids.shuffle(rng);
            out.extend(ids.chunks_exact(batch).map(|c| c.to_vec()));
        }
        out.shuffle(rng);
        Ok(out)
    }

    /// The batch of the given sample ids (all from one bucket).
    pub fn batch(&self, samples: &[usize], rng: &mut impl Rng, long_caption_ratio: f64) -> Result<Batch> {
        check_batch(samples.len(), long_caption_ratio)?;
        let mut bi = None;
        for &s in samples {
            let (b, _) = *self
                .locate
                .get(s)
                .ok_or_else(|| Error::InvalidInput(format!("sample {s} is out of range (0..{})", self.len())))?;
            if bi.is_some_and(|x| x != b) {
                return Err(Error::InvalidInput(
                    "a batch must take all its samples from one bucket".into(),
                ));
            }
            bi = Some(b);
        }
        let b = &self.buckets[bi.unwrap_or(0)];
        let (c, d, l) = (self.index.latent_channels, self.index.d_model, self.tokens);
        let per = c * b.latent.0 * b.latent.1;
        let n = samples.len();
        let mut mean = Vec::with_capacity(n * per);
        let mut std = Vec::with_capacity(n * per);
        let mut caption = vec![0f32; n * l * d];
        let mut mask = vec![0f32; n * l];
        let mut long_caption = Vec::with_capacity(n);
        for (i, &s) in samples.iter().enumerate() {
            let row = self.locate[s].1;
            mean.extend_from_slice(&b.mean[row * per..(row + 1) * per]);
            std.extend_from_slice(&b.std[row * per..(row + 1) * per]);
            let long = rng.random_bool(long_caption_ratio);
            long_caption.push(long);
            let set = if long { &b.long } else { &b.short };
            let t = set.tokens;
            caption[i * l * d..(i * l + t) * d].copy_from_slice(&set.features[row * t * d..(row + 1) * t * d]);
            for (dst, &m) in mask[i * l..i * l + t].iter_mut().zip(&set.mask[row * t..(row + 1) * t]) {
                *dst = f32::from(m);
            }
        }
        let dev = Device::Cpu;
        let (lh, lw) = b.latent;
        Ok(Batch {
            latent_mean: Tensor::from_vec(mean, (n, c, lh, lw), &dev)?,
            latent_std: Tensor::from_vec(std, (n, c, lh, lw), &dev)?,
            caption: Tensor::from_vec(caption, (n, l, d), &dev)?,
            mask: Tensor::from_vec(mask, (n, l), &dev)?,
            samples: samples.to_vec(),
            long_caption,
            height: b.height,
            width: b.width,
        })
    }
}

fn check_batch(batch: usize, ratio: f64) -> Result<()> {
    if batch == 0 {
        return Err(Error::InvalidInput("batch size must be at least 1".into()));
    }
    if !(0.0..=1.0).contains(&ratio) {
        return Err(Error::InvalidInput(format!(
            "long caption ratio {ratio} is not in [0, 1]"
        )));
    }
    Ok(())
}

/// The trainer's view ([`pixart_train::TrainData`]): batches without the bookkeeping fields.
impl pixart_train::TrainData for FeatureDataset {
    fn sample_batch(
        &self,
        rng: &mut rand::rngs::StdRng,
        batch: usize,
        long_caption_ratio: f64,
    ) -> Result<pixart_train::Batch> {
        let b = FeatureDataset::sample_batch(self, rng, batch, long_caption_ratio)?;
        Ok(pixart_train::Batch {
            latent_mean: b.latent_mean,
            latent_std: b.latent_std,
            caption: b.caption,
            mask: b.mask,
        })
    }

    fn len(&self) -> usize {
        FeatureDataset::len(self)
    }

    fn scaling_factor(&self) -> Option<f64> {
        Some(self.index.scaling_factor)
    }
}
