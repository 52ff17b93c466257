//! CPU kernels for pixart-rs: matrix products and the fused operations built on them.
//!
//! - [`bf16`]: a native bf16 GEMM (`vdpbf16ps` micro-kernel on CPUs with AVX512-BF16, chosen at
//!   run time; a portable kernel with the same arithmetic elsewhere): both operands packed into
//!   cache-sized panels, f32 accumulation, bf16 or f32 output, parallel over output blocks.
//! - [`sgemm`]: an f32 GEMM with an AVX-512 micro-kernel (8 × 48 tile), B packed whole or
//!   block by block from a Linear weight, a row-major matrix or shifted rows (convolution).
//! - [`linear`]: a drop-in for `candle_nn::Linear` that runs contiguous bf16 CPU inputs
//!   through that GEMM (bias fused) and everything else through candle; and
//!   [`linear::PackedLinear`], inference-only, holding only the packed weight.
//! - [`attention`]: fused bf16 attention on that GEMM (scores per query block, bias and
//!   softmax in f32 in cache), for the transformer and the T5 encoder.
//! - [`vector`]: vectorised f32 row kernels (e^x, softmax, tanh-GELU) chosen at run time.
//!
//! Forward only: the fast path is a custom op without a backward, so `Linear` takes candle's
//! path whenever the input, weight or bias tracks gradients (`Tensor::track_op`).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod attention;
pub mod bf16;
pub mod lhs;
pub mod linear;
pub mod sgemm;
pub mod vector;

/// Whether `PIXART_GEMM=fallback` sends callers to candle's matmul instead of the native GEMMs
/// (for comparisons).
pub(crate) fn fallback_forced() -> bool {
    std::env::var("PIXART_GEMM").is_ok_and(|v| v.eq_ignore_ascii_case("fallback"))
}

pub use linear::{linear, linear_b, linear_no_bias, Linear, PackedLinear};

/// The elements of a contiguous CPU tensor of element type `T`, for custom ops; an error naming
/// `what` when the storage holds another dtype or the layout is not contiguous.
pub fn contiguous_data<'a, T: candle_core::WithDType>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    match (s.as_slice::<T>(), l.contiguous_offsets()) {
        (Ok(v), Some((a, b))) => Ok(&v[a..b]),
        _ => Err(candle_core::Error::Msg(format!(
            "{what} must be contiguous {:?}",
            T::DTYPE
        ))),
    }
}
