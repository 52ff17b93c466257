//! The project's own small built-in model: a diffusers-layout pipeline folder shipped in the
//! repository (`models/builtin/`), used when no `--model` is given.
use std::path::{Component, Path, PathBuf};

use pixart_core::{Error, Result};

/// Environment variable that points at another built-in model folder.
pub const BUILTIN_ENV: &str = "PIXART_BUILTIN";

/// The folder of the built-in model: `$PIXART_BUILTIN` when set, else `models/builtin` of the
/// source tree this binary was built from. An error names the folder when it has no
/// `model_index.json`.
pub fn builtin_model_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os(BUILTIN_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/builtin")),
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| lexically_normal(&dir));
    if dir.join("model_index.json").is_file() {
        Ok(dir)
    } else {
        Err(Error::InvalidInput(format!(
            "the built-in model is not at {} (no model_index.json); pass --model or set {BUILTIN_ENV}",
            dir.display()
        )))
    }
}

/// `dir` with `.` and `name/..` pairs removed (for messages about folders that do not exist).
fn lexically_normal(dir: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in dir.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether `spec` names the built-in model (`builtin`).
pub fn is_builtin(spec: &str) -> bool {
    spec == "builtin"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_normalisation_drops_dot_dot_pairs() {
        assert_eq!(
            lexically_normal(Path::new("/a/b/c/../../m/./x")),
            PathBuf::from("/a/m/x")
        );
        assert_eq!(lexically_normal(Path::new("../a/../b")), PathBuf::from("../b"));
    }
}
