//! Device and dtype choices from user strings.
use candle_core::{DType, Device};

use crate::{Error, Result};

/// `cpu`, `cuda`, `cuda:N` or `auto` (the first GPU when candle was built with CUDA and one
/// is present, else the CPU).
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if candle_core::utils::cuda_is_available() {
            Device::new_cuda(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        _ => {
            let ordinal = match s.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest.strip_prefix(':').and_then(|n| n.parse().ok()).ok_or_else(|| {
                    Error::InvalidInput(format!("unknown device `{s}` (expected cpu, cuda, cuda:N or auto)"))
                })?,
                None => {
                    return Err(Error::InvalidInput(format!(
                        "unknown device `{s}` (expected cpu, cuda, cuda:N or auto)"
                    )))
                }
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::InvalidInput(
                    "this pixart was built without CUDA (build with --features cuda)".into(),
                ));
            }
            Device::new_cuda(ordinal)
                .map_err(|e| Error::InvalidInput(format!("cannot open CUDA device {ordinal}: {e}")))
        }
    }
}

/// `f32`, `bf16` or `f16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "fp32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "fp16" | "float16" => Ok(DType::F16),
        _ => Err(Error::InvalidInput(format!(
            "unknown dtype `{s}` (expected f32, bf16 or f16)"
        ))),
    }
}

/// The short name of a dtype as the CLI prints it.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F64 => "f64",
        _ => "other",
    }
}
