//! PixArt-Σ training (arXiv 2403.04692 §3; PixArt-sigma `train_scripts/train.py`).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod diffusion;
pub mod lora;
pub mod metrics;
pub mod optim;
pub mod patch;
pub mod trainer;
pub mod vae;

pub use config::TrainConfig;
pub use data::{Batch, TrainData};
pub use trainer::{Event, Summary, Trainer};
