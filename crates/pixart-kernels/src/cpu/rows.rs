//! Row kernels on the CPU, as custom ops without a backward: softmax over the last dim,
//! tanh-GELU, LayerNorm without affine parameters, LayerNorm + adaLN modulation, and the gated
//! residual. Each is one parallel pass over rows ([`super::map_rows`]) in f32, rounded once to
//! the output dtype, written so that the compiler vectorises it (AVX2+FMA where the CPU has it,
//! chosen at run time). candle runs the element-wise ones on one core with scalar libm calls.
//!
//! The entries assume a CPU tensor that tracks no gradient; [`crate::ops`] decides that.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use super::vector::{gelu_tanh_in_place, has_avx2, softmax_in_place};
use super::{map_rows, Element};

/// A kernel over the contiguous elements of one tensor whose last dim is `c`.
trait RowKernel {
    fn name(&self) -> &'static str;
    fn run<T: Element>(&self, x: &[T], c: usize) -> candle_core::Result<Vec<T>>;
}

/// `RowKernel` as a candle `CustomOp1` on f32, bf16 and f16 storage.
struct Unary<K>(K);

impl<K: RowKernel + Send + Sync> CustomOp1 for Unary<K> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: input not contiguous", self.0.name())))?;
        let c = layout.dims().last().copied().unwrap_or(1).max(1);
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(self.0.run(&v[start..end], c)?),
            CpuStorage::BF16(v) => CpuStorage::BF16(self.0.run(&v[start..end], c)?),
            CpuStorage::F16(v) => CpuStorage::F16(self.0.run(&v[start..end], c)?),
            other => {
                use candle_core::backend::BackendStorage;
                return Err(candle_core::Error::UnsupportedDTypeForOp(other.dtype(), self.0.name()));
            }
        };
        Ok((out, layout.shape().clone()))
    }
}

/// `f` over rows: the whole last dim (softmax) or fixed blocks of a flat tensor (element-wise ops).
struct RowFn {
    name: &'static str,
    whole_last_dim: bool,
    f: fn(&mut [f32]),
}

impl RowKernel for RowFn {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run<T: Element>(&self, x: &[T], c: usize) -> candle_core::Result<Vec<T>> {
        let dim = if self.whole_last_dim { c } else { 4096 };
        let f = self.f;
        Ok(map_rows(x, None, dim, |_, row, _| f(row)))
    }
}

/// Softmax over the last dim.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Unary(RowFn {
        name: "pixart-softmax",
        whole_last_dim: true,
        f: softmax_in_place,
    }))
}

/// GELU with the tanh approximation.
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Unary(RowFn {
        name: "pixart-gelu",
        whole_last_dim: false,
        f: gelu_tanh_in_place,
    }))
}

/// `(x - mean) / sqrt(var + eps)` over the last dim, mean and variance in two passes in f32
/// (candle-nn's fused op uses `E[x²] - mean²`, which loses precision when activations have a
/// large mean).
pub fn layer_norm_no_affine(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op1_no_bwd(&Unary(LayerNormNoAffine { eps: eps as f32 }))
}

struct LayerNormNoAffine {
    eps: f32,
}

impl RowKernel for LayerNormNoAffine {
    fn name(&self) -> &'static str {
        "layer-norm-no-affine"
    }

    fn run<T: Element>(&self, x: &[T], c: usize) -> candle_core::Result<Vec<T>> {
        Ok(map_rows(x, None, c, |_, row, _| {
            let n = row.len() as f32;
            let mean = row.iter().sum::<f32>() / n;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            let inv = 1.0 / (var + self.eps).sqrt();
            for v in row.iter_mut() {
                *v = (*v - mean) * inv;
            }
        }))
    }
}

/// Per-batch rows of a (b, n, c) tensor's modulation, as f32: `(b, 1, c)` -> b·c values.
fn per_batch(t: &Tensor, b: usize, c: usize) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?
        .broadcast_as((b, 1, c))?
        .flatten_all()? // (b, 1, c) -> (b·c)
        .to_vec1::<f32>()
}

/// `modulate(layer_norm_no_affine(x, eps), shift, scale)` as one parallel pass: statistics in
/// f32 (two passes over the row), one rounding to the output dtype (PyTorch rounds after the
/// norm and after each of the two ops). x: (b, n, c); shift, scale: (b, 1, c).
pub fn layer_norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    let op = LnModulate {
        shift: per_batch(shift, b, c)?,
        scale1: per_batch(scale, b, c)?.iter().map(|s| 1.0 + s).collect(),
        rows_per_batch: n.max(1),
        eps: eps as f32,
    };
    x.contiguous()?.apply_op1_no_bwd(&Unary(op))
}

/// `x + y * gate` as one parallel pass (f32 arithmetic, one rounding).
/// x, y: (b, n, c) of one dtype; gate: (b, 1, c).
pub fn add_gated(x: &Tensor, y: &Tensor, gate: &Tensor) -> candle_core::Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    if y.dims() != x.dims() || y.dtype() != x.dtype() {
        candle_core::bail!(
            "add_gated: y {:?} {:?} does not match x {:?} {:?}",
            y.dims(),
            y.dtype(),
            x.dims(),
            x.dtype()
        );
    }
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

impl RowKernel for LnModulate {
    fn name(&self) -> &'static str {
        "layer-norm-modulate"
    }

    fn run<T: Element>(&self, x: &[T], c: usize) -> candle_core::Result<Vec<T>> {
        if self.shift.len() * self.rows_per_batch < x.len() {
            candle_core::bail!("layer_norm_modulate: modulation does not cover the input");
        }
        let avx2 = has_avx2();
        Ok(map_rows(x, None, c, |row, v, _| {
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
        }))
    }
}

impl AddGated {
    fn run<T: Element>(&self, x: &[T], y: &[T], c: usize) -> Vec<T> {
        let avx2 = has_avx2();
        map_rows(x, Some(y), c, |row, a, b| {
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
