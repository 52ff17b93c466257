//! LoRA adapters applied at load time (`pixart generate --lora FILE[:scale]`): PEFT / diffusers
//! keys `transformer.<layer>.lora_A.weight` (rank, in) and `.lora_B.weight` (out, rank), an
//! optional `<layer>.alpha` (scale alpha / rank; without it alpha = rank, as diffusers assumes),
//! merged into the base weight as `W + s·(alpha/rank)·B·A`.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use pixart_core::{Error, Result};

/// One adapter file and its user scale.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub scale: f64,
}

impl LoraSpec {
    /// Parses `FILE[:scale]` (scale defaults to 1). A file whose own name holds a `:` is taken
    /// whole; an existing `FILE` followed by a scale that is not a number is an error naming
    /// the scale (it used to be read as a file name, and reported as a missing file).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        if let Some((p, sc)) = s.rsplit_once(':') {
            if let Ok(scale) = sc.parse::<f64>() {
                if !scale.is_finite() {
                    return Err(format!("LoRA scale must be finite, got {sc}"));
                }
                return Ok(Self {
                    path: PathBuf::from(p),
                    scale,
                });
            }
            if !Path::new(s).exists() && Path::new(p).is_file() {
                return Err(format!("{s}: the LoRA scale {sc:?} is not a number (FILE[:SCALE])"));
            }
        }
        Ok(Self {
            path: PathBuf::from(s),
            scale: 1.0,
        })
    }
}

/// lora_A, lora_B and alpha of one layer, as found in a file.
type LayerParts<'a> = (Option<&'a Tensor>, Option<&'a Tensor>, Option<f64>);

/// The weight deltas of `specs`, by weight name (`<layer>.weight`), f32 on the CPU.
pub fn lora_deltas(specs: &[LoraSpec]) -> Result<BTreeMap<String, Tensor>> {
    let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
    for spec in specs {
        let tensors = read(&spec.path)?;
        let mut layers: BTreeMap<String, LayerParts> = BTreeMap::new();
        for (k, t) in &tensors {
            let k2 = k.strip_prefix("transformer.").unwrap_or(k);
            if let Some(l) = k2.strip_suffix(".lora_A.weight") {
                layers.entry(l.to_string()).or_default().0 = Some(t);
            } else if let Some(l) = k2.strip_suffix(".lora_B.weight") {
                layers.entry(l.to_string()).or_default().1 = Some(t);
            } else if let Some(l) = k2.strip_suffix(".alpha") {
                let a = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
                layers.entry(l.to_string()).or_default().2 = a.first().copied();
            } else {
                return Err(Error::weights(
                    &spec.path,
                    format!("`{k}` is not a LoRA tensor (lora_A / lora_B / alpha)"),
                ));
            }
        }
        for (layer, (a, b, alpha)) in layers {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(Error::weights(
                    &spec.path,
                    format!("layer `{layer}` lacks lora_A or lora_B"),
                ));
            };
            let (rank, _) = a
                .dims2()
                .map_err(|_| Error::weights(&spec.path, format!("`{layer}.lora_A` is not a matrix")))?;
            let (_, rank_b) = b
                .dims2()
                .map_err(|_| Error::weights(&spec.path, format!("`{layer}.lora_B` is not a matrix")))?;
            if rank == 0 {
                return Err(Error::weights(
                    &spec.path,
                    format!("`{layer}`: rank 0 (lora_A has no rows)"),
                ));
            }
            if rank != rank_b {
                return Err(Error::weights(
                    &spec.path,
                    format!("`{layer}`: lora_A rank {rank} ≠ lora_B rank {rank_b}"),
                ));
            }
            let s = spec.scale * alpha.unwrap_or(rank as f64) / rank as f64;
            let a = a.to_dtype(DType::F32)?;
            let b = b.to_dtype(DType::F32)?;
            let delta = (b.matmul(&a)? * s)?; // (out, rank)·(rank, in) -> (out, in)
            let key = format!("{layer}.weight");
            let delta = match out.remove(&key) {
                Some(prev) => (prev + delta)?,
                None => delta,
            };
            out.insert(key, delta);
        }
    }
    Ok(out)
}

fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(Error::weights(path, "no such LoRA file"));
    }
    pixart_core::weights::read_safetensors(path)
}

/// A backend that adds LoRA deltas to the weights another backend hands out, and remembers
/// which deltas were used (a delta for a layer the model lacks is an error).
pub struct LoraMerge<B: SimpleBackend> {
    pub inner: B,
    deltas: BTreeMap<String, Tensor>,
    used: Mutex<Vec<String>>,
    /// Deltas whose shape is not their weight's (the weight is handed out unchanged, so that
    /// the build goes on and the loader can name the LoRA as the fault).
    mismatched: Mutex<Vec<String>>,
}

impl<B: SimpleBackend> LoraMerge<B> {
    pub fn new(inner: B, deltas: BTreeMap<String, Tensor>) -> Self {
        Self {
            inner,
            deltas,
            used: Mutex::new(Vec::new()),
            mismatched: Mutex::new(Vec::new()),
        }
    }

    /// The deltas that did not fit their weight, described.
    pub fn mismatched(&self) -> Vec<String> {
        self.mismatched.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Delta names no model weight took.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().map(|u| u.clone()).unwrap_or_default();
        self.deltas.keys().filter(|k| !used.contains(k)).cloned().collect()
    }
}

impl<B: SimpleBackend> SimpleBackend for LoraMerge<B> {
    fn get(&self, s: Shape, name: &str, h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.inner.get(s, name, h, dtype, dev)?;
        match self.deltas.get(name) {
            None => Ok(t),
            Some(d) => {
                if let Ok(mut u) = self.used.lock() {
                    u.push(name.to_string());
                }
                if d.dims() != t.dims() {
                    if let Ok(mut m) = self.mismatched.lock() {
                        m.push(format!(
                            "the update of `{name}` is {:?}, the weight {:?}",
                            d.dims(),
                            t.dims()
                        ));
                    }
                    return Ok(t);
                }
                (t.to_dtype(DType::F32)? + d.to_device(dev)?)?.to_dtype(dtype)
            }
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.inner.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `FILE:abc` with an existing FILE names the scale; it used to say "no such LoRA file".
    #[test]
    fn a_scale_that_is_not_a_number_is_named() {
        let dir = std::env::temp_dir().join(format!("pixart-lora-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("style.safetensors");
        std::fs::write(&file, b"x").unwrap();
        let f = file.to_str().unwrap();
        let e = LoraSpec::parse(&format!("{f}:abc")).unwrap_err();
        assert!(e.contains("\"abc\" is not a number"), "{e}");
        let ok = LoraSpec::parse(&format!("{f}:0.5")).unwrap();
        assert_eq!((ok.path.as_path(), ok.scale), (file.as_path(), 0.5));
        assert_eq!(LoraSpec::parse(f).unwrap().scale, 1.0);
        // A file whose name holds a colon is taken whole.
        let colon = dir.join("a:b.safetensors");
        std::fs::write(&colon, b"x").unwrap();
        let spec = LoraSpec::parse(colon.to_str().unwrap()).unwrap();
        assert_eq!((spec.path.as_path(), spec.scale), (colon.as_path(), 1.0));
        // Neither part exists: a path, reported later as a missing file.
        assert!(LoraSpec::parse("missing.safetensors:abc").is_ok());
        assert!(LoraSpec::parse(&format!("{f}:inf")).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
