//! Aspect-ratio binning: the size tables of diffusers' PixArt pipelines, the choice of a bin for
//! a requested size, and the resize + centre crop back to the requested size after decoding.
//!
//! Tables: `ASPECT_RATIO_{256,512,1024}_BIN` from diffusers 0.42.1
//! `pipelines/pixart_alpha/pipeline_pixart_alpha.py` and `ASPECT_RATIO_2048_BIN` from
//! `pipelines/pixart_alpha/pipeline_pixart_sigma.py` (data, transcribed). The selection and the
//! back-mapping follow `PixArtImageProcessor.classify_height_width_bin` and
//! `resize_and_crop_tensor` in `image_processor.py`.
use pixart_core::{Error, Result};

/// One bin table: `(h/w key as written in diffusers, height, width)`, in diffusers' order.
pub type BinTable = &'static [(&'static str, u32, u32)];

/// `ASPECT_RATIO_256_BIN` (33 entries): (h/w key, height, width).
pub const ASPECT_RATIO_256_BIN: &[(&str, u32, u32)] = &[
    ("0.25", 128, 512),
    ("0.28", 128, 464),
    ("0.32", 144, 448),
    ("0.33", 144, 432),
    ("0.35", 144, 416),
    ("0.4", 160, 400),
    ("0.42", 160, 384),
    ("0.48", 176, 368),
    ("0.5", 176, 352),
    ("0.52", 176, 336),
    ("0.57", 192, 336),
    ("0.6", 192, 320),
    ("0.68", 208, 304),
    ("0.72", 208, 288),
    ("0.78", 224, 288),
    ("0.82", 224, 272),
    ("0.88", 240, 272),
    ("0.94", 240, 256),
    ("1.0", 256, 256),
    ("1.07", 256, 240),
    ("1.13", 272, 240),
    ("1.21", 272, 224),
    ("1.29", 288, 224),
    ("1.38", 288, 208),
    ("1.46", 304, 208),
    ("1.67", 320, 192),
    ("1.75", 336, 192),
    ("2.0", 352, 176),
    ("2.09", 368, 176),
    ("2.4", 384, 160),
    ("2.5", 400, 160),
    ("3.0", 432, 144),
    ("4.0", 512, 128),
];
/// `ASPECT_RATIO_512_BIN` (33 entries): (h/w key, height, width).
pub const ASPECT_RATIO_512_BIN: &[(&str, u32, u32)] = &[
    ("0.25", 256, 1024),
    ("0.28", 256, 928),
    ("0.32", 288, 896),
    ("0.33", 288, 864),
    ("0.35", 288, 832),
    ("0.4", 320, 800),
    ("0.42", 320, 768),
    ("0.48", 352, 736),
    ("0.5", 352, 704),
    ("0.52", 352, 672),
    ("0.57", 384, 672),
    ("0.6", 384, 640),
    ("0.68", 416, 608),
    ("0.72", 416, 576),
    ("0.78", 448, 576),
    ("0.82", 448, 544),
    ("0.88", 480, 544),
    ("0.94", 480, 512),
    ("1.0", 512, 512),
    ("1.07", 512, 480),
    ("1.13", 544, 480),
    ("1.21", 544, 448),
    ("1.29", 576, 448),
    ("1.38", 576, 416),
    ("1.46", 608, 416),
    ("1.67", 640, 384),
    ("1.75", 672, 384),
    ("2.0", 704, 352),
    ("2.09", 736, 352),
    ("2.4", 768, 320),
    ("2.5", 800, 320),
    ("3.0", 864, 288),
    ("4.0", 1024, 256),
];
/// `ASPECT_RATIO_1024_BIN` (33 entries): (h/w key, height, width).
pub const ASPECT_RATIO_1024_BIN: &[(&str, u32, u32)] = &[
    ("0.25", 512, 2048),
    ("0.28", 512, 1856),
    ("0.32", 576, 1792),
    ("0.33", 576, 1728),
    ("0.35", 576, 1664),
    ("0.4", 640, 1600),
    ("0.42", 640, 1536),
    ("0.48", 704, 1472),
    ("0.5", 704, 1408),
    ("0.52", 704, 1344),
    ("0.57", 768, 1344),
    ("0.6", 768, 1280),
    ("0.68", 832, 1216),
    ("0.72", 832, 1152),
    ("0.78", 896, 1152),
    ("0.82", 896, 1088),
    ("0.88", 960, 1088),
    ("0.94", 960, 1024),
    ("1.0", 1024, 1024),
    ("1.07", 1024, 960),
    ("1.13", 1088, 960),
    ("1.21", 1088, 896),
    ("1.29", 1152, 896),
    ("1.38", 1152, 832),
    ("1.46", 1216, 832),
    ("1.67", 1280, 768),
    ("1.75", 1344, 768),
    ("2.0", 1408, 704),
    ("2.09", 1472, 704),
    ("2.4", 1536, 640),
    ("2.5", 1600, 640),
    ("3.0", 1728, 576),
    ("4.0", 2048, 512),
];
/// `ASPECT_RATIO_2048_BIN` (40 entries): (h/w key, height, width).
pub const ASPECT_RATIO_2048_BIN: &[(&str, u32, u32)] = &[
    ("0.25", 1024, 4096),
    ("0.26", 1024, 3968),
    ("0.27", 1024, 3840),
    ("0.28", 1024, 3712),
    ("0.32", 1152, 3584),
    ("0.33", 1152, 3456),
    ("0.35", 1152, 3328),
    ("0.4", 1280, 3200),
    ("0.42", 1280, 3072),
    ("0.48", 1408, 2944),
    ("0.5", 1408, 2816),
    ("0.52", 1408, 2688),
    ("0.57", 1536, 2688),
    ("0.6", 1536, 2560),
    ("0.68", 1664, 2432),
    ("0.72", 1664, 2304),
    ("0.78", 1792, 2304),
    ("0.82", 1792, 2176),
    ("0.88", 1920, 2176),
    ("0.94", 1920, 2048),
    ("1.0", 2048, 2048),
    ("1.07", 2048, 1920),
    ("1.13", 2176, 1920),
    ("1.21", 2176, 1792),
    ("1.29", 2304, 1792),
    ("1.38", 2304, 1664),
    ("1.46", 2432, 1664),
    ("1.67", 2560, 1536),
    ("1.75", 2688, 1536),
    ("2.0", 2816, 1408),
    ("2.09", 2944, 1408),
    ("2.4", 3072, 1280),
    ("2.5", 3200, 1280),
    ("2.89", 3328, 1152),
    ("3.0", 3456, 1152),
    ("3.11", 3584, 1152),
    ("3.62", 3712, 1024),
    ("3.75", 3840, 1024),
    ("3.88", 3968, 1024),
    ("4.0", 4096, 1024),
];

/// The table diffusers' PixArt-Σ pipeline uses for a transformer `sample_size` (latent side):
/// 32 → 256, 64 → 512, 128 → 1024, 256 → 2048; any other size has none.
pub fn table_for_sample_size(sample_size: usize) -> Option<BinTable> {
    match sample_size {
        32 => Some(ASPECT_RATIO_256_BIN),
        64 => Some(ASPECT_RATIO_512_BIN),
        128 => Some(ASPECT_RATIO_1024_BIN),
        256 => Some(ASPECT_RATIO_2048_BIN),
        _ => None,
    }
}

/// The bin `(height, width)` for a requested size: the entry whose key is closest to
/// `height / width` (the first one on ties, as Python's `min`).
pub fn classify(height: usize, width: usize, table: BinTable) -> Result<(usize, usize)> {
    if height == 0 || width == 0 {
        return Err(Error::InvalidInput(format!(
            "image size {width}x{height} must be positive"
        )));
    }
    let ar = height as f64 / width as f64;
    let mut best: Option<(f64, u32, u32)> = None;
    for &(key, h, w) in table {
        let k: f64 = key
            .parse()
            .map_err(|_| Error::InvalidInput(format!("bad aspect-ratio key {key:?}")))?;
        let d = (k - ar).abs();
        if best.is_none_or(|(bd, _, _)| d < bd) {
            best = Some((d, h, w));
        }
    }
    best.map(|(_, h, w)| (h as usize, w as usize))
        .ok_or_else(|| Error::InvalidInput("empty aspect-ratio table".into()))
}

/// Source index pair and weight of output position `i` for a bilinear resize from `src` to
/// `dst` samples with `align_corners=False` (PyTorch's `area_pixel_compute_source_index`).
fn linear_taps(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let scale = src as f32 / dst as f32;
    (0..dst)
        .map(|i| {
            let x = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (x.floor() as usize).min(src - 1);
            let i1 = (i0 + 1).min(src - 1);
            (i0, i1, x - i0 as f32)
        })
        .collect()
}

/// Bilinear resize (`F.interpolate(mode="bilinear", align_corners=False)`, no antialiasing) of
/// `planes` images of `h`×`w` (row-major, plane after plane) to `nh`×`nw`.
pub fn resize_bilinear(data: &[f32], planes: usize, (h, w): (usize, usize), (nh, nw): (usize, usize)) -> Vec<f32> {
    if h == 0 || w == 0 || nh == 0 || nw == 0 {
        return Vec::new();
    }
    let ys = linear_taps(h, nh);
    let xs = linear_taps(w, nw);
    let mut out = Vec::with_capacity(planes * nh * nw);
    for plane in data.chunks_exact(h * w).take(planes) {
        for &(y0, y1, ly) in &ys {
            let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
            for &(x0, x1, lx) in &xs {
                let top = (1.0 - lx) * r0[x0] + lx * r0[x1];
                let bottom = (1.0 - lx) * r1[x0] + lx * r1[x1];
                out.push((1.0 - ly) * top + ly * bottom);
            }
        }
    }
    out
}

/// Maps decoded images (`planes` planes of `h`×`w`) back to the requested `nh`×`nw`: scale by
/// `r = max(nh/h, nw/w)` to `(int(h·r), int(w·r))` with [`resize_bilinear`], then crop the
/// centre (offsets `(resized − requested) // 2`). Unchanged when the sizes already match.
pub fn resize_and_crop(data: Vec<f32>, planes: usize, (h, w): (usize, usize), (nh, nw): (usize, usize)) -> Vec<f32> {
    if (h, w) == (nh, nw) {
        return data;
    }
    let r = (nh as f64 / h as f64).max(nw as f64 / w as f64);
    let (rh, rw) = ((h as f64 * r) as usize, (w as f64 * r) as usize);
    let resized = resize_bilinear(&data, planes, (h, w), (rh, rw));
    let (oy, ox) = (rh.saturating_sub(nh) / 2, rw.saturating_sub(nw) / 2);
    let mut out = Vec::with_capacity(planes * nh * nw);
    for plane in resized.chunks_exact(rh * rw) {
        for y in oy..(oy + nh).min(rh) {
            out.extend_from_slice(&plane[y * rw + ox..y * rw + (ox + nw).min(rw)]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_diffusers_sizes() {
        assert_eq!(ASPECT_RATIO_256_BIN.len(), 33);
        assert_eq!(ASPECT_RATIO_512_BIN.len(), 33);
        assert_eq!(ASPECT_RATIO_1024_BIN.len(), 33);
        assert_eq!(ASPECT_RATIO_2048_BIN.len(), 40);
        for (t, m) in [
            (ASPECT_RATIO_256_BIN, 16),
            (ASPECT_RATIO_512_BIN, 32),
            (ASPECT_RATIO_1024_BIN, 64),
            (ASPECT_RATIO_2048_BIN, 128),
        ] {
            assert!(t.iter().all(|&(_, h, w)| h % m == 0 && w % m == 0));
        }
    }

    #[test]
    fn classify_matches_spec_examples() {
        let t = ASPECT_RATIO_1024_BIN;
        assert_eq!(classify(1024, 1024, t).unwrap(), (1024, 1024));
        assert_eq!(classify(768, 1344, t).unwrap(), (768, 1344));
        assert_eq!(classify(1344, 768, t).unwrap(), (1344, 768));
        assert_eq!(classify(100, 400, t).unwrap(), (512, 2048));
        assert_eq!(classify(4000, 1000, t).unwrap(), (2048, 512));
        assert_eq!(classify(1, 1, ASPECT_RATIO_2048_BIN).unwrap(), (2048, 2048));
        assert_eq!(table_for_sample_size(128).unwrap().len(), 33);
        assert!(table_for_sample_size(8).is_none());
    }

    #[test]
    fn resize_identity_and_crop() {
        let data: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear(&data, 1, (3, 4), (3, 4)), data);
        // 2x upscale of a 1x2 ramp: PyTorch gives [0, 0.25, 0.75, 1].
        let up = resize_bilinear(&[0.0, 1.0], 1, (1, 2), (1, 4));
        assert_eq!(up, vec![0.0, 0.25, 0.75, 1.0]);
        // Same size: untouched; 4x4 -> 2x4 request: r = max(0.5, 1) = 1, crop rows 1..3.
        let d: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let c = resize_and_crop(d, 1, (4, 4), (2, 4));
        assert_eq!(c, (4..12).map(|v| v as f32).collect::<Vec<_>>());
    }
}
