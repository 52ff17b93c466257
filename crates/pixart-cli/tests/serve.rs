//! `pixart serve` end to end: a real server process on the tiny golden pipeline
//! (fixtures/golden/pipeline), driven over HTTP on 127.0.0.1.
mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{client, pipeline, slow_job, Server, TIMEOUT};
use serde_json::{json, Value};

struct Png {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    parameters: String,
}

fn decode_png(bytes: &[u8]) -> Png {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let info = reader.info();
    let parameters = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .unwrap_or_default();
    let (width, height) = (info.width, info.height);
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    pixels.truncate(frame.buffer_size());
    Png {
        width,
        height,
        pixels,
        parameters,
    }
}

fn b64(s: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.as_str().unwrap())
        .unwrap()
}

/// The first image of a `POST /v1/images/generations` that must succeed.
fn generations_png(s: &Server, body: &Value) -> Png {
    let r = s.post("/v1/images/generations", body);
    assert_eq!(r.status, 200, "{}", r.text());
    decode_png(&b64(&r.json()["data"][0]["b64_json"]))
}

/// The error object of a JSON error response, after checking that it names no file.
fn error_of(r: &client::Response) -> Value {
    let text = r.text();
    let root = pipeline();
    assert!(!text.contains(root.to_str().unwrap()), "path leaked: {text}");
    assert!(
        !text.contains("fixtures") && !text.contains("/work") && !text.contains("/tmp"),
        "path leaked: {text}"
    );
    assert_eq!(r.header("content-type"), Some("application/json"), "{text}");
    let e = r.json()["error"].clone();
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{text}");
    e
}

#[test]
fn openai_route_matches_pixart_generate() {
    let s = Server::start(&[]);
    let r = s.post(
        "/v1/images/generations",
        &json!({"prompt": "a red fox", "n": 2, "size": "320x192", "steps": 3, "seed": 11,
                "guidance_scale": 4.5, "negative_prompt": "blurry", "response_format": "b64_json", "model": "pixart"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    // The same request through `pixart generate` gives the same pixels.
    let dir = std::env::temp_dir().join(format!("pixart-serve-cmp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("fox.png");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pixart"))
        .args(["generate", "--model"])
        .arg(pipeline())
        .args([
            "-p",
            "a red fox",
            "-n",
            "blurry",
            "--width",
            "320",
            "--height",
            "192",
            "--steps",
            "3",
        ])
        .args(["--seed", "11", "--guidance", "4.5", "--batch", "2", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (k, item) in data.iter().enumerate() {
        assert_eq!(item["seed"], 11 + k as u64);
        let got = decode_png(&b64(&item["b64_json"]));
        assert_eq!((got.width, got.height), (320, 192));
        let want = decode_png(
            &std::fs::read(if k == 0 {
                out.clone()
            } else {
                dir.join(format!("fox-{k}.png"))
            })
            .unwrap(),
        );
        assert_eq!(got.pixels, want.pixels, "image {k} differs from pixart generate");
        assert!(
            got.parameters
                .starts_with("a red fox\nNegative prompt: blurry\nSteps: 3, Sampler: dpm++"),
            "{}",
            got.parameters
        );
        assert!(
            got.parameters.contains(&format!("Seed: {}", 11 + k)),
            "{}",
            got.parameters
        );
        // The model is named, never by its path.
        assert!(got.parameters.contains("Model: pipeline,"), "{}", got.parameters);
        assert!(!got.parameters.contains('/'), "{}", got.parameters);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `pixart generate` on the fixture pipeline with the request the image-input tests send (`a
/// boat`, 128x96, 4 steps, seed 1, `--image IMAGE`) and `extra`, into `out`.
fn generate_boat(image: &std::path::Path, extra: &[&str], out: &std::path::Path) -> Png {
    let model = pipeline();
    let args = [
        "--model",
        model.to_str().unwrap(),
        "-p",
        "a boat",
        "--width",
        "128",
        "--height",
        "96",
        "--steps",
        "4",
        "--seed",
        "1",
        "--image",
        image.to_str().unwrap(),
    ];
    let os: Vec<&std::ffi::OsStr> = args.iter().chain(extra).map(std::ffi::OsStr::new).collect();
    generate_png(&os, out)
}

/// `pixart generate` ARGS into `out`; its PNG.
fn generate_png(args: &[&std::ffi::OsStr], out: &std::path::Path) -> Png {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pixart"))
        .arg("generate")
        .args(args)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    decode_png(&std::fs::read(out).unwrap())
}

#[test]
fn model_flags_are_those_of_pixart_generate() {
    // A transformer folder with --base, a LoRA and KV compression: served as generate makes it.
    let dir = std::env::temp_dir().join(format!("pixart-serve-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lora = dir.join("lora.safetensors");
    let (dev, f32) = (candle_core::Device::Cpu, candle_core::DType::F32);
    let ramp = |n: usize, scale: f64| {
        candle_core::Tensor::arange(0u32, n as u32, &dev)
            .unwrap()
            .to_dtype(f32)
            .unwrap()
            .sin()
            .unwrap()
            .affine(scale, 0.0)
            .unwrap()
    };
    // The tiny pipeline's width is 24: to_q's LoRA of rank 4.
    let map = std::collections::HashMap::from([
        (
            "transformer_blocks.0.attn1.to_q.lora_A.weight".to_string(),
            ramp(4 * 24, 0.3).reshape((4, 24)).unwrap(),
        ),
        (
            "transformer_blocks.0.attn1.to_q.lora_B.weight".to_string(),
            ramp(24 * 4, 0.3).reshape((24, 4)).unwrap(),
        ),
    ]);
    candle_core::safetensors::save(&map, &lora).unwrap();
    let root = pipeline();
    let transformer = root.join("transformer");
    let lora_flag = format!("{}:0.8", lora.display());
    let flags = [
        "--base",
        root.to_str().unwrap(),
        "--lora",
        &lora_flag,
        "--kv-compress",
        "uniform:2:1",
    ];
    let s = Server::start_with_model(&transformer, &flags);
    let got = generations_png(
        &s,
        &json!({"prompt": "a red fox", "size": "256x256", "steps": 2, "seed": 5, "response_format": "b64_json"}),
    );
    let request = [
        "-p",
        "a red fox",
        "--width",
        "256",
        "--height",
        "256",
        "--steps",
        "2",
        "--seed",
        "5",
    ];
    let mut args: Vec<&std::ffi::OsStr> = vec!["--model".as_ref(), transformer.as_os_str()];
    args.extend(flags.iter().chain(&request).map(|a| std::ffi::OsStr::new(*a)));
    let want = generate_png(&args, &dir.join("flags.png"));
    assert_eq!(got.pixels, want.pixels, "the server and pixart generate differ");
    assert!(got.parameters.contains("Model: transformer,"), "{}", got.parameters);
    // The flags change the picture: the whole pipeline without them gives other pixels.
    let mut plain: Vec<&std::ffi::OsStr> = vec!["--model".as_ref(), root.as_os_str()];
    plain.extend(request.iter().map(|a| std::ffi::OsStr::new(*a)));
    let without = generate_png(&plain, &dir.join("plain.png"));
    assert_ne!(got.pixels, without.pixels, "the LoRA and KV compression had no effect");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `image` + `strength` (image to image): the same pixels as `pixart generate --image`, the
/// strength in the parameters and the job; a data URL works as well as bare base64; a strength
/// that leaves no step, or an image body over the text limit, are refused.
#[test]
fn image_to_image_matches_pixart_generate() {
    let s = Server::start(&[]);
    let init = pipeline().join("img2img_init.png");
    let file = std::fs::read(&init).unwrap();
    let b64_file = base64::engine::general_purpose::STANDARD.encode(&file);
    let body = |image: String, strength: f64| json!({"prompt": "a boat", "size": "128x96", "steps": 4, "seed": 1, "image": image, "strength": strength});
    let got = generations_png(&s, &body(b64_file.clone(), 0.5));
    assert_eq!((got.width, got.height), (128, 96));
    assert!(got.parameters.contains("Denoising strength: 0.5"), "{}", got.parameters);
    let dir = std::env::temp_dir().join(format!("pixart-serve-i2i-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cli = |extra: &[&str], name: &str| generate_boat(&init, extra, &dir.join(name));
    let want = cli(&["--strength", "0.5"], "boat.png");
    assert_eq!(got.pixels, want.pixels, "differs from pixart generate --image");
    // As a data URL, through the job API.
    let r = s.post("/v1/jobs", &body(format!("data:image/png;base64,{b64_file}"), 0.5));
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    s.wait_until(60, "the job to finish", || {
        s.get(&format!("/v1/jobs/{id}")).json()["status"] == "succeeded"
    });
    let job = s.get(&format!("/v1/jobs/{id}")).json();
    assert_eq!(
        (job["strength"].as_f64(), job["total_steps"].as_u64()),
        (Some(0.5), Some(2))
    );
    assert_eq!(
        decode_png(&s.get(&format!("/v1/jobs/{id}/images/0")).body).pixels,
        got.pixels
    );
    // Inpainting: with the mask of the fixtures, as `pixart generate --mask`.
    let mask = pipeline().join("img2img_mask.png");
    let mut inpaint = body(b64_file.clone(), 0.75);
    inpaint["mask"] = json!(base64::engine::general_purpose::STANDARD.encode(std::fs::read(&mask).unwrap()));
    let got_inpaint = generations_png(&s, &inpaint);
    let want = cli(&["--strength", "0.75", "--mask", mask.to_str().unwrap()], "inpaint.png");
    assert_eq!(got_inpaint.pixels, want.pixels);
    assert_ne!(got_inpaint.pixels, got.pixels);
    // A mask of another size.
    let small = pixart_pipeline::RgbImage::filled(8, 8, [255; 3]).to_png(None).unwrap();
    inpaint["mask"] = json!(base64::engine::general_purpose::STANDARD.encode(small));
    let r = s.post("/v1/images/generations", &inpaint);
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(error_of(&r)["param"], "mask");
    // No step left: 4 x 0.1 < 1.
    let r = s.post("/v1/images/generations", &body(b64_file.clone(), 0.1));
    assert_eq!(r.status, 422, "{}", r.text());
    let e = error_of(&r);
    assert_eq!(e["param"], "strength");
    assert!(e["message"].as_str().unwrap().contains("`strength` 0.1"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn jpeg_output_format() {
    let s = Server::start(&[]);
    let body =
        |format: &str| json!({"prompt": "a boat", "size": "256x256", "steps": 2, "seed": 9, "output_format": format});
    let image = |format: &str| {
        let r = s.post("/v1/images/generations", &body(format));
        assert_eq!(r.status, 200, "{}", r.text());
        b64(&r.json()["data"][0]["b64_json"])
    };
    let (jpeg, png) = (image("jpeg"), image("png"));
    let (dims, diff, text) = common::jpeg_against_png(&jpeg, &png);
    assert_eq!(dims, (256, 256));
    assert!(diff < 8.0, "mean |JPEG - PNG| = {diff}");
    assert!(text.starts_with("a boat\n"), "{text}");
    // The job API serves it as image/jpeg.
    let r = s.post("/v1/jobs", &body("jpeg"));
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    s.wait_until(60, "the job to finish", || {
        s.get(&format!("/v1/jobs/{id}")).json()["status"] == "succeeded"
    });
    let img = s.get(&format!("/v1/jobs/{id}/images/0"));
    assert_eq!((img.status, img.header("content-type")), (200, Some("image/jpeg")));
    assert_eq!(img.body, jpeg);
    // WebP is lossless: the PNG's pixels.
    let webp = image("webp");
    assert_eq!(&webp[8..12], b"WEBP");
    let decode = |b: &[u8]| pixart_pipeline::RgbImage::decode(b, "image").unwrap();
    assert_eq!(decode(&webp), decode(&png));
    // `output_compression` is the JPEG quality.
    let mut low = body("jpeg");
    low["output_compression"] = json!(20);
    let r = s.post("/v1/images/generations", &low);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(b64(&r.json()["data"][0]["b64_json"]).len() < jpeg.len());
    low["output_compression"] = json!(101);
    let r = s.post("/v1/images/generations", &low);
    assert_eq!(
        (r.status, error_of(&r)["param"].as_str()),
        (422, Some("output_compression"))
    );
}

#[test]
fn job_api_progress_events_result_and_delete() {
    let s = Server::start(&[]);
    let r = s.post(
        "/v1/jobs",
        &json!({"prompt": "a boat", "steps": 5, "seed": 3, "scheduler": "ddim"}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let job = r.json();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(r.header("location"), Some(format!("/v1/jobs/{id}").as_str()));
    assert!(
        ["queued", "running"].contains(&job["status"].as_str().unwrap()),
        "{job}"
    );
    assert_eq!(
        (job["total_steps"].as_u64(), job["size"].as_str()),
        (Some(5), Some("256x256"))
    );

    let mut events = s.events(&id);
    assert_eq!(events.status, 200);
    let mut steps = Vec::new();
    let done = loop {
        let ev = events.next_event().unwrap().expect("stream ended before `done`");
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        match ev.event.as_str() {
            "progress" => steps.push(v["step"].as_u64().unwrap()),
            "done" => break v,
            other => panic!("unexpected event {other}"),
        }
    };
    assert!(events.next_event().unwrap().is_none(), "the stream ends after `done`");
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        (done["step"].as_u64(), done["total_steps"].as_u64()),
        (Some(5), Some(5))
    );
    let url = done["result"]["images"][0]["url"].as_str().unwrap().to_string();
    assert!(done["result"]["images"][0].get("b64_json").is_none());

    // Poll: the same job, with the image inline; the PNG route serves the same bytes.
    let got = s.get(&format!("/v1/jobs/{id}")).json();
    assert_eq!(got["status"], "succeeded");
    let inline = b64(&got["result"]["images"][0]["b64_json"]);
    let png = s.get(&url);
    assert_eq!((png.status, png.header("content-type")), (200, Some("image/png")));
    assert_eq!(png.body, inline);
    assert!(decode_png(&png.body).parameters.contains("Sampler: ddim"));
    assert_eq!(
        error_of(&s.get(&format!("/v1/jobs/{id}/images/1")))
            .get("code")
            .unwrap(),
        "not_found"
    );
    // The list holds it; a finished job is forgotten by DELETE.
    let list = s.get("/v1/jobs").json();
    assert!(list["data"].as_array().unwrap().iter().any(|j| j["id"] == id.as_str()));
    let del = s.delete(&format!("/v1/jobs/{id}"));
    assert_eq!((del.status, del.json()["deleted"].as_bool()), (200, Some(true)));
    let gone = s.get(&format!("/v1/jobs/{id}"));
    assert_eq!(gone.status, 404);
    error_of(&gone);
    // An event stream of a finished job (or of an unknown one) does not hang.
    assert_eq!(s.get("/v1/jobs/job-0000000000000000/events").status, 404);
}

#[test]
fn cancel_stops_a_running_job_between_steps() {
    let s = Server::start(&["--max-steps", "1000"]);
    let job = s.post("/v1/jobs", &slow_job()).json();
    let id = job["id"].as_str().unwrap().to_string();
    let mut events = s.events(&id);
    s.wait_running(&id);
    let t = Instant::now();
    let r = s.delete(&format!("/v1/jobs/{id}"));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["cancel_requested"], true);
    let done = loop {
        let ev = events.next_event().unwrap().expect("stream ended before `done`");
        if ev.event == "done" {
            break serde_json::from_str::<Value>(&ev.data).unwrap();
        }
    };
    assert!(t.elapsed() < Duration::from_secs(5), "cancel took {:?}", t.elapsed());
    assert_eq!(done["status"], "cancelled", "{done}");
    let step = done["step"].as_u64().unwrap();
    assert!((1..1000).contains(&step), "{done}");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains(&format!("after {step} of 1000 steps")),
        "{done}"
    );
    assert_eq!(s.metric("pixart_jobs_total{status=\"cancelled\"}"), 1.0);
    assert_eq!(s.metric("pixart_jobs_running"), 0.0);
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let s = Server::start(&["--max-queue", "2", "--max-steps", "1000"]);
    let running = s.post("/v1/jobs", &slow_job()).json();
    let rid = running["id"].as_str().unwrap().to_string();
    s.wait_running(&rid);
    let mut queued = Vec::new();
    for _ in 0..2 {
        let r = s.post("/v1/jobs", &slow_job());
        assert_eq!(r.status, 202, "{}", r.text());
        let j = r.json();
        assert_eq!(j["status"], "queued");
        queued.push(j["id"].as_str().unwrap().to_string());
    }
    assert_eq!(s.get(&format!("/v1/jobs/{}", queued[1])).json()["queue_position"], 1);
    // Many more, at once: every one is refused; nothing crashes, the queue does not grow.
    let addr = s.addr;
    let handles: Vec<_> = (0..16)
        .map(|k| {
            std::thread::spawn(move || {
                let path = if k % 2 == 0 {
                    "/v1/jobs"
                } else {
                    "/v1/images/generations"
                };
                client::request(addr, "POST", path, Some(slow_job().to_string().as_bytes()), TIMEOUT).unwrap()
            })
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap();
        assert_eq!(r.status, 429, "{}", r.text());
        let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!(retry >= 1);
        let e = error_of(&r);
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("rate_limit_error"), Some("queue_full"))
        );
    }
    assert_eq!(s.metric("pixart_queue_length"), 2.0);
    assert_eq!(s.metric("pixart_jobs_rejected_total{reason=\"queue_full\"}"), 16.0);
    let health = s.get("/health").json();
    assert_eq!(
        (health["status"].as_str(), health["queue_length"].as_u64()),
        (Some("ok"), Some(2))
    );
    // A queued job is cancelled at once; then there is room again.
    let r = s.delete(&format!("/v1/jobs/{}", queued[0]));
    assert_eq!((r.status, r.json()["status"].as_str()), (202, Some("cancelled")));
    assert_eq!(s.post("/v1/jobs", &slow_job()).status, 202);
    for id in s.get("/v1/jobs").json()["data"].as_array().unwrap() {
        s.delete(&format!("/v1/jobs/{}", id["id"].as_str().unwrap()));
    }
    s.wait_until(10, "the queue to drain", || {
        s.metric("pixart_queue_length") == 0.0 && s.metric("pixart_jobs_running") == 0.0
    });
}

#[test]
fn bad_requests_get_json_errors_naming_the_field() {
    let s = Server::start(&[]);
    let cases: &[(&[u8], u16, &str)] = &[
        (br#"{"prompt": "a cat", "steps": }"#, 400, "body"),
        (br#"["a cat"]"#, 400, "body"),
        (br#"{"prompt": "a cat", "strength": 0.5}"#, 422, "strength"),
        (br#"{"prompt": "a cat", "image": "%%%"}"#, 422, "image"),
        (br#"{"prompt": "a cat", "image": "aGVsbG8="}"#, 422, "image"),
        (br#"{"prompt": "a cat", "image": "data:image/png,abc"}"#, 422, "image"),
        (br#"{"prompt": "a cat", "image": 7}"#, 422, "image"),
        (br#"{"prompt": "a cat", "mask": "aGVsbG8="}"#, 422, "mask"),
        (
            br#"{"prompt": "a cat", "image": "aGVsbG8=", "strength": "high"}"#,
            422,
            "strength",
        ),
        (br#"{"prompt": "a cat", "size": "100000x64"}"#, 422, "size"),
        (br#"{"prompt": "a cat", "size": "32x32"}"#, 422, "size"),
        (br#"{"prompt": "a cat", "size": "square"}"#, 422, "size"),
        (br#"{"prompt": "a cat", "n": 50}"#, 422, "n"),
        (br#"{"prompt": "a cat", "steps": 0}"#, 422, "steps"),
        (br#"{"prompt": "a cat", "steps": "ten"}"#, 422, "steps"),
        (br#"{"prompt": "a cat", "guidance_scale": 1e400}"#, 400, "body"),
        (br#"{"prompt": "a cat", "scheduler": "lms"}"#, 422, "scheduler"),
        (
            br#"{"prompt": "a cat", "response_format": "base64"}"#,
            422,
            "response_format",
        ),
        (br#"{"steps": 4}"#, 422, "prompt"),
    ];
    for path in ["/v1/images/generations", "/v1/jobs"] {
        for (body, status, field) in cases {
            let r = s.post_raw(path, body);
            let what = String::from_utf8_lossy(body);
            assert_eq!(r.status, *status, "{path} {what}: {}", r.text());
            let e = error_of(&r);
            assert_eq!(e["param"], *field, "{path} {what}: {}", r.text());
            assert_eq!(e["type"], "invalid_request_error");
        }
        // Over the body limit (64 KiB by default).
        let big = json!({"prompt": "a".repeat(100_000)}).to_string();
        let r = s.post_raw(path, big.as_bytes());
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(error_of(&r)["param"], "body");
        // Not JSON.
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
        );
        let r = client::send_raw(s.addr, raw.as_bytes(), TIMEOUT).unwrap();
        assert_eq!(r.status, 415, "{}", r.text());
        assert_eq!(error_of(&r)["param"], "content-type");
    }
    let r = s.get("/v1/nothing");
    assert_eq!(r.status, 404);
    assert_eq!(error_of(&r)["message"], "no such route (see /openapi.json)");
    let r = s.delete("/v1/images/generations");
    assert_eq!(r.status, 405);
    assert_eq!(
        error_of(&r)["message"],
        "method not allowed on this route (see /openapi.json)"
    );
    let r = s.post_raw(
        "/v1/images/generations",
        br#"{"prompt": "a cat", "response_format": "base64"}"#,
    );
    let m = error_of(&r)["message"].as_str().unwrap().to_string();
    assert_eq!(m, "`response_format` must be \"b64_json\" or \"url\", got \"base64\"");
    let r = s.post_raw("/v1/jobs", br#"{"prompt": "a cat", "n": -1}"#);
    assert_eq!(error_of(&r)["message"], "`n` must be a positive integer, got -1");
    let r = s.get("/v1/jobs/job-does-not-exist");
    assert_eq!(r.status, 404);
    error_of(&r);
    // Nothing was queued by any of it.
    assert_eq!(s.metric("pixart_jobs_kept"), 0.0);
    assert_eq!(s.get("/health").status, 200);
}

#[test]
fn a_failing_generation_reports_no_paths() {
    // A copy of the pipeline whose T5 weights vanish after start-up (with
    // --offload-text-encoder the encoder is read for each job): the failure is logged with
    // its path, the client sees a generic 500.
    let dir = std::env::temp_dir().join(format!("pixart-serve-broken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&pipeline(), &dir);
    let s = Server::start_with_model(&dir, &["--offload-text-encoder"]);
    std::fs::remove_file(dir.join("text_encoder/model.safetensors")).unwrap();
    let r = s.post("/v1/images/generations", &json!({"prompt": "a cat", "steps": 2}));
    assert_eq!(r.status, 500, "{}", r.text());
    let e = error_of(&r);
    assert_eq!(e["code"], "generation_failed");
    assert!(!r.text().contains(dir.to_str().unwrap()));
    let job = s.post("/v1/jobs", &json!({"prompt": "a cat", "steps": 2})).json();
    let id = job["id"].as_str().unwrap();
    s.wait_until(20, "the job to fail", || {
        s.get(&format!("/v1/jobs/{id}")).json()["status"] == "failed"
    });
    let text = s.get(&format!("/v1/jobs/{id}")).text();
    assert!(
        !text.contains(dir.to_str().unwrap()) && !text.contains("safetensors"),
        "{text}"
    );
    assert!(s.log().contains("generation failed"), "{}", s.log());
    assert_eq!(s.metric("pixart_jobs_total{status=\"failed\"}"), 2.0);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// Sends a slow OpenAI request and returns its connection, unread.
fn send_without_reading(s: &Server) -> std::net::TcpStream {
    let mut conn = client::connect(s.addr, TIMEOUT).unwrap();
    let body = slow_job().to_string();
    let bytes = client::request_bytes(s.addr, "POST", "/v1/images/generations", Some(body.as_bytes()));
    conn.write_all(&bytes).unwrap();
    conn
}

#[test]
fn a_disconnecting_client_does_not_leak_its_job() {
    let s = Server::start(&["--max-steps", "1000", "--max-queue", "1"]);
    // 1. A waiting OpenAI request whose client goes away while its job runs.
    let conn = send_without_reading(&s);
    s.wait_until(30, "the job to run", || s.metric("pixart_jobs_running") == 1.0);
    drop(conn);
    s.wait_until(10, "the job to be dropped", || {
        s.metric("pixart_jobs_running") == 0.0 && s.metric("pixart_jobs_kept") == 0.0
    });
    assert_eq!(s.metric("pixart_jobs_total{status=\"cancelled\"}"), 1.0);
    // 2. One whose client goes away while its job is queued behind another.
    let first = s.post("/v1/jobs", &slow_job()).json();
    let first = first["id"].as_str().unwrap().to_string();
    s.wait_running(&first);
    let conn = send_without_reading(&s);
    s.wait_until(10, "the request to queue", || s.metric("pixart_queue_length") == 1.0);
    drop(conn);
    s.wait_until(10, "the queued job to go", || {
        s.metric("pixart_queue_length") == 0.0 && s.metric("pixart_jobs_kept") == 1.0
    });
    // The queue has room again, and the first job is untouched.
    assert_eq!(s.get(&format!("/v1/jobs/{first}")).json()["status"], "running");
    // 3. An event-stream client that goes away leaves the job running.
    drop(s.events(&first));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.get(&format!("/v1/jobs/{first}")).json()["status"], "running");
    s.delete(&format!("/v1/jobs/{first}"));
    s.wait_until(10, "the job to stop", || s.metric("pixart_jobs_running") == 0.0);
}

#[test]
fn sigterm_finishes_the_running_job_cancels_the_queue_and_exits_0() {
    let mut s = Server::start(&["--shutdown-grace", "60"]);
    let a = s
        .post("/v1/jobs", &json!({"prompt": "a", "steps": 150, "seed": 1}))
        .json();
    let a = a["id"].as_str().unwrap().to_string();
    let b = s
        .post("/v1/jobs", &json!({"prompt": "b", "steps": 150, "seed": 2}))
        .json();
    let b = b["id"].as_str().unwrap().to_string();
    let mut ev_a = s.events(&a);
    let mut ev_b = s.events(&b);
    s.wait_running(&a);
    s.sigterm();
    let last = |ev: &mut client::Events| loop {
        let e = ev.next_event().unwrap().expect("stream ended before `done`");
        if e.event == "done" {
            break serde_json::from_str::<Value>(&e.data).unwrap();
        }
    };
    let done_b = last(&mut ev_b);
    assert_eq!(done_b["status"], "cancelled", "{done_b}");
    let done_a = last(&mut ev_a);
    assert_eq!(done_a["status"], "succeeded", "{done_a}");
    assert_eq!(done_a["step"], 150);
    let st = s.wait_exit(30);
    assert!(st.success(), "{st:?}\n{}", s.log());
    let log = s.log();
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    assert!(
        log.contains("stopped: 1 job(s) succeeded, 0 failed, 1 cancelled"),
        "{log}"
    );
}

#[test]
fn sigterm_with_no_grace_cancels_the_running_job() {
    let mut s = Server::start(&["--shutdown-grace", "0", "--max-steps", "1000"]);
    let addr = s.addr;
    // A client waiting on the OpenAI route gets 503 when its job is cancelled by the shutdown.
    let waiting = std::thread::spawn(move || {
        client::request(
            addr,
            "POST",
            "/v1/images/generations",
            Some(slow_job().to_string().as_bytes()),
            TIMEOUT,
        )
        .unwrap()
    });
    s.wait_until(30, "the job to run", || s.metric("pixart_jobs_running") == 1.0);
    let t = Instant::now();
    s.sigterm();
    let r = waiting.join().unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(error_of(&r)["code"], "shutting_down");
    let st = s.wait_exit(20);
    assert!(st.success(), "{st:?}\n{}", s.log());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(s.log().contains("cancelled after"), "{}", s.log());
}

#[test]
fn health_metrics_openapi_and_page() {
    let s = Server::start(&["--max-queue", "3"]);
    let h = s.get("/health");
    assert_eq!(h.status, 200);
    let h = h.json();
    assert_eq!(
        (
            h["status"].as_str(),
            h["model"].as_str(),
            h["default_size"].as_str(),
            h["max_queue"].as_u64()
        ),
        (Some("ok"), Some("pipeline"), Some("256x256"), Some(3))
    );
    assert_eq!(h["defaults"]["scheduler"], "dpm++");
    assert_eq!(
        (h["auth"].as_str(), h["text_encoder"].as_str()),
        (Some("none"), Some("kept"))
    );
    // OpenAI's model list: the one model, by its folder name.
    let m = s.get("/v1/models").json();
    assert_eq!(
        (m["object"].as_str(), m["data"].as_array().map(Vec::len)),
        (Some("list"), Some(1))
    );
    assert_eq!(
        (m["data"][0]["id"].as_str(), m["data"][0]["object"].as_str()),
        (Some("pipeline"), Some("model"))
    );
    assert_eq!(s.get("/v1/models/pipeline").json()["id"], "pipeline");
    let other = s.get("/v1/models/dall-e-3");
    assert_eq!(other.status, 404);
    assert!(error_of(&other)["message"]
        .as_str()
        .unwrap()
        .contains("this server runs \"pipeline\""));
    let r = s.post(
        "/v1/images/generations",
        &json!({"prompt": "a cat", "steps": 4, "seed": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let m = s.get("/metrics");
    assert_eq!(
        m.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = m.text();
    for name in [
        "pixart_queue_length",
        "pixart_jobs_running",
        "pixart_jobs_total",
        "pixart_step_seconds_mean",
        "pixart_steps_total",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing:\n{text}");
    }
    assert_eq!(s.metric("pixart_jobs_total{status=\"succeeded\"}"), 1.0);
    assert_eq!(s.metric("pixart_steps_total"), 4.0);
    assert_eq!(s.metric("pixart_images_total"), 1.0);
    let mean = s.metric("pixart_step_seconds_mean");
    assert!(mean > 0.0 && mean < 10.0, "{mean}");
    // The OpenAI job was not kept.
    assert_eq!(s.metric("pixart_jobs_kept"), 0.0);

    let doc = s.get("/openapi.json").json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/images/generations"]["post"].is_object());

    let page = s.get("/");
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/style.css", "text/css"),
    ] {
        let r = s.get(path);
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with(kind));
        // Everything is served from the binary: no external scripts, styles or fonts.
        let t = r.text();
        assert!(
            !t.contains("http://") && !t.contains("https://"),
            "{path} refers outside"
        );
    }
    assert!(page.text().contains(r#"<script src="/app.js""#));
}

#[test]
fn usage_errors_exit_2_before_serving() {
    let run = |args: &[&str], builtin: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pixart"));
        c.arg("serve").args(args);
        if let Some(b) = builtin {
            c.env("PIXART_BUILTIN", b);
        }
        c.output().unwrap()
    };
    let model = pipeline();
    let m = model.to_str().unwrap();
    for (args, builtin, needle) in [
        (
            vec!["--model", m, "--max-queue", "0"],
            None,
            "--max-queue must be at least 1",
        ),
        (vec!["--model", m, "--shutdown-grace", "-1"], None, "--shutdown-grace"),
        (
            vec!["--model", m, "--max-side", "100000"],
            None,
            "--max-side 100000 must be between 64 and 8192",
        ),
        (
            vec!["--model", m, "--max-steps", "1001"],
            None,
            "--max-steps 1001 is more than 1000",
        ),
        (
            vec!["--model", "/nonexistent/pixart-model"],
            None,
            "/nonexistent/pixart-model",
        ),
        (vec!["--model", m, "--kv-compress", "conv:0"], None, "--kv-compress"),
        (
            vec!["--model", m, "--lora", "/nonexistent/lora.safetensors"],
            None,
            "lora.safetensors",
        ),
        // No --model and no built-in model: the message says what to do.
        (vec![], Some("/nonexistent/builtin"), "pass --model"),
    ] {
        let o = run(&args, builtin);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("listening on"), "{err}");
    }
}

/// A form part: name, file name (empty for a text field), bytes.
type Part<'a> = (&'a str, &'a str, &'a [u8]);

/// A `multipart/form-data` POST of `parts`, with extra headers.
fn post_form(s: &Server, path: &str, parts: &[Part], headers: &str) -> client::Response {
    let boundary = "pixart-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if !file.is_empty() {
            body.extend_from_slice(format!("; filename=\"{file}\"\r\nContent-Type: image/png").as_bytes());
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{headers}Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        s.addr,
        body.len()
    );
    client::send_raw(s.addr, &[head.as_bytes(), &body].concat(), TIMEOUT).unwrap()
}

/// An RGBA PNG.
fn rgba_png(width: u32, height: u32, pixel: impl Fn(u32, u32) -> [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let mut data = Vec::with_capacity((4 * width * height) as usize);
    for y in 0..height {
        for x in 0..width {
            data.extend_from_slice(&pixel(x, y));
        }
    }
    enc.write_header().unwrap().write_image_data(&data).unwrap();
    out
}

/// OpenAI's edits route (multipart): an alpha mask (transparent = repaint) and an image with
/// transparent pixels and no mask both inpaint as `pixart generate --mask` with the black and
/// white mask of the same region; without any mask it is image to image; form errors name the
/// field, a cross-origin page is refused, JSON is 415.
#[test]
fn edits_route_takes_openai_multipart() {
    let s = Server::start(&[]);
    let dir = std::env::temp_dir().join(format!("pixart-serve-edits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inside = |x: u32, y: u32| (16..48).contains(&x) && (8..40).contains(&y);
    let picture = |x: u32, y: u32| [(x * 4) as u8, (y * 5) as u8, 90];
    let image = rgba_png(64, 48, |x, y| {
        let [r, g, b] = picture(x, y);
        [r, g, b, 255]
    });
    let alpha_mask = rgba_png(64, 48, |x, y| [0, 0, 0, if inside(x, y) { 0 } else { 255 }]);
    let holed = rgba_png(64, 48, |x, y| {
        let [r, g, b] = picture(x, y);
        [r, g, b, if inside(x, y) { 0 } else { 255 }]
    });
    let bw = rgba_png(64, 48, |x, y| {
        if inside(x, y) {
            [255, 255, 255, 255]
        } else {
            [0, 0, 0, 255]
        }
    });
    for (name, bytes) in [("image.png", &image), ("holed.png", &holed), ("bw.png", &bw)] {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let text = [
        ("prompt", "", &b"a boat"[..]),
        ("size", "", b"128x96"),
        ("steps", "", b"4"),
        ("seed", "", b"1"),
    ];
    let edit = |files: &[Part]| {
        let parts: Vec<Part> = text.iter().chain(files).copied().collect();
        let r = post_form(&s, "/v1/images/edits", &parts, "");
        assert_eq!(r.status, 200, "{}", r.text());
        decode_png(&b64(&r.json()["data"][0]["b64_json"]))
    };
    let cli = |image: &str, extra: &[&str], name: &str| generate_boat(&dir.join(image), extra, &dir.join(name));
    let mask_path = dir.join("bw.png");
    let mask_flag = ["--mask", mask_path.to_str().unwrap()];
    let masked = edit(&[("image", "image.png", &image), ("mask", "mask.png", &alpha_mask)]);
    assert!(
        masked.parameters.contains("Denoising strength: 1, Inpainting: true"),
        "{}",
        masked.parameters
    );
    assert_eq!(masked.pixels, cli("image.png", &mask_flag, "a.png").pixels);
    let from_alpha = edit(&[("image[]", "holed.png", &holed)]);
    assert_eq!(from_alpha.pixels, cli("holed.png", &mask_flag, "b.png").pixels);
    let plain = edit(&[("image", "image.png", &image)]);
    assert!(plain.parameters.contains("Denoising strength: 0.8") && !plain.parameters.contains("Inpainting"));
    assert_eq!(plain.pixels, cli("image.png", &[], "c.png").pixels);

    // Errors.
    let img = ("image", "image.png", &image[..]);
    let cases: &[(&[Part], u16, &str)] = &[
        (&[("prompt", "", b"a boat")], 422, "image"),
        (&[img], 422, "prompt"),
        (
            &[img, ("prompt", "", b"a boat"), ("style_preset", "", b"x")],
            400,
            "style_preset",
        ),
        // gpt-image's `quality` is accepted (and ignored) when it is one of OpenAI's values.
        (
            &[img, ("prompt", "", b"a boat"), ("quality", "", b"ultra")],
            422,
            "quality",
        ),
        (&[img, ("prompt", "", b"a boat"), ("n", "", b"two")], 422, "n"),
        (
            &[img, ("prompt", "", b"a boat"), ("strength", "", b"1.5")],
            422,
            "strength",
        ),
        (&[img, img, ("prompt", "", b"a boat")], 422, "image"),
        (
            &[("image", "x.png", b"not an image"), ("prompt", "", b"a boat")],
            422,
            "image",
        ),
        (
            &[img, ("prompt", "", b"a boat"), ("mask", "m.png", &bw[..100])],
            422,
            "mask",
        ),
    ];
    for (parts, status, field) in cases {
        let r = post_form(&s, "/v1/images/edits", parts, "");
        assert_eq!(r.status, *status, "{field}: {}", r.text());
        assert_eq!(error_of(&r)["param"], *field, "{}", r.text());
    }
    let r = post_form(
        &s,
        "/v1/images/edits",
        &[img, ("prompt", "", b"a boat")],
        "Origin: http://evil.example\r\n",
    );
    assert_eq!(
        (r.status, error_of(&r)["param"].as_str()),
        (403, Some("origin")),
        "{}",
        r.text()
    );
    let r = s.post("/v1/images/edits", &json!({"prompt": "a boat"}));
    assert_eq!(r.status, 415, "{}", r.text());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `method path` with extra header lines (each ending in CRLF) and an optional JSON body.
fn request_with(s: &Server, method: &str, path: &str, headers: &str, body: Option<&Value>) -> client::Response {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let content = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len())
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{headers}{content}\r\n",
        s.addr
    );
    client::send_raw(s.addr, &[head.as_bytes(), body.as_bytes()].concat(), TIMEOUT).unwrap()
}

#[test]
fn api_key_guards_the_v1_routes() {
    let key = "sk-pixart-test-0123";
    let s = Server::start(&["--api-key", key]);
    let bearer = format!("Authorization: Bearer {key}\r\n");
    let cookie = format!("Cookie: theme=dark; pixart_api_key={key}\r\n");
    let body = json!({"prompt": "a cat", "steps": 2, "seed": 3});

    // The page, /health, /metrics and /openapi.json stay open; /health says a key is needed.
    for path in ["/", "/app.js", "/health", "/metrics", "/openapi.json"] {
        assert_eq!(s.get(path).status, 200, "{path}");
    }
    assert_eq!(s.get("/health").json()["auth"], "api_key");
    // An unknown route is still 404, not 401.
    assert_eq!(s.get("/v1/nothing").status, 404);

    // Without the key, or with another one: 401 in OpenAI's shape, with WWW-Authenticate.
    for headers in [
        String::new(),
        "Authorization: Bearer sk-pixart-test-0124\r\n".to_string(),
        format!("Authorization: Basic {key}\r\n"),
        "Cookie: pixart_api_key=nope\r\n".to_string(),
    ] {
        for (method, path, body) in [
            ("GET", "/v1/jobs", None),
            ("POST", "/v1/jobs", Some(&body)),
            ("POST", "/v1/images/generations", Some(&body)),
            ("GET", "/v1/jobs/job-1/events", None),
        ] {
            let r = request_with(&s, method, path, &headers, body);
            assert_eq!(r.status, 401, "{method} {path} {headers:?}: {}", r.text());
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            let e = error_of(&r);
            assert_eq!(e["code"], "invalid_api_key");
            let wrong = headers.contains("Bearer") || headers.contains("Cookie");
            let want = if wrong { "incorrect API key" } else { "needs an API key" };
            assert!(e["message"].as_str().unwrap().contains(want), "{headers:?}: {e}");
            assert!(!r.text().contains(key));
        }
    }
    assert_eq!(s.metric("pixart_jobs_total{status=\"succeeded\"}"), 0.0);

    // With the key as a bearer token: the OpenAI route and the job API work.
    let r = request_with(&s, "POST", "/v1/images/generations", &bearer, Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request_with(&s, "POST", "/v1/jobs", &bearer, Some(&body));
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    // With the web page's cookie: the job, its image.
    s.wait_until(30, "the job to finish", || {
        request_with(&s, "GET", &format!("/v1/jobs/{id}"), &cookie, None).json()["status"] == "succeeded"
    });
    let img = request_with(&s, "GET", &format!("/v1/jobs/{id}/images/0"), &cookie, None);
    assert_eq!(img.status, 200);
    assert_eq!(img.header("content-type"), Some("image/png"));
    assert_eq!(
        request_with(&s, "GET", &format!("/v1/jobs/{id}/images/0"), "", None).status,
        401
    );
    // The key never reaches the log.
    assert!(!s.log().contains(key), "{}", s.log());
}

#[test]
fn a_bad_api_key_is_a_usage_error() {
    for (key, needle) in [("short", "5 characters"), ("has space in it", "' '")] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_pixart"))
            .args(["serve", "--model"])
            .arg(pipeline())
            .args(["--port", "0"])
            .env("PIXART_API_KEY", key)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("--api-key") && err.contains(needle), "{err}");
        assert!(!err.contains("listening on"), "{err}");
    }
}

#[test]
fn jobs_with_preview_show_the_denoising_as_it_goes() {
    let s = Server::start(&[]);
    let r = s.post(
        "/v1/jobs",
        &json!({"prompt": "a boat", "steps": 6, "seed": 3, "n": 2, "size": "128x96", "preview": true}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    // The events carry the preview's step as it changes.
    let mut events = s.events(&id);
    let mut seen = Vec::new();
    let done = loop {
        let ev = events.next_event().unwrap().expect("stream ended before `done`");
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        if let Some(step) = v["preview"]["step"].as_u64() {
            if seen.last() != Some(&step) {
                seen.push(step);
                assert_eq!(
                    v["preview"]["url"].as_str().unwrap(),
                    format!("/v1/jobs/{id}/preview?step={step}")
                );
            }
        }
        if ev.event == "done" {
            break v;
        }
    };
    assert_eq!(done["status"], "succeeded", "{done}");
    // The first preview comes after step 1; none after the last step.
    assert_eq!(seen.first(), Some(&1), "{seen:?}");
    assert!(seen.iter().all(|&k| k < 6), "{seen:?}");
    let p = s.get(&format!("/v1/jobs/{id}/preview"));
    assert_eq!((p.status, p.header("content-type")), (200, Some("image/png")));
    assert_eq!(
        p.header("x-preview-step"),
        Some(seen.last().unwrap().to_string().as_str())
    );
    // The batch side by side, at the output size.
    let png = decode_png(&p.body);
    assert_eq!((png.width, png.height), (256, 96));
    // (Events may coalesce two previews into one update: at least as many as seen.)
    assert!(s.metric("pixart_previews_total") >= seen.len() as f64);

    // Without "preview": none, and the 404 says why.
    let r = s.post("/v1/jobs", &json!({"prompt": "a boat", "steps": 2, "seed": 3}));
    let id = r.json()["id"].as_str().unwrap().to_string();
    s.wait_until(30, "the job to finish", || {
        s.get(&format!("/v1/jobs/{id}")).json()["status"] == "succeeded"
    });
    assert!(s.get(&format!("/v1/jobs/{id}")).json()["preview"].is_null());
    let e = s.get(&format!("/v1/jobs/{id}/preview"));
    assert_eq!(e.status, 404);
    assert!(error_of(&e)["message"]
        .as_str()
        .unwrap()
        .contains("did not ask for previews"));
    // A preview that is not a boolean.
    let r = s.post("/v1/jobs", &json!({"prompt": "a boat", "preview": "yes"}));
    assert_eq!(r.status, 422);
    let e = error_of(&r);
    assert_eq!(e["param"], "preview");
    assert!(e["message"].as_str().unwrap().contains("true or false"), "{e}");
}

#[test]
fn offloaded_text_encoder_gives_the_same_images() {
    let body = json!({"prompt": "a lighthouse", "steps": 3, "seed": 9, "size": "128x128"});
    let kept = Server::start(&[]);
    let want = generations_png(&kept, &body).pixels;
    let s = Server::start(&["--offload-text-encoder"]);
    assert_eq!(s.get("/health").json()["text_encoder"], "per_job");
    // A new text loads T5 for the job; the same one again comes from the cache: the prompt and
    // the empty negative prompt are encoded once, then found.
    assert_eq!(generations_png(&s, &body).pixels, want);
    assert_eq!(generations_png(&s, &body).pixels, want);
    assert_eq!(s.metric("pixart_text_cache_total{result=\"miss\"}"), 2.0);
    assert_eq!(s.metric("pixart_text_cache_total{result=\"hit\"}"), 2.0);
}

#[test]
fn response_format_url_answers_with_image_urls() {
    let s = Server::start(&[]);
    let body = json!({"prompt": "a boat", "steps": 2, "seed": 8, "n": 2, "size": "128x96", "response_format": "url"});
    let r = s.post("/v1/images/generations", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let data = r.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 2);
    let prefix = format!("http://{}/v1/jobs/", s.addr);
    for (k, item) in data.iter().enumerate() {
        assert!(item.get("b64_json").is_none());
        assert_eq!(item["seed"].as_u64(), Some(8 + k as u64));
        let url = item["url"].as_str().unwrap();
        assert!(
            url.starts_with(&prefix) && url.ends_with(&format!("/images/{k}")),
            "{url}"
        );
        // The URL serves the image: the same PNG a b64_json answer carries.
        let png = s.get(&url[format!("http://{}", s.addr).len()..]);
        assert_eq!((png.status, png.header("content-type")), (200, Some("image/png")));
        let mut b64_body = body.clone();
        b64_body["response_format"] = json!("b64_json");
        if k == 0 {
            let inline = s.post("/v1/images/generations", &b64_body).json();
            assert_eq!(png.body, b64(&inline["data"][0]["b64_json"]));
        }
    }
    // The job is kept for its URLs (the b64_json one is not).
    assert_eq!(s.metric("pixart_jobs_kept"), 1.0);
}

#[test]
fn upscale_through_the_api_matches_pixart_generate() {
    let s = Server::start(&[]);
    let body = json!({"prompt": "a boat", "size": "128x96", "steps": 3, "seed": 2,
                      "upscale": 2, "upscale_strength": 0.5});
    let got = generations_png(&s, &body);
    assert_eq!((got.width, got.height), (256, 192));
    assert!(
        got.parameters.contains("Size: 128x96")
            && got
                .parameters
                .ends_with("Hires upscale: 2, Hires steps: 3, Hires strength: 0.5"),
        "{}",
        got.parameters
    );
    // The same two passes through `pixart generate --upscale`.
    let dir = std::env::temp_dir().join(format!("pixart-serve-upscale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("up.png");
    let model = pipeline();
    let want = generate_png(
        &[
            "--model",
            model.to_str().unwrap(),
            "-p",
            "a boat",
            "--width",
            "128",
            "--height",
            "96",
            "--steps",
            "3",
            "--seed",
            "2",
            "--upscale",
            "2",
            "--upscale-strength",
            "0.5",
        ]
        .map(std::ffi::OsStr::new),
        &out,
    );
    assert!(
        got.pixels == want.pixels,
        "the API's upscaled image differs from pixart generate's"
    );
    // The job API: the job's size is the upscaled one.
    let job = s.post("/v1/jobs", &body);
    assert_eq!(job.status, 202, "{}", job.text());
    assert_eq!(job.json()["size"], "256x192");
    // Bad values are 422s naming the field, before anything is queued.
    for (body, field) in [
        (json!({"prompt": "a", "upscale": 9}), "upscale"),
        (json!({"prompt": "a", "upscale": 1}), "upscale"),
        (
            json!({"prompt": "a", "upscale": 2, "upscale_strength": 2}),
            "upscale_strength",
        ),
        (
            json!({"prompt": "a", "upscale": 2, "upscale_steps": 0}),
            "upscale_steps",
        ),
        (json!({"prompt": "a", "upscale_steps": 3}), "upscale_steps"),
    ] {
        for route in ["/v1/images/generations", "/v1/jobs"] {
            let r = s.post(route, &body);
            assert_eq!(r.status, 422, "{route} {body}: {}", r.text());
            assert_eq!(error_of(&r)["param"], field, "{route} {body}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn request_checks_that_need_the_model_are_422s_not_500s() {
    // KV compression with ratio 16 needs a 16x16 token grid: the model's 256 px has it, the
    // 128x512 bin of a 1024x64 request has 8x32 tokens. This used to fail in the worker (500).
    let s = Server::start(&["--kv-compress", "conv:16"]);
    for route in ["/v1/images/generations", "/v1/jobs"] {
        let r = s.post(route, &json!({"prompt": "a", "size": "1024x64", "steps": 2}));
        assert_eq!(r.status, 422, "{route}: {}", r.text());
        let e = error_of(&r);
        assert_eq!(e["param"], "size", "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("KV compression with ratio 16"),
            "{e}"
        );
    }
    let r = s.post("/v1/images/generations", &json!({"prompt": "a", "steps": 2}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.metric("pixart_jobs_total{status=\"failed\"}"), 0.0);
}

#[test]
fn job_api_jobs_whose_client_is_gone_are_cancelled() {
    let s = Server::start(&["--max-steps", "1000", "--abandon-after", "1"]);
    // Watched: an open event stream keeps the job alive past the limit.
    let watched = s.post("/v1/jobs", &slow_job()).json();
    let wid = watched["id"].as_str().unwrap().to_string();
    let events = s.events(&wid);
    // Nobody asks about this one (queued behind the first): it is cancelled.
    let lost = s.post("/v1/jobs", &slow_job()).json();
    let lid = lost["id"].as_str().unwrap().to_string();
    let t = Instant::now();
    s.wait_until(10, "the abandoned job to be cancelled", || {
        s.metric("pixart_jobs_total{status=\"cancelled\"}") == 1.0
    });
    assert!(t.elapsed() >= Duration::from_millis(900), "{:?}", t.elapsed());
    std::thread::sleep(Duration::from_millis(1500));
    let j = s.get(&format!("/v1/jobs/{wid}")).json();
    assert_eq!(j["status"], "running", "{j}");
    let l = s.get(&format!("/v1/jobs/{lid}")).json();
    assert_eq!(l["status"], "cancelled", "{l}");
    assert!(l["error"].as_str().unwrap().starts_with("abandoned"), "{l}");
    // Polling counts as asking too; closing the stream and going away ends the watched one.
    drop(events);
    s.wait_until(10, "the watched job to be cancelled once left", || {
        s.metric("pixart_jobs_total{status=\"cancelled\"}") == 2.0
    });
    assert!(s.log().contains("no client asked about it for 1 s"));
}

#[test]
fn retry_after_is_the_recent_jobs_mean_and_the_cost_budget_names_the_field() {
    let s = Server::start(&["--max-queue", "1", "--max-steps", "1000", "--max-cost", "2000"]);
    // A 64 px job per step: fast jobs make the moving average small.
    for _ in 0..3 {
        let r = s.post("/v1/images/generations", &json!({"prompt": "a", "steps": 2}));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let running = s.post("/v1/jobs", &slow_job()).json();
    s.wait_running(running["id"].as_str().unwrap());
    let queued = s.post("/v1/jobs", &slow_job());
    assert_eq!(queued.status, 202);
    let r = s.post("/v1/jobs", &slow_job());
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("retry-after"),
        Some("1"),
        "the recent jobs took well under 1 s"
    );
    for id in s.get("/v1/jobs").json()["data"].as_array().unwrap() {
        s.delete(&format!("/v1/jobs/{}", id["id"].as_str().unwrap()));
    }
    // The budget: 4 images of 600 steps at the native 256 px is 2400 > 2000: `n` is at fault.
    let r = s.post("/v1/jobs", &json!({"prompt": "a", "steps": 600, "n": 4}));
    assert_eq!(r.status, 422, "{}", r.text());
    let e = error_of(&r);
    assert_eq!(e["param"], "n", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("more than this server's limit of 2000"),
        "{e}"
    );
    assert_eq!(s.get("/health").json()["limits"]["max_cost"], 2000.0);
    // The default --max-side follows the model: 4 × 256 px.
    assert_eq!(s.get("/health").json()["limits"]["max_side"], 1024);
}
