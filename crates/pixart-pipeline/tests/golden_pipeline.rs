//! End-to-end golden test: our pipeline against diffusers 0.42.1 `PixArtSigmaPipeline` on the
//! tiny random pipeline of fixtures/golden/pipeline (tools/golden/gen_pipeline.py), from the same
//! initial latents. Compares the final latents (`output_type="latent"`) and the decoded image
//! (`output_type="np"`).
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use pixart_pipeline::{
    generate, ComponentOptions, ComponentPaths, Generated, GenerationRequest, InitImage, OutputKind,
    PipelineComponents, Progress, RgbImage, SeededNoise,
};

/// max |a − b| / max |b| allowed for the final latents. The random tiny transformer is far from
/// a trained one, so DPM-Solver's data predictions reach ~10³ and amplify f32 rounding.
const LATENT_RTOL: f32 = 1e-5;
/// max |a − b| allowed for the image in [0, 1].
const IMAGE_ATOL: f32 = 2e-5;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/pipeline")
}

fn components() -> PipelineComponents {
    let paths = ComponentPaths {
        model: fixtures(),
        ..Default::default()
    };
    PipelineComponents::load(&paths, &ComponentOptions::default()).unwrap()
}

use pixart_core::testing::max_abs;

/// The request a case of the generators' JSON describes (binning off unless it says so), from
/// the case's initial latents `<name>.latents_in`.
fn case_request(
    name: &str,
    case: &serde_json::Value,
    io: &std::collections::HashMap<String, Tensor>,
    output: OutputKind,
) -> GenerationRequest {
    let prompts = match &case["prompt"] {
        serde_json::Value::String(s) => vec![s.clone()],
        v => v
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect(),
    };
    GenerationRequest {
        prompts,
        negative_prompt: case["negative_prompt"].as_str().unwrap().to_string(),
        width: Some(case["width"].as_u64().unwrap() as usize),
        height: Some(case["height"].as_u64().unwrap() as usize),
        steps: Some(case["steps"].as_u64().unwrap() as usize),
        guidance: Some(case["guidance"].as_f64().unwrap()),
        images_per_prompt: case["per_prompt"].as_u64().unwrap() as usize,
        resolution_binning: case["binning"].as_bool().unwrap_or(false),
        latents: io.get(&format!("{name}.latents_in")).cloned(),
        output,
        ..Default::default()
    }
}

fn run_case(
    c: &PipelineComponents,
    name: &str,
    case: &serde_json::Value,
    io: &std::collections::HashMap<String, Tensor>,
    output: OutputKind,
) -> pixart_pipeline::Output {
    let req = case_request(name, case, io, output).validate(&c.geometry()).unwrap();
    assert_eq!(req.gen_height, case["bin_height"].as_u64().unwrap() as usize);
    assert_eq!(req.gen_width, case["bin_width"].as_u64().unwrap() as usize);
    match generate(c, &req, &mut SeededNoise::new(0), &mut |_| {}, &AtomicBool::new(false)).unwrap() {
        Generated::Finished(o) => o,
        Generated::Cancelled { .. } => panic!("cancelled"),
    }
}

/// `<stem>.json` (the cases) and `<stem>.safetensors` (their tensors) of the fixture folder.
fn load_cases(stem: &str) -> (serde_json::Value, std::collections::HashMap<String, Tensor>) {
    let dir = fixtures();
    let cases = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap()).unwrap();
    let io = candle_core::safetensors::load(dir.join(format!("{stem}.safetensors")), &Device::Cpu).unwrap();
    (cases, io)
}

/// The final latents within [`LATENT_RTOL`] of the reference's.
fn check_latents(name: &str, got: &Tensor, want: &Tensor) {
    let diff = max_abs(&(got - want).unwrap());
    let rel = diff / max_abs(want);
    println!("{name}: latents max diff {diff:.3e} (relative {rel:.3e})");
    assert!(
        rel <= LATENT_RTOL,
        "{name}: latents relative diff {rel:.3e} > {LATENT_RTOL:e}"
    );
}

#[test]
fn pipeline_matches_diffusers() {
    let c = components();
    let (cases, io) = load_cases("cases");
    for (name, case) in cases.as_object().unwrap() {
        let out = run_case(&c, name, case, &io, OutputKind::Image);
        check_latents(name, &out.latents, &io[&format!("{name}.latents_out")]);

        let pixels = out.pixels.unwrap().permute((0, 2, 3, 1)).unwrap(); // (b, h, w, 3)
        let want = &io[&format!("{name}.image")];
        assert_eq!(pixels.dims(), want.dims(), "{name}: image shape");
        let diff = max_abs(&(&pixels - want).unwrap());
        println!("{name}: image max diff {diff:.3e}");
        assert!(diff <= IMAGE_ATOL, "{name}: image diff {diff:.3e} > {IMAGE_ATOL:e}");
        let img = &out.images[0];
        assert_eq!((img.width, img.height), (want.dims()[2], want.dims()[1]));
        assert_eq!(img.data.len(), img.width * img.height * 3);
    }
}

#[test]
fn latent_output_skips_the_vae() {
    let c = components();
    let (cases, io) = load_cases("cases");
    let name = "no_cfg_two_prompts";
    let out = run_case(&c, name, &cases[name], &io, OutputKind::Latent);
    assert!(out.pixels.is_none() && out.images.is_empty());
    let want = &io[&format!("{name}.latents_out")];
    let rel = max_abs(&(&out.latents - want).unwrap()) / max_abs(want);
    assert!(rel <= LATENT_RTOL, "{rel:e}");
}

#[test]
fn seeded_runs_are_reproducible_and_cancellable() {
    let c = components();
    let mk = |seed| {
        GenerationRequest {
            prompts: vec!["a cat".into()],
            width: Some(64),
            height: Some(48),
            steps: Some(2),
            seed,
            resolution_binning: false,
            output: OutputKind::Latent,
            sampler: Some("euler-a".parse().unwrap()),
            ..Default::default()
        }
        .validate(&c.geometry())
        .unwrap()
    };
    let run = |seed: u64, cancel: bool| {
        let r = mk(seed);
        generate(
            &c,
            &r,
            &mut SeededNoise::new(seed),
            &mut |_| {},
            &AtomicBool::new(cancel),
        )
        .unwrap()
    };
    let (Generated::Finished(a), Generated::Finished(b), Generated::Finished(d)) =
        (run(3, false), run(3, false), run(4, false))
    else {
        panic!("cancelled")
    };
    assert_eq!(max_abs(&(&a.latents - &b.latents).unwrap()), 0.0);
    assert!(max_abs(&(&a.latents - &d.latents).unwrap()) > 0.0);
    assert!(matches!(run(3, true), Generated::Cancelled { completed_steps: 0 }));
}

#[test]
fn invalid_requests_are_refused_with_one_line() {
    let c = components();
    let base = || GenerationRequest {
        prompts: vec!["x".into()],
        width: Some(64),
        height: Some(64),
        ..Default::default()
    };
    let err = |r: GenerationRequest| r.validate(&c.geometry()).unwrap_err().to_string();
    assert!(err(GenerationRequest {
        steps: Some(0),
        ..base()
    })
    .contains("steps"));
    assert!(err(GenerationRequest {
        guidance: Some(f64::NAN),
        ..base()
    })
    .contains("finite"));
    assert!(err(GenerationRequest {
        guidance: Some(f64::INFINITY),
        ..base()
    })
    .contains("finite"));
    let e = err(GenerationRequest {
        width: Some(72),
        resolution_binning: false,
        ..base()
    });
    assert!(e.contains("multiples of 16"), "{e}");
    assert!(err(GenerationRequest {
        prompts: vec![],
        ..base()
    })
    .contains("prompt"));
    let e = err(GenerationRequest {
        latents: Some(Tensor::zeros((1, 4, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap()),
        ..base()
    });
    assert!(e.contains("initial latents"), "{e}");
    // Binning on: any size is fine, the bin is from the 256 table (sample_size 32).
    let ok = GenerationRequest {
        width: Some(1000),
        height: Some(250),
        ..base()
    }
    .validate(&c.geometry())
    .unwrap();
    assert_eq!((ok.gen_height, ok.gen_width), (128, 512));
    assert_eq!((ok.out_height, ok.out_width), (250, 1000));
}

#[test]
fn missing_components_are_named() {
    let tmp = std::env::temp_dir().join(format!("pixart-pipe-missing-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    // A transformer-only folder without --base.
    let paths = ComponentPaths {
        model: fixtures().join("transformer"),
        ..Default::default()
    };
    let e = PipelineComponents::load(&paths, &ComponentOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing component `text_encoder`") && e.contains("--base") && !e.contains("--text-encoder"),
        "{e}"
    );
    // The override flag is suggested only where the caller has it.
    let paths = ComponentPaths {
        model: fixtures().join("transformer"),
        override_hints: true,
        ..Default::default()
    };
    let e = PipelineComponents::load(&paths, &ComponentOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("or --text-encoder DIR"), "{e}");
    // Transformer-only folder + base: loads.
    let paths = ComponentPaths {
        model: fixtures().join("transformer"),
        base: Some(fixtures()),
        ..Default::default()
    };
    PipelineComponents::load(&paths, &ComponentOptions::default()).unwrap();
    // An override that does not exist.
    let paths = ComponentPaths {
        model: fixtures(),
        vae: Some(tmp.join("nope")),
        ..Default::default()
    };
    let e = PipelineComponents::load(&paths, &ComponentOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("--vae") && !e.contains('\n'), "{e}");
    std::fs::remove_dir_all(&tmp).ok();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name.to_string_lossy().starts_with("cases.") {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// A folder laid out like the HF hub cache: `models--owner--name/refs/main` naming a snapshot.
fn fake_hf_cache(root: &std::path::Path, id: &str, files: &std::path::Path) {
    let repo = root.join(format!("models--{}", id.replace('/', "--")));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    copy_dir(files, &repo.join("snapshots/0123456789abcdef"));
}

#[test]
fn hub_ids_resolve_in_the_hf_cache() {
    let tmp = std::env::temp_dir().join(format!("pixart-pipe-hub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    fake_hf_cache(&tmp, "pixart-test/tiny", &fixtures());
    // A transformer-only repo, used with the full one as base.
    let only = tmp.join("only");
    copy_dir(&fixtures().join("transformer"), &only.join("transformer"));
    fake_hf_cache(&tmp, "pixart-test/tiny-transformer", &only);
    let snap = pixart_pipeline::hub::cached_snapshot(&tmp, "pixart-test/tiny").unwrap();
    assert!(snap.join("model_index.json").is_file(), "{}", snap.display());
    let t = pixart_pipeline::hub::cached_snapshot(&tmp, "pixart-test/tiny-transformer").unwrap();
    assert!(t.join("transformer/config.json").is_file());
    let paths = ComponentPaths {
        model: t,
        base: Some(snap),
        ..Default::default()
    };
    let r = paths.resolve().unwrap();
    assert!(r.vae.starts_with(&tmp) && r.text_encoder.starts_with(&tmp));
    PipelineComponents::load(&paths, &ComponentOptions::default()).unwrap();
    assert!(pixart_pipeline::hub::cached_snapshot(&tmp, "pixart-test/absent").is_none());
    let e = pixart_pipeline::hub::from_cache(&tmp, "pixart-test/absent", &["transformer"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not in the HF cache"), "{e}");
    std::fs::remove_dir_all(&tmp).ok();
}

/// Replays stored noise: `draws[i]` (batch, ...) is what every image draws the i-th time.
struct ReplayNoise {
    per_image: Vec<std::collections::VecDeque<Vec<f32>>>,
}

impl ReplayNoise {
    fn new(draws: &[Tensor]) -> Self {
        let batch = draws.first().map_or(0, |d| d.dims()[0]);
        let per_image = (0..batch)
            .map(|k| {
                draws
                    .iter()
                    .map(|d| d.get(k).unwrap().flatten_all().unwrap().to_vec1().unwrap())
                    .collect()
            })
            .collect();
        Self { per_image }
    }

    /// The draws of a (steps, batch, ...) tensor, one per step.
    fn steps(t: &Tensor) -> Vec<Tensor> {
        (0..t.dims()[0]).map(|i| t.get(i).unwrap()).collect()
    }
}

impl pixart_pipeline::NoiseSource for ReplayNoise {
    fn draw(&mut self, image: usize, len: usize) -> Vec<f32> {
        let v = self.per_image[image]
            .pop_front()
            .expect("more noise draws than stored steps");
        assert_eq!(v.len(), len);
        v
    }
}

/// `--scheduler iddpm` against PixArt's own IDDPM sampling (tools/golden/gen_pipeline_iddpm.py:
/// respaced timesteps, the learned-range variance, guidance on the first three latent channels
/// as the original `forward_with_cfg`), with the same initial latents and per-step noise.
#[test]
fn iddpm_matches_the_original_sampling() {
    let c = components();
    let (cases, io) = load_cases("iddpm");
    for (name, case) in cases.as_object().unwrap() {
        let req = GenerationRequest {
            sampler: Some("iddpm".parse().unwrap()),
            ..case_request(name, case, &io, OutputKind::Latent)
        }
        .validate(&c.geometry())
        .unwrap();
        let mut noise = ReplayNoise::new(&ReplayNoise::steps(&io[&format!("{name}.noise")]));
        let out = match generate(&c, &req, &mut noise, &mut |_| {}, &AtomicBool::new(false)).unwrap() {
            Generated::Finished(o) => o,
            Generated::Cancelled { .. } => panic!("cancelled"),
        };
        assert!(noise.per_image.iter().all(|q| q.is_empty()), "{name}: noise left over");
        check_latents(name, &out.latents, &io[&format!("{name}.latents_out")]);
    }
}

/// Image to image against diffusers' img2img start (tools/golden/gen_pipeline_img2img.py:
/// `get_timesteps`, the VAE posterior sample, `add_noise` at the first step that runs) and
/// PixArt-Σ's denoising loop, from the same init image (a PNG in the fixtures) and noise, with
/// three samplers, with and without CFG, at the image's size and resized + cropped; and
/// inpainting with SDXL-inpaint's mask blending after every step (strength < 1 and = 1).
#[test]
fn img2img_matches_diffusers() {
    let c = components();
    let (cases, io) = load_cases("img2img");
    for (name, case) in cases.as_object().unwrap() {
        let bytes = std::fs::read(fixtures().join(case["image"].as_str().unwrap())).unwrap();
        let image = RgbImage::decode(&bytes, "init").unwrap();
        let latents_shape = io[&format!("{name}.noise")].dims().to_vec();
        let sampler = case["sampler"].as_str().map(|s| s.parse().unwrap());
        let req = GenerationRequest {
            latents: None,
            sampler,
            init_image: Some(InitImage {
                image,
                strength: case["strength"].as_f64().unwrap(),
                mask: case["mask"]
                    .as_str()
                    .map(|m| RgbImage::decode(&std::fs::read(fixtures().join(m)).unwrap(), "mask").unwrap()),
            }),
            ..case_request(name, case, &io, OutputKind::Latent)
        }
        .validate(&c.geometry())
        .unwrap();
        assert_eq!(req.latent_shape.to_vec(), latents_shape, "{name}");
        assert_eq!(req.steps_to_run() as u64, case["steps_run"].as_u64().unwrap(), "{name}");
        let mut draws = vec![
            io[&format!("{name}.posterior_noise")].clone(),
            io[&format!("{name}.noise")].clone(),
        ];
        if let Some(s) = io.get(&format!("{name}.step_noise")) {
            draws.extend(ReplayNoise::steps(s));
        }
        let mut noise = ReplayNoise::new(&draws);
        let out = match generate(&c, &req, &mut noise, &mut |_| {}, &AtomicBool::new(false)).unwrap() {
            Generated::Finished(o) => o,
            Generated::Cancelled { .. } => panic!("cancelled"),
        };
        assert!(noise.per_image.iter().all(|q| q.is_empty()), "{name}: noise left over");
        check_latents(name, &out.latents, &io[&format!("{name}.latents_out")]);
    }
}

/// A pipeline folder whose model_index.json names `PixArtAlphaPipeline` (PixArt-α, PixArt-LCM)
/// keeps 120 caption tokens, as diffusers' α pipeline (tools/golden/gen_pipeline_alpha.py: a
/// 173-token prompt); the same folder as PixArt-Σ keeps all 173 and draws another picture.
#[test]
fn alpha_pipeline_keeps_120_tokens() {
    let dir = std::env::temp_dir().join(format!("pixart-alpha-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&fixtures(), &dir);
    let index = std::fs::read_to_string(dir.join("model_index.json")).unwrap();
    std::fs::write(
        dir.join("model_index.json"),
        index.replace("PixArtSigmaPipeline", "PixArtAlphaPipeline"),
    )
    .unwrap();
    let load = |model: PathBuf| {
        let paths = ComponentPaths {
            model,
            ..Default::default()
        };
        PipelineComponents::load(&paths, &ComponentOptions::default()).unwrap()
    };
    let (alpha, sigma) = (load(dir.clone()), components());
    assert_eq!(
        (alpha.paths.max_sequence_length, sigma.paths.max_sequence_length),
        (120, 300)
    );
    let (cases, io) = load_cases("alpha");
    for (name, case) in cases.as_object().unwrap() {
        let run = |c: &PipelineComponents| {
            let req = case_request(name, case, &io, OutputKind::Latent)
                .validate(&c.geometry())
                .unwrap();
            let mut cut = Vec::new();
            let out = generate(
                c,
                &req,
                &mut SeededNoise::new(0),
                &mut |p| {
                    if let Progress::Truncated { dropped, limit, .. } = p {
                        cut.push((dropped, limit));
                    }
                },
                &AtomicBool::new(false),
            )
            .unwrap();
            match out {
                Generated::Finished(o) => (o.latents, cut),
                Generated::Cancelled { .. } => panic!("cancelled"),
            }
        };
        let tokens = case["prompt_tokens"].as_u64().unwrap() as usize;
        let (latents, cut) = run(&alpha);
        // The tokenizer appends </s>: the prompt's tokens past 119 are dropped.
        assert_eq!(cut, vec![(tokens - 120, 120)], "{name}");
        check_latents(name, &latents, &io[&format!("{name}.latents_out")]);
        let (sigma_latents, cut) = run(&sigma);
        assert!(cut.is_empty());
        let diff = pixart_core::testing::max_abs(&(&sigma_latents - &latents).unwrap());
        assert!(diff > 1e-2, "{name}: the 300-token pipeline should differ ({diff})");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
