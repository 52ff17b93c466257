//! The CPU kernels of [`crate::kernels`] and [`crate::ops`] with a backward, for training:
//! tanh-GELU, softmax over the last dim and LayerNorm without affine parameters, each a
//! `CustomOp1` whose backward is one fused pass (another kernel) instead of the dozen
//! element-wise candle ops the composed versions record. f32 on the CPU; other dtypes and
//! devices keep the composed ops.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use pixart_gemm::contiguous_data;
use rayon::prelude::*;

/// Rows per parallel task: about 16 K elements.
fn rows_per_task(dim: usize) -> usize {
    (16_384 / dim.max(1)).max(1)
}

/// Applies `f(out_row, a_row, b_row)` over `dim`-long rows in parallel.
fn zip_rows(a: &[f32], b: &[f32], dim: usize, f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    let n = rows_per_task(dim) * dim;
    out.par_chunks_mut(n)
        .zip(a.par_chunks(n).zip(b.par_chunks(n)))
        .for_each(|(o, (a, b))| {
            for ((o, a), b) in o.chunks_mut(dim).zip(a.chunks(dim)).zip(b.chunks(dim)) {
                f(o, a, b);
            }
        });
    out
}

fn map_rows(a: &[f32], dim: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    let n = rows_per_task(dim) * dim;
    out.par_chunks_mut(n).zip(a.par_chunks(n)).for_each(|(o, a)| {
        for (o, a) in o.chunks_mut(dim).zip(a.chunks(dim)) {
            f(o, a);
        }
    });
    out
}

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

// ---- GELU (tanh approximation) ----

const K: f32 = 0.797_884_6; // √(2/π)
const C: f32 = 0.044_715;

#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

struct Gelu;
struct GeluGrad;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_data::<f32>(s, l, self.name())?;
        // 0.5·x·(1 + tanh(u)) = x·σ(2u), u = K·(x + C·x³)
        let out = map_rows(x, 4096, |o, x| {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = x * sigmoid(2.0 * K * (x + C * x * x * x));
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            arg.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?,
        ))
    }
}

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_data::<f32>(s1, l1, self.name())?;
        let g = contiguous_data::<f32>(s2, l2, self.name())?;
        // d/dx x·σ(2u) = σ + x·σ(1−σ)·2u',  u' = K·(1 + 3C·x²)
        let out = zip_rows(x, g, 4096, |o, x, g| {
            for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                let s = sigmoid(2.0 * K * (x + C * x * x * x));
                let du = K * (1.0 + 3.0 * C * x * x);
                *o = g * (s + x * s * (1.0 - s) * 2.0 * du);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---- softmax over the last dim ----

struct Softmax;
struct SoftmaxGrad;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_data::<f32>(s, l, self.name())?;
        let out = map_rows(x, last_dim(l), |o, x| {
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|v| *v *= inv);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            res.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = contiguous_data::<f32>(s1, l1, self.name())?;
        let g = contiguous_data::<f32>(s2, l2, self.name())?;
        // dx = y ⊙ (g − Σ g·y)
        let out = zip_rows(y, g, last_dim(l1), |o, y, g| {
            let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
            for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                *o = y * (g - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---- LayerNorm without affine ----

struct LayerNorm {
    eps: f32,
}
struct LayerNormGrad {
    eps: f32,
}

/// Mean and 1/σ of a row, two passes, as the forward kernel.
#[inline(always)]
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_data::<f32>(s, l, self.name())?;
        let eps = self.eps;
        let out = map_rows(x, last_dim(l), |o, x| {
            let (mean, inv) = moments(x, eps);
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v - mean) * inv;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(
            &grad.contiguous()?,
            &LayerNormGrad { eps: self.eps },
        )?))
    }
}

impl CustomOp2 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_data::<f32>(s1, l1, self.name())?;
        let g = contiguous_data::<f32>(s2, l2, self.name())?;
        let eps = self.eps;
        // x̂ = (x − μ)/σ;  dx = (g − mean(g) − x̂·mean(g·x̂)) / σ
        let out = zip_rows(x, g, last_dim(l1), |o, x, g| {
            let n = x.len() as f32;
            let (mean, inv) = moments(x, eps);
            let mut gm = 0f32;
            let mut gx = 0f32;
            for (&v, &gv) in x.iter().zip(g) {
                gm += gv;
                gx += gv * (v - mean) * inv;
            }
            gm /= n;
            gx /= n;
            for ((o, &v), &gv) in o.iter_mut().zip(x).zip(g) {
                *o = (gv - gm - (v - mean) * inv * gx) * inv;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Whether the fused ops with a backward apply: an f32 CPU tensor.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// tanh-GELU with a fused backward (f32, CPU).
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

/// Softmax over the last dim with a fused backward (f32, CPU).
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

/// LayerNorm without affine parameters with a fused backward (f32, CPU).
pub fn layer_norm_no_affine(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(LayerNorm { eps: eps as f32 })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var, D};

    /// Each fused op's value and gradient against the composed candle ops.
    #[test]
    fn fused_backward_matches_composed_ops() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (3, 5, 67), &dev).unwrap())).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 5, 67), &dev).unwrap();
        type F = fn(&Tensor) -> candle_core::Result<Tensor>;
        let cases: [(&str, F, F); 3] = [
            ("gelu", super::gelu, |x| x.gelu()),
            ("softmax", super::softmax_last_dim, |x| {
                candle_nn::ops::softmax(x, D::Minus1)
            }),
            (
                "layer_norm",
                |x| super::layer_norm_no_affine(x, 1e-6),
                |x| crate::ops::layer_norm_composed(x, 1e-6),
            ),
        ];
        for (name, fused, composed) in cases {
            let a = fused(x.as_tensor()).unwrap();
            let b = composed(x.as_tensor()).unwrap();
            let d = (&a - &b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "{name} forward differs by {d}");
            let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let (ga, gb) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
            let d = (ga - gb)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-4, "{name} gradient differs by {d}");
        }
    }
}
