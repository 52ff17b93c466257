//! The rule-based checker: what an image shows, read back as [`Attributes`], and whether it
//! matches what was asked for.
//!
//! Rules (all thresholds are fractions of the image side, so they hold at any size):
//! 1. **Background**: the per-channel median of a border ring (`side/32` pixels wide, one at
//!    least) → nearest palette colour. The measured median (not the palette colour) is the
//!    reference for step 2, so a colour shift in a generated image does not break the mask.
//! 2. **Object mask**: pixels farther from the background than `max(48, 3 × the median border
//!    distance)` are candidates; the median colour of the farther half of the candidates is the
//!    object's colour estimate; a pixel is object when its projection on the background → object
//!    line is past the middle (t > 0.5). The largest 4-connected component is kept (noise
//!    specks dropped) and its holes are filled.
//! 3. **Object colour**: median of the component's object pixels → nearest palette colour.
//! 4. **Position**: the component's centroid → the nearest of the five anchors.
//! 5. **Size**: the larger side of the component's bounding box / image side; large when ≥ 0.31
//!    (nominal 0.22 and 0.42, ±5 % jitter).
//! 6. **Shape**: each shape is fitted as a template with the component's area and centroid
//!    (circle of diameter 2√(A/π), square of side √A, apex-up triangle of base and height √(2A)
//!    whose centroid sits s/6 below its box centre), drawn with 3×3 samples per pixel; the
//!    shape whose template overlaps the component best (intersection over union) wins. Fitting
//!    by area and centroid makes the rule insensitive to ragged, noisy edges, where a
//!    bounding-box fill ratio is not (one stray pixel row turns a small square into a circle).
use pixart_core::{Error, Result};
use pixart_pipeline::RgbImage;
use serde::Serialize;

use crate::render::{inside, Geometry};
use crate::vocab::{Attributes, Color, Position, Shape, Size};

/// Large when the bounding box's larger side is at least this fraction of the image side.
pub const SIZE_THRESHOLD: f64 = 0.31;
/// The lowest colour distance that counts as "not background".
const MIN_DISTANCE: f64 = 48.0;

/// Measurements of the object (fractions of the image side, y down).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Measurements {
    /// Object pixels / image pixels.
    pub area: f64,
    /// Centroid.
    pub cx: f64,
    pub cy: f64,
    /// Larger side of the bounding box.
    pub extent: f64,
    /// Area / bounding-box area.
    pub fill: f64,
    /// Template overlap (IoU) of circle, square and triangle.
    pub shape_scores: [f64; 3],
    /// Median object colour.
    pub rgb: [f64; 3],
}

/// What the checker saw. The object fields are `None` when no object was found.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Seen {
    pub background: Color,
    /// Median border colour.
    pub background_rgb: [f64; 3],
    pub color: Option<Color>,
    pub shape: Option<Shape>,
    pub size: Option<Size>,
    pub position: Option<Position>,
    pub measurements: Option<Measurements>,
}

/// Per-attribute verdicts against the expected attributes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Check {
    pub background: bool,
    pub color: bool,
    pub shape: bool,
    pub size: bool,
    pub position: bool,
    pub seen: Seen,
}

impl Check {
    /// Every attribute right.
    pub fn all(&self) -> bool {
        self.background && self.color && self.shape && self.size && self.position
    }
}

/// Checks `image` against `expected`.
pub fn check(image: &RgbImage, expected: &Attributes) -> Result<Check> {
    let seen = observe(image)?;
    Ok(Check {
        background: seen.background == expected.background,
        color: seen.color == Some(expected.color),
        shape: seen.shape == Some(expected.shape),
        size: seen.size == Some(expected.size),
        position: seen.position == Some(expected.position),
        seen,
    })
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn median_rgb(pixels: impl Iterator<Item = [f64; 3]>) -> [f64; 3] {
    let mut ch: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for p in pixels {
        for c in 0..3 {
            ch[c].push(p[c]);
        }
    }
    ch.map(|mut v| median(&mut v))
}

fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
    (0..3).map(|i| (a[i] - b[i]).powi(2)).sum::<f64>().sqrt()
}

/// Flood fill from `stack` (already marked in `seen`) through the 4-neighbours `can_enter`
/// admits, marking them in `seen`; returns the pixels reached (row-major indices).
fn flood(
    mut stack: Vec<usize>,
    seen: &mut [bool],
    w: usize,
    h: usize,
    can_enter: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let mut reached = Vec::new();
    while let Some(i) = stack.pop() {
        reached.push(i);
        let (x, y) = (i % w, i / w);
        let left = (x > 0).then(|| i - 1);
        let right = (x + 1 < w).then_some(i + 1);
        let up = (y > 0).then(|| i - w);
        let down = (y + 1 < h).then_some(i + w);
        for j in [left, right, up, down].into_iter().flatten() {
            if can_enter(j) && !seen[j] {
                seen[j] = true;
                stack.push(j);
            }
        }
    }
    reached
}

/// The pixels of the largest 4-connected component of `mask` (row-major indices).
fn largest_component(mask: &[bool], w: usize, h: usize) -> Vec<usize> {
    let mut seen = vec![false; mask.len()];
    let mut best: Vec<usize> = Vec::new();
    for start in 0..mask.len() {
        if mask[start] && !seen[start] {
            seen[start] = true;
            let comp = flood(vec![start], &mut seen, w, h, |j| mask[j]);
            if comp.len() > best.len() {
                best = comp;
            }
        }
    }
    best
}

/// `inside` with its holes filled: everything not reachable from the border through pixels
/// outside `inside`.
fn fill_holes(inside: &[bool], w: usize, h: usize) -> Vec<bool> {
    let mut outside = vec![false; inside.len()];
    let border: Vec<usize> = (0..w)
        .flat_map(|x| [x, (h - 1) * w + x])
        .chain((0..h).flat_map(|y| [y * w, y * w + w - 1]))
        .filter(|&i| !inside[i])
        .collect();
    for &i in &border {
        outside[i] = true;
    }
    flood(border, &mut outside, w, h, |j| !inside[j]);
    outside.iter().map(|o| !o).collect()
}

/// Intersection over union of `mask` and the `shape` template with area `area` (pixels) and
/// centroid (`cx`, `cy`) (pixels), the template drawn with 3×3 samples per pixel.
fn template_overlap(shape: Shape, mask: &[bool], w: usize, h: usize, cx: f64, cy: f64, area: f64) -> f64 {
    let side = match shape {
        Shape::Circle => 2.0 * (area / std::f64::consts::PI).sqrt(),
        Shape::Square => area.sqrt(),
        Shape::Triangle => (2.0 * area).sqrt(),
    };
    // The triangle's centroid lies side/6 below the centre of its box.
    let box_cy = if shape == Shape::Triangle { cy - side / 6.0 } else { cy };
    let g = Geometry {
        cx,
        cy: box_cy,
        extent: side,
    };
    let (mut inter, mut union) = (0.0, 0.0);
    for y in 0..h {
        for x in 0..w {
            let mut hits = 0u32;
            // Pixels away from the template's box cannot be covered.
            if (x as f64 + 0.5 - cx).abs() <= side && (y as f64 + 0.5 - box_cy).abs() <= side {
                for sy in 0..3 {
                    for sx in 0..3 {
                        let (px, py) = (x as f64 + (sx as f64 + 0.5) / 3.0, y as f64 + (sy as f64 + 0.5) / 3.0);
                        hits += u32::from(inside(shape, &g, px, py));
                    }
                }
            }
            let c = f64::from(hits) / 9.0;
            let m = if mask[y * w + x] { 1.0 } else { 0.0 };
            inter += f64::min(c, m);
            union += f64::max(c, m);
        }
    }
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Reads the attributes off `image` (see the module documentation for the rules).
pub fn observe(image: &RgbImage) -> Result<Seen> {
    image.check()?;
    let (w, h) = (image.width, image.height);
    if w < 8 || h < 8 {
        return Err(Error::InvalidInput(format!(
            "the checker needs at least 8x8 pixels, got {w}x{h}"
        )));
    }
    let px: Vec<[f64; 3]> = image
        .data
        .chunks_exact(3)
        .map(|p| [f64::from(p[0]), f64::from(p[1]), f64::from(p[2])])
        .collect();

    // 1. Background: median of the border ring.
    let ring = (w.min(h) / 32).max(1);
    let on_ring = |i: usize| {
        let (x, y) = (i % w, i / w);
        x < ring || y < ring || x >= w - ring || y >= h - ring
    };
    let bg = median_rgb((0..px.len()).filter(|&i| on_ring(i)).map(|i| px[i]));
    let background = Color::nearest(bg);
    let none = Seen {
        background,
        background_rgb: bg,
        color: None,
        shape: None,
        size: None,
        position: None,
        measurements: None,
    };

    // 2. The object mask.
    let d: Vec<f64> = px.iter().map(|&p| dist(p, bg)).collect();
    let mut ring_d: Vec<f64> = (0..px.len()).filter(|&i| on_ring(i)).map(|i| d[i]).collect();
    let threshold = MIN_DISTANCE.max(3.0 * median(&mut ring_d));
    let mut cand: Vec<usize> = (0..px.len()).filter(|&i| d[i] > threshold).collect();
    if cand.is_empty() {
        return Ok(none);
    }
    cand.sort_by(|&a, &b| d[a].total_cmp(&d[b]));
    let core = &cand[cand.len() / 2..];
    let obj = median_rgb(core.iter().map(|&i| px[i]));
    let axis = [obj[0] - bg[0], obj[1] - bg[1], obj[2] - bg[2]];
    let len2: f64 = axis.iter().map(|a| a * a).sum();
    if len2 <= 0.0 {
        return Ok(none);
    }
    let t = |p: [f64; 3]| (0..3).map(|c| (p[c] - bg[c]) * axis[c]).sum::<f64>() / len2;
    let mask: Vec<bool> = px.iter().map(|&p| t(p) > 0.5).collect();
    let comp = largest_component(&mask, w, h);
    if comp.is_empty() {
        return Ok(none);
    }
    let mut in_comp = vec![false; px.len()];
    for &i in &comp {
        in_comp[i] = true;
    }
    let filled = fill_holes(&in_comp, w, h);

    // 3-6. Measurements and rules.
    let (mut x0, mut x1, mut y0, mut y1) = (w, 0, h, 0);
    let (mut n, mut sx, mut sy) = (0usize, 0.0, 0.0);
    for (i, _) in filled.iter().enumerate().filter(|(_, &f)| f) {
        let (x, y) = (i % w, i / w);
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
        n += 1;
        sx += x as f64 + 0.5;
        sy += y as f64 + 0.5;
    }
    let (bw, bh) = ((x1 + 1 - x0) as f64, (y1 + 1 - y0) as f64);
    let (cx, cy) = (sx / n as f64, sy / n as f64);
    let scores = Shape::ALL.map(|shape| template_overlap(shape, &filled, w, h, cx, cy, n as f64));
    let rgb = median_rgb(comp.iter().map(|&i| px[i]));
    let m = Measurements {
        area: n as f64 / (w * h) as f64,
        cx: cx / w as f64,
        cy: cy / h as f64,
        extent: (bw / w as f64).max(bh / h as f64),
        fill: n as f64 / (bw * bh),
        shape_scores: scores,
        rgb,
    };
    let mut shape = Shape::Circle;
    for (s, score) in Shape::ALL.iter().zip(scores) {
        if score > scores[shape as usize] {
            shape = *s;
        }
    }
    let size = if m.extent >= SIZE_THRESHOLD {
        Size::Large
    } else {
        Size::Small
    };
    Ok(Seen {
        color: Some(Color::nearest(rgb)),
        shape: Some(shape),
        size: Some(size),
        position: Some(Position::nearest(m.cx, m.cy)),
        measurements: Some(m),
        ..none
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{render, Geometry};

    #[test]
    fn plain_image_has_no_object() {
        let img = RgbImage::filled(32, 32, Color::Green.rgb());
        let a = Attributes {
            shape: Shape::Circle,
            color: Color::Red,
            background: Color::Green,
            size: Size::Small,
            position: Position::Center,
        };
        let c = check(&img, &a).unwrap();
        assert!(c.background && !c.color && !c.shape && !c.size && !c.position && !c.all());
        assert_eq!(c.seen.shape, None);
    }

    #[test]
    fn bad_images_are_errors() {
        let tiny = RgbImage::filled(4, 4, [0, 0, 0]);
        assert!(observe(&tiny).unwrap_err().to_string().contains("at least 8x8"));
        let broken = RgbImage {
            width: 16,
            height: 16,
            data: vec![0; 10],
        };
        assert!(observe(&broken).is_err());
    }

    #[test]
    fn holes_and_specks_do_not_change_the_verdict() {
        let a = Attributes {
            shape: Shape::Square,
            color: Color::Yellow,
            background: Color::Black,
            size: Size::Large,
            position: Position::BottomRight,
        };
        let mut img = render(&a, &Geometry::nominal(&a), 64).unwrap();
        // A background-coloured hole in the square and a speck of object colour elsewhere.
        for (x, y) in [(46, 46), (47, 46), (46, 47), (10, 40)] {
            let i = 3 * (y * 64 + x);
            let c = if x == 10 { a.color } else { a.background };
            img.data[i..i + 3].copy_from_slice(&c.rgb());
        }
        let c = check(&img, &a).unwrap();
        assert!(c.all(), "{c:?}");
        let m = c.seen.measurements.unwrap();
        assert!(m.fill > 0.99 && m.shape_scores[1] > 0.95, "{m:?}");
    }
}
