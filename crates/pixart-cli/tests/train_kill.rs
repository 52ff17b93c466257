//! `pixart train` killed with SIGKILL at random moments (checkpoints are written every step,
//! so many kills land mid-save) and resumed until done: every kill leaves a complete latest
//! checkpoint, and the finished run logs exactly the losses of an uninterrupted run. And
//! `pixart eval curve` over the checkpoints of a run.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pixart_core::testing::fixtures_root;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pixart"))
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pixart-kill-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ok(o: std::process::Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Tokenizer, random T5, features of the fixture images (16 px, the small VAE: 8x8 latents),
/// and a base pipeline folder for the trainer.
fn setup(dir: &Path) {
    let data = fixtures_root().join("golden/data");
    ok(bin()
        .args(["train-tokenizer", "--vocab-size", "64", "--data"])
        .arg(data.join("train.jsonl"))
        .arg("--out")
        .arg(dir.join("base/tokenizer"))
        .output()
        .unwrap());
    ok(bin()
        .args(["init", "text-encoder", "--seed", "0", "--config"])
        .arg(data.join("t5_config.json"))
        .arg("--out")
        .arg(dir.join("base/text_encoder"))
        .output()
        .unwrap());
    std::os::unix::fs::symlink(fixtures_root().join("golden/vae/small"), dir.join("base/vae")).unwrap();
    std::os::unix::fs::symlink(
        fixtures_root().join("golden/pipeline/scheduler"),
        dir.join("base/scheduler"),
    )
    .unwrap();
    ok(bin()
        .arg("extract")
        .arg("--data")
        .arg(data.join("train.jsonl"))
        .arg("--vae")
        .arg(dir.join("base/vae"))
        .arg("--text-encoder")
        .arg(dir.join("base/text_encoder"))
        .arg("--tokenizer")
        .arg(dir.join("base/tokenizer"))
        .arg("--out")
        .arg(dir.join("features"))
        .args(["--resolution", "16", "--max-length", "16"])
        .output()
        .unwrap());
    std::fs::write(
        dir.join("transformer.json"),
        r#"{"attention_head_dim": 8, "num_attention_heads": 2, "in_channels": 4, "out_channels": 8,
            "num_layers": 2, "cross_attention_dim": 16, "caption_channels": 32, "sample_size": 8,
            "patch_size": 2, "interpolation_scale": 1.0, "norm_type": "ada_norm_single",
            "norm_elementwise_affine": false, "norm_eps": 1e-6, "use_additional_conditions": false}"#,
    )
    .unwrap();
}

fn write_config(dir: &Path, out: &str, steps: u64) -> PathBuf {
    let p = dir.join(format!("{out}.toml"));
    std::fs::write(
        &p,
        format!(
            "[model]\nconfig = \"transformer.json\"\nbase = \"base\"\n\n[data]\nfeatures = \"features\"\n\n\
             [train]\nsteps = {steps}\nbatch_size = 4\nlr = 1e-3\nwarmup = 2\ngrad_clip = 1.0\nseed = 3\n\n\
             [output]\ndir = \"{out}\"\ncheckpoint_every = 1\nkeep_checkpoints = 2\nlog_every = 1\n"
        ),
    )
    .unwrap();
    p
}

fn losses(log: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].to_string())
        })
        .collect()
}

#[test]
fn sigkill_at_any_moment_then_resume_gives_the_uninterrupted_run() {
    let dir = tempdir("run");
    setup(&dir);
    let steps = 24;
    ok(bin()
        .arg("train")
        .arg("--config")
        .arg(write_config(&dir, "straight", steps))
        .output()
        .unwrap());
    let reference = losses(&dir.join("straight/log.jsonl"));
    assert_eq!(reference.len(), steps as usize);

    let cfg = write_config(&dir, "killed", steps);
    let mut kills = 0;
    let mut rng: u64 = 0x9e37_79b9;
    for round in 0..200 {
        let resume = dir.join("killed/checkpoints/latest").is_file();
        let mut cmd = bin();
        cmd.arg("train").arg("--config").arg(&cfg);
        if resume {
            cmd.arg("--resume");
        }
        let mut child = cmd.stderr(std::process::Stdio::null()).spawn().unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(40 + rng % 400));
        if child.try_wait().unwrap().is_some() {
            assert!(child.wait().unwrap().success(), "round {round}: the run failed");
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        // Whatever the moment, `latest` (if any) names a complete, loadable checkpoint.
        if let Ok(name) = std::fs::read_to_string(dir.join("killed/checkpoints/latest")) {
            let ck = dir.join("killed/checkpoints").join(name.trim());
            assert!(
                ck.join("trainer_state.json").is_file(),
                "round {round}: {} incomplete",
                ck.display()
            );
            let w = ck.join("transformer/diffusion_pytorch_model.safetensors");
            candle_core::safetensors::load(&w, &candle_core::Device::Cpu)
                .unwrap_or_else(|e| panic!("round {round}: {} unreadable: {e}", w.display()));
        }
    }
    assert!(
        dir.join("killed/transformer/diffusion_pytorch_model.safetensors")
            .is_file(),
        "never finished"
    );
    assert!(kills > 0, "the run was never killed; the test proves nothing");
    assert_eq!(losses(&dir.join("killed/log.jsonl")), reference, "after {kills} kills");
}

#[test]
fn eval_curve_over_the_checkpoints_of_a_run() {
    let dir = tempdir("curve");
    setup(&dir);
    ok(bin()
        .arg("train")
        .arg("--config")
        .arg(write_config(&dir, "run", 3))
        .output()
        .unwrap());
    // keep_checkpoints = 2: step 2 and 3 are kept (and transformer/, the same as step 3).
    let data = dir.join("demo");
    ok(bin()
        .args(["demo-data", "--count", "2", "--size", "32", "--out"])
        .arg(&data)
        .output()
        .unwrap());
    let (png, json) = (dir.join("curve.png"), dir.join("curve.json"));
    let o = bin()
        .args([
            "eval",
            "curve",
            "--steps",
            "2",
            "--limit",
            "3",
            "--attribute",
            "color",
            "--run",
        ])
        .arg(dir.join("run"))
        .arg("--data")
        .arg(data.join("eval.jsonl"))
        .arg("--out")
        .arg(&png)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let points = j["runs"][0]["points"].as_array().unwrap();
    let steps: Vec<u64> = points.iter().map(|p| p["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [2, 3], "{j}");
    assert_eq!(j["runs"][0]["run"], "run");
    for p in points {
        assert_eq!(p["heldout"]["n"], 2);
        assert_eq!(p["seen"]["n"], 1);
        let c = p["heldout"]["color"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&c));
    }
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    let img = pixart_pipeline::RgbImage::from_png(&std::fs::read(&png).unwrap(), "curve.png").unwrap();
    assert_eq!((img.width, img.height), (800, 420));

    // --every keeps multiples (and the final model); a folder that is not a run is a usage error.
    let o = bin()
        .args(["eval", "curve", "--steps", "2", "--limit", "1", "--every", "2"])
        .args(["--attribute", "all,shape", "--loss-out"])
        .arg(dir.join("loss.png"))
        .arg("--run")
        .arg(dir.join("run"))
        .arg("--data")
        .arg(data.join("eval.jsonl"))
        .arg("--out")
        .arg(&png)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j["runs"][0]["points"].as_array().unwrap().len(), 2);
    for f in ["curve-all.png", "curve-shape.png", "loss.png"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let o = bin()
        .args(["eval", "curve", "--run"])
        .arg(&data)
        .arg("--data")
        .arg(data.join("eval.jsonl"))
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("config.toml") && err.trim_end().lines().count() == 1,
        "{err}"
    );
}

/// Exit `code` and one error line (the last; progress lines may come before it) containing
/// `needle`.
fn fails(o: std::process::Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{needle}: {err}");
    assert!(
        err.trim().lines().last().unwrap_or("").contains(needle),
        "wanted `{needle}`: {err}"
    );
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_inputs_of_the_training_commands_fail_up_front() {
    let dir = tempdir("bad-inputs");
    let data = fixtures_root().join("golden/data");

    // train-tokenizer: records need only captions; bad flags and files exit 2 naming them.
    let caps = dir.join("caps.jsonl");
    std::fs::write(
        &caps,
        "{\"caption\": \"a red circle\"}\n{\"caption\": \"a blue square\", \"long_caption\": \"a big blue square\"}\n",
    )
    .unwrap();
    let tok = |data: &Path, vocab: &str| {
        bin()
            .args(["train-tokenizer", "--vocab-size", vocab, "--data"])
            .arg(data)
            .arg("--out")
            .arg(dir.join("tok"))
            .output()
            .unwrap()
    };
    ok(tok(&caps, "32"));
    fails(
        tok(&caps, "18446744073709551615"),
        2,
        "--vocab-size 18446744073709551615",
    );
    let bad = dir.join("bad.jsonl");
    for (bytes, needle) in [
        (
            &b"{\"caption\": \"a\"}\n{\"caption\": \"\xff\"}\n"[..],
            "bad.jsonl: line 2: not UTF-8",
        ),
        (&b"{\"caption\": \"a\"}\n{\"caption\": \n"[..], "bad.jsonl: line 2: "),
        (&b"\n"[..], "bad.jsonl: holds no records"),
    ] {
        std::fs::write(&bad, bytes).unwrap();
        fails(tok(&bad, "32"), 2, needle);
    }

    // extract: sizes bounded before anything is written; no readable image is a failure
    // (exit 1) that leaves no index behind.
    let extract = |data: &Path, out: &str, extra: &[&str]| {
        bin()
            .arg("extract")
            .arg("--data")
            .arg(data)
            .arg("--vae")
            .arg(fixtures_root().join("golden/vae/small"))
            .arg("--text-encoder")
            .arg(fixtures_root().join("golden/data/text_encoder"))
            .arg("--tokenizer")
            .arg(fixtures_root().join("golden/data/tokenizer"))
            .arg("--out")
            .arg(dir.join(out))
            .args(extra)
            .output()
            .unwrap()
    };
    let train = data.join("train.jsonl");
    fails(
        extract(&train, "f1", &["--resolution", "1000000"]),
        2,
        "--resolution 1000000 must be between 8 and 4096",
    );
    fails(
        extract(&train, "f1", &["--max-length", "18446744073709551615"]),
        2,
        "--max-length 18446744073709551615",
    );
    assert!(!dir.join("f1").exists());
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    for f in ["000008.png", "000009.png"] {
        std::fs::copy(data.join("images").join(f), img.join(f)).unwrap();
    }
    let broken = img.join("train.jsonl");
    std::fs::write(
        &broken,
        "{\"path\": \"000008.png\", \"caption\": \"a\"}\n{\"path\": \"000009.png\", \"caption\": \"b\"}\n",
    )
    .unwrap();
    for _ in 0..2 {
        fails(
            extract(&broken, "f2", &["--resolution", "16", "--max-length", "16"]),
            1,
            "train.jsonl: no readable images (2 skipped)",
        );
        assert!(!dir.join("f2/index.json").exists());
    }

    // train: a folder as --config; sampling settings checked at load, naming the key.
    fails(
        bin().arg("train").arg("--config").arg(&dir).output().unwrap(),
        2,
        "is a folder, not a config file",
    );
    std::fs::create_dir_all(dir.join("base")).unwrap();
    std::fs::create_dir_all(dir.join("features")).unwrap();
    std::fs::write(dir.join("transformer.json"), "{}").unwrap();
    for (extra, needle) in [
        (
            "sample_steps = 0",
            "output.sample_steps must be between 1 and 1000, got 0",
        ),
        ("sample_steps = 100000", "output.sample_steps"),
        ("sample_guidance = inf", "output.sample_guidance"),
    ] {
        let cfg = write_config(&dir, "run", 3);
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, format!("{text}{extra}\n")).unwrap();
        fails(
            bin().arg("train").arg("--config").arg(&cfg).output().unwrap(),
            2,
            needle,
        );
        assert!(!dir.join("run").exists());
    }
    let cfg = write_config(&dir, "run", 3);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("batch_size = 4", "batch_size = 1000000000")).unwrap();
    fails(
        bin().arg("train").arg("--config").arg(&cfg).output().unwrap(),
        2,
        "train.batch_size",
    );
    std::fs::write(&cfg, text.replace("lr = 1e-3", "lr = \"fast\"")).unwrap();
    fails(
        bin().arg("train").arg("--config").arg(&cfg).output().unwrap(),
        2,
        "run.toml: line 11, column 6: train.lr: invalid type",
    );

    // train: a feature shard cut short (a copy interrupted, a full disk) is a usage error
    // naming the file, before any step.
    let feats = tempdir("bad-inputs-features");
    setup(&feats);
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(feats.join("features/index.json")).unwrap()).unwrap();
    let shard = feats
        .join("features")
        .join(index["shards"][0]["file"].as_str().unwrap());
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let cfg = write_config(&feats, "run", 3);
    fails(
        bin().arg("train").arg("--config").arg(&cfg).output().unwrap(),
        2,
        "not a readable shard",
    );
    assert!(!feats.join("run").exists());
    std::fs::remove_dir_all(&feats).unwrap();

    // demo-data: a damaged dataset.json is named as such.
    let demo = dir.join("demo");
    std::fs::create_dir_all(&demo).unwrap();
    std::fs::write(demo.join("dataset.json"), "{not json").unwrap();
    fails(
        bin()
            .args(["demo-data", "--count", "2", "--size", "32", "--out"])
            .arg(&demo)
            .output()
            .unwrap(),
        2,
        "dataset.json: unreadable (",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
