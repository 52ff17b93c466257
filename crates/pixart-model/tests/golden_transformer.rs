//! Golden tests against diffusers' PixArtTransformer2DModel (and a PyTorch port of the
//! original AttentionKVCompress), from fixtures/golden/transformer (tools/golden/gen_transformer.py).
use pixart_core::testing::{assert_close, fixtures_root};
use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use pixart_model::loading::{load_transformer, Layout, LoadOptions};
use pixart_model::AddedCond;

/// Absolute tolerance of every comparison (f32 model against the f32 reference).
const ATOL: f32 = 1e-5;

/// The device under test: `PIXART_TEST_DEVICE=cuda` reruns these tests on the GPU
/// (tools/device/gpu-check.sh); the CPU otherwise.
fn device() -> Device {
    match std::env::var("PIXART_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0).expect("PIXART_TEST_DEVICE=cuda but no CUDA device"),
        _ => Device::Cpu,
    }
}

/// Load options on the device under test.
fn opts() -> LoadOptions {
    LoadOptions {
        device: device(),
        ..LoadOptions::default()
    }
}

fn case_dir(case: &str) -> PathBuf {
    fixtures_root().join("golden/transformer").join(case)
}

fn io(case: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(case_dir(case).join("io.safetensors"), &Device::Cpu).unwrap()
}

/// Loads `case`, runs the traced forward and compares the output and every intermediate.
fn check_case(case: &str) {
    check_model(case, &case_dir(case), &opts(), Layout::Diffusers);
}

fn check_model(case: &str, path: &std::path::Path, opts: &LoadOptions, layout: Layout) {
    let t = io(case);
    let loaded = load_transformer(path, opts).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(loaded.layout, layout, "{case}: layout");
    let m = &loaded.model;
    let ctx = m
        .encode_context(&t["encoder_hidden_states"], Some(&t["encoder_attention_mask"]))
        .unwrap();
    let cond = t.get("resolution").map(|r| AddedCond {
        resolution: r.clone(),
        aspect_ratio: t["aspect_ratio"].clone(),
    });
    let mut trace = Vec::new();
    let out = m
        .forward_traced(
            &t["hidden_states"],
            &t["timestep"],
            &ctx,
            cond.as_ref(),
            None,
            &mut trace,
        )
        .unwrap();
    for (name, got) in &trace {
        let want = &t[&format!("trace.{name}")];
        assert_close(&format!("{case}/{name}"), got, want, ATOL);
    }
    assert_eq!(trace.len(), 6 + m.config().num_layers, "{case}: traced intermediates");
    assert_close(&format!("{case}/sample"), &out, &t["sample"], ATOL);
}

#[test]
fn base_forward_and_intermediates() {
    check_case("base");
}

#[test]
fn caption_projection() {
    let t = io("base");
    let loaded = load_transformer(&case_dir("base"), &opts()).unwrap();
    let y = loaded.model.project_caption(&t["encoder_hidden_states"]).unwrap();
    assert_close("base/caption", &y, &t["trace.caption"], ATOL);
}

#[test]
fn non_square_latents_at_three_interpolation_scales() {
    for s in ["0.5", "1.0", "2.0"] {
        check_case(&format!("nonsquare_s{s}"));
    }
}

#[test]
fn fractional_timesteps_and_default_interpolation_scale() {
    check_case("fractional_t");
}

#[test]
fn patch_size_one_with_interpolated_positions() {
    check_case("patch1");
}

#[test]
fn micro_conditions_from_weights() {
    check_case("micro");
    let loaded = load_transformer(&case_dir("micro"), &opts()).unwrap();
    assert!(loaded.report.micro_conditions);
    let base = load_transformer(&case_dir("base"), &opts()).unwrap();
    assert!(!base.report.micro_conditions);
}

#[test]
fn micro_conditions_derived_from_latent_size() {
    // The fixture's micro-conditions are the defaults for a 64x64 px image (8x8 latent).
    let t = io("micro");
    let loaded = load_transformer(&case_dir("micro"), &opts()).unwrap();
    let out = loaded
        .model
        .forward(
            &t["hidden_states"],
            &t["timestep"],
            &t["encoder_hidden_states"],
            Some(&t["encoder_attention_mask"]),
        )
        .unwrap();
    assert_close("micro/derived", &out, &t["sample"], ATOL);
}

#[test]
fn kv_compress_conv() {
    check_case("kv_conv");
    check_case("kv_conv_r3");
}

#[test]
fn kv_compress_conv_odd_grid_floors() {
    check_case("kv_conv_odd");
}

#[test]
fn kv_compress_parameter_free_modes() {
    check_case("kv_uniform");
    check_case("kv_ave");
}

#[test]
fn original_layout_twin_gives_the_same_output() {
    for file in ["original.pth", "original_plain.pth", "original.safetensors"] {
        check_model("base", &case_dir("base").join(file), &opts(), Layout::Original);
    }
    check_model(
        "kv_conv",
        &case_dir("kv_conv").join("original.safetensors"),
        &opts(),
        Layout::Original,
    );
}

#[test]
fn original_layout_without_config_is_inferred() {
    let dir = tempdir("orig-noconfig");
    std::fs::copy(case_dir("kv_conv").join("original.pth"), dir.join("model.pth")).unwrap();
    let opts = LoadOptions {
        heads: Some(2),
        interpolation_scale: Some(1.0),
        ..opts()
    };
    check_model("kv_conv", &dir.join("model.pth"), &opts, Layout::Original);
    let loaded = load_transformer(&dir.join("model.pth"), &opts).unwrap();
    let kv = loaded.config.kv_compress.unwrap();
    assert_eq!(kv.layers, vec![1, 2]);
    assert_eq!(kv.scale_factor, 2);
    assert_eq!(loaded.config.sample_size, 8);
}

#[test]
fn kv_compress_added_to_a_checkpoint_without_it_starts_from_averaging() {
    // base has no KV weights: asking for conv compression initialises it (weak-to-strong).
    let kv = pixart_model::config::KvCompressSpec::parse("conv:2:1").unwrap();
    let opts = LoadOptions {
        kv_compress: Some(kv),
        ..opts()
    };
    let loaded = load_transformer(&case_dir("base"), &opts).unwrap();
    assert_eq!(loaded.report.kv_averaging_init, vec![1]);
    let t = io("base");
    let out = loaded
        .model
        .forward(
            &t["hidden_states"],
            &t["timestep"],
            &t["encoder_hidden_states"],
            Some(&t["encoder_attention_mask"]),
        )
        .unwrap();
    // It changes the output (the layer now attends to 4x fewer keys), but stays finite.
    let diff = (out - &t["sample"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff.is_finite() && diff > 1e-3, "diff {diff}");
}

#[test]
fn kv_compress_can_be_turned_off_on_a_compressed_checkpoint() {
    let opts = LoadOptions {
        kv_compress: Some(pixart_model::config::KvCompressSpec::Off),
        ..opts()
    };
    let loaded = load_transformer(&case_dir("kv_conv"), &opts).unwrap();
    assert!(loaded.config.kv_compress.is_none());
}

#[test]
fn bf16_and_f16_are_close_to_f32() {
    let t = io("base");
    for dtype in [DType::BF16, DType::F16] {
        let opts = LoadOptions { dtype, ..opts() };
        let loaded = load_transformer(&case_dir("base"), &opts).unwrap();
        let out = loaded
            .model
            .forward(
                &t["hidden_states"],
                &t["timestep"],
                &t["encoder_hidden_states"],
                Some(&t["encoder_attention_mask"]),
            )
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let want = &t["sample"];
        let err = (&out - want)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        let norm = want
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        eprintln!(
            "{dtype:?}: relative L2 error against the f32 reference {:.2e}",
            err / norm
        );
        assert!(err / norm < 3e-2, "{dtype:?} relative error {}", err / norm);
    }
}

#[test]
fn padding_tokens_do_not_matter() {
    // Changing the features of masked caption tokens must not change the output.
    let t = io("base");
    let loaded = load_transformer(&case_dir("base"), &opts()).unwrap();
    let y = &t["encoder_hidden_states"];
    let mask = &t["encoder_attention_mask"];
    let noise = Tensor::randn(0f32, 5.0, y.dims(), &Device::Cpu).unwrap();
    let keep = mask
        .to_dtype(DType::F32)
        .unwrap()
        .unsqueeze(2)
        .unwrap()
        .broadcast_as(y.dims())
        .unwrap();
    let y2 = (y + noise.mul(&(1.0 - keep).unwrap()).unwrap()).unwrap();
    let m = &loaded.model;
    let a = m.forward(&t["hidden_states"], &t["timestep"], y, Some(mask)).unwrap();
    let b = m.forward(&t["hidden_states"], &t["timestep"], &y2, Some(mask)).unwrap();
    assert_close("padding", &a, &b, 1e-6);
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pixart-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
