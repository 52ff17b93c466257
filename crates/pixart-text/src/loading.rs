//! Building a [`T5Encoder`] from a transformers `text_encoder/` folder (single or sharded
//! safetensors), with random weights for benchmarks, and the calls the CLI makes.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use pixart_core::weights::{CheckedWeights, RandomWeights, Shared, WeightFile};
use pixart_core::{Error, Result};

use crate::config::T5Config;
use crate::init::InitOptions;
use crate::t5::{QuantWeights, T5Encoder};
use pixart_core::gguf::GgmlType;
use pixart_kernels::cpu::qgemm::QuantMatrix;

/// Weight file names looked for in a text encoder folder, in order.
const WEIGHT_NAMES: [&str; 4] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

/// The folder holding `config.json` and the weights: `path` itself, or `path/text_encoder`
/// for a pipeline folder.
pub fn text_encoder_dir(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Err(Error::weights(path, "no such text encoder folder"));
    }
    if !path.join("config.json").is_file() && path.join("text_encoder").is_dir() {
        return Ok(path.join("text_encoder"));
    }
    Ok(path.to_path_buf())
}

/// The weight file of a text encoder folder (see [`text_encoder_dir`]).
pub fn locate_weights(dir: &Path) -> Result<PathBuf> {
    WEIGHT_NAMES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::weights(
                dir,
                "no text encoder weights (model.safetensors or model.safetensors.index.json)",
            )
        })
}

/// File tensors a `T5EncoderModel` leaves unused without complaint: the decoder half and LM
/// head of a full T5 checkpoint, and the tied copy of the embedding.
fn ignorable(file: &WeightFile) -> Vec<String> {
    let has_shared = file.contains("shared.weight");
    file.infos()
        .keys()
        .filter(|k| {
            k.starts_with("decoder.")
                || k.starts_with("lm_head.")
                || (has_shared && k.as_str() == "encoder.embed_tokens.weight")
        })
        .cloned()
        .collect()
}

/// Loads a T5 encoder from a transformers `text_encoder/` folder (or a pipeline folder holding
/// one): `config.json` plus `model.safetensors` or a sharded `model.safetensors.index.json`.
/// Every missing, mis-shaped or unexpected tensor is reported in one error. `dtype` is f32 or
/// bf16 (f16 is refused). A `.gguf` or `.safetensors` file is a single-file encoder
/// ([`crate::single_file`]).
pub fn load_text_encoder(path: &Path, dtype: DType, device: &Device) -> Result<T5Encoder> {
    if crate::single_file::is_single_file(path) {
        check_dtype(dtype)?;
        return crate::single_file::load_text_encoder_file(path, dtype, device);
    }
    let dir = text_encoder_dir(path)?;
    let config = T5Config::from_file(&dir.join("config.json"))?;
    let weights = locate_weights(&dir)?;
    load_with_config(&config, &weights, dtype, device)
}

/// Loads the encoder described by `config` from one weight file or shard index.
pub fn load_with_config(config: &T5Config, weights: &Path, dtype: DType, device: &Device) -> Result<T5Encoder> {
    check_dtype(dtype)?;
    let file = WeightFile::open(weights)?;
    let ignored = ignorable(&file);
    let backend = Shared(Arc::new(CheckedWeights::new(file).ignoring(ignored)));
    let vb = VarBuilder::from_backend(Box::new(backend.clone()), dtype, device.clone());
    let built = T5Encoder::new(config, vb);
    backend.0.finish()?;
    built
}

fn check_dtype(dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::BF16 => Ok(()),
        other => Err(Error::InvalidInput(format!(
            "the T5 encoder runs in f32 or bf16, not {other:?} (f16 overflows in T5 v1.1)"
        ))),
    }
}

/// The encoder with random weights (normal, std 0.02; norms 1), for benchmarks.
pub fn random_text_encoder(config: &T5Config, dtype: DType, device: &Device) -> Result<T5Encoder> {
    check_dtype(dtype)?;
    config.validate().map_err(Error::InvalidInput)?;
    let vb = VarBuilder::from_backend(Box::new(RandomWeights { std: 0.02 }), dtype, device.clone());
    T5Encoder::new(config, vb)
}

/// [`random_text_encoder`] with the weights `pixart quantize` quantizes (every projection and
/// the token embedding, [`crate::quantize::storage_type`]) drawn N(0, 0.02²) one tensor at a
/// time and kept in `ty`'s blocks, so the full-precision model never exists in memory; norms and
/// the position bias random in `dtype`, the activations in `dtype`. For benchmarks of the
/// quantized T5 (CPU).
pub fn random_quantized_text_encoder(config: &T5Config, ty: GgmlType, dtype: DType) -> Result<T5Encoder> {
    check_dtype(dtype)?;
    config.validate().map_err(Error::InvalidInput)?;
    if !pixart_kernels::cpu::quant::can_quantize(ty) {
        return Err(Error::InvalidInput(format!(
            "quantizing to {ty} is not implemented yet (q8_0, q4_0, q4_1, q5_0, q5_1 are)"
        )));
    }
    let mut q = QuantWeights::new();
    for spec in crate::init::param_specs(config, &InitOptions::from(1.0))? {
        let Some(llama) = crate::single_file::llama_cpp_name(&spec.name) else {
            continue;
        };
        if crate::quantize::storage_type(&llama, &spec.shape, ty) != ty {
            continue;
        }
        let (n, k) = (spec.shape[0], spec.shape[1]);
        let w = Tensor::randn(0f32, 0.02f32, n * k, &Device::Cpu)?.to_vec1::<f32>()?;
        let m = QuantMatrix::quantize(ty, &w, n, k).map_err(|e| Error::InvalidInput(format!("{}: {e}", spec.name)))?;
        q.insert(spec.name, Arc::new(m));
    }
    let vb = VarBuilder::from_backend(Box::new(RandomWeights { std: 0.02 }), dtype, Device::Cpu);
    T5Encoder::with_quantized(config, vb, &q)
}

/// The T5-XXL encoder (PixArt-Σ's) with random weights.
pub fn random_xxl(dtype: DType, device: &Device) -> Result<T5Encoder> {
    random_text_encoder(&T5Config::xxl(), dtype, device)
}

/// Runs the encoder of `model_dir` on `inputs`: `input_ids` (b, l) i64 or u32 and, optionally,
/// `attention_mask` (b, l) (1 token, 0 padding; any numeric dtype). Returns
/// `last_hidden_state` (b, l, d_model) as f32 on the CPU.
pub fn run_text_encoder(
    model_dir: &Path,
    inputs: &HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let ids = inputs
        .get("input_ids")
        .ok_or_else(|| Error::InvalidInput("the inputs hold no `input_ids` tensor".into()))?;
    let mask = inputs.get("attention_mask");
    let model = load_text_encoder(model_dir, dtype, device)?;
    let out = model.forward(ids, mask)?;
    let out = out.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    Ok(HashMap::from([("last_hidden_state".to_string(), out)]))
}

/// What [`bench_text_encoder`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchResult {
    /// Wall time of one forward pass (after the build), in seconds.
    pub seconds: f64,
    /// Wall time to build the model with random weights, in seconds.
    pub build_seconds: f64,
    /// Peak resident memory of the process after the forward pass, if the platform reports it.
    pub peak_rss_bytes: Option<u64>,
}

/// Builds `config` with random weights on the CPU and times one forward of `batch` × `tokens`
/// random ids (all valid). See [`bench_text_encoder_on`] for other devices.
pub fn bench_text_encoder(config: T5Config, dtype: DType, tokens: usize, batch: usize) -> Result<BenchResult> {
    bench_text_encoder_on(config, dtype, tokens, batch, &Device::Cpu)
}

/// [`bench_text_encoder`] on `device` (synchronised before the clock is read).
pub fn bench_text_encoder_on(
    config: T5Config,
    dtype: DType,
    tokens: usize,
    batch: usize,
    device: &Device,
) -> Result<BenchResult> {
    bench_built(&config, tokens, batch, device, || {
        random_text_encoder(&config, dtype, device)
    })
}

/// [`bench_text_encoder`] of [`random_quantized_text_encoder`] (`ty` weights, `dtype`
/// activations) on the CPU.
pub fn bench_quantized_text_encoder(
    config: T5Config,
    ty: GgmlType,
    dtype: DType,
    tokens: usize,
    batch: usize,
) -> Result<BenchResult> {
    bench_built(&config, tokens, batch, &Device::Cpu, || {
        random_quantized_text_encoder(&config, ty, dtype)
    })
}

/// Times `build` and then one forward of `batch` × `tokens` ids on `device`.
fn bench_built(
    config: &T5Config,
    tokens: usize,
    batch: usize,
    device: &Device,
    build: impl FnOnce() -> Result<T5Encoder>,
) -> Result<BenchResult> {
    if tokens == 0 || batch == 0 {
        return Err(Error::InvalidInput("tokens and batch must be positive".into()));
    }
    let t0 = Instant::now();
    let model = build()?;
    device.synchronize()?;
    let build_seconds = t0.elapsed().as_secs_f64();
    let ids: Vec<u32> = (0..batch * tokens)
        .map(|i| ((i as u64 * 2_654_435_761 + 7) % config.vocab_size as u64) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (batch, tokens), device)?;
    let mask = Tensor::ones((batch, tokens), DType::U32, device)?;
    let t1 = Instant::now();
    let out = model.forward(&ids, Some(&mask))?;
    device.synchronize()?;
    let seconds = t1.elapsed().as_secs_f64();
    drop(out);
    Ok(BenchResult {
        seconds,
        build_seconds,
        peak_rss_bytes: pixart_core::mem::peak_rss_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark's quantized encoder keeps every projection and the embedding in Q8_0 (the
    /// shapes T5-XXL's are, scaled down: rows of whole blocks) and runs; an unwritable type is
    /// refused by name before anything is built.
    #[test]
    fn random_quantized_encoder_keeps_its_weights_in_blocks() -> Result<()> {
        let config = T5Config {
            vocab_size: 96,
            d_model: 64,
            d_kv: 16,
            d_ff: 128,
            num_layers: 2,
            num_heads: 4,
            ..T5Config::xxl()
        };
        let model = random_quantized_text_encoder(&config, GgmlType::Q8_0, DType::BF16)?;
        // 2 blocks × (q, k, v, o, wi_0, wi_1, wo) + the embedding.
        assert_eq!(model.quantized_weights(), 2 * 7 + 1);
        let ids = Tensor::new(&[[1u32, 5, 9, 2]], &Device::Cpu)?;
        let out = model.forward(&ids, None)?;
        assert_eq!(out.dims(), &[1, 4, 64]);
        let refused = random_quantized_text_encoder(&config, GgmlType::Q4_K, DType::BF16)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains("quantizing to Q4_K is not implemented"), "{refused}");
        Ok(())
    }
}
