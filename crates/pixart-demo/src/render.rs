//! Resolution-independent rendering: a [`Scene`] (attributes plus the exact geometry, in
//! fractions of the image side) drawn anti-aliased at any size by supersampling.
use pixart_core::{Error, Result};
use pixart_pipeline::RgbImage;
use serde::{Deserialize, Serialize};

use crate::vocab::{Attributes, Shape};

/// Where the shape is, as fractions of the image side (y down): the centre of its bounding box
/// and the side of the bounding box.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Geometry {
    pub cx: f64,
    pub cy: f64,
    pub extent: f64,
}

impl Geometry {
    /// The nominal geometry of `attributes` (no jitter).
    pub fn nominal(attributes: &Attributes) -> Self {
        let (cx, cy) = attributes.position.anchor();
        Self {
            cx,
            cy,
            extent: attributes.size.extent(),
        }
    }
}

/// Sub-pixel samples per pixel side (SUPERSAMPLE² samples per pixel).
pub const SUPERSAMPLE: usize = 5;

/// Whether the point (x, y) is inside the shape with geometry `g` (any unit: fractions of the
/// side here, pixels in the checker's templates).
pub(crate) fn inside(shape: Shape, g: &Geometry, x: f64, y: f64) -> bool {
    let h = g.extent / 2.0;
    let (dx, dy) = (x - g.cx, y - g.cy);
    match shape {
        Shape::Circle => dx * dx + dy * dy <= h * h,
        Shape::Square => dx.abs() <= h && dy.abs() <= h,
        // Apex at (cx, cy - h), base from (cx - h, cy + h) to (cx + h, cy + h): the half-width
        // grows from 0 at the apex to h at the base.
        Shape::Triangle => dy <= h && dx.abs() <= (dy + h) / 2.0,
    }
}

/// Draws `attributes` with `geometry` on a `side × side` image: each pixel is the background
/// blended with the object colour by the fraction of its SUPERSAMPLE² sub-pixel samples inside
/// the shape (blended in sRGB, rounded).
pub fn render(attributes: &Attributes, geometry: &Geometry, side: usize) -> Result<RgbImage> {
    if !(8..=4096).contains(&side) {
        return Err(Error::InvalidInput(format!(
            "image size {side} must be between 8 and 4096 pixels"
        )));
    }
    let g = geometry;
    let valid = [g.cx, g.cy, g.extent].iter().all(|v| v.is_finite())
        && g.extent > 0.0
        && g.cx - g.extent / 2.0 >= 0.0
        && g.cy - g.extent / 2.0 >= 0.0
        && g.cx + g.extent / 2.0 <= 1.0
        && g.cy + g.extent / 2.0 <= 1.0;
    if !valid {
        return Err(Error::InvalidInput(format!(
            "geometry {geometry:?} does not keep the shape inside the image"
        )));
    }
    let bg = attributes.background.rgb();
    let fg = attributes.color.rgb();
    let mut img = RgbImage::filled(side, side, bg);
    let s = side as f64;
    // Only pixels that touch the bounding box can be covered.
    let lo = |c: f64| (((c - g.extent / 2.0) * s).floor().max(0.0)) as usize;
    let hi = |c: f64| ((((c + g.extent / 2.0) * s).ceil()) as usize).min(side);
    let n = SUPERSAMPLE as f64;
    let total = SUPERSAMPLE * SUPERSAMPLE;
    for py in lo(g.cy)..hi(g.cy) {
        for px in lo(g.cx)..hi(g.cx) {
            let mut hits = 0usize;
            for sy in 0..SUPERSAMPLE {
                let y = (py as f64 + (sy as f64 + 0.5) / n) / s;
                for sx in 0..SUPERSAMPLE {
                    let x = (px as f64 + (sx as f64 + 0.5) / n) / s;
                    hits += usize::from(inside(attributes.shape, g, x, y));
                }
            }
            if hits == 0 {
                continue;
            }
            let a = hits as f64 / total as f64;
            let i = 3 * (py * side + px);
            if let Some(p) = img.data.get_mut(i..i + 3) {
                for c in 0..3 {
                    let v = f64::from(bg[c]) + a * (f64::from(fg[c]) - f64::from(bg[c]));
                    p[c] = v.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::{Color, Position, Size};

    fn attrs(shape: Shape) -> Attributes {
        Attributes {
            shape,
            color: Color::Red,
            background: Color::Blue,
            size: Size::Large,
            position: Position::Center,
        }
    }

    fn coverage(img: &RgbImage, a: &Attributes) -> f64 {
        // Fraction of the image that is object, from the red channel's blend.
        let (b, f) = (f64::from(a.background.rgb()[0]), f64::from(a.color.rgb()[0]));
        img.data
            .chunks_exact(3)
            .map(|p| (f64::from(p[0]) - b) / (f - b))
            .sum::<f64>()
            / (img.width * img.height) as f64
    }

    #[test]
    fn areas_match_the_geometry_at_any_size() {
        for shape in Shape::ALL {
            let a = attrs(shape);
            let g = Geometry::nominal(&a);
            let ideal = match shape {
                Shape::Circle => std::f64::consts::PI / 4.0,
                Shape::Square => 1.0,
                Shape::Triangle => 0.5,
            } * g.extent
                * g.extent;
            for side in [64, 128] {
                let img = render(&a, &g, side).unwrap();
                let cov = coverage(&img, &a);
                assert!(
                    (cov - ideal).abs() < 0.01 * ideal + 1.0 / (side * side) as f64,
                    "{shape:?} {side}: {cov} vs {ideal}"
                );
            }
        }
    }

    #[test]
    fn triangle_points_up_and_corners_are_background() {
        let a = attrs(Shape::Triangle);
        let img = render(&a, &Geometry::nominal(&a), 64).unwrap();
        let fg = a.color.rgb();
        let bg = a.background.rgb();
        // Base row near the bottom of the box is wide, the row near the apex narrow.
        let row = |y: usize| (0..64).filter(|&x| img.pixel(x, y) == Some(fg)).count();
        assert!(row(44) > 20 && row(20) < 6, "{} {}", row(44), row(20));
        assert_eq!(img.pixel(0, 0), Some(bg));
        assert_eq!(img.pixel(63, 63), Some(bg));
    }

    #[test]
    fn bad_geometry_and_sizes_are_errors() {
        let a = attrs(Shape::Square);
        let off = Geometry {
            cx: 0.9,
            cy: 0.5,
            extent: 0.42,
        };
        assert!(render(&a, &off, 64)
            .unwrap_err()
            .to_string()
            .contains("inside the image"));
        let nan = Geometry {
            cx: f64::NAN,
            ..Geometry::nominal(&a)
        };
        assert!(render(&a, &nan, 64).is_err());
        assert!(render(&a, &Geometry::nominal(&a), 4).is_err());
    }
}
