//! The CPU kernels of [`crate::kernels`] and [`crate::ops`] with a backward, for training:
//! tanh-GELU, softmax over the last dim and LayerNorm without affine parameters, each a
//! `CustomOp1` whose backward is one fused pass (another kernel) instead of the dozen
//! element-wise candle ops the composed versions record; and the adaLN modulation and gated
//! residual, whose per-batch (b, 1, c) vectors broadcast over the tokens: composed, candle's
//! backward sums their gradients over the tokens with a single-threaded strided reduction (about
//! 30 cycles an element; 11 % of a training step of the built-in model with the bias sums of the
//! linear layers), here one parallel pass. f32 on the CPU; other dtypes and devices keep the
//! composed ops.
use crate::cpu::contiguous_data;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// `f(row, other row)` over the `dim`-long rows of `a` (and `b`) in parallel, the result left
/// in `row` ([`super::map_rows`]).
fn rows(a: &[f32], b: Option<&[f32]>, dim: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    super::map_rows(a, b, dim, |_, row, other| f(row, other))
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
        let out = rows(x, None, 4096, |x, _| {
            for x in x.iter_mut() {
                *x *= sigmoid(2.0 * K * (*x + C * *x * *x * *x));
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
        let out = rows(x, Some(g), 4096, |x, g| {
            for (o, &g) in x.iter_mut().zip(g) {
                let x = *o;
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
        let out = rows(x, None, last_dim(l), |o, _| {
            let max = o.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for o in o.iter_mut() {
                *o = (*o - max).exp();
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
        let out = rows(y, Some(g), last_dim(l1), |y, g| {
            let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
            for (o, &g) in y.iter_mut().zip(g) {
                *o *= g - dot;
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
        let out = rows(x, None, last_dim(l), |x, _| {
            let (mean, inv) = moments(x, eps);
            for v in x.iter_mut() {
                *v = (*v - mean) * inv;
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
        let out = rows(x, Some(g), last_dim(l1), |x, g| {
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
            for (v, &gv) in x.iter_mut().zip(g) {
                *v = (gv - gm - (*v - mean) * inv * gx) * inv;
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

// ---- per-batch modulation and gated residual: x (b, n, c) with (b, 1, c) vectors ----

/// (b, n, c) of x and a check that each vector is (b, 1, c).
fn batch_dims(x: &Layout, vecs: &[&Layout], what: &str) -> candle_core::Result<(usize, usize, usize)> {
    let (b, n, c) = x.shape().dims3()?;
    if vecs.iter().any(|v| v.dims() != [b, 1, c]) {
        candle_core::bail!("{what}: per-batch vectors must be ({b}, 1, {c})");
    }
    Ok((b, n, c))
}

/// out[b, i, :] = x[b, i, :] · a[b, :] (+ s[b, :]), in parallel over blocks of rows.
fn affine_rows(x: &[f32], a: &[f32], s: Option<&[f32]>, n: usize, c: usize) -> Vec<f32> {
    super::map_rows(x, None, c, |r, row, _| {
        let bi = r / n.max(1);
        let a = &a[bi * c..(bi + 1) * c];
        match s {
            Some(s) => {
                let s = &s[bi * c..(bi + 1) * c];
                for ((v, a), s) in row.iter_mut().zip(a).zip(s) {
                    *v = *v * a + s;
                }
            }
            None => {
                for (v, a) in row.iter_mut().zip(a) {
                    *v *= a;
                }
            }
        }
    })
}

/// (b, c): Σ over the n tokens of g (times y when given), one task per batch row.
fn token_sums(g: &[f32], y: Option<&[f32]>, n: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; g.len() / n.max(1)];
    out.par_chunks_mut(c).enumerate().for_each(|(bi, o)| {
        let span = bi * n * c..(bi + 1) * n * c;
        match y {
            Some(y) => {
                for (g, y) in g[span.clone()].chunks(c).zip(y[span].chunks(c)) {
                    for ((o, g), y) in o.iter_mut().zip(g).zip(y) {
                        *o += g * y;
                    }
                }
            }
            None => {
                for g in g[span].chunks(c) {
                    for (o, g) in o.iter_mut().zip(g) {
                        *o += g;
                    }
                }
            }
        }
    });
    out
}

/// `x · (1 + scale) + shift` (CustomOp3 over x, shift, scale).
struct Modulate;
/// `x + y · gate` (CustomOp3 over x, y, gate).
struct GatedAdd;
/// `g · v` per batch row (CustomOp2 over g (b, n, c), v (b, 1, c)); no backward.
struct ScaleRows;
/// (b, 1, c) sums over the tokens of g, or of g · y (CustomOp2 over g, y when `with_y`).
struct TokenSums {
    with_y: bool,
}

impl CustomOp3 for Modulate {
    fn name(&self) -> &'static str {
        "modulate-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, n, c) = batch_dims(xl, &[sl, cl], self.name())?;
        let x = contiguous_data::<f32>(xs, xl, self.name())?;
        let shift = contiguous_data::<f32>(ss, sl, self.name())?;
        let scale1: Vec<f32> = contiguous_data::<f32>(cs, cl, self.name())?
            .iter()
            .map(|s| 1.0 + s)
            .collect();
        Ok((
            CpuStorage::F32(affine_rows(x, &scale1, Some(shift), n, c)),
            xl.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _shift: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let scale1 = (scale.contiguous()? + 1.0)?;
        let gx = grad.apply_op2_no_bwd(&scale1, &ScaleRows)?;
        let gshift = grad.apply_op2_no_bwd(&grad, &TokenSums { with_y: false })?;
        let gscale = grad.apply_op2_no_bwd(&x.contiguous()?, &TokenSums { with_y: true })?;
        Ok((Some(gx), Some(gshift), Some(gscale)))
    }
}

impl CustomOp3 for GatedAdd {
    fn name(&self) -> &'static str {
        "gated-add-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, n, c) = batch_dims(xl, &[gl], self.name())?;
        if yl.dims() != xl.dims() {
            candle_core::bail!("{}: x {:?} and y {:?} differ", self.name(), xl.dims(), yl.dims());
        }
        let x = contiguous_data::<f32>(xs, xl, self.name())?;
        let y = contiguous_data::<f32>(ys, yl, self.name())?;
        let gate = contiguous_data::<f32>(gs, gl, self.name())?;
        let mut out = affine_rows(y, gate, None, n, c);
        out.par_iter_mut().zip(x.par_iter()).for_each(|(o, x)| *o += x);
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        y: &Tensor,
        gate: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gy = grad.apply_op2_no_bwd(&gate.contiguous()?, &ScaleRows)?;
        let ggate = grad.apply_op2_no_bwd(&y.contiguous()?, &TokenSums { with_y: true })?;
        Ok((Some(grad), Some(gy), Some(ggate)))
    }
}

impl CustomOp2 for ScaleRows {
    fn name(&self) -> &'static str {
        "scale-rows"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, n, c) = batch_dims(gl, &[vl], self.name())?;
        let g = contiguous_data::<f32>(gs, gl, self.name())?;
        let v = contiguous_data::<f32>(vs, vl, self.name())?;
        Ok((CpuStorage::F32(affine_rows(g, v, None, n, c)), gl.shape().clone()))
    }
}

impl CustomOp2 for TokenSums {
    fn name(&self) -> &'static str {
        "token-sums"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, n, c) = gl.shape().dims3()?;
        let g = contiguous_data::<f32>(gs, gl, self.name())?;
        let y = if self.with_y {
            if yl.dims() != gl.dims() {
                candle_core::bail!("{}: {:?} and {:?} differ", self.name(), gl.dims(), yl.dims());
            }
            Some(contiguous_data::<f32>(ys, yl, self.name())?)
        } else {
            None
        };
        Ok((CpuStorage::F32(token_sums(g, y, n, c)), Shape::from((b, 1, c))))
    }
}

/// `x · (1 + scale) + shift` with a fused backward (f32, CPU). x: (b, n, c); shift, scale:
/// (b, 1, c).
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3(&shift.contiguous()?, &scale.contiguous()?, Modulate)
}

/// `x + y · gate` with a fused backward (f32, CPU). x, y: (b, n, c); gate: (b, 1, c).
pub fn add_gated(x: &Tensor, y: &Tensor, gate: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3(&y.contiguous()?, &gate.contiguous()?, GatedAdd)
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

    /// The modulation and the gated residual: value and the gradients of all three inputs
    /// against the composed broadcast ops (whose backward candle sums over the tokens itself).
    #[test]
    fn per_batch_ops_match_the_composed_broadcasts() {
        let dev = Device::Cpu;
        let var = |shape: (usize, usize, usize), std: f32| {
            Var::from_tensor(&Tensor::randn(0f32, std, shape, &dev).unwrap()).unwrap()
        };
        let (b, n, c) = (3, 7, 37);
        let (x, y) = (var((b, n, c), 2.0), var((b, n, c), 1.0));
        let (v1, v2) = (var((b, 1, c), 0.5), var((b, 1, c), 0.5));
        let w = Tensor::randn(0f32, 1.0, (b, n, c), &dev).unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| pixart_core::testing::max_abs_diff(a, b).0;
        type F = fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;
        let cases: [(&str, F, F, &Var); 2] = [
            ("modulate", super::modulate, crate::ops::modulate, &x),
            (
                "add_gated",
                |a, b, g| super::add_gated(a, b, g),
                |a, b, g| a + b.broadcast_mul(g)?,
                &y,
            ),
        ];
        for (name, fused, composed, second) in cases {
            // modulate(x, shift = v1, scale = v2); add_gated(x, y, gate = v1) (v2 unused).
            let args = |f: F| match name {
                "modulate" => f(x.as_tensor(), v1.as_tensor(), v2.as_tensor()),
                _ => f(x.as_tensor(), second.as_tensor(), v1.as_tensor()),
            };
            let (a, r) = (args(fused).unwrap(), args(composed).unwrap());
            assert!(max_diff(&a, &r) < 1e-5, "{name} forward {}", max_diff(&a, &r));
            let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (r * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let vars: &[&Var] = if name == "modulate" {
                &[&x, &v1, &v2]
            } else {
                &[&x, &y, &v1]
            };
            for (i, v) in vars.iter().enumerate() {
                let (p, q) = (ga.get(v.as_tensor()).unwrap(), gr.get(v.as_tensor()).unwrap());
                assert_eq!(p.dims(), q.dims(), "{name} gradient {i}");
                assert!(
                    max_diff(p, q) < 1e-4,
                    "{name} gradient {i} differs by {}",
                    max_diff(p, q)
                );
            }
        }
    }
}
