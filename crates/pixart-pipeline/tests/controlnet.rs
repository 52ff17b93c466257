//! `generate` with a ControlNet on the built-in model: a ControlNet made here from the built-in
//! transformer (copies of its first blocks, projections random so that it acts), used with
//! guidance and a batch; scale 0 gives exactly the run without ControlNet; a control image
//! without a ControlNet, or a bad scale, is refused naming its field; a `controlnet/` folder
//! beside the pipeline's components is found.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use pixart_core::Field;
use pixart_model::controlnet::{adapter_from_transformer, save_controlnet};
use pixart_model::ControlNetConfig;
use pixart_pipeline::{
    builtin_model_dir, generate, ComponentOptions, ComponentPaths, ControlImage, Generated, GenerationRequest,
    OutputKind, PipelineComponents, RgbImage, SeededNoise,
};

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pixart-pipeline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 3-copy ControlNet for the built-in transformer in `dir`, its projections random (std 0.05)
/// so that the control changes the output.
fn make_controlnet(dir: &Path) {
    let base = candle_core::safetensors::load(
        builtin_model_dir()
            .unwrap()
            .join("transformer/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut t: HashMap<String, Tensor> = adapter_from_transformer(&base, 3).unwrap();
    for (name, v) in t.iter_mut() {
        if name.contains("_proj.") {
            *v = Tensor::randn(0f32, 0.05, v.dims(), &Device::Cpu).unwrap();
        }
    }
    save_controlnet(dir, &t, &ControlNetConfig { num_layers: 3 }).unwrap();
}

fn components(controlnet: Option<&Path>) -> PipelineComponents {
    let paths = ComponentPaths {
        model: builtin_model_dir().unwrap(),
        controlnet: controlnet.map(Path::to_path_buf),
        ..Default::default()
    };
    PipelineComponents::load(&paths, &ComponentOptions::default()).unwrap()
}

/// A control picture: a white square on black, 48x40 (resized to the generation size).
fn control_picture() -> RgbImage {
    let mut img = RgbImage::filled(48, 40, [0; 3]);
    for y in 10..30 {
        for x in 12..36 {
            let p = 3 * (y * 48 + x);
            img.data[p..p + 3].copy_from_slice(&[255; 3]);
        }
    }
    img
}

fn request(control: Option<f64>) -> GenerationRequest {
    GenerationRequest {
        prompts: vec![
            "a large red circle at the top left on a blue background".into(),
            "a small white square at the center on a green background".into(),
        ],
        images_per_prompt: 2,
        steps: Some(4),
        seed: 11,
        output: OutputKind::Latent,
        control: control.map(|scale| ControlImage {
            image: control_picture(),
            scale,
            source: None,
            preprocess: None,
            controlnet: None,
        }),
        ..Default::default()
    }
}

fn latents(c: &PipelineComponents, req: GenerationRequest) -> Vec<f32> {
    let req = req.validate(&c.geometry()).unwrap();
    assert!(req.cfg, "the test runs with guidance");
    let mut noise = SeededNoise::new(req.seed);
    match generate(c, &req, &mut noise, &mut |_| {}, &AtomicBool::new(false)).unwrap() {
        Generated::Finished(out) => out.latents.flatten_all().unwrap().to_vec1().unwrap(),
        Generated::Cancelled { .. } => panic!("cancelled"),
    }
}

#[test]
fn control_with_guidance_and_a_batch() {
    let dir = tempdir("controlnet");
    make_controlnet(&dir);
    let c = components(Some(&dir));
    assert!(c.controlnet.is_some());
    let plain = latents(&c, request(None));
    let zero = latents(&c, request(Some(0.0)));
    assert_eq!(plain, zero, "scale 0 must give exactly the run without ControlNet");
    let on = latents(&c, request(Some(1.0)));
    let diff = on.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff > 1e-3, "the ControlNet changed nothing ({diff})");
    assert!(on.iter().all(|v| v.is_finite()));
    // The same control, twice: the posterior mean, not a sample, so the same latents.
    assert_eq!(on, latents(&c, request(Some(1.0))));
    // Image k of the batch is what a one-image run with seed + k makes (the control is the
    // same for every image).
    let per = on.len() / 4;
    let mut one = request(Some(1.0));
    one.prompts.truncate(1);
    one.images_per_prompt = 1;
    one.seed += 1;
    let single = latents(&c, one);
    let d = single
        .iter()
        .zip(&on[per..2 * per])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-4, "image 1 of the batch differs from its one-image run by {d}");
}

#[test]
fn a_controlnet_folder_beside_the_components_is_found() {
    let dir = tempdir("controlnet-beside");
    let builtin = builtin_model_dir().unwrap();
    for sub in ["transformer", "vae", "text_encoder", "tokenizer", "scheduler"] {
        std::os::unix::fs::symlink(builtin.join(sub), dir.join(sub)).unwrap();
    }
    std::fs::copy(builtin.join("model_index.json"), dir.join("model_index.json")).unwrap();
    make_controlnet(&dir.join("controlnet"));
    let paths = ComponentPaths {
        model: dir.clone(),
        ..Default::default()
    };
    let resolved = paths.resolve().unwrap();
    assert_eq!(resolved.controlnet.as_deref(), Some(dir.join("controlnet").as_path()));
    assert!(resolved.geometry().unwrap().controlnet);
}

#[test]
fn control_needs_a_controlnet_and_a_sane_scale() {
    let c = components(None);
    let field = |req: GenerationRequest, geometry: &pixart_pipeline::ModelGeometry| match req.validate(geometry) {
        Err(pixart_core::Error::InvalidRequest { field, message }) => (field, message),
        other => panic!("not refused: {other:?}"),
    };
    let (f, m) = field(request(Some(1.0)), &c.geometry());
    assert_eq!(f, Field::Control);
    assert!(m.contains("needs a ControlNet"), "{m}");
    let mut with = c.geometry();
    with.controlnet = true;
    for bad in [-0.5, f64::NAN, 11.0] {
        assert_eq!(field(request(Some(bad)), &with).0, Field::ControlScale, "{bad}");
    }
    let mut empty = request(Some(1.0));
    if let Some(ci) = &mut empty.control {
        ci.image = RgbImage {
            width: 0,
            height: 0,
            data: Vec::new(),
        };
    }
    assert_eq!(field(empty, &with).0, Field::Control);
}
