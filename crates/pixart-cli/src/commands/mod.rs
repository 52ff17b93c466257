//! One module per subcommand.
pub mod bench;
pub mod convert;
pub mod demo_data;
pub mod eval;
pub mod extract;
pub mod generate;
pub mod init;
pub mod model;
pub mod quantize;
pub mod run;
pub mod serve;
pub mod train;
pub mod train_tokenizer;
pub mod train_vae;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::UsageError;

/// The most tokens a text takes (`--max-length`, `--tokens`; PixArt-Σ uses 300).
pub const MAX_TOKENS: usize = 65536;

/// Parses `--dtype`.
pub fn dtype(s: &str) -> Result<DType> {
    pixart_core::device::parse_dtype(s).map_err(|e| UsageError(e.to_string()).into())
}

/// Parses `--device`.
pub fn device(s: &str) -> Result<Device> {
    pixart_core::device::parse_device(s).map_err(|e| UsageError(e.to_string()).into())
}

/// Parses `--scheduler` (`None`: the sampler the scheduler config names).
/// The `--scheduler` help: every sampler the code knows ([`pixart_schedulers::SamplerKind::ALL`]).
pub fn sampler_help() -> String {
    let names: Vec<&str> = pixart_schedulers::SamplerKind::ALL.iter().map(|k| k.name()).collect();
    format!(
        "Sampler: {} (default: the one scheduler_config.json names; iddpm needs a learned-sigma model)",
        names.join(", ")
    )
}

pub fn sampler(s: Option<&str>) -> Result<Option<pixart_schedulers::SamplerKind>> {
    s.map(str::parse).transpose().map_err(usage)
}

/// Fails (usage error) when the folder `path` is to be written in does not exist, or `path`
/// is a folder: checked before any work, so that none is lost to a bad output path.
pub fn output_folder_exists(path: &Path) -> Result<()> {
    if let Some(p) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !p.is_dir() {
            return Err(UsageError(format!("{}: the output folder does not exist", p.display())).into());
        }
    }
    pixart_core::weights::check_output_path(path).map_err(usage)
}

/// Fails (usage error) when an output folder to be created or filled is a file.
pub fn output_folder_ok(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(UsageError(format!("{}: exists and is not a folder", dir.display())).into());
    }
    Ok(())
}

/// Reads every tensor of a safetensors input file.
pub fn read_inputs(path: &Path) -> Result<HashMap<String, Tensor>> {
    if path.is_dir() {
        return Err(UsageError(format!("{}: is a folder, not a safetensors file", path.display())).into());
    }
    if !path.is_file() {
        return Err(UsageError(format!("{}: no such inputs file", path.display())).into());
    }
    pixart_core::weights::read_safetensors(path).map_err(usage)
}

/// Takes a required tensor from the inputs.
pub fn take<'a>(inputs: &'a HashMap<String, Tensor>, path: &Path, name: &str) -> Result<&'a Tensor> {
    inputs
        .get(name)
        .ok_or_else(|| UsageError(format!("{}: missing tensor `{name}`", path.display())).into())
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

/// The flag of a request field ([`pixart_core::Field`]), as `generate` (and `eval demo`,
/// `serve`) spell it: the one table from the library's fields to the CLI's names.
pub fn flag(field: pixart_core::Field) -> &'static str {
    use pixart_core::Field as F;
    match field {
        F::Prompt => "--prompt",
        F::NegativePrompt => "--negative-prompt",
        F::Width => "--width",
        F::Height => "--height",
        F::Size => "--width/--height",
        F::Batch => "--batch",
        F::Steps => "--steps",
        F::Guidance => "--guidance",
        F::Seed => "--seed",
        F::Sampler => "--scheduler",
        F::Image => "--image",
        F::Strength => "--strength",
        F::Mask => "--mask",
        F::Latents => "--latents",
        F::Previews => "--preview-every",
        F::KvCompress => "--kv-compress",
        F::Upscale => "--upscale",
        F::UpscaleStrength => "--upscale-strength",
        F::UpscaleSteps => "--upscale-steps",
        F::Output => "--output-type",
        F::Control => "--control",
        F::ControlScale => "--control-scale",
    }
}

/// A library error as a CLI error: invalid input (a request field named by its flag), and
/// config or weight files that cannot be used, are usage errors (exit code 2); I/O, hub and
/// computation failures are not (1).
pub fn usage(e: pixart_core::Error) -> anyhow::Error {
    use pixart_core::Error as E;
    match e {
        E::InvalidInput(m) => UsageError(m).into(),
        E::InvalidRequest { field, message } => UsageError(format!("{} {message}", flag(field))).into(),
        e @ (E::Config { .. } | E::Weights { .. } | E::Shape(_)) => UsageError(e.to_string()).into(),
        other => other.into(),
    }
}

/// A flag Ctrl-C sets (the long-running work checks it between steps, and `message` is
/// printed); a second Ctrl-C exits at once with code 130.
pub fn cancel_on_ctrl_c(message: &'static str) -> Result<Arc<AtomicBool>> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\n{message}");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(cancel)
}

/// A progress bar of `len` with `template` on a terminal, hidden otherwise (callers then print
/// plain lines); also whether stderr is a terminal.
pub fn progress_bar(len: usize, template: &str) -> (indicatif::ProgressBar, bool) {
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(len as u64);
    if tty {
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    (bar, tty)
}

/// The step bar of `generate`: the bar takes the width the rest of the line leaves on the
/// terminal (`wide_bar`), so the line never wraps (a fixed 40-column bar made it ~85 columns).
pub const STEP_BAR: &str = "{wide_bar} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]";

#[cfg(test)]
mod tests {
    use super::*;
    use pixart_core::{Error, Field};

    #[test]
    fn request_errors_are_usage_errors_naming_the_flag_by_field() {
        // The message's words do not decide the flag: the field does.
        let e = usage(Error::request(
            Field::Guidance,
            "must be between 0 and 50 (not --steps)",
        ));
        assert!(e.downcast_ref::<UsageError>().is_some());
        assert_eq!(e.to_string(), "--guidance must be between 0 and 50 (not --steps)");
        let e = usage(Error::request(Field::UpscaleSteps, "must be at least 1"));
        assert_eq!(e.to_string(), "--upscale-steps must be at least 1");
        assert_eq!(flag(Field::Sampler), "--scheduler");
        assert_eq!(flag(Field::Batch), "--batch");
    }

    /// On an 80-column terminal the step bar's line stays within 80 columns, with the longest
    /// message `generate` shows.
    #[test]
    fn the_step_bar_fits_an_80_column_terminal() {
        let term = indicatif::InMemoryTerm::new(4, 80);
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(1000),
            indicatif::ProgressDrawTarget::term_like(Box::new(term.clone())),
        );
        bar.set_style(indicatif::ProgressStyle::with_template(STEP_BAR).unwrap());
        bar.set_position(999);
        bar.set_message("preview at step 999");
        bar.force_draw();
        // One line that ends the bar: a longer one would wrap onto a second row of the screen.
        let screen = term.contents();
        let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{screen:?}");
        assert!(lines[0].contains("999/1000 steps preview at step 999"), "{screen:?}");
        assert!(lines[0].trim_end().ends_with(']'), "{screen:?}");
    }
}
