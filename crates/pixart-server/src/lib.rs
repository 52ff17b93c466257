//! `pixart serve`: PixArt-Σ over HTTP (axum on tokio).
//!
//! - The model is loaded once and owned by one worker thread outside the async runtime
//!   ([`worker`]); requests wait in a bounded queue ([`jobs`]); a full queue answers 429 with
//!   `Retry-After`.
//! - Routes ([`routes`]): `POST /v1/images/generations` (OpenAI images API, `b64_json`), the job
//!   API (`POST /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/events` as server-sent
//!   events, `DELETE /v1/jobs/{id}`, `GET /v1/jobs/{id}/images/{k}`), `GET /health`,
//!   `GET /metrics` (Prometheus text), `GET /openapi.json`, and the web page at `/` ([`web`]).
//! - AUTOMATIC1111's API under `/sdapi/v1/…` ([`a1111`]), a mapping onto the same request.
//! - Every request check is in [`api`]; every error body is JSON naming the field at fault,
//!   without file paths ([`error`]).
//! - SIGTERM / Ctrl-C: new jobs are refused (503), queued ones cancelled, the running one gets
//!   `shutdown_grace` to finish and is then cancelled between steps; open connections are
//!   closed and [`serve`] returns.
//! - [`client`]: a small blocking HTTP/1.1 client for the tests and the load test.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
// The OpenAPI document is one `json!` literal.
#![recursion_limit = "512"]

pub mod a1111;
pub mod api;
pub mod auth;
pub mod client;
pub mod error;
pub mod jobs;
pub mod openapi;
pub mod response;
pub mod route_table;
pub mod routes;
pub mod web;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use api::Limits;
pub use auth::ApiKey;
pub use jobs::Retention;
pub use response::json_response;
pub use worker::{Engine, Loader, ModelEntry, Models};

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    pub limits: Limits,
    pub retention: Retention,
    /// How long a running job may go on after SIGTERM before it is cancelled.
    pub shutdown_grace: Duration,
    /// When set, every `/v1/…` route needs this key ([`auth`]).
    pub api_key: Option<ApiKey>,
}

/// What `serve` could not do.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error("the worker thread panicked")]
    Worker,
}

/// Jobs by outcome over the server's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub rejected: u64,
}

/// Waits for SIGTERM or SIGINT; returns its name.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = async {
            match signal(SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// Serves until SIGTERM / SIGINT. `on_ready` gets the bound address (port 0 picks a free one)
/// once the server accepts connections. Blocks; runs its own tokio runtime.
pub fn serve(opts: ServeOptions, engine: Engine, on_ready: impl FnOnce(SocketAddr)) -> Result<Summary, ServeError> {
    let entry = ModelEntry {
        name: engine.model_name.clone(),
        geometry: engine.components.geometry(),
        engine: Some(engine),
        load: None,
    };
    serve_models(
        opts,
        Models {
            entries: vec![entry],
            max_loaded: 1,
        },
        on_ready,
    )
}

/// [`serve`] with several models: the first (loaded) is the default; the others load on first
/// use, at most `max_loaded` at once.
pub fn serve_models(
    opts: ServeOptions,
    models: Models,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<Summary, ServeError> {
    let Some(engine) = models.entries.first().and_then(|e| e.engine.as_ref()) else {
        return Err(ServeError::Io(std::io::Error::other("the default model is not loaded")));
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pixart-http")
        .enable_all()
        .build()?;
    let geometry = engine.components.geometry();
    let default_sampler = pixart_pipeline::sampler_name(&engine.components, None);
    let model_name = engine.model_name.clone();
    let loras = engine.loras.clone();
    let infos: Vec<routes::ModelInfo> = models
        .entries
        .iter()
        .map(|e| routes::ModelInfo {
            name: e.name.clone(),
            default_sampler: e
                .geometry
                .model_sampler()
                .map(|k| k.name().to_string())
                .unwrap_or_default(),
            geometry: e.geometry.clone(),
        })
        .collect();
    let jobs = Arc::new(jobs::Jobs::new(opts.limits.max_queue, opts.retention));
    let (listener, addr) = rt.block_on(async {
        let l = tokio::net::TcpListener::bind(opts.addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: opts.addr,
                source,
            })?;
        let a = l.local_addr()?;
        Ok::<_, ServeError>((l, a))
    })?;
    let text_encoder_kept = engine.components.text.resident().is_some();
    let text_cache = engine.components.text.stats();
    let worker = worker::spawn(jobs.clone(), models)?;
    let state = routes::AppState {
        jobs: jobs.clone(),
        limits: Arc::new(opts.limits.clone()),
        geometry: Arc::new(geometry),
        model_name: Arc::new(model_name.clone()),
        default_sampler: Arc::new(default_sampler),
        a1111: Arc::new(a1111::A1111::new(&model_name)),
        loras: Arc::new(loras),
        models: Arc::new(infos),
        api_key: opts.api_key.clone(),
        text_encoder_kept,
        text_cache,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let app = routes::router(state);
    let grace = opts.shutdown_grace;
    let (stopping_tx, mut stopping_rx) = watch::channel(false);
    let jobs_for_signal = jobs.clone();
    // Job-API jobs whose client is gone are cancelled (checked every second).
    let jobs_for_reaper = jobs.clone();
    rt.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if jobs_for_reaper.is_closed() {
                break;
            }
            jobs_for_reaper.reap_abandoned();
        }
    });
    let result = rt.block_on(async move {
        on_ready(addr);
        let graceful = async move {
            let which = shutdown_signal().await;
            let started = Instant::now();
            let running = jobs_for_signal.close();
            let _ = stopping_tx.send(true);
            match &running {
                Some(job) => eprintln!(
                    "{which}: shutting down; queued jobs cancelled; waiting up to {:.0} s for {}",
                    grace.as_secs_f64(),
                    job.id
                ),
                None => eprintln!("{which}: shutting down"),
            }
            if let Some(job) = running {
                let mut rx = job.state.subscribe();
                let finished = tokio::time::timeout(grace, rx.wait_for(|s| s.status.is_terminal()))
                    .await
                    .is_ok();
                if !finished {
                    eprintln!(
                        "{}: still running after {:.0} s; cancelling it",
                        job.id,
                        grace.as_secs_f64()
                    );
                    job.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
                    job.state.send_modify(|s| s.cancel_requested = true);
                    let _ = rx.wait_for(|s| s.status.is_terminal()).await;
                }
            }
            eprintln!(
                "jobs settled after {:.2} s; closing connections",
                started.elapsed().as_secs_f64()
            );
        };
        let server = axum::serve(listener, app).with_graceful_shutdown(graceful);
        // Connections get 5 s after the jobs settled to close; a client that keeps one open
        // does not hold the process.
        let deadline = async {
            let _ = stopping_rx.wait_for(|s| *s).await;
            tokio::time::sleep(grace + Duration::from_secs(5)).await;
        };
        tokio::select! {
            r = server => r,
            _ = deadline => {
                eprintln!("connections still open at the deadline; closing them");
                Ok(())
            }
        }
    });
    // The worker leaves once the queue is closed and empty (after a signal, or when the
    // server stopped for another reason).
    if let Some(job) = jobs.close() {
        job.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    worker.join().map_err(|_| ServeError::Worker)?;
    result?;
    let m = &jobs.metrics;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Summary {
        succeeded: load(&m.succeeded),
        failed: load(&m.failed),
        cancelled: load(&m.cancelled),
        rejected: load(&m.rejected_queue_full),
    })
}
