//! Bad checkpoints and configs give one error that names every problem (never a panic).
use pixart_core::testing::fixtures_root;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use pixart_model::loading::{load_transformer, LoadOptions};

fn fixture(case: &str) -> PathBuf {
    fixtures_root().join("golden/transformer").join(case)
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pixart-load-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of the `base` fixture whose weights went through `edit`.
fn edited(name: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    let dir = tempdir(name);
    std::fs::copy(fixture("base").join("config.json"), dir.join("config.json")).unwrap();
    let mut w = candle_core::safetensors::load(
        fixture("base").join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    edit(&mut w);
    candle_core::safetensors::save(&w, dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    dir
}

fn load_err(path: &Path) -> String {
    match load_transformer(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "message is not one line: {msg}");
            msg
        }
    }
}

#[test]
fn truncated_file() {
    let dir = tempdir("truncated");
    std::fs::copy(fixture("base").join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(fixture("base").join("diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(
        dir.join("diffusion_pytorch_model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");
    assert!(msg.contains("not a valid safetensors file"), "{msg}");
}

#[test]
fn missing_unexpected_and_misshaped_tensors_are_all_reported() {
    let dir = edited("inventory", |w| {
        w.remove("transformer_blocks.1.attn2.to_k.weight");
        w.remove("proj_out.bias");
        w.insert(
            "transformer_blocks.0.ff.net.2.weight".into(),
            Tensor::zeros((24, 5), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        w.insert(
            "extra.weight".into(),
            Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = load_err(&dir);
    for needle in [
        "missing tensor `transformer_blocks.1.attn2.to_k.weight`",
        "missing tensor `proj_out.bias`",
        "tensor `transformer_blocks.0.ff.net.2.weight` has shape [24, 5], expected [24, 96]",
        "unexpected tensor `extra.weight`",
    ] {
        assert!(msg.contains(needle), "`{needle}` not in: {msg}");
    }
}

#[test]
fn broken_configs_name_the_file_and_key() {
    let cases: [(&str, &str, &str); 4] = [
        ("json", "{\"num_layers\": 2,", "invalid config"),
        ("type", "{\"num_layers\": \"two\"}", "num_layers"),
        ("zero", "{\"num_attention_heads\": 0}", "num_attention_heads"),
        (
            "kv",
            "{\"num_layers\": 2, \"kv_compress\": {\"sampling\": \"conv\", \"scale_factor\": 2, \"layers\": [5]}}",
            "layer 5",
        ),
    ];
    for (name, text, needle) in cases {
        let dir = tempdir(&format!("cfg-{name}"));
        std::fs::copy(
            fixture("base").join("diffusion_pytorch_model.safetensors"),
            dir.join("diffusion_pytorch_model.safetensors"),
        )
        .unwrap();
        std::fs::write(dir.join("config.json"), text).unwrap();
        let msg = load_err(&dir);
        assert!(msg.contains("config.json"), "{name}: {msg}");
        assert!(msg.contains(needle), "{name}: `{needle}` not in: {msg}");
    }
}

#[test]
fn missing_config_and_missing_weights() {
    let dir = tempdir("noconfig");
    std::fs::copy(
        fixture("base").join("diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    assert!(load_err(&dir).contains("config.json"));
    let dir = tempdir("noweights");
    std::fs::copy(fixture("base").join("config.json"), dir.join("config.json")).unwrap();
    assert!(load_err(&dir).contains("no weight file"));
}

#[test]
fn sharded_checkpoint_loads() {
    let dir = tempdir("sharded");
    std::fs::copy(fixture("base").join("config.json"), dir.join("config.json")).unwrap();
    let w = candle_core::safetensors::load(
        fixture("base").join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (i, (k, v)) in w.into_iter().enumerate() {
        let (shard, file) = if i % 2 == 0 {
            (&mut a, "part-1.safetensors")
        } else {
            (&mut b, "part-2.safetensors")
        };
        shard.insert(k.clone(), v);
        map.insert(k, file.into());
    }
    candle_core::safetensors::save(&a, dir.join("part-1.safetensors")).unwrap();
    candle_core::safetensors::save(&b, dir.join("part-2.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let loaded = load_transformer(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.model.config().num_layers, 2);
    // A shard that is gone is named.
    std::fs::remove_file(dir.join("part-2.safetensors")).unwrap();
    assert!(load_err(&dir).contains("part-2.safetensors"));
}

#[test]
fn micro_conditions_demanded_by_config_but_absent() {
    let dir = tempdir("micro-missing");
    std::fs::copy(
        fixture("base").join("diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("base").join("config.json")).unwrap()).unwrap();
    cfg["use_additional_conditions"] = true.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    assert!(load_err(&dir).contains("missing tensor `adaln_single.emb.resolution_embedder.linear_1.weight`"));
}

#[test]
fn sample_size_128_without_the_key_does_not_turn_micro_conditions_on() {
    // The diffusers pitfall: a config without `use_additional_conditions` at sample_size 128.
    let dir = tempdir("pitfall");
    std::fs::copy(
        fixture("base").join("diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("base").join("config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("use_additional_conditions");
    cfg["sample_size"] = 128.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let loaded = load_transformer(&dir, &LoadOptions::default()).unwrap();
    assert!(!loaded.report.micro_conditions);
}

#[test]
fn bad_forward_inputs_are_errors() {
    let loaded = load_transformer(&fixture("base"), &LoadOptions::default()).unwrap();
    let m = &loaded.model;
    let dev = Device::Cpu;
    let y = Tensor::zeros((1, 5, 32), candle_core::DType::F32, &dev).unwrap();
    let t = Tensor::new(&[10f32], &dev).unwrap();
    let odd = Tensor::zeros((1, 4, 7, 8), candle_core::DType::F32, &dev).unwrap();
    assert!(m.forward(&odd, &t, &y, None).unwrap_err().to_string().contains("7x8"));
    let chans = Tensor::zeros((1, 3, 8, 8), candle_core::DType::F32, &dev).unwrap();
    assert!(m
        .forward(&chans, &t, &y, None)
        .unwrap_err()
        .to_string()
        .contains("3 channels"));
    let x = Tensor::zeros((1, 4, 8, 8), candle_core::DType::F32, &dev).unwrap();
    let bad_y = Tensor::zeros((1, 5, 31), candle_core::DType::F32, &dev).unwrap();
    assert!(m
        .forward(&x, &t, &bad_y, None)
        .unwrap_err()
        .to_string()
        .contains("31 features"));
    let bad_mask = Tensor::zeros((1, 4), candle_core::DType::F32, &dev).unwrap();
    assert!(m
        .forward(&x, &t, &y, Some(&bad_mask))
        .unwrap_err()
        .to_string()
        .contains("encoder_attention_mask"));
}
