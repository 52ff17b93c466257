//! The model's thread: a plain OS thread, outside the async runtime, that owns the loaded
//! pipeline and runs one job at a time from the queue. Progress goes into the job's watch
//! channel; the job's cancel flag is checked by the pipeline between steps.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use pixart_pipeline::{
    encode_png, generate, parameters_text, sampler_name, Generated, PipelineComponents, Progress, RgbImage, SeededNoise,
};

use crate::jobs::{Job, Jobs, Status};

/// What the worker owns.
pub struct Engine {
    pub components: PipelineComponents,
    /// The model's name as written into PNG metadata (a folder name, never a path).
    pub model_name: String,
    /// The transformer dtype's name, for PNG metadata.
    pub dtype_name: String,
    /// The LoRAs merged into the transformer at start: file names (never paths) and scales.
    pub loras: Vec<(String, f64)>,
}

/// Loads a model's [`Engine`] (an error is a message for the log).
pub type Loader = Box<dyn Fn() -> Result<Engine, String> + Send>;

/// A served model: loaded (`engine`), or loaded on first use by `load`.
pub struct ModelEntry {
    /// Its name for requests (`model`, `sd_model_checkpoint`): a folder or file name.
    pub name: String,
    pub geometry: pixart_pipeline::ModelGeometry,
    pub engine: Option<Engine>,
    /// How to load it again after an eviction; `None`: it stays loaded.
    pub load: Option<Loader>,
}

/// The models a server runs; the first is the default and is loaded at start.
pub struct Models {
    pub entries: Vec<ModelEntry>,
    /// The most models loaded at once; loading one more evicts the least recently used.
    pub max_loaded: usize,
}

/// Starts the worker; it returns when [`Jobs::close`] was called and the queue is empty.
pub fn spawn(jobs: Arc<Jobs>, models: Models) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("pixart-worker".into()).spawn(move || {
        let Models {
            mut entries,
            max_loaded,
        } = models;
        let mut last_used = vec![0u64; entries.len()];
        let mut clock = 0u64;
        while let Some(job) = jobs.next() {
            let k = job.params.model.min(entries.len().saturating_sub(1));
            clock += 1;
            last_used[k] = clock;
            if entries[k].engine.is_none() {
                // Least recently used first, until there is room.
                while entries.iter().filter(|e| e.engine.is_some()).count() >= max_loaded.max(1) {
                    let victim = (0..entries.len())
                        .filter(|&i| i != k && entries[i].engine.is_some() && entries[i].load.is_some())
                        .min_by_key(|&i| last_used[i]);
                    match victim {
                        Some(i) => {
                            eprintln!("unloading model {} (least recently used)", entries[i].name);
                            entries[i].engine = None;
                        }
                        None => break,
                    }
                }
                job.state.send_modify(|st| st.stage = Some("load model"));
                let start = Instant::now();
                let loaded = match &entries[k].load {
                    Some(load) => load(),
                    None => Err("no loader".into()),
                };
                match loaded {
                    Ok(engine) => {
                        eprintln!(
                            "loaded model {} in {:.2} s",
                            entries[k].name,
                            start.elapsed().as_secs_f64()
                        );
                        entries[k].engine = Some(engine);
                    }
                    Err(e) => {
                        fail(
                            &jobs,
                            &job,
                            &format!("model {} could not be loaded: {e}", entries[k].name),
                        );
                        continue;
                    }
                }
            }
            if let Some(engine) = &entries[k].engine {
                run_job(&jobs, engine, &job);
            }
        }
    })
}

fn run_job(jobs: &Jobs, engine: &Engine, job: &Arc<Job>) {
    let start = Instant::now();
    let r = &job.params.request;
    if job.cancel.load(std::sync::atomic::Ordering::SeqCst) {
        jobs.finish(job, Status::Cancelled, Some("cancelled".into()), Vec::new());
        return;
    }
    let mut on_progress = |p: Progress| match p {
        Progress::Stage(s) => job.state.send_modify(|st| st.stage = Some(s.name())),
        // Two-pass upscaling: each second pass reports its own steps.
        Progress::Upscale { .. } => job.state.send_modify(|st| st.stage = Some("upscale")),
        Progress::Step { done, total, seconds } => {
            jobs.metrics.observe_step(seconds);
            job.state.send_modify(|st| {
                st.step = done;
                st.total_steps = total;
                st.step_seconds = Some(seconds);
            });
        }
        Progress::Preview { done, images, .. } => match encode_png(&RgbImage::side_by_side(&images), "") {
            Ok(png) => {
                jobs.metrics.previews.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                job.state.send_modify(|st| st.preview = Some((done, Arc::new(png))))
            }
            Err(e) => eprintln!("{}: preview after step {done} not encoded: {e}", job.id),
        },
        _ => {}
    };
    let mut noise = SeededNoise::new(job.params.seed);
    let c = &engine.components;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        generate(c, r, &mut noise, &mut on_progress, &job.cancel)
    }));
    let sampler = sampler_name(c, r.sampler);
    match outcome {
        Ok(Ok(Generated::Finished(out))) => {
            let texts: Vec<String> = out
                .images
                .iter()
                .enumerate()
                .map(|(k, img)| parameters_text(r, k, img, &sampler, &engine.model_name, &engine.dtype_name))
                .collect();
            let pngs: Result<Vec<Vec<u8>>, _> = out
                .images
                .iter()
                .zip(&texts)
                .map(|(img, params)| job.params.format.encode(img, params))
                .collect();
            job.state.send_modify(|st| st.infotexts = Arc::new(texts));
            match pngs {
                Ok(pngs) => {
                    eprintln!(
                        "{}: {} image(s) {}x{}, {} steps in {:.2} s",
                        job.id,
                        pngs.len(),
                        r.out_width,
                        r.out_height,
                        r.steps,
                        start.elapsed().as_secs_f64()
                    );
                    jobs.finish(job, Status::Succeeded, None, pngs);
                }
                Err(e) => fail(jobs, job, &e.to_string()),
            }
        }
        Ok(Ok(Generated::Cancelled { completed_steps })) => {
            eprintln!("{}: cancelled after {completed_steps} of {} steps", job.id, r.steps);
            jobs.finish(
                job,
                Status::Cancelled,
                Some(format!("cancelled after {completed_steps} of {} steps", r.steps)),
                Vec::new(),
            );
        }
        Ok(Err(e)) => fail(jobs, job, &e.to_string()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            fail(jobs, job, &format!("panic: {what}"));
        }
    }
}

/// Logs the details; the client gets a message without internals.
fn fail(jobs: &Jobs, job: &Arc<Job>, detail: &str) {
    eprintln!("{}: generation failed: {detail}", job.id);
    jobs.finish(
        job,
        Status::Failed,
        Some("generation failed (internal error; details are in the server log)".into()),
        Vec::new(),
    );
}
