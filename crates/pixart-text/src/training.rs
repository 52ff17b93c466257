//! Training a T5-style SentencePiece Unigram tokenizer on captions, with the `tokenizers`
//! crate's `UnigramTrainer`, and writing it as a folder that both [`T5Tokenizer`] and
//! transformers' `T5Tokenizer` / `AutoTokenizer.from_pretrained` load with the same ids.
//!
//! T5 conventions (transformers 5.23.0 `models/t5/tokenization_t5.py`, `T5Tokenizer.__init__`):
//! `<pad>` id 0, `</s>` id 1, `<unk>` id 2 (transformers hard-codes `unk_id=2`), no byte
//! fallback, no normaliser (our captions carry no precompiled SentencePiece charsmap), the
//! pre-tokeniser `WhitespaceSplit` + `Metaspace("▁", prepend_scheme="always", split=True)`, the
//! Metaspace decoder and the post-processor `$A </s>`. `tokenizer_config.json` says
//! `extra_ids: 0`: a tokenizer for a small caption vocabulary carries no sentinel tokens
//! (transformers would otherwise append 100 `<extra_id_*>` tokens).
//!
//! Determinism: the trainer itself counts words in a hash map, sums the E-step over rayon
//! chunks and, when a character loses its EM score, appends it with a penalty score in hash
//! order; the ids would then differ from run to run. We therefore pre-tokenise ourselves and
//! hand the trainer the words in sorted order, run it single-threaded, add every character of
//! the corpus once as a one-character sentence (so that each keeps an EM score; this adds 1 to
//! each character's count) and finally order the pieces by score, then by piece. The same
//! captions and vocabulary size give a byte-identical `tokenizer.json`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pixart_core::{Error, Result};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, ModelWrapper, OffsetReferential, OffsetType, PostProcessorWrapper, PreTokenizedString, PreTokenizer,
    PreTokenizerWrapper, Tokenizer,
};

use crate::tokenizer::T5Tokenizer;

/// T5's special tokens in id order: `<pad>` 0, `</s>` 1, `<unk>` 2.
pub const SPECIAL_TOKENS: [&str; 3] = ["<pad>", "</s>", "<unk>"];

/// The smallest vocabulary we train: the special tokens, `▁` and a few pieces.
pub const MIN_VOCAB_SIZE: usize = 8;

/// What [`train_tokenizer`] needs besides the texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainOptions {
    /// Vocabulary size including the three special tokens (an upper bound: a small corpus can
    /// yield fewer pieces).
    pub vocab_size: usize,
    /// Longest piece in characters (SentencePiece's `max_sentencepiece_length`, 16).
    pub max_piece_length: usize,
    /// `model_max_length` written to `tokenizer_config.json`.
    pub model_max_length: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            vocab_size: 256,
            max_piece_length: 16,
            model_max_length: crate::tokenizer::DEFAULT_MAX_LENGTH,
        }
    }
}

/// A trained tokenizer, ready to be saved.
#[derive(Clone)]
pub struct TrainedTokenizer {
    inner: Tokenizer,
    model_max_length: usize,
    /// Number of distinct words (after pre-tokenisation) the model was trained on.
    pub words: usize,
    /// Number of texts read.
    pub texts: usize,
}

impl std::fmt::Debug for TrainedTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainedTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("words", &self.words)
            .field("texts", &self.texts)
            .finish()
    }
}

/// T5's pre-tokeniser: split on whitespace, then Metaspace (`▁` prepended to every word).
fn t5_pre_tokenizer() -> PreTokenizerWrapper {
    PreTokenizerWrapper::Sequence(PreSequence::new(vec![
        PreTokenizerWrapper::WhitespaceSplit(WhitespaceSplit),
        PreTokenizerWrapper::Metaspace(Metaspace::new('▁', PrependScheme::Always, true)),
    ]))
}

fn special(content: &str) -> AddedToken {
    AddedToken::from(content.to_string(), true)
}

/// Restores the previous `tokenizers` parallelism setting when dropped.
struct SerialTraining(bool);

impl SerialTraining {
    fn start() -> Self {
        let previous = tokenizers::parallelism::get_parallelism();
        tokenizers::parallelism::set_parallelism(false);
        Self(previous)
    }
}

impl Drop for SerialTraining {
    fn drop(&mut self) {
        tokenizers::parallelism::set_parallelism(self.0);
    }
}

/// Trains a Unigram tokenizer on `texts` (used as given: preprocess them first, e.g. with
/// [`crate::preprocess_caption`], exactly as they will be tokenised later).
pub fn train_tokenizer<I, S>(texts: I, opts: &TrainOptions) -> Result<TrainedTokenizer>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    if opts.vocab_size < MIN_VOCAB_SIZE {
        return Err(Error::InvalidInput(format!(
            "vocab size {} is too small (at least {MIN_VOCAB_SIZE})",
            opts.vocab_size
        )));
    }
    if opts.max_piece_length == 0 {
        return Err(Error::InvalidInput("max piece length must be positive".into()));
    }
    let pre = t5_pre_tokenizer();
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    let mut n_texts = 0usize;
    for text in texts {
        n_texts += 1;
        let mut pts = PreTokenizedString::from(text.as_ref());
        pre.pre_tokenize(&mut pts)
            .map_err(|e| Error::InvalidInput(format!("cannot pre-tokenise a caption: {e}")))?;
        for (word, _, _) in pts.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            let c = counts.entry(word.to_string()).or_insert(0);
            *c = c.saturating_add(1);
        }
    }
    if counts.is_empty() {
        return Err(Error::InvalidInput(
            "no words to train on: every caption is empty".into(),
        ));
    }
    let words = counts.len();
    let mut chars: BTreeMap<String, u32> = BTreeMap::new();
    for w in counts.keys() {
        for c in w.chars() {
            chars.insert(c.to_string(), 1);
        }
    }
    let n_chars = chars.len();
    if n_chars + SPECIAL_TOKENS.len() > opts.vocab_size {
        return Err(Error::InvalidInput(format!(
            "vocab size {} cannot hold the {} special tokens and the {n_chars} distinct characters of the captions",
            opts.vocab_size,
            SPECIAL_TOKENS.len()
        )));
    }
    let mut sentences: Vec<(String, u32)> = counts.into_iter().collect();
    sentences.extend(chars);

    let vocab_size = u32::try_from(opts.vocab_size)
        .map_err(|_| Error::InvalidInput(format!("vocab size {} is too large", opts.vocab_size)))?;
    let trainer = UnigramTrainer::builder()
        .show_progress(false)
        .vocab_size(vocab_size)
        .special_tokens(SPECIAL_TOKENS.iter().map(|t| special(t)).collect())
        .unk_token(Some("<unk>".to_string()))
        .max_piece_length(opts.max_piece_length)
        .build()
        .map_err(|e| Error::InvalidInput(format!("invalid tokenizer trainer settings: {e}")))?;
    let mut model = Unigram::default();
    {
        let _serial = SerialTraining::start();
        trainer
            .do_train(sentences, &mut model)
            .map_err(|e| Error::InvalidInput(format!("tokenizer training failed: {e}")))?;
    }

    // Canonical order: the special tokens, then the pieces by score (descending), then by piece.
    let mut pieces: Vec<(String, f64)> = model
        .iter()
        .filter(|(p, _)| !SPECIAL_TOKENS.contains(&p.as_str()))
        .map(|(p, s)| (p.clone(), if s.is_finite() { *s } else { 0.0 }))
        .collect();
    pieces.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let vocab: Vec<(String, f64)> = SPECIAL_TOKENS
        .iter()
        .map(|t| (t.to_string(), 0.0))
        .chain(pieces)
        .collect();
    let inner = build_t5_tokenizer(vocab)?;
    Ok(TrainedTokenizer {
        inner,
        model_max_length: opts.model_max_length,
        words,
        texts: n_texts,
    })
}

/// A complete T5 tokenizer around a Unigram vocabulary whose first three entries are
/// [`SPECIAL_TOKENS`].
fn build_t5_tokenizer(vocab: Vec<(String, f64)>) -> Result<Tokenizer> {
    let bad = |m: String| Error::InvalidInput(format!("cannot build the tokenizer: {m}"));
    let unigram = Unigram::from(vocab, Some(2), false).map_err(|e| bad(e.to_string()))?;
    let mut tok = Tokenizer::new(ModelWrapper::Unigram(unigram));
    tok.with_pre_tokenizer(Some(t5_pre_tokenizer()));
    tok.with_decoder(Some(DecoderWrapper::Metaspace(Metaspace::new(
        '▁',
        PrependScheme::Always,
        true,
    ))));
    let post = TemplateProcessing::builder()
        .try_single("$A </s>")
        .and_then(|b| b.try_pair("$A </s> $B </s>"))
        .map_err(|e| bad(e.to_string()))?
        .special_tokens(vec![("</s>", 1u32)])
        .build()
        .map_err(|e| bad(e.to_string()))?;
    tok.with_post_processor(Some(PostProcessorWrapper::Template(post)));
    tok.add_special_tokens(SPECIAL_TOKENS.map(special))
        .map_err(|e| bad(e.to_string()))?;
    Ok(tok)
}

/// File names of a saved tokenizer folder.
pub const TOKENIZER_FILES: [&str; 3] = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

impl TrainedTokenizer {
    /// Vocabulary size, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// `tokenizer.json` as written by [`Self::save`].
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| Error::InvalidInput(format!("cannot serialise the tokenizer: {e}")))
    }

    /// Writes `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` into
    /// `dir` (created if needed), each atomically; returns the paths written.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        // As transformers 5.23.0 `T5Tokenizer.save_pretrained` writes it (checked in
        // tools/golden/gen_tokenizer.py).
        let config = serde_json::json!({
            "backend": "tokenizers",
            "eos_token": "</s>",
            "extra_ids": 0,
            "extra_special_tokens": [],
            "model_max_length": self.model_max_length,
            "pad_token": "<pad>",
            "tokenizer_class": "T5Tokenizer",
            "unk_token": "<unk>",
        });
        let map = serde_json::json!({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"});
        let paths: Vec<PathBuf> = TOKENIZER_FILES.iter().map(|n| dir.join(n)).collect();
        pixart_core::weights::write_atomic(&paths[0], self.to_json()?.as_bytes())?;
        pixart_core::config::write_json(&paths[1], &config)?;
        pixart_core::config::write_json(&paths[2], &map)?;
        Ok(paths)
    }

    /// The trained tokenizer as a [`T5Tokenizer`] (what loading the saved folder gives).
    pub fn to_t5(&self, source: &Path) -> Result<T5Tokenizer> {
        T5Tokenizer::from_json_str(&self.to_json()?, source)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CAPTIONS: [&str; 6] = [
        "a red circle",
        "a small red circle at the top left on a blue background",
        "a green square",
        "a large green square at the center on a white background",
        "a yellow triangle",
        "a small yellow triangle at the bottom right on a black background",
    ];

    #[test]
    fn t5_special_ids_and_eos() {
        let t = train_tokenizer(CAPTIONS, &TrainOptions::default()).unwrap();
        assert_eq!(t.texts, 6);
        let tok = t.to_t5(Path::new("memory")).unwrap();
        assert_eq!(tok.pad_id(), 0);
        assert_eq!(tok.eos_id(), 1);
        assert_eq!(tok.token_to_id("<unk>"), Some(2));
        let enc = tok.encode("a red circle", 8).unwrap();
        assert_eq!(enc.ids[enc.len() - 1], 1);
        assert!(enc.ids[..enc.len() - 1].iter().all(|&i| i > 2));
        assert_eq!(&enc.ids[enc.len()..], &vec![0; 8 - enc.len()][..]);
        // A character never seen maps to <unk>.
        assert!(tok.encode_raw("a red ☃").unwrap().contains(&2));
        // Decoding gives the text back.
        let raw = tok.encode_raw("a small blue square").unwrap();
        assert_eq!(t.inner.decode(&raw, true).unwrap(), "a small blue square");
    }

    #[test]
    fn training_is_deterministic_and_honours_the_vocab_size() {
        let a = train_tokenizer(CAPTIONS, &TrainOptions::default()).unwrap();
        let b = train_tokenizer(CAPTIONS, &TrainOptions::default()).unwrap();
        assert_eq!(a.to_json().unwrap(), b.to_json().unwrap());
        let opts = TrainOptions {
            vocab_size: 40,
            ..TrainOptions::default()
        };
        let small = train_tokenizer(CAPTIONS, &opts).unwrap();
        assert!(small.vocab_size() <= 40, "{}", small.vocab_size());
        assert!(small.vocab_size() < a.vocab_size());
    }

    #[test]
    fn impossible_requests_are_errors() {
        assert!(train_tokenizer(["", "  "], &TrainOptions::default()).is_err());
        let tiny = TrainOptions {
            vocab_size: 10,
            ..TrainOptions::default()
        };
        let e = train_tokenizer(CAPTIONS, &tiny).unwrap_err().to_string();
        assert!(e.contains("distinct characters"), "{e}");
    }

    #[test]
    fn saved_folder_loads_as_t5_tokenizer() {
        let dir = std::env::temp_dir().join(format!("pixart-train-tok-{}", std::process::id()));
        let t = train_tokenizer(CAPTIONS, &TrainOptions::default()).unwrap();
        let files = t.save(&dir).unwrap();
        assert!(files.iter().all(|f| f.is_file()));
        let loaded = T5Tokenizer::from_dir(&dir).unwrap();
        let direct = t.to_t5(&dir).unwrap();
        for c in CAPTIONS {
            assert_eq!(loaded.encode(c, 32).unwrap(), direct.encode(c, 32).unwrap());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
