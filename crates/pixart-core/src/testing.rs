//! Helpers for the tests that compare against golden files, shared by every crate's tests.
//! Not for library code: the assertions panic.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use candle_core::{DType, Tensor};

/// The repository's `fixtures/` folder, or `PIXART_FIXTURES` when set (test binaries run from
/// another checkout, e.g. on the GPU machine).
pub fn fixtures_root() -> PathBuf {
    match std::env::var_os("PIXART_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"),
    }
}

/// The largest |got − want| and the flat index where it occurs; a NaN anywhere counts as
/// infinitely large. Panics when the shapes differ.
pub fn max_abs_diff(got: &Tensor, want: &Tensor) -> (f32, usize) {
    assert_eq!(got.dims(), want.dims(), "shape");
    let flat = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (g, w) = (flat(got), flat(want));
    let mut worst = (0f32, 0usize);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let d = (a - b).abs();
        let d = if d.is_nan() { f32::INFINITY } else { d };
        if d > worst.0 {
            worst = (d, i);
        }
    }
    worst
}

/// The largest |value| of a tensor (any float dtype), as f32.
pub fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Asserts max |got − want| ≤ atol, reporting the worst element.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, atol: f32) {
    let (d, at) = max_abs_diff(got, want);
    assert!(
        d <= atol,
        "{name}: max |diff| {d:e} at flat index {at}, tolerance {atol:e}"
    );
}
