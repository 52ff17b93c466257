//! The training loop on a tiny model with in-memory data: the loss goes down, a run
//! interrupted at a checkpoint and resumed repeats the uninterrupted run exactly, bad configs
//! fail before any work, LoRA trains only its adapters, and KV compression can be added to a
//! checkpoint trained without it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use pixart_core::testing::fixtures_root;
use pixart_train::metrics::JsonlLog;
use pixart_train::{Batch, Event, TrainConfig, TrainData, Trainer};
use rand::rngs::StdRng;
use rand::Rng;

/// 16 fixed samples; batches are drawn with the rng.
struct Memory {
    mean: Tensor,
    std: Tensor,
    short: Tensor,
    long: Tensor,
    mask: Tensor,
}

impl Memory {
    fn new() -> Self {
        let dev = Device::Cpu;
        let n = 16;
        // Structured latents (a per-sample constant pattern) so there is something to learn.
        let base = Tensor::arange(0f32, (n * 4 * 8 * 8) as f32, &dev)
            .unwrap()
            .reshape((n, 4, 8, 8))
            .unwrap();
        let mean = ((base * 0.37).unwrap().sin().unwrap() * 4.0).unwrap();
        Self {
            mean,
            std: (Tensor::ones((n, 4, 8, 8), DType::F32, &dev).unwrap() * 0.05).unwrap(),
            // Deterministic captions: every run of the test sees the same data.
            short: pattern((n, 6, 32), 0.11),
            long: pattern((n, 6, 32), 0.23),
            mask: Tensor::new(&[[1f32, 1., 1., 1., 0., 0.]], &dev)
                .unwrap()
                .repeat((n, 1))
                .unwrap(),
        }
    }
}

fn pattern(shape: (usize, usize, usize), f: f64) -> Tensor {
    let n = shape.0 * shape.1 * shape.2;
    Tensor::arange(0f32, n as f32, &Device::Cpu)
        .unwrap()
        .reshape(shape)
        .unwrap()
        .affine(f, 0.5)
        .unwrap()
        .cos()
        .unwrap()
}

impl TrainData for Memory {
    fn sample_batch(&self, rng: &mut StdRng, batch: usize, long_ratio: f64) -> pixart_core::Result<Batch> {
        let idx: Vec<u32> = (0..batch).map(|_| rng.random_range(0..16u32)).collect();
        let long: Vec<bool> = (0..batch).map(|_| rng.random::<f64>() < long_ratio).collect();
        let ids = Tensor::new(idx.as_slice(), &Device::Cpu)?;
        let caps: Vec<Tensor> = idx
            .iter()
            .zip(&long)
            .map(|(&i, &l)| if l { &self.long } else { &self.short }.narrow(0, i as usize, 1))
            .collect::<candle_core::Result<_>>()?;
        Ok(Batch {
            latent_mean: self.mean.index_select(&ids, 0)?,
            latent_std: self.std.index_select(&ids, 0)?,
            caption: Tensor::cat(&caps, 0)?,
            mask: self.mask.index_select(&ids, 0)?,
        })
    }

    fn len(&self) -> usize {
        16
    }
}

fn write_model_config(dir: &Path, kv: Option<&str>) -> PathBuf {
    let mut v = serde_json::json!({
        "_class_name": "PixArtTransformer2DModel",
        "attention_head_dim": 8, "num_attention_heads": 2, "in_channels": 4, "out_channels": 8,
        "num_layers": 2, "cross_attention_dim": 16, "caption_channels": 32, "sample_size": 8,
        "patch_size": 2, "interpolation_scale": 1.0, "attention_bias": true,
        "norm_type": "ada_norm_single", "norm_elementwise_affine": false, "norm_eps": 1e-6,
        "use_additional_conditions": false
    });
    if let Some(spec) = kv {
        let (s, rest) = spec.split_once(':').unwrap();
        let (r, layers) = rest.split_once(':').unwrap();
        v["kv_compress"] = serde_json::json!({"sampling": s, "scale_factor": r.parse::<usize>().unwrap(),
            "layers": layers.split(',').map(|l| l.parse::<usize>().unwrap()).collect::<Vec<_>>()});
    }
    let p = dir.join("config.json");
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    p
}

fn config_text(dir: &Path, model: &str, steps: u64, extra: &str) -> String {
    let base = fixtures_root().join("golden/pipeline");
    let feats = dir.join("features");
    std::fs::create_dir_all(&feats).unwrap();
    format!(
        r#"{extra_top}
[model]
{model}
base = "{base}"

[data]
features = "{feats}"
caption_dropout = 0.2

[train]
steps = {steps}
batch_size = 4
lr = 2e-3
warmup = 2
grad_clip = 1.0
seed = 7

[optimizer]
type = "adamw"
weight_decay = 0.0

[output]
dir = "{out}"
checkpoint_every = 3
log_every = 1
{extra}
"#,
        extra_top = "",
        base = base.display(),
        feats = feats.display(),
        out = dir.join("run").display(),
    )
}

fn load(dir: &Path, text: &str) -> pixart_core::Result<TrainConfig> {
    let p = dir.join("train.toml");
    std::fs::write(&p, text).unwrap();
    TrainConfig::from_file(&p)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pixart-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(cfg: TrainConfig, resume: bool, stop_at: Option<u64>) -> Trainer {
    let mut t = Trainer::new(cfg, resume).unwrap();
    let cancel = AtomicBool::new(false);
    let data = Memory::new();
    t.run(
        &data,
        &mut |e| {
            if let (Event::Step { step, .. }, Some(s)) = (&e, stop_at) {
                if *step == s {
                    cancel.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        },
        &cancel,
    )
    .unwrap();
    t
}

#[test]
fn loss_decreases_and_resume_repeats_the_run() {
    let dir = tmp("resume");
    let mc = write_model_config(&dir, Some("conv:2:1"));
    let text = config_text(&dir, &format!("config = \"{}\"", mc.display()), 40, "");
    // Uninterrupted.
    let a = run(load(&dir, &text).unwrap(), false, None);
    let log_a = std::fs::read_to_string(dir.join("run/log.jsonl")).unwrap();
    let loss = JsonlLog::series(&dir.join("run/log.jsonl"), "loss").unwrap();
    assert_eq!(loss.len(), 40);
    let first: f64 = loss[..8].iter().map(|p| p.1).sum::<f64>() / 8.0;
    let last: f64 = loss[32..].iter().map(|p| p.1).sum::<f64>() / 8.0;
    assert!(last < 0.7 * first, "loss did not go down: first {first}, last {last}");
    assert!(dir.join("run/loss.png").is_file());
    assert!(dir
        .join("run/transformer/diffusion_pytorch_model.safetensors")
        .is_file());
    let wa = a.current_weights().unwrap();

    // Interrupted at step 7 (checkpoint written on cancel), then resumed.
    std::fs::remove_dir_all(dir.join("run")).unwrap();
    let b = run(load(&dir, &text).unwrap(), false, Some(7));
    assert_eq!(b.step(), 7);
    // A fresh start into a folder with checkpoints is refused.
    let again = Trainer::new(load(&dir, &text).unwrap(), false);
    assert!(again.is_err());
    let c = run(load(&dir, &text).unwrap(), true, None);
    assert_eq!(c.step(), 40);
    let log_c = std::fs::read_to_string(dir.join("run/log.jsonl")).unwrap();
    let strip = |s: &str| -> Vec<(u64, String, String)> {
        s.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["step"].as_u64().unwrap(),
                    v["loss"].to_string(),
                    v["grad_norm"].to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        strip(&log_a),
        strip(&log_c),
        "resumed run differs from the uninterrupted one"
    );
    let wc = c.current_weights().unwrap();
    for (k, t) in &wa {
        let (d, _) = pixart_core::testing::max_abs_diff(t, &wc[k]);
        assert_eq!(d, 0.0, "weight {k} differs after resume");
    }
    // Only the newest checkpoints are kept, and `latest` names the last.
    let latest = std::fs::read_to_string(dir.join("run/checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "step-000040");
}

#[test]
fn caption_init_and_loss_weighting_options() {
    let dir = tmp("capinit");
    let mc = write_model_config(&dir, None);
    let model = format!("config = \"{}\"", mc.display());
    let to_out = "transformer_blocks.0.attn2.to_out.0.weight";
    let max_abs = |t: &Tensor| -> f32 { t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() };
    // PixArt's init: a zero cross-attention output.
    let pixart = Trainer::new(load(&dir, &config_text(&dir, &model, 2, "")).unwrap(), false).unwrap();
    assert_eq!(max_abs(&pixart.current_weights().unwrap()[to_out]), 0.0);
    std::fs::remove_dir_all(dir.join("run")).ok();
    // PyTorch's: uniform ±1/√fan_in (fan_in = 16 here), and a run with the weighted loss trains.
    let text = config_text(&dir, &format!("{model}\ncaption_init = \"pytorch\""), 6, "")
        .replace("seed = 7", "seed = 7\nloss_weighting = \"inv-snr:20\"");
    let cfg = load(&dir, &text).unwrap();
    let fresh = Trainer::new(cfg.clone(), false).unwrap().current_weights().unwrap();
    let m = max_abs(&fresh[to_out]);
    assert!(m > 0.05 && m <= 0.25, "to_out init max {m}");
    assert!(max_abs(&fresh["caption_projection.linear_1.bias"]) > 0.0);
    std::fs::remove_dir_all(dir.join("run")).ok();
    let t = run(cfg, false, None);
    assert_eq!(t.step(), 6);
    let loss = JsonlLog::series(&dir.join("run/log.jsonl"), "loss").unwrap();
    assert!(loss.iter().all(|p| p.1.is_finite()));
    // `init` weights keep their own caption path: the option is refused there.
    let init = format!(
        "init = \"{}\"\ncaption_init = \"pytorch\"",
        dir.join("run/transformer").display()
    );
    let err = load(&dir, &config_text(&dir, &init, 2, "")).unwrap_err().to_string();
    assert!(err.contains("caption_init"), "{err}");
}

#[test]
fn bad_configs_fail_before_any_work() {
    let dir = tmp("bad");
    let mc = write_model_config(&dir, None);
    let model = format!("config = \"{}\"", mc.display());
    let good = config_text(&dir, &model, 5, "");
    assert!(load(&dir, &good).is_ok());
    let cases = [
        (
            good.replace("lr = 2e-3", "lr = 2e-3\nlearning_rate = 1"),
            "learning_rate",
        ),
        (good.replace("lr = 2e-3", "lr = -1"), "train.lr"),
        (good.replace("steps = 5", "steps = 0"), "train.steps"),
        (
            good.replace("caption_dropout = 0.2", "caption_dropout = 1.5"),
            "caption_dropout",
        ),
        (
            good.replace(&dir.join("features").display().to_string(), "/nonexistent/features"),
            "data.features",
        ),
        (good.replace("type = \"adamw\"", "type = \"sgd\""), "sgd"),
        (
            good.replace("seed = 7", "seed = 7\nloss_weighting = \"inv-snr:-2\""),
            "inv-snr:-2",
        ),
        (
            good.replace("seed = 7", "seed = 7\nloss_weighting = \"v\""),
            "loss weighting",
        ),
        (good.replace("[model]", "[model]\ncaption_init = \"xavier\""), "xavier"),
        // Sampling settings are checked when the config is loaded, even with sampling off.
        (
            good.replace("log_every = 1", "log_every = 1\nsample_steps = 0"),
            "output.sample_steps",
        ),
        (
            good.replace("log_every = 1", "log_every = 1\nsample_steps = 100000"),
            "output.sample_steps must be between 1 and 1000, got 100000",
        ),
        (
            good.replace("log_every = 1", "log_every = 1\nsample_guidance = nan"),
            "output.sample_guidance",
        ),
        (
            good.replace("log_every = 1", "log_every = 1\nsample_guidance = -3.0"),
            "output.sample_guidance",
        ),
        (
            good.replace(
                "log_every = 1",
                &format!("log_every = 1\nsample_prompts = [{}]", vec!["\"a\""; 65].join(", ")),
            ),
            "output.sample_prompts",
        ),
        // Sizes that could not be allocated.
        (
            good.replace("batch_size = 4", "batch_size = 1000000000"),
            "train.batch_size",
        ),
        (
            good.replace("[output]", "[lora]\nrank = 100000000\n\n[output]"),
            "lora.rank",
        ),
        // TOML errors: one line, with the position.
        (
            good.replace("lr = 2e-3", "lr = \"fast\""),
            "column 6: train.lr: invalid type",
        ),
    ];
    for (text, key) in cases {
        let err = load(&dir, &text).unwrap_err().to_string();
        assert!(err.contains(key), "error `{err}` does not name `{key}`");
        assert!(!err.contains('\n'), "{err}");
    }
    assert!(!dir.join("run").exists(), "a bad config wrote output");
    // A LoRA rank above the adapted layers' width is refused before training.
    let wide = good.replace("[output]", "[lora]\nrank = 1000\n\n[output]");
    let err = Trainer::new(load(&dir, &wide).unwrap(), false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("lora.rank 1000 is more than the width"), "{err}");
    // Resuming with another architecture is refused.
    let _ = run(load(&dir, &config_text(&dir, &model, 3, "")).unwrap(), false, None);
    let mc2 = write_model_config(&dir, Some("conv:2:0,1"));
    let other = config_text(&dir, &format!("config = \"{}\"", mc2.display()), 6, "");
    let err = Trainer::new(load(&dir, &other).unwrap(), true)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another architecture"), "{err}");
}

#[test]
fn lora_trains_only_adapters_and_weak_to_strong_switches() {
    let dir = tmp("lora");
    let mc = write_model_config(&dir, None);
    // A base run without KV compression.
    let base_text = config_text(&dir, &format!("config = \"{}\"", mc.display()), 4, "");
    run(load(&dir, &base_text).unwrap(), false, None);
    let base_dir = dir.join("base");
    std::fs::rename(dir.join("run"), &base_dir).unwrap();
    let base_w: BTreeMap<String, Tensor> = candle_core::safetensors::load(
        base_dir.join("transformer/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
    .into_iter()
    .collect();

    // Weak-to-strong (b): continue with KV compression on layer 1, averaging init.
    let model = format!(
        "init = \"{}\"\nkv_compress = \"conv:2:1\"",
        base_dir.join("transformer").display()
    );
    let t = Trainer::new(load(&dir, &config_text(&dir, &model, 2, "")).unwrap(), false).unwrap();
    let w = t.current_weights().unwrap();
    let kw = &w["transformer_blocks.1.attn1.kv_compress.conv.weight"];
    let v: Vec<f32> = kw.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|&x| (x - 0.25).abs() < 1e-7), "averaging init");
    drop(t);

    // Weak-to-strong (d): a finer patch. The patch layers are rewritten (taps summed, the
    // output's sub-positions averaged) and the run trains at 4x the tokens.
    let model = format!(
        "init = \"{}\"\npatch_size = 1\ninterpolation_scale = 2.0",
        base_dir.join("transformer").display()
    );
    let t = run(load(&dir, &config_text(&dir, &model, 2, "")).unwrap(), false, None);
    let w = t.current_weights().unwrap();
    assert_eq!(w["pos_embed.proj.weight"].dims(), &[16, 4, 1, 1]);
    assert_eq!(w["proj_out.weight"].dims(), &[8, 16]);
    let cfg = pixart_model::TransformerConfig::from_file(&dir.join("run/transformer/config.json")).unwrap();
    assert_eq!((cfg.patch_size, cfg.interpolation_scale), (1, Some(2.0)));
    drop(t);
    std::fs::remove_dir_all(dir.join("run")).unwrap();
    let model = format!("init = \"{}\"\npatch_size = 4", base_dir.join("transformer").display());
    let err = Trainer::new(load(&dir, &config_text(&dir, &model, 2, "")).unwrap(), false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model.patch_size: 4 differs from the checkpoint's 2"),
        "{err}"
    );

    // LoRA on the attention projections: the base weights stay, the adapters move.
    let model = format!("init = \"{}\"", base_dir.join("transformer").display());
    let text = config_text(&dir, &model, 4, "").replace("[output]", "[lora]\nrank = 2\nalpha = 4\n\n[output]");
    let t = run(load(&dir, &text).unwrap(), false, None);
    assert!(
        t.trainable_parameters() < 2000,
        "{} trainable",
        t.trainable_parameters()
    );
    let lora: BTreeMap<String, Tensor> = candle_core::safetensors::load(dir.join("run/lora.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    assert!(lora.contains_key("transformer.transformer_blocks.0.attn1.to_q.lora_A.weight"));
    let merged = t.current_weights().unwrap();
    let (d_other, _) = pixart_core::testing::max_abs_diff(&merged["proj_out.weight"], &base_w["proj_out.weight"]);
    assert_eq!(d_other, 0.0, "non-adapted weights must not change");
    let (d_q, _) = pixart_core::testing::max_abs_diff(
        &merged["transformer_blocks.0.attn1.to_q.weight"],
        &base_w["transformer_blocks.0.attn1.to_q.weight"],
    );
    assert!(d_q > 0.0, "adapted layer unchanged");

    // `generate --lora`: the base checkpoint plus the saved adapters gives the trained model.
    let opts = pixart_model::LoadOptions {
        loras: vec![pixart_model::lora::LoraSpec::parse(&format!(
            "{}:1.0",
            dir.join("run/lora.safetensors").display()
        ))
        .unwrap()],
        ..Default::default()
    };
    let with_lora = pixart_model::load_transformer(&base_dir.join("transformer"), &opts)
        .unwrap()
        .model;
    let trained = pixart_model::PixArtTransformer::new(
        with_lora.config(),
        candle_nn::VarBuilder::from_tensors(merged.into_iter().collect(), DType::F32, &Device::Cpu),
    )
    .unwrap()
    .0;
    let x = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &Device::Cpu).unwrap();
    let tt = Tensor::new(&[500f32], &Device::Cpu).unwrap();
    let y = pattern((1, 6, 32), 0.3);
    let a = with_lora.forward(&x, &tt, &y, None).unwrap();
    let b = trained.forward(&x, &tt, &y, None).unwrap();
    let (d, _) = pixart_core::testing::max_abs_diff(&a, &b);
    assert!(d < 1e-5, "LoRA-loaded model differs from the trained one by {d}");
    // A LoRA file for layers the model lacks is refused.
    let bad = dir.join("bad-lora.safetensors");
    let mut m = std::collections::HashMap::new();
    m.insert(
        "transformer.nope.lora_A.weight".to_string(),
        Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    m.insert(
        "transformer.nope.lora_B.weight".to_string(),
        Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&m, &bad).unwrap();
    let opts = pixart_model::LoadOptions {
        loras: vec![pixart_model::lora::LoraSpec::parse(&bad.display().to_string()).unwrap()],
        ..Default::default()
    };
    let err = pixart_model::load_transformer(&base_dir.join("transformer"), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn gradient_checkpointing_trains_the_same() {
    let dir = tmp("ckpt");
    let mc = write_model_config(&dir, Some("conv:2:1"));
    let text = config_text(&dir, &format!("config = \"{}\"", mc.display()), 6, "");
    run(load(&dir, &text).unwrap(), false, None);
    let plain = JsonlLog::series(&dir.join("run/log.jsonl"), "loss").unwrap();
    std::fs::remove_dir_all(dir.join("run")).unwrap();
    let text = text.replace("seed = 7", "seed = 7\ngradient_checkpointing = true");
    run(load(&dir, &text).unwrap(), false, None);
    let ck = JsonlLog::series(&dir.join("run/log.jsonl"), "loss").unwrap();
    assert_eq!(plain.len(), ck.len());
    for (a, b) in plain.iter().zip(&ck) {
        assert!(
            (a.1 - b.1).abs() <= 1e-4 * a.1.abs(),
            "step {}: {} vs {}",
            a.0,
            a.1,
            b.1
        );
    }
}

#[test]
fn bf16_and_ema_and_accumulation_run() {
    let dir = tmp("bf16");
    let mc = write_model_config(&dir, None);
    let text = config_text(&dir, &format!("config = \"{}\"", mc.display()), 4, "")
        .replace("seed = 7", "seed = 7\ndtype = \"bf16\"\nema = 0.9\ngrad_accum = 2");
    let text = text.replace(
        "log_every = 1",
        "log_every = 1\nsample_every = 2\nsample_steps = 2\nsample_prompts = [\"a red circle\", \"a blue square\"]",
    );
    let t = run(load(&dir, &text).unwrap(), false, None);
    let loss = JsonlLog::series(&dir.join("run/log.jsonl"), "loss").unwrap();
    assert_eq!(loss.len(), 4);
    // Sample grids on the fixed prompts: two 64 px images side by side (2 px gaps).
    for step in [2, 4] {
        let p = dir.join(format!("run/samples/step-{step:06}.png"));
        let img = pixart_pipeline::RgbImage::from_png(&std::fs::read(&p).unwrap(), "sample grid").unwrap();
        assert_eq!((img.width, img.height), (2 * 64 + 6, 64 + 4), "{}", p.display());
    }
    assert!(loss.iter().all(|p| p.1.is_finite() && p.1 > 0.0), "{loss:?}");
    assert!(dir
        .join("run/checkpoints/step-000004/transformer_ema/diffusion_pytorch_model.safetensors")
        .is_file());
    // The export holds the EMA weights, which differ from the raw ones after 4 steps.
    let exported: BTreeMap<String, Tensor> = candle_core::safetensors::load(
        dir.join("run/transformer/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
    .into_iter()
    .collect();
    let raw = t.current_weights().unwrap();
    let (d, _) = pixart_core::testing::max_abs_diff(&exported["pos_embed.proj.weight"], &raw["pos_embed.proj.weight"]);
    assert!(d > 0.0, "export should be the EMA");
}
