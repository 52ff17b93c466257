//! The HTTP routes. Handlers only parse, queue and wait: the model runs on the worker thread.
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use futures_util::stream::Stream;
use pixart_pipeline::ModelGeometry;
use pixart_schedulers::SamplerKind;
use serde_json::{json, Value};

use crate::a1111::{self, A1111};
use crate::api::{self, Limits};
use crate::auth::{self, ApiKey};
use crate::error::ApiError;
use crate::jobs::{Job, JobState, Jobs, Status};
use crate::response::json_response;
pub use crate::route_table::ROUTES;
use crate::{openapi, web};

/// A served model as the handlers see it.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub geometry: ModelGeometry,
    pub default_sampler: String,
}

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    pub jobs: Arc<Jobs>,
    pub limits: Arc<Limits>,
    pub geometry: Arc<ModelGeometry>,
    /// A name, never a path.
    pub model_name: Arc<String>,
    pub default_sampler: Arc<String>,
    /// Required by the `/v1/…` routes when set.
    pub api_key: Option<ApiKey>,
    /// Whether the T5 encoder stays loaded between jobs (else each job with a new text loads it).
    pub text_encoder_kept: bool,
    /// Unix seconds when the server started (the model's `created` in `/v1/models`).
    pub started: u64,
    /// The text-feature cache's counts (the worker's components hold the cache).
    pub text_cache: Arc<pixart_pipeline::text::CacheStats>,
    /// The A1111 routes' options and running request.
    pub a1111: Arc<A1111>,
    /// The LoRAs merged at start (names and scales).
    pub loras: Arc<Vec<(String, f64)>>,
    /// Every served model, the default first (`geometry` and `model_name` are its).
    pub models: Arc<Vec<ModelInfo>>,
}

impl AppState {
    /// The served model a request names (by name, ignoring case, or A1111's `name [hash]`
    /// title); the default model for no name or another (an OpenAI client's `dall-e-3`).
    pub fn model_index(&self, name: Option<&str>) -> usize {
        let Some(n) = name else { return 0 };
        let n = n.trim();
        let base = n.split(" [").next().unwrap_or(n).trim();
        self.models
            .iter()
            .position(|m| m.name.eq_ignore_ascii_case(n) || m.name.eq_ignore_ascii_case(base))
            .unwrap_or(0)
    }

    fn names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }
}

pub fn router(state: AppState) -> Router {
    let upload_limit = state.limits.max_image_body_bytes.max(state.limits.max_body_bytes);
    let open = Router::new()
        .route("/", get(web::index))
        .route("/app.js", get(web::script))
        .route("/style.css", get(web::style))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json));
    // `route_layer`: the key is checked on matched routes only, so an unknown path is still 404.
    let v1 = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route("/v1/images/generations", post(generations))
        .route(
            "/v1/images/edits",
            post(edits).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/v1/jobs", post(create_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job).delete(delete_job))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/jobs/{id}/images/{index}", get(job_image))
        .route("/v1/jobs/{id}/preview", get(job_preview))
        .route("/sdapi/v1/txt2img", post(sd_txt2img))
        .route(
            "/sdapi/v1/img2img",
            post(sd_img2img).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/sdapi/v1/progress", get(sd_progress))
        .route("/sdapi/v1/interrupt", post(sd_interrupt))
        .route("/sdapi/v1/skip", post(sd_skip))
        .route("/sdapi/v1/options", get(sd_options).post(sd_set_options))
        .route("/sdapi/v1/sd-models", get(sd_models))
        .route(
            "/sdapi/v1/samplers",
            get(|| async { json_response(StatusCode::OK, &a1111::samplers_json()) }),
        )
        .route(
            "/sdapi/v1/schedulers",
            get(|| async { json_response(StatusCode::OK, &a1111::schedulers_json()) }),
        )
        .route(
            "/sdapi/v1/upscalers",
            get(|| async { json_response(StatusCode::OK, &a1111::upscalers_json()) }),
        )
        .route("/sdapi/v1/loras", get(sd_loras))
        .route(
            "/sdapi/v1/scripts",
            get(|| async { json_response(StatusCode::OK, &json!({"txt2img": [], "img2img": []})) }),
        )
        .route(
            "/sdapi/v1/refresh-checkpoints",
            post(|| async { json_response(StatusCode::OK, &Value::Null) }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.api_key.clone(),
            auth::require,
        ));
    open.merge(v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route (see /openapi.json)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Reads and checks a JSON body of at most `limits.max_body_bytes` (`max_image_body_bytes` when
/// it carries an `image`), then validates it.
async fn read_request(app: &AppState, headers: &HeaderMap, body: Body) -> Result<api::JobParams, ApiError> {
    let text_limit = app.limits.max_body_bytes;
    let bytes = read_bytes(app, headers, body).await?;
    let parsed = api::parse_body(&bytes)?;
    if parsed.image.is_none() && bytes.len() > text_limit {
        return Err(ApiError::too_large(text_limit));
    }
    let k = app.model_index(parsed.model.as_deref());
    let mut params = api::validate(parsed, &app.limits, &app.models[k].geometry)?;
    params.model = k;
    Ok(params)
}

/// A JSON body of at most `max_image_body_bytes` (and `max_body_bytes`).
async fn read_bytes(app: &AppState, headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let limit = app.limits.max_body_bytes.max(app.limits.max_image_body_bytes);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    api::check_headers(headers)?;
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))
}

fn native_size(g: &ModelGeometry) -> usize {
    g.sample_size * g.vae_factor
}

async fn health(State(app): State<AppState>) -> Response {
    let l = &app.limits;
    let native = native_size(&app.geometry);
    let (default_steps, default_guidance) = pixart_pipeline::request_defaults(None, &app.geometry);
    let status = if app.jobs.is_closed() { "shutting_down" } else { "ok" };
    let code = if app.jobs.is_closed() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_response(
        code,
        &json!({
            "status": status,
            "model": app.model_name.as_str(),
            "models": app.names(),
            "queue_length": app.jobs.queue_len(),
            "max_queue": app.jobs.max_queue(),
            "running": app.jobs.running(),
            "default_size": format!("{native}x{native}"),
            // The web page's placeholder: a prompt the model can draw.
            "example_prompt": if app.model_name.as_str() == "builtin" {
                "a large yellow triangle at the center on a blue background"
            } else {
                "a small cactus with a happy face in the Sahara desert"
            },
            "defaults": {
                "steps": default_steps,
                "guidance_scale": default_guidance,
                "scheduler": app.default_sampler.as_str(),
            },
            "limits": {
                "max_n": l.max_n, "min_side": l.min_side, "max_side": l.max_side,
                "max_steps": l.max_steps, "max_body_bytes": l.max_body_bytes,
                "max_image_body_bytes": l.max_image_body_bytes, "max_prompt_chars": l.max_prompt_chars,
                "max_cost": l.max_cost,
            },
            "auth": if app.api_key.is_some() { "api_key" } else { "none" },
            "text_encoder": if app.text_encoder_kept { "kept" } else { "per_job" },
            "schedulers": SamplerKind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "scheduler_steps": SamplerKind::ALL.iter().map(|k| (k.name().to_string(), json!(k.default_steps()))).collect::<serde_json::Map<_, _>>(),
        }),
    )
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics_text(&app.jobs, &app.text_cache),
    )
        .into_response()
}

/// The Prometheus text exposition of the counters.
pub fn metrics_text(jobs: &Jobs, text_cache: &pixart_pipeline::text::CacheStats) -> String {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let m = &jobs.metrics;
    let sums = m.sums();
    let mean_step = if sums.steps > 0 {
        sums.step_seconds / sums.steps as f64
    } else {
        0.0
    };
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    metric(
        "pixart_queue_length",
        "gauge",
        "Jobs waiting in the queue.",
        &[("", jobs.queue_len() as f64)],
    );
    metric(
        "pixart_queue_capacity",
        "gauge",
        "Jobs the queue holds before answering 429.",
        &[("", jobs.max_queue() as f64)],
    );
    metric(
        "pixart_jobs_running",
        "gauge",
        "Jobs running on the worker (0 or 1).",
        &[("", jobs.running() as f64)],
    );
    metric(
        "pixart_jobs_kept",
        "gauge",
        "Jobs held in memory (queued, running and finished ones not yet expired).",
        &[("", jobs.kept() as f64)],
    );
    metric(
        "pixart_jobs_total",
        "counter",
        "Jobs that ended, by outcome.",
        &[
            ("{status=\"succeeded\"}", m.succeeded.load(Relaxed) as f64),
            ("{status=\"failed\"}", m.failed.load(Relaxed) as f64),
            ("{status=\"cancelled\"}", m.cancelled.load(Relaxed) as f64),
        ],
    );
    metric(
        "pixart_jobs_rejected_total",
        "counter",
        "Requests refused with 429 because the queue was full.",
        &[("{reason=\"queue_full\"}", m.rejected_queue_full.load(Relaxed) as f64)],
    );
    metric(
        "pixart_images_total",
        "counter",
        "Images generated.",
        &[("", m.images.load(Relaxed) as f64)],
    );
    metric(
        "pixart_steps_total",
        "counter",
        "Denoising steps run.",
        &[("", sums.steps as f64)],
    );
    metric(
        "pixart_step_seconds_sum",
        "counter",
        "Seconds spent in denoising steps.",
        &[("", sums.step_seconds)],
    );
    metric(
        "pixart_step_seconds_mean",
        "gauge",
        "Mean seconds per denoising step.",
        &[("", mean_step)],
    );
    metric(
        "pixart_previews_total",
        "counter",
        "Live previews made (requests with \"preview\": true).",
        &[("", m.previews.load(Relaxed) as f64)],
    );
    metric(
        "pixart_text_cache_total",
        "counter",
        "Texts looked up in the T5 feature cache, by result (a miss is encoded).",
        &[
            ("{result=\"hit\"}", text_cache.hits.load(Relaxed) as f64),
            ("{result=\"miss\"}", text_cache.misses.load(Relaxed) as f64),
        ],
    );
    metric(
        "pixart_job_seconds_sum",
        "counter",
        "Seconds from start to end of the succeeded jobs.",
        &[("", sums.job_seconds)],
    );
    metric(
        "pixart_job_seconds_count",
        "counter",
        "Succeeded jobs timed.",
        &[("", sums.jobs as f64)],
    );
    out
}

/// The served model as OpenAI's model object.
fn model_object(app: &AppState, name: &str) -> Value {
    json!({"id": name, "object": "model", "created": app.started, "owned_by": "pixart-rs"})
}

/// `GET /v1/models`: OpenAI's model list, every model this server runs (the default first).
async fn models(State(app): State<AppState>) -> Response {
    let data: Vec<Value> = app.models.iter().map(|m| model_object(&app, &m.name)).collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{model}`: the model, or 404 for any other name.
async fn model(State(app): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    if !app.models.iter().any(|m| m.name == name) {
        return Err(ApiError::not_found(format!(
            "no model {:?}; this server runs {}",
            truncate(&name, 64),
            app.names()
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(json_response(StatusCode::OK, &model_object(&app, &name)))
}

async fn openapi_json() -> Response {
    json_response(StatusCode::OK, &openapi::document())
}

/// Drops the job of an OpenAI request when its handler ends, including when the client
/// disconnects and hyper drops the handler mid-wait: a queued job leaves the queue, a running
/// one stops after its step.
struct DiscardOnDrop {
    jobs: Arc<Jobs>,
    id: String,
    /// Set once the answer carries URLs of the job's images: the job then stays (until
    /// `--keep-jobs` / `--job-ttl` drop it).
    keep: bool,
}

impl Drop for DiscardOnDrop {
    fn drop(&mut self) {
        if !self.keep {
            self.jobs.discard(&self.id);
        }
    }
}

/// `scheme://host` of the request as the client addressed it (`Host`, and `X-Forwarded-Proto`
/// behind a proxy), for absolute image URLs; empty (relative URLs) without a `Host`.
fn origin_of(headers: &HeaderMap) -> String {
    let value = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).map(str::trim);
    match value("host") {
        Some(host) if !host.is_empty() && !host.contains(['/', ' ', '@']) => {
            let proto = value("x-forwarded-proto").filter(|p| *p == "https").unwrap_or("http");
            format!("{proto}://{host}")
        }
        _ => String::new(),
    }
}

async fn wait_terminal(job: &Job) -> JobState {
    let mut rx = job.state.subscribe();
    let state = match rx.wait_for(|s| s.status.is_terminal()).await {
        Ok(s) => s.clone(),
        Err(_) => job.snapshot(),
    };
    state
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `POST /v1/images/generations`: queues the job and answers when it is done.
async fn generations(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let params = read_request(&app, &headers, body).await?;
    answer_images(app, params, &headers).await
}

/// Refuses a request that a web page of another origin sent (its `Origin` is not this host).
fn check_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, h)| h.trim_end_matches('/'));
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(ApiError::cross_origin()),
    }
}

/// A multipart text field as JSON: the numeric fields as numbers when they parse (else the
/// string, which the type check then names), the others as strings.
fn form_value(name: &str, text: String) -> Value {
    let number = match name {
        "n" | "steps" | "seed" | "output_compression" | "upscale_steps" => {
            text.trim().parse::<u64>().ok().map(Value::from)
        }
        "guidance_scale" | "strength" | "upscale" | "upscale_strength" => {
            text.trim().parse::<f64>().ok().map(Value::from)
        }
        "preview" => text.trim().parse::<bool>().ok().map(Value::from),
        _ => None,
    };
    number.unwrap_or(Value::String(text))
}

fn form_error(limit: usize) -> impl Fn(MultipartError) -> ApiError {
    move |e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::malformed(format!("the multipart body cannot be read: {}", e.body_text()))
        }
    }
}

/// `POST /v1/images/edits`: OpenAI's edits API as `multipart/form-data`: `image` (or
/// `image[]`, one file), optional `mask`, `prompt` and the fields of the generations route.
/// Image to image, or inpainting with a mask ([`api::edit_images`]); answers like
/// `/v1/images/generations`.
async fn edits(
    State(app): State<AppState>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    check_origin(&headers)?;
    let mut form = form.map_err(|e| match e {
        MultipartRejection::InvalidBoundary(_) => ApiError::not_multipart(),
        other => ApiError::malformed(other.body_text()),
    })?;
    let limit = app.limits.max_image_body_bytes.max(app.limits.max_body_bytes);
    let mut fields = serde_json::Map::new();
    let (mut image, mut mask): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
    while let Some(field) = form.next_field().await.map_err(form_error(limit))? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "image" | "image[]" | "mask" => {
                let bytes = field.bytes().await.map_err(form_error(limit))?.to_vec();
                let slot = if name == "mask" { &mut mask } else { &mut image };
                if slot.replace(bytes).is_some() {
                    let what = if name == "mask" { "mask" } else { "image" };
                    return Err(ApiError::invalid(what, format!("one `{what}` file per request")));
                }
            }
            _ => {
                let text = field.text().await.map_err(form_error(limit))?;
                fields.insert(name.clone(), form_value(&name, text));
            }
        }
    }
    let image = image.ok_or_else(|| ApiError::invalid("image", "`image` (a file) is required"))?;
    let body = api::parse_value(Value::Object(fields))?;
    let images = api::edit_images(&image, mask.as_deref())?;
    let k = app.model_index(body.model.as_deref());
    let mut params = api::validate_with(body, Some(images), &app.limits, &app.models[k].geometry)?;
    params.model = k;
    answer_images(app, params, &headers).await
}

/// Queues `params` and answers with the images when the job is done: `b64_json`, or with
/// `response_format: "url"` the URLs of `GET /v1/jobs/{id}/images/{k}` (absolute, from the
/// request's `Host`), the job kept for them.
async fn answer_images(app: AppState, params: api::JobParams, headers: &HeaderMap) -> Result<Response, ApiError> {
    let job = app.jobs.submit(params)?;
    let mut guard = DiscardOnDrop {
        jobs: app.jobs.clone(),
        id: job.id.clone(),
        keep: false,
    };
    let state = wait_terminal(&job).await;
    match state.status {
        Status::Succeeded => {
            let origin = origin_of(headers);
            guard.keep = job.params.urls;
            let data: Vec<Value> = state
                .images
                .iter()
                .enumerate()
                .map(|(k, png)| {
                    let seed = job.params.seed.wrapping_add(k as u64);
                    if job.params.urls {
                        json!({"url": format!("{origin}/v1/jobs/{}/images/{k}", job.id), "seed": seed})
                    } else {
                        json!({"b64_json": b64(png), "seed": seed})
                    }
                })
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"created": job.created, "data": data}),
            ))
        }
        Status::Failed => Err(ApiError::generation_failed()),
        _ if app.jobs.is_closed() => Err(ApiError::shutting_down()),
        _ => Err(ApiError::conflict("the job was cancelled")),
    }
}

/// The JSON of a job. `b64`: include the images inline.
fn job_json(app: &AppState, job: &Job, s: &JobState, b64_images: bool) -> Value {
    let r = &job.params.request;
    let result = (s.status == Status::Succeeded).then(|| {
        let images: Vec<Value> = s
            .images
            .iter()
            .enumerate()
            .map(|(k, png)| {
                let mut v = json!({
                    "index": k,
                    "url": format!("/v1/jobs/{}/images/{k}", job.id),
                    "seed": job.params.seed.wrapping_add(k as u64),
                });
                if b64_images {
                    v["b64_json"] = Value::String(b64(png));
                }
                v
            })
            .collect();
        json!({"images": images})
    });
    let seconds = |a: Option<std::time::Instant>, b: Option<std::time::Instant>| match (a, b) {
        (Some(a), Some(b)) => Some(b.duration_since(a).as_secs_f64()),
        _ => None,
    };
    json!({
        "id": job.id,
        "object": "job",
        "status": s.status,
        "stage": s.stage,
        "step": s.step,
        "total_steps": s.total_steps,
        "step_seconds": s.step_seconds,
        "queue_position": if s.status == Status::Queued { app.jobs.queue_position(&job.id) } else { None },
        "cancel_requested": s.cancel_requested,
        "created": job.created,
        "seconds": seconds(s.started, s.finished),
        "prompt": r.prompts.first(),
        "negative_prompt": r.negative_prompt,
        "size": match &r.upscale {
            Some(u) => format!("{}x{}", u.width, u.height),
            None => format!("{}x{}", r.out_width, r.out_height),
        },
        "n": r.batch,
        "steps": r.steps,
        "guidance_scale": r.guidance,
        "seed": job.params.seed,
        "strength": r.init_image.as_ref().map(|i| i.strength),
        "preview": s.preview.as_ref().map(|(step, _)| json!({
            "step": step,
            "url": format!("/v1/jobs/{}/preview?step={step}", job.id),
        })),
        "error": s.error,
        "result": result,
    })
}

/// `POST /v1/jobs`: 202 with the job; its URL in `Location`.
async fn create_job(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let mut params = read_request(&app, &headers, body).await?;
    params.job_api = true;
    let job = app.jobs.submit(params)?;
    let mut resp = json_response(StatusCode::ACCEPTED, &job_json(&app, &job, &job.snapshot(), false));
    if let Ok(v) = format!("/v1/jobs/{}", job.id).parse() {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn list_jobs(State(app): State<AppState>) -> Response {
    let data: Vec<Value> = app
        .jobs
        .list()
        .iter()
        .map(|j| job_json(&app, j, &j.snapshot(), false))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// The job `id` (a client asked about it: [`Job::touch`]).
fn find(app: &AppState, id: &str) -> Result<Arc<Job>, ApiError> {
    let job = app
        .jobs
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no job {:?}", truncate(id, 64))))?;
    job.touch();
    Ok(job)
}

/// Counts an open event stream on a job while it lives.
struct Watching(Arc<Job>);

impl Watching {
    fn new(job: Arc<Job>) -> Self {
        job.watchers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(job)
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.touch();
        self.0.watchers.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

async fn get_job(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = find(&app, &id)?;
    Ok(json_response(
        StatusCode::OK,
        &job_json(&app, &job, &job.snapshot(), true),
    ))
}

/// `DELETE /v1/jobs/{id}`: cancels a queued or running job (202), or forgets a finished one (200).
async fn delete_job(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = find(&app, &id)?;
    if job.snapshot().status.is_terminal() {
        app.jobs.remove_finished(&id);
        let s = job.snapshot();
        return Ok(json_response(
            StatusCode::OK,
            &json!({"id": job.id, "object": "job", "deleted": true, "status": s.status}),
        ));
    }
    app.jobs.cancel(&id, "cancelled by the client");
    Ok(json_response(
        StatusCode::ACCEPTED,
        &job_json(&app, &job, &job.snapshot(), false),
    ))
}

/// `GET /v1/jobs/{id}/events`: `progress` events while the job waits and runs, then one `done`
/// event with the final job (image URLs, no inline images), then the stream ends.
async fn job_events(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let job = find(&app, &id)?;
    let rx = job.state.subscribe();
    let watching = Arc::new(Watching::new(job.clone()));
    let stream = futures_util::stream::unfold((rx, true, false), move |(mut rx, first, ended)| {
        let app = app.clone();
        let job = job.clone();
        let _watching = watching.clone();
        async move {
            if ended {
                return None;
            }
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let s = rx.borrow_and_update().clone();
            let done = s.status.is_terminal();
            let event = Event::default()
                .event(if done { "done" } else { "progress" })
                .data(job_json(&app, &job, &s, false).to_string());
            Some((Ok(event), (rx, false, done)))
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))))
}

/// `GET /v1/jobs/{id}/preview`: the latest live preview (PNG, the batch side by side; the
/// request had `"preview": true`), 404 before the first one. The `step` query of the job's
/// preview URL only makes each preview a new URL for a browser's cache.
async fn job_preview(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = find(&app, &id)?;
    let s = job.snapshot();
    let (step, png) = s.preview.ok_or_else(|| {
        let why = if job.params.request.previews == pixart_pipeline::Previews::Off {
            "the request did not ask for previews (`\"preview\": true`)"
        } else {
            "none yet"
        };
        ApiError::not_found(format!("job {} has no preview: {why}", job.id))
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png".to_string()),
            (header::CACHE_CONTROL, "private, max-age=3600".to_string()),
            (header::HeaderName::from_static("x-preview-step"), step.to_string()),
        ],
        png.as_ref().clone(),
    )
        .into_response())
}

/// `GET /v1/jobs/{id}/images/{index}`: the image (PNG or JPEG, as the request asked).
async fn job_image(
    State(app): State<AppState>,
    Path((id, index)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let job = find(&app, &id)?;
    let s = job.snapshot();
    if s.status != Status::Succeeded {
        return Err(ApiError::conflict(format!(
            "job {} has no images (status {})",
            job.id,
            s.status.name()
        )));
    }
    let bytes = index
        .trim_end_matches(".png")
        .trim_end_matches(".jpg")
        .parse::<usize>()
        .ok()
        .and_then(|k| s.images.get(k))
        .ok_or_else(|| ApiError::not_found(format!("job {} has {} image(s)", job.id, s.images.len())))?;
    Ok((
        [
            (header::CONTENT_TYPE, job.params.format.mime()),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        bytes.clone(),
    )
        .into_response())
}

/// `POST /sdapi/v1/txt2img`: A1111's text to image ([`a1111`]).
async fn sd_txt2img(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_bytes(&app, &headers, body).await?;
    if bytes.len() > app.limits.max_body_bytes {
        return Err(ApiError::too_large(app.limits.max_body_bytes));
    }
    sd_generate(app, a1111::Mode::Txt2Img, &bytes).await
}

/// `POST /sdapi/v1/img2img`: A1111's image to image and inpainting ([`a1111`]).
async fn sd_img2img(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_bytes(&app, &headers, body).await?;
    sd_generate(app, a1111::Mode::Img2Img, &bytes).await
}

/// Runs an A1111 request's iterations one job after the other and answers as A1111 does:
/// `images` (base64), `parameters` (the request) and `info` (a JSON string with the seeds).
/// A skipped iteration (`/sdapi/v1/skip`) gives no images and the next one runs; an
/// interrupt (`/sdapi/v1/interrupt`) ends the request with the images made so far.
async fn sd_generate(app: AppState, mode: a1111::Mode, bytes: &[u8]) -> Result<Response, ApiError> {
    let value = api::parse_json(bytes)?;
    let options = app.a1111.options();
    // The model: this request's `override_settings`, else the options' `sd_model_checkpoint`.
    let checkpoint = value
        .get("override_settings")
        .and_then(|o| o.get("sd_model_checkpoint"))
        .and_then(Value::as_str)
        .or_else(|| options.get("sd_model_checkpoint").and_then(Value::as_str));
    let k = app.model_index(checkpoint);
    let mut plan = a1111::plan(
        mode,
        value,
        &options,
        &app.limits,
        &app.models[k].geometry,
        &app.names(),
    )?;
    for p in &mut plan.iterations {
        p.model = k;
    }
    let model_name = app.models[k].name.clone();
    let interrupts = app.a1111.interrupt_count();
    let running = a1111::Running::start(&app.a1111);
    let started = std::time::Instant::now();
    let n_iter = plan.iterations.len();
    let (mut images, mut seeds, mut texts) = (Vec::new(), Vec::new(), Vec::new());
    let mut created = 0;
    for (i, params) in plan.iterations.iter().enumerate() {
        if app.a1111.interrupt_count() != interrupts {
            break;
        }
        let job = match app.jobs.submit(params.clone()) {
            Ok(job) => job,
            // A later iteration that finds the queue full: the images so far.
            Err(_) if i > 0 => break,
            Err(e) => return Err(e),
        };
        let _guard = DiscardOnDrop {
            jobs: app.jobs.clone(),
            id: job.id.clone(),
            keep: false,
        };
        if i == 0 {
            created = job.created;
        }
        running.iteration(&job.id, i, n_iter, started, created);
        let state = wait_terminal(&job).await;
        match state.status {
            Status::Succeeded => {
                for (k, file) in state.images.iter().enumerate() {
                    images.push(Value::String(b64(file)));
                    seeds.push(job.params.seed.wrapping_add(k as u64));
                    texts.push(state.infotexts.get(k).cloned().unwrap_or_default());
                }
            }
            Status::Failed => return Err(ApiError::generation_failed()),
            _ if app.jobs.is_closed() => return Err(ApiError::shutting_down()),
            // Skipped or interrupted: the loop's check tells which.
            _ => {}
        }
    }
    drop(running);
    let info = a1111::info(&plan, &seeds, &texts, &model_name, created);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "images": if plan.send_images { images } else { Vec::new() },
            "parameters": plan.parameters,
            "info": info,
        }),
    ))
}

/// `GET /sdapi/v1/progress[?skip_current_image=true]`: the running job's progress, ETA and
/// live preview (`current_image`, base64 PNG).
async fn sd_progress(State(app): State<AppState>, axum::extract::RawQuery(query): axum::extract::RawQuery) -> Response {
    let skip = query.as_deref().unwrap_or("").split('&').any(|kv| {
        kv.split_once('=')
            .is_some_and(|(k, v)| k == "skip_current_image" && (v == "true" || v == "True" || v == "1"))
    });
    let job = app.jobs.current();
    let snapshot = job.as_ref().map(|j| j.snapshot());
    let running = job.as_deref().zip(snapshot.as_ref());
    json_response(
        StatusCode::OK,
        &a1111::progress(&app.a1111, running, app.jobs.queue_len(), skip),
    )
}

/// Cancels the job on the worker (it stops after its step); `reason` goes in its error.
fn cancel_running(app: &AppState, reason: &str) {
    if let Some(job) = app.jobs.current() {
        app.jobs.cancel(&job.id, reason);
    }
}

/// `POST /sdapi/v1/interrupt`: the running job stops after its step, and an A1111 request
/// runs no further iterations.
async fn sd_interrupt(State(app): State<AppState>) -> Response {
    app.a1111.interrupt();
    cancel_running(&app, "interrupted");
    json_response(StatusCode::OK, &Value::Null)
}

/// `POST /sdapi/v1/skip`: the running job stops after its step; an A1111 request goes on
/// with its next iteration.
async fn sd_skip(State(app): State<AppState>) -> Response {
    cancel_running(&app, "skipped");
    json_response(StatusCode::OK, &Value::Null)
}

async fn sd_options(State(app): State<AppState>) -> Response {
    json_response(StatusCode::OK, &Value::Object(app.a1111.options()))
}

/// `POST /sdapi/v1/options`: `sd_model_checkpoint` must name the served model (422 otherwise);
/// `samples_format`, `jpeg_quality` and `live_previews_enable` apply to later A1111 requests;
/// other options are kept and given back.
async fn sd_set_options(State(app): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_bytes(&app, &headers, body).await?;
    if bytes.len() > app.limits.max_body_bytes {
        return Err(ApiError::too_large(app.limits.max_body_bytes));
    }
    let value = api::parse_json(&bytes)?;
    app.a1111.set_options(&value, &app.names())?;
    Ok(json_response(StatusCode::OK, &Value::Null))
}

async fn sd_models(State(app): State<AppState>) -> Response {
    json_response(StatusCode::OK, &a1111::sd_models_json(&app.names()))
}

async fn sd_loras(State(app): State<AppState>) -> Response {
    json_response(StatusCode::OK, &a1111::loras_json(&app.loras))
}
