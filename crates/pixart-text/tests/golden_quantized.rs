//! T5 encoders from single quantized files against transformers 5.23.0 `T5EncoderModel` run on
//! the weights as the reference dequantizes them (fixtures/golden/quant, made by
//! tools/golden/gen_quant_t5.py): a llama.cpp-named GGUF written by gguf-py 0.19.0 (Q8_0 and
//! Q4_K tensors, `t5.*` metadata) and a ComfyUI scaled-fp8 safetensors (float8_e4m3fn with
//! `scale_weight`, one float8_e5m2 tensor, F16 embedding).
use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use pixart_core::gguf::{GgufFile, GgufWriter};
use pixart_core::testing::assert_close;
use pixart_text::loading::load_text_encoder;
use pixart_text::T5Config;

/// Absolute tolerance against the reference on the same (dequantized) weights.
const ATOL: f32 = 1e-5;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/quant")
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("t5_io.safetensors"), &Device::Cpu).unwrap()
}

fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let n = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    (d / n).sqrt()
}

fn run(path: &std::path::Path) -> (pixart_text::T5Encoder, Tensor) {
    let t = io();
    let model = load_text_encoder(path, DType::F32, &Device::Cpu).unwrap();
    let out = model.forward(&t["input_ids"], Some(&t["attention_mask"])).unwrap();
    (model, out)
}

fn tiny_config() -> T5Config {
    T5Config {
        vocab_size: 96,
        d_model: 64,
        d_kv: 16,
        d_ff: 256,
        num_layers: 2,
        num_heads: 4,
        feed_forward_proj: "gated-gelu".into(),
        ..T5Config::xxl()
    }
}

#[test]
fn a_llama_cpp_gguf_runs_as_transformers_on_its_dequantized_weights() {
    let t = io();
    let (model, out) = run(&dir().join("t5_gguf.gguf"));
    assert_eq!(model.config(), &tiny_config());
    // Every projection (2 blocks × q, k, v, o, wi_0, wi_1, wo) and the embedding stay quantized.
    assert_eq!(model.quantized_weights(), 15);
    assert_close("gguf last_hidden_state", &out, &t["gguf.last_hidden_state"], ATOL);
    // The quantization error (Q8_0 tensors; the Q4_K ones are the f32 model's weights).
    let err = rel_l2(&out, &t["f32.last_hidden_state"]);
    eprintln!("GGUF (Q8_0 + Q4_K) vs f32: relative L2 {err:.4}");
    assert!(err > 1e-4 && err < 0.05, "relative L2 {err}");
}

#[test]
fn a_gguf_without_metadata_gets_its_config_from_the_shapes() {
    let file = GgufFile::open(&dir().join("t5_gguf.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for t in file.tensors() {
        w.add_tensor(&t.name, &t.shape, t.dtype, file.data(&t.name).unwrap().to_vec())
            .unwrap();
    }
    let tmp = std::env::temp_dir().join(format!("pixart-t5-nometa-{}.gguf", std::process::id()));
    w.write(&tmp).unwrap();
    let (model, out) = run(&tmp);
    std::fs::remove_file(&tmp).unwrap();
    assert_eq!(model.config(), &tiny_config());
    assert_close("gguf (no metadata)", &out, &io()["gguf.last_hidden_state"], ATOL);
}

#[test]
fn a_comfyui_scaled_fp8_file_runs_as_transformers_on_its_dequantized_weights() {
    let t = io();
    let (model, out) = run(&dir().join("t5_fp8.safetensors"));
    assert_eq!(model.config(), &tiny_config());
    assert_eq!(model.quantized_weights(), 0);
    assert_close("fp8 last_hidden_state", &out, &t["fp8.last_hidden_state"], ATOL);
    let err = rel_l2(&out, &t["f32.last_hidden_state"]);
    eprintln!("scaled fp8 (e4m3fn, one e5m2) vs f32: relative L2 {err:.4}");
    assert!(err > 1e-3 && err < 0.3, "relative L2 {err}");
}

#[test]
fn a_gguf_with_a_foreign_tensor_is_named() {
    let file = GgufFile::open(&dir().join("t5_gguf.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for t in file.tensors() {
        let name = if t.name == "enc.blk.1.attn_k.weight" {
            "blk.1.attn_k.weight"
        } else {
            t.name.as_str()
        };
        w.add_tensor(name, &t.shape, t.dtype, file.data(&t.name).unwrap().to_vec())
            .unwrap();
    }
    let tmp = std::env::temp_dir().join(format!("pixart-t5-foreign-{}.gguf", std::process::id()));
    w.write(&tmp).unwrap();
    let e = load_text_encoder(&tmp, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    std::fs::remove_file(&tmp).unwrap();
    assert!(
        e.contains("t5-foreign") && e.contains("tensor `blk.1.attn_k.weight`: not a T5 encoder tensor"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}

/// The GGUF's tensors dequantized (our dequantizer, bit-exact with gguf-py's) under
/// transformers' names, as a dense model in `dtype`.
fn dense_model(dtype: DType) -> pixart_text::T5Encoder {
    let file = GgufFile::open(&dir().join("t5_gguf.gguf")).unwrap();
    let mut map = HashMap::new();
    for t in file.tensors() {
        let gated = t.name.contains("ffn_up");
        let name = pixart_text::single_file::transformers_name(&t.name, gated).unwrap();
        let mut v = vec![0f32; t.elem_count()];
        pixart_kernels::cpu::quant::dequantize(t.dtype, file.data(&t.name).unwrap(), &mut v).unwrap();
        map.insert(
            name,
            Tensor::from_vec(v, t.shape.as_slice(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        );
    }
    let vb = candle_nn::VarBuilder::from_tensors(map, dtype, &Device::Cpu);
    pixart_text::T5Encoder::new(&tiny_config(), vb).unwrap()
}

#[test]
fn a_gguf_runs_in_bf16_on_its_quantized_weights() {
    let t = io();
    let (ids, mask) = (&t["input_ids"], Some(&t["attention_mask"]));
    let model = load_text_encoder(&dir().join("t5_gguf.gguf"), DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(model.quantized_weights(), 15);
    let out = model.forward(ids, mask).unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    let out = out.to_dtype(DType::F32).unwrap();
    // The same weights dequantized at load into a dense bf16 model: the same bf16 GEMM on the
    // same bf16-rounded weights.
    let dense = dense_model(DType::BF16)
        .forward(ids, mask)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert_close("gguf bf16 vs dense bf16", &out, &dense, 1e-2);
    // Against the f32 reference on the same weights: bf16 rounding only, as large as the dense
    // bf16 model's.
    let (err, dense_err) = (
        rel_l2(&out, &t["gguf.last_hidden_state"]),
        rel_l2(&dense, &t["gguf.last_hidden_state"]),
    );
    eprintln!(
        "GGUF in bf16 vs the f32 reference on the same weights: relative L2 {err:.4} (dense bf16: {dense_err:.4})"
    );
    assert!(
        err < 0.03 && err < 1.2 * dense_err,
        "relative L2 {err}, dense {dense_err}"
    );
}

#[test]
fn configs_read_from_the_headers_and_names_map_both_ways() {
    use pixart_text::single_file::{llama_cpp_name, read_config, transformers_name};
    assert_eq!(read_config(&dir().join("t5_gguf.gguf")).unwrap(), tiny_config());
    assert_eq!(read_config(&dir().join("t5_fp8.safetensors")).unwrap(), tiny_config());
    let file = GgufFile::open(&dir().join("t5_gguf.gguf")).unwrap();
    for t in file.tensors() {
        let hf = transformers_name(&t.name, true).unwrap();
        assert_eq!(llama_cpp_name(&hf).as_deref(), Some(t.name.as_str()));
    }
    assert_eq!(
        transformers_name("enc.blk.3.ffn_up.weight", false).unwrap(),
        "encoder.block.3.layer.1.DenseReluDense.wi.weight"
    );
    assert_eq!(llama_cpp_name("decoder.block.0.layer.0.SelfAttention.q.weight"), None);
}

#[test]
fn quantize_writes_a_gguf_that_runs_like_the_folder() {
    use pixart_core::gguf::GgmlType;
    use pixart_text::quantize::quantize_text_encoder;
    let text = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/text");
    let t = candle_core::safetensors::load(text.join("io.safetensors"), &Device::Cpu).unwrap();
    let (ids, mask) = (&t["input_ids"], Some(&t["attention_mask"]));
    let folder = load_text_encoder(&text.join("text_encoder"), DType::F32, &Device::Cpu).unwrap();
    let want = folder.forward(ids, mask).unwrap();
    let tmp = std::env::temp_dir().join(format!("pixart-quantize-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    // Bounds: the measured errors (F32 0, BF16 0.005, Q8_0 0.015, Q4_0 0.24 on this tiny random
    // model, whose rows are one 32-block wide) with some room.
    for (ty, max_err) in [
        (GgmlType::F32, 1e-6),
        (GgmlType::BF16, 0.02),
        (GgmlType::Q8_0, 0.03),
        (GgmlType::Q4_0, 0.35),
    ] {
        let out = tmp.join(format!("te-{ty}.gguf"));
        let summary = quantize_text_encoder(&text.join("text_encoder"), &out, ty).unwrap();
        let file = GgufFile::open(&out).unwrap();
        assert_eq!(
            file.meta("general.architecture").and_then(|v| v.as_str()),
            Some("t5encoder")
        );
        // Norms and the position bias stay F32; the d_ff = 48 rows of `ffn_down` are not whole
        // 32-blocks and go to BF16.
        for t in file.tensors() {
            let expected = pixart_text::quantize::storage_type(&t.name, &t.shape, ty);
            assert_eq!(t.dtype, expected, "{}", t.name);
        }
        assert!(summary.quantized > 0 && summary.tensors == file.tensors().len());
        let model = load_text_encoder(&out, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(model.config(), folder.config());
        let got = model.forward(ids, mask).unwrap();
        let err = rel_l2(&got, &want);
        eprintln!(
            "pixart quantize {ty}: relative L2 {err:.5} against the f32 folder ({} bytes of tensors)",
            summary.bytes
        );
        assert!(err <= max_err, "{ty}: relative L2 {err}");
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}
