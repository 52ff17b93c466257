//! Images to VAE inputs as PixArt's training data pipeline prepares them: choose a bucket
//! (one square size, or the aspect-ratio bin closest to the image's height/width), resize so
//! the image covers the bucket (bicubic), crop the centre, scale to [−1, 1].
//!
//! Matched against PixArt-sigma `diffusion/data/datasets/InternalData_ms.py`
//! (`InternalDataMSSigma.getdata`): `resize_size = (bh, int(w·bh/h))` when `bh/h > bw/w`, else
//! `(int(h·bw/w), bw)`; `T.Resize(resize_size, BICUBIC)`, `T.CenterCrop(bucket)`,
//! `T.Normalize([.5], [.5])`. The bicubic filter here is the `image` crate's Catmull-Rom
//! (a = −0.5, widened when downscaling, like PIL's antialiased bicubic); the pixels are close
//! to PIL's, not identical.
use std::path::Path;

use image::imageops::FilterType;
use image::RgbImage;
use pixart_core::{Error, Result};
use pixart_pipeline::aspect_bins::{classify, ASPECT_RATIO_1024_BIN};

/// How images are grouped into sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BucketMode {
    /// Every image is cropped to `resolution × resolution`.
    Square,
    /// Each image goes to the aspect-ratio bin closest to its height/width: diffusers'
    /// `ASPECT_RATIO_1024_BIN` scaled by `resolution / 1024`.
    Multi,
}

impl std::str::FromStr for BucketMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "square" => Ok(Self::Square),
            "multi" => Ok(Self::Multi),
            other => Err(Error::InvalidInput(format!(
                "buckets `{other}`: expected square or multi"
            ))),
        }
    }
}

/// The bucket sizes for a resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buckets {
    mode: BucketMode,
    resolution: usize,
    multiple: usize,
}

impl Buckets {
    /// Buckets at `resolution` (the square side, or the side of the 1:1 bin) whose sides are
    /// multiples of `multiple` (twice the VAE's downsampling factor, so that latent grids split
    /// into 2×2 patches). `resolution` must itself be such a multiple.
    pub fn new(mode: BucketMode, resolution: usize, multiple: usize) -> Result<Self> {
        if multiple == 0 || resolution == 0 || !resolution.is_multiple_of(multiple) {
            return Err(Error::InvalidInput(format!(
                "resolution {resolution} must be a positive multiple of {multiple} (twice the VAE's downsampling factor)"
            )));
        }
        Ok(Self {
            mode,
            resolution,
            multiple,
        })
    }

    pub fn mode(&self) -> BucketMode {
        self.mode
    }

    /// The bucket `(height, width)` for an image of `height × width` pixels.
    pub fn bucket_for(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        match self.mode {
            BucketMode::Square => {
                if height == 0 || width == 0 {
                    return Err(Error::InvalidInput(format!("image size {width}x{height} is empty")));
                }
                Ok((self.resolution, self.resolution))
            }
            BucketMode::Multi => {
                let (h, w) = classify(height, width, ASPECT_RATIO_1024_BIN)?;
                Ok((self.scale(h), self.scale(w)))
            }
        }
    }

    /// A side of the 1024 table scaled to the resolution, rounded to the nearest multiple.
    fn scale(&self, side: usize) -> usize {
        let scaled = side as f64 * self.resolution as f64 / 1024.0;
        let m = self.multiple as f64;
        ((scaled / m).round().max(1.0) * m) as usize
    }
}

/// The size of an image from its header, without decoding the pixels: `(height, width)`.
pub fn image_size(path: &Path) -> Result<(usize, usize)> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| Error::InvalidInput(format!("{}: unreadable image: {e}", path.display())))?;
    if w == 0 || h == 0 {
        return Err(Error::InvalidInput(format!("{}: the image is empty", path.display())));
    }
    Ok((h as usize, w as usize))
}

/// Decodes an image to 8-bit RGB (alpha dropped, grey expanded, as PIL's `convert("RGB")`).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::InvalidInput(format!("{}: unreadable image: {e}", path.display())))?;
    Ok(img.to_rgb8())
}

/// Python's `round` (ties to even), as torchvision's `CenterCrop` uses.
fn round_half_even(x: f64) -> usize {
    x.round_ties_even().max(0.0) as usize
}

/// Resizes `img` so that it covers `(bh, bw)` and crops the centre (see the module docs).
/// An image already of the bucket's size is returned unchanged.
pub fn resize_cover_crop(img: &RgbImage, (bh, bw): (usize, usize)) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if (h, w) == (bh, bw) {
        return img.clone();
    }
    let (rh, rw) = if bh as f64 / h as f64 > bw as f64 / w as f64 {
        (bh, (w as f64 * bh as f64 / h as f64) as usize)
    } else {
        ((h as f64 * bw as f64 / w as f64) as usize, bw)
    };
    // Guard the truncation: the resized image must still cover the bucket.
    let (rh, rw) = (rh.max(bh), rw.max(bw));
    let resized = if (rh, rw) == (h, w) {
        img.clone()
    } else {
        image::imageops::resize(img, rw as u32, rh as u32, FilterType::CatmullRom)
    };
    let top = round_half_even((rh - bh) as f64 / 2.0);
    let left = round_half_even((rw - bw) as f64 / 2.0);
    image::imageops::crop_imm(&resized, left as u32, top as u32, bw as u32, bh as u32).to_image()
}

/// An RGB image as a (3, h, w) plane-major vector scaled to [−1, 1] (`x / 127.5 − 1`, what
/// `ToTensor` + `Normalize([.5], [.5])` give).
pub fn to_unit_range(img: &RgbImage) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let mut out = vec![0f32; 3 * h * w];
    for (i, px) in raw.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            out[c * h * w + i] = f32::from(v) / 127.5 - 1.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_and_multi_buckets() {
        let sq = Buckets::new(BucketMode::Square, 64, 16).unwrap();
        assert_eq!(sq.bucket_for(300, 100).unwrap(), (64, 64));
        let multi = Buckets::new(BucketMode::Multi, 64, 16).unwrap();
        assert_eq!(multi.bucket_for(100, 100).unwrap(), (64, 64));
        // 1024 table: 0.25 -> 512x2048 -> 32x128; 4.0 -> 2048x512 -> 128x32.
        assert_eq!(multi.bucket_for(100, 400).unwrap(), (32, 128));
        assert_eq!(multi.bucket_for(400, 100).unwrap(), (128, 32));
        // 0.57 -> 768x1344 -> 48x84 -> 48x80.
        assert_eq!(multi.bucket_for(57, 100).unwrap(), (48, 80));
        assert!(Buckets::new(BucketMode::Square, 60, 16).is_err());
        assert!("tall".parse::<BucketMode>().is_err());
    }

    #[test]
    fn cover_and_centre_crop() {
        // 4 rows x 8 columns, value = column * 10: a 4x4 bucket keeps columns 2..6.
        let img = RgbImage::from_fn(8, 4, |x, _| image::Rgb([(x * 10) as u8, 0, 255]));
        let out = resize_cover_crop(&img, (4, 4));
        assert_eq!((out.width(), out.height()), (4, 4));
        assert_eq!(out.get_pixel(0, 0)[0], 20);
        assert_eq!(out.get_pixel(3, 3)[0], 50);
        // Downscale 16x8 -> cover 4x4: resized to 4 rows x 8 columns, then cropped.
        let big = RgbImage::from_fn(16, 8, |_, _| image::Rgb([200, 100, 0]));
        let small = resize_cover_crop(&big, (4, 4));
        assert_eq!((small.width(), small.height()), (4, 4));
        assert!(small.pixels().all(|p| p.0 == [200, 100, 0]));
        let v = to_unit_range(&small);
        assert_eq!(v.len(), 48);
        assert!((v[0] - (200.0 / 127.5 - 1.0)).abs() < 1e-6);
        assert!((v[16] - (100.0 / 127.5 - 1.0)).abs() < 1e-6);
        assert_eq!(v[47], -1.0);
    }
}
