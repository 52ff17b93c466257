//! The caption dataset: a JSON-lines file of records
//! `{"path": "images/000000.png", "caption": "...", "long_caption": "...", ...}` with `path`
//! relative to the file's folder (what `pixart demo-data` writes). Other keys (e.g.
//! `attributes`) are ignored.
use std::path::{Path, PathBuf};

use pixart_core::{Error, Result};

/// One training image and its two captions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `path` as written in the file (relative to the file's folder, or absolute).
    pub source: String,
    /// `source` resolved against the file's folder.
    pub image: PathBuf,
    /// The short caption (`caption`).
    pub caption: String,
    /// The dense caption (`long_caption`); the short caption when the record has none.
    pub long_caption: String,
}

#[derive(serde::Deserialize)]
struct RawRecord {
    path: String,
    caption: String,
    #[serde(default)]
    long_caption: Option<String>,
}

/// Reads every record of a JSON-lines file (blank lines are skipped). Errors name the file and
/// the line.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let raw: RawRecord = serde_json::from_str(line).map_err(|e| {
            Error::config(
                path,
                format!("line {}: not a record with `path` and `caption`: {e}", i + 1),
            )
        })?;
        if raw.path.is_empty() {
            return Err(Error::config(path, format!("line {}: `path` is empty", i + 1)));
        }
        let long_caption = raw.long_caption.unwrap_or_else(|| raw.caption.clone());
        out.push(Record {
            image: base.join(&raw.path),
            source: raw.path,
            caption: raw.caption,
            long_caption,
        });
    }
    if out.is_empty() {
        return Err(Error::config(path, "holds no records"));
    }
    Ok(out)
}

/// Both captions of every record, preprocessed as the features are made
/// ([`pixart_text::preprocess_caption`]: lower-cased and stripped): the texts a tokenizer for
/// this dataset is trained on.
pub fn training_texts(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .flat_map(|r| [&r.caption, &r.long_caption])
        .map(|c| pixart_text::preprocess_caption(c, false))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_and_names_bad_lines() {
        let dir = std::env::temp_dir().join(format!("pixart-records-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("train.jsonl");
        std::fs::write(
            &p,
            "{\"path\": \"images/0.png\", \"caption\": \"A red circle \", \"long_caption\": \"a small red circle\", \"attributes\": {\"shape\": \"circle\"}}\n\n{\"path\": \"b.png\", \"caption\": \"x\"}\n",
        )
        .unwrap();
        let r = read_records(&p).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].image, dir.join("images/0.png"));
        assert_eq!(r[1].long_caption, "x");
        assert_eq!(training_texts(&r), ["a red circle", "a small red circle", "x", "x"]);
        std::fs::write(&p, "{\"path\": \"a.png\", \"caption\": \"x\"}\n{\"path\": 3}\n").unwrap();
        let e = read_records(&p).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
