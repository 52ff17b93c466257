//! `pixart generate` end to end on the tiny golden pipeline (fixtures/golden/pipeline).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pixart"))
}

fn pipeline() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/pipeline")
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pixart-gen-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn generate(args: &[&str]) -> Output {
    bin()
        .arg("generate")
        .arg("--model")
        .arg(pipeline())
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn cases() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(pipeline().join("cases.safetensors"), &Device::Cpu).unwrap()
}

fn write_latents(dir: &Path, t: &Tensor) -> PathBuf {
    let p = dir.join("x_t.safetensors");
    candle_core::safetensors::save(&HashMap::from([("latents".to_string(), t.clone())]), &p).unwrap();
    p
}

#[test]
fn latent_output_matches_diffusers() {
    let dir = tempdir("latent");
    let io = cases();
    let x_t = write_latents(&dir, &io["cfg_binned.latents_in"]);
    let out = dir.join("final.safetensors");
    let o = generate(&[
        "-p",
        "  A small Cactus with a happy face in the Sahara desert. ",
        "--width",
        "136",
        "--height",
        "96",
        "--steps",
        "4",
        "--guidance",
        "4.5",
        "--latents",
        x_t.to_str().unwrap(),
        "--output-type",
        "latent",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("peak RSS"), "{}", stderr(&o));
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let want = &io["cfg_binned.latents_out"];
    let diff = (&got["latents"] - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff / scale < 1e-4, "relative diff {}", diff / scale);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn png_batch_with_parameters() {
    let dir = tempdir("png");
    let out = dir.join("cat.png");
    let o = generate(&[
        "-p",
        "a cat",
        "-n",
        "blurry",
        "--width",
        "64",
        "--height",
        "48",
        "--no-resolution-binning",
        "--steps",
        "2",
        "--scheduler",
        "euler-a",
        "--seed",
        "5",
        "--batch",
        "2",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (name, seed) in [("cat.png", 5), ("cat-1.png", 6)] {
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(dir.join(name)).unwrap()));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (64, 48));
        let text = &info.uncompressed_latin1_text;
        let params = text
            .iter()
            .find(|t| t.keyword == "parameters")
            .expect("parameters chunk");
        assert!(
            params.text.starts_with("a cat\nNegative prompt: blurry\nSteps: 2"),
            "{}",
            params.text
        );
        assert!(params.text.contains(&format!("Seed: {seed}")), "{}", params.text);
    }
    assert!(!dir.join("cat-2.png").exists());
    // A prompt past 300 tokens is cut, with a warning.
    let long = "cat ".repeat(400);
    let o = generate(&[
        "-p",
        &long,
        "--steps",
        "1",
        "--output-type",
        "latent",
        "-o",
        dir.join("l.st").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning: prompt 1 is longer than 300 tokens"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let dir = tempdir("usage");
    let out = dir.join("x.png");
    let o = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-p", "x", "--scheduler", "lms", "-o", o], "unknown sampler"),
        (vec!["-p", "x", "--steps", "0", "-o", o], "steps"),
        (vec!["-p", "x", "--guidance", "nan", "-o", o], "finite"),
        (
            vec![
                "-p",
                "x",
                "--width",
                "72",
                "--height",
                "64",
                "--no-resolution-binning",
                "-o",
                o,
            ],
            "multiples of 16",
        ),
        (vec!["-p", "x", "--vae-tiling", "maybe", "-o", o], "tiling"),
        (vec!["-p", "x", "--kv-compress", "conv:2:9", "-o", o], "--kv-compress"),
        (vec!["-p", "x", "--batch", "0", "-o", o], "--batch"),
    ];
    for (args, needle) in cases {
        let r = generate(&args);
        let e = stderr(&r);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains(needle), "{args:?}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{args:?}: {e}");
    }
    // A transformer-only folder without --base: the missing component is named.
    let r = bin()
        .args(["generate", "-p", "x", "-o", o, "--model"])
        .arg(pipeline().join("transformer"))
        .output()
        .unwrap();
    let e = stderr(&r);
    assert_eq!(r.status.code(), Some(2), "{e}");
    assert!(e.contains("missing component `text_encoder`"), "{e}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn hub_id_from_hf_home() {
    let dir = tempdir("hub");
    let repo = dir.join("hub/models--pixart-test--tiny");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc").unwrap();
    let snap = repo.join("snapshots/abc");
    for sub in ["transformer", "text_encoder", "tokenizer", "vae", "scheduler"] {
        std::fs::create_dir_all(snap.join(sub)).unwrap();
        for e in std::fs::read_dir(pipeline().join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), snap.join(sub).join(e.file_name())).unwrap();
        }
    }
    std::fs::copy(pipeline().join("model_index.json"), snap.join("model_index.json")).unwrap();
    let out = dir.join("hub.safetensors");
    let o = bin()
        .current_dir(&dir)
        .env("HF_HOME", &dir)
        .env_remove("HF_HUB_CACHE")
        .env("HF_HUB_OFFLINE", "1")
        .args([
            "generate",
            "--model",
            "pixart-test/tiny",
            "-p",
            "x",
            "--steps",
            "1",
            "--width",
            "64",
        ])
        .args([
            "--height",
            "64",
            "--no-resolution-binning",
            "--output-type",
            "latent",
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.is_file());
    let o = bin()
        .current_dir(&dir)
        .env("HF_HOME", &dir)
        .env_remove("HF_HUB_CACHE")
        .args(["generate", "--model", "pixart-test/absent", "-p", "x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("HF cache"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn original_pth_checkpoint_with_base() {
    let dir = tempdir("pth");
    let out = dir.join("pth.safetensors");
    let pth = pipeline().join("../transformer/base/original.pth");
    let o = bin()
        .arg("generate")
        .arg("--model")
        .arg(&pth)
        .arg("--base")
        .arg(pipeline())
        .args([
            "-p",
            "x",
            "--steps",
            "2",
            "--width",
            "32",
            "--height",
            "48",
            "--no-resolution-binning",
        ])
        .args(["--output-type", "latent", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert_eq!(got["latents"].dims(), [1, 4, 6, 4]);
    // Without --base the missing parts are named.
    let o = bin()
        .arg("generate")
        .arg("--model")
        .arg(&pth)
        .args(["-p", "x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--base"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn kv_compression_and_tiling_flags_run() {
    let dir = tempdir("kv");
    let out = dir.join("kv.png");
    let o = generate(&[
        "-p",
        "x",
        "--steps",
        "1",
        "--width",
        "64",
        "--height",
        "64",
        "--no-resolution-binning",
        "--kv-compress",
        "uniform:2:1",
        "--vae-tiling",
        "on",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.is_file());
    std::fs::remove_dir_all(&dir).ok();
}
