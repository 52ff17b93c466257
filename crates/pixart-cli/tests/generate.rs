//! `pixart generate` end to end on the tiny golden pipeline (fixtures/golden/pipeline).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

mod common;

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

/// Runs `cmd` (a `generate` with its --model) on the golden case `cfg_binned` from its initial
/// latents and checks the final latents against diffusers'.
fn check_golden_latents(mut cmd: Command, dir: &Path) -> Output {
    let io = cases();
    let x_t = write_latents(dir, &io["cfg_binned.latents_in"]);
    let out = dir.join("final.safetensors");
    let o = cmd
        .args([
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
            "--output-type",
            "latent",
            "--latents",
        ])
        .arg(&x_t)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
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
    o
}

#[test]
fn latent_output_matches_diffusers() {
    let dir = tempdir("latent");
    let mut cmd = bin();
    cmd.arg("generate").arg("--model").arg(pipeline());
    check_golden_latents(cmd, &dir);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn png_batch_with_parameters() {
    let dir = tempdir("png");
    let out = dir.join("cat.png");
    let request = [
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
    ];
    let o = generate(&[&request[..], &["--batch", "2", "-o", out.to_str().unwrap()]].concat());
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

    // `--seed -1` is a random seed (as A1111 takes it), printed and stored as a number.
    let random = dir.join("random.png");
    let o = generate(
        &[
            &request[..request.len() - 2],
            &["--seed", "-1", "-o", random.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&random).unwrap()));
    let reader = decoder.read_info().unwrap();
    let params = &reader.info().uncompressed_latin1_text;
    let text = &params.iter().find(|t| t.keyword == "parameters").unwrap().text;
    let seed = text
        .split("Seed: ")
        .nth(1)
        .and_then(|t| t.split([',', '\n']).next())
        .unwrap();
    assert!(seed.parse::<u64>().is_ok(), "{text}");
    assert!(stderr(&o).contains(&format!("seed {seed}")), "{}", stderr(&o));
    // The same first image as a JPEG (by the name's extension, any case), the parameters in
    // a COM segment.
    let jpg = dir.join("cat.JPG");
    let o = generate(&[&request[..], &["-o", jpg.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let (dims, diff, text) = common::jpeg_against_png(
        &std::fs::read(&jpg).unwrap(),
        &std::fs::read(dir.join("cat.png")).unwrap(),
    );
    assert_eq!(dims, (64, 48));
    assert!(diff < 8.0, "mean |JPEG - PNG| = {diff}");
    assert!(text.starts_with("a cat\nNegative prompt: blurry\nSteps: 2"), "{text}");
    // As a lossless WebP: the PNG's pixels exactly, the parameters in XMP.
    let webp = dir.join("cat.webp");
    let o = generate(&[&request[..], &["-o", webp.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&webp).unwrap();
    assert_eq!(&bytes[8..12], b"WEBP");
    let back = pixart_pipeline::RgbImage::decode(&bytes, "cat.webp").unwrap();
    let png = pixart_pipeline::RgbImage::decode(&std::fs::read(dir.join("cat.png")).unwrap(), "cat.png").unwrap();
    assert_eq!(back, png);
    let xmp = String::from_utf8_lossy(&bytes);
    assert!(
        xmp.contains("a cat\nNegative prompt: blurry\nSteps: 2"),
        "no parameters in the XMP"
    );
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
    let lora = dir.join("style.safetensors");
    std::fs::write(&lora, b"not read: the scale is wrong first").unwrap();
    let lora_abc = format!("{}:abc", lora.display());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-p", "x", "--scheduler", "lms", "-o", o], "unknown sampler"),
        (vec!["-p", "x", "--steps", "0", "-o", o], "steps"),
        (vec!["-p", "x", "--guidance", "nan", "-o", o], "finite"),
        // The engine's range, the server's too (it used to run with any finite guidance).
        (
            vec!["-p", "x", "--guidance", "-3", "-o", o],
            "--guidance must be between 0 and 50, got -3",
        ),
        (
            vec!["-p", "x", "--guidance", "1e30", "-o", o],
            "--guidance must be between 0 and 50",
        ),
        (
            vec!["-p", "x", "--steps", "1001", "-o", o],
            "--steps 1001 is more than 1000",
        ),
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
        (
            vec!["-p", "x", "-o", "x.gif"],
            "x.gif: cannot write .gif images; name the output .png, .jpg or .webp",
        ),
        (
            vec!["-p", "x", "--jpeg-quality", "0", "-o", o],
            "--jpeg-quality 0 must be between 1 and 100",
        ),
        (vec!["-p", "x", "--device", "tpu", "-o", o], "unknown device `tpu`"),
        // Negative numbers are values, not unknown flags (they used to be read as flags).
        (vec!["-p", "x", "--width", "-64", "-o", o], "'--width <WIDTH>'"),
        (vec!["-p", "x", "--steps", "-3", "-o", o], "'--steps <STEPS>'"),
        (
            vec!["-p", "x", "--seed", "-2", "-o", o],
            "give 0 to 18446744073709551615 or -1",
        ),
        // Output paths that used to fail only after the work.
        (vec!["-p", "x", "-o", "newdir/"], "newdir/: names a folder"),
        (vec!["-p", "x", "-o", "/proc/version"], "/proc/version"),
        // A LoRA scale that is not a number (it used to be reported as a missing file).
        (
            vec!["-p", "x", "--lora", lora_abc.as_str(), "-o", o],
            "the LoRA scale \"abc\" is not a number",
        ),
        // Latents under an image's name (they used to be written as safetensors named x.png).
        (
            vec!["-p", "x", "--output-type", "latent", "-o", o],
            "--output-type latent writes safetensors, not an image; name the output .safetensors",
        ),
        (
            vec!["-p", "x", "--device", "cuda:x", "-o", o],
            "unknown device `cuda:x`",
        ),
    ];
    let mut cases = cases;
    if !cfg!(feature = "cuda") {
        cases.push((vec!["-p", "x", "--device", "cuda", "-o", o], "built without CUDA"));
        cases.push((vec!["-p", "x", "--device", "cuda:1", "-o", o], "built without CUDA"));
    }
    for (args, needle) in cases {
        let r = generate(&args);
        let e = stderr(&r);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains(needle), "{args:?}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{args:?}: {e}");
    }
    // Offline, with an empty Hugging Face cache.
    let offline = |model: &Path| {
        bin()
            .args(["generate", "-p", "x", "-o", o, "--model"])
            .arg(model)
            .env("HF_HOME", dir.join("empty-hf-home"))
            .env_remove("HF_HUB_CACHE")
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    // A mistyped local --model is named as such; the default base is not looked up for it.
    let r = offline(&dir.join("no-such-model"));
    let e = stderr(&r);
    assert_eq!(r.status.code(), Some(2), "{e}");
    assert!(e.contains("no-such-model: no such model folder or file"), "{e}");
    assert!(!e.contains("--base"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    // A file that is no checkpoint is named before the base is looked up for it.
    let picture = dir.join("notimage.png");
    std::fs::write(
        &picture,
        pixart_pipeline::RgbImage::filled(2, 2, [0; 3]).to_png(None).unwrap(),
    )
    .unwrap();
    let r = offline(&picture);
    let e = stderr(&r);
    assert_eq!(r.status.code(), Some(2), "{e}");
    assert!(e.contains("notimage.png: unknown weight file type"), "{e}");
    assert!(!e.contains("--base"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    // A transformer-only folder without --base takes the rest from the default base, which is
    // not in an empty cache (offline: nothing is requested); the message names it.
    let r = offline(&pipeline().join("transformer"));
    let e = stderr(&r);
    assert_eq!(r.status.code(), Some(2), "{e}");
    assert!(
        e.contains("PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers") && e.contains("default --base"),
        "{e}"
    );
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn hub_id_from_hf_home() {
    let dir = tempdir("hub");
    cache_repo(
        &dir,
        "pixart-test--tiny",
        &["transformer", "text_encoder", "tokenizer", "vae", "scheduler"],
    );
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
        .env("HF_HUB_OFFLINE", "1")
        .args(["generate", "--model", "pixart-test/absent", "-p", "x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("HF cache"), "{}", stderr(&o));

    // A transformer-only model takes the rest from the default base, here from the cache.
    cache_repo(
        &dir,
        "PixArt-alpha--pixart_sigma_sdxlvae_T5_diffusers",
        &["text_encoder", "tokenizer", "vae", "scheduler"],
    );
    let out = dir.join("default-base.safetensors");
    let o = bin()
        .env("HF_HOME", &dir)
        .env_remove("HF_HUB_CACHE")
        .env("HF_HUB_OFFLINE", "1")
        .args(["generate", "-p", "x", "--steps", "1", "--width", "64", "--height", "64"])
        .args(["--no-resolution-binning", "--output-type", "latent", "--model"])
        .arg(pipeline().join("transformer"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.is_file());
    std::fs::remove_dir_all(&dir).ok();
}

/// Lays out the test pipeline's `subs` as the HF cache (`$HF_HOME/hub`) holds repo `name`
/// (`owner--repo`) at revision `abc` (main).
fn cache_repo(home: &Path, name: &str, subs: &[&str]) {
    let repo = home.join(format!("hub/models--{name}"));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc").unwrap();
    let snap = repo.join("snapshots/abc");
    for sub in subs {
        std::fs::create_dir_all(snap.join(sub)).unwrap();
        for e in std::fs::read_dir(pipeline().join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), snap.join(sub).join(e.file_name())).unwrap();
        }
    }
    std::fs::copy(pipeline().join("model_index.json"), snap.join("model_index.json")).unwrap();
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
    // Without --base the default base is wanted (offline and not cached here), and named.
    let o = bin()
        .arg("generate")
        .arg("--model")
        .arg(&pth)
        .args(["-p", "x"])
        .env("HF_HOME", dir.join("empty-hf-home"))
        .env_remove("HF_HUB_CACHE")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("default --base"), "{}", stderr(&o));
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

#[path = "../../pixart-pipeline/tests/support/fake_hub.rs"]
mod fake_hub;

/// `pixart` with the hub environment of a test: cache in `home`, hub at `endpoint`, no token,
/// no proxy (ureq 2 ignores NO_PROXY).
fn with_hub_env(home: &Path, endpoint: &str) -> Command {
    let mut cmd = bin();
    cmd.current_dir(home).env("HF_HOME", home).env("HF_ENDPOINT", endpoint);
    for v in [
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HF_TOKEN",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    cmd
}

#[test]
fn hub_id_downloaded_then_generated() {
    let sha = "89abcdef0123456789abcdef0123456789abcdef";
    let hub = fake_hub::FakeHub::start(vec![fake_hub::FakeRepo::from_dir("pixart-test/tiny", sha, &pipeline())]);
    let home = tempdir("hub-download");
    // Online: the files land in HF_HOME/hub, then the generation matches diffusers.
    let mut cmd = with_hub_env(&home, &hub.url);
    cmd.args(["generate", "--model", "pixart-test/tiny"]);
    let o = check_golden_latents(cmd, &home);
    let e = stderr(&o);
    assert!(
        e.contains("downloading pixart-test/tiny/transformer/diffusion_pytorch_model.safetensors"),
        "{e}"
    );
    assert!(e.contains("downloaded pixart-test/tiny/vae/config.json"), "{e}");
    let snap = home.join("hub/models--pixart-test--tiny/snapshots").join(sha);
    assert!(snap.join("tokenizer/spiece.model").is_file());
    assert!(
        !snap.join("cases.safetensors").exists(),
        "golden cases are not part of a pipeline"
    );
    assert_eq!(hub.downloads_of("cases.safetensors"), 0);

    // The hub gone: the cache serves, with a note.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let out = home.join("again.safetensors");
    let run = |mut cmd: Command, out: &Path| {
        cmd.args(["generate", "--model", "pixart-test/tiny", "-p", "x", "--steps", "1"])
            .args(["--width", "32", "--height", "32", "--no-resolution-binning"])
            .args(["--output-type", "latent", "-o"])
            .arg(out)
            .output()
            .unwrap()
    };
    let o = run(with_hub_env(&home, &closed), &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("note: cannot reach the Hugging Face hub"),
        "{}",
        stderr(&o)
    );

    // An empty cache and no hub: exit 1, one line.
    let empty = tempdir("hub-empty");
    let out = empty.join("none.safetensors");
    let o = run(with_hub_env(&empty, &closed), &out);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.starts_with("error: cannot reach the Hugging Face hub ("), "{e}");
    assert!(e.contains("set HF_HUB_OFFLINE=1 to use only the cache"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    // Offline with an empty cache: exit 2 naming the repo; the hub is not asked.
    let before = hub.requests().len();
    let mut cmd = with_hub_env(&empty, &hub.url);
    cmd.env("HF_HUB_OFFLINE", "1");
    let o = run(cmd, &out);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("`pixart-test/tiny` is not in the HF cache"), "{e}");
    assert_eq!(hub.requests().len(), before);
    assert!(!out.exists());
    std::fs::remove_dir_all(&home).ok();
    std::fs::remove_dir_all(&empty).ok();
}

#[test]
fn device_auto_runs_without_a_gpu() {
    let dir = tempdir("auto");
    let out = dir.join("auto.safetensors");
    let o = generate(&[
        "-p",
        "x",
        "--device",
        "auto",
        "--steps",
        "1",
        "--width",
        "32",
        "--height",
        "32",
        "--no-resolution-binning",
        "--output-type",
        "latent",
        "-o",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    // A CPU build always falls back to the CPU; a CUDA build uses the GPU when there is one.
    if !cfg!(feature = "cuda") {
        assert!(e.contains(" on cpu"), "{e}");
    }
    assert!(out.is_file());
    std::fs::remove_dir_all(&dir).ok();
}

/// A copy of the golden pipeline to break one file of.
fn pipeline_copy(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(pipeline()).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_dir() {
            std::fs::create_dir_all(to.join(entry.file_name())).unwrap();
            for f in std::fs::read_dir(entry.path()).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), to.join(entry.file_name()).join(f.file_name())).unwrap();
            }
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    to
}

/// Rewrites one tensor of a safetensors file.
fn edit_tensor(file: &Path, name: &str, edit: impl FnOnce(&Tensor) -> Tensor) {
    let mut map = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    let t = edit(&map[name]);
    map.insert(name.to_string(), t);
    candle_core::safetensors::save(&map, file).unwrap();
}

/// Broken inputs and model files are refused before the work, in one line naming the file at
/// fault (exit 2); NaN spreading from a weight stops the run instead of writing a black image,
/// naming the weight file and tensor that holds it (exit 2: the file is bad). Nothing is
/// written at the output path in any case.
#[test]
fn broken_inputs_and_files_are_named() {
    let dir = tempdir("broken");
    let out = dir.join("x.png");
    let o = out.to_str().unwrap();
    let small = [
        "--width",
        "32",
        "--height",
        "32",
        "--no-resolution-binning",
        "--steps",
        "2",
    ];
    let run = |model: &Path, extra: &[&str]| {
        let r = bin()
            .args(["generate", "-p", "x", "-o", o, "--model"])
            .arg(model)
            .args(small)
            .args(extra)
            .output()
            .unwrap();
        (r.status.code(), stderr(&r))
    };
    let check = |(code, e): (Option<i32>, String), want: i32, needles: &[&str]| {
        assert_eq!(code, Some(want), "{e}");
        assert_eq!(
            e.trim_end().lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{e}"
        );
        for n in needles {
            assert!(e.contains(n), "{n:?} not in {e}");
        }
        assert!(!out.exists(), "{e}");
    };
    let shape = [1, 4, 4, 4];
    // --latents: NaN values, an integer dtype.
    let nan = Tensor::full(f32::NAN, &shape[..], &Device::Cpu).unwrap();
    let p = write_latents(&dir, &nan);
    check(
        run(&pipeline(), &["--latents", p.to_str().unwrap()]),
        2,
        &["`latents`", "NaN"],
    );
    let ints = Tensor::zeros(&shape[..], candle_core::DType::I64, &Device::Cpu).unwrap();
    let p = write_latents(&dir, &ints);
    check(
        run(&pipeline(), &["--latents", p.to_str().unwrap()]),
        2,
        &["`latents` is I64"],
    );
    // A folder where the second image would go: refused before the work.
    std::fs::create_dir(dir.join("x-1.png")).unwrap();
    check(run(&pipeline(), &["--batch", "2"]), 2, &["x-1.png: is a folder"]);
    // More images than one run makes, and an overflowing count.
    check(run(&pipeline(), &["--batch", "65"]), 2, &["more than 64 images"]);
    check(
        run(&pipeline(), &["--batch", "18446744073709551615"]),
        2,
        &["more than 64 images"],
    );

    // A NaN weight: the denoising loop stops at the first step, and the file is named (it used
    // to exit 1, as if the run had failed).
    let m = pipeline_copy(&dir, "nan-weight");
    edit_tensor(
        &m.join("transformer/diffusion_pytorch_model.safetensors"),
        "proj_out.bias",
        |t| t.affine(0.0, f64::NAN).unwrap(),
    );
    check(
        run(&m, &[]),
        2,
        &[
            "transformer/diffusion_pytorch_model.safetensors: tensor `proj_out.bias` holds NaN",
            "the latents after step 1 of 2 hold NaN",
        ],
    );
    // ... in the VAE's decoder: named when the decoded pixels turn NaN.
    let m = pipeline_copy(&dir, "nan-vae");
    edit_tensor(
        &m.join("vae/diffusion_pytorch_model.safetensors"),
        "decoder.conv_out.bias",
        |t| t.affine(0.0, f64::NAN).unwrap(),
    );
    check(
        run(&m, &[]),
        2,
        &["vae/diffusion_pytorch_model.safetensors: tensor `decoder.conv_out.bias` holds NaN"],
    );
    // A model_index.json that is not JSON: named, not ignored.
    let m = pipeline_copy(&dir, "bad-index");
    std::fs::write(m.join("model_index.json"), "{\"_class_name\": \"PixArtSigmaPipeline\",").unwrap();
    check(run(&m, &[]), 2, &["model_index.json", "invalid config"]);
    // An integer weight.
    let m = pipeline_copy(&dir, "int-weight");
    edit_tensor(
        &m.join("vae/diffusion_pytorch_model.safetensors"),
        "decoder.conv_in.bias",
        |t| t.to_dtype(candle_core::DType::I64).unwrap(),
    );
    check(run(&m, &[]), 2, &["`decoder.conv_in.bias` is I64"]);
    // Another component's config, an absurd size, a scheduler value no sampler runs with.
    let m = pipeline_copy(&dir, "swapped-config");
    std::fs::copy(m.join("vae/config.json"), m.join("transformer/config.json")).unwrap();
    check(
        run(&m, &[]),
        2,
        &["transformer/config.json", "`_class_name` is `AutoencoderKL`"],
    );
    let m = pipeline_copy(&dir, "huge");
    let cfg = std::fs::read_to_string(m.join("transformer/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["num_layers"] = serde_json::json!(1_000_000_000_000u64);
    std::fs::write(m.join("transformer/config.json"), v.to_string()).unwrap();
    check(run(&m, &[]), 2, &["`num_layers` is 1000000000000"]);
    let m = pipeline_copy(&dir, "scheduler");
    let cfg = std::fs::read_to_string(m.join("scheduler/scheduler_config.json")).unwrap();
    assert!(cfg.contains("\"_class_name\": \"DPMSolverMultistepScheduler\""));
    let cfg = cfg.replace("\"solver_order\": 2", "\"solver_order\": 0");
    std::fs::write(m.join("scheduler/scheduler_config.json"), cfg).unwrap();
    check(run(&m, &[]), 2, &["scheduler_config.json", "solver_order"]);
    // A LoRA of another model's width names the LoRA, not the base model.
    let lora = dir.join("lora.safetensors");
    let a = Tensor::zeros((2, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros((32, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let map = HashMap::from([
        ("transformer_blocks.0.attn1.to_q.lora_A.weight".to_string(), a),
        ("transformer_blocks.0.attn1.to_q.lora_B.weight".to_string(), b),
    ]);
    candle_core::safetensors::save(&map, &lora).unwrap();
    check(
        run(&pipeline(), &["--lora", lora.to_str().unwrap()]),
        2,
        &[
            "lora.safetensors: LoRA adapters of another model's sizes",
            "to_q.weight",
        ],
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `--scheduler iddpm`: PixArt's 100 steps by default, named in the PNG's parameters; a
/// transformer without learned sigma (out_channels = in_channels) is refused before the work.
#[test]
fn iddpm_sampler_defaults_and_needs_learned_sigma() {
    let dir = tempdir("iddpm");
    let out = dir.join("i.png");
    let size = [
        "--width",
        "32",
        "--height",
        "32",
        "--no-resolution-binning",
        "--seed",
        "1",
    ];
    let o = generate(
        &[
            &size[..],
            &["-p", "a cat", "--scheduler", "iddpm", "-o", out.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("100 steps") && stderr(&o).contains("sampler iddpm"),
        "{}",
        stderr(&o)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
    let reader = decoder.read_info().unwrap();
    let params = reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .expect("parameters chunk")
        .text
        .clone();
    assert!(
        params.contains("Steps: 100") && params.contains("Sampler: iddpm"),
        "{params}"
    );

    // The same transformer cut to its first 4 output channels (no variance).
    let m = pipeline_copy(&dir, "fixed-sigma");
    let cfg = std::fs::read_to_string(m.join("transformer/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["out_channels"] = serde_json::json!(4);
    std::fs::write(m.join("transformer/config.json"), v.to_string()).unwrap();
    let weights = m.join("transformer/diffusion_pytorch_model.safetensors");
    // proj_out rows are (p, q, c) with c fastest: keep c < 4 of each of the 2x2 patch positions.
    let keep = |t: &Tensor| {
        let rows = t.dims()[0];
        let parts: Vec<Tensor> = (0..rows / 8).map(|k| t.narrow(0, 8 * k, 4).unwrap()).collect();
        Tensor::cat(&parts, 0).unwrap()
    };
    edit_tensor(&weights, "proj_out.weight", keep);
    edit_tensor(&weights, "proj_out.bias", keep);
    let bad = dir.join("bad.png");
    let run = |sampler: &str| {
        bin()
            .args([
                "generate",
                "-p",
                "x",
                "--steps",
                "2",
                "-o",
                bad.to_str().unwrap(),
                "--model",
            ])
            .arg(&m)
            .args(size)
            .args(["--scheduler", sampler])
            .output()
            .unwrap()
    };
    let o = run("iddpm");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("sampler iddpm") && e.contains("out_channels 4"), "{e}");
    assert_eq!(e.lines().filter(|l| l.starts_with("error:")).count(), 1, "{e}");
    assert!(!bad.exists());
    // Other samplers run it.
    let o = run("ddpm");
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}

/// `--image` / `--strength`: image to image at the image's own size by default, the strength
/// in the banner and the parameters; bad values and files are usage errors naming them.
#[test]
fn image_to_image_flags() {
    let dir = tempdir("img2img");
    let init = pipeline().join("img2img_init.png"); // 64x48
    let out = dir.join("i.png");
    let o = generate(&[
        "-p",
        "a cat",
        "--image",
        init.to_str().unwrap(),
        "--strength",
        "0.5",
        "--steps",
        "10",
        "--seed",
        "3",
        "-o",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("5 of 10 steps (image to image, strength 0.5)"), "{e}");
    assert!(e.contains("step 5/5") && !e.contains("step 6/"), "{e}");
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
    let reader = decoder.read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (64, 48));
    let params = &reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .unwrap()
        .text;
    assert!(
        params.contains("Steps: 10") && params.contains("Denoising strength: 0.5"),
        "{params}"
    );

    // Inpainting with the mask of the fixtures.
    let mask = pipeline().join("img2img_mask.png");
    let o = generate(&[
        "-p",
        "a cat",
        "--image",
        init.to_str().unwrap(),
        "--mask",
        mask.to_str().unwrap(),
        "--strength",
        "1",
        "--steps",
        "4",
        "-o",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("4 of 4 steps (inpainting, strength 1)"), "{e}");
    let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()))
        .read_info()
        .unwrap();
    let text = &reader.info().uncompressed_latin1_text;
    let params = &text.iter().find(|t| t.keyword == "parameters").unwrap().text;
    assert!(params.contains("Denoising strength: 1, Inpainting: true"), "{params}");

    let bad = dir.join("bad.png");
    let not_image = dir.join("notes.txt");
    std::fs::write(&not_image, "hello").unwrap();
    let latents = dir.join("l.safetensors");
    std::fs::write(&latents, "x").unwrap();
    let img = init.to_str().unwrap();
    let small = dir.join("small.png");
    let white = pixart_pipeline::RgbImage::filled(16, 16, [255; 3]);
    std::fs::write(&small, white.to_png(None).unwrap()).unwrap();
    for (args, needle) in [
        (
            vec!["--image", img, "--strength", "0"],
            "--strength must be in (0, 1], got 0",
        ),
        (
            vec!["--image", img, "--strength", "1.5"],
            "--strength must be in (0, 1]",
        ),
        (
            vec!["--image", img, "--strength", "0.05", "--steps", "10"],
            "leaves no step to run",
        ),
        (vec!["--strength", "0.5"], "--image"),
        (
            vec!["--image", not_image.to_str().unwrap()],
            "notes.txt: not a readable PNG, JPEG or WebP image",
        ),
        (
            vec!["--image", dir.join("missing.png").to_str().unwrap()],
            "missing.png",
        ),
        (
            vec!["--image", img, "--latents", latents.to_str().unwrap()],
            "--latents",
        ),
        (vec!["--mask", img], "--image"),
        (
            vec!["--image", img, "--mask", small.to_str().unwrap()],
            "the mask is 16x16 but the image is 64x48",
        ),
    ] {
        let o = generate(&[&["-p", "x", "-o", bad.to_str().unwrap()], &args[..]].concat());
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains(needle), "{args:?}: {e}");
        assert!(!bad.exists());
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A model whose scheduler_config.json names `LCMScheduler` runs 4 LCM steps without
/// classifier-free guidance unless told otherwise.
#[test]
fn lcm_model_defaults_to_four_steps_without_guidance() {
    let dir = tempdir("lcm");
    let m = pipeline_copy(&dir, "lcm-model");
    std::fs::write(
        m.join("scheduler/scheduler_config.json"),
        r#"{"_class_name": "LCMScheduler", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
            "original_inference_steps": 50, "timestep_scaling": 10.0, "clip_sample": false}"#,
    )
    .unwrap();
    let out = dir.join("l.png");
    let run = |extra: &[&str]| {
        bin()
            .args([
                "generate",
                "-p",
                "a cat",
                "--width",
                "32",
                "--height",
                "32",
                "--no-resolution-binning",
            ])
            .args(["-o", out.to_str().unwrap(), "--model"])
            .arg(&m)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("4 steps, guidance 0,") && e.contains("sampler lcm"), "{e}");
    let o = run(&["--scheduler", "dpm++"]);
    let e = stderr(&o);
    assert!(o.status.success() && e.contains("20 steps, guidance 4.5,"), "{e}");
    let o = run(&["--steps", "60"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("more than the 50 steps of the distillation schedule"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn preview_file_is_written_while_denoising() {
    let dir = tempdir("preview");
    let (out, preview) = (dir.join("out.png"), dir.join("live.png"));
    let o = generate(&[
        "-p",
        "a boat",
        "--width",
        "128",
        "--height",
        "96",
        "--batch",
        "2",
        "--steps",
        "4",
        "--seed",
        "1",
        "-o",
        out.to_str().unwrap(),
        "--preview",
        preview.to_str().unwrap(),
        "--preview-every",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    // Stderr is not a terminal here: a line per preview.
    assert!(
        err.contains("preview after step 2/4") && err.contains("preview after step 4/4"),
        "{err}"
    );
    assert!(
        !err.contains("preview after step 1/4") && !err.contains("preview after step 3/4"),
        "{err}"
    );
    let img = image::open(&preview).unwrap().to_rgb8();
    // The batch side by side, at the output size; after the last step it is the images.
    assert_eq!(img.dimensions(), (256, 96));
    let first = image::open(&out).unwrap().to_rgb8();
    let second = image::open(dir.join("out-1.png")).unwrap().to_rgb8();
    let (w, h) = first.dimensions();
    let same = |x0: u32, im: &image::RgbImage| {
        (0..h).all(|y| {
            (0..w).all(|x| {
                let (a, b) = (img.get_pixel(x0 + x, y).0, im.get_pixel(x, y).0);
                a.iter().zip(b).all(|(p, q)| p.abs_diff(q) <= 1)
            })
        })
    };
    assert!(same(0, &first) && same(w, &second));

    for (args, needle) in [
        (
            vec!["--preview", "p.png", "--preview-every", "0"],
            "--preview-every must be at least 1",
        ),
        (vec!["--preview", "p.jpg"], "previews are PNG"),
        (vec!["--preview-every", "2"], "--preview"),
    ] {
        usage_error_with(&args, needle);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn prompts_file_runs_each_prompt_and_matches_one_batch() {
    let dir = tempdir("prompts-file");
    let file = dir.join("prompts.txt");
    std::fs::write(&file, "# two prompts\na red boat\n\n  a small cat at night  \n").unwrap();
    let common = [
        "--width", "128", "--height", "96", "--steps", "3", "--seed", "5", "--batch", "2",
    ];
    let from_file = dir.join("file.png");
    let o = generate(
        &[
            &common[..],
            &[
                "--prompts-file",
                file.to_str().unwrap(),
                "-o",
                from_file.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("prompt 1/2: a red boat") && err.contains("prompt 2/2: a small cat at night"),
        "{err}"
    );
    // T5 is loaded once, with the model, not for each prompt.
    assert_eq!(err.matches("load text encoder").count(), 0, "{err}");
    let together = dir.join("together.png");
    let o = generate(
        &[
            &common[..],
            &[
                "-p",
                "a red boat",
                "-p",
                "a small cat at night",
                "-o",
                together.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Image k of the file is image k of one run with both prompts: the same bytes,
    // parameters (prompt, seed) included.
    for k in 0..4 {
        let name = |stem: &str| {
            if k == 0 {
                format!("{stem}.png")
            } else {
                format!("{stem}-{k}.png")
            }
        };
        let (a, b) = (
            std::fs::read(dir.join(name("file"))).unwrap(),
            std::fs::read(dir.join(name("together"))).unwrap(),
        );
        assert!(a == b, "image {k} differs");
    }
    assert!(!dir.join("file-4.png").exists());

    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "# nothing\n\n").unwrap();
    for (args, needle) in [
        (vec!["--prompts-file", empty.to_str().unwrap()], "holds no prompt"),
        (
            vec!["--prompts-file", "/nonexistent/prompts.txt"],
            "/nonexistent/prompts.txt",
        ),
        (vec!["--prompts-file", dir.to_str().unwrap()], "is a folder"),
        (vec!["--prompts-file", file.to_str().unwrap(), "-p", "x"], "--prompt"),
        (vec![], "--prompt"),
    ] {
        let o = generate(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn from_an_image_repeats_its_generation() {
    let dir = tempdir("from");
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let settings = [
        "-p",
        "a boat\non a lake",
        "-n",
        "fog, rain",
        "--steps",
        "3",
        "--guidance",
        "3.5",
        "--seed",
        "4",
        "--scheduler",
        "ddim",
        "--width",
        "128",
        "--height",
        "96",
    ];
    let o = generate(&[&settings[..], &["-o", &p("a.png")]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = generate(&[&settings[..], &["-o", &p("a.jpg")]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    // The model is named as the server names it: the folder's name, never its path.
    let text = pixart_pipeline::read_parameters(&std::fs::read(dir.join("a.png")).unwrap(), "a.png")
        .unwrap()
        .unwrap();
    assert!(text.contains("Model: pipeline, "), "{text}");
    let full = pipeline().canonicalize().unwrap();
    assert!(!text.contains(full.to_str().unwrap()), "{text}");
    // Everything from the PNG (the model too: a folder of that name where it runs): the same file.
    let o = bin()
        .current_dir(pipeline().parent().unwrap())
        .args(["generate", "--from", &p("a.png"), "-o", &p("b.png")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("settings from"), "{}", stderr(&o));
    assert!(std::fs::read(dir.join("a.png")).unwrap() == std::fs::read(dir.join("b.png")).unwrap());
    // From the JPEG's comment, with the seed overridden: what the flags alone make.
    let o = generate(&["--from", &p("a.jpg"), "--seed", "5", "-o", &p("c.png")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut direct = settings.to_vec();
    direct[9] = "5";
    let o = generate(&[&direct[..], &["-o", &p("d.png")]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(dir.join("c.png")).unwrap() == std::fs::read(dir.join("d.png")).unwrap());

    // A picture without parameters, a missing file, a folder.
    std::fs::write(
        dir.join("plain.png"),
        pixart_pipeline::RgbImage::filled(4, 4, [0, 0, 0]).to_png(None).unwrap(),
    )
    .unwrap();
    for (from, needle) in [
        (p("plain.png"), "holds no generation parameters"),
        (p("missing.png"), "missing.png"),
        (p(""), "is a folder"),
    ] {
        let o = generate(&["--from", &from]);
        assert_eq!(o.status.code(), Some(2), "{from}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{from}: {}", stderr(&o));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn upscale_is_image_to_image_at_the_larger_size() {
    let dir = tempdir("upscale");
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let first = [
        "-p", "a boat", "--width", "128", "--height", "96", "--steps", "3", "--seed", "2",
    ];
    let o = generate(
        &[
            &first[..],
            &["--upscale", "2", "--upscale-strength", "0.5", "-o", &p("up.png")],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("upscale 1/1: 128x96 to 256x192"), "{}", stderr(&o));
    // By hand: the first pass, then image to image at twice the size without binning.
    let o = generate(&[&first[..], &["-o", &p("small.png")]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = generate(&[
        "-p",
        "a boat",
        "--image",
        &p("small.png"),
        "--width",
        "256",
        "--height",
        "192",
        "--no-resolution-binning",
        "--strength",
        "0.5",
        "--steps",
        "3",
        "--seed",
        "2",
        "-o",
        &p("manual.png"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rgb = |name: &str| image::open(dir.join(name)).unwrap().to_rgb8();
    let up = rgb("up.png");
    assert_eq!(up.dimensions(), (256, 192));
    assert!(
        up == rgb("manual.png"),
        "the upscaled image differs from the two commands'"
    );
    // Its parameters name both passes, so --from repeats them.
    let text = pixart_pipeline::read_parameters(&std::fs::read(dir.join("up.png")).unwrap(), "up.png")
        .unwrap()
        .unwrap();
    assert!(
        text.contains("Size: 128x96") && text.ends_with("Hires upscale: 2, Hires steps: 3, Hires strength: 0.5"),
        "{text}"
    );
    // (The model is named by its folder's name: run where that folder is.)
    let o = bin()
        .current_dir(pipeline().parent().unwrap())
        .args(["generate", "--from", &p("up.png"), "-o", &p("again.png")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(dir.join("up.png")).unwrap() == std::fs::read(dir.join("again.png")).unwrap());

    for (args, needle) in [
        (vec!["--upscale", "1"], "--upscale 1 must be above 1"),
        (vec!["--upscale", "8"], "at most 4"),
        (
            vec!["--upscale", "2", "--upscale-strength", "0"],
            "--upscale-strength must be in (0, 1]",
        ),
        (
            vec!["--upscale", "2", "--output-type", "latent"],
            "--output-type latent",
        ),
        (vec!["--upscale-strength", "0.5"], "--upscale"),
        (
            vec!["--upscale", "4", "--width", "4096", "--height", "4096"],
            "--upscale",
        ),
    ] {
        usage_error_with(&args, needle);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `generate -p "a boat" --steps 2 ARGS` must be a usage error whose message holds `needle`.
fn usage_error_with(args: &[&str], needle: &str) {
    let mut all = vec!["-p", "a boat", "--steps", "2"];
    all.extend(args.iter().copied());
    let o = generate(&all);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
}

/// `generate --width 8192 --height 8192` under a memory limit (`ulimit -v`): refused before the
/// work with the figures (exit 2, one line), where it used to abort on a failed allocation
/// with a backtrace (exit 134); an allocation that fails anyway (the estimate turned off with
/// PIXART_MEMORY_CHECK=off) is one line and exit 2 too. Nothing is written in either case.
#[test]
fn large_work_under_a_memory_limit_is_refused_not_aborted() {
    let dir = tempdir("memory-limit");
    let out = dir.join("big.png");
    let limited = |check: &str| {
        Command::new("sh")
            .args([
                "-c",
                "ulimit -v 3000000 && exec \"$@\"",
                "sh",
                env!("CARGO_BIN_EXE_pixart"),
            ])
            .args(["generate", "-p", "a red circle", "--width", "8192", "--height", "8192"])
            .args(["--steps", "1", "-o", out.to_str().unwrap()])
            .env("PIXART_MEMORY_CHECK", check)
            .output()
            .unwrap()
    };
    let o = limited("on");
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(
        e.contains("1 image(s) of 8192x8192 need about ")
            && e.contains("GiB this process may have (the address-space limit (ulimit -v))"),
        "{e}"
    );
    assert!(!e.contains("loading"), "refused only after loading: {e}");

    let o = limited("off");
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    let last = e.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("error: out of memory: an allocation of "), "{e}");
    assert!(!e.contains("backtrace") && !e.contains("panicked"), "{e}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).ok();
}
