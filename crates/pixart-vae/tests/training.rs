//! The training mode of the VAE: it computes what inference computes (golden files of
//! fixtures/golden/vae), its loss and every parameter's gradient match PyTorch
//! (fixtures/golden/vae_train, tools/golden/gen_vae_train.py), gradients reach every weight of
//! a freshly initialised model, and a few AdamW steps lower the loss.
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use pixart_core::testing::{assert_close, fixtures_root, max_abs_diff};
use pixart_vae::training::{self, LossWeights};
use pixart_vae::{load_vae, AutoencoderKlConfig, Mode, Tiling};

fn vae_case(case: &str) -> std::path::PathBuf {
    fixtures_root().join("golden/vae").join(case)
}

fn load(path: std::path::PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// A small config with every kind of layer: two blocks (one down/upsampler), two resnets per
/// encoder block (a channel-changing shortcut), the mid-block attention, quant convs.
fn tiny_config() -> AutoencoderKlConfig {
    AutoencoderKlConfig {
        down_block_types: vec!["DownEncoderBlock2D".into(); 2],
        up_block_types: vec!["UpDecoderBlock2D".into(); 2],
        block_out_channels: vec![8, 16],
        layers_per_block: 1,
        norm_num_groups: 4,
        latent_channels: 4,
        sample_size: 16,
        ..AutoencoderKlConfig::default()
    }
}

/// A fresh [`tiny_config`] model in training mode (seeded), its variables, and noise for a
/// batch of `b`.
fn fresh_tiny(seed: u64, b: usize) -> (candle_nn::VarMap, pixart_vae::AutoencoderKl, Tensor) {
    let cfg = tiny_config();
    let varmap = training::init_varmap(&cfg, seed, &Device::Cpu).unwrap();
    let vae = training::trainable(&cfg, &varmap, &Device::Cpu).unwrap();
    let noise = Tensor::randn(0f32, 1f32, (b, 4, 8, 8), &Device::Cpu).unwrap();
    (varmap, vae, noise)
}

/// A fixed batch of plain shapes: per image a coloured background and a coloured rectangle,
/// in [-1, 1], (b, 3, size, size).
fn shapes_batch(b: usize, size: usize) -> Tensor {
    let mut v = Vec::with_capacity(b * 3 * size * size);
    for i in 0..b {
        let (x0, y0) = (1 + 3 * i % (size / 2), 2 + 5 * i % (size / 2));
        for c in 0..3 {
            let bg = ((i * 3 + c) % 5) as f32 / 2.0 - 1.0;
            let fg = ((i * 7 + c * 3 + 2) % 5) as f32 / 2.0 - 1.0;
            for y in 0..size {
                for x in 0..size {
                    let inside = (x0..x0 + size / 2).contains(&x) && (y0..y0 + size / 3).contains(&y);
                    v.push(if inside { fg } else { bg });
                }
            }
        }
    }
    Tensor::from_vec(v, (b, 3, size, size), &Device::Cpu).unwrap()
}

#[test]
fn training_mode_matches_inference_golden() {
    // The training-mode model (composed ops, weights as variables) against diffusers' outputs.
    for case in ["base", "small", "plain"] {
        let (cfg, varmap) = training::load_varmap(&vae_case(case), &Device::Cpu).unwrap();
        let vae = training::trainable(&cfg, &varmap, &Device::Cpu).unwrap();
        assert_eq!(vae.mode(), Mode::Training);
        let io = load(vae_case(case).join("io.safetensors"));
        let dec = vae.decode(&io["decode.z"], Tiling::Auto).unwrap();
        assert_close(&format!("{case}/decode"), &dec, &io["decode.sample"], 1e-5);
        let post = vae.encode(&io["encode.sample"], Tiling::Auto).unwrap();
        assert_close(&format!("{case}/mean"), &post.mean, &io["encode.latent_mean"], 1e-5);
        assert_close(&format!("{case}/std"), &post.std, &io["encode.latent_std"], 1e-5);
        let sample = post.sample(&io["encode.noise"]).unwrap();
        assert_close(&format!("{case}/sample"), &sample, &io["encode.latent_sample"], 1e-5);
    }
}

#[test]
fn training_mode_equals_inference_mode() {
    // Same weights, both modes, on the golden `base` VAE (four blocks, attention).
    let dir = vae_case("base");
    let fast = load_vae(&dir, DType::F32, &Device::Cpu).unwrap();
    let (cfg, varmap) = training::load_varmap(&dir, &Device::Cpu).unwrap();
    let slow = training::trainable(&cfg, &varmap, &Device::Cpu).unwrap();
    // A fixed input (a random one made the test flaky: the two modes sum in different orders,
    // and one draw in a few hundred put the decode 1e-6 over the tolerance).
    let x: Vec<f32> = (0..3 * 40 * 24).map(|i| (i as f32 * 0.37).sin()).collect();
    let x = Tensor::from_vec(x, (1, 3, 40, 24), &Device::Cpu).unwrap(); // (b, c, h, w)
    let a = fast.encode(&x, Tiling::Off).unwrap();
    let b = slow.encode(&x, Tiling::Off).unwrap();
    assert_close("mean", &b.mean, &a.mean, 1e-5);
    assert_close("std", &b.std, &a.std, 1e-5);
    let da = fast.decode(&a.mean, Tiling::Off).unwrap();
    let db = slow.decode(&a.mean, Tiling::Off).unwrap();
    // 4e-6 measured on this input.
    assert_close("decode", &db, &da, 2e-5);
}

#[test]
fn loss_and_gradients_match_pytorch() {
    let (cfg, varmap) = training::load_varmap(&vae_case("small"), &Device::Cpu).unwrap();
    let vae = training::trainable(&cfg, &varmap, &Device::Cpu).unwrap();
    let g = load(fixtures_root().join("golden/vae_train/small.safetensors"));
    let w = LossWeights {
        l1: 1.0,
        l2: 0.5,
        kl: 0.01,
    };
    let f = training::forward(&vae, &g["x"], &g["noise"]).unwrap();
    assert_close("z", &f.z, &g["z"], 1e-5);
    assert_close("reconstruction", &f.reconstruction, &g["reconstruction"], 1e-5);
    let loss = training::vae_loss(&g["x"], &f.reconstruction, &f.posterior, w).unwrap();
    for (name, got) in [
        ("total", &loss.total),
        ("l1", &loss.l1),
        ("l2", &loss.l2),
        ("kl", &loss.kl),
    ] {
        assert_close(&format!("loss.{name}"), got, &g[&format!("loss.{name}")], 1e-6);
    }
    let grads = loss.total.backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    let (mut n, mut worst) = (0, 0f32);
    for (name, var) in vars.iter() {
        let want = &g[&format!("grad.{name}")];
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        // Relative to the gradient's own scale (gradients span orders of magnitude), with an
        // absolute floor: the key bias gets an exactly-zero gradient (softmax ignores a shift
        // common to a row), of which both sides hold only rounding noise (~1e-9).
        let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let (d, at) = max_abs_diff(got, want);
        if scale > 1e-6 {
            worst = worst.max(d / scale);
        }
        assert!(
            d <= 1e-4 * scale + 1e-7,
            "grad.{name}: max |diff| {d:e} at {at}, scale {scale:e}"
        );
        n += 1;
    }
    assert_eq!(
        n,
        g.keys().filter(|k| k.starts_with("grad.")).count(),
        "every parameter compared"
    );
    eprintln!("worst relative gradient difference: {worst:e}");
}

#[test]
fn gradients_reach_every_parameter() {
    let (varmap, vae, noise) = fresh_tiny(3, 2);
    let x = shapes_batch(2, 16);
    let f = training::forward(&vae, &x, &noise).unwrap();
    let loss = training::vae_loss(&x, &f.reconstruction, &f.posterior, LossWeights::default()).unwrap();
    let grads = loss.total.backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    assert!(vars.len() > 60, "{} variables", vars.len());
    let mut dead = Vec::new();
    for (name, var) in vars.iter() {
        let nonzero = grads
            .get(var.as_tensor())
            .map(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0)
            .unwrap_or(false);
        if !nonzero {
            dead.push(name.clone());
        }
    }
    dead.sort();
    assert!(dead.is_empty(), "no gradient for {dead:?}");
}

#[test]
fn inference_mode_cuts_the_graph() {
    // The reason for the training mode: the fast CPU kernels have no backward.
    let cfg = tiny_config();
    let varmap = training::init_varmap(&cfg, 3, &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let vae = pixart_vae::AutoencoderKl::new(&cfg, vb).unwrap();
    let x = shapes_batch(1, 16);
    let out = vae
        .decode(&vae.encode(&x, Tiling::Off).unwrap().mean, Tiling::Off)
        .unwrap();
    let grads = out.sum_all().unwrap().backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    let reached = vars.values().filter(|v| grads.get(v.as_tensor()).is_some()).count();
    assert!(reached < vars.len() / 2, "{reached} of {} reached", vars.len());
}

#[test]
fn fresh_init_is_seeded_and_torch_like() {
    let cfg = tiny_config();
    let a = training::varmap_tensors(&training::init_varmap(&cfg, 5, &Device::Cpu).unwrap()).unwrap();
    let b = training::varmap_tensors(&training::init_varmap(&cfg, 5, &Device::Cpu).unwrap()).unwrap();
    let c = training::varmap_tensors(&training::init_varmap(&cfg, 6, &Device::Cpu).unwrap()).unwrap();
    let w = "encoder.down_blocks.0.resnets.0.conv1.weight";
    assert_eq!(max_abs_diff(&a[w], &b[w]).0, 0.0);
    assert!(max_abs_diff(&a[w], &c[w]).0 > 0.0);
    // conv1: 8 -> 8 channels, 3x3: U(±1/√72); its bias the same bound.
    let bound = 1.0 / 72f32.sqrt();
    for name in [w, "encoder.down_blocks.0.resnets.0.conv1.bias"] {
        let v = a[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(max <= bound && max > 0.8 * bound, "{name}: max {max}, bound {bound}");
    }
    // attention linears: U(±1/√16)
    let v = a["encoder.mid_block.attentions.0.to_q.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(v.iter().all(|x| x.abs() <= 0.25) && v.iter().any(|x| x.abs() > 0.2));
    let norm = "decoder.conv_norm_out";
    assert!(a[&format!("{norm}.weight")]
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|&x| x == 1.0));
    assert!(a[&format!("{norm}.bias")]
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|&x| x == 0.0));
}

#[test]
fn adamw_steps_lower_the_loss() {
    let (varmap, vae, noise) = fresh_tiny(1, 4);
    let x = shapes_batch(4, 16);
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 2e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let mut losses = Vec::new();
    for _ in 0..12 {
        let f = training::forward(&vae, &x, &noise).unwrap();
        let loss = training::vae_loss(&x, &f.reconstruction, &f.posterior, LossWeights::default()).unwrap();
        losses.push(loss.total.to_scalar::<f32>().unwrap());
        opt.backward_step(&loss.total).unwrap();
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.7 * first, "losses {losses:?}");
}

#[test]
fn saved_folder_loads_for_inference() {
    let cfg = tiny_config();
    let varmap = training::init_varmap(&cfg, 2, &Device::Cpu).unwrap();
    let dir = std::env::temp_dir().join(format!("pixart-vae-save-{}", std::process::id()));
    training::save_diffusers(&dir, &cfg, &varmap).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(json["_class_name"], "AutoencoderKL");
    assert_eq!(json["block_out_channels"], serde_json::json!([8, 16]));
    let fast = load_vae(&dir, DType::F32, &Device::Cpu).unwrap();
    let slow = training::trainable(&cfg, &varmap, &Device::Cpu).unwrap();
    let x = shapes_batch(1, 16);
    let a = fast.encode(&x, Tiling::Off).unwrap().mean;
    let b = slow.encode(&x, Tiling::Off).unwrap().mean;
    assert_close("mean", &a, &b, 1e-5);
    let (_, reloaded) = training::load_varmap(&dir, &Device::Cpu).unwrap();
    let (a, b) = (
        training::varmap_tensors(&varmap).unwrap(),
        training::varmap_tensors(&reloaded).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (k, v) in &a {
        assert_eq!(max_abs_diff(v, &b[k]).0, 0.0, "{k}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
