//! `pixart`: the PixArt-Σ engine's command line. Argument parsing and printing only; the
//! libraries do the work.
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod commands;

/// PixArt-Σ text-to-image in Rust.
#[derive(Debug, Parser)]
#[command(name = "pixart", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one component on tensors from a safetensors file (for exact comparisons).
    Run(commands::run::RunArgs),
    /// Write a diffusers-layout transformer folder from an original PixArt checkpoint.
    Convert(commands::convert::ConvertArgs),
    /// Write a T5 encoder as a quantized GGUF (llama.cpp's names).
    Quantize(commands::quantize::QuantizeArgs),
    /// Text to image with a diffusers PixArt-Σ pipeline folder.
    Generate(Box<commands::generate::GenerateArgs>),
    /// Benchmarks with random weights (no files needed); prints JSON lines.
    Bench(commands::bench::BenchArgs),
    /// Train a small AutoencoderKL (the VAE) from a TOML config.
    TrainVae(commands::train_vae::TrainVaeArgs),
    /// Train a T5-style Unigram tokenizer on a dataset's captions.
    TrainTokenizer(commands::train_tokenizer::TrainTokenizerArgs),
    /// Write a component with fresh random weights (for training from scratch).
    Init(commands::init::InitArgs),
    /// Precompute VAE latents and T5 caption features for training (resumable).
    Extract(commands::extract::ExtractArgs),
    /// Train or fine-tune the transformer on extracted features (docs/training.md).
    Train(commands::train::TrainArgs),
    /// Write the synthetic shapes dataset (images, train.jsonl, eval.jsonl).
    DemoData(commands::demo_data::DemoDataArgs),
    /// Evaluate a model (`pixart eval demo`: prompt adherence on the demo dataset).
    Eval(commands::eval::EvalArgs),
    /// HTTP server: OpenAI images API, job queue with progress events, web page.
    Serve(Box<commands::serve::ServeArgs>),
}

/// An error in what the user asked for (exit code 2), as opposed to a failure while running
/// (exit code 1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A run stopped by the user (Ctrl-C): exit code 130, nothing written.
#[derive(Debug)]
pub struct Cancelled(pub String);

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Cancelled {}

/// Help and version go out as clap writes them; an argument error as one line (clap's first
/// line and its tip, without the usage block), exit code 2.
fn argument_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.strip_prefix("error: ")
                .or_else(|| l.strip_prefix("tip: "))
                .unwrap_or(l)
        })
        .collect();
    let mut msg = String::new();
    for p in parts {
        if !msg.is_empty() {
            msg.push_str(if msg.ends_with(':') { " " } else { "; " });
        }
        msg.push_str(p);
    }
    if msg.is_empty() {
        msg.push_str("invalid arguments");
    }
    eprintln!("error: {msg} (see --help)");
    ExitCode::from(2)
}

/// The command line, with the help texts that come from the code's own lists: the samplers of
/// `--scheduler` and the routes of `serve`.
fn command() -> clap::Command {
    let sampler = |c: clap::Command| c.mut_arg("scheduler", |a| a.help(commands::sampler_help()));
    Cli::command()
        .mut_subcommand("generate", sampler)
        .mut_subcommand("eval", |e| {
            e.mut_subcommand("demo", sampler).mut_subcommand("curve", sampler)
        })
        .mut_subcommand("serve", |c| c.after_help(commands::serve::after_help()))
}

/// An allocation that fails ends the process with one line and exit status 2, not an abort.
#[global_allocator]
static ALLOCATOR: pixart_core::mem::ExitOnAllocFailure = pixart_core::mem::ExitOnAllocFailure;

fn main() -> ExitCode {
    pixart_core::mem::tune_allocator();
    // candle attaches a backtrace to its errors when RUST_BACKTRACE is set, which would fold
    // into the one-line message; panics keep theirs (RUST_LIB_BACKTRACE=1 brings both back).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = match command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(e) => return argument_error(e),
    };
    let result = match cli.command {
        Command::Run(a) => commands::run::run(a),
        Command::Convert(a) => commands::convert::run(a),
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Generate(a) => commands::generate::run(*a),
        Command::TrainVae(a) => commands::train_vae::run(a),
        Command::TrainTokenizer(a) => commands::train_tokenizer::run(a),
        Command::Init(a) => commands::init::run(a),
        Command::Extract(a) => commands::extract::run(a),
        Command::Train(a) => commands::train::run(a),
        Command::DemoData(a) => commands::demo_data::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Serve(a) => commands::serve::run(*a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, with the cause chain (causes that the message already quotes are left out).
            let mut msg = String::new();
            for cause in e.chain() {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    if !msg.is_empty() {
                        msg.push_str(": ");
                    }
                    msg.push_str(&c);
                }
            }
            let msg = msg.replace('\n', " ");
            eprintln!("error: {msg}");
            if e.downcast_ref::<Cancelled>().is_some() {
                ExitCode::from(130)
            } else if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--help` names every sampler and every route the code has (it listed six of the eight
    /// samplers, and some of the routes, as hand-written text).
    #[test]
    fn help_lists_every_sampler_and_route() {
        let mut cmd = command();
        let help = |cmd: &mut clap::Command, path: &[&str]| {
            let mut c = cmd.clone();
            for p in path {
                c = c.find_subcommand(p).cloned().unwrap();
            }
            c.render_long_help().to_string()
        };
        for path in [&["generate"][..], &["eval", "demo"], &["eval", "curve"]] {
            let text = help(&mut cmd, path);
            for k in pixart_schedulers::SamplerKind::ALL {
                assert!(text.contains(k.name()), "{path:?} --help lacks {}:\n{text}", k.name());
            }
        }
        let text = help(&mut cmd, &["serve"]);
        for (method, route) in pixart_server::route_table::ROUTES {
            assert!(
                text.contains(&format!("{} {route}", method.to_uppercase())),
                "serve --help lacks {route}"
            );
        }
    }
}
