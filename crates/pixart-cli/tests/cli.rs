//! The `pixart` binary end to end: runner outputs against the golden files, conversion, and
//! bad input giving a one-line error and the right exit code.
use pixart_core::testing::fixtures_root;
use std::path::PathBuf;
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pixart"))
}

fn fixture(case: &str) -> PathBuf {
    fixtures_root().join("golden/transformer").join(case)
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pixart-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn max_diff(out: &std::path::Path, case: &str) -> f32 {
    let got = candle_core::safetensors::load(out, &Device::Cpu).unwrap();
    let want = candle_core::safetensors::load(fixture(case).join("io.safetensors"), &Device::Cpu).unwrap();
    (&got["sample"] - &want["sample"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn run_transformer(model: &std::path::Path, case: &str, out: &std::path::Path, extra: &[&str]) -> Output {
    let inputs = fixture(case).join("io.safetensors");
    bin()
        .args(["run", "transformer", "--model"])
        .arg(model)
        .arg("--inputs")
        .arg(&inputs)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn assert_one_line_error(o: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn run_transformer_matches_golden() {
    let dir = tempdir("run");
    for case in ["base", "nonsquare_s2.0", "kv_conv", "micro"] {
        let out = dir.join(format!("{case}.safetensors"));
        let o = run_transformer(&fixture(case), case, &out, &[]);
        assert!(o.status.success(), "{case}: {}", String::from_utf8_lossy(&o.stderr));
        let d = max_diff(&out, case);
        assert!(d <= 1e-5, "{case}: max diff {d}");
    }
}

#[test]
fn interpolation_scale_flag_changes_positions() {
    let dir = tempdir("interp");
    let out = dir.join("o.safetensors");
    // nonsquare_s1.0 shares its weights seed with the others but not the weights themselves;
    // check the flag reaches the model: forcing the scale of a fixture changes nothing,
    // another scale changes the output.
    let o = run_transformer(
        &fixture("nonsquare_s1.0"),
        "nonsquare_s1.0",
        &out,
        &["--interpolation-scale", "1.0"],
    );
    assert!(o.status.success());
    assert!(max_diff(&out, "nonsquare_s1.0") <= 1e-5);
    let o = run_transformer(
        &fixture("nonsquare_s1.0"),
        "nonsquare_s1.0",
        &out,
        &["--interpolation-scale", "2.0"],
    );
    assert!(o.status.success());
    assert!(max_diff(&out, "nonsquare_s1.0") > 1e-3);
}

#[test]
fn convert_original_checkpoint_then_run() {
    let dir = tempdir("convert");
    let conv = dir.join("converted");
    let o = bin()
        .args(["convert", "--input"])
        .arg(fixture("kv_conv").join("original.pth"))
        .arg("--out")
        .arg(&conv)
        .args(["--heads", "2", "--interpolation-scale", "1.0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let weights =
        candle_core::safetensors::load(conv.join("diffusion_pytorch_model.safetensors"), &Device::Cpu).unwrap();
    assert!(weights.contains_key("transformer_blocks.1.attn1.kv_compress.conv.weight"));
    assert!(weights.contains_key("transformer_blocks.0.attn1.to_k.weight"));
    let out = dir.join("o.safetensors");
    let o = run_transformer(&conv, "kv_conv", &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(max_diff(&out, "kv_conv") <= 1e-5);
}

#[test]
fn bad_input_gives_one_line_errors() {
    let dir = tempdir("bad");
    let out = dir.join("o.safetensors");
    // a model folder that does not exist
    let o = run_transformer(&dir.join("nope"), "base", &out, &[]);
    assert_one_line_error(&o, 2, "nope");
    // inputs that are not safetensors
    let o = bin()
        .args(["run", "transformer", "--model"])
        .arg(fixture("base"))
        .arg("--inputs")
        .arg(fixture("base").join("config.json"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "config.json");
    // inputs of another model: wrong caption width
    let o = run_transformer(&fixture("base"), "base", &out, &[]);
    assert!(o.status.success());
    let bad_inputs = dir.join("bad_inputs.safetensors");
    let mut t = candle_core::safetensors::load(fixture("base").join("io.safetensors"), &Device::Cpu).unwrap();
    t.remove("timestep");
    candle_core::safetensors::save(&t, &bad_inputs).unwrap();
    let o = bin()
        .args(["run", "transformer", "--model"])
        .arg(fixture("base"))
        .arg("--inputs")
        .arg(&bad_inputs)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "missing tensor `timestep`");
    // other usage errors
    let o = run_transformer(&fixture("base"), "base", &out, &["--kv-compress", "conv:2:7"]);
    assert_one_line_error(&o, 2, "layer 7");
    let o = run_transformer(&fixture("base"), "base", &out, &["--dtype", "f8"]);
    assert_one_line_error(&o, 2, "f8");
    let o = bin().args(["bench", "transformer", "--size", "100"]).output().unwrap();
    assert_one_line_error(&o, 2, "--size");
    // a truncated original checkpoint
    let bytes = std::fs::read(fixture("base").join("original.pth")).unwrap();
    let trunc = dir.join("trunc.pth");
    std::fs::write(&trunc, &bytes[..bytes.len() / 3]).unwrap();
    let o = bin()
        .args(["convert", "--input"])
        .arg(&trunc)
        .arg("--out")
        .arg(dir.join("c"))
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "trunc.pth");
}

#[test]
fn run_text_encoder_matches_golden() {
    let dir = tempdir("t5");
    let text = fixtures_root().join("golden/text");
    let out = dir.join("o.safetensors");
    let o = bin()
        .args(["run", "text-encoder", "--model"])
        .arg(text.join("text_encoder"))
        .arg("--inputs")
        .arg(text.join("io.safetensors"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let want = candle_core::safetensors::load(text.join("io.safetensors"), &Device::Cpu).unwrap();
    let d = (&got["last_hidden_state"] - &want["last_hidden_state"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d <= 1e-5, "max diff {d}");
    // Inputs that do not fit the model are named: a mask of another shape, an id outside the
    // vocabulary, a flat id list.
    let ids = |v: Vec<i64>, shape: &[usize]| Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
    for (name, input_ids, mask, needle) in [
        (
            "mask.safetensors",
            ids(vec![1, 2, 3, 4, 5, 6], &[2, 3]),
            ids(vec![1; 6], &[3, 2]),
            "attention_mask has shape [3, 2]",
        ),
        (
            "vocab.safetensors",
            ids(vec![1, 2, 99_999], &[1, 3]),
            ids(vec![1; 3], &[1, 3]),
            "input_ids holds id 99999, outside the vocabulary",
        ),
        (
            "flat.safetensors",
            ids(vec![1, 2, 3], &[3]),
            ids(vec![1; 3], &[3]),
            "input_ids must be (batch, length), got [3]",
        ),
    ] {
        let inputs = dir.join(name);
        let map = std::collections::HashMap::from([
            ("input_ids".to_string(), input_ids),
            ("attention_mask".to_string(), mask),
        ]);
        candle_core::safetensors::save(&map, &inputs).unwrap();
        let o = bin()
            .args(["run", "text-encoder", "--model"])
            .arg(text.join("text_encoder"))
            .arg("--inputs")
            .arg(&inputs)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert_one_line_error(&o, 2, &format!("{name}: {needle}"));
    }
}

#[test]
fn run_tokenize_prints_ids_and_mask() {
    let tok = fixtures_root().join("golden/text/tokenizer");
    let o = bin()
        .args(["run", "tokenize", "--model"])
        .arg(&tok)
        .args(["--prompt", "", "--max-length", "5"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The empty prompt is one `</s>` then padding.
    assert_eq!(v["input_ids"], serde_json::json!([1, 0, 0, 0, 0]));
    assert_eq!(v["attention_mask"], serde_json::json!([1, 0, 0, 0, 0]));
    let o = bin()
        .args(["run", "tokenize", "--model"])
        .arg(std::env::temp_dir())
        .args(["--prompt", "x"])
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "spiece.model");
}

#[test]
fn run_vae_decode_and_encode_match_golden() {
    let dir = tempdir("vae");
    let vae = fixtures_root().join("golden/vae/base");
    let io = candle_core::safetensors::load(vae.join("io.safetensors"), &Device::Cpu).unwrap();
    let max_diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let run = |what: &str, inputs: &[(&str, &str)], extra: &[&str]| {
        let inp = dir.join(format!("{what}-in.safetensors"));
        let map: std::collections::HashMap<String, candle_core::Tensor> = inputs
            .iter()
            .map(|(to, from)| (to.to_string(), io[*from].clone()))
            .collect();
        candle_core::safetensors::save(&map, &inp).unwrap();
        let out = dir.join(format!("{what}-out.safetensors"));
        let o = bin()
            .args(["run", what, "--model"])
            .arg(&vae)
            .arg("--inputs")
            .arg(&inp)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
        candle_core::safetensors::load(&out, &Device::Cpu).unwrap()
    };
    let d = run("vae-decode", &[("z", "decode.z")], &["--tile", "off"]);
    assert!(max_diff(&d["sample"], &io["decode.sample"]) <= 1e-5);
    let e = run(
        "vae-encode",
        &[("sample", "encode.sample"), ("noise", "encode.noise")],
        &[],
    );
    for k in ["latent_mean", "latent_std", "latent_sample"] {
        assert!(max_diff(&e[k], &io[&format!("encode.{k}")]) <= 1e-5, "{k}");
    }
    // wrong channel count in the latents: a one-line error naming the problem
    let bad = dir.join("bad.safetensors");
    let z = io["decode.z"].narrow(1, 0, 3).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("z".to_string(), z)]), &bad).unwrap();
    let o = bin()
        .args(["run", "vae-decode", "--model"])
        .arg(&vae)
        .arg("--inputs")
        .arg(&bad)
        .arg("--out")
        .arg(dir.join("x.safetensors"))
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "channel");
}

#[test]
fn training_data_commands_end_to_end() {
    let dir = tempdir("training-data");
    let data = fixtures_root().join("golden/data");
    // The tokenizer: same file as the committed fixture (deterministic training).
    let o = bin()
        .args(["train-tokenizer", "--vocab-size", "64", "--data"])
        .arg(data.join("train.jsonl"))
        .arg("--out")
        .arg(dir.join("tok"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(dir.join("tok/tokenizer.json")).unwrap(),
        std::fs::read(data.join("tokenizer/tokenizer.json")).unwrap()
    );
    let o = bin()
        .args(["init", "text-encoder", "--seed", "0", "--config"])
        .arg(data.join("t5_config.json"))
        .arg("--out")
        .arg(dir.join("t5"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let extract = |out: &str, resolution: &str, extra: &[&str]| {
        bin()
            .arg("extract")
            .arg("--data")
            .arg(data.join("train.jsonl"))
            .arg("--vae")
            .arg(fixtures_root().join("golden/vae/small"))
            .arg("--text-encoder")
            .arg(dir.join("t5"))
            .arg("--tokenizer")
            .arg(dir.join("tok"))
            .arg("--out")
            .arg(dir.join(out))
            .args(["--resolution", resolution, "--max-length", "16"])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = extract("features", "16", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warning: skipped images/000008.png"), "{err}");
    assert!(err.contains("2 skipped"), "{err}");
    assert!(dir.join("features/shard-00000.safetensors").is_file());
    // Rerun: nothing to do.
    let o = extract("features", "16", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("0 shards written, 1 kept"), "{err}");
    // Bad flags and folders: one line, exit 2.
    assert_one_line_error(&extract("f2", "16", &["--buckets", "tall"]), 2, "--buckets");
    assert_one_line_error(&extract("f3", "10", &[]), 2, "resolution 10");
    assert_one_line_error(
        &extract("features", "16", &["--batch", "2", "--shard-size", "5"]),
        2,
        "another configuration",
    );
    let o = bin()
        .args(["train-tokenizer", "--vocab-size", "4", "--out"])
        .arg(dir.join("t"))
        .arg("--data")
        .arg(data.join("train.jsonl"))
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "--vocab-size");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"d_model\": 0}").unwrap();
    let o = bin()
        .args(["init", "text-encoder", "--config"])
        .arg(&bad)
        .arg("--out")
        .arg(dir.join("t5b"))
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "d_model");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn init_transformer_and_vae_make_a_pipeline_that_generates() {
    let dir = tempdir("init-components");
    let builtin = fixtures_root().join("../models/builtin");
    // A pipeline folder: the built-in model's text encoder, tokenizer and scheduler, with a
    // freshly initialised transformer (bf16) and VAE.
    for part in ["text_encoder", "tokenizer", "scheduler"] {
        std::fs::create_dir_all(dir.join("p").join(part)).unwrap();
        for f in std::fs::read_dir(builtin.join(part)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.join("p").join(part).join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(builtin.join("model_index.json"), dir.join("p/model_index.json")).unwrap();
    let init = |what: &str, config: PathBuf, out: PathBuf, extra: &[&str]| {
        bin()
            .args(["init", what, "--config"])
            .arg(config)
            .arg("--out")
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    };
    let tcfg = builtin.join("transformer/config.json");
    let o = init(
        "transformer",
        tcfg.clone(),
        dir.join("p/transformer"),
        &["--dtype", "bf16"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = init("vae", builtin.join("vae/config.json"), dir.join("p/vae"), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The same seed writes the same weights.
    let o = init("transformer", tcfg.clone(), dir.join("again"), &["--dtype", "bf16"]);
    assert!(o.status.success());
    let weights = |d: PathBuf| std::fs::read(d.join("diffusion_pytorch_model.safetensors")).unwrap();
    assert_eq!(weights(dir.join("p/transformer")), weights(dir.join("again")));
    let t = candle_core::safetensors::load(
        dir.join("p/transformer/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert!(t.values().all(|v| v.dtype() == candle_core::DType::BF16));

    let o = bin()
        .args([
            "generate",
            "-p",
            "a red circle",
            "--steps",
            "2",
            "--seed",
            "1",
            "--model",
        ])
        .arg(dir.join("p"))
        .args(["--output-type", "latent", "-o"])
        .arg(dir.join("out.safetensors"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.join("out.safetensors").is_file());

    // Bad input: one line, exit 2.
    assert_one_line_error(
        &init(
            "vae",
            builtin.join("vae/config.json"),
            dir.join("v2"),
            &["--dtype", "bf16"],
        ),
        2,
        "--dtype bf16",
    );
    assert_one_line_error(
        &init("transformer", dir.join("nope.json"), dir.join("t2"), &[]),
        2,
        "nope.json",
    );
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"num_layers\": 0}").unwrap();
    assert_one_line_error(&init("transformer", bad, dir.join("t3"), &[]), 2, "num_layers");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Argument errors are one line with clap's hint, exit 2; help and version still print in full.
#[test]
fn argument_errors_are_one_line() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["generate", "-p", "x", "--outptu", "y"],
            "a similar argument exists: '--output'",
        ),
        (
            &["generate", "-p", "x", "--output-type", "jpg"],
            "[possible values: image, latent]",
        ),
        (&["generate"], "not provided: --prompt <PROMPT>"),
        (&["frobnicate"], "unrecognized subcommand 'frobnicate'"),
        (
            &[
                "run",
                "tokenize",
                "--model",
                "m",
                "--prompt",
                "x",
                "--max-length",
                "18446744073709551615",
            ],
            "between 1 and 65536",
        ),
    ];
    for (args, needle) in cases {
        let o = bin().args(args).output().unwrap();
        assert_one_line_error(&o, 2, needle);
    }
    let help = bin().args(["generate", "--help"]).output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: pixart generate"));
}

/// Output paths and flag values are checked before any work, and named as the user gave them.
#[test]
fn outputs_and_flags_are_checked_up_front() {
    let dir = tempdir("upfront");
    let file = dir.join("a-file");
    std::fs::write(&file, b"keep me").unwrap();
    let missing = dir.join("no-such-folder/out.safetensors");
    let model = fixture("base");
    let o = bin()
        .args(["run", "transformer", "--model"])
        .arg(&model)
        .args(["--inputs", "unused.safetensors", "--out"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "no-such-folder: the output folder does not exist");
    let o = bin()
        .args(["convert", "--input"])
        .arg(&model)
        .arg("--out")
        .arg(&file)
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "a-file: exists and is not a folder");
    let o = bin()
        .args(["convert", "--input"])
        .arg(&model)
        .arg("--out")
        .arg(dir.join("converted"))
        .args(["--interpolation-scale=-1"])
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "--interpolation-scale must be a positive number");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    std::fs::remove_dir_all(&dir).ok();
}

/// `pixart quantize` then `pixart run text-encoder --model FILE.gguf` on the golden tiny T5
/// (fixtures/golden/text); the quantized files' bytes equal gguf-py's (checked by
/// tools/golden/check_quantized_gguf.py and, per type, by pixart-kernels' gguf_golden test).
#[test]
fn quantize_then_run_the_text_encoder_from_the_gguf() {
    let text = fixtures_root().join("golden/text");
    let dir = tempdir("quantize");
    let gguf = dir.join("te-q8_0.gguf");
    let o = bin()
        .args(["quantize", "--input"])
        .arg(text.join("text_encoder"))
        .arg("--out")
        .arg(&gguf)
        .args(["--type", "q8_0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["type"], "Q8_0");
    let out = dir.join("o.safetensors");
    let o = bin()
        .args(["run", "text-encoder", "--model"])
        .arg(&gguf)
        .arg("--inputs")
        .arg(text.join("io.safetensors"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let want = candle_core::safetensors::load(text.join("io.safetensors"), &Device::Cpu).unwrap();
    let (g, w) = (&got["last_hidden_state"], &want["last_hidden_state"]);
    let rel = ((g - w)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        / w.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap())
    .sqrt();
    assert!(rel < 0.03, "Q8_0 relative L2 {rel}");
    // A k-quant type is refused (not written yet), a truncated GGUF is the file's fault.
    let o = bin()
        .args(["quantize", "--input"])
        .arg(text.join("text_encoder"))
        .arg("--out")
        .arg(dir.join("k.gguf"))
        .args(["--type", "q4_k"])
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "Q4_K is not implemented yet");
    let bytes = std::fs::read(&gguf).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 40]).unwrap();
    let o = bin()
        .args(["run", "text-encoder", "--model"])
        .arg(&cut)
        .arg("--inputs")
        .arg(text.join("io.safetensors"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "cut.gguf: tensor `");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `run transformer --controlnet` on the ControlNet goldens (fixtures/golden/controlnet, from
/// diffusers' research example): `sample` with the adapter folder and the original `.pth`,
/// `--control-scale 0.5` and `0`.
#[test]
fn run_transformer_with_controlnet_matches_golden() {
    let dir = tempdir("controlnet");
    let case = fixtures_root().join("golden/controlnet/base");
    let want = candle_core::safetensors::load(case.join("io.safetensors"), &Device::Cpu).unwrap();
    let run = |controlnet: &std::path::Path, extra: &[&str], name: &str| {
        let out = dir.join(format!("{name}.safetensors"));
        let o = bin()
            .args(["run", "transformer", "--model"])
            .arg(case.join("transformer"))
            .arg("--controlnet")
            .arg(controlnet)
            .arg("--inputs")
            .arg(case.join("io.safetensors"))
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        candle_core::safetensors::load(&out, &Device::Cpu)
            .unwrap()
            .remove("sample")
            .unwrap()
    };
    let diff = |got: &Tensor, key: &str| {
        (got - &want[key])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let folder = run(&case.join("controlnet"), &[], "folder");
    assert!(diff(&folder, "sample") < 1e-5, "{}", diff(&folder, "sample"));
    let pth = run(&case.join("controlnet_original.pth"), &[], "pth");
    assert!(diff(&pth, "sample") < 1e-5, "{}", diff(&pth, "sample"));
    let half = run(&case.join("controlnet"), &["--control-scale", "0.5"], "half");
    assert!(
        diff(&half, "sample_scale_0.5") < 1e-5,
        "{}",
        diff(&half, "sample_scale_0.5")
    );
    let zero = run(&case.join("controlnet"), &["--control-scale", "0"], "zero");
    assert!(diff(&zero, "sample_plain") < 1e-5, "{}", diff(&zero, "sample_plain"));
    assert!(diff(&folder, "sample_plain") > 0.1, "the ControlNet changed nothing");
}

#[test]
fn run_transformer_controlnet_bad_input() {
    let dir = tempdir("controlnet-bad");
    let case = fixtures_root().join("golden/controlnet/base");
    let out = dir.join("o.safetensors");
    let run = |model: &std::path::Path, inputs: &std::path::Path, extra: &[&str]| {
        bin()
            .args(["run", "transformer", "--model"])
            .arg(model)
            .arg("--inputs")
            .arg(inputs)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let io = case.join("io.safetensors");
    // --control-scale without --controlnet
    let o = run(&case.join("transformer"), &io, &["--control-scale", "0.5"]);
    assert_one_line_error(&o, 2, "--control-scale needs --controlnet");
    // inputs without controlnet_cond
    let no_cond = dir.join("no_cond.safetensors");
    let mut t = candle_core::safetensors::load(&io, &Device::Cpu).unwrap();
    t.remove("controlnet_cond");
    candle_core::safetensors::save(&t, &no_cond).unwrap();
    let cn = case.join("controlnet");
    let o = run(
        &case.join("transformer"),
        &no_cond,
        &["--controlnet", cn.to_str().unwrap()],
    );
    assert_one_line_error(&o, 2, "missing tensor `controlnet_cond`");
    // a ControlNet with more blocks than the transformer takes (2 copies need 3 base blocks):
    // the transformer golden `base` has 2 blocks of the same width
    let o = run(&fixture("base"), &io, &["--controlnet", cn.to_str().unwrap()]);
    assert_one_line_error(
        &o,
        2,
        "the ControlNet has 2 blocks; a transformer of 2 blocks takes 1 to 1",
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("config.json"));
    // a ControlNet that is not a weight file
    let o = run(&case.join("transformer"), &io, &["--controlnet", io.to_str().unwrap()]);
    assert_one_line_error(&o, 2, "io.safetensors");
}
