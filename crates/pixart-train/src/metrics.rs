//! Training visibility: the JSONL log and PNG plots of curves.
use std::io::Write;
use std::path::{Path, PathBuf};

use pixart_core::{Error, Result};
use serde_json::Value;

/// Appends one JSON object per line to a log file. Opening it for a resumed run drops the
/// lines past the resumed step, so the log matches an uninterrupted run.
pub struct JsonlLog {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonlLog {
    /// Opens `path`, keeping only records whose `step` is at most `keep_up_to` (all records
    /// are dropped for a fresh run: `keep_up_to = None`).
    pub fn open(path: &Path, keep_up_to: Option<u64>) -> Result<Self> {
        let kept: Vec<String> = match (keep_up_to, std::fs::read_to_string(path)) {
            (Some(max), Ok(text)) => text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(Value::as_u64))
                        .is_some_and(|s| s <= max)
                })
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        let mut body = kept.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        pixart_core::weights::write_atomic(path, body.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends `record` as one line.
    pub fn write(&mut self, record: &Value) -> Result<()> {
        writeln!(self.file, "{record}").map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }

    /// The (step, value) pairs of numeric field `key` in the log at `path`.
    pub fn series(path: &Path, key: &str) -> Result<Vec<(f64, f64)>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| Some((v.get("step")?.as_f64()?, v.get(key)?.as_f64()?)))
            .collect())
    }
}

/// An RGB canvas with just what a line chart needs.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            self.set(
                (x0 + (x1 - x0) * t).round() as i64,
                (y0 + (y1 - y0) * t).round() as i64,
                c,
            );
        }
    }

    /// Text in the 8×8 bitmap font, top-left at (x, y).
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        use font8x8::UnicodeFonts;
        for (k, ch) in s.chars().enumerate() {
            let Some(glyph) = font8x8::BASIC_FONTS.get(ch) else {
                continue;
            };
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.set(x + (k * 8 + col) as i64, y + row as i64, c);
                    }
                }
            }
        }
    }

    fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut wr = enc
                .write_header()
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
            wr.write_image_data(&self.px)
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
        }
        pixart_core::weights::write_atomic(path, &bytes)
    }
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 || v.abs() < 0.01 {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

/// One curve of a chart.
pub struct Curve<'a> {
    pub label: &'a str,
    pub points: &'a [(f64, f64)],
    pub color: [u8; 3],
}

/// Writes a line chart of `curves` (x: step) to `path` as PNG, with the raw first curve in
/// light grey and its exponential moving average drawn over it when `smooth` is set. The y
/// range covers the 1st–99th percentile of the values, so early spikes do not flatten it.
pub fn plot(path: &Path, title: &str, curves: &[Curve], smooth: bool) -> Result<()> {
    plot_in(path, title, curves, smooth, None)
}

/// [`plot`] with the y axis fixed to `y_range` (e.g. accuracies in [0, 1]) when given.
pub fn plot_in(path: &Path, title: &str, curves: &[Curve], smooth: bool, y_range: Option<(f64, f64)>) -> Result<()> {
    let (w, h) = (800usize, 420usize);
    let (l, r, t, b) = (80.0, 20.0, 30.0, 40.0);
    let mut cv = Canvas::new(w, h);
    let all: Vec<(f64, f64)> = curves.iter().flat_map(|c| c.points.iter().copied()).collect();
    cv.text(l as i64, 10, title, [0, 0, 0]);
    if all.is_empty() {
        return cv.save(path);
    }
    let mut ys: Vec<f64> = all.iter().map(|p| p.1).filter(|v| v.is_finite()).collect();
    ys.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        ys.get(((ys.len() - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let (mut y0, mut y1) = y_range.unwrap_or((pick(0.01), pick(0.99)));
    if (y1 - y0).abs() < 1e-12 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let x0 = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let mut x1 = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let (pw, ph) = (w as f64 - l - r, h as f64 - t - b);
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| t + (1.0 - ((y - y0) / (y1 - y0)).clamp(-0.02, 1.02)) * ph;
    // Grid and axis labels.
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let gy = t + f * ph;
        cv.line((l, gy), (l + pw, gy), [225, 225, 225]);
        cv.text(4, gy as i64 - 4, &fmt_num(y1 - f * (y1 - y0)), [60, 60, 60]);
        let gx = l + f * pw;
        cv.line((gx, t), (gx, t + ph), [225, 225, 225]);
        let label = format!("{}", (x0 + f * (x1 - x0)).round() as i64);
        cv.text(
            gx as i64 - 4 * label.len() as i64,
            (t + ph + 8.0) as i64,
            &label,
            [60, 60, 60],
        );
    }
    cv.line((l, t), (l, t + ph), [0, 0, 0]);
    cv.line((l, t + ph), (l + pw, t + ph), [0, 0, 0]);
    cv.text((l + pw / 2.0) as i64 - 16, h as i64 - 14, "step", [0, 0, 0]);
    // The legend at the top right, wide enough for the longest label (8 px per character).
    let longest = curves.iter().map(|c| c.label.chars().count() + 2).max().unwrap_or(0);
    let legend_x = (l + pw - 8.0 * longest as f64 - 4.0).max(l + 4.0);
    for (k, c) in curves.iter().enumerate() {
        let raw_color = if smooth && k == 0 { [200, 200, 200] } else { c.color };
        for p in c.points.windows(2) {
            cv.line((sx(p[0].0), sy(p[0].1)), (sx(p[1].0), sy(p[1].1)), raw_color);
        }
        if smooth && k == 0 && c.points.len() > 2 {
            let alpha = (10.0 / c.points.len() as f64).clamp(0.02, 0.5);
            let mut s = c.points[0].1;
            let mut prev = (sx(c.points[0].0), sy(s));
            for p in &c.points[1..] {
                s = s * (1.0 - alpha) + p.1 * alpha;
                let cur = (sx(p.0), sy(s));
                cv.line(prev, cur, c.color);
                prev = cur;
            }
        }
        cv.text(
            legend_x as i64,
            (t + 8.0 + 12.0 * k as f64) as i64,
            &format!("- {}", c.label),
            c.color,
        );
    }
    cv.save(path)
}

/// Writes `images` (all the same size) as one PNG grid, `cols` per row, 2 px gaps.
pub fn save_grid(path: &Path, images: &[pixart_pipeline::RgbImage], cols: usize) -> Result<()> {
    let Some(first) = images.first() else {
        return Err(Error::InvalidInput(format!("{}: no images to write", path.display())));
    };
    let (iw, ih) = (first.width, first.height);
    let cols = cols.clamp(1, images.len());
    let rows = images.len().div_ceil(cols);
    let gap = 2;
    let mut cv = Canvas::new(cols * (iw + gap) + gap, rows * (ih + gap) + gap);
    for (k, img) in images.iter().enumerate() {
        let (ox, oy) = (gap + (k % cols) * (iw + gap), gap + (k / cols) * (ih + gap));
        for y in 0..img.height.min(ih) {
            for x in 0..img.width.min(iw) {
                let i = (y * img.width + x) * 3;
                if let Some(px) = img.data.get(i..i + 3) {
                    cv.set((ox + x) as i64, (oy + y) as i64, [px[0], px[1], px[2]]);
                }
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    cv.save(path)
}
