//! The text side of PixArt-Σ: the T5 v1.1 encoder and its SentencePiece tokenizer.
//!
//! - [`config`]: `text_encoder/config.json` ([`T5Config`], with [`T5Config::xxl`]).
//! - [`t5`]: the encoder ([`T5Encoder`]), one struct per transformers module, with the
//!   padding mask applied to the attention scores.
//! - [`loading`]: building it from a folder (single or sharded safetensors, every tensor
//!   checked), with random weights, and the calls the CLI makes ([`run_text_encoder`],
//!   [`bench_text_encoder`]).
//! - [`single_file`]: the encoder from one file: a llama.cpp GGUF (quantized) or a ComfyUI
//!   single-file safetensors (F16/BF16/fp8, scaled fp8), config from metadata or the shapes.
//! - [`quantize`]: `pixart quantize` for the encoder: a folder or single file to a llama.cpp-named
//!   GGUF.
//! - [`tokenizer`]: [`T5Tokenizer`] from `spiece.model` or `tokenizer.json`, [`tokenize`] and
//!   [`preprocess_caption`].
//! - [`training`]: training a T5-style Unigram tokenizer on captions ([`train_tokenizer`]).
//! - [`init`]: a T5 encoder folder with weights initialised as transformers does
//!   ([`init_text_encoder`]).
//!
//! Compute beyond candle's ops (the fused bf16 RMS norm, gated GELU and attention) goes through
//! `pixart_kernels::ops::t5`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![forbid(unsafe_code)]

pub mod config;
pub mod init;
pub mod loading;
pub mod quantize;
pub mod single_file;
pub mod t5;
pub mod tokenizer;
pub mod training;

pub use config::T5Config;
pub use init::{init_text_encoder, read_init_config, InitOptions};
pub use loading::{
    bench_quantized_text_encoder, bench_text_encoder, bench_text_encoder_on, load_text_encoder,
    random_quantized_text_encoder, random_text_encoder, random_xxl, run_text_encoder, BenchResult,
};
pub use t5::T5Encoder;
pub use tokenizer::{preprocess_caption, to_tensors, tokenize, Encoded, T5Tokenizer, DEFAULT_MAX_LENGTH};
pub use training::{train_tokenizer, TrainOptions, TrainedTokenizer};
