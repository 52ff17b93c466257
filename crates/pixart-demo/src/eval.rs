//! `pixart eval demo`: generate an image for every evaluation prompt with a pipeline, check it,
//! and summarise accuracy per attribute for the held-out and the seen prompts, plus a contact
//! sheet of the images framed green (all attributes right) or red.
use std::sync::atomic::AtomicBool;

use pixart_core::{Error, Result};
use pixart_pipeline::{
    generate, Generated, GenerationRequest, ModelGeometry, PipelineComponents, RgbImage, SeededNoise,
};
use pixart_schedulers::SamplerKind;
use serde::Serialize;

use crate::check::{check, Check};
use crate::dataset::EvalRecord;

/// Which caption is the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionKind {
    /// "a red circle": only colour and shape are asked for.
    Short,
    /// "a small red circle at the top left on a blue background": every attribute.
    #[default]
    Long,
}

impl CaptionKind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "short" => Ok(Self::Short),
            "long" => Ok(Self::Long),
            _ => Err(Error::InvalidInput(format!("--caption {s}: expected short or long"))),
        }
    }

    /// The prompt for `record`.
    pub fn prompt(self, record: &EvalRecord) -> &str {
        match self {
            Self::Short => &record.caption,
            Self::Long => &record.long_caption,
        }
    }
}

/// How to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    pub steps: usize,
    pub guidance: f64,
    /// Prompt `i` uses seed `seed + i` (whatever the batching).
    pub seed: u64,
    pub caption: CaptionKind,
    /// Prompts per pipeline call.
    pub batch: usize,
    /// `None`: the sampler the scheduler config names.
    pub sampler: Option<SamplerKind>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            steps: 20,
            guidance: 4.5,
            seed: 0,
            caption: CaptionKind::Long,
            batch: 8,
            sampler: None,
        }
    }
}

/// One evaluated prompt.
#[derive(Debug, Clone)]
pub struct EvalItem {
    pub record: EvalRecord,
    pub seed: u64,
    pub image: RgbImage,
    pub check: Check,
}

/// The request for prompts `start..start + records.len()`, at the model's native size.
fn request(records: &[EvalRecord], start: usize, opts: &EvalOptions) -> GenerationRequest {
    GenerationRequest {
        prompts: records.iter().map(|r| opts.caption.prompt(r).to_string()).collect(),
        steps: Some(opts.steps),
        guidance: Some(opts.guidance),
        seed: opts.seed.wrapping_add(start as u64),
        sampler: opts.sampler,
        // Native size: no width/height, no binning (the demo model's sizes have no bin table).
        resolution_binning: false,
        ..GenerationRequest::default()
    }
}

/// Checks `records` and `opts` against the model's geometry (from the loaded components, or
/// before loading from [`pixart_pipeline::ResolvedPaths::geometry`]) without generating anything.
pub fn validate(geometry: &ModelGeometry, records: &[EvalRecord], opts: &EvalOptions) -> Result<()> {
    if records.is_empty() {
        return Err(Error::InvalidInput("no evaluation prompts".into()));
    }
    if opts.batch == 0 {
        return Err(Error::InvalidInput("--batch must be at least 1".into()));
    }
    request(&records[..1], 0, opts).validate(geometry)?;
    Ok(())
}

/// Generates and checks every record. `progress(done, total)` follows the images; `None` when
/// `cancel` was set (between pipeline calls or steps).
pub fn evaluate(
    components: &PipelineComponents,
    records: &[EvalRecord],
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
    cancel: &AtomicBool,
) -> Result<Option<Vec<EvalItem>>> {
    validate(&components.geometry(), records, opts)?;
    let total = records.len();
    let mut items = Vec::with_capacity(total);
    progress(0, total);
    for (k, chunk) in records.chunks(opts.batch).enumerate() {
        let start = k * opts.batch;
        let req = request(chunk, start, opts).validate(&components.geometry())?;
        let mut noise = SeededNoise::new(req.seed);
        let out = match generate(components, &req, &mut noise, &mut |_| {}, cancel)? {
            Generated::Finished(o) => o,
            Generated::Cancelled { .. } => return Ok(None),
        };
        if out.images.len() != chunk.len() {
            return Err(Error::Shape(format!(
                "the pipeline returned {} images for {} prompts",
                out.images.len(),
                chunk.len()
            )));
        }
        for (i, (record, image)) in chunk.iter().zip(out.images).enumerate() {
            let check = check(&image, &record.attributes)?;
            items.push(EvalItem {
                record: record.clone(),
                seed: opts.seed.wrapping_add((start + i) as u64),
                image,
                check,
            });
        }
        progress(items.len(), total);
    }
    Ok(Some(items))
}

/// Accuracy per attribute over `n` prompts (`None` when `n` is 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Accuracy {
    pub n: usize,
    pub background: Option<f64>,
    pub color: Option<f64>,
    pub shape: Option<f64>,
    pub size: Option<f64>,
    pub position: Option<f64>,
    pub all: Option<f64>,
}

impl Accuracy {
    pub fn of<'a>(checks: impl IntoIterator<Item = &'a Check>) -> Self {
        let checks: Vec<&Check> = checks.into_iter().collect();
        let n = checks.len();
        let rate =
            |f: &dyn Fn(&Check) -> bool| (n > 0).then(|| checks.iter().filter(|c| f(c)).count() as f64 / n as f64);
        Self {
            n,
            background: rate(&|c| c.background),
            color: rate(&|c| c.color),
            shape: rate(&|c| c.shape),
            size: rate(&|c| c.size),
            position: rate(&|c| c.position),
            all: rate(&|c| c.all()),
        }
    }

    /// The attributes in table order, with their names.
    pub fn columns(&self) -> [(&'static str, Option<f64>); 6] {
        [
            ("background", self.background),
            ("color", self.color),
            ("shape", self.shape),
            ("size", self.size),
            ("position", self.position),
            ("all", self.all),
        ]
    }
}

/// The targets for held-out prompts: (attribute, lowest accuracy).
pub const HELDOUT_TARGETS: [(&str, f64); 3] = [("color", 0.9), ("position", 0.8), ("shape", 0.7)];

/// A target against its held-out figure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TargetResult {
    pub attribute: &'static str,
    pub target: f64,
    pub heldout: Option<f64>,
    pub met: bool,
}

/// Held-out and seen accuracy, and the targets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub heldout: Accuracy,
    pub seen: Accuracy,
    pub targets: Vec<TargetResult>,
}

impl Report {
    pub fn new(items: &[EvalItem]) -> Self {
        let heldout = Accuracy::of(items.iter().filter(|i| i.record.heldout).map(|i| &i.check));
        let seen = Accuracy::of(items.iter().filter(|i| !i.record.heldout).map(|i| &i.check));
        let targets = HELDOUT_TARGETS
            .iter()
            .map(|&(attribute, target)| {
                let got = heldout
                    .columns()
                    .iter()
                    .find(|(n, _)| *n == attribute)
                    .and_then(|c| c.1);
                TargetResult {
                    attribute,
                    target,
                    heldout: got,
                    met: got.is_some_and(|g| g >= target),
                }
            })
            .collect();
        Self { heldout, seen, targets }
    }

    /// The table: one row for held-out, one for seen, one with the held-out targets.
    pub fn table(&self) -> String {
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
        let mut s = format!("{:<18}{:>5}", "prompts", "n");
        for (name, _) in self.heldout.columns() {
            s += &format!("{name:>12}");
        }
        s.push('\n');
        for (label, acc) in [("held-out", &self.heldout), ("seen", &self.seen)] {
            s += &format!("{label:<18}{:>5}", acc.n);
            for (_, v) in acc.columns() {
                s += &format!("{:>12}", pct(v));
            }
            s.push('\n');
        }
        s += &format!("{:<18}{:>5}", "held-out target", "");
        for (name, _) in self.heldout.columns() {
            let cell = match self.targets.iter().find(|t| t.attribute == name) {
                Some(t) => format!("≥{:.0}% {}", 100.0 * t.target, if t.met { "ok" } else { "NO" }),
                None => String::new(),
            };
            s += &format!("{cell:>12}");
        }
        s.push('\n');
        s
    }
}

/// Frame colours of the contact sheet.
pub const GREEN: [u8; 3] = [0, 200, 0];
pub const RED: [u8; 3] = [220, 0, 0];
const SHEET_BACKGROUND: [u8; 3] = [128, 128, 128];

/// A grid of `images` (`columns` per row; all the same size), each in a frame green when its
/// flag is true, red when false. The frame is `max(2, side/32)` pixels wide, with a 2-pixel gap
/// between cells.
pub fn contact_sheet(images: &[(&RgbImage, bool)], columns: usize) -> Result<RgbImage> {
    let first = images
        .first()
        .ok_or_else(|| Error::InvalidInput("no images for the contact sheet".into()))?
        .0;
    let (w, h) = (first.width, first.height);
    for (img, _) in images {
        img.check()?;
        if (img.width, img.height) != (w, h) {
            return Err(Error::Shape(format!(
                "contact sheet images differ in size: {}x{} and {w}x{h}",
                img.width, img.height
            )));
        }
    }
    let columns = columns.clamp(1, images.len());
    let rows = images.len().div_ceil(columns);
    let frame = (w.min(h) / 32).max(2);
    let gap = 2;
    let (cw, ch) = (w + 2 * frame + gap, h + 2 * frame + gap);
    let mut sheet = RgbImage::filled(columns * cw + gap, rows * ch + gap, SHEET_BACKGROUND);
    let sw = sheet.width;
    for (k, (img, ok)) in images.iter().enumerate() {
        let (ox, oy) = (gap + (k % columns) * cw, gap + (k / columns) * ch);
        let color = if *ok { GREEN } else { RED };
        for y in 0..h + 2 * frame {
            for x in 0..w + 2 * frame {
                let inner = x >= frame && y >= frame && x < w + frame && y < h + frame;
                let rgb = if inner {
                    img.pixel(x - frame, y - frame).unwrap_or(color)
                } else {
                    color
                };
                let i = 3 * ((oy + y) * sw + ox + x);
                if let Some(p) = sheet.data.get_mut(i..i + 3) {
                    p.copy_from_slice(&rgb);
                }
            }
        }
    }
    Ok(sheet)
}

/// One row of the JSON results.
#[derive(Debug, Clone, Serialize)]
pub struct ItemResult<'a> {
    pub index: usize,
    pub prompt: &'a str,
    pub heldout: bool,
    pub seed: u64,
    pub expected: &'a crate::vocab::Attributes,
    pub correct: Correct,
    pub seen: &'a crate::check::Seen,
}

/// Per-attribute verdicts of one item.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Correct {
    pub background: bool,
    pub color: bool,
    pub shape: bool,
    pub size: bool,
    pub position: bool,
    pub all: bool,
}

/// The JSON rows of `items`.
pub fn item_results(items: &[EvalItem], caption: CaptionKind) -> Vec<ItemResult<'_>> {
    items
        .iter()
        .enumerate()
        .map(|(index, it)| ItemResult {
            index,
            prompt: caption.prompt(&it.record),
            heldout: it.record.heldout,
            seed: it.seed,
            expected: &it.record.attributes,
            correct: Correct {
                background: it.check.background,
                color: it.check.color,
                shape: it.check.shape,
                size: it.check.size,
                position: it.check.position,
                all: it.check.all(),
            },
            seen: &it.check.seen,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{render, Geometry};
    use crate::vocab::{Attributes, Color, Position, Shape, Size};

    fn item(heldout: bool, wrong_color: bool) -> EvalItem {
        let a = Attributes {
            shape: Shape::Circle,
            color: Color::Red,
            background: Color::Green,
            size: Size::Large,
            position: Position::Center,
        };
        let drawn = Attributes {
            color: if wrong_color { Color::Blue } else { a.color },
            ..a
        };
        let image = render(&drawn, &Geometry::nominal(&drawn), 32).unwrap();
        let check = check(&image, &a).unwrap();
        EvalItem {
            record: EvalRecord {
                caption: a.caption(),
                long_caption: a.long_caption(),
                attributes: a,
                heldout,
            },
            seed: 0,
            image,
            check,
        }
    }

    #[test]
    fn report_counts_per_group_and_targets() {
        let items = vec![item(true, false), item(true, true), item(false, false)];
        let r = Report::new(&items);
        assert_eq!(r.heldout.n, 2);
        assert_eq!(r.heldout.color, Some(0.5));
        assert_eq!(r.heldout.shape, Some(1.0));
        assert_eq!(r.heldout.all, Some(0.5));
        assert_eq!(r.seen.all, Some(1.0));
        let color = r.targets.iter().find(|t| t.attribute == "color").unwrap();
        assert!(!color.met);
        assert!(r.targets.iter().find(|t| t.attribute == "shape").unwrap().met);
        let table = r.table();
        assert!(table.contains("held-out"), "{table}");
        assert!(
            table.contains("50.0%") && table.contains("≥90% NO") && table.contains("≥70% ok"),
            "{table}"
        );
        let empty = Report::new(&items[2..]);
        assert_eq!(empty.heldout.n, 0);
        assert!(!empty.targets[0].met);
        assert!(empty.table().contains('-'));
    }

    #[test]
    fn contact_sheet_frames_and_layout() {
        let items = [item(true, false), item(true, true), item(false, false)];
        let imgs: Vec<(&RgbImage, bool)> = items.iter().map(|i| (&i.image, i.check.all())).collect();
        let sheet = contact_sheet(&imgs, 2).unwrap();
        // 32 px images, 2 px frames, 2 px gaps: 2 columns × 38 + 2, 2 rows × 38 + 2.
        assert_eq!((sheet.width, sheet.height), (78, 78));
        assert_eq!(sheet.pixel(2, 2), Some(GREEN));
        assert_eq!(sheet.pixel(40, 2), Some(RED));
        assert_eq!(sheet.pixel(4, 4), items[0].image.pixel(0, 0));
        assert_eq!(sheet.pixel(60, 60), Some(SHEET_BACKGROUND));
        assert!(contact_sheet(&[], 4).is_err());
        let small = RgbImage::filled(16, 16, [0, 0, 0]);
        assert!(contact_sheet(&[(&items[0].image, true), (&small, true)], 2).is_err());
    }
}
