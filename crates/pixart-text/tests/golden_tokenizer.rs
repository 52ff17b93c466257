//! Tokenizer parity with transformers 5.23.0 `T5Tokenizer` (fixtures/golden/text/tokens.json,
//! made by tools/golden/gen_text.py from the tiny spiece.model in fixtures/golden/text/tokenizer).
use std::path::{Path, PathBuf};

use pixart_text::tokenizer::{preprocess_caption, tokenize, T5Tokenizer};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/text")
}

fn tokens_json() -> Value {
    let text = std::fs::read_to_string(golden_dir().join("tokens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pixart-text-tok-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every golden prompt (max_length 300 and 8) gives transformers' ids and mask.
fn check_parity(tok: &T5Tokenizer, label: &str) {
    let g = tokens_json();
    let max_length = g["max_length"].as_u64().unwrap() as usize;
    assert_eq!(
        tok.vocab_size() as u64,
        g["vocab_size"].as_u64().unwrap(),
        "{label}: vocab size"
    );
    let mut failures = Vec::new();
    let mut truncated_cases = 0;
    let cases = g["cases"].as_array().unwrap();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids_of(&case["ids"]);
        let enc = tok.encode(text, max_length).unwrap();
        let mut want_padded = want.clone();
        want_padded.resize(max_length, 0);
        let mut want_mask = vec![1u32; want.len()];
        want_mask.resize(max_length, 0);
        let untruncated = case["untruncated_len"].as_u64().unwrap() as usize;
        let want_truncated = untruncated.saturating_sub(max_length);
        if enc.truncated > 0 {
            truncated_cases += 1;
        }
        if enc.ids != want_padded || enc.attention_mask != want_mask || enc.truncated != want_truncated {
            failures.push(format!(
                "{text:?}: got {:?} (truncated {}), want {:?} (truncated {want_truncated})",
                &enc.ids[..enc.len().min(24)],
                enc.truncated,
                &want[..want.len().min(24)]
            ));
        }
    }
    for case in g["short_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ml = case["max_length"].as_u64().unwrap() as usize;
        let want = ids_of(&case["ids"]);
        let enc = tok.encode(text, ml).unwrap();
        if enc.ids[..want.len()] != want[..] || enc.len() != want.len() {
            failures.push(format!("{text:?} (max_length {ml}): got {:?}, want {want:?}", enc.ids));
        }
    }
    assert!(
        truncated_cases >= 3,
        "{label}: the fixture should hold prompts over 300 tokens"
    );
    assert!(
        failures.is_empty(),
        "{label}: {} of {} prompts differ from transformers:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn spiece_model_matches_transformers() {
    let tok = T5Tokenizer::from_dir(&golden_dir().join("tokenizer")).unwrap();
    check_parity(&tok, "spiece.model");
    let g = tokens_json();
    assert_eq!(tok.token_to_id("<extra_id_0>").map(u64::from), g["extra_id_0"].as_u64());
    assert_eq!(
        tok.token_to_id("<extra_id_99>").map(u64::from),
        g["extra_id_99"].as_u64()
    );
    assert_eq!((tok.pad_id(), tok.eos_id(), tok.token_to_id("<unk>")), (0, 1, Some(2)));
}

#[test]
fn tokenizer_json_matches_transformers() {
    let tok = T5Tokenizer::from_dir(&golden_dir().join("tokenizer_json")).unwrap();
    check_parity(&tok, "tokenizer.json");
}

#[test]
fn pipeline_folder_finds_tokenizer_subfolder() {
    // golden_dir() has `tokenizer/` and no model file of its own.
    let tok = T5Tokenizer::from_dir(&golden_dir()).unwrap();
    assert_eq!(tok.vocab_size(), 612);
}

#[test]
fn empty_prompt_is_eos_only() {
    let (ids, mask) = tokenize(&golden_dir().join("tokenizer"), "", 300).unwrap();
    assert_eq!(ids.len(), 300);
    assert_eq!(ids[0], 1);
    assert!(ids[1..].iter().all(|&i| i == 0));
    assert_eq!(mask.iter().sum::<u32>(), 1);
    assert_eq!(mask[0], 1);
}

#[test]
fn tokenize_does_no_preprocessing() {
    let dir = golden_dir().join("tokenizer");
    let (upper, _) = tokenize(&dir, "A Cat", 16).unwrap();
    let (lower, _) = tokenize(&dir, "a cat", 16).unwrap();
    assert_ne!(upper, lower, "the tokenizer is case-sensitive and must not lower-case");
    let (pre, _) = tokenize(&dir, &preprocess_caption("  A Cat \n", false), 16).unwrap();
    assert_eq!(pre, lower);
}

#[test]
fn preprocessing_matches_diffusers() {
    let g = tokens_json();
    for case in g["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            preprocess_caption(text, false),
            case["preprocessed"].as_str().unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(preprocess_caption("  A Cat\t\n", true), "A Cat");
    assert_eq!(preprocess_caption("\u{1c}ΣΑΣ\u{3000}", false), "σας");
}

#[test]
fn max_length_one_keeps_only_eos() {
    let tok = T5Tokenizer::from_dir(&golden_dir().join("tokenizer")).unwrap();
    let enc = tok.encode("a cat on a mat", 1).unwrap();
    assert_eq!(enc.ids, vec![1]);
    assert!(enc.truncated > 0);
    assert!(tok.encode("x", 0).is_err());
}

fn err_of(path: &Path) -> String {
    T5Tokenizer::from_dir(path).unwrap_err().to_string()
}

#[test]
fn folder_without_model_is_a_clear_error() {
    let d = temp_dir("nomodel");
    std::fs::copy(
        golden_dir().join("tokenizer/tokenizer_config.json"),
        d.join("tokenizer_config.json"),
    )
    .unwrap();
    let msg = err_of(&d);
    assert!(
        msg.contains("spiece.model") && msg.contains(&d.display().to_string()),
        "{msg}"
    );
    assert_eq!(msg.lines().count(), 1, "{msg}");
    let missing = d.join("does-not-exist");
    let msg = err_of(&missing);
    assert!(msg.contains("does-not-exist"), "{msg}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn corrupt_spiece_model_is_a_clear_error() {
    let good = std::fs::read(golden_dir().join("tokenizer/spiece.model")).unwrap();
    let variants: [(&str, Vec<u8>); 3] = [
        (
            "garbage",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("text", b"this is not a sentencepiece model\n".to_vec()),
    ];
    for (name, bytes) in variants {
        let d = temp_dir(name);
        let file = d.join("spiece.model");
        std::fs::write(&file, bytes).unwrap();
        let msg = err_of(&d);
        assert!(msg.contains(&file.display().to_string()), "{name}: {msg}");
        assert!(msg.contains("SentencePiece") || msg.contains("piece"), "{name}: {msg}");
        assert_eq!(msg.lines().count(), 1, "{name}: {msg}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[test]
fn corrupt_tokenizer_json_is_a_clear_error() {
    let d = temp_dir("badjson");
    let file = d.join("tokenizer.json");
    std::fs::write(&file, "{\"model\": 3").unwrap();
    let msg = err_of(&d);
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    std::fs::remove_dir_all(&d).unwrap();
}
