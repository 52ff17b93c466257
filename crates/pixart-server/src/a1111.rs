//! AUTOMATIC1111's web UI API (`/sdapi/v1/…`), which most image front-ends and scripts speak
//! (the `webuiapi` package, SillyTavern, Open WebUI, Krita plug-ins, ...).
//!
//! A thin mapping: the A1111 fields become this server's [`GenerationBody`], which
//! [`api::validate_with`] (and through it [`pixart_pipeline::GenerationRequest::validate`])
//! checks; errors come back naming the A1111 field (`cfg_scale`, not `guidance_scale`). The
//! field names, defaults and answers follow AUTOMATIC1111/stable-diffusion-webui v1.10
//! (`modules/api/models.py` at 008a8e7: the request models are the processing classes'
//! `__init__` parameters, `TextToImageResponse`, `ProgressResponse`, `SamplerItem`,
//! `SchedulerItem`, `SDModelItem`, `UpscalerItem`). Fields with no meaning here are accepted
//! (their types still checked) and listed in docs/server.md ([`TXT2IMG_FIELDS`],
//! [`IMG2IMG_FIELDS`]); a field A1111 does not have is a 400, as on the other routes.
//!
//! `n_iter` batches run as one job each, one after the other (A1111's iterations), so that
//! `POST /sdapi/v1/skip` ends the running one and lets the next start, and
//! `POST /sdapi/v1/interrupt` ends the running one and the rest.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use pixart_schedulers::SamplerKind;
use serde_json::{json, Map, Value};

use crate::api::{self, GenerationBody, InputImages, JobParams, Limits};
use crate::error::ApiError;
use crate::jobs::lock;
use pixart_pipeline::{ModelGeometry, RgbImage};

/// A field's JSON type as A1111's pydantic models declare it (every field may be `null`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Num,
    Bool,
    Object,
    List,
}

impl Kind {
    fn admits(self, v: &Value) -> bool {
        match (self, v) {
            (_, Value::Null) => true,
            (Self::Str, Value::String(_)) | (Self::Bool, Value::Bool(_)) => true,
            (Self::Object, Value::Object(_)) | (Self::List, Value::Array(_)) => true,
            (Self::Num, Value::Number(n)) => n.as_f64().is_some_and(f64::is_finite),
            // pydantic takes 2.0 for an int.
            (Self::Int, Value::Number(n)) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|x| x.fract() == 0.0 && x.abs() < 9e15)
            }
            _ => false,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Str => "a string",
            Self::Int => "an integer",
            Self::Num => "a number",
            Self::Bool => "true or false",
            Self::Object => "an object",
            Self::List => "a list",
        }
    }
}

/// Whether a field changes what is made here ([`Use::Mapped`]) or is accepted and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Mapped,
    Ignored,
}

use Kind::*;
use Use::*;

/// The fields of both routes (`StableDiffusionProcessing.__init__` and the API's additions).
const COMMON_FIELDS: [(&str, Kind, Use); 40] = [
    ("prompt", Str, Mapped),
    ("negative_prompt", Str, Mapped),
    ("seed", Int, Mapped),
    ("sampler_name", Str, Mapped),
    ("sampler_index", Str, Mapped),
    ("scheduler", Str, Mapped),
    ("batch_size", Int, Mapped),
    ("n_iter", Int, Mapped),
    ("steps", Int, Mapped),
    ("cfg_scale", Num, Mapped),
    ("width", Int, Mapped),
    ("height", Int, Mapped),
    ("denoising_strength", Num, Mapped),
    ("override_settings", Object, Mapped),
    ("send_images", Bool, Mapped),
    ("styles", List, Ignored),
    ("subseed", Int, Ignored),
    ("subseed_strength", Num, Ignored),
    ("seed_resize_from_h", Int, Ignored),
    ("seed_resize_from_w", Int, Ignored),
    ("restore_faces", Bool, Ignored),
    ("tiling", Bool, Ignored),
    ("do_not_save_samples", Bool, Ignored),
    ("do_not_save_grid", Bool, Ignored),
    ("eta", Num, Ignored),
    ("s_min_uncond", Num, Ignored),
    ("s_churn", Num, Ignored),
    ("s_tmax", Num, Ignored),
    ("s_tmin", Num, Ignored),
    ("s_noise", Num, Ignored),
    ("override_settings_restore_afterwards", Bool, Ignored),
    ("refiner_checkpoint", Str, Ignored),
    ("refiner_switch_at", Num, Ignored),
    ("disable_extra_networks", Bool, Ignored),
    ("comments", Object, Ignored),
    ("script_name", Str, Ignored),
    ("script_args", List, Ignored),
    ("save_images", Bool, Ignored),
    ("alwayson_scripts", Object, Ignored),
    ("infotext", Str, Ignored),
];

/// `POST /sdapi/v1/txt2img`'s own fields (`StableDiffusionProcessingTxt2Img`).
const TXT2IMG_ONLY: [(&str, Kind, Use); 17] = [
    ("enable_hr", Bool, Mapped),
    ("hr_scale", Num, Mapped),
    ("hr_second_pass_steps", Int, Mapped),
    ("hr_resize_x", Int, Mapped),
    ("hr_resize_y", Int, Mapped),
    ("hr_upscaler", Str, Ignored),
    ("firstphase_width", Int, Ignored),
    ("firstphase_height", Int, Ignored),
    ("hr_checkpoint_name", Str, Ignored),
    ("hr_sampler_name", Str, Ignored),
    ("hr_scheduler", Str, Ignored),
    ("hr_prompt", Str, Ignored),
    ("hr_negative_prompt", Str, Ignored),
    ("hr_cfg", Num, Ignored),
    ("force_task_id", Str, Ignored),
    ("token_merging_ratio", Num, Ignored),
    ("token_merging_ratio_hr", Num, Ignored),
];

/// `POST /sdapi/v1/img2img`'s own fields (`StableDiffusionProcessingImg2Img`).
const IMG2IMG_ONLY: [(&str, Kind, Use); 17] = [
    ("init_images", List, Mapped),
    ("mask", Str, Mapped),
    ("inpainting_mask_invert", Int, Mapped),
    ("resize_mode", Int, Ignored),
    ("image_cfg_scale", Num, Ignored),
    ("mask_blur", Int, Ignored),
    ("mask_blur_x", Int, Ignored),
    ("mask_blur_y", Int, Ignored),
    ("mask_round", Bool, Ignored),
    ("inpainting_fill", Int, Ignored),
    ("inpaint_full_res", Bool, Ignored),
    ("inpaint_full_res_padding", Int, Ignored),
    ("initial_noise_multiplier", Num, Ignored),
    ("latent_mask", Str, Ignored),
    ("include_init_images", Bool, Ignored),
    ("force_task_id", Str, Ignored),
    ("token_merging_ratio", Num, Ignored),
];

/// Every field of `POST /sdapi/v1/txt2img`.
pub fn txt2img_fields() -> impl Iterator<Item = (&'static str, Kind, Use)> {
    COMMON_FIELDS.into_iter().chain(TXT2IMG_ONLY)
}

/// Every field of `POST /sdapi/v1/img2img`.
pub fn img2img_fields() -> impl Iterator<Item = (&'static str, Kind, Use)> {
    COMMON_FIELDS.into_iter().chain(IMG2IMG_ONLY)
}

/// The options (`GET/POST /sdapi/v1/options`, `override_settings`) that mean something here;
/// others are kept and given back, and change nothing.
const OPTIONS: [(&str, Kind); 5] = [
    ("sd_model_checkpoint", Str),
    ("samples_format", Str),
    ("jpeg_quality", Int),
    ("live_previews_enable", Bool),
    ("CLIP_stop_at_last_layers", Int),
];

/// A1111's sampler names and aliases for ours (`/sdapi/v1/samplers`). A1111 has no SA-Solver,
/// IDDPM or PixArt's own DPM-Solver: those keep names of their own.
pub const SAMPLERS: [(SamplerKind, &str, &[&str]); 8] = [
    (SamplerKind::DpmSolverPp, "DPM++ 2M", &["k_dpmpp_2m", "dpmpp_2m"]),
    (
        SamplerKind::EulerAncestral,
        "Euler a",
        &["k_euler_a", "k_euler_ancestral", "euler_ancestral"],
    ),
    (SamplerKind::Ddim, "DDIM", &["ddim"]),
    (SamplerKind::Lcm, "LCM", &["k_lcm", "lcm"]),
    (SamplerKind::Ddpm, "DDPM", &["ddpm"]),
    (SamplerKind::SaSolver, "SA-Solver", &["sa_solver"]),
    (SamplerKind::Iddpm, "IDDPM", &["iddpm"]),
    (
        SamplerKind::DpmSolverOriginal,
        "DPM-Solver (PixArt)",
        &["dpm_solver_pixart"],
    ),
];

/// The A1111 name of a sampler.
pub fn sampler_label(kind: SamplerKind) -> &'static str {
    SAMPLERS
        .iter()
        .find(|(k, _, _)| *k == kind)
        .map(|(_, name, _)| *name)
        .unwrap_or("DPM++ 2M")
}

/// A sampler from an A1111 name, one of its aliases or this server's own name (`dpm++`),
/// ignoring case.
pub fn parse_sampler(s: &str) -> Option<SamplerKind> {
    let s = s.trim();
    SAMPLERS
        .iter()
        .find(|(kind, name, aliases)| {
            name.eq_ignore_ascii_case(s)
                || aliases.iter().any(|a| a.eq_ignore_ascii_case(s))
                || kind.name().eq_ignore_ascii_case(s)
        })
        .map(|(k, _, _)| *k)
}

/// The `scheduler` values taken (A1111 ≥ 1.9 names the noise schedule apart from the
/// sampler): the model's own timestep spacing only.
pub const SCHEDULERS: [&str; 1] = ["automatic"];

/// The upscalers listed (`hr_upscaler` is accepted whatever it names: the second pass always
/// enlarges the decoded image bilinearly, then runs image to image on it).
pub const UPSCALERS: [&str; 2] = ["None", "Bilinear"];

/// State of the A1111 routes: the options, and the running request for `/progress`.
#[derive(Debug)]
pub struct A1111 {
    options: Mutex<Map<String, Value>>,
    /// Bumped by `POST /sdapi/v1/interrupt`: a request that sees it change stops.
    interrupts: AtomicU64,
    current: Mutex<Option<Current>>,
}

/// The A1111 request that ran last: its iteration and job.
#[derive(Debug, Clone)]
struct Current {
    job_id: String,
    iteration: usize,
    n_iter: usize,
    started: Instant,
    /// `YYYYmmddHHMMSS` as A1111 writes `job_timestamp` (UTC here).
    timestamp: String,
}

/// `YYYYmmddHHMMSS` (UTC) of a Unix time.
pub fn timestamp(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

impl A1111 {
    /// Options as A1111 reports them, for a server of `model`.
    pub fn new(model: &str) -> Self {
        let options = json!({
            "sd_model_checkpoint": model,
            "sd_checkpoint_hash": null,
            "samples_format": "png",
            "jpeg_quality": 80,
            "live_previews_enable": true,
            "show_progress_every_n_steps": -1,
            "CLIP_stop_at_last_layers": 1,
            "sd_vae": "Automatic",
            "enable_pnginfo": true,
        });
        Self {
            options: Mutex::new(options.as_object().cloned().unwrap_or_default()),
            interrupts: AtomicU64::new(0),
            current: Mutex::new(None),
        }
    }

    pub fn options(&self) -> Map<String, Value> {
        lock(&self.options).clone()
    }

    /// `POST /sdapi/v1/options`: checks every option first, then sets them all.
    pub fn set_options(&self, body: &Value, models: &[String]) -> Result<(), ApiError> {
        let obj = body
            .as_object()
            .ok_or_else(|| ApiError::malformed("the body must be a JSON object of options"))?;
        check_options(obj, models, "")?;
        let mut opts = lock(&self.options);
        for (k, v) in obj {
            if !v.is_null() {
                opts.insert(k.clone(), v.clone());
            }
        }
        Ok(())
    }

    pub fn interrupt_count(&self) -> u64 {
        self.interrupts.load(Ordering::SeqCst)
    }

    pub fn interrupt(&self) {
        self.interrupts.fetch_add(1, Ordering::SeqCst);
    }

    fn set_current(&self, c: Option<Current>) {
        *lock(&self.current) = c;
    }

    /// The A1111 request running now, if its job is the one given.
    fn current_for(&self, job_id: &str) -> Option<Current> {
        lock(&self.current).clone().filter(|c| c.job_id == job_id)
    }
}

/// Checks options (`POST /sdapi/v1/options` or `override_settings`, whose field name goes in
/// front: `override_settings.samples_format`).
fn check_options(obj: &Map<String, Value>, models: &[String], prefix: &str) -> Result<(), ApiError> {
    for (key, kind) in OPTIONS {
        let Some(v) = obj.get(key) else { continue };
        let name = format!("{prefix}{key}");
        if !kind.admits(v) {
            return Err(ApiError::invalid(
                &name,
                format!("`{name}` must be {}, got {}", kind.name(), type_of(v)),
            ));
        }
        match (key, v) {
            ("sd_model_checkpoint", Value::String(s)) if !models.iter().any(|m| model_matches(s, m)) => {
                return Err(ApiError::invalid(
                    &name,
                    format!(
                        "no model {:?}; this server runs {} (see /sdapi/v1/sd-models)",
                        trunc(s),
                        models.join(", ")
                    ),
                ))
            }
            ("samples_format", Value::String(s)) if !["png", "jpg", "jpeg", "webp"].contains(&s.as_str()) => {
                return Err(ApiError::invalid(
                    &name,
                    format!("`{name}` must be \"png\", \"jpg\" or \"webp\", got {:?}", trunc(s)),
                ))
            }
            ("jpeg_quality", Value::Number(n)) if !n.as_f64().is_some_and(|q| (1.0..=100.0).contains(&q)) => {
                return Err(ApiError::invalid(
                    &name,
                    format!("`{name}` must be between 1 and 100, got {n}"),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether an `sd_model_checkpoint` names the served model: its name or its A1111 title
/// (`name [hash]`, as `/sdapi/v1/sd-models` gives it), ignoring case.
fn model_matches(given: &str, model: &str) -> bool {
    let g = given.trim();
    let base = g.split(" [").next().unwrap_or(g).trim();
    base.eq_ignore_ascii_case(model) || g.eq_ignore_ascii_case(model)
}

fn trunc(s: &str) -> String {
    s.chars().take(64).collect()
}

fn type_of(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Which route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Txt2Img,
    Img2Img,
}

/// A checked A1111 request: one job per iteration, and what the answer echoes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// One job per `n_iter`; iteration i's images have seeds `seed + i·batch_size + k`.
    pub iterations: Vec<JobParams>,
    pub batch_size: usize,
    /// The request as sent, `parameters` of the answer.
    pub parameters: Value,
    pub sampler_name: String,
    pub send_images: bool,
}

/// The A1111 field that one of this API's fields stands for in `mode`.
fn a1111_field(ours: &str, mode: Mode, enable_hr: bool) -> &'static str {
    match ours {
        "size" => "width",
        "n" => "batch_size",
        "guidance_scale" => "cfg_scale",
        "scheduler" => "sampler_name",
        "strength" => "denoising_strength",
        "image" => "init_images",
        "mask" => "mask",
        "upscale" => "hr_scale",
        "upscale_strength" if enable_hr && mode == Mode::Txt2Img => "denoising_strength",
        "upscale_steps" => "hr_second_pass_steps",
        "output_format" => "samples_format",
        "output_compression" => "jpeg_quality",
        "prompt" => "prompt",
        "negative_prompt" => "negative_prompt",
        "steps" => "steps",
        "seed" => "seed",
        "preview" => "live_previews_enable",
        _ => "body",
    }
}

/// Renames an error of this server's API to the A1111 field, in `param` and in the message's
/// `` `field` `` quotes.
fn rename(mut e: ApiError, mode: Mode, enable_hr: bool) -> ApiError {
    if let Some(p) = e.param.clone() {
        let to = a1111_field(&p, mode, enable_hr);
        if to != "body" && to != p {
            e.message = e.message.replace(&format!("`{p}`"), &format!("`{to}`"));
            e.param = Some(to.to_string());
        }
    }
    e
}

fn get<'a>(obj: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    obj.get(k).filter(|v| !v.is_null())
}

fn int(obj: &Map<String, Value>, k: &str) -> Option<i64> {
    get(obj, k).and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|x| x as i64)))
}

fn num(obj: &Map<String, Value>, k: &str) -> Option<f64> {
    get(obj, k).and_then(Value::as_f64)
}

fn string(obj: &Map<String, Value>, k: &str) -> Option<String> {
    get(obj, k).and_then(Value::as_str).map(str::to_string)
}

fn boolean(obj: &Map<String, Value>, k: &str) -> Option<bool> {
    get(obj, k).and_then(Value::as_bool)
}

/// A positive count field (`batch_size`, `n_iter`, `steps`, ...), or 422 naming it.
fn positive(obj: &Map<String, Value>, k: &str) -> Result<Option<u64>, ApiError> {
    match int(obj, k) {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(n as u64)),
        Some(n) => Err(ApiError::invalid(k, format!("`{k}` must be at least 1, got {n}"))),
    }
}

/// Decodes an image field (base64, bare or as a `data:` URL).
fn image_field(field: &str, data: &str) -> Result<RgbImage, ApiError> {
    api::decode_image(field, data)
}

/// Checks an A1111 body and maps it onto this server's request ([`api::validate_with`]).
/// `options` are the server's current A1111 options (`override_settings` go over them).
pub fn plan(
    mode: Mode,
    value: Value,
    options: &Map<String, Value>,
    limits: &Limits,
    geometry: &ModelGeometry,
    models: &[String],
) -> Result<Plan, ApiError> {
    let obj = value
        .as_object()
        .ok_or_else(|| ApiError::malformed("the body must be a JSON object"))?;
    let fields: Vec<(&str, Kind, Use)> = match mode {
        Mode::Txt2Img => txt2img_fields().collect(),
        Mode::Img2Img => img2img_fields().collect(),
    };
    for (k, v) in obj {
        let Some((_, kind, _)) = fields.iter().find(|(name, _, _)| name == k) else {
            return Err(ApiError::unknown_field(k));
        };
        if !kind.admits(v) {
            return Err(ApiError::invalid(
                k,
                format!("`{k}` must be {}, got {}", kind.name(), type_of(v)),
            ));
        }
    }
    // Options: the server's, then this request's `override_settings`.
    let mut opts = options.clone();
    if let Some(Value::Object(o)) = get(obj, "override_settings") {
        check_options(o, models, "override_settings.")?;
        for (k, v) in o {
            if !v.is_null() {
                opts.insert(k.clone(), v.clone());
            }
        }
    }
    let prompt = string(obj, "prompt").unwrap_or_default();
    // A1111 takes -1 (and no seed) as a random one, drawn below 2³² as A1111 draws them.
    let seed = match int(obj, "seed") {
        None | Some(-1) => pixart_pipeline::random_seed() % 4_294_967_294,
        Some(s) if s >= 0 => s as u64,
        Some(s) => {
            return Err(ApiError::invalid(
                "seed",
                format!("`seed` must be -1 (random) or at least 0, got {s}"),
            ))
        }
    };
    let batch_size = positive(obj, "batch_size")?.unwrap_or(1);
    let n_iter = positive(obj, "n_iter")?.unwrap_or(1);
    if batch_size.saturating_mul(n_iter) > pixart_pipeline::MAX_IMAGES as u64 {
        return Err(ApiError::invalid(
            "n_iter",
            format!(
                "`n_iter` {n_iter} × `batch_size` {batch_size} is more than {} images",
                pixart_pipeline::MAX_IMAGES
            ),
        ));
    }
    let sampler = string(obj, "sampler_name").or_else(|| string(obj, "sampler_index"));
    let sampler_field = if get(obj, "sampler_name").is_some() {
        "sampler_name"
    } else {
        "sampler_index"
    };
    let sampler_kind = match &sampler {
        None => None,
        Some(s) => Some(parse_sampler(s).ok_or_else(|| {
            let names: Vec<&str> = SAMPLERS.iter().map(|(_, n, _)| *n).collect();
            ApiError::invalid(
                sampler_field,
                format!(
                    "unknown `{sampler_field}` {:?}; this server has: {} (see /sdapi/v1/samplers)",
                    trunc(s),
                    names.join(", ")
                ),
            )
        })?),
    };
    if let Some(s) = string(obj, "scheduler") {
        if !SCHEDULERS.iter().any(|n| n.eq_ignore_ascii_case(s.trim())) {
            return Err(ApiError::invalid(
                "scheduler",
                format!(
                    "`scheduler` {:?} is not offered; this server has: Automatic (the model's own timesteps)",
                    trunc(&s)
                ),
            ));
        }
    }
    let (width, height) = (positive(obj, "width")?, positive(obj, "height")?);
    let max_side = limits.max_side.min(pixart_pipeline::request::MAX_SIDE) as u64;
    for (field, v) in [("width", width), ("height", height)] {
        if let Some(v) = v.filter(|&v| v < limits.min_side as u64 || v > max_side) {
            return Err(ApiError::invalid(
                field,
                format!(
                    "`{field}` {v} must be between {} and {max_side} pixels",
                    limits.min_side
                ),
            ));
        }
    }
    let native = (geometry.sample_size * geometry.vae_factor) as u64;
    let size = match (width, height, mode) {
        (None, None, Mode::Img2Img) => None,
        (w, h, _) => Some(format!("{}x{}", w.unwrap_or(native), h.unwrap_or(native))),
    };
    let enable_hr = mode == Mode::Txt2Img && boolean(obj, "enable_hr") == Some(true);
    let denoising = num(obj, "denoising_strength");
    let upscale = if enable_hr {
        let (w, h) = (width.unwrap_or(native) as f64, height.unwrap_or(native) as f64);
        let (rx, ry) = (
            int(obj, "hr_resize_x").unwrap_or(0),
            int(obj, "hr_resize_y").unwrap_or(0),
        );
        // A target size given: the factor that reaches it (the larger of the two).
        let factor = if rx > 0 || ry > 0 {
            (rx as f64 / w).max(ry as f64 / h)
        } else {
            num(obj, "hr_scale").unwrap_or(2.0)
        };
        Some(factor)
    } else {
        None
    };
    let hr_steps = match int(obj, "hr_second_pass_steps") {
        Some(n) if n > 0 && enable_hr => Some(n as u64),
        Some(n) if n < 0 => {
            return Err(ApiError::invalid(
                "hr_second_pass_steps",
                format!("`hr_second_pass_steps` must be 0 (the first pass's steps) or more, got {n}"),
            ))
        }
        _ => None,
    };
    let (format, quality) = match opts.get("samples_format").and_then(Value::as_str) {
        Some("jpg" | "jpeg") => ("jpeg", opts.get("jpeg_quality").and_then(Value::as_u64).or(Some(80))),
        Some("webp") => ("webp", None),
        _ => ("png", None),
    };
    let previews = opts.get("live_previews_enable").and_then(Value::as_bool) != Some(false);
    // img2img: the picture, the mask (A1111: white is repainted) and its inversion.
    let images = match mode {
        Mode::Txt2Img => None,
        Mode::Img2Img => {
            let list = get(obj, "init_images")
                .and_then(Value::as_array)
                .filter(|l| !l.is_empty())
                .ok_or_else(|| ApiError::invalid("init_images", "`init_images` must hold one base64 image"))?;
            if list.len() > 1 {
                return Err(ApiError::invalid(
                    "init_images",
                    format!("`init_images` holds {} images; this server takes one", list.len()),
                ));
            }
            let data = list[0]
                .as_str()
                .ok_or_else(|| ApiError::invalid("init_images", "`init_images` must hold base64 strings"))?;
            let image = image_field("init_images", data)?;
            let mut mask = get(obj, "mask")
                .and_then(Value::as_str)
                .map(|m| image_field("mask", m))
                .transpose()?;
            match int(obj, "inpainting_mask_invert") {
                None | Some(0) => {}
                Some(1) => {
                    if let Some(m) = &mut mask {
                        m.data.iter_mut().for_each(|p| *p = 255 - *p);
                    }
                }
                Some(n) => {
                    return Err(ApiError::invalid(
                        "inpainting_mask_invert",
                        format!("`inpainting_mask_invert` must be 0 or 1, got {n}"),
                    ))
                }
            }
            Some(InputImages { image, mask })
        }
    };
    let body = GenerationBody {
        prompt: prompt.clone(),
        n: Some(batch_size),
        size,
        response_format: None,
        output_format: Some(format.to_string()),
        output_compression: quality,
        model: None,
        user: None,
        quality: None,
        style: None,
        background: None,
        moderation: None,
        negative_prompt: string(obj, "negative_prompt"),
        steps: positive(obj, "steps")?,
        guidance_scale: num(obj, "cfg_scale"),
        seed: Some(seed),
        scheduler: sampler_kind.map(|k| k.name().to_string()),
        image: None,
        strength: if mode == Mode::Img2Img {
            Some(denoising.unwrap_or(0.75))
        } else {
            None
        },
        mask: None,
        preview: Some(previews),
        upscale,
        upscale_strength: if enable_hr { denoising } else { None },
        upscale_steps: hr_steps,
        // (A1111's ControlNet extension sends its units in `alwayson_scripts`; not mapped.)
        control_image: None,
        controlnet_conditioning_scale: None,
    };
    // An empty prompt is unconditional generation, as A1111, the other routes and the CLI do.
    let first = api::validate_with(body, images, limits, geometry).map_err(|e| rename(e, mode, enable_hr))?;
    let iterations = (0..n_iter)
        .map(|i| {
            let mut p = first.clone();
            let s = seed.wrapping_add(i * batch_size);
            p.seed = s;
            p.request.seed = s;
            p
        })
        .collect();
    let sampler_name = sampler_label(
        first
            .request
            .sampler
            .or_else(|| geometry.model_sampler())
            .unwrap_or(SamplerKind::DpmSolverPp),
    )
    .to_string();
    // `parameters`: the request as sent, with what it left out as it ran.
    let mut parameters = obj.clone();
    let r = &first.request;
    for (k, v) in [
        ("prompt", json!(prompt)),
        ("seed", json!(int(obj, "seed").unwrap_or(-1))),
        ("batch_size", json!(batch_size)),
        ("n_iter", json!(n_iter)),
        ("steps", json!(r.steps)),
        ("cfg_scale", json!(r.guidance)),
        ("width", json!(r.out_width)),
        ("height", json!(r.out_height)),
        ("sampler_name", json!(sampler_name)),
        ("negative_prompt", json!(r.negative_prompt)),
    ] {
        if get(&parameters, k).is_none() {
            parameters.insert(k.to_string(), v);
        }
    }
    if mode == Mode::Img2Img {
        // The images are not echoed (A1111's `include_init_images` is excluded from the answer too).
        parameters.insert("init_images".into(), Value::Null);
        parameters.insert("mask".into(), Value::Null);
    }
    Ok(Plan {
        iterations,
        batch_size: batch_size as usize,
        parameters: Value::Object(parameters),
        sampler_name,
        send_images: boolean(obj, "send_images") != Some(false),
    })
}

/// What the routes hold for `/progress`: starts and ends an A1111 request's iterations.
pub struct Running<'a> {
    state: &'a A1111,
}

impl<'a> Running<'a> {
    pub fn start(state: &'a A1111) -> Self {
        Self { state }
    }

    /// Iteration `iteration` of `n_iter` runs as job `job_id`.
    pub fn iteration(&self, job_id: &str, iteration: usize, n_iter: usize, started: Instant, created: u64) {
        self.state.set_current(Some(Current {
            job_id: job_id.to_string(),
            iteration,
            n_iter,
            started,
            timestamp: timestamp(created),
        }));
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.state.set_current(None);
    }
}

/// The body of `GET /sdapi/v1/progress` for the running job (`None`: idle).
pub fn progress(
    state: &A1111,
    running: Option<(&crate::jobs::Job, &crate::jobs::JobState)>,
    queued: usize,
    skip_current_image: bool,
) -> Value {
    let idle_state = |job_count: usize| {
        json!({
            "skipped": false, "interrupted": false, "stopping_generation": false,
            "job": "", "job_count": job_count, "job_timestamp": "0", "job_no": 0,
            "sampling_step": 0, "sampling_steps": 0,
        })
    };
    let Some((job, s)) = running else {
        return json!({
            "progress": 0.0, "eta_relative": 0.0, "state": idle_state(queued),
            "current_image": null, "textinfo": null, "current_task": null,
        });
    };
    let within = if s.total_steps > 0 {
        (s.step as f64 / s.total_steps as f64).min(1.0)
    } else {
        0.0
    };
    let current = state.current_for(&job.id);
    let (iteration, n_iter) = current.as_ref().map(|c| (c.iteration, c.n_iter)).unwrap_or((0, 1));
    let progress = ((iteration as f64 + within) / n_iter.max(1) as f64).min(1.0);
    // A1111: eta = elapsed / progress, eta_relative = eta − elapsed.
    let elapsed = current
        .as_ref()
        .map(|c| c.started)
        .or(s.started)
        .map(|t| t.elapsed().as_secs_f64())
        .unwrap_or(0.0);
    let eta_relative = if progress > 0.0 {
        elapsed / progress - elapsed
    } else {
        0.0
    };
    let current_image = if skip_current_image {
        None
    } else {
        s.preview.as_ref().map(|(_, png)| crate::routes::b64(png))
    };
    json!({
        "progress": progress,
        "eta_relative": eta_relative,
        "state": {
            "skipped": false,
            "interrupted": s.cancel_requested,
            "stopping_generation": false,
            "job": format!("Batch {} out of {}", iteration + 1, n_iter),
            "job_count": n_iter + queued,
            "job_timestamp": current.map(|c| c.timestamp).unwrap_or_else(|| timestamp(job.created)),
            "job_no": iteration,
            "sampling_step": s.step,
            "sampling_steps": s.total_steps,
        },
        "current_image": current_image,
        "textinfo": s.stage,
        "current_task": job.id,
    })
}

/// `GET /sdapi/v1/samplers`.
pub fn samplers_json() -> Value {
    Value::Array(
        SAMPLERS
            .iter()
            .map(|(kind, name, aliases)| {
                let mut all: Vec<&str> = aliases.to_vec();
                all.push(kind.name());
                json!({"name": name, "aliases": all, "options": {}})
            })
            .collect(),
    )
}

/// `GET /sdapi/v1/schedulers`.
pub fn schedulers_json() -> Value {
    json!([{"name": "automatic", "label": "Automatic", "aliases": null, "default_rho": -1, "need_inner_model": false}])
}

/// `GET /sdapi/v1/upscalers`.
pub fn upscalers_json() -> Value {
    Value::Array(
        UPSCALERS
            .iter()
            .map(|n| json!({"name": n, "model_name": null, "model_path": null, "model_url": null, "scale": null}))
            .collect(),
    )
}

/// `GET /sdapi/v1/sd-models`: the served model (a name, never a path).
pub fn sd_models_json(models: &[String]) -> Value {
    Value::Array(
        models
            .iter()
            .map(|m| json!({"title": m, "model_name": m, "hash": null, "sha256": null, "filename": m, "config": null}))
            .collect(),
    )
}

/// `GET /sdapi/v1/loras`: the LoRAs merged into the served model at start (`--lora`; by file
/// name, never a path). A prompt's `<lora:…>` does not switch them.
pub fn loras_json(loras: &[(String, f64)]) -> Value {
    Value::Array(
        loras
            .iter()
            .map(|(name, scale)| json!({"name": name, "alias": name, "path": name, "metadata": {"scale": scale}}))
            .collect(),
    )
}

/// The `info` string of an answer: A1111's `Processed.js()` fields that mean something here.
pub fn info(plan: &Plan, seeds: &[u64], infotexts: &[String], model: &str, created: u64) -> String {
    let first = &plan.iterations[0];
    let r = &first.request;
    let prompt = r.prompts.first().cloned().unwrap_or_default();
    let (width, height) = match &r.upscale {
        Some(u) => (u.width, u.height),
        None => (r.out_width, r.out_height),
    };
    json!({
        "prompt": prompt,
        "all_prompts": vec![prompt.clone(); seeds.len()],
        "negative_prompt": r.negative_prompt,
        "all_negative_prompts": vec![r.negative_prompt.clone(); seeds.len()],
        "seed": seeds.first().copied().unwrap_or(first.seed),
        "all_seeds": seeds,
        "subseed": seeds.first().copied().unwrap_or(first.seed),
        "all_subseeds": seeds,
        "subseed_strength": 0,
        "width": width,
        "height": height,
        "sampler_name": plan.sampler_name,
        "scheduler": "Automatic",
        "cfg_scale": r.guidance,
        "steps": r.steps,
        "batch_size": plan.batch_size,
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": model,
        "sd_model_hash": null,
        "sd_vae_name": null,
        "sd_vae_hash": null,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": r.init_image.as_ref().map(|i| i.strength).or(r.upscale.map(|u| u.strength)),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": timestamp(created),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": false,
        "version": concat!("pixart-rs ", env!("CARGO_PKG_VERSION")),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> ModelGeometry {
        ModelGeometry {
            sample_size: 8,
            patch_size: 2,
            in_channels: 4,
            out_channels: 8,
            vae_factor: 8,
            kv_ratio: None,
            scheduler: pixart_schedulers::SchedulerConfig::pixart_sigma(),
            controlnet: false,
        }
    }

    fn run(mode: Mode, body: Value) -> Result<Plan, ApiError> {
        let a = A1111::new("builtin");
        plan(
            mode,
            body,
            &a.options(),
            &Limits::default(),
            &geometry(),
            &["builtin".to_string()],
        )
    }

    fn field(mode: Mode, body: Value) -> (u16, String) {
        let e = run(mode, body).unwrap_err();
        (e.status.as_u16(), e.param.unwrap_or_default())
    }

    #[test]
    fn a1111_fields_map_onto_the_request() {
        let p = run(
            Mode::Txt2Img,
            json!({"prompt": "a red circle", "negative_prompt": "blue", "seed": 5, "steps": 3,
                   "cfg_scale": 2.5, "width": 96, "height": 64, "sampler_name": "Euler a",
                   "batch_size": 2, "n_iter": 3, "scheduler": "Automatic", "restore_faces": false,
                   "eta": 1.0, "styles": [], "override_settings": {}, "hr_upscaler": "Latent",
                   "denoising_strength": 0.7}),
        )
        .unwrap();
        assert_eq!(p.iterations.len(), 3);
        let seeds: Vec<u64> = p.iterations.iter().map(|j| j.seed).collect();
        assert_eq!(seeds, [5, 7, 9]);
        let r = &p.iterations[1].request;
        assert_eq!((r.out_width, r.out_height, r.batch, r.steps), (96, 64, 2, 3));
        assert_eq!((r.guidance, r.seed), (2.5, 7));
        assert_eq!(r.sampler, Some(SamplerKind::EulerAncestral));
        // `denoising_strength` without `enable_hr` is not used by txt2img.
        assert!(r.upscale.is_none() && r.init_image.is_none());
        assert_eq!(p.sampler_name, "Euler a");
        assert_eq!(p.parameters["seed"], 5);
        // Hires fix: the upscaling fields.
        let p = run(
            Mode::Txt2Img,
            json!({"prompt": "a", "width": 64, "height": 64, "enable_hr": true, "hr_scale": 2,
                   "denoising_strength": 0.4, "hr_second_pass_steps": 5, "steps": 4}),
        )
        .unwrap();
        let u = p.iterations[0].request.upscale.unwrap();
        assert_eq!(
            (u.factor, u.strength, u.steps, u.width, u.height),
            (2.0, 0.4, 5, 128, 128)
        );
        let p = run(
            Mode::Txt2Img,
            json!({"prompt": "a", "width": 64, "height": 64, "enable_hr": true, "hr_resize_x": 192}),
        )
        .unwrap();
        assert_eq!(p.iterations[0].request.upscale.unwrap().width, 192);
        // seed -1: random, below 2^32, consecutive across iterations.
        let p = run(Mode::Txt2Img, json!({"prompt": "a", "seed": -1, "n_iter": 2})).unwrap();
        assert!(p.iterations[0].seed < 1 << 32);
        assert_eq!(p.iterations[1].seed, p.iterations[0].seed + 1);
        // Every sampler name listed parses back.
        for (kind, name, _) in SAMPLERS {
            assert_eq!(parse_sampler(name), Some(kind));
            assert_eq!(parse_sampler(kind.name()), Some(kind));
        }
        assert_eq!(parse_sampler("euler A"), Some(SamplerKind::EulerAncestral));
    }

    #[test]
    fn a1111_errors_name_the_a1111_field() {
        let t = Mode::Txt2Img;
        let cases = [
            (json!({"prompt": "a", "cfg_scale": 99}), 422, "cfg_scale"),
            (json!({"prompt": "a", "cfg_scale": "high"}), 422, "cfg_scale"),
            (json!({"prompt": "a", "batch_size": 9}), 422, "batch_size"),
            (json!({"prompt": "a", "batch_size": 0}), 422, "batch_size"),
            (json!({"prompt": "a", "n_iter": 65}), 422, "n_iter"),
            (json!({"prompt": "a", "steps": 2.5}), 422, "steps"),
            (json!({"prompt": "a", "steps": 0}), 422, "steps"),
            (json!({"prompt": "a", "width": 8}), 422, "width"),
            (json!({"prompt": "a", "height": 9000}), 422, "height"),
            (json!({"prompt": "a", "seed": -5}), 422, "seed"),
            (json!({"prompt": "a", "seed": "x"}), 422, "seed"),
            (json!({"prompt": "a", "sampler_name": "Euler"}), 422, "sampler_name"),
            (json!({"prompt": "a", "sampler_index": "PLMS"}), 422, "sampler_index"),
            (json!({"prompt": "a", "scheduler": "Karras"}), 422, "scheduler"),
            (json!({"prompt": "a", "restore_faces": "yes"}), 422, "restore_faces"),
            (json!({"prompt": "a", "styles": "x"}), 422, "styles"),
            (
                json!({"prompt": "a", "enable_hr": true, "hr_scale": 9}),
                422,
                "hr_scale",
            ),
            (
                json!({"prompt": "a", "enable_hr": true, "denoising_strength": 0}),
                422,
                "denoising_strength",
            ),
            (
                json!({"prompt": "a", "enable_hr": true, "hr_second_pass_steps": 999}),
                422,
                "hr_second_pass_steps",
            ),
            (
                json!({"prompt": "a", "override_settings": {"sd_model_checkpoint": "sdxl"}}),
                422,
                "override_settings.sd_model_checkpoint",
            ),
            (
                json!({"prompt": "a", "override_settings": {"samples_format": "gif"}}),
                422,
                "override_settings.samples_format",
            ),
            (json!({"prompt": "a", "init_images": []}), 400, "init_images"),
            (json!({"prompt": "a", "colour": 1}), 400, "colour"),
            (json!([1]), 400, "body"),
        ];
        for (body, status, name) in cases {
            assert_eq!(field(t, body.clone()), (status, name.to_string()), "{body}");
        }
        let e = run(t, json!({"prompt": "a", "cfg_scale": 99})).unwrap_err();
        assert_eq!(e.message, "`cfg_scale` must be between 0 and 50, got 99");
        let i = Mode::Img2Img;
        assert_eq!(field(i, json!({"prompt": "a"})), (422, "init_images".into()));
        assert_eq!(
            field(i, json!({"prompt": "a", "init_images": ["!!"]})),
            (422, "init_images".into())
        );
        assert_eq!(
            field(i, json!({"prompt": "a", "init_images": [1]})),
            (422, "init_images".into())
        );
        assert_eq!(
            field(i, json!({"prompt": "a", "enable_hr": true})),
            (400, "enable_hr".into())
        );
    }

    #[test]
    fn options_are_checked_before_they_are_set() {
        let a = A1111::new("builtin");
        let names = ["builtin".to_string(), "pipeline".to_string()];
        assert!(a
            .set_options(&json!({"sd_model_checkpoint": "builtin [abc]"}), &names)
            .is_ok());
        assert!(a
            .set_options(&json!({"sd_model_checkpoint": "Pipeline"}), &names)
            .is_ok());
        let e = a
            .set_options(
                &json!({"samples_format": "jpg", "sd_model_checkpoint": "other"}),
                &names,
            )
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("sd_model_checkpoint"));
        assert!(
            e.message.contains("this server runs builtin, pipeline"),
            "{}",
            e.message
        );
        // Nothing of a refused body was set.
        assert_eq!(a.options()["samples_format"], "png");
        a.set_options(&json!({"samples_format": "jpg", "some_ui_option": 3}), &names)
            .unwrap();
        assert_eq!(a.options()["samples_format"], "jpg");
        assert_eq!(a.options()["some_ui_option"], 3);
    }

    #[test]
    fn timestamps_are_utc_calendar_times() {
        assert_eq!(timestamp(0), "19700101000000");
        assert_eq!(timestamp(1_700_000_000), "20231114221320");
        assert_eq!(timestamp(951_782_400), "20000229000000");
    }
}
