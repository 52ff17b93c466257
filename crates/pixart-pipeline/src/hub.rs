//! Hugging Face hub ids (`owner/name`, optionally `owner/name@revision`) resolved to a snapshot
//! folder of the standard HF cache, downloading the files a pipeline needs when they are not
//! there yet, with the `hf-hub` crate (0.4.3, its sync `ureq` API).
//!
//! The environment is read as huggingface_hub reads it ([`HubConfig::from_env`]):
//! `HF_HUB_CACHE` (else `HF_HOME/hub`, else `~/.cache/huggingface/hub`), `HF_ENDPOINT`,
//! `HF_HUB_OFFLINE` (`1`/`true`/`yes`/`on`: the cache only, no request at all) and `HF_TOKEN`
//! (else the token file `HF_HOME/token` that `hf auth login` writes).
//!
//! Only what the pipeline reads is fetched ([`plan`]): `model_index.json`, and for each wanted
//! component it names, the config and one set of weights (the first of
//! `diffusion_pytorch_model.safetensors`, its shard index, `model.safetensors`, its shard
//! index, `pytorch_model.bin`; for an index, every shard it names), the tokenizer's files and
//! `scheduler/scheduler_config.json`. Variants (`*.fp16.safetensors`), original checkpoints
//! beside the diffusers folders and other files are left on the hub. A repository without
//! `model_index.json` that has a `transformer/` folder (the 256/512/2K PixArt-Σ repos) gives
//! only `transformer/*`; one with a `config.json` at its root (a lone VAE, say) gives that folder.
//!
//! The layout is the one huggingface_hub and hf-hub share: `models--owner--name/blobs/<etag>`,
//! `snapshots/<commit>/<file>` (a link to the blob) and `refs/<revision>` (the commit). hf-hub
//! 0.4.3 (`src/api/sync.rs`) asks the hub `GET {endpoint}/api/models/{id}/revision/{revision}`
//! (the file list and the commit), then per file `GET {endpoint}/{id}/resolve/{revision}/{file}`
//! with `Range: bytes=0-0` (size from `Content-Range`, `ETag`/`X-Linked-Etag`,
//! `X-Repo-Commit`) and again with `Range: bytes=N-` for the content.
//!
//! When the hub cannot be reached, a complete cached snapshot is used (with a note); otherwise
//! the error says so in one line.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use pixart_core::{Error, Result};

/// Where the hub is when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The pipeline components (names of `model_index.json` and of the repository's folders).
pub const COMPONENTS: [&str; 5] = ["transformer", "text_encoder", "tokenizer", "vae", "scheduler"];

/// Weight files of a component folder, in the order the loaders look for them
/// (pixart_model / pixart_vae / pixart_text `loading.rs`).
const WEIGHT_NAMES: [&str; 5] = [
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
];

/// How to reach the hub and where its cache is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// The hub cache folder (holding `models--owner--name/`).
    pub cache: PathBuf,
    /// The hub's base URL, without a trailing `/`.
    pub endpoint: String,
    /// Use the cache only; never send a request.
    pub offline: bool,
    /// Bearer token for gated and private repositories.
    pub token: Option<String>,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// huggingface_hub's `_is_true` (constants.py): 1, ON, YES, TRUE in any case.
fn env_true(name: &str) -> bool {
    env_nonempty(name).is_some_and(|v| matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"))
}

impl HubConfig {
    /// From `HF_HUB_CACHE` / `HF_HOME`, `HF_ENDPOINT`, `HF_HUB_OFFLINE` and `HF_TOKEN` (else the
    /// token file of `HF_HOME`).
    pub fn from_env() -> Self {
        let endpoint = env_nonempty("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Self {
            cache: cache_from_env().path().clone(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            offline: env_true("HF_HUB_OFFLINE"),
            token: env_nonempty("HF_TOKEN").or_else(|| Cache::from_env().token()),
        }
    }
}

/// What a download reports, for a progress display.
pub trait DownloadProgress {
    /// File `file` of repository `repo`, `size` bytes, starts downloading.
    fn start(&mut self, repo: &str, file: &str, size: u64);
    /// `bytes` more bytes of it arrived.
    fn advance(&mut self, bytes: u64);
    /// It is complete.
    fn finish(&mut self);
    /// Something the user should know (e.g. that the cache is used because the hub is unreachable).
    fn note(&mut self, _message: &str) {}
}

/// No display.
impl DownloadProgress for () {
    fn start(&mut self, _repo: &str, _file: &str, _size: u64) {}
    fn advance(&mut self, _bytes: u64) {}
    fn finish(&mut self) {}
}

/// hf-hub's progress callbacks forwarded to a [`DownloadProgress`]. hf-hub 0.4.3 calls `init`
/// twice per file (`download_tempfile`, then `download_from`); the second is dropped.
struct Bridge<'a> {
    inner: &'a mut dyn DownloadProgress,
    repo: &'a str,
    started: bool,
}

impl hf_hub::api::Progress for Bridge<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        if !self.started {
            self.started = true;
            self.inner.start(self.repo, filename, size as u64);
        }
    }
    fn update(&mut self, size: usize) {
        self.inner.advance(size as u64);
    }
    fn finish(&mut self) {
        self.inner.finish();
    }
}

/// Whether `s` looks like a hub id: `owner/name[@revision]`, letters, digits, `-`, `_`, `.`
/// (the revision may also hold `/`, as in `refs/pr/1`, but no `..`).
pub fn is_hub_id(s: &str) -> bool {
    let (id, revision) = match s.split_once('@') {
        Some((id, rev)) => (id, Some(rev)),
        None => (s, None),
    };
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let ok = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && !p.starts_with('.') && p.chars().all(name_char));
    let mut parts = id.split('/');
    let revision_ok = revision.is_none_or(|r| r.split('/').all(|p| ok(Some(p))));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none() && revision_ok
}

fn split_spec(spec: &str) -> (&str, &str) {
    spec.split_once('@').unwrap_or((spec, "main"))
}

fn model_repo(id: &str, revision: &str) -> Repo {
    Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string())
}

/// The cache the environment names: `HF_HUB_CACHE`, else `HF_HOME/hub`, else the default.
pub fn cache_from_env() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(p) if !p.is_empty() => Cache::new(PathBuf::from(p)),
        _ => Cache::from_env(),
    }
}

/// The snapshot folder of hub id `spec` in the hub cache folder `cache`, if there is one:
/// `refs/<revision>` names the commit (a revision that is itself a cached commit needs no ref).
pub fn cached_snapshot(cache: &Path, spec: &str) -> Option<PathBuf> {
    let (id, revision) = split_spec(spec);
    let dir = cache.join(model_repo(id, revision).folder_name());
    let commit = std::fs::read_to_string(dir.join("refs").join(revision))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| revision.to_string());
    Some(dir.join("snapshots").join(commit)).filter(|p| p.is_dir())
}

/// Every file under `root`, as `/`-separated relative paths (links followed).
fn list_files(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if path.is_dir() {
                walk(&path, &format!("{prefix}{name}/"), out);
            } else if path.is_file() {
                out.insert(format!("{prefix}{name}"));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, "", &mut out);
    out
}

/// The files directly in folder `prefix` (`"vae/"`, or `""` for the root).
fn in_folder<'a>(files: &'a BTreeSet<String>, prefix: &'a str) -> impl Iterator<Item = &'a String> + 'a {
    files
        .iter()
        .filter(move |f| f.strip_prefix(prefix).is_some_and(|rest| !rest.contains('/')))
}

/// The shard file names a `*.index.json` names (its `weight_map` values), each once.
fn shards_of(index: &Path) -> Result<Vec<String>> {
    let v: serde_json::Value = pixart_core::config::read_json(index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::config(index, "no `weight_map` object"))?;
    let mut out: Vec<String> = Vec::new();
    for shard in map.values() {
        let shard = shard
            .as_str()
            .filter(|s| !s.is_empty() && !s.contains(['/', '\\']) && *s != "..")
            .ok_or_else(|| Error::config(index, format!("`weight_map` names a bad shard file {shard}")))?;
        if !out.iter().any(|s| s == shard) {
            out.push(shard.to_string());
        }
    }
    Ok(out)
}

/// The files of a repository whose file list is `files` that the `wanted` components need, in
/// download order (see the module doc). `fetch` makes one of them local and gives its path; it
/// is called for `model_index.json` and shard indexes, which decide what else is needed. A name
/// the list lacks may be returned (a component's config or weights that are not there), for the
/// caller to report as missing.
pub fn plan<E: From<Error>>(
    files: &BTreeSet<String>,
    wanted: &[&str],
    fetch: &mut dyn FnMut(&str) -> std::result::Result<PathBuf, E>,
) -> std::result::Result<Vec<String>, E> {
    let mut out: Vec<String> = Vec::new();
    let folders: Vec<String> = if files.contains("model_index.json") {
        let index = fetch("model_index.json")?;
        out.push("model_index.json".into());
        let v: serde_json::Value = pixart_core::config::read_json(&index)?;
        // diffusers writes `[null, null]` for a component the pipeline does not have.
        let listed = |c: &str| {
            v.get(c)
                .and_then(|e| e.as_array())
                .and_then(|a| a.first())
                .is_some_and(|lib| !lib.is_null())
        };
        COMPONENTS
            .iter()
            .filter(|c| wanted.contains(c) && listed(c))
            .map(|c| format!("{c}/"))
            .collect()
    } else if files.iter().any(|f| f.starts_with("transformer/")) {
        match wanted.contains(&"transformer") {
            true => vec!["transformer/".into()],
            false => vec![],
        }
    } else if files.contains("config.json") {
        vec![String::new()]
    } else {
        vec![]
    };
    for prefix in &folders {
        match prefix.as_str() {
            "tokenizer/" => {
                let all: Vec<String> = in_folder(files, prefix).cloned().collect();
                match all.is_empty() {
                    true => out.push(format!("{prefix}tokenizer_config.json")),
                    false => out.extend(all),
                }
            }
            "scheduler/" => out.push(format!("{prefix}scheduler_config.json")),
            _ => {
                out.push(format!("{prefix}config.json"));
                let weights = WEIGHT_NAMES
                    .iter()
                    .map(|n| format!("{prefix}{n}"))
                    .find(|n| files.contains(n));
                match weights {
                    Some(w) if w.ends_with(".index.json") => {
                        let index = fetch(&w)?;
                        out.push(w);
                        out.extend(shards_of(&index)?.into_iter().map(|s| format!("{prefix}{s}")));
                    }
                    Some(w) => out.push(w),
                    None => {
                        // A lone original checkpoint, as pixart_model::loading::locate accepts.
                        let lone: Vec<&String> = in_folder(files, prefix)
                            .filter(|f| f.ends_with(".safetensors") || f.ends_with(".pth"))
                            .collect();
                        out.push(match lone.as_slice() {
                            [one] => (*one).clone(),
                            _ if prefix == "text_encoder/" => format!("{prefix}model.safetensors"),
                            _ => format!("{prefix}diffusion_pytorch_model.safetensors"),
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Why a download did not work: the hub could not be reached at all (then the cache may do),
/// or anything else.
enum Failure {
    Unreachable(String),
    Fatal(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Fatal(e)
    }
}

fn no_pipeline(spec: &str) -> Error {
    Error::InvalidInput(format!(
        "`{spec}` holds no diffusers pipeline (model_index.json), transformer/ folder or config.json"
    ))
}

/// An HTTP error status of the hub as one line; `X-Error-Code` as huggingface_hub reads it
/// (utils/_http.py `hf_raise_for_status`).
fn status_error(code: u16, kind: &str, hub: &HubConfig, spec: &str, file: Option<&str>) -> Error {
    let (id, revision) = split_spec(spec);
    let ep = &hub.endpoint;
    match (code, kind, file) {
        (_, "RevisionNotFound", _) => {
            Error::InvalidInput(format!("`{id}`: the hub ({ep}) has no revision `{revision}`"))
        }
        (_, "RepoNotFound", _) | (404, _, None) => Error::InvalidInput(format!(
            "`{id}`: no such model repository on the hub ({ep}), or a private one (set HF_TOKEN)"
        )),
        (_, "EntryNotFound", Some(f)) | (404, _, Some(f)) => {
            Error::InvalidInput(format!("`{spec}`: the hub ({ep}) has no file {f}"))
        }
        (401 | 403, _, _) | (_, "GatedRepo", _) => Error::InvalidInput(match &hub.token {
            None => format!(
                "`{id}` is gated or private: the hub refused access (HTTP {code}); accept its conditions \
                 on the hub and set HF_TOKEN to a token of that account"
            ),
            Some(_) => format!(
                "`{id}` is gated or private: the hub refused the token (HTTP {code}); accept the model's \
                 conditions with the account of HF_TOKEN (or of the token file) or use another token"
            ),
        }),
        _ => Error::Hub(format!(
            "`{spec}`: the hub ({ep}) answered HTTP {code}{}",
            file.map(|f| format!(" for {f}")).unwrap_or_default()
        )),
    }
}

fn failure(e: ApiError, hub: &HubConfig, spec: &str, file: Option<&str>) -> Failure {
    match e {
        ApiError::RequestError(err) => {
            let text = err.to_string();
            match (*err).into_response() {
                None => Failure::Unreachable(text),
                Some(response) => {
                    let kind = response.header("x-error-code").unwrap_or_default().to_string();
                    Failure::Fatal(status_error(response.status(), &kind, hub, spec, file))
                }
            }
        }
        ApiError::IoError(e) => Failure::Fatal(Error::io(&hub.cache, e)),
        other => Failure::Fatal(Error::Hub(format!(
            "`{spec}`: downloading {} from {} failed: {other}",
            file.unwrap_or("the file list"),
            hub.endpoint
        ))),
    }
}

/// Asks the hub for the repository's files and commit, downloads into the cache what the
/// wanted components need and the snapshot lacks, and records the commit under `refs/`.
fn download(
    hub: &HubConfig,
    spec: &str,
    wanted: &[&str],
    progress: &mut dyn DownloadProgress,
) -> std::result::Result<PathBuf, Failure> {
    let (id, revision) = split_spec(spec);
    let api = ApiBuilder::from_cache(Cache::new(hub.cache.clone()))
        .with_endpoint(hub.endpoint.clone())
        .with_token(hub.token.clone())
        .with_progress(false)
        .with_user_agent("pixart-rs", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| failure(e, hub, spec, None))?;
    let repo = model_repo(id, revision);
    let remote = api.repo(repo.clone());
    let info = remote.info().map_err(|e| failure(e, hub, spec, None))?;
    let files: BTreeSet<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let snapshot = hub.cache.join(repo.folder_name()).join("snapshots").join(&info.sha);
    let mut get = |file: &str| -> std::result::Result<PathBuf, Failure> {
        let local = snapshot.join(file);
        if local.is_file() {
            return Ok(local);
        }
        if !files.contains(file) {
            return Err(Error::InvalidInput(format!(
                "`{spec}`: the repository has no {file}, which the pipeline needs"
            ))
            .into());
        }
        let bridge = Bridge {
            inner: &mut *progress,
            repo: id,
            started: false,
        };
        let got = remote
            .download_with_progress(file, bridge)
            .map_err(|e| failure(e, hub, spec, Some(file)))?;
        if got != local {
            return Err(Error::Hub(format!(
                "`{spec}` changed on the hub while downloading ({file} came from another commit); run again"
            ))
            .into());
        }
        Ok(got)
    };
    let needed = plan(&files, wanted, &mut get)?;
    if needed.is_empty() {
        return Err(no_pipeline(spec).into());
    }
    for file in &needed {
        get(file)?;
    }
    Cache::new(hub.cache.clone())
        .repo(repo)
        .create_ref(&info.sha)
        .map_err(|e| Error::io(&hub.cache, e))?;
    Ok(snapshot)
}

/// The cached snapshot of `spec` when it holds every file the wanted components need.
pub fn from_cache(cache: &Path, spec: &str, wanted: &[&str]) -> Result<PathBuf> {
    let id = split_spec(spec).0;
    let snapshot = cached_snapshot(cache, spec).ok_or_else(|| {
        Error::InvalidInput(format!(
            "`{spec}` is not in the HF cache ({}) and HF_HUB_OFFLINE is set: unset it to download, \
             fetch it first (e.g. `hf download {id}`) or pass a local folder",
            cache.display()
        ))
    })?;
    let files = list_files(&snapshot);
    let mut get = |file: &str| -> Result<PathBuf> {
        Some(snapshot.join(file)).filter(|p| p.is_file()).ok_or_else(|| {
            Error::InvalidInput(format!(
                "`{spec}` in the HF cache ({}) lacks {file} and HF_HUB_OFFLINE is set: unset it to download",
                snapshot.display()
            ))
        })
    };
    let needed = plan(&files, wanted, &mut get)?;
    if needed.is_empty() {
        return Err(no_pipeline(spec));
    }
    for file in &needed {
        get(file)?;
    }
    Ok(snapshot)
}

/// The snapshot folder of hub id `spec` holding what the `wanted` components need: from the
/// cache when `hub.offline`, else after downloading what is missing, else (hub unreachable)
/// from the cache if it is complete there.
pub fn snapshot(hub: &HubConfig, spec: &str, wanted: &[&str], progress: &mut dyn DownloadProgress) -> Result<PathBuf> {
    if hub.offline {
        return from_cache(&hub.cache, spec, wanted);
    }
    match download(hub, spec, wanted, progress) {
        Ok(p) => Ok(p),
        Err(Failure::Fatal(e)) => Err(e),
        Err(Failure::Unreachable(why)) => match from_cache(&hub.cache, spec, wanted) {
            Ok(p) => {
                progress.note(&format!(
                    "cannot reach the Hugging Face hub ({why}); using `{spec}` from the cache"
                ));
                Ok(p)
            }
            Err(_) => Err(Error::Hub(format!(
                "cannot reach the Hugging Face hub ({why}); the model `{spec}` is not in the cache at {}; \
                 set HF_HUB_OFFLINE=1 to use only the cache",
                hub.cache.display()
            ))),
        },
    }
}

/// `path` itself when it exists; otherwise, when it reads as a hub id, its snapshot folder
/// holding the `wanted` components (see [`snapshot`]).
pub fn resolve(path: &Path, hub: &HubConfig, wanted: &[&str], progress: &mut dyn DownloadProgress) -> Result<PathBuf> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    match path.to_str() {
        Some(s) if is_hub_id(s) => snapshot(hub, s, wanted, progress),
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
        assert!(is_hub_id("org/name@refs/pr/1"));
        assert!(!is_hub_id("org/name@../x"));
        assert!(!is_hub_id("org/name@"));
        assert!(!is_hub_id("name"));
        assert!(!is_hub_id("a/b/c"));
        assert!(!is_hub_id("./x"));
        assert!(!is_hub_id("/abs/x"));
        assert!(!is_hub_id("../x"));
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn transformer_only_repos_give_transformer_files() {
        let files = set(&[
            "README.md",
            "PixArt-Sigma-XL-2-512-MS.pth",
            "transformer/config.json",
            "transformer/diffusion_pytorch_model.safetensors",
            "transformer/diffusion_pytorch_model.fp16.safetensors",
        ]);
        let mut fetch = |f: &str| -> Result<PathBuf> { panic!("nothing to read, asked for {f}") };
        let got = plan(&files, &COMPONENTS, &mut fetch).unwrap();
        assert_eq!(
            got,
            [
                "transformer/config.json",
                "transformer/diffusion_pytorch_model.safetensors"
            ]
        );
        // Wanted only for its VAE, it gives nothing.
        assert!(plan(&files, &["vae"], &mut fetch).unwrap().is_empty());
    }

    #[test]
    fn missing_weights_are_named() {
        let files = set(&["config.json", "a.safetensors", "b.safetensors"]);
        let mut fetch = |f: &str| -> Result<PathBuf> { panic!("nothing to read, asked for {f}") };
        let got = plan(&files, &["vae"], &mut fetch).unwrap();
        assert_eq!(got, ["config.json", "diffusion_pytorch_model.safetensors"]);
        let files = set(&["config.json", "vae-ft-mse.safetensors"]);
        let got = plan(&files, &["vae"], &mut fetch).unwrap();
        assert_eq!(got, ["config.json", "vae-ft-mse.safetensors"]);
    }
}
