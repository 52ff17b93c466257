//! Golden tests of the ControlNet-Transformer against diffusers' research example
//! `examples/research_projects/pixart/controlnet_pixart_alpha.py` (diffusers@58eb52c), from
//! fixtures/golden/controlnet (tools/golden/gen_controlnet.py): every control block's two
//! outputs, every base block's output and the final output within 1e-5; the original-layout
//! `.pth` twin; the scale.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use pixart_core::testing::{assert_close, fixtures_root};
use pixart_model::loading::{load_transformer, Layout, LoadOptions, LoadedTransformer};
use pixart_model::{load_controlnet, Control, LoadedControlNet};

/// Absolute tolerance of every comparison (f32 model against the f32 reference).
const ATOL: f32 = 1e-5;

fn device() -> Device {
    match std::env::var("PIXART_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::new_cuda(0).expect("PIXART_TEST_DEVICE=cuda but no CUDA device"),
        _ => Device::Cpu,
    }
}

fn case_dir(case: &str) -> PathBuf {
    fixtures_root().join("golden/controlnet").join(case)
}

fn io(case: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(case_dir(case).join("io.safetensors"), &Device::Cpu).unwrap()
}

fn transformer(path: &Path) -> LoadedTransformer {
    let opts = LoadOptions {
        device: device(),
        ..LoadOptions::default()
    };
    load_transformer(path, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The case's transformer from its original-layout `.pth` (no config.json: heads, sample size
/// and interpolation scale given as `pixart convert` takes them, from the diffusers config).
fn original_transformer(case: &str) -> LoadedTransformer {
    let diffusers = transformer(&case_dir(case).join("transformer"));
    let c = &diffusers.config;
    let opts = LoadOptions {
        device: device(),
        heads: Some(c.num_attention_heads),
        default_sample_size: c.sample_size,
        interpolation_scale: c.interpolation_scale,
        ..LoadOptions::default()
    };
    let path = case_dir(case).join("transformer_original.pth");
    let t = load_transformer(&path, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(t.layout, Layout::Original);
    t
}

fn controlnet(path: &Path, t: &LoadedTransformer) -> LoadedControlNet {
    load_controlnet(path, &t.config, candle_core::DType::F32, &device())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs the traced forward at `scale` (None: no ControlNet) and returns the output and trace.
fn run(
    case: &str,
    t: &LoadedTransformer,
    cn: &LoadedControlNet,
    scale: Option<f64>,
) -> (Tensor, Vec<(String, Tensor)>) {
    let io = io(case);
    let m = &t.model;
    let ctx = m
        .encode_context_with_controlnet(
            &io["encoder_hidden_states"],
            Some(&io["encoder_attention_mask"]),
            Some(&cn.adapter),
        )
        .unwrap();
    let control = scale.map(|scale| Control {
        adapter: &cn.adapter,
        cond: &io["controlnet_cond"],
        scale,
    });
    let mut trace = Vec::new();
    let out = m
        .forward_traced(
            &io["hidden_states"],
            &io["timestep"],
            &ctx,
            None,
            control.as_ref(),
            &mut trace,
        )
        .unwrap();
    (out, trace)
}

/// Every control block's outputs, every base block's output and the sample.
fn check_case(case: &str, t: &LoadedTransformer, cn: &LoadedControlNet) {
    let want = io(case);
    let (out, trace) = run(case, t, cn, Some(1.0));
    let mut control_outputs = 0;
    for (name, got) in &trace {
        if name.starts_with("control.") || name.starts_with("block.") {
            assert_close(&format!("{case}/{name}"), got, &want[&format!("trace.{name}")], ATOL);
            control_outputs += usize::from(name.starts_with("control."));
        }
    }
    assert_eq!(
        control_outputs,
        2 * cn.config.num_layers,
        "{case}: control outputs traced"
    );
    assert_close(&format!("{case}/sample"), &out, &want["sample"], ATOL);
}

#[test]
fn adapter_folder_matches_the_diffusers_example() {
    for case in ["base", "nonsquare_full"] {
        let t = transformer(&case_dir(case).join("transformer"));
        let cn = controlnet(&case_dir(case).join("controlnet"), &t);
        assert_eq!(cn.layout, Layout::Diffusers);
        check_case(case, &t, &cn);
    }
}

#[test]
fn original_pth_layout_gives_the_same_outputs() {
    for case in ["base", "nonsquare_full"] {
        let t = original_transformer(case);
        let cn = controlnet(&case_dir(case).join("controlnet_original.pth"), &t);
        assert_eq!(cn.layout, Layout::Original);
        assert_eq!(cn.config.num_layers, 2, "{case}: blocks counted from the weights");
        check_case(case, &t, &cn);
    }
}

#[test]
fn a_pipeline_folder_with_a_controlnet_folder_is_found() {
    // The case folder holds transformer/ and controlnet/ side by side, as a pipeline does.
    let t = transformer(&case_dir("base"));
    let cn = controlnet(&case_dir("base"), &t);
    assert_eq!(
        cn.weights,
        case_dir("base").join("controlnet/diffusion_pytorch_model.safetensors")
    );
}

#[test]
fn scale_multiplies_each_after_proj_output() {
    let want = io("base");
    let t = transformer(&case_dir("base").join("transformer"));
    let cn = controlnet(&case_dir("base").join("controlnet"), &t);
    let (half, _) = run("base", &t, &cn, Some(0.5));
    assert_close("base/scale 0.5", &half, &want["sample_scale_0.5"], ATOL);
    let (zero, _) = run("base", &t, &cn, Some(0.0));
    assert_close("base/scale 0", &zero, &want["sample_scale_0.0"], ATOL);
    assert_close("base/plain", &zero, &want["sample_plain"], ATOL);
}

#[test]
fn scale_zero_is_exactly_the_transformer_alone() {
    let t = transformer(&case_dir("base").join("transformer"));
    let cn = controlnet(&case_dir("base").join("controlnet"), &t);
    let (zero, trace) = run("base", &t, &cn, Some(0.0));
    let (plain, _) = run("base", &t, &cn, None);
    let io = io("base");
    let alone = t
        .model
        .forward(
            &io["hidden_states"],
            &io["timestep"],
            &io["encoder_hidden_states"],
            Some(&io["encoder_attention_mask"]),
        )
        .unwrap();
    let bits = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(bits(&zero), bits(&alone), "scale 0 differs from the transformer alone");
    assert_eq!(
        bits(&plain),
        bits(&alone),
        "no control differs from the transformer alone"
    );
    assert!(
        !trace.iter().any(|(n, _)| n.starts_with("control.")),
        "scale 0 ran the ControlNet"
    );
}

#[test]
fn control_latents_of_another_shape_are_refused() {
    let t = transformer(&case_dir("base").join("transformer"));
    let cn = controlnet(&case_dir("base").join("controlnet"), &t);
    let io = io("base");
    let ctx = t
        .model
        .encode_context_with_controlnet(&io["encoder_hidden_states"], None, Some(&cn.adapter))
        .unwrap();
    let wrong = io["controlnet_cond"].narrow(2, 0, 4).unwrap();
    let control = Control {
        adapter: &cn.adapter,
        cond: &wrong,
        scale: 1.0,
    };
    let e = t
        .model
        .forward_with_control(&io["hidden_states"], &io["timestep"], &ctx, None, Some(&control))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("controlnet_cond must have the shape of hidden_states"),
        "{e}"
    );
    // A context encoded without the ControlNet is refused, not indexed out of bounds.
    let plain_ctx = t.model.encode_context(&io["encoder_hidden_states"], None).unwrap();
    let control = Control {
        adapter: &cn.adapter,
        cond: &io["controlnet_cond"],
        scale: 1.0,
    };
    let e = t
        .model
        .forward_with_control(&io["hidden_states"], &io["timestep"], &plain_ctx, None, Some(&control))
        .unwrap_err()
        .to_string();
    assert!(e.contains("encode_context_with_controlnet"), "{e}");
}

#[test]
fn a_controlnet_that_does_not_fit_the_transformer_is_named() {
    // nonsquare_full's base has 3 blocks and the same width: base's 2-copy adapter fits it,
    // but not a 2-block base; and a wider base refuses it by width.
    let small = transformer(&case_dir("nonsquare_full").join("transformer"));
    let mut two_blocks = small.config.clone();
    two_blocks.num_layers = 2;
    let dir = case_dir("base").join("controlnet");
    let e = load_controlnet(&dir, &two_blocks, candle_core::DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&dir.join("config.json").display().to_string()), "{e}");
    assert!(
        e.contains("the ControlNet has 2 blocks; a transformer of 2 blocks takes 1 to 1"),
        "{e}"
    );

    let mut wide = small.config.clone();
    wide.attention_head_dim = 16;
    let e = load_controlnet(&dir, &wide, candle_core::DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    let file = dir.join("diffusion_pytorch_model.safetensors");
    assert!(e.starts_with(&file.display().to_string()), "{e}");
    assert!(e.contains("does not fit the transformer's width 32"), "{e}");
    assert!(!e.contains('\n'), "{e}");

    let pth = case_dir("base").join("controlnet_original.pth");
    let e = load_controlnet(&pth, &two_blocks, candle_core::DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&pth.display().to_string()), "{e}");
    assert!(e.contains("2 blocks"), "{e}");
}
