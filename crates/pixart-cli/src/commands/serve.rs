//! `pixart serve`: the HTTP server (crates/pixart-server). Parsing and printing only.
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use pixart_pipeline::request::MAX_SIDE;
use pixart_pipeline::PipelineComponents;
use pixart_server::api::MAX_STEPS;
use pixart_server::{ApiKey, Engine, Limits, Retention, ServeOptions};

use super::model::{ModelArgs, ModelChoice};
use super::{device, dtype, usage};
use crate::UsageError;

/// `serve --help`'s closing text: every route, from the server's own table.
pub fn after_help() -> String {
    let routes: Vec<String> = pixart_server::route_table::ROUTES
        .iter()
        .map(|(method, path)| format!("{} {path}", method.to_uppercase()))
        .collect();
    format!(
        "Routes: {} (POST /v1/images/generations and /v1/images/edits: the OpenAI images API; / \
         the web page). SIGTERM or Ctrl-C: queued jobs are cancelled, the running one gets \
         --shutdown-grace seconds, then the server exits 0.",
        routes.join(", ")
    )
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (loopback by default; use 0.0.0.0 to serve the network).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port (0: any free port, printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Jobs that may wait while one runs; more get 429 with Retry-After.
    #[arg(long = "max-queue", default_value_t = 8)]
    max_queue: usize,
    /// Largest `n` (images per request).
    #[arg(long = "max-n", default_value_t = 4)]
    max_n: usize,
    /// Largest image side in pixels (64 to 8192). Default: from the model's native size N,
    /// max(N, min(4·N, 2048)) (256 for the built-in 64 px model, 2048 for a 1024 px one).
    #[arg(long = "max-side")]
    max_side: Option<usize>,
    /// The most work one request may ask for, in native-size image-steps (images × steps ×
    /// pixels / the model's native pixels, both passes of an upscale counted); more is a 422
    /// naming the field to lower. Default: --max-n × --max-steps (600).
    #[arg(long = "max-cost")]
    max_cost: Option<f64>,
    /// Largest `steps` (at most 1000).
    #[arg(long = "max-steps", default_value_t = 150)]
    max_steps: usize,
    /// Largest request body in bytes.
    #[arg(long = "max-body-bytes", default_value_t = 65536)]
    max_body_bytes: usize,
    /// Largest body of a request that carries an `image` (image to image; base64 is 4/3 of
    /// the file).
    #[arg(long = "max-image-body-bytes", default_value_t = 16 * 1024 * 1024)]
    max_image_body_bytes: usize,
    /// Finished jobs kept for GET /v1/jobs/{id} (oldest dropped first).
    #[arg(long = "keep-jobs", default_value_t = 64)]
    keep_jobs: usize,
    /// Seconds a finished job is kept.
    #[arg(long = "job-ttl", default_value_t = 900)]
    job_ttl: u64,
    /// Serve every model in DIR too (each pipeline folder, transformer file or GGUF in it, by
    /// its name); a request's `model` (or A1111's `sd_model_checkpoint`) picks one. The
    /// default model is --model, else DIR's first.
    #[arg(long = "models", value_name = "DIR")]
    models: Option<std::path::PathBuf>,
    /// The most models loaded at once (--models): loading another unloads the least recently
    /// used.
    #[arg(long = "max-loaded-models", default_value_t = 2)]
    max_loaded_models: usize,
    /// Seconds a job of the job API (POST /v1/jobs) may wait or run with no client asking
    /// about it (GET /v1/jobs/{id}, its events, preview or images); then it is cancelled.
    #[arg(long = "abandon-after", default_value_t = 300)]
    abandon_after: u64,
    /// Seconds the running job may go on after SIGTERM before it is cancelled.
    #[arg(long = "shutdown-grace", default_value_t = 10.0, allow_negative_numbers = true)]
    shutdown_grace: f64,
    /// Transformer dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Require this key on every /v1 route (`Authorization: Bearer KEY`; the web page asks for
    /// it once). Prefer the environment variable: a flag shows in the process list.
    #[arg(long = "api-key", env = "PIXART_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Load the T5 encoder for each job and drop it after its text encoding, instead of keeping
    /// it loaded: less memory between jobs (T5-XXL: about 9.5 GB in bf16), but every job with a
    /// text not seen recently pays the load.
    #[arg(long = "offload-text-encoder")]
    offload_text_encoder: bool,
}

/// The models in a `--models` folder: every sub-folder (a pipeline or transformer folder) and
/// weight file (`.safetensors`, `.pth`, `.pt`, `.bin`, `.gguf`), hidden ones skipped, by name.
fn models_in(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| UsageError(format!("--models {}: {e}", dir.display())))?;
    let mut out: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let ext = p
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            !name.starts_with('.')
                && (p.is_dir() || ["safetensors", "pth", "pt", "bin", "gguf"].contains(&ext.as_str()))
        })
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(UsageError(format!(
            "--models {}: no pipeline folder, transformer file or GGUF in it",
            dir.display()
        ))
        .into());
    }
    Ok(out)
}

pub fn run(a: ServeArgs) -> Result<()> {
    let dt = dtype(&a.dtype)?;
    let dev = device(&a.device)?;
    for (flag, v) in [
        ("--max-queue", a.max_queue),
        ("--max-n", a.max_n),
        ("--max-steps", a.max_steps),
    ] {
        if v == 0 {
            return Err(UsageError(format!("{flag} must be at least 1")).into());
        }
    }
    if a.max_n > pixart_pipeline::MAX_IMAGES {
        return Err(UsageError(format!(
            "--max-n {} is more than {} images, the most one run makes",
            a.max_n,
            pixart_pipeline::MAX_IMAGES
        ))
        .into());
    }
    if let Some(side) = a.max_side.filter(|s| !(64..=MAX_SIDE).contains(s)) {
        return Err(UsageError(format!("--max-side {side} must be between 64 and {MAX_SIDE}")).into());
    }
    if let Some(c) = a.max_cost.filter(|c| !(c.is_finite() && *c >= 1.0)) {
        return Err(UsageError(format!("--max-cost {c} must be a number of at least 1")).into());
    }
    if a.max_steps > MAX_STEPS {
        return Err(UsageError(format!("--max-steps {} is more than {MAX_STEPS}", a.max_steps)).into());
    }
    if a.max_body_bytes < 1024 {
        return Err(UsageError(format!("--max-body-bytes {} is below 1024", a.max_body_bytes)).into());
    }
    if !a.shutdown_grace.is_finite() || a.shutdown_grace < 0.0 {
        return Err(UsageError(format!(
            "--shutdown-grace {} must be a number of seconds ≥ 0",
            a.shutdown_grace
        ))
        .into());
    }
    let api_key = a
        .api_key
        .as_deref()
        .map(ApiKey::new)
        .transpose()
        .map_err(|e| UsageError(format!("--api-key: {e}")))?;
    if a.max_loaded_models == 0 {
        return Err(UsageError("--max-loaded-models must be at least 1".into()).into());
    }
    // The models: --model (or the built-in one) first, unless only --models is given.
    let mut specs: Vec<Option<std::path::PathBuf>> = Vec::new();
    if a.model.model.is_some() || a.models.is_none() {
        specs.push(a.model.model.clone());
    }
    if let Some(dir) = &a.models {
        specs.extend(models_in(dir)?.into_iter().map(Some));
    }
    let spec_name = |m: &Option<std::path::PathBuf>| super::model::model_label(m.as_deref());
    let names: Vec<String> = specs.iter().map(spec_name).collect();
    if let Some((i, n)) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)) {
        return Err(UsageError(format!(
            "two models are named {n:?} ({} and {}); rename one",
            specs[names.iter().position(|m| m == n).unwrap_or(0)]
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            specs[i].as_deref().map(|p| p.display().to_string()).unwrap_or_default()
        ))
        .into());
    }
    let name = names[0].clone();
    let mut more = Vec::new();
    for (spec, n) in specs.iter().zip(&names).skip(1) {
        let mut args = a.model.clone();
        args.model = spec.clone();
        let ModelChoice {
            resolved, mut options, ..
        } = args.resolve(dev.clone(), dt)?;
        options.keep_text_encoder = !a.offload_text_encoder;
        let geometry = resolved.geometry_with(options.kv_compress.as_ref()).map_err(usage)?;
        let (model_name, dtype_name) = (n.clone(), a.dtype.clone());
        let load: pixart_server::Loader = Box::new(move || {
            PipelineComponents::load_resolved(resolved.clone(), &options)
                .map(|components| Engine {
                    components,
                    model_name: model_name.clone(),
                    dtype_name: dtype_name.clone(),
                    loras: Vec::new(),
                })
                .map_err(|e| e.to_string())
        });
        more.push(pixart_server::ModelEntry {
            name: n.clone(),
            geometry,
            engine: None,
            load: Some(load),
        });
    }
    let mut first_args = a.model.clone();
    first_args.model = specs[0].clone();
    let ModelChoice {
        model,
        resolved,
        mut options,
    } = first_args.resolve(dev, dt)?;
    options.keep_text_encoder = !a.offload_text_encoder;
    eprintln!("loading {}", model.display());
    let first_loader = (resolved.clone(), options.clone());
    let components = PipelineComponents::load_resolved(resolved, &options).map_err(usage)?;
    let loras = a
        .model
        .lora
        .iter()
        .filter_map(|s| pixart_model::lora::LoraSpec::parse(s).ok())
        .map(|l| {
            let name = l
                .path
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "lora".into());
            (name, l.scale)
        })
        .collect();
    let engine = Engine {
        components,
        model_name: name,
        dtype_name: a.dtype.clone(),
        loras,
    };
    let native = {
        let g = engine.components.geometry();
        g.sample_size * g.vae_factor
    };
    let max_side = a
        .max_side
        .unwrap_or_else(|| native.max((4 * native).min(2048)).clamp(64, MAX_SIDE));
    let options = ServeOptions {
        addr: SocketAddr::new(a.host, a.port),
        limits: Limits {
            max_queue: a.max_queue,
            max_n: a.max_n,
            max_side,
            max_cost: a.max_cost.unwrap_or((a.max_n * a.max_steps) as f64),
            max_steps: a.max_steps,
            max_body_bytes: a.max_body_bytes,
            max_image_body_bytes: a.max_image_body_bytes,
            ..Limits::default()
        },
        retention: Retention {
            keep_jobs: a.keep_jobs,
            ttl: Duration::from_secs(a.job_ttl),
            abandon_after: Duration::from_secs(a.abandon_after.max(1)),
        },
        shutdown_grace: Duration::from_secs_f64(a.shutdown_grace),
        api_key,
    };
    if !a.host.is_loopback() && options.api_key.is_none() {
        eprintln!(
            "warning: serving on {} (not the loopback) without --api-key: anyone who can reach it can queue jobs",
            a.host
        );
    }
    let mut entries = vec![pixart_server::ModelEntry {
        name: engine.model_name.clone(),
        geometry: engine.components.geometry(),
        load: (!more.is_empty()).then(|| {
            let (resolved, opts) = first_loader;
            let (model_name, dtype_name, loras) = (
                engine.model_name.clone(),
                engine.dtype_name.clone(),
                engine.loras.clone(),
            );
            Box::new(move || {
                PipelineComponents::load_resolved(resolved.clone(), &opts)
                    .map(|components| Engine {
                        components,
                        model_name: model_name.clone(),
                        dtype_name: dtype_name.clone(),
                        loras: loras.clone(),
                    })
                    .map_err(|e| e.to_string())
            }) as pixart_server::Loader
        }),
        engine: Some(engine),
    }];
    entries.extend(more);
    let models = pixart_server::Models {
        entries,
        max_loaded: a.max_loaded_models,
    };
    let summary = pixart_server::serve_models(options, models, |addr| {
        // Tests and scripts read this line for the port.
        eprintln!("listening on http://{addr}");
    })?;
    eprintln!(
        "stopped: {} job(s) succeeded, {} failed, {} cancelled, {} refused (queue full)",
        summary.succeeded, summary.failed, summary.cancelled, summary.rejected
    );
    Ok(())
}
