//! Weight files: safetensors (single or sharded through `*.index.json`) and PyTorch `.pth`
//! pickles (with or without a `state_dict` key), read lazily, renamed and checked.
//!
//! The model constructors ask for tensors through candle's `VarBuilder`. [`CheckedWeights`]
//! is the backend behind it: it maps each requested name to a tensor of the file (optionally
//! through a rename table, e.g. the original PixArt layout to the diffusers one, including
//! row-splits of fused `qkv` matrices), converts to the requested dtype, and instead of failing
//! on the first problem it records every missing or mis-shaped tensor. [`CheckedWeights::finish`]
//! then adds the file's unused tensors and returns one error that lists them all.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use crate::{Error, Result};

// The atomic writers live in `files` (so `config` can use them without importing `weights`).
pub use crate::files::{check_output_path, remove_stale_temp_files, save_safetensors, write_atomic};

/// Name, shape and dtype of one stored tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub shape: Vec<usize>,
    pub dtype: DType,
}

enum Store {
    Safetensors(candle_core::safetensors::MmapedSafetensors),
    Pth(candle_core::pickle::PthTensors),
}

/// A weight file (or a set of shards) opened for lazy reading.
pub struct WeightFile {
    path: PathBuf,
    store: Store,
    infos: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightFile")
            .field("path", &self.path)
            .field("tensors", &self.infos.len())
            .finish()
    }
}

/// The kinds of weight file we read, decided by the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Safetensors,
    ShardIndex,
    Pth,
}

impl FileKind {
    /// The kind of `path`, from its name.
    pub fn of(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_string_lossy().to_lowercase();
        if name.ends_with(".index.json") {
            Some(Self::ShardIndex)
        } else if name.ends_with(".safetensors") {
            Some(Self::Safetensors)
        } else if [".pth", ".pt", ".bin", ".ckpt"].iter().any(|ext| name.ends_with(ext)) {
            Some(Self::Pth)
        } else {
            None
        }
    }
}

impl WeightFile {
    /// Opens `path`: a `.safetensors` file, a `*.safetensors.index.json` shard index, or a
    /// PyTorch pickle (`.pth`, `.pt`, `.bin`, `.ckpt`) whose tensors sit at the top level or
    /// under a `state_dict` key.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::weights(path, "no such weight file"));
        }
        let kind = FileKind::of(path).ok_or_else(|| {
            Error::weights(
                path,
                "unknown weight file type (expected .safetensors, .safetensors.index.json or .pth)",
            )
        })?;
        let store = match kind {
            FileKind::Safetensors => Store::Safetensors(mmap_safetensors(&[path.to_path_buf()])?),
            FileKind::ShardIndex => Store::Safetensors(mmap_safetensors(&shards_of(path)?)?),
            FileKind::Pth => Store::Pth(open_pth(path)?),
        };
        let infos = match &store {
            Store::Safetensors(st) => st
                .tensors()
                .into_iter()
                .map(|(name, view)| {
                    let dtype = DType::try_from(view.dtype())
                        .map_err(|e| Error::weights(path, format!("tensor `{name}`: unsupported dtype: {e}")))?;
                    Ok((
                        name,
                        TensorInfo {
                            shape: view.shape().to_vec(),
                            dtype,
                        },
                    ))
                })
                .collect::<Result<BTreeMap<_, _>>>()?,
            Store::Pth(pth) => pth
                .tensor_infos()
                .iter()
                .map(|(name, info)| {
                    (
                        name.clone(),
                        TensorInfo {
                            shape: info.layout.shape().dims().to_vec(),
                            dtype: info.dtype,
                        },
                    )
                })
                .collect(),
        };
        if infos.is_empty() {
            return Err(Error::weights(path, "the file holds no tensors"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            store,
            infos,
        })
    }

    /// The path this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every stored tensor with its shape and dtype, sorted by name.
    pub fn infos(&self) -> &BTreeMap<String, TensorInfo> {
        &self.infos
    }

    /// The first float tensor (by name) holding NaN or an infinity, if any: read one at a time
    /// (for naming a broken file after a run turned NaN, not on every load).
    pub fn first_non_finite(&self) -> Result<Option<String>> {
        for (name, info) in &self.infos {
            if !info.dtype.is_float() {
                continue;
            }
            let t = self.load(name, &Device::Cpu)?;
            // x − x is 0 for every finite x and NaN for NaN and ±∞.
            #[allow(clippy::eq_op)]
            let probe = (&t - &t)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
            if probe.is_nan() {
                return Ok(Some(name.clone()));
            }
        }
        Ok(None)
    }

    /// Whether the file holds a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.infos.contains_key(name)
    }

    /// Reads one tensor as stored (no dtype conversion) onto `device`.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let loaded = match &self.store {
            Store::Safetensors(st) => {
                let t = st.load(name, device);
                // The tensor is a copy now: hand its pages of the mapping back, so that a
                // model whose weights are repacked (T5-XXL: 9 GB) does not hold the file's
                // pages and the packed copy at once.
                if let (Ok(_), Ok(view)) = (&t, st.get(name)) {
                    release_pages(view.data());
                }
                t
            }
            Store::Pth(pth) => match pth.get(name) {
                Ok(Some(t)) => t.to_device(device),
                Ok(None) => Err(candle_core::Error::Msg("not in the file".into())),
                Err(e) => Err(e),
            },
        };
        loaded.map_err(|e| Error::weights(&self.path, format!("tensor `{name}`: {e}")))
    }
}

/// Tells the kernel that the mapped file bytes `data` are not needed any more
/// (`madvise(MADV_DONTNEED)` on the pages they cover). The mapping is a read-only file mapping,
/// so a later read of those pages (a neighbouring tensor sharing a page) faults them back in
/// from the file: nothing is lost, the process's resident size just stops counting them.
fn release_pages(data: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
        let start = data.as_ptr() as usize / page * page;
        let end = (data.as_ptr() as usize + data.len()).div_ceil(page) * page;
        if end > start {
            // SAFETY: [start, end) lies within the file mapping that holds `data` (a mapping
            // covers whole pages); MADV_DONTNEED on a read-only file mapping only drops
            // resident pages, which are re-read from the file on the next access.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = data;
}

/// One safetensors file mapped as it is, for readers of dtypes candle does not load (fp8
/// E5M2) and of files with a layout of their own (ComfyUI's scaled fp8): the raw bytes of each
/// tensor with its safetensors dtype.
pub fn raw_safetensors(path: &Path) -> Result<candle_core::safetensors::MmapedSafetensors> {
    mmap_safetensors(&[path.to_path_buf()])
}

fn mmap_safetensors(paths: &[PathBuf]) -> Result<candle_core::safetensors::MmapedSafetensors> {
    for p in paths {
        if !p.is_file() {
            return Err(Error::weights(p, "shard file is missing"));
        }
    }
    // SAFETY: the files are mapped read-only; as with every mmap, a file changed by another
    // process while we read it gives undefined contents, which is the accepted trade-off for
    // loading multi-gigabyte checkpoints without copying them.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(paths) };
    st.map_err(|e| {
        let first = paths.first().cloned().unwrap_or_default();
        Error::weights(first, format!("not a valid safetensors file: {}", without_path(e)))
    })
}

fn shards_of(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let idx: Index = crate::config::read_json(index)?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: BTreeSet<&String> = idx.weight_map.values().collect();
    if files.is_empty() {
        return Err(Error::weights(index, "the shard index lists no files"));
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

fn open_pth(path: &Path) -> Result<candle_core::pickle::PthTensors> {
    let bad = |e: candle_core::Error| Error::weights(path, format!("not a readable PyTorch checkpoint: {e}"));
    // Checkpoints written by the original training code keep the weights under `state_dict`;
    // plain `torch.save(model.state_dict())` files have them at the top level.
    match candle_core::pickle::PthTensors::new(path, Some("state_dict")) {
        Ok(p) if !p.tensor_infos().is_empty() => Ok(p),
        _ => candle_core::pickle::PthTensors::new(path, None).map_err(bad),
    }
}

/// Where a tensor the model asks for comes from in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The tensor's name in the file.
    pub name: String,
    /// `Some((i, n))`: take the i-th of n equal row blocks (dim 0) of that tensor, as when a
    /// fused `qkv` weight feeds separate q, k and v projections.
    pub rows: Option<(usize, usize)>,
}

impl Source {
    /// The whole tensor `name`.
    pub fn whole(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            rows: None,
        }
    }
}

/// Maps model names to file tensors. The identity unless a layout converter supplies one.
pub type Renamer = Box<dyn Fn(&str) -> Option<Source> + Send + Sync>;

/// A checked `VarBuilder` backend over a [`WeightFile`]: see the module docs.
pub struct CheckedWeights {
    file: WeightFile,
    rename: Option<Renamer>,
    /// File tensors that are expected to be unused (stale buffers).
    ignored: BTreeSet<String>,
    used: Mutex<BTreeSet<String>>,
    problems: Mutex<Vec<String>>,
}

impl CheckedWeights {
    /// Checks requests against `file` using the file's own names.
    pub fn new(file: WeightFile) -> Self {
        Self {
            file,
            rename: None,
            ignored: BTreeSet::new(),
            used: Mutex::new(BTreeSet::new()),
            problems: Mutex::new(Vec::new()),
        }
    }

    /// Uses `rename` to find the file tensor behind each model name.
    pub fn with_renamer(mut self, rename: Renamer) -> Self {
        self.rename = Some(rename);
        self
    }

    /// Marks file tensors that may stay unused without being reported.
    pub fn ignoring<I: IntoIterator<Item = String>>(mut self, names: I) -> Self {
        self.ignored.extend(names);
        self
    }

    /// The underlying file.
    pub fn file(&self) -> &WeightFile {
        &self.file
    }

    fn source(&self, name: &str) -> Option<Source> {
        match &self.rename {
            Some(f) => f(name),
            None => Some(Source::whole(name)),
        }
    }

    fn note(&self, problem: String) {
        if let Ok(mut p) = self.problems.lock() {
            p.push(problem);
        }
    }

    fn mark_used(&self, name: &str) {
        if let Ok(mut u) = self.used.lock() {
            u.insert(name.to_string());
        }
    }

    /// Records a problem found by the caller (e.g. a model-level consistency check).
    pub fn report(&self, problem: impl Into<String>) {
        self.note(problem.into());
    }

    /// Marks a file tensor as consumed without loading it through the VarBuilder.
    pub fn consume(&self, name: &str) {
        self.mark_used(name);
    }

    /// Every problem found so far plus every unused, non-ignored file tensor, as one error.
    pub fn finish(&self) -> Result<()> {
        let used = self.used.lock().map(|u| u.clone()).unwrap_or_default();
        let mut problems = self.problems.lock().map(|p| p.clone()).unwrap_or_default();
        for name in self.file.infos.keys() {
            if !used.contains(name) && !self.ignored.contains(name) {
                problems.push(format!("unexpected tensor `{name}`"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Weights {
                path: self.file.path.clone(),
                problems,
            })
        }
    }

    fn fetch(&self, shape: &Shape, name: &str, dtype: DType, dev: &Device) -> Option<Tensor> {
        let Some(src) = self.source(name) else {
            self.note(format!("missing tensor `{name}` (shape {:?})", shape.dims()));
            return None;
        };
        let Some(info) = self.file.infos.get(&src.name) else {
            self.note(format!("missing tensor `{}` (shape {:?})", src.name, shape.dims()));
            return None;
        };
        self.mark_used(&src.name);
        let expected: Vec<usize> = match src.rows {
            Some((_, n)) => {
                let mut s = shape.dims().to_vec();
                if let Some(first) = s.first_mut() {
                    *first *= n;
                }
                s
            }
            None => shape.dims().to_vec(),
        };
        if info.shape != expected {
            self.note(format!(
                "tensor `{}` has shape {:?}, expected {:?}",
                src.name, info.shape, expected
            ));
            return None;
        }
        // A parameter stored as integers is not a weight (a cast would pass it silently).
        if dtype.is_float() && !info.dtype.is_float() {
            self.note(format!(
                "tensor `{}` is {:?}, expected floating-point weights",
                src.name, info.dtype
            ));
            return None;
        }
        let loaded = self
            .file
            .load(&src.name, dev)
            .and_then(|t| match src.rows {
                Some((i, n)) => {
                    let rows = t.dim(0)? / n;
                    Ok(t.narrow(0, i * rows, rows)?)
                }
                None => Ok(t),
            })
            .and_then(|t| Ok(t.to_dtype(dtype)?.contiguous()?));
        match loaded {
            Ok(t) => Some(t),
            Err(e) => {
                self.note(e.to_string());
                None
            }
        }
    }
}

impl SimpleBackend for CheckedWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.fetch(&s, name, dtype, dev) {
            Some(t) => Ok(t),
            // Keep building so that every problem is found in one pass; `finish` reports them.
            None => Tensor::zeros(s, dtype, dev),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let src = self
            .source(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.into() })?;
        self.mark_used(&src.name);
        self.file
            .load(&src.name, dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.source(name)
            .is_some_and(|src| self.file.infos.contains_key(&src.name))
    }
}

/// A `VarBuilder` backend of random weights (normal, std 0.02; norm weights 1), for
/// benchmarks that need the full architecture without any file.
#[derive(Debug, Clone, Copy)]
pub struct RandomWeights {
    pub std: f64,
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if name.ends_with("norm.weight") {
            return Tensor::ones(s, dtype, dev);
        }
        // Draw in f32 (candle's CPU randn has no bf16 path for every backend) and cast.
        Tensor::randn(0f32, self.std as f32, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::CannotFindTensor { path: name.into() })
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Reads every tensor of a safetensors file onto the CPU; an unreadable file is named once,
/// with what is wrong with it.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(Error::weights(path, "no such file"));
    }
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::weights(path, format!("not a readable safetensors file: {}", without_path(e))))
}

/// candle's error without the path it attaches: our messages name the file once, first.
fn without_path(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithPath { inner, .. } => *inner,
        e => e,
    }
}

/// A backend that remembers every tensor it hands out, under the name it was asked for.
/// Building a model through it yields the model's complete weight map in the model's own
/// naming, e.g. to convert a checkpoint from another layout.
pub struct Recording<B: SimpleBackend> {
    inner: B,
    seen: Mutex<BTreeMap<String, Tensor>>,
}

impl<B: SimpleBackend> Recording<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The tensors handed out so far.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl<B: SimpleBackend> SimpleBackend for Recording<B> {
    fn get(&self, s: Shape, name: &str, h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.inner.get(s, name, h, dtype, dev)?;
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(name.to_string(), t.clone());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.inner.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// A shared handle to a backend, so the caller keeps access to it (to call
/// [`CheckedWeights::finish`] or [`Recording::tensors`]) after handing it to a `VarBuilder`.
pub struct Shared<B>(pub std::sync::Arc<B>);

impl<B> Clone for Shared<B> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<B: SimpleBackend> SimpleBackend for Shared<B> {
    fn get(&self, s: Shape, name: &str, h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get(s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}
