//! Tiled decoding and encoding: the latent is cut into overlapping square tiles, each is run
//! through the model on its own, and the results are blended linearly across the overlaps.
//!
//! This follows diffusers' `AutoencoderKL.tiled_decode` / `_tiled_encode`
//! (`models/autoencoders/autoencoder_kl.py`, 0.42.1): tiles overlap and are cross-faded with
//! linear ramps. It differs in the bookkeeping: the last tile of a row or column is aligned with
//! the border (so every tile has the full size and none is a thin sliver), and the blend is a
//! weighted average whose weights are linear ramps over each overlap, normalised so that they
//! sum to one everywhere (separable, so the normalisation is done per axis).
use pixart_core::{Error, Result};

/// Tile size and overlap, in latent pixels (one latent pixel is `downsample_factor` image
/// pixels, 8 for SDXL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileConfig {
    /// Side of a square tile.
    pub tile_latent: usize,
    /// Overlap between neighbouring tiles (the blend width).
    pub overlap_latent: usize,
}

impl Default for TileConfig {
    /// 64-latent tiles (512 px with SDXL) overlapping by 16 latents (128 px): the SDXL VAE's
    /// training size, the overlap diffusers uses for it (25 %), and a per-tile peak memory of
    /// about 2 GiB in f32.
    fn default() -> Self {
        Self {
            tile_latent: 64,
            overlap_latent: 16,
        }
    }
}

impl TileConfig {
    /// Checks the sizes; the message names the problem.
    pub fn validate(&self) -> Result<()> {
        if self.tile_latent < 4 {
            return Err(Error::InvalidInput(format!(
                "tile size {} latent pixels is too small (at least 4)",
                self.tile_latent
            )));
        }
        if 2 * self.overlap_latent >= self.tile_latent {
            return Err(Error::InvalidInput(format!(
                "tile overlap {} must be less than half the tile size {}",
                self.overlap_latent, self.tile_latent
            )));
        }
        Ok(())
    }
}

/// Whether to tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tiling {
    /// Never tile (memory grows with the image; the mid-block attention is still chunked).
    Off,
    /// Always tile with this configuration (a latent no bigger than one tile is one tile).
    On(TileConfig),
    /// Tile with [`TileConfig::default`] when the latent is larger than
    /// [`AUTO_TILE_THRESHOLD_LATENT`] on either side; otherwise do not tile.
    #[default]
    Auto,
}

/// [`Tiling::Auto`] tiles latents with a side above this (128 latents = 1024 px with SDXL, the
/// largest size whose untiled f32 decode stays within a few GiB).
pub const AUTO_TILE_THRESHOLD_LATENT: usize = 128;

impl Tiling {
    /// The tile configuration to use for a latent of `h` × `w`, or `None` for no tiling.
    pub fn resolve(&self, h: usize, w: usize) -> Option<TileConfig> {
        match self {
            Tiling::Off => None,
            Tiling::On(cfg) => Some(*cfg),
            Tiling::Auto => (h > AUTO_TILE_THRESHOLD_LATENT || w > AUTO_TILE_THRESHOLD_LATENT)
                .then(TileConfig::default),
        }
    }
}

/// Start positions of the tiles along an axis of `len` latent pixels: every `tile - overlap`,
/// with the last tile aligned with the end. A `len` up to `tile` is one tile.
pub fn tile_starts(len: usize, cfg: &TileConfig) -> Vec<usize> {
    if len <= cfg.tile_latent {
        return vec![0];
    }
    let stride = cfg.tile_latent - cfg.overlap_latent;
    let mut starts = Vec::new();
    let mut s = 0;
    while s + cfg.tile_latent < len {
        starts.push(s);
        s += stride;
    }
    starts.push(len - cfg.tile_latent);
    starts
}

/// The blend weights along one axis, in output pixels, for tiles starting at `starts` (latent
/// pixels) with extent `tile` (latent pixels, clipped to `len`), scaled by `factor`
/// (output pixels per latent pixel). Within each overlap the earlier tile fades out and the
/// later one fades in linearly; the weights are normalised to sum to one at every pixel.
/// Returns one weight vector per tile, of length `min(tile, len) * factor`.
pub fn axis_weights(len: usize, starts: &[usize], tile: usize, factor: usize) -> Vec<Vec<f32>> {
    let extent = tile.min(len);
    let mut weights: Vec<Vec<f32>> = starts
        .iter()
        .enumerate()
        .map(|(k, &s)| {
            let e = s + extent;
            let n = extent * factor;
            let mut w = vec![1f32; n];
            // Fade in over the overlap with the previous tile.
            if k > 0 {
                let prev_end = starts[k - 1] + extent;
                let r = prev_end.saturating_sub(s) * factor;
                for (i, v) in w.iter_mut().take(r).enumerate() {
                    *v = v.min((i as f32 + 0.5) / r as f32);
                }
            }
            // Fade out over the overlap with the next tile.
            if let Some(&next) = starts.get(k + 1) {
                let r = e.saturating_sub(next) * factor;
                for i in 0..r.min(n) {
                    let v = &mut w[n - r + i];
                    *v = v.min(((r - i) as f32 - 0.5) / r as f32);
                }
            }
            w
        })
        .collect();
    // Normalise so the weights of all tiles covering a pixel sum to one.
    let mut total = vec![0f32; len * factor];
    for (w, &s) in weights.iter().zip(starts) {
        for (i, v) in w.iter().enumerate() {
            total[s * factor + i] += v;
        }
    }
    for (w, &s) in weights.iter_mut().zip(starts) {
        for (i, v) in w.iter_mut().enumerate() {
            let t = total[s * factor + i];
            if t > 0.0 {
                *v /= t;
            }
        }
    }
    weights
}

/// Accumulates weighted tiles into a (b, c, h, w) f32 buffer on the host.
pub(crate) struct Blender {
    pub(crate) buf: Vec<f32>,
    dims: (usize, usize, usize, usize),
}

impl Blender {
    pub(crate) fn new(b: usize, c: usize, h: usize, w: usize) -> Self {
        Self {
            buf: vec![0f32; b * c * h * w],
            dims: (b, c, h, w),
        }
    }

    /// Adds `tile` (b, c, th, tw, flattened row-major) at (y0, x0), weighted by
    /// `wy[y] * wx[x]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add(
        &mut self,
        tile: &[f32],
        th: usize,
        tw: usize,
        y0: usize,
        x0: usize,
        wy: &[f32],
        wx: &[f32],
    ) {
        let (b, c, h, w) = self.dims;
        for bc in 0..b * c {
            for y in 0..th {
                let src = &tile[(bc * th + y) * tw..(bc * th + y + 1) * tw];
                let dst = &mut self.buf[(bc * h + y0 + y) * w + x0..][..tw];
                let fy = wy[y];
                for ((d, s), fx) in dst.iter_mut().zip(src).zip(wx) {
                    *d += s * fy * fx;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_cover_the_axis() {
        let cfg = TileConfig {
            tile_latent: 8,
            overlap_latent: 2,
        };
        assert_eq!(tile_starts(8, &cfg), vec![0]);
        assert_eq!(tile_starts(5, &cfg), vec![0]);
        assert_eq!(tile_starts(14, &cfg), vec![0, 6]);
        assert_eq!(tile_starts(15, &cfg), vec![0, 6, 7]);
        assert_eq!(tile_starts(20, &cfg), vec![0, 6, 12]);
    }

    #[test]
    fn weights_sum_to_one() {
        let cfg = TileConfig {
            tile_latent: 8,
            overlap_latent: 3,
        };
        for len in [5, 8, 13, 15, 21, 40] {
            let starts = tile_starts(len, &cfg);
            let ws = axis_weights(len, &starts, cfg.tile_latent, 4);
            let mut total = vec![0f32; len * 4];
            for (w, &s) in ws.iter().zip(&starts) {
                for (i, v) in w.iter().enumerate() {
                    assert!(*v >= 0.0);
                    total[s * 4 + i] += v;
                }
            }
            for t in total {
                assert!((t - 1.0).abs() < 1e-6, "len {len}: {t}");
            }
        }
    }
}
