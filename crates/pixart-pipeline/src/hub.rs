//! Hugging Face hub ids (`owner/name`, optionally `owner/name@revision`) resolved to a snapshot
//! folder of the standard HF cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`), through the `hf-hub` crate's cache layout
//! (`models--owner--name/refs/<revision>` → `snapshots/<commit>/`).
//!
//! This build never downloads: it behaves as with `HF_HUB_OFFLINE=1` whatever that variable
//! says, and a repository missing from the cache is an error that says how to fetch it.
use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};
use pixart_core::{Error, Result};

/// Whether `s` looks like a hub id: `owner/name[@revision]`, letters, digits, `-`, `_`, `.`.
pub fn is_hub_id(s: &str) -> bool {
    let id = s.split_once('@').map_or(s, |(id, _)| id);
    let mut parts = id.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// The cache the environment names: `HF_HUB_CACHE`, else `HF_HOME/hub`, else the default.
pub fn cache_from_env() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(p) if !p.is_empty() => Cache::new(PathBuf::from(p)),
        _ => Cache::from_env(),
    }
}

/// The snapshot folder of hub id `spec` in `cache`.
pub fn snapshot_in(cache: &Cache, spec: &str) -> Result<PathBuf> {
    let (id, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    let repo = cache.repo(Repo::with_revision(
        id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    // Any file the snapshot holds tells us where it is; these are the ones a PixArt repo has.
    for (file, depth) in [
        ("model_index.json", 1),
        ("transformer/config.json", 2),
        ("config.json", 1),
        ("text_encoder/config.json", 2),
        ("vae/config.json", 2),
    ] {
        if let Some(p) = repo.get(file) {
            if let Some(dir) = p.ancestors().nth(depth) {
                return Ok(dir.to_path_buf());
            }
        }
    }
    Err(Error::InvalidInput(format!(
        "`{spec}` is neither a local folder nor a hub id in the HF cache ({}); this build does not download: \
         fetch it first (e.g. `hf download {id}`) or pass a local folder",
        cache.path().display()
    )))
}

/// `path` itself when it exists; otherwise, when it reads as a hub id, its snapshot folder in
/// the environment's HF cache.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    match path.to_str() {
        Some(s) if is_hub_id(s) => snapshot_in(&cache_from_env(), s),
        _ => Ok(path.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_id_shapes() {
        assert!(is_hub_id("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"));
        assert!(is_hub_id("org/name@v1.0"));
        assert!(!is_hub_id("name"));
        assert!(!is_hub_id("a/b/c"));
        assert!(!is_hub_id("./x"));
        assert!(!is_hub_id("/abs/x"));
        assert!(!is_hub_id("../x"));
    }
}
