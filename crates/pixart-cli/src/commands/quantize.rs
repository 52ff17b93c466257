//! `pixart quantize`: a T5 encoder (transformers folder or single-file safetensors) to a GGUF
//! with llama.cpp's names (pixart_text::quantize documents which tensors are quantized).
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pixart_core::gguf::GgmlType;

use super::{output_folder_exists, usage};
use crate::UsageError;

/// The `--type` values (the interface); the k-quants are parsed but not written yet.
const TYPES: [&str; 6] = ["q8_0", "q6_k", "q5_k", "q4_k", "q4_0", "bf16"];

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The T5 encoder: a transformers `text_encoder/` folder (or a pipeline folder holding one),
    /// or a single-file `.safetensors` (ComfyUI's t5xxl_fp16 / fp8 / scaled fp8).
    #[arg(long)]
    input: PathBuf,
    /// The GGUF to write (atomically).
    #[arg(long)]
    out: PathBuf,
    /// q8_0, q4_0 or bf16 (q6_k, q5_k, q4_k: not implemented yet). Norms and the position bias
    /// stay F32.
    #[arg(long = "type", value_name = "TYPE")]
    ty: String,
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let name = a.ty.to_ascii_lowercase();
    if !TYPES.contains(&name.as_str()) {
        return Err(UsageError(format!("--type must be one of {}, got `{}`", TYPES.join(", "), a.ty)).into());
    }
    let ty = GgmlType::parse(&name).ok_or_else(|| UsageError(format!("--type `{}`", a.ty)))?;
    if !a.out.to_string_lossy().to_lowercase().ends_with(".gguf") {
        return Err(UsageError(format!("--out {}: the output is a .gguf file", a.out.display())).into());
    }
    if !a.input.exists() {
        return Err(UsageError(format!("--input {}: no such file or folder", a.input.display())).into());
    }
    output_folder_exists(&a.out)?;
    let summary = pixart_text::quantize::quantize_text_encoder(&a.input, &a.out, ty).map_err(usage)?;
    println!(
        "{}",
        serde_json::json!({
            "out": a.out.display().to_string(),
            "type": ty.name(),
            "tensors": summary.tensors,
            "quantized": summary.quantized,
            "tensor_bytes": summary.bytes,
        })
    );
    Ok(())
}
