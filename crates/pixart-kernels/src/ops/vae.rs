//! Tensor ops the VAE needs, written for the CPU where candle's generic paths are slow.
//!
//! - [`group_norm`]: GroupNorm with an optional fused SiLU. On the CPU (f32) it is one custom
//!   op: statistics in two passes (mean, then centred sum of squares) accumulated in f32 lanes
//!   folded into f64, then one parallel pass that normalises, applies the affine parameters and
//!   the SiLU. Elsewhere it is composed from tensor ops in f32.
//! - [`conv3x3`]: 3×3, stride 1, padding 1 convolution, with an optional fused nearest 2×
//!   upsample of its input. On the CPU (f32) it runs as nine shifted GEMMs over a zero-padded
//!   copy of the input (no im2col buffer), which keeps GEMM speed; candle's own conv2d
//!   (tiled im2col) runs at about a quarter of it. Elsewhere it is candle's conv2d.
//! - [`attention_single_head`]: softmax attention with the queries processed in chunks, so
//!   the full N×N score matrix is never held.
//!
//! The fast CPU paths are forward-only custom ops: they cut the autograd graph. Training
//! ([`crate::blocks::Mode::Training`]) uses versions built from candle ops that have a
//! backward ([`group_stats_composed`], [`group_norm_with_stats_composed`], [`conv2d_im2col`],
use candle_core::{DType, Tensor, D};

use crate::cpu;
pub use crate::cpu::vae::im2col;
/// GroupNorm over `x` (b, c, *spatial) with `groups` groups and per-channel `weight`, `bias`
/// (c); with `silu`, SiLU is applied to the result. Computed in f32 whatever the input dtype.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    silu: bool,
) -> candle_core::Result<Tensor> {
    let stats = group_stats(x, groups, eps)?;
    group_norm_with_stats(x, &stats, weight, bias, silu)
}

/// The statistics GroupNorm normalises with: (b, groups, 2) f32 holding the mean and
/// `1 / sqrt(var + eps)` of each group (biased variance, two passes).
pub fn group_stats(x: &Tensor, groups: usize, eps: f64) -> candle_core::Result<Tensor> {
    let (b, c) = (x.dim(0)?, x.dim(1)?);
    if x.device().is_cpu() && x.dtype() == DType::F32 && groups > 0 && c % groups == 0 {
        return cpu::vae::group_stats(x, groups, eps)?.reshape((b, groups, 2));
    }
    group_stats_composed(x, groups, eps)
}

/// [`group_stats`] composed from candle tensor ops (mean, centred mean of squares), which
/// have a backward: the training path, and the path off the CPU.
pub fn group_stats_composed(x: &Tensor, groups: usize, eps: f64) -> candle_core::Result<Tensor> {
    let (b, c) = (x.dim(0)?, x.dim(1)?);
    if groups == 0 || c % groups != 0 {
        candle_core::bail!("group_norm: {c} channels are not divisible into {groups} groups");
    }
    // (b, c, *spatial) -> (b, groups, c/groups * spatial)
    let xg = x.to_dtype(DType::F32)?.reshape((b, groups, ()))?;
    let mean = xg.mean_keepdim(D::Minus1)?;
    let var = xg.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    // (b, groups, 1) x2 -> (b, groups, 2)
    Tensor::cat(&[mean, inv], 2)
}

/// GroupNorm of `x` with given `stats` (from [`group_stats`], possibly of another tensor:
/// tiled decoding normalises every tile with shared statistics), then the affine parameters
/// and an optional SiLU.
pub fn group_norm_with_stats(
    x: &Tensor,
    stats: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    silu: bool,
) -> candle_core::Result<Tensor> {
    let (b, c) = (x.dim(0)?, x.dim(1)?);
    let (sb, groups, two) = stats.dims3()?;
    if sb != b || two != 2 || groups == 0 || c % groups != 0 {
        candle_core::bail!(
            "group_norm: statistics {:?} do not fit an input {:?}",
            stats.dims(),
            x.dims()
        );
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        // weight, bias: (c), (c) -> (2, c)
        let wb = Tensor::stack(&[weight.to_dtype(DType::F32)?, bias.to_dtype(DType::F32)?], 0)?;
        return cpu::vae::group_norm_apply(x, &wb, &stats.to_dtype(DType::F32)?, groups, silu);
    }
    group_norm_with_stats_composed(x, stats, weight, bias, silu)
}

/// [`group_norm_with_stats`] composed from candle tensor ops, which have a backward (through
/// `x`, the statistics, and the affine parameters): the training path, and the path off the CPU.
pub fn group_norm_with_stats_composed(
    x: &Tensor,
    stats: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    silu: bool,
) -> candle_core::Result<Tensor> {
    let (b, c) = (x.dim(0)?, x.dim(1)?);
    let groups = stats.dim(1)?;
    let dtype = x.dtype();
    let dims = x.dims().to_vec();
    // (b, c, *spatial) -> (b, groups, c/groups * spatial)
    let xg = x.to_dtype(DType::F32)?.reshape((b, groups, ()))?;
    let mean = stats.narrow(2, 0, 1)?;
    let inv = stats.narrow(2, 1, 1)?;
    // (b, groups, c/groups * spatial) -> (b, c, *spatial)
    let xn = xg.broadcast_sub(&mean)?.broadcast_mul(&inv)?.reshape(dims.as_slice())?;
    // weight, bias: (c) -> (1, c, 1, ...)
    let mut affine_shape = vec![1usize; dims.len()];
    affine_shape[1] = c;
    let w = weight.to_dtype(DType::F32)?.reshape(affine_shape.as_slice())?;
    let bb = bias.to_dtype(DType::F32)?.reshape(affine_shape.as_slice())?;
    let mut y = xn.broadcast_mul(&w)?.broadcast_add(&bb)?;
    if silu {
        y = y.silu()?;
    }
    y.to_dtype(dtype)
}

/// 1×1 convolution of `x` (b, c_in, h, w) with `weight` (c_out, c_in, 1, 1) and `bias`
/// (c_out): on the CPU in f32 one GEMM per image on [`cpu::sgemm`] (the input read
/// as it is, bias fused), elsewhere candle's conv2d.
pub fn conv1x1(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c_in, h, w) = x.dims4()?;
    let (c_out, k_in, kh, kw) = weight.dims4()?;
    if (k_in, kh, kw) != (c_in, 1, 1) || bias.dims() != [c_out] {
        candle_core::bail!(
            "conv1x1: weight {:?} and bias {:?} do not fit an input of {c_in} channels",
            weight.dims(),
            bias.dims()
        );
    }
    let fast = x.device().is_cpu()
        && [x.dtype(), weight.dtype(), bias.dtype()] == [DType::F32; 3]
        && cpu::sgemm::native_available();
    if !fast {
        // bias: (c_out) -> (1, c_out, 1, 1)
        return x
            .conv2d(weight, 0, 1, 1, 1)?
            .broadcast_add(&bias.reshape((1, (), 1, 1))?);
    }
    let x = x.contiguous()?.reshape((b, c_in, h * w))?; // (b, c_in, h, w) -> (b, c_in, h·w)
    let w2 = weight.reshape((c_out, c_in))?.contiguous()?; // (c_out, c_in, 1, 1) -> (c_out, c_in)
    let y = cpu::vae::conv1x1(&x, &w2, bias)?; // (b, c_out, h·w)
    y.reshape((b, c_out, h, w))
}

/// 3×3 convolution, stride 1, zero padding 1, of `x` (b, c_in, h, w) with `weight`
/// (c_out, c_in, 3, 3) and optional `bias` (c_out). With `upsample`, the input is first
/// upsampled 2× by nearest neighbour (diffusers' `Upsample2D`), so the output is
/// (b, c_out, 2h, 2w); on the CPU the upsampled input is never materialised on its own.
pub fn conv3x3(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, upsample: bool) -> candle_core::Result<Tensor> {
    let (_, c_in, _, _) = x.dims4()?;
    let (_, k_in, kh, kw) = weight.dims4()?;
    if (k_in, kh, kw) != (c_in, 3, 3) {
        candle_core::bail!(
            "conv3x3: weight {:?} does not fit an input of {c_in} channels",
            weight.dims()
        );
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 && weight.dtype() == DType::F32 {
        let bias = bias.map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
        if bias.as_ref().is_some_and(|b| b.len() != weight.dim(0).unwrap_or(0)) {
            candle_core::bail!("conv3x3: the bias does not have one value per output channel");
        }
        return cpu::vae::conv3x3(x, weight, bias, upsample);
    }
    conv3x3_composed(x, weight, bias, upsample)
}

/// [`conv3x3`] as candle's `upsample_nearest2d` and `conv2d`: the path off the CPU.
pub fn conv3x3_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    upsample: bool,
) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let x = if upsample {
        // (b, c, h, w) -> (b, c, 2h, 2w)
        x.upsample_nearest2d(2 * h, 2 * w)?
    } else {
        x.clone()
    };
    let y = x.conv2d(weight, 1, 1, 1, 1)?;
    match bias {
        // bias: (c_out) -> (1, c_out, 1, 1)
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

/// Single-head softmax attention `softmax(q kᵀ · scale) v` with q: (b, n, d), k, v: (b, m, d),
/// computed over chunks of queries so that at most about `max_scores` score values exist at
/// once. The softmax is computed in f32. Returns (b, n, d) in the dtype of `q`.
pub fn attention_single_head(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    max_scores: usize,
) -> candle_core::Result<Tensor> {
    let (b, n, d) = q.dims3()?;
    let m = k.dim(1)?;
    if q.device().is_cpu() && cpu::sgemm::native_available() {
        // The fused attention (scores per 64-query block), as one head: (b, n, d) -> (b, 1, n, d).
        let f = |t: &Tensor, rows: usize| t.to_dtype(DType::F32)?.reshape((b, 1, rows, d));
        let none = cpu::attention::ScoreBias::None;
        let o = cpu::attention::attention_f32(&f(q, n)?, &f(k, m)?, &f(v, m)?, none, scale as f32)?;
        return o.reshape((b, n, d))?.to_dtype(q.dtype()); // (b, 1, n, d) -> (b, n, d)
    }
    let chunk = (max_scores / (b * m).max(1)).clamp(1, n.max(1));
    let dtype = q.dtype();
    let q = (q.to_dtype(DType::F32)? * scale)?;
    let kt = k.to_dtype(DType::F32)?.t()?.contiguous()?; // (b, d, m)
    let v = v.to_dtype(DType::F32)?.contiguous()?;
    let mut outs = Vec::with_capacity(n.div_ceil(chunk));
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let s = q.narrow(1, start, len)?.contiguous()?.matmul(&kt)?; // (b, len, m)
        let p = candle_nn::ops::softmax_last_dim(&s)?;
        outs.push(p.matmul(&v)?); // (b, len, d)
        start += len;
    }
    let out = if outs.len() == 1 {
        outs.remove(0)
    } else {
        Tensor::cat(&outs, 1)?
    };
    out.to_dtype(dtype)
}

/// The training conv: 3×3, stride 1, padding 1 convolutions of f32 CPU tensors run the fast
/// [`conv3x3`] kernel with its GEMM backward (`Conv3x3Op::bwd`); every other conv is
/// [`conv2d_im2col`]. Both have a backward for the input and the weight (the bias is added with
/// a broadcast, which has one).
pub fn conv2d_train(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let (_, c_in, _, _) = x.dims4()?;
    let (_, k_in, kh, kw) = weight.dims4()?;
    let fast = x.device().is_cpu() && x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    if !(fast && (kh, kw, stride, padding) == (3, 3, 1, 1) && k_in == c_in) {
        return conv2d_im2col(x, weight, bias, stride, padding);
    }
    let y = cpu::vae::conv3x3_train(x, weight)?;
    match bias {
        // bias: (c_out) -> (1, c_out, 1, 1)
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

/// Convolution of `x` (b, c_in, h, w) with `weight` (c_out, c_in, kh, kw), optional `bias`
/// (c_out), zero padding `padding` on every side and stride `stride`, as one GEMM over an
/// im2col matrix built from `narrow`/`stack`/`reshape`: every op has a backward that is itself
/// a GEMM or a copy. The training path for the convs [`conv2d_train`] does not run on its fast
/// kernel: candle's own conv2d backward runs `conv_transpose2d`, a scalar loop on the CPU.
pub fn conv2d_im2col(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let (b, c_in, h, w) = x.dims4()?;
    let (c_out, k_in, kh, kw) = weight.dims4()?;
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    if k_in != c_in || stride == 0 || hp < kh || wp < kw {
        candle_core::bail!(
            "conv2d: weight {:?} (stride {stride}, padding {padding}) does not fit an input {:?}",
            weight.dims(),
            x.dims()
        );
    }
    let (ho, wo) = ((hp - kh) / stride + 1, (wp - kw) / stride + 1);
    let y = if (kh, kw, stride, padding) == (1, 1, 1, 0) {
        // weight (c_out, c_in, 1, 1) -> (c_out, c_in); x (b, c_in, h, w) -> (b, c_in, h·w)
        weight
            .reshape((c_out, c_in))?
            .broadcast_matmul(&x.reshape((b, c_in, h * w))?)?
    } else {
        let cols = im2col(x, kh, kw, stride, padding)?;
        // weight (c_out, c_in, kh, kw) -> (c_out, c_in·kh·kw)
        weight.reshape((c_out, c_in * kh * kw))?.broadcast_matmul(&cols)?
    };
    // (b, c_out, ho·wo) -> (b, c_out, ho, wo)
    let y = y.reshape((b, c_out, ho, wo))?;
    match bias {
        // bias: (c_out) -> (1, c_out, 1, 1)
        Some(bb) => y.broadcast_add(&bb.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

/// `softmax(q kᵀ · scale) v` for q: (b, n, d), k, v: (b, m, d) in one piece, from ops that
/// have a backward (matmul and `candle_nn::ops::softmax`, not the forward-only
/// `softmax_last_dim`): the training path. Holds the whole (b, n, m) score matrix.
pub fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let dtype = q.dtype();
    let q = q.to_dtype(DType::F32)?;
    // (b, m, d) -> (b, d, m)
    let kt = k.to_dtype(DType::F32)?.t()?;
    let s = (q.matmul(&kt)? * scale)?; // (b, n, m)
    let p = candle_nn::ops::softmax(&s, D::Minus1)?;
    p.matmul(&v.to_dtype(DType::F32)?)?.to_dtype(dtype) // (b, n, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The 1×1 conv against candle's conv2d + bias.
    #[test]
    fn conv1x1_matches_candle() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 7, 5, 11), &dev)?;
        let w = Tensor::randn(0f32, 0.3, (9, 7, 1, 1), &dev)?;
        let bias = Tensor::randn(0f32, 1.0, 9, &dev)?;
        let got = conv1x1(&x, &w, &bias)?;
        let want = x.conv2d(&w, 0, 1, 1, 1)?.broadcast_add(&bias.reshape((1, 9, 1, 1))?)?;
        let (d, _) = pixart_core::testing::max_abs_diff(&got, &want);
        assert!(d < 1e-5, "{d}");
        assert!(conv1x1(&x, &w.narrow(1, 0, 6)?, &bias).is_err());
        Ok(())
    }

    /// The CPU conv (both GEMM paths, with bias and the fused upsample) against candle's
    /// upsample + conv2d + bias.
    #[test]
    fn conv3x3_matches_candle_on_both_paths() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (b, c_in, c_out, h, w) in [(2, 5, 7, 9, 13), (1, 16, 3, 4, 70)] {
            let x = Tensor::randn(0f32, 1.0, (b, c_in, h, w), &dev)?;
            let wt = Tensor::randn(0f32, 0.2, (c_out, c_in, 3, 3), &dev)?;
            let bias = Tensor::randn(0f32, 1.0, c_out, &dev)?;
            for upsample in [false, true] {
                let want = conv3x3_composed(&x, &wt, Some(&bias), upsample)?;
                let mut natives = vec![false];
                if crate::cpu::sgemm::native_available() {
                    natives.push(true);
                }
                for native in natives {
                    let op = crate::cpu::vae::Conv3x3Op {
                        upsample,
                        bias: Some(bias.to_vec1()?),
                        native,
                    };
                    let got = x.apply_op2_no_bwd(&wt, &op)?;
                    let (d, _) = pixart_core::testing::max_abs_diff(&got, &want);
                    assert!(
                        d < 1e-4,
                        "{b}x{c_in}->{c_out} {h}x{w} upsample {upsample} native {native}: {d}"
                    );
                }
            }
        }
        Ok(())
    }
}
