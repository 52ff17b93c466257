//! `pixart train-tokenizer`: a T5-style SentencePiece Unigram tokenizer trained on the captions
//! of a dataset (both fields), written as tokenizer.json + tokenizer_config.json +
//! special_tokens_map.json.
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use pixart_text::training::{train_tokenizer, TrainOptions, MIN_VOCAB_SIZE};

use crate::UsageError;

#[derive(Debug, Args)]
pub struct TrainTokenizerArgs {
    /// Captions file (JSON lines with `caption` and optionally `long_caption`; other keys are
    /// ignored), e.g. from `pixart demo-data`.
    #[arg(long)]
    data: PathBuf,
    /// Vocabulary size, `<pad>`, `</s>` and `<unk>` included (a small corpus may give fewer);
    /// 8 to 1000000.
    #[arg(long, default_value_t = 256)]
    vocab_size: usize,
    /// Output folder (created; its files are replaced atomically).
    #[arg(long)]
    out: PathBuf,
}

/// The largest `--vocab-size`.
const MAX_VOCAB_SIZE: usize = 1_000_000;

pub fn run(a: TrainTokenizerArgs) -> Result<()> {
    if !(MIN_VOCAB_SIZE..=MAX_VOCAB_SIZE).contains(&a.vocab_size) {
        bail!(UsageError(format!(
            "--vocab-size {} must be between {MIN_VOCAB_SIZE} and {MAX_VOCAB_SIZE}",
            a.vocab_size
        )));
    }
    if a.data.is_dir() {
        bail!(UsageError(format!(
            "--data {}: is a folder, not a captions file",
            a.data.display()
        )));
    }
    if !a.data.is_file() {
        bail!(UsageError(format!("{}: no such captions file", a.data.display())));
    }
    super::output_folder_ok(&a.out)?;
    // Only the captions are used: records need no `path`.
    let records = pixart_data::read_captions(&a.data).map_err(super::usage)?;
    let texts = pixart_data::training_texts(&records);
    let opts = TrainOptions {
        vocab_size: a.vocab_size,
        ..TrainOptions::default()
    };
    let trained = train_tokenizer(&texts, &opts).map_err(|e| UsageError(format!("{}: {e}", a.data.display())))?;
    let files = trained.save(&a.out)?;
    eprintln!(
        "trained on {} captions ({} distinct words): {} tokens",
        trained.texts,
        trained.words,
        trained.vocab_size()
    );
    for f in files {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}
