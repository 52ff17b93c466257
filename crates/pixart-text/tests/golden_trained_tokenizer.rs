//! The tokenizer `pixart train-tokenizer` made and the T5 encoder `pixart init text-encoder` made
//! (fixtures/golden/data), checked against transformers (tools/golden/gen_data.py).
use candle_core::Device;
use pixart_core::testing::fixtures_root;
use pixart_text::T5Tokenizer;

fn data() -> std::path::PathBuf {
    fixtures_root().join("golden/data")
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn trained_tokenizer_gives_transformers_ids() {
    let tok = T5Tokenizer::from_dir(&data().join("tokenizer")).unwrap();
    let golden = json(&data().join("tokens.json"));
    let max_length = golden["max_length"].as_u64().unwrap() as usize;
    assert_eq!(tok.vocab_size() as u64, golden["vocab_size"].as_u64().unwrap());
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mut saw_unk = false;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let enc = tok.encode(text, max_length).unwrap();
        assert_eq!(enc.ids, ids(&case["input_ids"]), "ids of {text:?}");
        assert_eq!(enc.attention_mask, ids(&case["attention_mask"]), "mask of {text:?}");
        saw_unk |= enc.ids.contains(&2);
    }
    assert!(saw_unk, "the cases include characters the tokenizer never saw");
}

#[test]
fn initialised_encoder_loads_in_transformers_and_here() {
    let check = json(&data().join("init_check.json"));
    for key in [
        "missing_keys",
        "unexpected_keys",
        "mismatched_keys",
        "config_keys_differing_from_transformers",
    ] {
        assert_eq!(check[key].as_array().unwrap().len(), 0, "{key}: {}", check[key]);
    }
    // Our weights have the spread of transformers' own initialisation, tensor by tensor.
    let stats = check["tensor_stats"].as_object().unwrap();
    assert!(stats.contains_key("shared.weight"));
    for (name, s) in stats {
        let (ours, theirs) = (s["ours"].as_f64().unwrap(), s["transformers"].as_f64().unwrap());
        if theirs == 0.0 {
            assert_eq!(ours, 0.0, "{name}: constant in transformers");
        } else if s["numel"].as_u64().unwrap() >= 256 {
            assert!((ours / theirs - 1.0).abs() < 0.2, "{name}: std {ours} vs {theirs}");
        }
    }
    // Loading here checks every tensor (missing, unexpected, mis-shaped are errors).
    let enc =
        pixart_text::load_text_encoder(&data().join("text_encoder"), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(enc.config().vocab_size, 64);
}

#[test]
fn committed_encoder_is_what_init_writes_for_seed_0() {
    let dir = std::env::temp_dir().join(format!("pixart-init-golden-{}", std::process::id()));
    let (config, factor) = pixart_text::read_init_config(&data().join("t5_config.json")).unwrap();
    pixart_text::init_text_encoder(&config, &factor, 0, &dir).unwrap();
    let ours = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let committed =
        candle_core::safetensors::load(data().join("text_encoder/model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(ours.len(), committed.len());
    for (name, t) in &committed {
        pixart_core::testing::assert_close(name, &ours[name], t, 0.0);
    }
    assert_eq!(
        json(&dir.join("config.json")),
        json(&data().join("text_encoder/config.json"))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
