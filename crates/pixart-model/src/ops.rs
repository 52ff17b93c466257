//! Small tensor ops the model needs that candle lacks or computes less carefully.
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

/// LayerNorm over the last dim without affine parameters: `(x - mean) / sqrt(var + eps)`.
///
/// Mean and variance are computed in two passes in f32 (candle-nn's fused op uses
/// `E[x²] - mean²`, which loses precision when activations have a large mean). On the CPU this
/// is one parallel pass over rows; elsewhere, and for tensors that need gradients
/// (`track_op`: the CPU kernel has no backward), it is composed from tensor ops.
pub fn layer_norm_no_affine(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if x.track_op() && crate::grad_ops::applies(x) {
        crate::grad_ops::layer_norm_no_affine(x, eps)
    } else if x.device().is_cpu() && !x.track_op() {
        x.contiguous()?.apply_op1_no_bwd(&LayerNormNoAffine { eps: eps as f32 })
    } else {
        layer_norm_composed(x, eps)
    }
}

/// The same as [`layer_norm_no_affine`] from differentiable tensor ops (for training and
/// non-CPU devices).
pub fn layer_norm_composed(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)
}

struct LayerNormNoAffine {
    eps: f32,
}

fn ln_rows<T>(src: &[T], dim: usize, eps: f32) -> Vec<T>
where
    T: Copy + Send + Sync + Default + num_like::ToF32 + num_like::FromF32,
{
    let mut dst = vec![T::default(); src.len()];
    dst.par_chunks_mut(dim).zip(src.par_chunks(dim)).for_each(|(d, s)| {
        let n = dim as f32;
        let mean = s.iter().map(|v| v.to_f32()).sum::<f32>() / n;
        let var = s
            .iter()
            .map(|v| {
                let c = v.to_f32() - mean;
                c * c
            })
            .sum::<f32>()
            / n;
        let inv = 1.0 / (var + eps).sqrt();
        for (o, v) in d.iter_mut().zip(s) {
            *o = T::from_f32((v.to_f32() - mean) * inv);
        }
    });
    dst
}

impl CustomOp1 for LayerNormNoAffine {
    fn name(&self) -> &'static str {
        "layer-norm-no-affine"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("layer_norm_no_affine: input not contiguous".into()))?;
        let dim = layout.dims().last().copied().unwrap_or(1).max(1);
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(ln_rows(&v[start..end], dim, self.eps)),
            CpuStorage::BF16(v) => CpuStorage::BF16(ln_rows(&v[start..end], dim, self.eps)),
            CpuStorage::F16(v) => CpuStorage::F16(ln_rows(&v[start..end], dim, self.eps)),
            other => {
                use candle_core::backend::BackendStorage;
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    other.dtype(),
                    "layer_norm_no_affine",
                ));
            }
        };
        Ok((out, layout.shape().clone()))
    }
}

pub(crate) mod num_like {
    pub trait ToF32 {
        fn to_f32(self) -> f32;
    }
    pub trait FromF32 {
        fn from_f32(v: f32) -> Self;
    }
    impl ToF32 for f32 {
        fn to_f32(self) -> f32 {
            self
        }
    }
    impl FromF32 for f32 {
        fn from_f32(v: f32) -> Self {
            v
        }
    }
    impl ToF32 for half::bf16 {
        fn to_f32(self) -> f32 {
            half::bf16::to_f32(self)
        }
    }
    impl FromF32 for half::bf16 {
        fn from_f32(v: f32) -> Self {
            half::bf16::from_f32(v)
        }
    }
    impl ToF32 for half::f16 {
        fn to_f32(self) -> f32 {
            half::f16::to_f32(self)
        }
    }
    impl FromF32 for half::f16 {
        fn from_f32(v: f32) -> Self {
            half::f16::from_f32(v)
        }
    }
}

/// `x * (1 + scale) + shift` with `scale`, `shift` broadcast over tokens.
/// x: (b, n, c); scale, shift: (b, 1, c).
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

/// Scaled dot-product attention that never holds more than `max_scores` score elements at
/// once: the queries are processed in chunks.
///
/// q: (b, h, n, d); k, v: (b, h, m, d); bias: additive, broadcastable to (b, h, n, m) with a
/// query dim of 1, e.g. (b, 1, 1, m). Returns (b, h, n, d).
pub fn chunked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
    max_scores: usize,
) -> candle_core::Result<Tensor> {
    let (b, h, n, _d) = q.dims4()?;
    let m = k.dim(2)?;
    let needs_grad = q.track_op() || k.track_op() || v.track_op();
    if q.device().is_cpu() && !needs_grad {
        return crate::kernels::attention_cpu(q, k, v, bias, scale)?.to_dtype(q.dtype());
    }
    let per_query = (b * h * m).max(1);
    let chunk = (max_scores / per_query).clamp(1, n.max(1));
    let q = (q * scale)?;
    let kt = k.t()?;
    let mut outs = Vec::with_capacity(n.div_ceil(chunk));
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let qc = q.narrow(2, start, len)?;
        let mut s = qc.matmul(&kt)?; // (b, h, len, m)
        if let Some(bias) = bias {
            s = s.broadcast_add(bias)?;
        }
        let p = crate::kernels::softmax_last_dim(&s)?;
        outs.push(p.matmul(v)?); // (b, h, len, d)
        start += len;
    }
    if outs.len() == 1 {
        Ok(outs.remove(0))
    } else {
        Tensor::cat(&outs, 2)
    }
}
