//! `pixart_train::vae`: the config is strict, unreadable images are skipped and counted, a tiny
//! training run writes every output and a VAE that loads, and a run stopped and resumed ends
//! with exactly the weights of an uninterrupted run.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device};
use pixart_core::testing::max_abs_diff;
use pixart_train::vae::data::{Dataset, Order};
use pixart_train::vae::{train_vae, Event, Outcome, VaeTrainConfig};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pixart-train-vae-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `n` plain-shape PNGs of `size` px (a coloured square on a coloured background) and a
/// train.jsonl listing them, in `dir`.
fn write_images(dir: &Path, n: usize, size: u32) -> PathBuf {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let mut lines = String::new();
    for i in 0..n {
        let bg = [(i * 70 % 256) as u8, (i * 130 % 256) as u8, 200];
        let fg = [250, (i * 40 % 256) as u8, (i * 90 % 256) as u8];
        let o = (i as u32 * 3) % (size / 2);
        let img = image::RgbImage::from_fn(size, size, |x, y| {
            let inside = (o..o + size / 2).contains(&x) && (o / 2..o / 2 + size / 3).contains(&y);
            image::Rgb(if inside { fg } else { bg })
        });
        let rel = format!("images/{i:04}.png");
        img.save(dir.join(&rel)).unwrap();
        lines.push_str(&format!("{{\"path\": \"{rel}\", \"caption\": \"x\"}}\n"));
    }
    let jsonl = dir.join("train.jsonl");
    std::fs::write(&jsonl, lines).unwrap();
    jsonl
}

const TINY: &str = r#"
[model]
block_out_channels = [8, 16]
layers_per_block = 1
latent_channels = 4
norm_num_groups = 4
sample_size = 16

[data]
jsonl = "train.jsonl"

[train]
batch_size = 4
steps = 6
lr = 2e-3
warmup_steps = 2
grad_clip = 1.0
seed = 3

[loss]
l1 = 1.0
l2 = 0.5
kl = 1e-6

[output]
dir = "out"
checkpoint_every = 4
sample_every = 3
log_every = 2
samples = 3
"#;

fn parse_err(toml: &str) -> String {
    VaeTrainConfig::from_toml(toml).unwrap_err()
}

#[test]
fn config_rejects_unknown_keys_and_impossible_values() {
    VaeTrainConfig::from_toml(TINY).unwrap();
    let e = parse_err(&TINY.replace("batch_size = 4", "batch_size = 4\nbatchsize = 4"));
    assert!(e.contains("batchsize"), "{e}");
    let e = parse_err(&format!("{TINY}\n[extra]\nx = 1\n"));
    assert!(e.contains("extra"), "{e}");
    for (from, to, key) in [
        ("batch_size = 4", "batch_size = 0", "train.batch_size"),
        ("steps = 6", "steps = 0", "train.steps"),
        ("lr = 2e-3", "lr = -1.0", "train.lr"),
        ("grad_clip = 1.0", "grad_clip = 0.0", "train.grad_clip"),
        ("kl = 1e-6", "kl = -1.0", "loss.kl"),
        ("l1 = 1.0\nl2 = 0.5", "l1 = 0.0\nl2 = 0.0", "loss.l1"),
        (
            "block_out_channels = [8, 16]",
            "block_out_channels = []",
            "model.block_out_channels",
        ),
        ("norm_num_groups = 4", "norm_num_groups = 3", "model.block_out_channels"),
        ("sample_size = 16", "sample_size = 15", "model.sample_size"),
        (
            "jsonl = \"train.jsonl\"",
            "jsonl = \"train.jsonl\"\nsize = 9",
            "data.size",
        ),
        ("log_every = 2", "log_every = 0", "output.log_every"),
        ("samples = 3", "samples = 0", "output.samples"),
        ("lr = 2e-3", "lr = \"fast\"", "train.lr"),
        // Sizes that could not be allocated are refused up front.
        ("batch_size = 4", "batch_size = 100000000", "train.batch_size"),
        (
            "block_out_channels = [8, 16]",
            "block_out_channels = [8000000, 8000000]",
            "model.block_out_channels",
        ),
        (
            "layers_per_block = 1",
            "layers_per_block = 100000",
            "model.layers_per_block",
        ),
        (
            "latent_channels = 4",
            "latent_channels = 100000000",
            "model.latent_channels",
        ),
    ] {
        let e = parse_err(&TINY.replace(from, to));
        assert!(e.contains(key), "{to}: {e}");
    }
    let e = parse_err(&format!("{TINY}\n[optimizer]\ntype = \"adamw\"\nbetas = [0.9, 1.5]\n"));
    assert!(e.contains("optimizer.betas"), "{e}");
    // TOML errors are one line with the position, never the toml crate's snippet.
    let text = format!("{TINY}\n[optimizer]\ntype = \"came\"\nbetas = [0.9]\n");
    let e = parse_err(&text);
    let line = text.lines().position(|l| l == "[optimizer]").unwrap() + 1;
    assert!(e.starts_with(&format!("line {line}, column 1: ")), "{e}");
    assert!(
        e.contains("invalid length 1") && !e.contains('|') && !e.contains('\n'),
        "{e}"
    );
    let e = parse_err(&TINY.replace("lr = 2e-3", "lr = \"fast\""));
    let line = TINY.lines().position(|l| l == "lr = 2e-3").unwrap() + 1;
    assert!(e.starts_with(&format!("line {line}, column 6: train.lr: ")), "{e}");
    let e = parse_err(&TINY.replace("[train]", "[train"));
    assert!(e.starts_with("line ") && !e.contains('|') && !e.contains('\n'), "{e}");
}

#[test]
fn config_file_paths_and_missing_data() {
    let dir = tmp("cfg");
    std::fs::write(dir.join("a.toml"), TINY).unwrap();
    let e = VaeTrainConfig::from_file(&dir.join("a.toml")).unwrap_err().to_string();
    assert!(e.contains("data.jsonl") && e.contains("no such file"), "{e}");
    write_images(&dir, 2, 16);
    let cfg = VaeTrainConfig::from_file(&dir.join("a.toml")).unwrap();
    assert_eq!(cfg.data.jsonl, dir.join("train.jsonl"));
    assert_eq!(cfg.output.dir, dir.join("out"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unreadable_images_are_skipped_and_counted() {
    let dir = tmp("data");
    let jsonl = write_images(&dir, 3, 20);
    std::fs::write(dir.join("images/bad.png"), b"not a png").unwrap();
    let mut text = std::fs::read_to_string(&jsonl).unwrap();
    text.push_str("{\"path\": \"images/bad.png\"}\n{\"path\": \"images/missing.png\"}\n\n");
    std::fs::write(&jsonl, text).unwrap();
    let mut seen = 0;
    let d = Dataset::load(&jsonl, 8, &mut |done, _| seen = done).unwrap();
    assert_eq!((d.len(), d.skipped.len(), seen), (3, 2, 5));
    let x = d.batch(&[0, 2], &Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[2, 3, 8, 8]);
    let (lo, hi) = (
        x.min_all().unwrap().to_scalar::<f32>().unwrap(),
        x.max_all().unwrap().to_scalar::<f32>().unwrap(),
    );
    assert!((-1.0..=1.0).contains(&lo) && (-1.0..=1.0).contains(&hi) && hi > lo);
    // A record without a path is an error naming the line.
    std::fs::write(&jsonl, "{\"path\": \"images/0000.png\"}\n{\"caption\": \"x\"}\n").unwrap();
    let e = Dataset::load(&jsonl, 8, &mut |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("line 2"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resize_keeps_the_centre() {
    let dir = tmp("resize");
    // 40x20: left quarter red, the rest blue; resized to 10x5 and centre-cropped to 5x5, the
    // crop starts at x = 2.5 -> 2, so no red column survives.
    let img = image::RgbImage::from_fn(40, 20, |x, _| image::Rgb(if x < 8 { [255, 0, 0] } else { [0, 0, 255] }));
    img.save(dir.join("a.png")).unwrap();
    let px = pixart_train::vae::data::load_image(&dir.join("a.png"), 5).unwrap();
    assert_eq!(px.len(), 5 * 5 * 3);
    assert!(px.chunks(3).all(|p| p[2] > 200 && p[0] < 60), "{px:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn data_order_depends_only_on_seed_and_step() {
    let mut a = Order::new(7, 10);
    let mut b = Order::new(7, 10);
    let first: Vec<Vec<usize>> = (0..8).map(|s| a.batch(s, 4)).collect();
    // Each epoch is a permutation.
    let mut epoch0: Vec<usize> = first.iter().flatten().take(10).copied().collect();
    epoch0.sort();
    assert_eq!(epoch0, (0..10).collect::<Vec<_>>());
    // Out of order, and from a fresh generator: the same batches.
    assert_eq!(b.batch(5, 4), first[5]);
    assert_eq!(b.batch(1, 4), first[1]);
    assert_ne!(Order::new(8, 10).batch(0, 4), first[0]);
}

fn run(cfg: &VaeTrainConfig, resume: bool, stop_after: Option<u64>) -> Outcome {
    let cancel = AtomicBool::new(false);
    let mut on = |e: Event| {
        if let (Event::Step { step, .. }, Some(s)) = (&e, stop_after) {
            if *step == s {
                cancel.store(true, Ordering::SeqCst);
            }
        }
    };
    train_vae(cfg, resume, &Device::Cpu, &mut on, &cancel).unwrap()
}

fn weights(dir: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(dir.join("diffusion_pytorch_model.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn tiny_run_writes_everything_and_resume_is_exact() {
    let dir = tmp("run");
    write_images(&dir, 10, 24);
    std::fs::write(dir.join("a.toml"), TINY).unwrap();
    let cfg = VaeTrainConfig::from_file(&dir.join("a.toml")).unwrap();

    // Uninterrupted.
    let Outcome::Finished {
        vae_dir,
        steps,
        latent_std,
        suggested_scaling_factor,
        scaling_factor,
    } = run(&cfg, false, None)
    else {
        panic!("not finished")
    };
    assert_eq!(steps, 6);
    assert!(latent_std > 0.0 && (suggested_scaling_factor * latent_std - 1.0).abs() < 1e-9);
    assert_eq!(scaling_factor, suggested_scaling_factor);
    let out = &cfg.output.dir;
    for f in [
        "loss.png",
        "checkpoint.safetensors",
        "samples/step-000003.png",
        "samples/step-000006.png",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let steps_logged: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps_logged, [2, 4, 6]);
    let vae = pixart_vae::load_vae(&vae_dir, DType::F32, &Device::Cpu).unwrap();
    assert!((vae.config().scaling_factor - scaling_factor).abs() < 1e-12);
    let straight = weights(&vae_dir);

    // A second run into the same folder needs --resume.
    let cancel = AtomicBool::new(false);
    let e = train_vae(&cfg, false, &Device::Cpu, &mut |_| {}, &cancel)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--resume"), "{e}");

    // Stopped after step 3 (checkpoint), then resumed to the end.
    std::fs::remove_dir_all(out).unwrap();
    let stopped = run(&cfg, false, Some(3));
    assert!(matches!(stopped, Outcome::Cancelled { step: 3, .. }), "{stopped:?}");
    assert!(matches!(run(&cfg, true, None), Outcome::Finished { steps: 6, .. }));
    let resumed = weights(&vae_dir);
    assert_eq!(straight.len(), resumed.len());
    for (k, v) in &straight {
        assert_eq!(max_abs_diff(v, &resumed[k]).0, 0.0, "{k}");
    }
    let metrics2 = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let n_loss = |m: &str| m.lines().filter(|l| l.contains("\"loss\"")).count();
    assert_eq!(n_loss(&metrics2), n_loss(&metrics));
    std::fs::remove_dir_all(&dir).unwrap();
}
