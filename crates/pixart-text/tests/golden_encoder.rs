//! T5 encoder parity with transformers 5.23.0 `T5EncoderModel` (fixtures/golden/text, made by
//! tools/golden/gen_text.py: a tiny random gated-gelu model with every norm weight randomised),
//! plus loading checks.
use pixart_core::testing::{assert_close, max_abs_diff};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use pixart_text::loading::{load_text_encoder, random_text_encoder, run_text_encoder};
use pixart_text::t5::relative_position_bucket;
use pixart_text::{bench_text_encoder, T5Config};

/// Absolute tolerance of the f32 comparisons against the f32 reference.
const ATOL: f32 = 1e-5;
/// Absolute tolerance of bf16 weights and activations against the f32 reference (outputs have
/// std about 1 and max about 4.3).
const BF16_ATOL: f32 = 0.15;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/text")
}

fn encoder_dir() -> PathBuf {
    golden_dir().join("text_encoder")
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(golden_dir().join("io.safetensors"), &Device::Cpu).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pixart-text-enc-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn forward_matches_transformers() {
    let t = io();
    let model = load_text_encoder(&encoder_dir(), DType::F32, &Device::Cpu).unwrap();
    let mut trace = Vec::new();
    let out = model
        .forward_traced(&t["input_ids"], Some(&t["attention_mask"]), &mut trace)
        .unwrap();
    assert_eq!(trace.len(), 1 + model.config().num_layers);
    for (name, got) in &trace {
        assert_close(name, got, &t[name.as_str()], ATOL);
    }
    assert_close("last_hidden_state", &out, &t["last_hidden_state"], ATOL);
}

#[test]
fn relative_position_buckets_match_transformers() {
    let t = io();
    let rel = t["relative_position"].to_vec1::<i64>().unwrap();
    let want = t["relative_position_bucket"].to_vec1::<i64>().unwrap();
    for (r, w) in rel.iter().zip(&want) {
        assert_eq!(
            relative_position_bucket(*r, true, 32, 128) as i64,
            *w,
            "relative position {r}"
        );
    }
}

#[test]
fn padding_does_not_change_valid_positions() {
    let t = io();
    let model = load_text_encoder(&encoder_dir(), DType::F32, &Device::Cpu).unwrap();
    let ids = t["input_ids"].narrow(0, 0, 1).unwrap();
    let mask = t["attention_mask"].narrow(0, 0, 1).unwrap();
    let valid = mask.sum_all().unwrap().to_scalar::<i64>().unwrap() as usize;
    let padded = model.forward(&ids, Some(&mask)).unwrap();
    // The valid tokens alone, with no padding at all.
    let alone = model.forward(&ids.narrow(1, 0, valid).unwrap(), None).unwrap();
    assert_close("valid prefix", &padded.narrow(1, 0, valid).unwrap(), &alone, ATOL);
    // Different pad ids under the mask change nothing either.
    let other_pads = Tensor::cat(
        &[
            ids.narrow(1, 0, valid).unwrap(),
            Tensor::full(7i64, (1, ids.dim(1).unwrap() - valid), &Device::Cpu).unwrap(),
        ],
        1,
    )
    .unwrap();
    let out2 = model.forward(&other_pads, Some(&mask)).unwrap();
    assert_close("other pad ids", &out2.narrow(1, 0, valid).unwrap(), &alone, ATOL);
    // Without the mask the padding does leak into the valid positions.
    let unmasked = model.forward(&ids, None).unwrap();
    assert!(max_abs_diff(&unmasked.narrow(1, 0, valid).unwrap(), &alone).0 > 1e-3);
}

#[test]
fn forward_valid_matches_the_reference_and_ignores_the_batch() {
    let t = io();
    let model = load_text_encoder(&encoder_dir(), DType::F32, &Device::Cpu).unwrap();
    let (ids, mask) = (&t["input_ids"], &t["attention_mask"]);
    let b = ids.dim(0).unwrap();
    let out = model.forward_valid(ids, mask).unwrap();
    assert_eq!(out.dims(), t["last_hidden_state"].dims());
    // Valid positions: transformers' output on the padded batch; padded positions: zero.
    let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap(); // (b, l, 1)
    let want = t["last_hidden_state"].broadcast_mul(&m).unwrap();
    assert_close("forward_valid", &out, &want, ATOL);
    assert_eq!(
        out.broadcast_mul(&m).unwrap().to_vec3::<f32>().unwrap(),
        out.to_vec3::<f32>().unwrap()
    );
    // Each row alone gives the same bits as in the batch.
    for i in 0..b {
        let alone = model
            .forward_valid(&ids.narrow(0, i, 1).unwrap(), &mask.narrow(0, i, 1).unwrap())
            .unwrap();
        assert_eq!(max_abs_diff(&alone, &out.narrow(0, i, 1).unwrap()).0, 0.0, "row {i}");
    }
    // A mask that is not a prefix of ones falls back to the masked full-length forward.
    let l = ids.dim(1).unwrap();
    let holes = Tensor::from_vec(
        (0..l).map(|j| i64::from(j % 2 == 0)).collect::<Vec<_>>(),
        (1, l),
        &Device::Cpu,
    )
    .unwrap();
    let row = ids.narrow(0, 0, 1).unwrap();
    let a = model.forward_valid(&row, &holes).unwrap();
    let full = model.forward(&row, Some(&holes)).unwrap();
    assert_eq!(max_abs_diff(&a, &full).0, 0.0);
}

#[test]
fn bf16_is_close_to_f32() {
    let t = io();
    let model = load_text_encoder(&encoder_dir(), DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(model.dtype(), DType::BF16);
    let out = model.forward(&t["input_ids"], Some(&t["attention_mask"])).unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    assert_close("bf16 last_hidden_state", &out, &t["last_hidden_state"], BF16_ATOL);
}

#[test]
fn f16_is_refused() {
    let err = load_text_encoder(&encoder_dir(), DType::F16, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("f16") || err.contains("F16"), "{err}");
}

#[test]
fn run_text_encoder_returns_f32_last_hidden_state() {
    let t = io();
    let inputs = HashMap::from([
        ("input_ids".to_string(), t["input_ids"].clone()),
        ("attention_mask".to_string(), t["attention_mask"].clone()),
    ]);
    let out = run_text_encoder(&encoder_dir(), &inputs, DType::F32, &Device::Cpu).unwrap();
    let h = &out["last_hidden_state"];
    assert_eq!(h.dtype(), DType::F32);
    assert_close("run_text_encoder", h, &t["last_hidden_state"], ATOL);
    // u32 ids work too; ids outside the vocabulary are an error, not a crash.
    let ids_u32 = t["input_ids"].to_dtype(DType::U32).unwrap();
    let model = load_text_encoder(&golden_dir(), DType::F32, &Device::Cpu).unwrap(); // pipeline folder
    let h2 = model.forward(&ids_u32, Some(&t["attention_mask"])).unwrap();
    assert_close("u32 ids", &h2, &t["last_hidden_state"], ATOL);
    let bad = Tensor::new(&[[5i64, 100_000]], &Device::Cpu).unwrap();
    let err = model.forward(&bad, None).unwrap_err().to_string();
    assert!(err.contains("100000"), "{err}");
}

fn copy_config(to: &Path) {
    std::fs::copy(encoder_dir().join("config.json"), to.join("config.json")).unwrap();
}

fn weights() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(encoder_dir().join("model.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn sharded_index_loads() {
    let d = temp_dir("sharded");
    copy_config(&d);
    let all = weights();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let half = names.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&names[..half], &names[half..]].iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let shard: HashMap<String, Tensor> = part.iter().map(|n| ((*n).clone(), all[*n].clone())).collect();
        candle_core::safetensors::save(&shard, d.join(&file)).unwrap();
        for n in part.iter() {
            weight_map.insert((*n).clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let t = io();
    let model = load_text_encoder(&d, DType::F32, &Device::Cpu).unwrap();
    let out = model.forward(&t["input_ids"], Some(&t["attention_mask"])).unwrap();
    assert_close("sharded", &out, &t["last_hidden_state"], ATOL);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn embed_tokens_name_is_accepted() {
    let d = temp_dir("embed_tokens");
    copy_config(&d);
    let mut all = weights();
    let shared = all.remove("shared.weight").unwrap();
    all.insert("encoder.embed_tokens.weight".into(), shared.clone());
    candle_core::safetensors::save(&all, d.join("model.safetensors")).unwrap();
    let t = io();
    let out = load_text_encoder(&d, DType::F32, &Device::Cpu)
        .unwrap()
        .forward(&t["input_ids"], Some(&t["attention_mask"]))
        .unwrap();
    assert_close("encoder.embed_tokens", &out, &t["last_hidden_state"], ATOL);
    // Both names (a tied copy) load as well.
    all.insert("shared.weight".into(), shared);
    candle_core::safetensors::save(&all, d.join("model.safetensors")).unwrap();
    load_text_encoder(&d, DType::F32, &Device::Cpu).unwrap();
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_weights_report_every_problem() {
    let d = temp_dir("badweights");
    copy_config(&d);
    let mut all = weights();
    all.remove("encoder.block.1.layer.1.DenseReluDense.wi_1.weight")
        .unwrap();
    all.insert(
        "encoder.final_layer_norm.weight".into(),
        Tensor::ones(31, DType::F32, &Device::Cpu).unwrap(),
    );
    all.insert(
        "encoder.block.2.layer.0.SelfAttention.extra.weight".into(),
        Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&all, d.join("model.safetensors")).unwrap();
    let msg = load_text_encoder(&d, DType::F32, &Device::Cpu).unwrap_err().to_string();
    for needle in [
        "missing tensor `encoder.block.1.layer.1.DenseReluDense.wi_1.weight`",
        "tensor `encoder.final_layer_norm.weight` has shape [31], expected [32]",
        "unexpected tensor `encoder.block.2.layer.0.SelfAttention.extra.weight`",
        "model.safetensors",
    ] {
        assert!(msg.contains(needle), "`{needle}` not in: {msg}");
    }
    assert_eq!(msg.lines().count(), 1, "{msg}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_config_is_reported() {
    let d = temp_dir("badconfig");
    std::fs::copy(encoder_dir().join("model.safetensors"), d.join("model.safetensors")).unwrap();
    let cases = [
        ("{\"d_model\": 32,", "invalid config"),
        ("{\"d_model\": \"wide\"}", "\"wide\", expected usize"),
        ("{\"num_heads\": 0}", "num_heads must be positive"),
        ("{\"feed_forward_proj\": \"gated-tanhshrink\"}", "tanhshrink"),
    ];
    for (text, needle) in cases {
        std::fs::write(d.join("config.json"), text).unwrap();
        let msg = load_text_encoder(&d, DType::F32, &Device::Cpu).unwrap_err().to_string();
        assert!(msg.contains(needle) && msg.contains("config.json"), "{text}: {msg}");
    }
    // A config that disagrees with the weights is reported as shape problems.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(encoder_dir().join("config.json")).unwrap()).unwrap();
    cfg["d_ff"] = 64.into();
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let msg = load_text_encoder(&d, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(
        msg.contains("wi_0.weight` has shape [48, 32], expected [64, 32]"),
        "{msg}"
    );
    std::fs::remove_file(d.join("config.json")).unwrap();
    let msg = load_text_encoder(&d, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("config.json"), "{msg}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// Tokenizer and encoder together: the golden prompts through `to_tensors` give the golden
/// rows' hidden states (row 1 is the empty prompt padded to 140).
#[test]
fn tokenizer_to_encoder() {
    let t = io();
    let tok = pixart_text::T5Tokenizer::from_dir(&golden_dir().join("tokenizer")).unwrap();
    let enc = tok.encode("", 140).unwrap();
    let (ids, mask) = pixart_text::to_tensors(&[enc], &Device::Cpu).unwrap();
    assert_eq!(ids.dtype(), DType::I64);
    assert_eq!(
        ids.to_vec2::<i64>().unwrap()[0],
        t["input_ids"].to_vec2::<i64>().unwrap()[1]
    );
    let model = load_text_encoder(&encoder_dir(), DType::F32, &Device::Cpu).unwrap();
    let out = model.forward(&ids, Some(&mask)).unwrap();
    let want = t["last_hidden_state"].narrow(0, 1, 1).unwrap();
    assert_close("empty prompt", &out, &want, ATOL);
}

#[test]
fn mask_shape_mismatch_is_an_error() {
    let t = io();
    let model = load_text_encoder(&encoder_dir(), DType::F32, &Device::Cpu).unwrap();
    let mask = t["attention_mask"].narrow(1, 0, 10).unwrap();
    let err = model.forward(&t["input_ids"], Some(&mask)).unwrap_err().to_string();
    assert!(err.contains("attention_mask"), "{err}");
}

#[test]
fn random_tiny_model_and_bench() {
    let cfg: T5Config =
        serde_json::from_str(&std::fs::read_to_string(encoder_dir().join("config.json")).unwrap()).unwrap();
    let m = random_text_encoder(&cfg, DType::BF16, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[3u32, 4, 5, 1]], &Device::Cpu).unwrap();
    assert_eq!(m.forward(&ids, None).unwrap().dims(), [1, 4, 32]);
    let r = bench_text_encoder(cfg, DType::F32, 16, 2).unwrap();
    assert!(r.seconds > 0.0);
    let xxl = T5Config::xxl();
    xxl.validate().unwrap();
    // ~4.76 B parameters.
    assert!(
        (4_700_000_000..4_800_000_000).contains(&xxl.num_parameters()),
        "{}",
        xxl.num_parameters()
    );
}

/// T5-XXL encoder, random bf16 weights, built once, then one forward of 1×300 and one of 2×300
/// tokens on the CPU (all tokens valid):
/// `cargo test -p pixart-text --test golden_encoder -- --ignored --nocapture xxl`.
#[test]
#[ignore = "needs ~10 GB of memory and minutes of CPU"]
fn bench_xxl_bf16() {
    let gib = |b: Option<u64>| b.unwrap_or(0) as f64 / (1u64 << 30) as f64;
    let t0 = std::time::Instant::now();
    let model = pixart_text::random_xxl(DType::BF16, &Device::Cpu).unwrap();
    eprintln!(
        "T5-XXL bf16 random build: {:.1} s, peak RSS {:.2} GiB",
        t0.elapsed().as_secs_f64(),
        gib(pixart_core::mem::peak_rss_bytes())
    );
    for batch in [1usize, 2] {
        let ids: Vec<u32> = (0..batch * 300).map(|i| (i * 7919 % 32000) as u32 + 3).collect();
        let ids = Tensor::from_vec(ids, (batch, 300), &Device::Cpu).unwrap();
        let mask = Tensor::ones((batch, 300), DType::U32, &Device::Cpu).unwrap();
        let t1 = std::time::Instant::now();
        let out = model.forward(&ids, Some(&mask)).unwrap();
        assert_eq!(out.dims(), [batch, 300, 4096]);
        eprintln!(
            "T5-XXL bf16 {batch}x300 forward: {:.1} s, peak RSS {:.2} GiB",
            t1.elapsed().as_secs_f64(),
            gib(pixart_core::mem::peak_rss_bytes())
        );
    }
}
