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
    /// Captions file (JSON lines with `caption` and `long_caption`), e.g. from `pixart demo-data`.
    #[arg(long)]
    data: PathBuf,
    /// Vocabulary size, `<pad>`, `</s>` and `<unk>` included (a small corpus may give fewer).
    #[arg(long, default_value_t = 256)]
    vocab_size: usize,
    /// Output folder (created; its files are replaced atomically).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: TrainTokenizerArgs) -> Result<()> {
    if a.vocab_size < MIN_VOCAB_SIZE {
        bail!(UsageError(format!("--vocab-size must be at least {MIN_VOCAB_SIZE}")));
    }
    if !a.data.is_file() {
        bail!(UsageError(format!("{}: no such captions file", a.data.display())));
    }
    let records = pixart_data::read_records(&a.data)?;
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
