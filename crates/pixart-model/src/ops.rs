//! Small tensor ops the model needs that candle lacks or computes less carefully.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, D};
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
    pub trait FromF32: Sized {
        fn from_f32(v: f32) -> Self;
        /// `dst[i] = from_f32(src[i])` over the shorter of the two.
        fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = Self::from_f32(*s);
            }
        }
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
        fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
            pixart_gemm::bf16::round_to_bf16(src, dst)
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

/// Per-batch rows of a (b, n, c) tensor's modulation, as f32: `(b, 1, c)` -> b·c values.
fn per_batch(t: &Tensor, b: usize, c: usize) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?
        .broadcast_as((b, 1, c))?
        .flatten_all()? // (b, 1, c) -> (b·c)
        .to_vec1::<f32>()
}

/// A Linear layer's `x·Wᵀ + b`, followed by GELU (tanh) when `gelu`. On a GPU, in bf16/f16
/// without gradients, one cuBLASLt call with the bias and GELU in its epilogue
/// ([`crate::cuda::linear`]); elsewhere the layer's own forward and [`crate::kernels::gelu`].
pub fn linear_forward(layer: &pixart_gemm::Linear, x: &Tensor, gelu: bool) -> candle_core::Result<Tensor> {
    if crate::cuda::linear_applies(x, layer.weight(), layer.bias()) {
        match crate::cuda::linear(x, layer.weight(), layer.bias(), gelu) {
            Ok(y) => return Ok(y),
            // E.g. no cuBLASLt algorithm for a shape: candle's path below gives the same result.
            Err(e) => crate::cuda::warn_once("cuBLASLt linear", &e),
        }
    }
    let y = candle_core::Module::forward(layer, x)?;
    if gelu {
        crate::kernels::gelu(&y)
    } else {
        Ok(y)
    }
}

/// `residual + gate ⊙ (x·Wᵀ + b)` (`residual + x·Wᵀ + b` without a gate): an output projection of
/// the block together with its residual. On a GPU (bf16/f16) one cuBLASLt call, the residual and
/// the gate in the GEMM's epilogue ([`crate::cuda::linear_residual`]); elsewhere the projection
/// ([`linear_forward`]) and then [`add_gated`] or an add, as diffusers' block does them.
/// x: (b, n, k); residual: (b, n, out); gate: (b, 1, out).
pub fn linear_residual(
    layer: &pixart_gemm::Linear,
    x: &Tensor,
    residual: &Tensor,
    gate: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    if crate::cuda::residual_applies(x, layer.weight(), layer.bias(), residual, gate) {
        match crate::cuda::linear_residual(x, layer.weight(), layer.bias(), residual, gate) {
            Ok(y) => return Ok(y),
            Err(e) => crate::cuda::warn_once("cuBLASLt linear with residual", &e),
        }
    }
    let y = linear_forward(layer, x, false)?;
    match gate {
        Some(gate) => add_gated(residual, &y, gate),
        None => residual + y,
    }
}

/// `modulate(layer_norm_no_affine(x, eps), shift, scale)` as one parallel pass on the CPU:
/// statistics in f32 (two passes over the row, as [`layer_norm_no_affine`]), one rounding to
/// the output dtype (PyTorch rounds after the norm and after each of the two ops). On a GPU the
/// same in one CUDA kernel ([`crate::cuda::layer_norm_modulate`]); composed from tensor ops
/// elsewhere and when any input needs gradients (`track_op`).
/// x: (b, n, c); shift, scale: (b, 1, c).
pub fn layer_norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if crate::cuda::fused_applies(x, &[shift, scale]) {
        return crate::cuda::layer_norm_modulate(x, shift, scale, eps);
    }
    let needs_grad = x.track_op() || shift.track_op() || scale.track_op();
    if needs_grad && crate::grad_ops::applies(x) && x.rank() == 3 {
        return crate::grad_ops::modulate(&layer_norm_no_affine(x, eps)?, shift, scale);
    }
    if needs_grad || !x.device().is_cpu() || x.rank() != 3 {
        return modulate(&layer_norm_no_affine(x, eps)?, shift, scale);
    }
    let (b, n, c) = x.dims3()?;
    let op = LnModulate {
        shift: per_batch(shift, b, c)?,
        scale1: per_batch(scale, b, c)?.iter().map(|s| 1.0 + s).collect(),
        rows_per_batch: n.max(1),
        eps: eps as f32,
    };
    x.contiguous()?.apply_op1_no_bwd(&op)
}

/// `x + y * gate` as one parallel pass on the CPU (f32 arithmetic, one rounding), one CUDA
/// kernel on a GPU; composed elsewhere and when any input needs gradients. x, y: (b, n, c); gate: (b, 1, c).
pub fn add_gated(x: &Tensor, y: &Tensor, gate: &Tensor) -> candle_core::Result<Tensor> {
    if crate::cuda::fused_applies(x, &[gate]) && !y.track_op() && y.dims() == x.dims() && y.dtype() == x.dtype() {
        return crate::cuda::add_gated(x, y, gate);
    }
    let needs_grad = x.track_op() || y.track_op() || gate.track_op();
    if needs_grad && crate::grad_ops::applies(x) && x.rank() == 3 && x.dims() == y.dims() && y.dtype() == x.dtype() {
        return crate::grad_ops::add_gated(x, y, gate);
    }
    if needs_grad || !x.device().is_cpu() || x.rank() != 3 || x.dims() != y.dims() || x.dtype() != y.dtype() {
        return x + y.broadcast_mul(gate)?;
    }
    let (b, n, c) = x.dims3()?;
    let op = AddGated {
        gate: per_batch(gate, b, c)?,
        rows_per_batch: n.max(1),
    };
    x.contiguous()?.apply_op2_no_bwd(&y.contiguous()?, &op)
}

struct LnModulate {
    shift: Vec<f32>,
    scale1: Vec<f32>,
    rows_per_batch: usize,
    eps: f32,
}

struct AddGated {
    gate: Vec<f32>,
    rows_per_batch: usize,
}

/// Sum of a slice with eight independent lanes (so that it vectorises).
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for ch in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(ch) {
            *l += f(*v);
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|v| f(*v)).sum::<f32>()
}

#[inline(always)]
fn ln_modulate_row(row: &mut [f32], shift: &[f32], scale1: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = lane_sum(row, |v| v) / n;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, sc), sh) in row.iter_mut().zip(scale1).zip(shift) {
        *v = (*v - mean) * inv * sc + sh;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn ln_modulate_row_avx2(row: &mut [f32], shift: &[f32], scale1: &[f32], eps: f32) {
    ln_modulate_row(row, shift, scale1, eps)
}

#[inline(always)]
fn add_gated_row(x: &mut [f32], y: &[f32], gate: &[f32]) {
    for ((a, b), g) in x.iter_mut().zip(y).zip(gate) {
        *a += b * g;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn add_gated_row_avx2(x: &mut [f32], y: &[f32], gate: &[f32]) {
    add_gated_row(x, y, gate)
}

/// Runs `f(row index, x row, y row)` on f32 copies of the `c`-long rows of `x` (and `y`), in
/// parallel, and writes the x rows back in `T`.
fn rows_f32<T>(x: &[T], y: Option<&[T]>, c: usize, f: impl Fn(usize, &mut [f32], &[f32]) + Sync) -> Vec<T>
where
    T: Copy + Send + Sync + Default + num_like::ToF32 + num_like::FromF32,
{
    let mut dst = vec![T::default(); x.len()];
    let c = c.max(1);
    let per_task = (16_384 / c).max(1);
    dst.par_chunks_mut(per_task * c).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(bx, by): &mut (Vec<f32>, Vec<f32>), (t, d)| {
            let start = t * per_task * c;
            for (r, drow) in d.chunks_mut(c).enumerate() {
                let at = start + r * c;
                bx.clear();
                bx.extend(x[at..at + drow.len()].iter().map(|v| v.to_f32()));
                by.clear();
                if let Some(y) = y {
                    by.extend(y[at..at + drow.len()].iter().map(|v| v.to_f32()));
                }
                f(t * per_task + r, bx, by);
                T::from_f32_slice(bx, drow);
            }
        },
    );
    dst
}

impl LnModulate {
    fn run<T>(&self, x: &[T], c: usize) -> Vec<T>
    where
        T: Copy + Send + Sync + Default + num_like::ToF32 + num_like::FromF32,
    {
        let avx2 = crate::kernels::has_avx2();
        rows_f32(x, None, c, |row, v, _| {
            let bi = row / self.rows_per_batch;
            let (sh, sc) = (&self.shift[bi * c..(bi + 1) * c], &self.scale1[bi * c..(bi + 1) * c]);
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: only called when the CPU reports AVX2 and FMA.
                unsafe { ln_modulate_row_avx2(v, sh, sc, self.eps) };
                return;
            }
            let _ = avx2;
            ln_modulate_row(v, sh, sc, self.eps)
        })
    }
}

impl CustomOp1 for LnModulate {
    fn name(&self) -> &'static str {
        "layer-norm-modulate"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("layer_norm_modulate: input not contiguous".into()))?;
        let c = layout.dims().last().copied().unwrap_or(1).max(1);
        if self.shift.len() * self.rows_per_batch < (end - start) {
            candle_core::bail!("layer_norm_modulate: modulation does not cover the input");
        }
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(self.run(&v[start..end], c)),
            CpuStorage::BF16(v) => CpuStorage::BF16(self.run(&v[start..end], c)),
            CpuStorage::F16(v) => CpuStorage::F16(self.run(&v[start..end], c)),
            other => {
                use candle_core::backend::BackendStorage;
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    other.dtype(),
                    "layer_norm_modulate",
                ));
            }
        };
        Ok((out, layout.shape().clone()))
    }
}

impl AddGated {
    fn run<T>(&self, x: &[T], y: &[T], c: usize) -> Vec<T>
    where
        T: Copy + Send + Sync + Default + num_like::ToF32 + num_like::FromF32,
    {
        let avx2 = crate::kernels::has_avx2();
        rows_f32(x, Some(y), c, |row, a, b| {
            let bi = row / self.rows_per_batch;
            let g = &self.gate[bi * c..(bi + 1) * c];
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: only called when the CPU reports AVX2 and FMA.
                unsafe { add_gated_row_avx2(a, b, g) };
                return;
            }
            let _ = avx2;
            add_gated_row(a, b, g)
        })
    }
}

impl CustomOp2 for AddGated {
    fn name(&self) -> &'static str {
        "add-gated"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let off = |l: &Layout| {
            l.contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("add_gated: input not contiguous".into()))
        };
        let ((xa, xb), (ya, yb)) = (off(xl)?, off(yl)?);
        let c = xl.dims().last().copied().unwrap_or(1).max(1);
        if xb - xa != yb - ya || self.gate.len() * self.rows_per_batch < (xb - xa) {
            candle_core::bail!("add_gated: shapes do not match");
        }
        let out = match (xs, ys) {
            (CpuStorage::F32(x), CpuStorage::F32(y)) => CpuStorage::F32(self.run(&x[xa..xb], &y[ya..yb], c)),
            (CpuStorage::BF16(x), CpuStorage::BF16(y)) => CpuStorage::BF16(self.run(&x[xa..xb], &y[ya..yb], c)),
            (CpuStorage::F16(x), CpuStorage::F16(y)) => CpuStorage::F16(self.run(&x[xa..xb], &y[ya..yb], c)),
            (other, _) => {
                use candle_core::backend::BackendStorage;
                return Err(candle_core::Error::UnsupportedDTypeForOp(other.dtype(), "add_gated"));
            }
        };
        Ok((out, xl.shape().clone()))
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
/// query dim of 1, e.g. (b, 1, 1, m). `key_lens` (b), when the bias is a prefix padding mask:
/// row i's valid keys are its first `key_lens[i]`; the CPU kernels then skip the others
/// exactly instead of adding the bias (the other paths use the bias). Returns (b, h, n, d).
pub fn chunked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    key_lens: Option<&[usize]>,
    scale: f64,
    max_scores: usize,
) -> candle_core::Result<Tensor> {
    let (b, h, n, _d) = q.dims4()?;
    let m = k.dim(2)?;
    let needs_grad = q.track_op() || k.track_op() || v.track_op();
    if q.device().is_cpu() && !needs_grad {
        if q.dtype() == candle_core::DType::BF16 && pixart_gemm::bf16::native_available() {
            return crate::kernels::attention_cpu_bf16(q, k, v, bias, key_lens, scale);
        }
        return crate::kernels::attention_cpu(q, k, v, bias, key_lens, scale)?.to_dtype(q.dtype());
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
        let layer = pixart_gemm::linear(k, out, vb.pp("proj")).unwrap();
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
}
