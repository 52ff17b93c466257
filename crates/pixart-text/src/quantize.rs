//! `pixart quantize` for the T5 encoder: a transformers folder or a single-file safetensors to a
//! GGUF with llama.cpp's tensor names and `t5encoder.*` metadata (as llama.cpp's
//! `convert_hf_to_gguf.py` `T5EncoderModel` writes them), which this crate, llama.cpp and
//! gguf-py read back.
//!
//! Which tensors are quantized: every projection (`attn_q|k|v|o`, `ffn_gate|up|down`) and the
//! token embedding (`token_embd`, 32128 × 4096 in T5-XXL: its rows are dequantized one by one on
//! lookup) take the requested type; the RMS norms (`attn_norm`, `ffn_norm`, `enc.output_norm`)
//! and the relative position bias (`attn_rel_b`, 32 × heads) stay F32 — they are tiny and
//! scale every activation (T5's own numerics keep them in f32); a matrix whose rows are not a
//! whole number of blocks (a d_ff of 48 in the test models) is stored in BF16.
use std::path::Path;

use pixart_core::gguf::{GgmlType, GgufWriter, MetaValue};
use pixart_core::weights::WeightFile;
use pixart_core::{Error, Result};
use pixart_kernels::cpu::quant;

use crate::config::T5Config;
use crate::single_file::{for_each_safetensor, is_single_file, llama_cpp_name, read_config};

/// What [`quantize_text_encoder`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeSummary {
    /// Tensors written, and how many of them in the requested type.
    pub tensors: usize,
    pub quantized: usize,
    /// Bytes of tensor data.
    pub bytes: usize,
}

/// The type tensor `llama` (llama.cpp's name) of `shape` is stored in when `ty` is asked for.
pub fn storage_type(llama: &str, shape: &[usize], ty: GgmlType) -> GgmlType {
    let keep_f32 = shape.len() != 2 || llama.contains("_norm") || llama.contains("attn_rel_b");
    if keep_f32 {
        GgmlType::F32
    } else if shape[1].is_multiple_of(ty.block_size()) {
        ty
    } else {
        GgmlType::BF16
    }
}

/// Writes the T5 encoder at `input` (a transformers folder, or a pipeline folder holding
/// `text_encoder/`, or a single-file `.safetensors`) to `out` as a GGUF in `ty`.
pub fn quantize_text_encoder(input: &Path, out: &Path, ty: GgmlType) -> Result<QuantizeSummary> {
    if !quant::can_quantize(ty) {
        return Err(Error::InvalidInput(format!(
            "quantizing to {ty} is not implemented yet (q8_0, q4_0, q4_1, q5_0, q5_1, bf16 are)"
        )));
    }
    let mut w = GgufWriter::new();
    let mut summary = QuantizeSummary {
        tensors: 0,
        quantized: 0,
        bytes: 0,
    };
    let mut add = |name: &str, shape: &[usize], values: Vec<f32>| -> Result<()> {
        // The decoder, the LM head and the tied copy of the embedding are not written.
        let Some(llama) = llama_cpp_name(name) else {
            return Ok(());
        };
        let st = storage_type(&llama, shape, ty);
        let mut bytes = Vec::new();
        quant::quantize(st, &values, &mut bytes).map_err(|e| Error::weights(input, format!("tensor `{name}`: {e}")))?;
        summary.tensors += 1;
        summary.quantized += usize::from(st == ty);
        summary.bytes += bytes.len();
        w.add_tensor(llama, shape, st, bytes)
            .map_err(|e| Error::weights(input, e))
    };
    let config = if is_single_file(input) {
        for_each_safetensor(input, &mut add)?;
        read_config(input)?
    } else {
        let dir = crate::loading::text_encoder_dir(input)?;
        let config = T5Config::from_file(&dir.join("config.json"))?;
        let file = WeightFile::open(&crate::loading::locate_weights(&dir)?)?;
        let has_shared = file.contains("shared.weight");
        for name in file.infos().keys() {
            let name = match name.as_str() {
                "encoder.embed_tokens.weight" if !has_shared => "shared.weight",
                n => n,
            };
            let src = if name == "shared.weight" && !has_shared {
                "encoder.embed_tokens.weight"
            } else {
                name
            };
            let t = file
                .load(src, &candle_core::Device::Cpu)?
                .to_dtype(candle_core::DType::F32)?;
            let shape = t.dims().to_vec();
            add(name, &shape, t.flatten_all()?.to_vec1::<f32>()?)?;
        }
        config
    };
    for (key, value) in metadata(&config) {
        w.add_meta(key, value);
    }
    w.write(out)?;
    Ok(summary)
}

/// `general.architecture` `t5encoder` and its `t5encoder.*` keys (llama.cpp's names).
fn metadata(c: &T5Config) -> Vec<(String, MetaValue)> {
    let arch = "t5encoder";
    let u32_of = |v: usize| MetaValue::U32(v as u32);
    vec![
        ("general.architecture".into(), MetaValue::String(arch.into())),
        (format!("{arch}.context_length"), u32_of(512)),
        (format!("{arch}.embedding_length"), u32_of(c.d_model)),
        (format!("{arch}.feed_forward_length"), u32_of(c.d_ff)),
        (format!("{arch}.block_count"), u32_of(c.num_layers)),
        (format!("{arch}.attention.head_count"), u32_of(c.num_heads)),
        (format!("{arch}.attention.key_length"), u32_of(c.d_kv)),
        (format!("{arch}.attention.value_length"), u32_of(c.d_kv)),
        (
            format!("{arch}.attention.layer_norm_epsilon"),
            MetaValue::F32(c.layer_norm_epsilon as f32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            MetaValue::F32(c.layer_norm_epsilon as f32),
        ),
        (
            format!("{arch}.attention.relative_buckets_count"),
            u32_of(c.relative_attention_num_buckets),
        ),
    ]
}
