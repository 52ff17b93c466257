//! The dispatch layer: the ops the model crates call. Each decides once, from its inputs, where
//! it runs ([`Path`]), then calls the CUDA kernel ([`crate::cuda`]), the CPU kernel
//! ([`crate::cpu`]), the CPU kernel with a backward ([`crate::cpu::grad`], training), or the
//! same computation composed from candle's tensor ops: the path for other devices and dtypes,
//! and the reference every kernel is tested against (the `*_composed` functions and
//! [`modulate`] are public for that).
//!
//! - this module: the transformer's ops (LayerNorm with and without adaLN modulation, the
//!   gated residual, softmax, GELU, the Linear layers with their epilogues, attention, the KV
//!   compression conv);
//! - [`t5`]: the T5 encoder's RMS norm, gated GELU and attention with a full bias;
//! - [`vae`]: the VAE's GroupNorm (+ SiLU), convolutions and single-head attention.
use candle_core::{DType, Tensor, D};

use crate::{cpu, cuda, Linear};

pub mod t5;
pub mod vae;

/// Score elements one attention chunk may hold at once on the composed CPU path (f32: 128 MiB).
pub const MAX_SCORE_ELEMENTS: usize = 1 << 25;
/// The same on a GPU, where fewer, larger chunks keep kernel launches few (f32: 1 GiB).
pub const MAX_SCORE_ELEMENTS_GPU: usize = 1 << 28;

/// Where an op runs, decided once per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The project's CUDA kernel: a CUDA build, a CUDA tensor, no gradient, kernels on.
    Cuda,
    /// The CPU kernel (forward only): a CPU tensor that tracks no gradient.
    Cpu,
    /// The CPU kernel with a backward: an f32 CPU tensor that tracks gradients.
    Grad,
    /// candle's composed ops (a backward through candle's autograd): everything else.
    Composed,
}

/// The [`Path`] of an op on `x` with the other tensor inputs `others` (whether any of them
/// tracks gradients decides between the inference and the training paths).
pub fn path(x: &Tensor, others: &[&Tensor]) -> Path {
    let tracked = x.track_op() || others.iter().any(|t| t.track_op());
    if x.device().is_cpu() {
        match (tracked, cpu::grad::applies(x)) {
            (false, _) => Path::Cpu,
            (true, true) => Path::Grad,
            (true, false) => Path::Composed,
        }
    } else if !tracked && cuda::usable(x) {
        Path::Cuda
    } else {
        Path::Composed
    }
}

/// LayerNorm over the last dim without affine parameters: `(x - mean) / sqrt(var + eps)`,
/// mean and variance in two passes in f32 (candle-nn's fused op uses `E[x²] - mean²`).
pub fn layer_norm_no_affine(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    match path(x, &[]) {
        Path::Cpu => cpu::rows::layer_norm_no_affine(x, eps),
        Path::Grad => cpu::grad::layer_norm_no_affine(x, eps),
        Path::Cuda | Path::Composed => layer_norm_composed(x, eps),
    }
}

/// The same as [`layer_norm_no_affine`] from differentiable tensor ops.
pub fn layer_norm_composed(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)
}

/// `x * (1 + scale) + shift` with `scale`, `shift` broadcast over tokens (composed).
/// x: (b, n, c); scale, shift: (b, 1, c).
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

/// `modulate(layer_norm_no_affine(x, eps), shift, scale)`: one CUDA kernel on a GPU, one
/// parallel pass on the CPU (statistics in f32, one rounding to the output dtype; PyTorch
/// rounds after the norm and after each of the two ops), the fused ops with a backward in
/// training, composed elsewhere. x: (b, n, c); shift, scale: (b, 1, c).
pub fn layer_norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    match path(x, &[shift, scale]) {
        Path::Cuda if cuda::fused_applies(x, &[shift, scale]) => cuda::layer_norm_modulate(x, shift, scale, eps),
        Path::Cpu if x.rank() == 3 => cpu::rows::layer_norm_modulate(x, shift, scale, eps),
        Path::Grad if x.rank() == 3 => cpu::grad::modulate(&cpu::grad::layer_norm_no_affine(x, eps)?, shift, scale),
        _ => modulate(&layer_norm_no_affine(x, eps)?, shift, scale),
    }
}

/// `x + y * gate`: one CUDA kernel on a GPU, one parallel pass on the CPU (f32 arithmetic, one
/// rounding), the fused op with a backward in training, composed elsewhere.
/// x, y: (b, n, c); gate: (b, 1, c).
pub fn add_gated(x: &Tensor, y: &Tensor, gate: &Tensor) -> candle_core::Result<Tensor> {
    let same = x.rank() == 3 && y.dims() == x.dims() && y.dtype() == x.dtype();
    match path(x, &[y, gate]) {
        Path::Cuda if same && cuda::fused_applies(x, &[gate]) => cuda::add_gated(x, y, gate),
        Path::Cpu if same => cpu::rows::add_gated(x, y, gate),
        Path::Grad if same => cpu::grad::add_gated(x, y, gate),
        _ => x + y.broadcast_mul(gate)?,
    }
}

/// Softmax over the last dim.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    match path(x, &[]) {
        Path::Cpu => cpu::rows::softmax_last_dim(x),
        Path::Grad => cpu::grad::softmax_last_dim(x),
        Path::Cuda => candle_nn::ops::softmax_last_dim(x),
        Path::Composed => candle_nn::ops::softmax(x, D::Minus1),
    }
}

/// GELU with the tanh approximation.
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    match path(x, &[]) {
        Path::Cpu => cpu::rows::gelu(x),
        Path::Grad => cpu::grad::gelu(x),
        Path::Cuda | Path::Composed => x.gelu(),
    }
}

/// A Linear layer's `x·Wᵀ + b`. On a GPU, in bf16/f16 without gradients, one cuBLASLt call with
/// the bias in its epilogue; elsewhere the layer's own forward (the native CPU GEMMs or candle).
pub fn linear(layer: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    linear_act(layer, x, false)
}

/// `GELU(x·Wᵀ + b)` (tanh): on a GPU one cuBLASLt call, the GELU in its epilogue; elsewhere the
/// layer's forward, then [`gelu`].
pub fn linear_gelu(layer: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    linear_act(layer, x, true)
}

fn linear_act(layer: &Linear, x: &Tensor, gelu_after: bool) -> candle_core::Result<Tensor> {
    if cuda::linear_applies(x, layer.weight(), layer.bias()) {
        match cuda::linear(x, layer.weight(), layer.bias(), gelu_after) {
            Ok(y) => return Ok(y),
            // E.g. no cuBLASLt algorithm for a shape: candle's path below gives the same result.
            Err(e) => cuda::warn_once("cuBLASLt linear", &e),
        }
    }
    let y = candle_core::Module::forward(layer, x)?;
    if gelu_after {
        gelu(&y)
    } else {
        Ok(y)
    }
}

/// `residual + gate ⊙ (x·Wᵀ + b)` (`residual + x·Wᵀ + b` without a gate): an output projection
/// together with its residual. On a GPU (bf16/f16) one cuBLASLt call, the residual and the gate
/// in the GEMM's epilogue; elsewhere the projection and then [`add_gated`] or an add, as
/// diffusers' block does them. x: (b, n, k); residual: (b, n, out); gate: (b, 1, out).
pub fn linear_residual(
    layer: &Linear,
    x: &Tensor,
    residual: &Tensor,
    gate: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    if cuda::residual_applies(x, layer.weight(), layer.bias(), residual, gate) {
        match cuda::linear_residual(x, layer.weight(), layer.bias(), residual, gate) {
            Ok(y) => return Ok(y),
            Err(e) => cuda::warn_once("cuBLASLt linear with residual", &e),
        }
    }
    let y = linear(layer, x)?;
    match gate {
        Some(gate) => add_gated(residual, &y, gate),
        None => residual + y,
    }
}

/// Multi-head attention `softmax(scale·q·kᵀ + bias)·v` with the heads merged back.
///
/// q: (b, n, heads·d), heads not yet split; k, v: (b, heads, m, d). bias: additive,
/// broadcastable to (b, heads, n, m) with a query dim of 1, e.g. (b, 1, 1, m). `key_lens` (b),
/// when the bias is a prefix padding mask: row i's valid keys are its first `key_lens[i]`; the
/// kernels then skip the others exactly (the composed path uses the bias). At most
/// [`MAX_SCORE_ELEMENTS`] ([`MAX_SCORE_ELEMENTS_GPU`] on a GPU) score elements exist at once on
/// the composed path. Returns (b, n, heads·d).
///
/// On a GPU the fused flash-attention kernel serves bf16/f16 inputs with a head dim ≤ 128 when
/// there is no bias or it is a prefix mask; on the CPU the fused attention kernels.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    bias: Option<&Tensor>,
    key_lens: Option<&[usize]>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, n, hd) = q.dims3()?;
    if heads == 0 || hd % heads != 0 {
        candle_core::bail!("attention: {hd} channels do not split into {heads} heads");
    }
    let d = hd / heads;
    let q = q.reshape((b, n, heads, d))?; // (b, n, h, d)
    if flash_applies(&q, &[k, v], d) && (bias.is_none() || key_lens.is_some()) {
        let o = cuda::flash_attention(&q.transpose(1, 2)?, k, v, scale, key_lens)?; // (b, n, h, d)
        return o.reshape((b, n, hd)); // (b, n, h*d)
    }
    let q = q.transpose(1, 2)?.contiguous()?; // (b, h, n, d)
    let budget = if q.device().is_cpu() {
        MAX_SCORE_ELEMENTS
    } else {
        MAX_SCORE_ELEMENTS_GPU
    };
    let o = chunked_attention(&q, k, v, bias, key_lens, scale, budget)?; // (b, h, n, d)
    o.transpose(1, 2)?.reshape((b, n, hd)) // (b, n, h*d)
}

/// Whether the flash-attention kernel serves q with head dim `d` (and k, v).
fn flash_applies(q: &Tensor, others: &[&Tensor], d: usize) -> bool {
    path(q, others) == Path::Cuda && cuda::attention_applies(q, d)
}

/// (b, n, heads·d) -> (b, heads, n, d) for [`attention`]: a strided view where the CUDA
/// flash-attention kernel will read it (it takes any strides), a contiguous copy elsewhere.
pub fn split_heads(x: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, n, hd) = x.dims3()?;
    if heads == 0 || hd % heads != 0 {
        candle_core::bail!("attention: {hd} channels do not split into {heads} heads");
    }
    let view = x.reshape((b, n, heads, hd / heads))?; // (b, n, h, d)
    if flash_applies(&view, &[], hd / heads) {
        view.transpose(1, 2) // (b, h, n, d), not copied
    } else {
        view.transpose(1, 2)?.contiguous() // (b, h, n, d)
    }
}

/// Scaled dot-product attention over split heads that never holds more than `max_scores`
/// score elements at once on the composed path (the queries are processed in chunks); the
/// fused CPU kernels on the CPU without gradients.
///
/// q: (b, h, n, d); k, v: (b, h, m, d); bias and key_lens as [`attention`]. Returns (b, h, n, d).
pub fn chunked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    key_lens: Option<&[usize]>,
    scale: f64,
    max_scores: usize,
) -> candle_core::Result<Tensor> {
    if path(q, &[k, v]) == Path::Cpu {
        return cpu::attention::attention_cpu(q, k, v, bias, key_lens, scale);
    }
    let (b, h, n, _d) = q.dims4()?;
    let m = k.dim(2)?;
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
        let p = softmax_last_dim(&s)?;
        outs.push(p.matmul(v)?); // (b, h, len, d)
        start += len;
    }
    if outs.len() == 1 {
        Ok(outs.remove(0))
    } else {
        Tensor::cat(&outs, 2)
    }
}

/// The KV-compression conv of PixArt-Σ and its LayerNorm: a depthwise `r×r` stride-`r` conv
/// (`weight` (c, 1, r, r), `bias` (c)) of the (h, w) token grid of x (b, h·w, c), cropped to
/// whole windows, then LayerNorm with `norm` = (weight, bias). `ln_scale` = `norm.0 - 1`
/// (the LayerNorm's affine as an adaLN modulation). On a GPU two kernels (the conv, then the
/// fused norm); elsewhere `composed()`, the model's own definition. Returns (b, n', c).
#[allow(clippy::too_many_arguments)]
pub fn kv_conv_norm(
    x: &Tensor,
    (h, w): (usize, usize),
    r: usize,
    (weight, bias): (&Tensor, &Tensor),
    (norm_w, norm_b): (&Tensor, &Tensor),
    ln_scale: Option<&Tensor>,
    composed: impl FnOnce() -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    if path(x, &[weight, bias, norm_w, norm_b]) != Path::Cuda || !cuda::kv_conv_applies(x, weight, bias) {
        return composed();
    }
    let (b, _, c) = x.dims3()?;
    let y = cuda::kv_conv(x, h, w, r, weight, bias)?; // (b, n', c)
    if let Some(scale) = ln_scale {
        let shift = norm_b.reshape((1, 1, c))?.broadcast_as((b, 1, c))?; // (b, 1, c)
        let scale = scale.broadcast_as((b, 1, c))?; // (b, 1, c)
        if cuda::fused_applies(&y, &[&shift, &scale]) {
            return cuda::layer_norm_modulate(&y, &shift, &scale, 1e-5);
        }
    }
    norm_affine(&y, norm_w, norm_b)
}

/// `norm_w − 1` as (1, 1, c) in its dtype, the `ln_scale` of [`kv_conv_norm`]: the fused
/// LayerNorm + modulation kernel adds the 1 back in f32. Only on a CUDA device (the only path
/// that reads it), and only when that gives every weight back exactly (a small weight such as
/// 0.01 would lose its low bits in bf16's `−0.99`). Read once, at load.
pub fn ln_scale_of(norm_w: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if path(norm_w, &[]) != Path::Cuda {
        return Ok(None);
    }
    let w32 = norm_w.to_dtype(DType::F32)?;
    let scale = w32.affine(1.0, -1.0)?.to_dtype(norm_w.dtype())?;
    let back = (scale.to_dtype(DType::F32)? + 1.0)?;
    let err = (back - &w32)?.abs()?.max_all()?.to_scalar::<f32>()?;
    (err == 0.0)
        .then(|| scale.reshape((1, 1, norm_w.elem_count())))
        .transpose() // (1, 1, c)
}

/// LayerNorm (eps 1e-5) over the last dim with an affine `weight`, `bias` (c).
pub fn norm_affine(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    layer_norm_no_affine(x, 1e-5)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}
#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        pixart_core::testing::max_abs_diff(a, b).0
    }

    #[test]
    fn fused_norm_modulation_and_gated_add_match_the_composed_ops() {
        let dev = Device::Cpu;
        // Rows that do not divide the per-task block, a non-zero mean, and per-batch modulation
        // taken as a non-contiguous view (as the blocks do).
        let (b, n, c) = (2, 37, 29);
        let x = (Tensor::randn(0f32, 2.0, (b, n, c), &dev).unwrap() + 3.0).unwrap();
        let y = Tensor::randn(0f32, 1.0, (b, n, c), &dev).unwrap();
        let mods = Tensor::randn(0f32, 0.5, (b, 3, c), &dev).unwrap();
        let (shift, scale, gate) = (
            mods.narrow(1, 0, 1).unwrap(),
            mods.narrow(1, 1, 1).unwrap(),
            mods.narrow(1, 2, 1).unwrap(),
        );
        let want = modulate(&layer_norm_composed(&x, 1e-6).unwrap(), &shift, &scale).unwrap();
        let got = layer_norm_modulate(&x, &shift, &scale, 1e-6).unwrap();
        assert!(
            max_diff(&got, &want) < 1e-5,
            "f32 norm+modulate {}",
            max_diff(&got, &want)
        );
        let want_g = (&x + y.broadcast_mul(&gate).unwrap()).unwrap();
        let got_g = add_gated(&x, &y, &gate).unwrap();
        assert!(
            max_diff(&got_g, &want_g) < 1e-6,
            "f32 gated add {}",
            max_diff(&got_g, &want_g)
        );

        // bf16: one rounding of the f32 result (relative 2^-8 of values up to ~10).
        let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let got = layer_norm_modulate(&bf(&x), &bf(&shift), &bf(&scale), 1e-6).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let f = |t: &Tensor| bf(t).to_dtype(DType::F32).unwrap();
        let want = modulate(&layer_norm_composed(&f(&x), 1e-6).unwrap(), &f(&shift), &f(&scale)).unwrap();
        assert!(
            max_diff(&got, &want) < 0.05,
            "bf16 norm+modulate {}",
            max_diff(&got, &want)
        );
        let got_g = add_gated(&bf(&x), &bf(&y), &bf(&gate)).unwrap();
        let want_g = (f(&x) + f(&y).broadcast_mul(&f(&gate)).unwrap()).unwrap();
        assert!(
            max_diff(&got_g, &want_g) < 0.05,
            "bf16 gated add {}",
            max_diff(&got_g, &want_g)
        );
    }

    #[test]
    fn output_projection_with_residual_is_the_projection_then_the_residual() {
        let dev = Device::Cpu;
        let (b, n, k, out) = (2, 5, 12, 7);
        let vs = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vs, DType::F32, &dev);
        let layer = crate::linear(k, out, vb.pp("proj")).unwrap();
        let x = Tensor::randn(0f32, 1.0, (b, n, k), &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (b, n, out), &dev).unwrap();
        let mods = Tensor::randn(0f32, 0.5, (b, 3, out), &dev).unwrap();
        let gate = mods.narrow(1, 2, 1).unwrap(); // (b, 1, out), a strided view as in the block
        let y = (x.broadcast_matmul(&layer.weight().t().unwrap()).unwrap())
            .broadcast_add(layer.bias().unwrap())
            .unwrap();
        let plain = linear_residual(&layer, &x, &r, None).unwrap();
        let want = (&r + &y).unwrap();
        assert!(max_diff(&plain, &want) < 1e-5, "residual {}", max_diff(&plain, &want));
        let gated = linear_residual(&layer, &x, &r, Some(&gate)).unwrap();
        let want = (&r + y.broadcast_mul(&gate).unwrap()).unwrap();
        assert!(
            max_diff(&gated, &want) < 1e-5,
            "gated residual {}",
            max_diff(&gated, &want)
        );
    }

    use crate::cpu::attention::attention_cpu;
    use candle_core::D as Dim;

    #[test]
    fn prefix_key_lengths_give_each_row_alone() {
        let dev = Device::Cpu;
        let (b, h, n, m, d) = (3, 2, 70, 11, 8);
        let r = |shape: (usize, usize, usize, usize)| Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let (q, k, v) = (r((b, h, n, d)), r((b, h, m, d)), r((b, h, m, d)));
        let lens = [1, 11, 6];
        let got = attention_cpu(&q, &k, &v, None, Some(&lens), 0.3).unwrap();
        for (i, &len) in lens.iter().enumerate() {
            let row = |t: &Tensor, keys: usize| t.narrow(0, i, 1).unwrap().narrow(2, 0, keys).unwrap();
            let alone = attention_cpu(&row(&q, n), &row(&k, len), &row(&v, len), None, None, 0.3).unwrap();
            let d = pixart_core::testing::max_abs_diff(&got.narrow(0, i, 1).unwrap(), &alone).0;
            assert_eq!(d, 0.0, "row {i} (length {len})");
        }
        // The bf16 kernel takes the same lengths (native GEMM where the CPU has it).
        let bf = |t: &Tensor| t.to_dtype(candle_core::DType::BF16).unwrap();
        let f32_of = |t: &Tensor| bf(t).to_dtype(candle_core::DType::F32).unwrap();
        let got = attention_cpu(&bf(&q), &bf(&k), &bf(&v), None, Some(&lens), 0.3).unwrap();
        assert_eq!(got.dtype(), candle_core::DType::BF16);
        let d = pixart_core::testing::max_abs_diff(
            &got,
            &attention_cpu(&f32_of(&q), &f32_of(&k), &f32_of(&v), None, Some(&lens), 0.3).unwrap(),
        )
        .0;
        assert!(d < 3e-2, "bf16 vs f32 {d}");
        assert!(attention_cpu(&q, &k, &v, None, Some(&[1, 12, 3]), 0.3).is_err());
    }

    #[test]
    fn kernels_match_candle() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 3.0, (3, 5, 333), &dev).unwrap() - 1.0).unwrap();
        let a = softmax_last_dim(&x).unwrap();
        let b = candle_nn::ops::softmax(&x, Dim::Minus1).unwrap();
        let d = max_diff(&a, &b);
        assert!(d < 1e-6, "softmax {d}");
        let a = gelu(&x).unwrap();
        let b = x.gelu().unwrap();
        let d = max_diff(&a, &b);
        assert!(d < 2e-6, "gelu {d}");
        let xb = x.to_dtype(candle_core::DType::BF16).unwrap();
        let a = gelu(&xb).unwrap().to_dtype(candle_core::DType::F32).unwrap();
        let b = xb.to_dtype(candle_core::DType::F32).unwrap().gelu().unwrap();
        let d = max_diff(&a, &b);
        assert!(d < 5e-2, "gelu bf16 {d}");
    }
}
