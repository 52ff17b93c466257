//! Loading and input errors name the problem.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use pixart_vae::{load_vae, run_vae_decode, run_vae_encode, Tiling};

fn fixture(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/golden/vae")
        .join(case)
}

/// A scratch copy of the `plain` fixture whose weights pass through `edit`.
fn edited_copy(name: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pixart-vae-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("plain");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut w = candle_core::safetensors::load(
        src.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    edit(&mut w);
    candle_core::safetensors::save(&w, dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    load_vae(dir, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string()
}

#[test]
fn missing_tensor_is_named() {
    let dir = edited_copy("missing", |w| {
        w.remove("decoder.up_blocks.1.resnets.0.norm2.bias")
            .unwrap();
    });
    let e = load_err(&dir);
    assert!(
        e.contains("missing tensor `decoder.up_blocks.1.resnets.0.norm2.bias`"),
        "{e}"
    );
}

#[test]
fn wrong_shape_and_unexpected_are_named() {
    let dir = edited_copy("shape", |w| {
        w.insert(
            "encoder.conv_in.weight".into(),
            Tensor::zeros((5, 3, 3, 3), DType::F32, &Device::Cpu).unwrap(),
        );
        w.insert(
            "decoder.extra.weight".into(),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(&dir);
    assert!(
        e.contains("tensor `encoder.conv_in.weight` has shape [5, 3, 3, 3], expected [4, 3, 3, 3]"),
        "{e}"
    );
    assert!(
        e.contains("unexpected tensor `decoder.extra.weight`"),
        "{e}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let dir = edited_copy("shape2", |w| {
        w.insert(
            "decoder.conv_out.bias".into(),
            Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(&dir);
    assert!(
        e.contains("tensor `decoder.conv_out.bias` has shape [5], expected [3]"),
        "{e}"
    );
}

#[test]
fn broken_config_is_named() {
    let dir = edited_copy("config", |_| {});
    std::fs::write(
        dir.join("config.json"),
        "{\"block_out_channels\": [4, 8], \"layers_per_block\": ",
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("config.json") && e.contains("invalid config"),
        "{e}"
    );

    std::fs::write(dir.join("config.json"), "{\"block_out_channels\": [4, 6], \"norm_num_groups\": 4, \"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\"], \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]}").unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("block_out_channels: 6 is not a positive multiple of norm_num_groups (4)"),
        "{e}"
    );

    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn wrong_latent_channels() {
    let z = Tensor::zeros((1, 4, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let inputs = HashMap::from([("z".to_string(), z)]);
    // `plain` has 3 latent channels.
    let e = run_vae_decode(&fixture("plain"), &inputs, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("latents have 4 channels, but the VAE expects 3"),
        "{e}"
    );
    let e = run_vae_decode(&fixture("plain"), &HashMap::new(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing input tensor `z`"), "{e}");
}

#[test]
fn image_size_not_a_multiple_of_8() {
    let vae = load_vae(&fixture("base"), DType::F32, &Device::Cpu).unwrap();
    let x = Tensor::zeros((1, 3, 30, 32), DType::F32, &Device::Cpu).unwrap();
    let e = vae.encode(&x, Tiling::Off).unwrap_err().to_string();
    assert!(
        e.contains("image size 30x32") && e.contains("multiple of 8"),
        "{e}"
    );
    let x = Tensor::zeros((1, 4, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let inputs = HashMap::from([("sample".to_string(), x)]);
    let e = run_vae_encode(&fixture("base"), &inputs, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("images have 4 channels, but the VAE expects 3"),
        "{e}"
    );
}

#[test]
fn bf16_on_cpu_is_refused() {
    let e = load_vae(&fixture("base"), DType::BF16, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bf16"), "{e}");
}
