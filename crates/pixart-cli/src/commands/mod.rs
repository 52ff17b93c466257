//! One module per subcommand.
pub mod bench;
pub mod convert;
pub mod extract;
pub mod generate;
pub mod init;
pub mod run;
pub mod train_tokenizer;
pub mod train_vae;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// A flag that the first Ctrl-C sets (printing `message`); a second Ctrl-C exits at once (130).
pub fn ctrl_c_flag(message: &'static str) -> Result<Arc<AtomicBool>> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\n{message} (Ctrl-C again to quit now)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(cancel)
}

/// A progress bar over `steps` steps on a terminal (stderr), hidden otherwise; and whether
/// stderr is a terminal (print plain lines when not).
pub fn steps_bar(steps: u64) -> (indicatif::ProgressBar, bool) {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(steps);
    if tty {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    (bar, tty)
}
