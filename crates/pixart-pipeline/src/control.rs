//! ControlNet control pictures: the preprocessing `pixart generate --control-preprocess` names.
//! Canny edges come from `imageproc::edges::canny` (not hand-written), white edges on black in
//! all three channels, as the Canny control images of ControlNet are made.
use crate::image::RgbImage;

/// Default Canny thresholds on the gradient magnitude (the usual ControlNet-Canny ones).
pub const DEFAULT_CANNY: (f32, f32) = (100.0, 200.0);

/// What is done to a control picture before the VAE sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ControlPreprocess {
    /// The picture is the control (an edge map, a depth map, ...).
    None,
    /// Canny edges of the picture's luma, with these low and high thresholds.
    Canny { low: f32, high: f32 },
}

impl ControlPreprocess {
    /// Parses `none`, `canny` or `canny:LOW:HIGH` (0 ≤ LOW ≤ HIGH, finite). The message
    /// follows the option's name.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let bad = || format!("`{spec}`: expected none, canny or canny:LOW:HIGH (e.g. canny:100:200)");
        match spec {
            "none" => return Ok(Self::None),
            "canny" => {
                return Ok(Self::Canny {
                    low: DEFAULT_CANNY.0,
                    high: DEFAULT_CANNY.1,
                })
            }
            _ => {}
        }
        let rest = spec.strip_prefix("canny:").ok_or_else(bad)?;
        let (low, high) = rest.split_once(':').ok_or_else(bad)?;
        let (low, high): (f32, f32) = (low.parse().map_err(|_| bad())?, high.parse().map_err(|_| bad())?);
        if !(low.is_finite() && high.is_finite() && low >= 0.0 && low <= high) {
            return Err(format!("`{spec}`: the thresholds must be finite with 0 <= LOW <= HIGH"));
        }
        Ok(Self::Canny { low, high })
    }

    /// The preprocessed picture (same size).
    pub fn apply(self, image: RgbImage) -> RgbImage {
        let Self::Canny { low, high } = self else {
            return image;
        };
        // Luma as `image` computes it (Rec. 709 weights), then imageproc's Canny.
        let gray = ::image::GrayImage::from_fn(image.width as u32, image.height as u32, |x, y| {
            let p = 3 * (y as usize * image.width + x as usize);
            let (r, g, b) = (image.data[p] as f32, image.data[p + 1] as f32, image.data[p + 2] as f32);
            ::image::Luma([(0.2126 * r + 0.7152 * g + 0.0722 * b).round().clamp(0.0, 255.0) as u8])
        });
        let edges = imageproc::edges::canny(&gray, low, high);
        RgbImage {
            width: image.width,
            height: image.height,
            data: edges.into_raw().into_iter().flat_map(|v| [v, v, v]).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(ControlPreprocess::parse("none"), Ok(ControlPreprocess::None));
        assert_eq!(
            ControlPreprocess::parse("canny"),
            Ok(ControlPreprocess::Canny {
                low: 100.0,
                high: 200.0
            })
        );
        assert_eq!(
            ControlPreprocess::parse("canny:50:80"),
            Ok(ControlPreprocess::Canny { low: 50.0, high: 80.0 })
        );
        for bad in [
            "canny:80:50",
            "canny:-1:5",
            "canny:1",
            "canny:a:b",
            "sobel",
            "canny:nan:5",
        ] {
            assert!(ControlPreprocess::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canny_finds_the_edges_of_a_square() {
        // A white 16x16 square on black in a 48x48 picture: edges on its border, none far off.
        let mut img = RgbImage::filled(48, 48, [0; 3]);
        for y in 16..32 {
            for x in 16..32 {
                let p = 3 * (y * 48 + x);
                img.data[p..p + 3].copy_from_slice(&[255; 3]);
            }
        }
        let e = ControlPreprocess::parse("canny").unwrap().apply(img);
        assert_eq!((e.width, e.height), (48, 48));
        let at = |x: usize, y: usize| e.data[3 * (y * 48 + x)];
        let border = (16..32).filter(|&x| at(x, 15) == 255 || at(x, 16) == 255).count();
        assert!(border >= 12, "top edge found at {border} of 16 columns");
        assert_eq!(at(24, 24), 0, "inside the square");
        assert_eq!(at(4, 4), 0, "far outside");
        assert!(e.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    }
}
