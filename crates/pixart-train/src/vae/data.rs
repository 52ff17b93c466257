//! Training images: read from a JSON-lines list, resized and centre-cropped to the training
//! size, kept in memory as RGB bytes; batches in a seeded order that depends only on the seed
//! and the step (so a resumed run sees exactly the batches it would have seen).
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use pixart_core::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

/// A record of the data list: `{"path": ...}`, other keys ignored.
#[derive(Debug, serde::Deserialize)]
struct Record {
    path: PathBuf,
}

/// The images of a data list.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// n × size × size × 3 bytes, RGB, row-major.
    pixels: Vec<u8>,
    size: usize,
    len: usize,
    /// The files skipped as unreadable, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Reads and decodes one image, resized so that its shorter side is `size` (triangle filter)
/// and centre-cropped to size × size; RGB bytes.
pub fn load_image(path: &Path, size: usize) -> std::result::Result<Vec<u8>, String> {
    let img = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?
        .to_rgb8();
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err("empty image".into());
    }
    let s = size as u32;
    let img = if (w, h) == (s, s) {
        img
    } else {
        let scale = s as f64 / w.min(h) as f64;
        let (nw, nh) = (
            ((w as f64 * scale).round() as u32).max(s),
            ((h as f64 * scale).round() as u32).max(s),
        );
        let resized = image::imageops::resize(&img, nw, nh, FilterType::Triangle);
        image::imageops::crop_imm(&resized, (nw - s) / 2, (nh - s) / 2, s, s).to_image()
    };
    Ok(img.into_raw())
}

impl Dataset {
    /// Reads every image listed in `jsonl` (paths relative to its folder) at `size`. A record
    /// that is not JSON with a `path` is an error (naming the line); an unreadable image is
    /// skipped and listed in [`Dataset::skipped`]. `progress(done, total)` as images are decoded.
    pub fn load(jsonl: &Path, size: usize, progress: &mut dyn FnMut(usize, usize)) -> Result<Self> {
        let text = std::fs::read_to_string(jsonl).map_err(|e| Error::io(jsonl, e))?;
        let base = jsonl.parent().unwrap_or(Path::new(""));
        let mut paths = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let r: Record = serde_json::from_str(line)
                .map_err(|e| Error::config(jsonl, format!("line {}: not a record with a `path`: {e}", i + 1)))?;
            paths.push(base.join(r.path));
        }
        if paths.is_empty() {
            return Err(Error::config(jsonl, "no records"));
        }
        let total = paths.len();
        // Decoded in parallel, in blocks, reporting progress between blocks.
        let mut decoded: Vec<std::result::Result<Vec<u8>, String>> = Vec::with_capacity(total);
        for block in paths.chunks(256) {
            decoded.extend(block.par_iter().map(|p| load_image(p, size)).collect::<Vec<_>>());
            progress(decoded.len(), total);
        }
        let mut pixels = Vec::with_capacity(total * size * size * 3);
        let mut skipped = Vec::new();
        let mut len = 0;
        for (p, r) in paths.into_iter().zip(decoded) {
            match r {
                Ok(px) => {
                    pixels.extend_from_slice(&px);
                    len += 1;
                }
                Err(e) => skipped.push((p, e)),
            }
        }
        if len == 0 {
            return Err(Error::config(
                jsonl,
                format!(
                    "none of the {total} images could be read (first: {})",
                    skipped_msg(&skipped)
                ),
            ));
        }
        Ok(Self {
            pixels,
            size,
            len,
            skipped,
        })
    }

    /// From RGB bytes (n × size × size × 3).
    pub fn from_pixels(pixels: Vec<u8>, size: usize) -> Result<Self> {
        let per = size * size * 3;
        if per == 0 || pixels.is_empty() || !pixels.len().is_multiple_of(per) {
            return Err(Error::InvalidInput(format!(
                "{} bytes are not whole {size}x{size} RGB images",
                pixels.len()
            )));
        }
        Ok(Self {
            len: pixels.len() / per,
            pixels,
            size,
            skipped: Vec::new(),
        })
    }

    /// Images held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Images `indices` as a (b, 3, size, size) f32 tensor in [-1, 1].
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<Tensor> {
        let s = self.size;
        let per = s * s * 3;
        let mut v = Vec::with_capacity(indices.len() * per);
        for &i in indices {
            let px = self
                .pixels
                .get(i * per..(i + 1) * per)
                .ok_or_else(|| Error::InvalidInput(format!("image {i} of {}", self.len)))?;
            // (size, size, 3) bytes -> (3, size, size) in [-1, 1]
            for c in 0..3 {
                v.extend(px.iter().skip(c).step_by(3).map(|&b| b as f32 / 127.5 - 1.0));
            }
        }
        Ok(Tensor::from_vec(v, (indices.len(), 3, s, s), device)?)
    }
}

fn skipped_msg(skipped: &[(PathBuf, String)]) -> String {
    skipped
        .first()
        .map(|(p, e)| format!("{}: {e}", p.display()))
        .unwrap_or_default()
}

/// A seed derived from `seed` and a stream tag and index (SplitMix64 finaliser), so that
/// independent streams (data order per epoch, noise per step) never share a generator.
pub fn derive_seed(seed: u64, stream: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(index.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Stream tags for [`derive_seed`].
pub const STREAM_ORDER: u64 = 1;
pub const STREAM_NOISE: u64 = 2;
pub const STREAM_INIT: u64 = 3;

/// The data order: epoch e is a permutation of 0..n shuffled with a generator seeded from
/// (seed, e); the batch of step s holds the samples s·b .. s·b + b of the concatenated epochs.
#[derive(Debug, Clone)]
pub struct Order {
    seed: u64,
    n: usize,
    epoch: u64,
    perm: Vec<usize>,
}

impl Order {
    pub fn new(seed: u64, n: usize) -> Self {
        let mut o = Self {
            seed,
            n,
            epoch: 0,
            perm: Vec::new(),
        };
        o.shuffle(0);
        o
    }

    fn shuffle(&mut self, epoch: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(derive_seed(self.seed, STREAM_ORDER, epoch));
        self.perm = (0..self.n).collect();
        self.perm.shuffle(&mut rng);
        self.epoch = epoch;
    }

    /// The dataset indices of the batch of `step` (0-based) with `batch` samples.
    pub fn batch(&mut self, step: u64, batch: usize) -> Vec<usize> {
        let n = self.n.max(1) as u64;
        (0..batch as u64)
            .map(|i| {
                let pos = step * batch as u64 + i;
                let epoch = pos / n;
                if epoch != self.epoch {
                    self.shuffle(epoch);
                }
                self.perm[(pos % n) as usize]
            })
            .collect()
    }
}

/// Standard-normal noise of `shape` from a generator seeded with `seed` (candle's CPU `randn`
/// cannot be seeded).
pub fn seeded_normal(seed: u64, shape: &[usize], device: &Device) -> Result<Tensor> {
    use rand_distr::Distribution;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rand_distr::StandardNormal.sample(&mut rng)).collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}
