//! `pixart serve`'s AUTOMATIC1111 API (`/sdapi/v1/…`) end to end, on the tiny golden pipeline,
//! with the JSON the `webuiapi` client sends (tools/clients/check_webuiapi.py drives the same
//! routes with the client itself).
#![recursion_limit = "256"]
mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{client, Server, TIMEOUT};
use serde_json::{json, Value};

fn b64(s: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.as_str().unwrap())
        .unwrap()
}

fn rgb(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes).unwrap().to_rgb8()
}

/// What `webuiapi.WebUIApi.txt2img(...)` 0.9.17 posts with its defaults, over `fields`.
fn webuiapi_txt2img(fields: Value) -> Value {
    let mut body = json!({
        "enable_hr": false, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0,
        "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": null, "hr_sampler_name": null,
        "hr_scheduler": null, "hr_prompt": "", "hr_negative_prompt": "", "denoising_strength": 0.7,
        "firstphase_width": 0, "firstphase_height": 0, "prompt": "", "styles": [], "seed": -1,
        "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
        "batch_size": 1, "n_iter": 1, "steps": 20, "cfg_scale": 7.0, "width": 512, "height": 512,
        "restore_faces": false, "tiling": false, "do_not_save_samples": false,
        "do_not_save_grid": false, "negative_prompt": "", "eta": 1.0, "s_churn": 0, "s_tmax": 0,
        "s_tmin": 0, "s_noise": 1, "override_settings": {},
        "override_settings_restore_afterwards": true, "sampler_name": "Euler a",
        "scheduler": "automatic", "sampler_index": "Euler a", "script_name": null,
        "script_args": [], "send_images": true, "save_images": false, "alwayson_scripts": {},
    });
    for (k, v) in fields.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// What `webuiapi.WebUIApi.img2img(...)` 0.9.17 posts with its defaults, over `fields`.
fn webuiapi_img2img(fields: Value) -> Value {
    let mut body = json!({
        "init_images": [], "resize_mode": 0, "denoising_strength": 0.75, "mask_blur": 4,
        "inpainting_fill": 0, "inpaint_full_res": true, "inpaint_full_res_padding": 0,
        "inpainting_mask_invert": 0, "initial_noise_multiplier": 1, "prompt": "", "styles": [],
        "seed": -1, "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": 0,
        "seed_resize_from_w": 0, "batch_size": 1, "n_iter": 1, "steps": 20, "cfg_scale": 7.0,
        "image_cfg_scale": 1.5, "width": 512, "height": 512, "restore_faces": false,
        "tiling": false, "do_not_save_samples": false, "do_not_save_grid": false,
        "negative_prompt": "", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1,
        "override_settings": {}, "override_settings_restore_afterwards": true,
        "sampler_name": "Euler a", "scheduler": "automatic", "sampler_index": "Euler a",
        "include_init_images": false, "script_name": null, "script_args": [],
        "send_images": true, "save_images": false, "alwayson_scripts": {},
    });
    for (k, v) in fields.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn png_b64(img: &image::RgbImage) -> String {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(out.into_inner())
}

/// The error object, with the field it names.
fn error_param(r: &client::Response) -> (u16, String) {
    let e = r.json()["error"].clone();
    assert!(
        !r.text().contains("/work") && !r.text().contains("fixtures"),
        "{}",
        r.text()
    );
    (r.status, e["param"].as_str().unwrap_or_default().to_string())
}

#[test]
fn a1111_txt2img_matches_the_openai_route_and_answers_as_a1111() {
    let s = Server::start(&[]);
    let r = s.post(
        "/sdapi/v1/txt2img",
        &webuiapi_txt2img(json!({"prompt": "a red fox", "negative_prompt": "blurry", "seed": 11,
            "steps": 3, "cfg_scale": 4.5, "width": 128, "height": 96, "batch_size": 2, "n_iter": 2})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let images = body["images"].as_array().unwrap();
    assert_eq!(images.len(), 4);
    // `info` is a JSON string, as A1111 sends it.
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"], json!([11, 12, 13, 14]));
    assert_eq!((info["seed"].as_u64(), info["width"].as_u64()), (Some(11), Some(128)));
    assert_eq!(info["sampler_name"], "Euler a");
    assert_eq!(info["sd_model_name"], "pipeline");
    assert_eq!(info["infotexts"].as_array().unwrap().len(), 4);
    assert!(
        info["infotexts"][3]
            .as_str()
            .unwrap()
            .starts_with("a red fox\nNegative prompt: blurry\nSteps: 3, Sampler: euler-a"),
        "{info}"
    );
    assert!(info["infotexts"][3].as_str().unwrap().contains("Seed: 14"), "{info}");
    // `parameters`: the request as sent.
    assert_eq!(body["parameters"]["seed"], 11);
    assert_eq!(body["parameters"]["hr_upscaler"], "Latent");
    // Iteration 1 is the OpenAI route's request with seed 13: the same pixels.
    let o = s.post(
        "/v1/images/generations",
        &json!({"prompt": "a red fox", "negative_prompt": "blurry", "seed": 13, "steps": 3,
                "guidance_scale": 4.5, "size": "128x96", "n": 2, "scheduler": "euler-a"}),
    );
    assert_eq!(o.status, 200, "{}", o.text());
    for k in 0..2 {
        let a = rgb(&b64(&images[2 + k]));
        let b = rgb(&b64(&o.json()["data"][k]["b64_json"]));
        assert_eq!(a.dimensions(), (128, 96));
        assert!(a == b, "image {} differs from the OpenAI route's", 2 + k);
    }

    // seed -1: a random seed, told in `info`, below 2^32; `parameters` keeps -1.
    let r = s.post(
        "/sdapi/v1/txt2img",
        &webuiapi_txt2img(json!({"prompt": "a boat", "steps": 2, "width": 64, "height": 64})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let info: Value = serde_json::from_str(r.json()["info"].as_str().unwrap()).unwrap();
    assert!(info["seed"].as_u64().unwrap() < 1 << 32, "{info}");
    assert_eq!(r.json()["parameters"]["seed"], -1);

    // Hires fix: the second pass at hr_scale, denoising_strength and hr_second_pass_steps.
    let r = s.post(
        "/sdapi/v1/txt2img",
        &webuiapi_txt2img(json!({"prompt": "a boat", "seed": 2, "steps": 3, "width": 64,
            "height": 64, "enable_hr": true, "hr_scale": 2, "denoising_strength": 0.5,
            "hr_second_pass_steps": 4, "sampler_name": "DPM++ 2M"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let hires = b64(&r.json()["images"][0]);
    assert_eq!(rgb(&hires).dimensions(), (128, 128));
    let o = s.post(
        "/v1/images/generations",
        &json!({"prompt": "a boat", "seed": 2, "steps": 3, "guidance_scale": 7, "size": "64x64",
                "upscale": 2, "upscale_strength": 0.5, "upscale_steps": 4, "scheduler": "dpm++"}),
    );
    assert!(rgb(&hires) == rgb(&b64(&o.json()["data"][0]["b64_json"])));

    // override_settings: JPEG answers; `send_images: false` none.
    let r = s.post(
        "/sdapi/v1/txt2img",
        &webuiapi_txt2img(json!({"prompt": "a boat", "steps": 2, "width": 64, "height": 64,
            "override_settings": {"samples_format": "jpg", "jpeg_quality": 90, "sd_model_checkpoint": "pipeline"}})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(&b64(&r.json()["images"][0])[..2], &[0xFF, 0xD8]);
    let r = s.post(
        "/sdapi/v1/txt2img",
        &webuiapi_txt2img(json!({"prompt": "a boat", "steps": 2, "width": 64, "height": 64, "send_images": false})),
    );
    assert_eq!(r.json()["images"], json!([]));
}

#[test]
fn a1111_img2img_and_inpainting_match_the_openai_route() {
    let s = Server::start(&[]);
    let start = image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([(x * 2) as u8, (y * 3) as u8, 90]));
    let mask = image::RgbImage::from_fn(96, 64, |x, _| {
        if x < 48 {
            image::Rgb([255, 255, 255])
        } else {
            image::Rgb([0, 0, 0])
        }
    });
    let inverted = image::RgbImage::from_fn(96, 64, |x, y| {
        let p = mask.get_pixel(x, y).0;
        image::Rgb([255 - p[0], 255 - p[1], 255 - p[2]])
    });
    let (img, m, inv) = (png_b64(&start), png_b64(&mask), png_b64(&inverted));
    // webuiapi sends data URLs.
    let r = s.post(
        "/sdapi/v1/img2img",
        &webuiapi_img2img(json!({"init_images": [format!("data:image/png;base64,{img}")],
            "prompt": "a boat", "seed": 1, "steps": 4, "denoising_strength": 0.6, "width": 96, "height": 64})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let o = s.post(
        "/v1/images/generations",
        &json!({"prompt": "a boat", "seed": 1, "steps": 4, "strength": 0.6, "guidance_scale": 7,
                "size": "96x64", "image": img, "scheduler": "euler-a"}),
    );
    assert_eq!(o.status, 200, "{}", o.text());
    assert!(rgb(&b64(&r.json()["images"][0])) == rgb(&b64(&o.json()["data"][0]["b64_json"])));
    let info: Value = serde_json::from_str(r.json()["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["denoising_strength"], 0.6);
    assert!(
        r.json()["parameters"]["init_images"].is_null(),
        "the image is not echoed"
    );

    // Inpainting, and the same with the mask inverted and `inpainting_mask_invert: 1`.
    let o = s.post(
        "/v1/images/generations",
        &json!({"prompt": "a boat", "seed": 1, "steps": 4, "strength": 1.0, "guidance_scale": 7,
                "size": "96x64", "image": img, "mask": m, "scheduler": "euler-a"}),
    );
    let want = rgb(&b64(&o.json()["data"][0]["b64_json"]));
    for (mask, invert) in [(&m, 0), (&inv, 1)] {
        let r = s.post(
            "/sdapi/v1/img2img",
            &webuiapi_img2img(
                json!({"init_images": [img], "mask": mask, "inpainting_mask_invert": invert,
                "prompt": "a boat", "seed": 1, "steps": 4, "denoising_strength": 1.0, "width": 96, "height": 64}),
            ),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            rgb(&b64(&r.json()["images"][0])) == want,
            "inpainting_mask_invert {invert}"
        );
    }
    for (body, status, param) in [
        (json!({"init_images": []}), 422, "init_images"),
        (json!({"init_images": ["not base64!"]}), 422, "init_images"),
        (
            json!({"init_images": [img], "denoising_strength": 1.5}),
            422,
            "denoising_strength",
        ),
        (json!({"init_images": [img], "mask": "x"}), 422, "mask"),
        (
            json!({"init_images": [img], "inpainting_mask_invert": 2}),
            422,
            "inpainting_mask_invert",
        ),
        (json!({"init_images": [img], "enable_hr": true}), 400, "enable_hr"),
    ] {
        let mut b = webuiapi_img2img(body.clone());
        b["prompt"] = json!("a boat");
        let r = s.post("/sdapi/v1/img2img", &b);
        assert_eq!(error_param(&r), (status, param.to_string()), "{body} {}", r.text());
    }
}

#[test]
fn a1111_progress_skip_and_interrupt() {
    let s = Server::start(&["--max-steps", "1000"]);
    // Idle.
    let p = s.get("/sdapi/v1/progress").json();
    assert_eq!(
        (p["progress"].as_f64(), p["state"]["job_count"].as_u64()),
        (Some(0.0), Some(0))
    );
    assert!(p["current_image"].is_null());
    // Three slow iterations, from another thread.
    let addr = s.addr;
    let body = webuiapi_txt2img(json!({"prompt": "a slow job", "seed": 1, "steps": 1000, "width": 256,
        "height": 256, "n_iter": 3, "sampler_name": "DPM++ 2M"}));
    let waiter = std::thread::spawn(move || {
        client::request(
            addr,
            "POST",
            "/sdapi/v1/txt2img",
            Some(body.to_string().as_bytes()),
            TIMEOUT,
        )
        .unwrap()
    });
    let mut seen = Value::Null;
    s.wait_until(30, "a preview in /progress", || {
        seen = s.get("/sdapi/v1/progress").json();
        seen["current_image"].is_string() && seen["progress"].as_f64().unwrap() > 0.0
    });
    let preview = image::load_from_memory(&b64(&seen["current_image"])).unwrap();
    assert_eq!((preview.width(), preview.height()), (256, 256));
    assert!(seen["eta_relative"].as_f64().unwrap() > 0.0, "{seen}");
    assert!(seen["progress"].as_f64().unwrap() < 1.0 / 3.0, "{seen}");
    assert_eq!(seen["state"]["job"], "Batch 1 out of 3");
    assert_eq!(seen["state"]["sampling_steps"], 1000);
    let p = s.get("/sdapi/v1/progress?skip_current_image=true").json();
    assert!(p["current_image"].is_null());
    // Skip: the next iteration runs.
    assert_eq!(s.post("/sdapi/v1/skip", &json!({})).status, 200);
    s.wait_until(20, "iteration 2", || {
        s.get("/sdapi/v1/progress").json()["state"]["job_no"] == 1
    });
    // Interrupt: none of the rest; the request answers with what it has (nothing).
    let t = Instant::now();
    assert_eq!(s.post("/sdapi/v1/interrupt", &json!({})).status, 200);
    let r = waiter.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["images"], json!([]));
    s.wait_until(10, "idle", || {
        let p = s.get("/sdapi/v1/progress").json();
        p["progress"] == 0.0 && p["state"]["job_count"] == 0
    });
    assert_eq!(s.metric("pixart_jobs_total{status=\"cancelled\"}"), 2.0);
}

#[test]
fn a1111_lists_options_and_field_errors() {
    let s = Server::start(&[]);
    let models = s.get("/sdapi/v1/sd-models").json();
    assert_eq!(models[0]["title"], "pipeline");
    assert_eq!(models[0]["filename"], "pipeline", "a name, never a path");
    let samplers = s.get("/sdapi/v1/samplers").json();
    let names: Vec<&str> = samplers
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    for n in ["DPM++ 2M", "Euler a", "DDIM", "LCM"] {
        assert!(names.contains(&n), "{names:?}");
    }
    assert_eq!(s.get("/sdapi/v1/schedulers").json()[0]["name"], "automatic");
    assert_eq!(s.get("/sdapi/v1/upscalers").json()[0]["name"], "None");
    assert_eq!(s.get("/sdapi/v1/loras").json(), json!([]));
    // Options: the model by name or A1111 title; anything else is 422 naming the option.
    let o = s.get("/sdapi/v1/options").json();
    assert_eq!(o["sd_model_checkpoint"], "pipeline");
    let r = s.post("/sdapi/v1/options", &json!({"sd_model_checkpoint": "pipeline [0000]"}));
    assert_eq!((r.status, r.text()), (200, "null".to_string()));
    let r = s.post("/sdapi/v1/options", &json!({"sd_model_checkpoint": "sdxl"}));
    assert_eq!(error_param(&r), (422, "sd_model_checkpoint".into()));
    let r = s.post(
        "/sdapi/v1/options",
        &json!({"samples_format": "jpg", "CLIP_stop_at_last_layers": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.get("/sdapi/v1/options").json()["samples_format"], "jpg");
    let r = s.post(
        "/sdapi/v1/txt2img",
        &webuiapi_txt2img(json!({"prompt": "a boat", "steps": 2, "width": 64, "height": 64})),
    );
    assert_eq!(
        &b64(&r.json()["images"][0])[..2],
        &[0xFF, 0xD8],
        "samples_format applies"
    );
    s.post("/sdapi/v1/options", &json!({"samples_format": "png"}));

    for (fields, status, param) in [
        (json!({"cfg_scale": "high"}), 422, "cfg_scale"),
        (json!({"cfg_scale": 51}), 422, "cfg_scale"),
        (json!({"steps": 2.5}), 422, "steps"),
        (json!({"steps": 151}), 422, "steps"),
        (json!({"batch_size": 5}), 422, "batch_size"),
        (json!({"n_iter": 0}), 422, "n_iter"),
        (json!({"width": 4096}), 422, "width"),
        (json!({"height": 8}), 422, "height"),
        (json!({"seed": -2}), 422, "seed"),
        (json!({"sampler_name": "Euler"}), 422, "sampler_name"),
        (json!({"scheduler": "Karras"}), 422, "scheduler"),
        (json!({"restore_faces": "no"}), 422, "restore_faces"),
        (json!({"enable_hr": true, "hr_scale": 8}), 422, "hr_scale"),
        (
            json!({"enable_hr": true, "denoising_strength": 0}),
            422,
            "denoising_strength",
        ),
        (
            json!({"override_settings": {"sd_model_checkpoint": "sdxl"}}),
            422,
            "override_settings.sd_model_checkpoint",
        ),
        (json!({"init_images": []}), 400, "init_images"),
        (json!({"guidance_scale": 3}), 400, "guidance_scale"),
    ] {
        let mut b = webuiapi_txt2img(json!({"prompt": "a boat", "width": 64, "height": 64, "steps": 2}));
        for (k, v) in fields.as_object().unwrap() {
            b[k] = v.clone();
        }
        let r = s.post("/sdapi/v1/txt2img", &b);
        assert_eq!(error_param(&r), (status, param.to_string()), "{fields} {}", r.text());
    }
    let r = s.post_raw("/sdapi/v1/txt2img", b"{\"prompt\": ");
    assert_eq!(error_param(&r), (400, "body".into()));
}

#[test]
fn several_models_picked_by_the_request_and_loaded_on_first_use() {
    // --models DIR: the built-in model (64 px) beside the default tiny pipeline (256 px); one
    // loaded at a time, so each switch unloads the other.
    let dir = std::env::temp_dir().join(format!("pixart-models-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let builtin = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/builtin")
        .canonicalize()
        .unwrap();
    std::os::unix::fs::symlink(&builtin, dir.join("builtin")).unwrap();
    let s = Server::start(&["--models", dir.to_str().unwrap(), "--max-loaded-models", "1"]);
    let ids: Vec<String> = s.get("/v1/models").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["pipeline", "builtin"]);
    assert_eq!(s.get("/v1/models/builtin").status, 200);
    let titles: Vec<Value> = s
        .get("/sdapi/v1/sd-models")
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["title"].clone())
        .collect();
    assert_eq!(titles, [json!("pipeline"), json!("builtin")]);
    let side = |body: Value| {
        let r = s.post("/v1/images/generations", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        rgb(&b64(&r.json()["data"][0]["b64_json"])).dimensions()
    };
    assert_eq!(
        side(json!({"prompt": "a red circle", "steps": 2, "model": "builtin"})),
        (64, 64)
    );
    assert!(s.log().contains("unloading model pipeline"), "{}", s.log());
    assert!(s.log().contains("loaded model builtin"), "{}", s.log());
    assert_eq!(side(json!({"prompt": "a boat", "steps": 2})), (256, 256));
    assert!(s.log().contains("loaded model pipeline"), "{}", s.log());
    // An OpenAI client's model name runs the default.
    assert_eq!(
        side(json!({"prompt": "a boat", "steps": 2, "model": "dall-e-3"})),
        (256, 256)
    );
    // A1111: sd_model_checkpoint switches the model of later requests; override_settings one.
    let r = s.post("/sdapi/v1/options", &json!({"sd_model_checkpoint": "builtin"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let a1111_side = |body: Value| {
        let r = s.post("/sdapi/v1/txt2img", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let info: Value = serde_json::from_str(r.json()["info"].as_str().unwrap()).unwrap();
        (
            rgb(&b64(&r.json()["images"][0])).dimensions(),
            info["sd_model_name"].clone(),
        )
    };
    assert_eq!(
        a1111_side(json!({"prompt": "a red circle", "steps": 2})),
        ((64, 64), json!("builtin"))
    );
    assert_eq!(
        a1111_side(json!({"prompt": "a boat", "steps": 2, "override_settings": {"sd_model_checkpoint": "pipeline"}})),
        ((256, 256), json!("pipeline"))
    );
    let r = s.post("/sdapi/v1/options", &json!({"sd_model_checkpoint": "sdxl"}));
    assert_eq!(error_param(&r), (422, "sd_model_checkpoint".into()));
    let _ = std::fs::remove_dir_all(&dir);
}
