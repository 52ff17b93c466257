//! The T5 encoder's ops: the fused bf16 CPU kernels ([`crate::cpu::t5`]) where they apply,
//! candle's ops (transformers' arithmetic: RMS norm statistics in f32) elsewhere.
use candle_core::{DType, Tensor, D};

use super::{path, Path};
use crate::cpu;
pub use crate::cpu::attention::ScoreBias;

/// `T5LayerNorm`: `weight · to_weight_dtype(x · rsqrt(mean(x²) + eps))`, statistics in f32.
/// x: (b, l, d) -> (b, l, d) in the weight's dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if path(x, &[weight]) == Path::Cpu && x.dtype() == DType::BF16 && weight.dtype() == DType::BF16 {
        return cpu::t5::rms_norm_bf16(x, weight, eps);
    }
    let xf = x.to_dtype(DType::F32)?;
    let variance = xf.sqr()?.mean_keepdim(D::Minus1)?; // (b, l, 1)
    let normed = xf.broadcast_mul(&(variance + eps)?.sqrt()?.recip()?)?;
    normed.to_dtype(weight.dtype())?.broadcast_mul(weight)
}

/// The gated FFN's `gelu_tanh(a) · b` (`T5DenseGatedActDense`), GELU in f32 as PyTorch computes
/// it for bf16 tensors on the fused path.
pub fn gelu_tanh_mul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if path(a, &[b]) == Path::Cpu && a.dtype() == DType::BF16 {
        return cpu::t5::gelu_mul_bf16(a, b);
    }
    a.gelu()? * b
}

/// Whether [`attention`] runs the fused CPU kernel for a model of this dtype on this device:
/// bf16 on a CPU with AVX512-BF16 (the portable kernel would be slow), inference only.
pub fn fused_attention_applies(dtype: DType, device: &candle_core::Device) -> bool {
    dtype == DType::BF16 && device.is_cpu() && cpu::bf16::native_available()
}

/// `softmax(scale·q·kᵀ + bias)·v` on the fused bf16 CPU kernel (callers check
/// [`fused_attention_applies`]): q (b, h, n, d); k, v (b, h, m, d); returns (b, h, n, d).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: ScoreBias, scale: f32) -> candle_core::Result<Tensor> {
    cpu::attention::attention_bf16(q, k, v, bias, scale)
}
