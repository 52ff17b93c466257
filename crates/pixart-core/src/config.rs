//! Reading JSON config files (diffusers `config.json`, `model_index.json`, ...).
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Reads and deserialises a JSON file; errors name the file and the offending key or line.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        if key.is_empty() || key == "." {
            Error::config(path, format!("invalid config: {inner}"))
        } else {
            Error::config(path, format!("invalid config: key `{key}`: {inner}"))
        }
    })
}

/// Writes `value` as pretty JSON, atomically (temp file + rename).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::config(path, format!("cannot serialise: {e}")))?;
    crate::weights::write_atomic(path, text.as_bytes())
}
