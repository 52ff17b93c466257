//! `pixart generate --controlnet --control` on the built-in model, with a ControlNet made here
//! from its transformer: the control settings go into the image's parameters and `--from`
//! repeats the image; `--control-scale 0` gives exactly the image without ControlNet; bad
//! control input is a one-line usage error (exit 2).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use pixart_model::controlnet::{adapter_from_transformer, save_controlnet};
use pixart_model::ControlNetConfig;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pixart"))
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pixart-cn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn builtin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/builtin")
}

/// A ControlNet of `layers` copies of the built-in transformer's blocks in `dir`, projections
/// random so that it acts.
fn make_controlnet(dir: &Path, layers: usize) {
    let base = candle_core::safetensors::load(
        builtin().join("transformer/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut t: HashMap<String, Tensor> = adapter_from_transformer(&base, layers).unwrap();
    for (name, v) in t.iter_mut() {
        if name.contains("_proj.") {
            *v = Tensor::randn(0f32, 0.05, v.dims(), &Device::Cpu).unwrap();
        }
    }
    save_controlnet(dir, &t, &ControlNetConfig { num_layers: layers }).unwrap();
}

/// A PNG of a white square on black.
fn control_png(path: &Path) {
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        if (16..48).contains(&x) && (20..44).contains(&y) {
            image::Rgb([255, 255, 255])
        } else {
            image::Rgb([0, 0, 0])
        }
    });
    img.save(path).unwrap();
}

fn generate(args: &[&str]) -> Output {
    bin()
        .args([
            "generate",
            "-p",
            "a large red circle at the center on a blue background",
        ])
        .args(["--steps", "3", "--seed", "4"])
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A usage error found while loading: after the `loading ...` line, one error line.
fn assert_load_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| !l.starts_with("loading ")).collect();
    assert_eq!(errors.len(), 1, "not one error line: {err}");
    assert!(errors[0].contains(needle), "`{needle}` not in: {err}");
}

fn parameters(png: &Path) -> String {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    info.uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .unwrap_or_default()
}

fn pixels(png: &Path) -> Vec<u8> {
    image::open(png).unwrap().to_rgb8().into_raw()
}

#[test]
fn generate_with_a_controlnet_and_read_it_back() {
    let dir = tempdir("gen");
    let cn = dir.join("controlnet");
    make_controlnet(&cn, 3);
    let control = dir.join("control.png");
    control_png(&control);
    let out = dir.join("out.png");
    let (cn_s, control_s, out_s) = (cn.to_str().unwrap(), control.to_str().unwrap(), out.to_str().unwrap());
    let o = generate(&[
        "--controlnet",
        cn_s,
        "--control",
        control_s,
        "--control-scale",
        "0.8",
        "--control-preprocess",
        "canny:50:120",
        "--batch",
        "2",
        "-o",
        out_s,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = parameters(&out);
    for want in [
        format!("ControlNet: {cn_s}"),
        format!("Control image: {control_s}"),
        "Control scale: 0.8".into(),
        "Control preprocess: canny:50:120".into(),
    ] {
        assert!(text.contains(&want), "`{want}` not in {text}");
    }
    // --from repeats it: the same control, ControlNet, scale and preprocessing.
    let again = dir.join("again.png");
    let o = bin()
        .args(["generate", "--from", out_s, "-o", again.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(pixels(&out), pixels(&again), "--from made another image");
    assert_eq!(parameters(&out), parameters(&again));

    // Without the ControlNet, and with scale 0: the same image, not this one.
    let plain = dir.join("plain.png");
    let o = generate(&["--batch", "2", "-o", plain.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let zero = dir.join("zero.png");
    let o = generate(&[
        "--controlnet",
        cn_s,
        "--control",
        control_s,
        "--control-scale",
        "0",
        "--batch",
        "2",
        "-o",
        zero.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(pixels(&plain), pixels(&zero), "scale 0 differs from no ControlNet");
    assert_ne!(pixels(&plain), pixels(&out), "the ControlNet changed nothing");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_control_input_is_a_usage_error() {
    let dir = tempdir("bad");
    let cn = dir.join("controlnet");
    make_controlnet(&cn, 3);
    let control = dir.join("control.png");
    control_png(&control);
    let (cn_s, control_s) = (cn.to_str().unwrap(), control.to_str().unwrap());
    let out = dir.join("o.png");
    let out_s = out.to_str().unwrap();
    // --control without --controlnet (the built-in model has no controlnet/ folder)
    let o = generate(&["--control", control_s, "-o", out_s]);
    assert_one_line_error(&o, "--control needs --controlnet");
    // a control file that is not an image
    let text = dir.join("notes.png");
    std::fs::write(&text, "not a picture").unwrap();
    let o = generate(&["--controlnet", cn_s, "--control", text.to_str().unwrap(), "-o", out_s]);
    assert_one_line_error(&o, "notes.png");
    // a bad preprocessing spec and scale
    let o = generate(&[
        "--controlnet",
        cn_s,
        "--control",
        control_s,
        "--control-preprocess",
        "canny:9:3",
    ]);
    assert_one_line_error(&o, "--control-preprocess");
    let o = generate(&[
        "--controlnet",
        cn_s,
        "--control",
        control_s,
        "--control-scale",
        "-1",
        "-o",
        out_s,
    ]);
    assert_one_line_error(&o, "--control-scale must be between 0 and 10");
    // a ControlNet with more blocks than the transformer takes (6 blocks take at most 5)
    let big = dir.join("big");
    make_controlnet(&big, 6);
    let o = generate(&[
        "--controlnet",
        big.to_str().unwrap(),
        "--control",
        control_s,
        "-o",
        out_s,
    ]);
    assert_load_error(
        &o,
        "the ControlNet has 6 blocks; a transformer of 6 blocks takes 1 to 5",
    );
    assert!(stderr(&o).contains("config.json"), "{}", stderr(&o));
    // a ControlNet of another width
    let narrow = dir.join("narrow");
    let mut t = HashMap::new();
    t.insert(
        "controlnet_blocks.0.before_proj.weight".to_string(),
        Tensor::zeros((8, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    save_controlnet(&narrow, &t, &ControlNetConfig { num_layers: 1 }).unwrap();
    let o = generate(&[
        "--controlnet",
        narrow.to_str().unwrap(),
        "--control",
        control_s,
        "-o",
        out_s,
    ]);
    assert_load_error(&o, "does not fit the transformer's width 192");
    assert!(
        stderr(&o).contains("diffusion_pytorch_model.safetensors"),
        "{}",
        stderr(&o)
    );
    // --controlnet builtin: none yet
    let o = generate(&["--controlnet", "builtin", "--control", control_s, "-o", out_s]);
    assert_one_line_error(&o, "--controlnet builtin");
    assert!(!out.exists(), "an image was written");
    std::fs::remove_dir_all(&dir).ok();
}
