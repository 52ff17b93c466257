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

#[derive(serde::Deserialize)]
struct RawCaptions {
    caption: String,
    #[serde(default)]
    long_caption: Option<String>,
}

/// The non-blank lines of a JSON-lines file, each parsed as `T`, with their 1-based numbers.
/// Every error (not UTF-8, not JSON, no records) is an [`Error::Config`] naming the file and
/// the line; `what` describes a record for the message.
fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<Vec<(usize, T)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let line =
            std::str::from_utf8(line).map_err(|_| Error::config(path, format!("line {}: not UTF-8 text", i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let raw: T = serde_json::from_str(line)
            .map_err(|e| Error::config(path, format!("line {}: not a record with {what}: {e}", i + 1)))?;
        out.push((i + 1, raw));
    }
    if out.is_empty() {
        return Err(Error::config(path, "holds no records"));
    }
    Ok(out)
}

/// Reads every record of a JSON-lines file (blank lines are skipped). Errors name the file and
/// the line.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (line, raw) in read_jsonl::<RawRecord>(path, "`path` and `caption`")? {
        if raw.path.is_empty() {
            return Err(Error::config(path, format!("line {line}: `path` is empty")));
        }
        let long_caption = raw.long_caption.unwrap_or_else(|| raw.caption.clone());
        out.push(Record {
            image: base.join(&raw.path),
            source: raw.path,
            caption: raw.caption,
            long_caption,
        });
    }
    Ok(out)
}

/// The captions of a JSON-lines file, for [`training_texts`] (`pixart train-tokenizer`): as
/// [`read_records`], but records need only `caption` (and optionally `long_caption`); `path`
/// and other keys are ignored. `image` and `source` of the records are empty.
pub fn read_captions(path: &Path) -> Result<Vec<Record>> {
    Ok(read_jsonl::<RawCaptions>(path, "`caption`")?
        .into_iter()
        .map(|(_, raw)| Record {
            source: String::new(),
            image: PathBuf::new(),
            long_caption: raw.long_caption.unwrap_or_else(|| raw.caption.clone()),
            caption: raw.caption,
        })
        .collect())
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
        // Captions only: `path` is not needed.
        std::fs::write(
            &p,
            "{\"caption\": \"A cat\"}\n{\"caption\": \"x\", \"long_caption\": \"y\", \"path\": 3}\n",
        )
        .unwrap();
        let r = read_captions(&p).unwrap();
        assert_eq!(training_texts(&r), ["a cat", "a cat", "x", "y"]);
        assert!(read_records(&p).unwrap_err().to_string().contains("line 1"));
        // Not UTF-8, not JSON, empty: configuration errors naming the file and the line.
        for (bytes, needle) in [
            (
                &b"{\"path\": \"a\", \"caption\": \"a\"}\n{\"caption\": \"\xff\"}\n"[..],
                "line 2: not UTF-8",
            ),
            (&b"\n{\"caption\": \"a\"\n"[..], "line 2: not a record"),
            (&b"\n\n"[..], "holds no records"),
        ] {
            std::fs::write(&p, bytes).unwrap();
            for e in [read_captions(&p).unwrap_err(), read_records(&p).unwrap_err()] {
                assert!(matches!(e, Error::Config { .. }), "{e}");
                let m = e.to_string();
                assert!(m.contains("train.jsonl") && m.contains(needle), "{m}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
