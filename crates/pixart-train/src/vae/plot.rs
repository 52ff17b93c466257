//! PNG output of the trainer: the reconstruction grid and the loss curve (drawn here, with a
//! 3×5 pixel font for the axis labels; no plotting dependency).
use std::path::Path;

use candle_core::{DType, Tensor};
use pixart_core::{Error, Result};

/// An RGB canvas.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, fill: [u8; 3]) -> Self {
        Self {
            width,
            height,
            rgb: fill.iter().copied().cycle().take(width * height * 3).collect(),
        }
    }

    pub fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A line from (x0, y0) to (x1, y1) (Bresenham).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// `text` in the 3×5 font, scaled by `scale`, top-left at (x, y). Unknown characters are
    /// blank.
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, c: [u8; 3]) {
        for (k, ch) in text.chars().enumerate() {
            let glyph = glyph(ch);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.set(x + (k as i64 * 4 + col) * scale + dx, y + row as i64 * scale + dy, c);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Encodes as PNG and writes atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc
                .write_header()
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
            w.write_image_data(&self.rgb)
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
        }
        pixart_core::weights::write_atomic(path, &bytes)
    }
}

/// 3×5 glyphs, one row per entry, bit 2 = left column.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0, 0, 0, 0, 0b010],
        '-' => [0, 0, 0b111, 0, 0],
        'e' => [0, 0b111, 0b111, 0b100, 0b111],
        _ => [0; 5],
    }
}

/// Images (b, 3, h, w) in [-1, 1] → a grid PNG with the `inputs` in the top row and the
/// `outputs` below them, 2 px gaps.
pub fn reconstruction_grid(inputs: &Tensor, outputs: &Tensor, path: &Path) -> Result<()> {
    let (b, _, h, w) = inputs.dims4()?;
    let gap = 2;
    let mut canvas = Canvas::new(b * (w + gap) + gap, 2 * (h + gap) + gap, [32, 32, 32]);
    for (row, t) in [inputs, outputs].into_iter().enumerate() {
        // (b, 3, h, w) in [-1, 1] -> bytes
        let v = ((t.to_dtype(DType::F32)?.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
            .round()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for i in 0..b {
            for c in 0..3 {
                for y in 0..h {
                    for x in 0..w {
                        let val = v[((i * 3 + c) * h + y) * w + x] as u8;
                        let (px, py) = (gap + i * (w + gap) + x, gap + row * (h + gap) + y);
                        canvas.rgb[(py * canvas.width + px) * 3 + c] = val;
                    }
                }
            }
        }
    }
    canvas.save(path)
}

/// A series of the loss curve.
pub struct Series<'a> {
    pub points: &'a [(u64, f64)],
    pub color: [u8; 3],
}

/// The loss curve: x = step (linear), y = value (log10), grid lines and labels at each decade;
/// series drawn in order. Non-positive or non-finite values are left out.
pub fn loss_curve(series: &[Series], path: &Path) -> Result<()> {
    let (width, height) = (720usize, 400usize);
    let (left, right, top, bottom) = (56i64, 16i64, 16i64, 32i64);
    let mut c = Canvas::new(width, height, [255, 255, 255]);
    let ok = |v: f64| v.is_finite() && v > 0.0;
    let all: Vec<(u64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|p| ok(p.1))
        .collect();
    let max_step = all.iter().map(|p| p.0).max().unwrap_or(1).max(1);
    let lo = all.iter().map(|p| p.1.log10()).fold(f64::INFINITY, f64::min);
    let hi = all.iter().map(|p| p.1.log10()).fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() {
        (lo.floor(), hi.ceil().max(lo.floor() + 1.0))
    } else {
        (-3.0, 0.0)
    };
    let (pw, ph) = (width as i64 - left - right, height as i64 - top - bottom);
    let px = |step: u64| left + (step as f64 / max_step as f64 * pw as f64).round() as i64;
    let py = |v: f64| top + ((hi - v.log10()) / (hi - lo) * ph as f64).round() as i64;
    let grey = [220, 220, 220];
    let dark = [60, 60, 60];
    let mut d = lo;
    while d <= hi + 1e-9 {
        let y = py(10f64.powf(d));
        c.line((left, y), (left + pw, y), grey);
        c.text(4, y - 5, &format!("1e{}", d as i64), 2, dark);
        d += 1.0;
    }
    c.line((left, top), (left, top + ph), dark);
    c.line((left, top + ph), (left + pw, top + ph), dark);
    c.text(left, top + ph + 8, "0", 2, dark);
    let label = max_step.to_string();
    c.text(left + pw - 8 * label.len() as i64, top + ph + 8, &label, 2, dark);
    for s in series {
        let pts: Vec<(i64, i64)> = s
            .points
            .iter()
            .filter(|p| ok(p.1))
            .map(|&(st, v)| (px(st), py(v)))
            .collect();
        for pair in pts.windows(2) {
            c.line(pair[0], pair[1], s.color);
        }
        if let [only] = pts.as_slice() {
            c.set(only.0, only.1, s.color);
        }
    }
    c.save(path)
}
