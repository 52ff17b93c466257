//! `pixart demo-data`: the deterministic generator of the demo dataset, and the readers of its
//! files.
//!
//! Layout of a dataset folder:
//! - `images/000000.png ...`: one shape on a plain background per image.
//! - `train.jsonl`: one [`TrainRecord`] per line (the image's path relative to the folder, both
//!   captions, the attributes, and the exact geometry, so the same scene renders at any size).
//! - `eval.jsonl`: [`EvalRecord`]s, every held-out combination and as many seen ones,
//!   interleaved (held-out, seen, held-out, ...), so a `--limit` keeps the balance.
//! - `dataset.json`: [`DatasetInfo`]: the parameters, the vocabulary and the held-out list.
//!
//! `dataset.json` is written first and the jsonl files last, each atomically; images are written
//! atomically one by one. A rerun with the same parameters skips the images already there, so
//! a killed run is resumed, and a folder with `train.jsonl` is always complete.
use std::collections::BTreeMap;
use std::path::Path;

use pixart_core::weights::write_atomic;
use pixart_core::{Error, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::render::{render, Geometry};
use crate::vocab::{Attributes, Color, Combo, Position, Shape, Size, HELD_OUT, JITTER_OFFSET, JITTER_SCALE};

/// The `format` of `dataset.json`.
pub const FORMAT: &str = "pixart-demo/1";
/// Most images in one dataset (six-digit file names).
pub const MAX_COUNT: usize = 1_000_000;
/// Accepted image sides.
pub const SIZES: std::ops::RangeInclusive<usize> = 16..=1024;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetConfig {
    pub seed: u64,
    /// Image side in pixels.
    pub size: usize,
    /// Training images.
    pub count: usize,
    /// How many times each held-out combination is in `eval.jsonl` (each time with its own
    /// size and position, and with as many seen prompts).
    pub eval_repeat: usize,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            size: 64,
            count: 20_000,
            eval_repeat: 1,
        }
    }
}

impl DatasetConfig {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        if !SIZES.contains(&self.size) {
            return Err(Error::InvalidInput(format!(
                "--size {} must be between {} and {} pixels",
                self.size,
                SIZES.start(),
                SIZES.end()
            )));
        }
        if self.count == 0 || self.count > MAX_COUNT {
            return Err(Error::InvalidInput(format!(
                "--count {} must be between 1 and {MAX_COUNT}",
                self.count
            )));
        }
        if self.eval_repeat == 0 || self.eval_repeat > 100 {
            return Err(Error::InvalidInput(format!(
                "--eval-repeat {} must be between 1 and 100",
                self.eval_repeat
            )));
        }
        Ok(())
    }
}

/// One line of `train.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// The image, relative to the dataset folder.
    pub path: String,
    pub caption: String,
    pub long_caption: String,
    pub attributes: Attributes,
    pub geometry: Geometry,
}

/// One line of `eval.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub caption: String,
    pub long_caption: String,
    pub attributes: Attributes,
    pub heldout: bool,
}

impl EvalRecord {
    fn new(attributes: Attributes) -> Self {
        Self {
            caption: attributes.caption(),
            long_caption: attributes.long_caption(),
            heldout: attributes.combo().is_held_out(),
            attributes,
        }
    }
}

/// The vocabulary as written to `dataset.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vocabulary {
    pub shapes: Vec<Shape>,
    /// Colour → sRGB.
    pub colors: BTreeMap<String, [u8; 3]>,
    /// Size → nominal extent (bounding-box side / image side).
    pub sizes: BTreeMap<String, f64>,
    /// Position → bounding-box centre (x, y), fractions of the side, y down.
    pub positions: BTreeMap<String, [f64; 2]>,
    /// Largest centre offset and relative extent change of the training jitter.
    pub jitter_offset: f64,
    pub jitter_scale: f64,
}

impl Vocabulary {
    fn current() -> Self {
        Self {
            shapes: Shape::ALL.to_vec(),
            colors: Color::ALL.iter().map(|c| (c.name().to_string(), c.rgb())).collect(),
            sizes: Size::ALL.iter().map(|s| (s.name().to_string(), s.extent())).collect(),
            positions: Position::ALL
                .iter()
                .map(|p| {
                    let (x, y) = p.anchor();
                    (p.name().to_string(), [x, y])
                })
                .collect(),
            jitter_offset: JITTER_OFFSET,
            jitter_scale: JITTER_SCALE,
        }
    }
}

/// `dataset.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub format: String,
    pub seed: u64,
    pub size: usize,
    pub count: usize,
    pub eval_repeat: usize,
    pub eval_count: usize,
    pub vocabulary: Vocabulary,
    pub held_out: Vec<Combo>,
}

impl DatasetInfo {
    pub fn new(config: &DatasetConfig) -> Self {
        Self {
            format: FORMAT.to_string(),
            seed: config.seed,
            size: config.size,
            count: config.count,
            eval_repeat: config.eval_repeat,
            eval_count: 2 * HELD_OUT.len() * config.eval_repeat,
            vocabulary: Vocabulary::current(),
            held_out: HELD_OUT.to_vec(),
        }
    }
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> Result<T> {
    items
        .get(rng.random_range(0..items.len().max(1)))
        .copied()
        .ok_or_else(|| Error::InvalidInput("nothing to pick from".into()))
}

/// Rounds to 5 decimals, so the geometry reads the same from the jsonl as it was rendered.
fn round5(x: f64) -> f64 {
    (x * 1e5).round() / 1e5
}

/// The training records (`count` of them, uniform over the 72 training combinations, sizes and
/// positions, with jitter) and the evaluation records, from `seed` alone.
pub fn plan(config: &DatasetConfig) -> Result<(Vec<TrainRecord>, Vec<EvalRecord>)> {
    config.validate()?;
    let training = Combo::training();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut train = Vec::with_capacity(config.count);
    for i in 0..config.count {
        let c = pick(&mut rng, &training)?;
        let attributes = Attributes {
            shape: c.shape,
            color: c.color,
            background: c.background,
            size: pick(&mut rng, &Size::ALL)?,
            position: pick(&mut rng, &Position::ALL)?,
        };
        let nominal = Geometry::nominal(&attributes);
        // Jitter on a 1/1000 grid: centre ± JITTER_OFFSET, extent × (1 ± JITTER_SCALE).
        let off = (JITTER_OFFSET * 1000.0).round() as i64;
        let scale = (JITTER_SCALE * 1000.0).round() as i64;
        let dx = rng.random_range(-off..=off) as f64 / 1000.0;
        let dy = rng.random_range(-off..=off) as f64 / 1000.0;
        let ds = rng.random_range(-scale..=scale) as f64 / 1000.0;
        let geometry = Geometry {
            cx: round5(nominal.cx + dx),
            cy: round5(nominal.cy + dy),
            extent: round5(nominal.extent * (1.0 + ds)),
        };
        train.push(TrainRecord {
            path: format!("images/{i:06}.png"),
            caption: attributes.caption(),
            long_caption: attributes.long_caption(),
            attributes,
            geometry,
        });
    }

    // Evaluation prompts from their own stream, so they do not depend on --count.
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut eval = Vec::with_capacity(2 * HELD_OUT.len() * config.eval_repeat);
    for _ in 0..config.eval_repeat {
        let mut seen = training.clone();
        seen.shuffle(&mut rng);
        for (held, seen) in HELD_OUT.iter().zip(&seen) {
            for c in [held, seen] {
                eval.push(EvalRecord::new(Attributes {
                    shape: c.shape,
                    color: c.color,
                    background: c.background,
                    size: pick(&mut rng, &Size::ALL)?,
                    position: pick(&mut rng, &Position::ALL)?,
                }));
            }
        }
    }
    Ok((train, eval))
}

/// What [`write_dataset`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteSummary {
    /// Images rendered and written now.
    pub written: usize,
    /// Images already there (a resumed run).
    pub skipped: usize,
    pub train_records: usize,
    pub eval_records: usize,
}

fn jsonl<T: Serialize>(records: &[T]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for r in records {
        serde_json::to_writer(&mut out, r).map_err(|e| Error::InvalidInput(format!("serialising a record: {e}")))?;
        out.push(b'\n');
    }
    Ok(out)
}

/// Images rendered (and written) per progress report.
const CHUNK: usize = 256;

/// Writes the dataset of `config` into `dir` (created if needed). `progress(done, total)` is
/// called as images are finished. Fails without writing when `dir` holds another dataset, or
/// files but no `dataset.json`.
pub fn write_dataset(
    dir: &Path,
    config: &DatasetConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<WriteSummary> {
    let (train, eval) = plan(config)?;
    let info = DatasetInfo::new(config);
    let info_path = dir.join("dataset.json");
    let info_bytes =
        serde_json::to_vec_pretty(&info).map_err(|e| Error::InvalidInput(format!("serialising dataset.json: {e}")))?;
    if info_path.is_file() {
        let old = std::fs::read(&info_path).map_err(|e| Error::io(&info_path, e))?;
        if old != info_bytes {
            return Err(Error::InvalidInput(format!(
                "{} already holds a dataset with other parameters (see its dataset.json); \
                 pass another --out or remove it",
                dir.display()
            )));
        }
    } else if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        if entries.next().is_some() {
            return Err(Error::InvalidInput(format!(
                "{} is not empty and holds no dataset.json; pass an empty or new folder",
                dir.display()
            )));
        }
    }
    let images = dir.join("images");
    std::fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
    write_atomic(&info_path, &info_bytes)?;

    let total = train.len();
    let (mut written, mut skipped) = (0, 0);
    progress(0, total);
    for (k, chunk) in train.chunks(CHUNK).enumerate() {
        let done: Vec<Result<bool>> = chunk
            .par_iter()
            .map(|r| {
                let path = dir.join(&r.path);
                if path.is_file() {
                    return Ok(false);
                }
                let img = render(&r.attributes, &r.geometry, config.size)?;
                write_atomic(&path, &img.to_png(None)?)?;
                Ok(true)
            })
            .collect();
        for d in done {
            if d? {
                written += 1;
            } else {
                skipped += 1;
            }
        }
        progress((k * CHUNK + chunk.len()).min(total), total);
    }
    write_atomic(&dir.join("eval.jsonl"), &jsonl(&eval)?)?;
    write_atomic(&dir.join("train.jsonl"), &jsonl(&train)?)?;
    Ok(WriteSummary {
        written,
        skipped,
        train_records: train.len(),
        eval_records: eval.len(),
    })
}

/// Records of a dataset file that fail a check on their content.
trait Validate {
    fn validate(&self) -> std::result::Result<(), String>;
}

fn check_attributes(a: &Attributes, caption: &str, long_caption: &str) -> std::result::Result<(), String> {
    if a.color == a.background {
        return Err(format!("the object colour equals the background ({})", a.color.name()));
    }
    if caption.trim().is_empty() || long_caption.trim().is_empty() {
        return Err("empty caption".into());
    }
    Ok(())
}

impl Validate for EvalRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        check_attributes(&self.attributes, &self.caption, &self.long_caption)
    }
}

impl Validate for TrainRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        check_attributes(&self.attributes, &self.caption, &self.long_caption)?;
        if self.path.is_empty() || Path::new(&self.path).is_absolute() {
            return Err(format!("`path` {:?} must be relative to the dataset folder", self.path));
        }
        Ok(())
    }
}

fn read_jsonl<T: DeserializeOwned + Validate>(path: &Path) -> Result<Vec<T>> {
    if !path.is_file() {
        return Err(Error::InvalidInput(format!("{}: no such file", path.display())));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| Error::InvalidInput(format!("{}:{}: {msg}", path.display(), n + 1));
        let r: T = serde_json::from_str(line).map_err(|e| bad(format!("bad record: {e}")))?;
        r.validate().map_err(bad)?;
        out.push(r);
    }
    if out.is_empty() {
        return Err(Error::InvalidInput(format!("{}: holds no records", path.display())));
    }
    Ok(out)
}

/// Reads an `eval.jsonl`; errors name the file and line.
pub fn read_eval(path: &Path) -> Result<Vec<EvalRecord>> {
    read_jsonl(path)
}

/// Reads a `train.jsonl`; errors name the file and line.
pub fn read_train(path: &Path) -> Result<Vec<TrainRecord>> {
    read_jsonl(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_deterministic_and_never_trains_on_held_out() {
        let cfg = DatasetConfig {
            count: 3000,
            ..Default::default()
        };
        let (t1, e1) = plan(&cfg).unwrap();
        let (t2, e2) = plan(&cfg).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(e1, e2);
        assert!(t1.iter().all(|r| !r.attributes.combo().is_held_out()));
        // Every training combination, size and position appears.
        let combos: std::collections::HashSet<_> = t1.iter().map(|r| r.attributes.combo()).collect();
        assert_eq!(combos.len(), 72);
        for p in Position::ALL {
            assert!(t1.iter().any(|r| r.attributes.position == p));
        }
        // Jitter stays within its bounds and the geometry keeps shapes inside.
        for r in &t1 {
            let n = Geometry::nominal(&r.attributes);
            assert!((r.geometry.cx - n.cx).abs() <= JITTER_OFFSET + 1e-9);
            assert!((r.geometry.extent / n.extent - 1.0).abs() <= JITTER_SCALE + 1e-6);
        }
        // Eval: every held-out combination once, as many seen ones, interleaved.
        assert_eq!(e1.len(), 36);
        let held: Vec<Combo> = e1.iter().filter(|e| e.heldout).map(|e| e.attributes.combo()).collect();
        assert_eq!(held, HELD_OUT.to_vec());
        assert!(e1.iter().step_by(2).all(|e| e.heldout));
        assert!(e1.iter().skip(1).step_by(2).all(|e| !e.heldout));
        let seen: std::collections::HashSet<_> =
            e1.iter().filter(|e| !e.heldout).map(|e| e.attributes.combo()).collect();
        assert_eq!(seen.len(), 18);
        // Another seed gives another dataset; the eval set does not depend on --count.
        let other = plan(&DatasetConfig { seed: 1, ..cfg }).unwrap();
        assert_ne!(other.0, t1);
        let fewer = plan(&DatasetConfig { count: 10, ..cfg }).unwrap();
        assert_eq!(fewer.1, e1);
        assert_eq!(fewer.0[..], t1[..10]);
    }

    #[test]
    fn bad_configs_are_errors() {
        for (cfg, needle) in [
            (
                DatasetConfig {
                    size: 8,
                    ..Default::default()
                },
                "--size 8",
            ),
            (
                DatasetConfig {
                    count: 0,
                    ..Default::default()
                },
                "--count 0",
            ),
            (
                DatasetConfig {
                    eval_repeat: 0,
                    ..Default::default()
                },
                "--eval-repeat",
            ),
        ] {
            let e = plan(&cfg).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
