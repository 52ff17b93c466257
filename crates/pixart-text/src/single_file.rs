//! T5 encoders stored as one file, without a config.json beside them:
//!
//! - llama.cpp GGUFs (`t5-v1_1-xxl-encoder-Q8_0.gguf`, …) with llama.cpp's tensor names
//!   (gguf-py 0.19.0 `tensor_mapping.py`, `MODEL_TENSOR.ENC_*`: `token_embd`,
//!   `enc.blk.N.attn_q|attn_k|attn_v|attn_o|attn_rel_b|attn_norm|ffn_gate|ffn_up|ffn_down|ffn_norm`,
//!   `enc.output_norm`) and the config in `{arch}.*` metadata (as llama.cpp's
//!   `convert_hf_to_gguf.py` `T5EncoderModel` writes it), or inferred from the shapes;
//! - ComfyUI's single-file safetensors (`t5xxl_fp16.safetensors`, `t5xxl_fp8_e4m3fn.safetensors`,
//!   the scaled-fp8 variant) with transformers' key names, in F32, F16, BF16, F8_E4M3 or F8_E5M2;
//!   a weight with a `<name>.scale_weight` beside it is `weight.to(f32) * scale_weight` (ComfyUI
//!   `comfy/ops.py`, `scaled_fp8`); the config is inferred from the shapes.
//!
//! The quantized matrices of a GGUF (the projections and the token embedding) stay quantized in
//! memory ([`crate::t5::QuantWeights`]: dequantized slab by slab inside the GEMM, and only the
//! looked-up rows of the embedding). Every other tensor is decoded (pixart_kernels::cpu::quant)
//! to f32 and then to the model's dtype as it is read, so at most one f32 tensor exists beside
//! the model.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::sync::Arc;

use pixart_core::gguf::{GgmlType, GgufFile, MetaValue};
use pixart_core::{Error, Result};
use pixart_kernels::cpu::qgemm::QuantMatrix;
use pixart_kernels::cpu::quant;

use crate::config::T5Config;
use crate::t5::{QuantWeights, T5Encoder};

/// Shapes by checkpoint name, for [`infer_config`].
pub type Shapes = HashMap<String, Vec<usize>>;

/// What a single file holds: tensors decoded to the model's dtype, matrices kept quantized,
/// every tensor's shape, and the config when the file states it.
struct Loaded {
    dense: HashMap<String, Tensor>,
    quant: QuantWeights,
    shapes: Shapes,
    config: Option<T5Config>,
}

/// Whether `path` names a single-file text encoder (a `.gguf` or `.safetensors` file), as
/// opposed to a transformers folder.
pub fn is_single_file(path: &Path) -> bool {
    let name = path.to_string_lossy().to_lowercase();
    path.is_file() && (name.ends_with(".gguf") || name.ends_with(".safetensors"))
}

/// Loads a T5 encoder from a `.gguf` or single-file `.safetensors` (see the module docs).
pub fn load_text_encoder_file(path: &Path, dtype: DType, device: &Device) -> Result<T5Encoder> {
    let name = path.to_string_lossy().to_lowercase();
    let loaded = if name.ends_with(".gguf") {
        gguf_tensors(path, dtype, device)?
    } else {
        let dense = safetensors_tensors(path, dtype)?;
        let shapes = dense.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
        Loaded {
            dense,
            quant: QuantWeights::new(),
            shapes,
            config: None,
        }
    };
    let config = match loaded.config {
        Some(c) => c,
        None => infer_config(&loaded.shapes).map_err(|e| Error::weights(path, e))?,
    };
    config.validate().map_err(|e| Error::weights(path, e))?;
    let vb = VarBuilder::from_tensors(loaded.dense, dtype, device);
    T5Encoder::with_quantized(&config, vb, &loaded.quant).map_err(|e| Error::weights(path, e.to_string()))
}

/// The config of the single-file encoder at `path` (from its header only: GGUF metadata, or
/// the shapes), e.g. to check a tokenizer against it before the weights are read.
pub fn read_config(path: &Path) -> Result<T5Config> {
    let name = path.to_string_lossy().to_lowercase();
    let config = if name.ends_with(".gguf") {
        let file = GgufFile::open(path)?;
        let shapes = gguf_shapes(&file)?;
        match gguf_config(&file, &shapes).map_err(|e| Error::weights(path, e))? {
            Some(c) => c,
            None => infer_config(&shapes).map_err(|e| Error::weights(path, e))?,
        }
    } else {
        let st = pixart_core::weights::raw_safetensors(path)?;
        let mut shapes: Shapes = st.tensors().into_iter().map(|(k, v)| (k, v.shape().to_vec())).collect();
        if let Some(e) = shapes.get("encoder.embed_tokens.weight").cloned() {
            shapes.entry("shared.weight".into()).or_insert(e);
        }
        infer_config(&shapes).map_err(|e| Error::weights(path, e))?
    };
    config.validate().map_err(|e| Error::weights(path, e))?;
    Ok(config)
}

/// The transformers name of each T5 tensor of a llama.cpp GGUF (the decoder's skipped), or an
/// error naming the first tensor that is not one.
fn gguf_names(file: &GgufFile) -> Result<Vec<(String, &pixart_core::gguf::GgufTensor)>> {
    let mut out = Vec::new();
    for t in file.tensors() {
        // The decoder half and LM head of a full T5 GGUF are not ours.
        if t.name.starts_with("dec.") || t.name == "output.weight" {
            continue;
        }
        let gated = t
            .name
            .strip_suffix("ffn_up.weight")
            .is_some_and(|block| file.tensor(&format!("{block}ffn_gate.weight")).is_some());
        let name = transformers_name(&t.name, gated).ok_or_else(|| {
            Error::weights(
                file.path(),
                format!(
                    "tensor `{}`: not a T5 encoder tensor (llama.cpp's names expected)",
                    t.name
                ),
            )
        })?;
        out.push((name, t));
    }
    Ok(out)
}

fn gguf_shapes(file: &GgufFile) -> Result<Shapes> {
    Ok(gguf_names(file)?
        .into_iter()
        .map(|(n, t)| (n, t.shape.clone()))
        .collect())
}

/// transformers' name of llama.cpp's T5 encoder tensor `name`; `gated`: whether the block has
/// an `ffn_gate` (then `ffn_up` is `wi_1`, else `wi`). `None` for a name that is not one.
pub fn transformers_name(name: &str, gated: bool) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("shared.weight".into()),
        "enc.output_norm.weight" => return Some("encoder.final_layer_norm.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("enc.blk.")?;
    let (block, part) = rest.split_once('.')?;
    block.parse::<usize>().ok()?;
    let tail = match part {
        "attn_q.weight" => "layer.0.SelfAttention.q.weight",
        "attn_k.weight" => "layer.0.SelfAttention.k.weight",
        "attn_v.weight" => "layer.0.SelfAttention.v.weight",
        "attn_o.weight" => "layer.0.SelfAttention.o.weight",
        "attn_rel_b.weight" => "layer.0.SelfAttention.relative_attention_bias.weight",
        "attn_norm.weight" => "layer.0.layer_norm.weight",
        "ffn_norm.weight" => "layer.1.layer_norm.weight",
        "ffn_gate.weight" => "layer.1.DenseReluDense.wi_0.weight",
        "ffn_up.weight" if gated => "layer.1.DenseReluDense.wi_1.weight",
        "ffn_up.weight" => "layer.1.DenseReluDense.wi.weight",
        "ffn_down.weight" => "layer.1.DenseReluDense.wo.weight",
        _ => return None,
    };
    Some(format!("encoder.block.{block}.{tail}"))
}

/// llama.cpp's name of the T5 encoder tensor `name` (transformers' key), the inverse of
/// [`transformers_name`]; `None` for a key that is not one (the decoder's, the tied copy
/// `encoder.embed_tokens.weight`).
pub fn llama_cpp_name(name: &str) -> Option<String> {
    match name {
        "shared.weight" => return Some("token_embd.weight".into()),
        "encoder.final_layer_norm.weight" => return Some("enc.output_norm.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("encoder.block.")?;
    let (block, part) = rest.split_once('.')?;
    block.parse::<usize>().ok()?;
    let short = match part {
        "layer.0.SelfAttention.q.weight" => "attn_q",
        "layer.0.SelfAttention.k.weight" => "attn_k",
        "layer.0.SelfAttention.v.weight" => "attn_v",
        "layer.0.SelfAttention.o.weight" => "attn_o",
        "layer.0.SelfAttention.relative_attention_bias.weight" => "attn_rel_b",
        "layer.0.layer_norm.weight" => "attn_norm",
        "layer.1.layer_norm.weight" => "ffn_norm",
        "layer.1.DenseReluDense.wi_0.weight" => "ffn_gate",
        "layer.1.DenseReluDense.wi_1.weight" | "layer.1.DenseReluDense.wi.weight" => "ffn_up",
        "layer.1.DenseReluDense.wo.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("enc.blk.{block}.{short}.weight"))
}

/// The tensors of a llama.cpp T5 GGUF under transformers' names (the quantized matrices kept
/// quantized on the CPU), and the config from its metadata when it has one.
fn gguf_tensors(path: &Path, dtype: DType, device: &Device) -> Result<Loaded> {
    let file = GgufFile::open(path)?;
    let mut out = HashMap::new();
    let mut quant = QuantWeights::new();
    let mut shapes = Shapes::new();
    for (name, t) in gguf_names(&file)? {
        shapes.insert(name.clone(), t.shape.clone());
        let is_quantized = !matches!(t.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        if is_quantized && t.shape.len() == 2 && device.is_cpu() {
            let q = QuantMatrix::new(t.dtype, t.shape[0], t.shape[1], file.data(&t.name)?.to_vec())
                .map_err(|e| Error::weights(path, format!("tensor `{}`: {e}", t.name)))?;
            quant.insert(name, Arc::new(q));
            continue;
        }
        let mut values = vec![0f32; t.elem_count()];
        quant::dequantize(t.dtype, file.data(&t.name)?, &mut values)
            .map_err(|e| Error::weights(path, format!("tensor `{}`: {e}", t.name)))?;
        let tensor = Tensor::from_vec(values, t.shape.as_slice(), &Device::Cpu)?.to_dtype(dtype)?;
        out.insert(name, tensor);
    }
    let config = gguf_config(&file, &shapes).map_err(|e| Error::weights(path, e))?;
    Ok(Loaded {
        dense: out,
        quant,
        shapes,
        config,
    })
}

/// The config from `{arch}.*` metadata (`general.architecture` `t5` or `t5encoder`), with the
/// vocabulary size and feed-forward kind from the tensors; `None` when the file has no such
/// metadata.
fn gguf_config(file: &GgufFile, shapes: &Shapes) -> std::result::Result<Option<T5Config>, String> {
    let arch = match file.meta("general.architecture").and_then(MetaValue::as_str) {
        Some(a) => a.to_string(),
        None => return Ok(None),
    };
    let int = |key: &str| -> std::result::Result<Option<usize>, String> {
        let key = format!("{arch}.{key}");
        match file.meta(&key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| format!("metadata key `{key}`: {v:?} is not a size")),
        }
    };
    let Some(num_layers) = int("block_count")? else {
        return Ok(None);
    };
    let mut config = infer_config(shapes)?;
    config.num_layers = num_layers;
    if let Some(v) = int("embedding_length")? {
        config.d_model = v;
    }
    if let Some(v) = int("feed_forward_length")? {
        config.d_ff = v;
    }
    if let Some(v) = int("attention.head_count")? {
        config.num_heads = v;
    }
    if let Some(v) = int("attention.key_length")? {
        config.d_kv = v;
    }
    if let Some(v) = int("attention.relative_buckets_count")? {
        config.relative_attention_num_buckets = v;
    }
    let eps = ["attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"]
        .iter()
        .find_map(|k| file.meta(&format!("{arch}.{k}")).and_then(MetaValue::as_f64));
    if let Some(eps) = eps {
        // Stored as f32: 1e-6 reads back as 9.99999997e-7; T5's own value is what was meant.
        config.layer_norm_epsilon = (eps as f32).to_string().parse().unwrap_or(eps);
    }
    Ok(Some(config))
}

/// The config of a T5 encoder from the shapes of its tensors (transformers' names): vocabulary
/// and width from `shared`, layers from the block count, heads from the position bias, key
/// width from `q`, FFN width and kind from `wi_0`/`wi`. T5 v1.1 (gated) uses gated-gelu, the
/// original T5 relu; ε is T5's 1e-6 and the buckets' maximum distance 128.
pub fn infer_config(tensors: &Shapes) -> std::result::Result<T5Config, String> {
    let dims = |name: &str| -> std::result::Result<(usize, usize), String> {
        match tensors
            .get(name)
            .ok_or_else(|| format!("tensor `{name}`: missing (needed to infer the config)"))?
            .as_slice()
        {
            [r, c] => Ok((*r, *c)),
            other => Err(format!("tensor `{name}`: shape {other:?} is not a matrix")),
        }
    };
    let (vocab_size, d_model) = dims("shared.weight")?;
    let blocks: BTreeMap<usize, ()> = tensors
        .keys()
        .filter_map(|k| k.strip_prefix("encoder.block.")?.split('.').next()?.parse().ok())
        .map(|b| (b, ()))
        .collect();
    let num_layers = blocks.len();
    if blocks.keys().copied().ne(0..num_layers) {
        return Err(format!("the blocks are not numbered 0..{num_layers}"));
    }
    let att = "encoder.block.0.layer.0.SelfAttention";
    let (buckets, num_heads) = dims(&format!("{att}.relative_attention_bias.weight"))?;
    let (inner, _) = dims(&format!("{att}.q.weight"))?;
    if num_heads == 0 || inner % num_heads != 0 {
        return Err(format!(
            "{inner} attention features do not split into {num_heads} heads"
        ));
    }
    let ffn = "encoder.block.0.layer.1.DenseReluDense";
    let gated = tensors.contains_key(&format!("{ffn}.wi_0.weight"));
    let (d_ff, _) = dims(&format!("{ffn}.{}.weight", if gated { "wi_0" } else { "wi" }))?;
    Ok(T5Config {
        vocab_size,
        d_model,
        d_kv: inner / num_heads,
        d_ff,
        num_layers,
        num_heads,
        relative_attention_num_buckets: buckets,
        relative_attention_max_distance: 128,
        layer_norm_epsilon: 1e-6,
        feed_forward_proj: if gated { "gated-gelu" } else { "relu" }.into(),
    })
}

/// The tensors of a single-file safetensors T5 (transformers' names), decoded, scaled-fp8
/// scales applied.
fn safetensors_tensors(path: &Path, dtype: DType) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for_each_safetensor(path, |name, shape, values| {
        let tensor = Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)?;
        out.insert(name.to_string(), tensor);
        Ok(())
    })?;
    if let Some(e) = out.get("encoder.embed_tokens.weight").cloned() {
        out.entry("shared.weight".into()).or_insert(e);
    }
    Ok(out)
}

/// Calls `f(name, shape, values)` for each T5 encoder tensor of a single-file safetensors,
/// decoded to f32 with its scaled-fp8 scale applied, one tensor at a time.
pub(crate) fn for_each_safetensor(
    path: &Path,
    mut f: impl FnMut(&str, &[usize], Vec<f32>) -> Result<()>,
) -> Result<()> {
    use safetensors::Dtype;
    let st = pixart_core::weights::raw_safetensors(path)?;
    let views: BTreeMap<String, _> = st.tensors().into_iter().collect();
    for (name, view) in &views {
        let bad = |msg: String| Error::weights(path, format!("tensor `{name}`: {msg}"));
        if name == "scaled_fp8" || name.ends_with(".scale_weight") || name.ends_with(".scale_input") {
            continue;
        }
        if name.starts_with("decoder.") || name.starts_with("lm_head.") {
            continue;
        }
        if !(name.starts_with("encoder.") || name == "shared.weight") {
            return Err(bad("not a T5 encoder tensor (transformers' names expected)".into()));
        }
        let data = view.data();
        let n: usize = view.shape().iter().product();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F8_E4M3 => data.iter().map(|&b| quant::f8_e4m3_to_f32(b)).collect(),
            Dtype::F8_E5M2 => data.iter().map(|&b| quant::f8_e5m2_to_f32(b)).collect(),
            other => {
                return Err(bad(format!(
                    "dtype {other:?} is not one of F32, F16, BF16, F8_E4M3, F8_E5M2"
                )))
            }
        };
        if values.len() != n {
            return Err(bad(format!("{} bytes do not hold {n} values", data.len())));
        }
        let mut values = values;
        let scale_name = format!("{}scale_weight", name.strip_suffix("weight").unwrap_or(name));
        if let Some(scale) = views.get(&scale_name) {
            let s = match (scale.dtype(), scale.data()) {
                (Dtype::F32, [a, b, c, d]) => f32::from_le_bytes([*a, *b, *c, *d]),
                (Dtype::F16, [a, b]) => half::f16::from_le_bytes([*a, *b]).to_f32(),
                (Dtype::BF16, [a, b]) => half::bf16::from_le_bytes([*a, *b]).to_f32(),
                (t, d) => {
                    return Err(Error::weights(
                        path,
                        format!(
                            "tensor `{scale_name}`: a scale must be one F32/F16/BF16 value, not {} bytes of {t:?}",
                            d.len()
                        ),
                    ))
                }
            };
            values.iter_mut().for_each(|v| *v *= s);
        }
        f(name, view.shape(), values)?;
    }
    Ok(())
}
