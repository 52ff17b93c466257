//! One module per subcommand.
pub mod bench;
pub mod convert;
pub mod extract;
pub mod generate;
pub mod init;
pub mod run;
pub mod serve;
pub mod train_tokenizer;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::UsageError;

/// Parses `--dtype`.
pub fn dtype(s: &str) -> Result<DType> {
    pixart_core::device::parse_dtype(s).map_err(|e| UsageError(e.to_string()).into())
}

/// Parses `--device`.
pub fn device(s: &str) -> Result<Device> {
    pixart_core::device::parse_device(s).map_err(|e| UsageError(e.to_string()).into())
}

/// Reads every tensor of a safetensors input file.
pub fn read_inputs(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(UsageError(format!("{}: no such inputs file", path.display())).into());
    }
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{}: not a readable safetensors file: {e}", path.display()))
}

/// Takes a required tensor from the inputs.
pub fn take<'a>(inputs: &'a HashMap<String, Tensor>, path: &Path, name: &str) -> Result<&'a Tensor> {
    inputs
        .get(name)
        .with_context(|| format!("{}: missing tensor `{name}`", path.display()))
}

/// Writes output tensors (as f32) to a safetensors file atomically.
pub fn write_outputs(path: &Path, outputs: &[(&str, &Tensor)]) -> Result<()> {
    let map = outputs
        .iter()
        .map(|(k, t)| Ok((k.to_string(), t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    pixart_core::weights::save_safetensors(&map, path)?;
    Ok(())
}
