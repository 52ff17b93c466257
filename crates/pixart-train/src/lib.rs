//! PixArt-Σ training (arXiv 2403.04692 §3; PixArt-sigma `train_scripts/train.py`).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod diffusion;
pub mod optim;
pub mod vae;
