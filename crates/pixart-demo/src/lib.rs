//! The project's synthetic demo dataset and the evaluation of a model on it (docs/demo-dataset.md).
//!
//! - [`vocab`]: shapes, colours, sizes, positions, captions and the fixed held-out list
//!   ([`vocab::HELD_OUT`]).
//! - [`render`]: a [`render::Geometry`] drawn anti-aliased at any size.
//! - [`dataset`]: `pixart demo-data`: the deterministic generator (images, `train.jsonl`,
//!   `eval.jsonl`, `dataset.json`) and the readers of its files.
//! - [`check`]: the rule-based checker that reads the attributes back from an image.
//! - [`eval`]: `pixart eval demo`: generating the evaluation prompts with a pipeline, checking
//!   them, accuracy per attribute for held-out and seen prompts, and the contact sheet.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod check;
pub mod dataset;
pub mod eval;
pub mod render;
pub mod vocab;

pub use check::{check, observe, Check, Seen};
pub use render::{render, Geometry};
pub use vocab::{Attributes, Color, Combo, Position, Shape, Size, HELD_OUT};
