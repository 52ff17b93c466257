//! GGUF files (llama.cpp's weight format, versions 2 and 3, little-endian): a reader over a
//! memory map that checks every count, size and offset of the header against the file before it
//! allocates or reads anything, and a writer.
//!
//! The layout follows ggml's `docs/gguf.md` and `ggml/src/gguf.cpp` (ggml-org/llama.cpp), and
//! gguf-py 0.19.0 (`gguf/gguf_reader.py`, `gguf/constants.py`): the magic `GGUF`, a `u32`
//! version, `u64` tensor and metadata counts, the metadata (key, `u32` value type, value), one
//! info per tensor (name, `u32` dimension count, `u64` dimensions innermost first, `u32` type id,
//! `u64` offset from the start of the data section), padding to `general.alignment` (32 by
//! default), then the data. A tensor's [`GgufTensor::shape`] here is outermost first, as in
//! PyTorch (gguf-py reverses the stored dimensions the same way).
//!
//! Tensor data stay where they are: [`GgufFile::data`] hands out the bytes of one tensor (still
//! quantized); the block formats are decoded by `pixart_kernels::cpu::quant`.
#![allow(non_camel_case_types)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The GGUF magic, `GGUF` read as a little-endian `u32`.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The version [`GgufWriter`] writes.
pub const VERSION: u32 = 3;
/// The data alignment when a file has no `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The most dimensions a tensor has (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Elements per k-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;
/// The deepest nesting of metadata arrays we follow.
const MAX_ARRAY_DEPTH: usize = 4;
/// More elements than any tensor of a real model holds (2^42, 4 T): a header asking for more is
/// broken, whatever the file size.
const MAX_ELEMENTS: u64 = 1 << 42;

/// The tensor types we read, with ggml's type ids (`enum ggml_type`, gguf-py
/// `GGMLQuantizationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl GgmlType {
    /// Every type we read.
    pub const ALL: [GgmlType; 13] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// ggml's id of the type.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::BF16 => 30,
        }
    }

    /// The type with ggml id `id`, or why there is none: a ggml type we do not read, or an id
    /// ggml does not know.
    pub fn from_id(id: u32) -> std::result::Result<Self, String> {
        if let Some(t) = Self::ALL.iter().find(|t| t.id() == id) {
            return Ok(*t);
        }
        // gguf-py 0.19.0 constants.py, GGMLQuantizationType.
        let known = match id {
            9 => "Q8_1",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            34 => "TQ1_0",
            35 => "TQ2_0",
            39 => "MXFP4",
            _ => return Err(format!("unknown tensor type id {id}")),
        };
        Err(format!(
            "tensor type {known} (id {id}) is not supported (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K are)"
        ))
    }

    /// The type's name as ggml spells it (`Q4_K`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2_K => "Q2_K",
            Self::Q3_K => "Q3_K",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
        }
    }

    /// Elements per block (1 for the float types).
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q2_K | Self::Q3_K | Self::Q4_K | Self::Q5_K | Self::Q6_K => QK_K,
        }
    }

    /// Bytes per block (gguf-py `GGML_QUANT_SIZES`).
    pub fn type_size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 2 + 16,
            Self::Q4_1 => 2 + 2 + 16,
            Self::Q5_0 => 2 + 4 + 16,
            Self::Q5_1 => 2 + 2 + 4 + 16,
            Self::Q8_0 => 2 + 32,
            Self::Q2_K => 2 + 2 + QK_K / 16 + QK_K / 4,
            Self::Q3_K => 2 + QK_K / 4 + QK_K / 8 + 12,
            Self::Q4_K => 2 + 2 + QK_K / 2 + 12,
            Self::Q5_K => 2 + 2 + QK_K / 2 + QK_K / 8 + 12,
            Self::Q6_K => 2 + QK_K / 2 + QK_K / 4 + QK_K / 16,
        }
    }

    /// Bytes that `n` elements take, or why they cannot be stored (`n` not a whole number of
    /// blocks).
    pub fn bytes_for(self, n: usize) -> std::result::Result<usize, String> {
        if !n.is_multiple_of(self.block_size()) {
            return Err(format!(
                "{n} elements are not a whole number of {} blocks of {}",
                self.name(),
                self.block_size()
            ));
        }
        (n / self.block_size())
            .checked_mul(self.type_size())
            .ok_or_else(|| format!("{n} elements of {} overflow", self.name()))
    }

    /// The type named `name` (case-insensitive: `q8_0`, `Q4_K`, `bf16`).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(name))
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// GGUF's id of the value's type (`gguf_type`, gguf-py `GGUFValueType`).
    pub fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array(_) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }

    /// The value as a non-negative integer, whichever integer type holds it.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, whichever number type holds it.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Where one tensor is and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    pub name: String,
    /// Outermost dimension first (the stored dimensions reversed).
    pub shape: Vec<usize>,
    pub dtype: GgmlType,
    /// Offset of the data from the start of the file.
    pub offset: usize,
    /// Bytes of data.
    pub n_bytes: usize,
}

impl GgufTensor {
    /// Elements in the tensor.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A GGUF file, mapped, with its header read and checked.
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensor>,
    index: BTreeMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and maps `path` and reads its header. Every problem is an [`Error::Weights`]
    /// naming the file and the tensor or key at fault.
    pub fn open(path: &Path) -> Result<Self> {
        // A file the user named: every failure is the file's (exit 2 in the CLI).
        let file = std::fs::File::open(path).map_err(|e| Error::weights(path, format!("cannot open: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| Error::weights(path, format!("cannot read: {e}")))?
            .len();
        if len < 24 {
            return Err(Error::weights(
                path,
                format!("truncated GGUF header: the file has {len} bytes"),
            ));
        }
        // SAFETY: a read-only private mapping of a file we opened; like every memory-mapped
        // reader (candle's safetensors too) we rely on the file not being truncated while
        // mapped. Every access below is bounds-checked against the mapping's length.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::weights(path, format!("cannot map: {e}")))?;
        let header = parse_header(&map).map_err(|e| Error::weights(path, e))?;
        let index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            map,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            index,
        })
    }

    /// The path this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every metadata key and value.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// The metadata value under `key`.
    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// The tensors, in file order.
    pub fn tensors(&self) -> &[GgufTensor] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The stored bytes of tensor `name` (checked against the file when it was opened).
    pub fn data(&self, name: &str) -> Result<&[u8]> {
        let t = self
            .tensor(name)
            .ok_or_else(|| Error::weights(&self.path, format!("tensor `{name}`: not in the file")))?;
        self.map
            .get(t.offset..t.offset + t.n_bytes)
            .ok_or_else(|| Error::weights(&self.path, format!("tensor `{name}`: data out of bounds")))
    }
}

/// What [`parse_header`] reads.
struct Header {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensor>,
}

/// A bounds-checked reader over the file's bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "truncated: needs {n} bytes at offset {}, the file has {}",
                self.pos,
                self.buf.len()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items of at least `min_size` bytes each, checked against the bytes left.
    fn count(&mut self, min_size: usize, what: &str) -> std::result::Result<usize, String> {
        let n = self.u64()?;
        if n > (self.remaining() / min_size.max(1)) as u64 {
            return Err(format!(
                "{what} {n} cannot fit in the {} bytes left of the file",
                self.remaining()
            ));
        }
        Ok(n as usize)
    }

    fn bytes_of_string(&mut self) -> std::result::Result<&'a [u8], String> {
        let n = self.count(1, "string length")?;
        self.take(n)
    }

    fn name(&mut self) -> std::result::Result<String, String> {
        let b = self.bytes_of_string()?;
        String::from_utf8(b.to_vec()).map_err(|_| "a name that is not UTF-8".to_string())
    }

    fn value(&mut self, type_id: u32, depth: usize) -> std::result::Result<MetaValue, String> {
        Ok(match type_id {
            0 => MetaValue::U8(self.array::<1>()?[0]),
            1 => MetaValue::I8(i8::from_le_bytes(self.array()?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("a bool stored as {b}")),
            },
            8 => MetaValue::String(String::from_utf8_lossy(self.bytes_of_string()?).into_owned()),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"));
                }
                let elem = self.u32()?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(format!("unknown array element type {t}")),
                };
                let n = self.count(min, "array length")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            t => return Err(format!("unknown value type {t}")),
        })
    }
}

/// Reads and checks the header of a GGUF file held in `buf`; errors are one line naming the
/// tensor or key at fault (the caller adds the file).
fn parse_header(buf: &[u8]) -> std::result::Result<Header, String> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.take(4).map_err(|e| format!("GGUF header: {e}"))?;
    if magic != MAGIC {
        return Err(format!("not a GGUF file (starts with {magic:02x?}, not `GGUF`)"));
    }
    let version = c.u32().map_err(|e| format!("GGUF header: {e}"))?;
    match version {
        2 | 3 => {}
        1 => return Err("GGUF version 1 is not supported (2 and 3 are)".into()),
        v if matches!(v.swap_bytes(), 2 | 3) => {
            return Err("a big-endian GGUF file: not supported (little-endian v2 and v3 are)".into())
        }
        v => return Err(format!("unknown GGUF version {v}")),
    }
    // A tensor info takes at least 24 bytes (empty name, no dimension), a key-value 13.
    let n_tensors = c.count(24, "tensor count").map_err(|e| format!("GGUF header: {e}"))?;
    let n_kv = c.count(13, "metadata count").map_err(|e| format!("GGUF header: {e}"))?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.name().map_err(|e| format!("metadata entry {i}: {e}"))?;
        let type_id = c.u32().map_err(|e| format!("metadata key `{key}`: {e}"))?;
        let value = c.value(type_id, 0).map_err(|e| format!("metadata key `{key}`: {e}"))?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key `{key}`: given twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(MetaValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(v) => {
            return Err(format!(
                "metadata key `general.alignment`: {v:?} is not a power of two (u32)"
            ))
        }
    };

    struct Raw {
        name: String,
        shape: Vec<usize>,
        dtype: GgmlType,
        offset: u64,
        n_bytes: usize,
    }
    let mut raw = Vec::with_capacity(n_tensors);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..n_tensors {
        let name = c.name().map_err(|e| format!("tensor info {i}: {e}"))?;
        let info = (|| -> std::result::Result<Raw, String> {
            let n_dims = c.u32()? as usize;
            if n_dims > MAX_DIMS {
                return Err(format!("{n_dims} dimensions (at most {MAX_DIMS})"));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64()?);
            }
            let dtype = GgmlType::from_id(c.u32()?)?;
            let offset = c.u64()?;
            let mut n: u64 = 1;
            for &d in &dims {
                if d == 0 {
                    return Err(format!("a dimension of 0 in {dims:?}"));
                }
                n = n
                    .checked_mul(d)
                    .filter(|&n| n <= MAX_ELEMENTS)
                    .ok_or_else(|| format!("absurd dimensions {dims:?}"))?;
            }
            let inner = dims.first().copied().unwrap_or(1);
            if !inner.is_multiple_of(dtype.block_size() as u64) {
                return Err(format!(
                    "rows of {inner} elements are not a whole number of {dtype} blocks of {}",
                    dtype.block_size()
                ));
            }
            let n_bytes = dtype.bytes_for(n as usize)?;
            if !offset.is_multiple_of(alignment) {
                return Err(format!(
                    "data offset {offset} is not a multiple of the alignment {alignment}"
                ));
            }
            Ok(Raw {
                name: String::new(),
                shape: dims.iter().rev().map(|&d| d as usize).collect(),
                dtype,
                offset,
                n_bytes,
            })
        })()
        .map_err(|e| format!("tensor `{name}`: {e}"))?;
        if !seen.insert(name.clone()) {
            return Err(format!("tensor `{name}`: given twice"));
        }
        raw.push(Raw { name, ..info });
    }
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let tensors = raw
        .into_iter()
        .map(|r| {
            let end = data_start
                .checked_add(r.offset)
                .and_then(|o| o.checked_add(r.n_bytes as u64))
                .filter(|&end| end <= buf.len() as u64)
                .ok_or_else(|| {
                    format!(
                        "tensor `{}`: data out of bounds ({} bytes at offset {} of the data section, the file has {} bytes)",
                        r.name,
                        r.n_bytes,
                        r.offset,
                        buf.len()
                    )
                })?;
            Ok(GgufTensor {
                name: r.name,
                shape: r.shape,
                dtype: r.dtype,
                offset: (end - r.n_bytes as u64) as usize,
                n_bytes: r.n_bytes,
            })
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    Ok(Header {
        version,
        metadata,
        tensors,
    })
}

/// Writes a GGUF v3 file: metadata, then tensors given as stored bytes, aligned to 32.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(String, Vec<usize>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry (in order; a key given twice is the caller's bug and makes a file
    /// readers refuse).
    pub fn add_meta(&mut self, key: impl Into<String>, value: MetaValue) {
        self.metadata.push((key.into(), value));
    }

    /// Adds a tensor of `shape` (outermost first) whose stored bytes (already in `dtype`'s
    /// format) are `data`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        dtype: GgmlType,
        data: Vec<u8>,
    ) -> std::result::Result<(), String> {
        let name = name.into();
        let n: usize = shape.iter().product();
        let expected = dtype.bytes_for(n).map_err(|e| format!("tensor `{name}`: {e}"))?;
        if shape.last().is_some_and(|&d| !d.is_multiple_of(dtype.block_size())) || shape.len() > MAX_DIMS {
            return Err(format!("tensor `{name}`: shape {shape:?} cannot be stored as {dtype}"));
        }
        if data.len() != expected {
            return Err(format!(
                "tensor `{name}`: {} bytes for {n} elements of {dtype} (expected {expected})",
                data.len()
            ));
        }
        self.tensors.push((name, shape.to_vec(), dtype, data));
        Ok(())
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = DEFAULT_ALIGNMENT as usize;
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_str(&mut out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            write_value(&mut out, v);
        }
        let mut offset = 0usize;
        for (name, shape, dtype, data) in &self.tensors {
            write_str(&mut out, name);
            out.extend_from_slice(&(shape.len() as u32).to_le_bytes());
            for &d in shape.iter().rev() {
                out.extend_from_slice(&(d as u64).to_le_bytes());
            }
            out.extend_from_slice(&dtype.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += data.len().div_ceil(align) * align;
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        for (_, _, _, data) in &self.tensors {
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(align) * align, 0);
        }
        out
    }

    /// Writes the file at `path`, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::files::write_atomic(path, &self.to_bytes())
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::String(s) => write_str(out, s),
        MetaValue::Array(items) => {
            // An empty array is written as an array of u8.
            let elem = items.first().map_or(0, MetaValue::type_id);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}
