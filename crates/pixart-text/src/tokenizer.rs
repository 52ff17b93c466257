//! The T5 tokenizer: a SentencePiece Unigram model read from `tokenizer/spiece.model` (what the
//! PixArt repos ship) or from a `tokenizer.json`, giving the ids of transformers'
//! `T5Tokenizer`.
//!
//! Matched against transformers 5.23.0 `models/t5/tokenization_t5.py` and
//! `convert_slow_tokenizer.py` (`SentencePieceExtractor`, `T5Converter.convert_from_spm`):
//! - vocabulary: the model's pieces with their scores, then `<extra_id_{n-1}>` … `<extra_id_0>`
//!   (score 0); Unigram with the model's unk id, no byte fallback;
//! - special tokens (`<pad>`, `</s>`, `<unk>`, control pieces, the extra ids) are split out of
//!   the raw text before normalisation; user-defined pieces likewise but as normal tokens;
//! - normaliser: the model's `precompiled_charsmap` (e.g. `nmt_nfkc`);
//! - pre-tokeniser: split on whitespace, then Metaspace (`▁`, prepended to every word);
//! - post-processing: `$A </s>`, truncation to `max_length - 1` tokens before `</s>`, padding
//!   with `<pad>` to `max_length`.
//!
//! From a `tokenizer.json`, transformers' `T5Tokenizer` keeps only the vocabulary, the added
//! tokens and the charsmap and rebuilds the rest as above; so do we.
use std::path::{Path, PathBuf};

use pixart_core::{Error, Result};
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{NormalizerWrapper, Precompiled};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, ModelWrapper, PreTokenizerWrapper, Tokenizer};

/// The default prompt length of PixArt-Σ.
pub const DEFAULT_MAX_LENGTH: usize = 300;

/// The fields of sentencepiece's `ModelProto` (`src/sentencepiece_model.proto`) that the
/// tokenizer needs; every other field is skipped.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(message, repeated, tag = "1")]
        pub pieces: Vec<SentencePiece>,
        #[prost(message, optional, tag = "2")]
        pub trainer_spec: Option<TrainerSpec>,
        #[prost(message, optional, tag = "3")]
        pub normalizer_spec: Option<NormalizerSpec>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SentencePiece {
        #[prost(string, optional, tag = "1")]
        pub piece: Option<String>,
        #[prost(float, optional, tag = "2")]
        pub score: Option<f32>,
        /// NORMAL 1 (default), UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6.
        #[prost(int32, optional, tag = "3")]
        pub r#type: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrainerSpec {
        /// UNIGRAM 1 (default), BPE 2, WORD 3, CHAR 4.
        #[prost(int32, optional, tag = "3")]
        pub model_type: Option<i32>,
        #[prost(bool, optional, tag = "35")]
        pub byte_fallback: Option<bool>,
        #[prost(int32, optional, tag = "40")]
        pub unk_id: Option<i32>,
        #[prost(int32, optional, tag = "42")]
        pub eos_id: Option<i32>,
        #[prost(int32, optional, tag = "43")]
        pub pad_id: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NormalizerSpec {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub precompiled_charsmap: Option<Vec<u8>>,
    }
}

const PIECE_UNKNOWN: i32 = 2;
const PIECE_CONTROL: i32 = 3;
const PIECE_USER_DEFINED: i32 = 4;

/// One tokenised prompt, padded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// `max_length` ids: the tokens, `</s>`, then `<pad>`.
    pub ids: Vec<u32>,
    /// 1 for the tokens and `</s>`, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// How many tokens were dropped to fit `max_length` (0 when none).
    pub truncated: usize,
}

impl Encoded {
    /// Number of valid positions (tokens + `</s>`).
    pub fn len(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m != 0).count()
    }

    /// Never true: every encoding holds at least `</s>`.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A T5 tokenizer (see the module docs).
#[derive(Clone)]
pub struct T5Tokenizer {
    inner: Tokenizer,
    pad_id: u32,
    eos_id: u32,
    source: PathBuf,
}

impl std::fmt::Debug for T5Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

#[derive(serde::Deserialize, Default)]
struct TokenizerConfig {
    #[serde(default)]
    extra_ids: Option<usize>,
}

impl T5Tokenizer {
    /// Loads a tokenizer folder (or a pipeline folder holding `tokenizer/`): `tokenizer.json`
    /// when present, else `spiece.model`. `tokenizer_config.json`'s `extra_ids` (default 100)
    /// is honoured.
    pub fn from_dir(path: &Path) -> Result<Self> {
        if !path.is_dir() {
            return Err(Error::config(path, "no such tokenizer folder"));
        }
        let dir = if !path.join("spiece.model").is_file()
            && !path.join("tokenizer.json").is_file()
            && path.join("tokenizer").is_dir()
        {
            path.join("tokenizer")
        } else {
            path.to_path_buf()
        };
        let json = dir.join("tokenizer.json");
        let spiece = dir.join("spiece.model");
        if json.is_file() {
            Self::from_tokenizer_json(&json)
        } else if spiece.is_file() {
            let cfg_path = dir.join("tokenizer_config.json");
            let cfg: TokenizerConfig = if cfg_path.is_file() {
                pixart_core::config::read_json(&cfg_path)?
            } else {
                TokenizerConfig::default()
            };
            Self::from_spiece(&spiece, cfg.extra_ids.unwrap_or(100))
        } else {
            Err(Error::config(
                &dir,
                "no tokenizer model in the folder (expected spiece.model or tokenizer.json)",
            ))
        }
    }

    /// Builds the tokenizer from a SentencePiece Unigram `spiece.model` plus `extra_ids`
    /// sentinel tokens.
    pub fn from_spiece(path: &Path, extra_ids: usize) -> Result<Self> {
        use prost::Message;
        let bad = |m: String| Error::config(path, m);
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let model =
            proto::ModelProto::decode(bytes.as_slice()).map_err(|e| bad(format!("not a SentencePiece model: {e}")))?;
        if model.pieces.is_empty() {
            return Err(bad("not a SentencePiece model: it holds no pieces".into()));
        }
        let trainer = model.trainer_spec.clone().unwrap_or_default();
        match trainer.model_type.unwrap_or(1) {
            1 => {}
            t => {
                return Err(bad(format!(
                    "SentencePiece model type {t} is not Unigram (1); T5 uses Unigram"
                )))
            }
        }
        let unk_id = trainer.unk_id.unwrap_or(0);
        let unk_id = usize::try_from(unk_id)
            .ok()
            .filter(|&u| u < model.pieces.len())
            .ok_or_else(|| bad(format!("unk id {unk_id} is not a piece of the model")))?;

        let mut vocab: Vec<(String, f64)> = Vec::with_capacity(model.pieces.len() + extra_ids);
        let mut added: Vec<AddedToken> = Vec::new();
        for (i, p) in model.pieces.iter().enumerate() {
            let piece = p.piece.clone().unwrap_or_default();
            if piece.is_empty() {
                return Err(bad(format!("piece {i} is empty")));
            }
            match p.r#type.unwrap_or(1) {
                PIECE_CONTROL | PIECE_UNKNOWN => added.push(AddedToken::from(piece.clone(), true)),
                PIECE_USER_DEFINED => added.push(AddedToken::from(piece.clone(), false).normalized(false)),
                _ => {}
            }
            vocab.push((piece, f64::from(p.score.unwrap_or(0.0))));
        }
        for i in (0..extra_ids).rev() {
            let tok = format!("<extra_id_{i}>");
            added.push(AddedToken::from(tok.clone(), true));
            vocab.push((tok, 0.0));
        }
        let unigram =
            Unigram::from(vocab, Some(unk_id), false).map_err(|e| bad(format!("invalid Unigram vocabulary: {e}")))?;
        let charsmap = model
            .normalizer_spec
            .and_then(|n| n.precompiled_charsmap)
            .filter(|c| !c.is_empty());
        let normalizer = match charsmap {
            Some(c) => Some(NormalizerWrapper::Precompiled(
                Precompiled::from(&c).map_err(|e| bad(format!("invalid precompiled_charsmap: {e}")))?,
            )),
            None => None,
        };
        let mut inner = Tokenizer::new(ModelWrapper::Unigram(unigram));
        Self::finish(&mut inner, normalizer, added).map_err(bad)?;
        let pad = trainer.pad_id.and_then(|p| u32::try_from(p).ok());
        let eos = trainer.eos_id.and_then(|p| u32::try_from(p).ok());
        Self::new(inner, pad, eos, path)
    }

    /// Builds the tokenizer from a `tokenizer.json` holding a Unigram model.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Builds the tokenizer from the text of a `tokenizer.json`; `path` names it in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let bad = |m: String| Error::config(path, m);
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let mut inner: Tokenizer = text.parse().map_err(|e| bad(format!("not a tokenizers file: {e}")))?;
        if !matches!(inner.get_model(), ModelWrapper::Unigram(_)) {
            return Err(bad(
                "the tokenizer model is not Unigram (T5 uses a SentencePiece Unigram)".into(),
            ));
        }
        let normalizer = match value.get("normalizer").and_then(find_precompiled) {
            Some(node) => Some(
                serde_json::from_value::<NormalizerWrapper>(node.clone())
                    .map_err(|e| bad(format!("invalid Precompiled normalizer: {e}")))?,
            ),
            None => None,
        };
        Self::finish(&mut inner, normalizer, Vec::new()).map_err(bad)?;
        Self::new(inner, None, None, path)
    }

    fn finish(
        inner: &mut Tokenizer,
        normalizer: Option<NormalizerWrapper>,
        added: Vec<AddedToken>,
    ) -> std::result::Result<(), String> {
        inner
            .with_normalizer(normalizer)
            .map_err(|e| format!("cannot set the normaliser: {e}"))?;
        inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(PreSequence::new(vec![
            PreTokenizerWrapper::WhitespaceSplit(WhitespaceSplit),
            PreTokenizerWrapper::Metaspace(Metaspace::new('▁', PrependScheme::Always, true)),
        ]))));
        inner.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        inner
            .with_truncation(None)
            .map_err(|e| format!("cannot disable truncation: {e}"))?;
        inner.with_padding(None);
        if !added.is_empty() {
            inner
                .add_special_tokens(added)
                .map_err(|e| format!("cannot add the special tokens: {e}"))?;
        }
        Ok(())
    }

    fn new(inner: Tokenizer, pad: Option<u32>, eos: Option<u32>, source: &Path) -> Result<Self> {
        let id = |tok: &str, fallback: Option<u32>| {
            inner
                .token_to_id(tok)
                .or(fallback)
                .ok_or_else(|| Error::config(source, format!("the vocabulary has no `{tok}` token")))
        };
        let eos_id = id("</s>", eos)?;
        let pad_id = id("<pad>", pad)?;
        Ok(Self {
            inner,
            pad_id,
            eos_id,
            source: source.to_path_buf(),
        })
    }

    /// Vocabulary size including the sentinel tokens (= the encoder's `vocab_size` for T5's
    /// own models up to its padding to a multiple of 128).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The id of `token`, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token ids of `text` without `</s>`, truncation or padding. No preprocessing (case
    /// and surrounding spaces are kept; see [`preprocess_caption`]).
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::InvalidInput(format!("cannot tokenise the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokenises `text` like `tokenizer(text, max_length=max_length, padding="max_length",
    /// truncation=True, add_special_tokens=True)`: at most `max_length - 1` tokens, `</s>`,
    /// then `<pad>` up to `max_length`. Logs a warning when tokens are dropped.
    pub fn encode(&self, text: &str, max_length: usize) -> Result<Encoded> {
        if max_length == 0 {
            return Err(Error::InvalidInput("max_length must be at least 1".into()));
        }
        let mut ids = self.encode_raw(text)?;
        let keep = max_length - 1;
        let truncated = ids.len().saturating_sub(keep);
        if truncated > 0 {
            ids.truncate(keep);
            log::warn!(
                "the prompt is {} tokens long; the last {truncated} were dropped to fit max_length {max_length}",
                keep + truncated + 1
            );
        }
        ids.push(self.eos_id);
        let valid = ids.len();
        ids.resize(max_length, self.pad_id);
        let mut attention_mask = vec![1u32; valid];
        attention_mask.resize(max_length, 0);
        Ok(Encoded {
            ids,
            attention_mask,
            truncated,
        })
    }

    /// [`Self::encode`] for several prompts.
    pub fn encode_batch(&self, texts: &[&str], max_length: usize) -> Result<Vec<Encoded>> {
        texts.iter().map(|t| self.encode(t, max_length)).collect()
    }
}

/// Stacks encodings of one length into `(input_ids, attention_mask)`, both (b, l) i64, the
/// inputs of [`crate::T5Encoder::forward`] and of `run_text_encoder`.
pub fn to_tensors(
    encodings: &[Encoded],
    device: &candle_core::Device,
) -> Result<(candle_core::Tensor, candle_core::Tensor)> {
    let b = encodings.len();
    let l = encodings.first().map(|e| e.ids.len()).unwrap_or(0);
    if b == 0
        || l == 0
        || encodings
            .iter()
            .any(|e| e.ids.len() != l || e.attention_mask.len() != l)
    {
        return Err(Error::InvalidInput(
            "to_tensors needs at least one encoding, all of the same non-zero length".into(),
        ));
    }
    let flat = |f: fn(&Encoded) -> &Vec<u32>| -> Vec<i64> {
        encodings
            .iter()
            .flat_map(|e| f(e).iter().map(|&v| i64::from(v)))
            .collect()
    };
    let ids = candle_core::Tensor::from_vec(flat(|e| &e.ids), (b, l), device)?;
    let mask = candle_core::Tensor::from_vec(flat(|e| &e.attention_mask), (b, l), device)?;
    Ok((ids, mask))
}

fn find_precompiled(node: &serde_json::Value) -> Option<&serde_json::Value> {
    match node.get("type").and_then(|t| t.as_str()) {
        Some("Precompiled") => Some(node),
        Some("Sequence") => node
            .get("normalizers")
            .and_then(|n| n.as_array())
            .and_then(|list| list.iter().find_map(find_precompiled)),
        _ => None,
    }
}

/// Tokenises `text` with the tokenizer in `tokenizer_dir` (see [`T5Tokenizer::from_dir`]),
/// padded to `max_length`: `(ids, attention_mask)`. No lower-casing or stripping.
pub fn tokenize(tokenizer_dir: &Path, text: &str, max_length: usize) -> Result<(Vec<u32>, Vec<u32>)> {
    let enc = T5Tokenizer::from_dir(tokenizer_dir)?.encode(text, max_length)?;
    Ok((enc.ids, enc.attention_mask))
}

/// Python's `str.isspace` (Unicode White_Space plus the ASCII separators U+001C..U+001F).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// diffusers' caption preprocessing when its optional cleaning packages (bs4, ftfy) are
/// missing: `text.lower().strip()`; `keep_case` skips the lower-casing (the original PixArt
/// inference script does not lower-case).
pub fn preprocess_caption(text: &str, keep_case: bool) -> String {
    let stripped = text.trim_matches(is_py_space);
    if keep_case {
        stripped.to_string()
    } else {
        // Lower-casing can only turn spaces into spaces, so strip-then-lower equals lower-then-strip.
        stripped.to_lowercase()
    }
}
