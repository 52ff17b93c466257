//! Fused bf16 CPU kernels for the T5 encoder's element-wise work, each one parallel pass where
//! candle makes several single-threaded ones (and computes GELU in bf16 arithmetic):
//!
//! - [`rms_norm_bf16`]: `T5LayerNorm` = `w · bf16(x · rsqrt(mean(x²) + eps))`, statistics in
//!   f32, rounded where transformers rounds (to the weight's dtype before the weight multiply).
//! - [`gelu_mul_bf16`]: the gated FFN's `bf16(gelu_tanh(a)) · b` (`T5DenseGatedActDense`:
//!   `act(wi_0(x)) * wi_1(x)`), GELU in f32 as PyTorch computes it for bf16 tensors.
//!
//! Forward only, bf16 only: [`crate::ops::t5`] keeps candle's ops for other dtypes and for
//! tensors that track gradients.
use crate::cpu::bf16::round_to_bf16;
use crate::cpu::vector::gelu_tanh_in_place;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

fn bf16_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str, what: &str) -> candle_core::Result<&'a [bf16]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::BF16(v), Some((a, b))) => Ok(&v[a..b]),
        _ => Err(candle_core::Error::Msg(format!("{op}: {what} must be contiguous bf16"))),
    }
}

#[inline(always)]
fn widen(dst: &mut [f32], src: &[bf16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "t5-rms-norm-bf16"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = bf16_slice(xs, xl, self.name(), "x")?;
        let w = bf16_slice(ws, wl, self.name(), "weight")?;
        let dim = w.len();
        if xl.dims().last() != Some(&dim) {
            candle_core::bail!("{}: x {:?} does not end in the weight's {dim}", self.name(), xl.dims());
        }
        let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        let mut out = vec![bf16::ZERO; x.len()];
        let eps = self.eps;
        out.par_chunks_mut(dim).zip(x.par_chunks(dim)).for_each_init(
            || (vec![0f32; dim], vec![bf16::ZERO; dim]),
            |(buf, tmp), (o, row)| {
                widen(buf, row);
                // Eight lanes so that the sum of squares vectorises.
                let mut lanes = [0f32; 8];
                let mut chunks = buf.chunks_exact(8);
                for c in &mut chunks {
                    for (s, v) in lanes.iter_mut().zip(c) {
                        *s += v * v;
                    }
                }
                let sq = lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|v| v * v).sum::<f32>();
                let inv = 1.0 / (sq / dim as f32 + eps).sqrt();
                for v in buf.iter_mut() {
                    *v *= inv;
                }
                round_to_bf16(buf, tmp); // hidden_states.to(weight.dtype)
                for ((v, t), wv) in buf.iter_mut().zip(tmp.iter()).zip(&wf) {
                    *v = t.to_f32() * wv;
                }
                round_to_bf16(buf, o);
            },
        );
        Ok((CpuStorage::BF16(out), xl.shape().clone()))
    }
}

/// `T5LayerNorm` of bf16 `x` (…, d) with bf16 `weight` (d): see the module docs.
pub fn rms_norm_bf16(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&weight.contiguous()?, &RmsNorm { eps: eps as f32 })
}

struct GeluMul;

/// Elements per parallel task of the element-wise kernel.
const CHUNK: usize = 8192;

impl CustomOp2 for GeluMul {
    fn name(&self) -> &'static str {
        "t5-gelu-mul-bf16"
    }

    fn cpu_fwd(
        &self,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let a = bf16_slice(as_, al, self.name(), "gate")?;
        let b = bf16_slice(bs, bl, self.name(), "linear branch")?;
        if al.dims() != bl.dims() {
            candle_core::bail!("{}: shapes {:?} and {:?} differ", self.name(), al.dims(), bl.dims());
        }
        let mut out = vec![bf16::ZERO; a.len()];
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each_init(
                || (vec![0f32; CHUNK], vec![bf16::ZERO; CHUNK]),
                |(buf, tmp), (o, (ac, bc))| {
                    let n = o.len();
                    let (buf, tmp) = (&mut buf[..n], &mut tmp[..n]);
                    widen(buf, ac);
                    gelu_tanh_in_place(buf);
                    round_to_bf16(buf, tmp); // the activation's bf16 output
                    for ((v, t), bv) in buf.iter_mut().zip(tmp.iter()).zip(bc) {
                        *v = t.to_f32() * bv.to_f32();
                    }
                    round_to_bf16(buf, o);
                },
            );
        Ok((CpuStorage::BF16(out), al.shape().clone()))
    }
}

/// `bf16(gelu_tanh(a)) · b` for bf16 `a`, `b` of one shape, rounded to bf16.
pub fn gelu_mul_bf16(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, &GeluMul)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::{DType, Device, D};

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        pixart_core::testing::max_abs_diff(a, b).0
    }

    #[test]
    fn rms_norm_matches_the_composed_ops() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 3.0, (2, 7, 100), &dev).unwrap() + 0.5)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let w = Tensor::randn(1f32, 0.3, 100, &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let got = rms_norm_bf16(&x, &w, 1e-6).unwrap();
        assert_eq!(got.dims(), x.dims());
        // transformers' T5LayerNorm: f32 statistics, round to bf16, then the bf16 weight multiply.
        let xf = x.to_dtype(DType::F32).unwrap();
        let var = xf.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let normed = xf.broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap()).unwrap();
        let want = normed
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .broadcast_mul(&w.to_dtype(DType::F32).unwrap())
            .unwrap();
        // Up to one bf16 step of the larger outputs (the f32 sums differ in order).
        let d = max_abs(&got, &want);
        assert!(d < 0.02, "max diff {d}");
        let wrong = Tensor::ones(99, DType::BF16, &dev).unwrap();
        assert!(rms_norm_bf16(&x, &wrong, 1e-6).is_err());
    }

    #[test]
    fn gelu_mul_matches_f32_gelu() {
        let dev = Device::Cpu;
        // 3 × 5000 elements: two parallel chunks, the second partial.
        let a = Tensor::randn(0f32, 2.0, (3, 5000), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let b = Tensor::randn(0f32, 1.0, (3, 5000), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let got = gelu_mul_bf16(&a, &b).unwrap();
        let want = a
            .to_dtype(DType::F32)
            .unwrap()
            .gelu()
            .unwrap()
            .mul(&b.to_dtype(DType::F32).unwrap())
            .unwrap();
        // Two bf16 roundings (the activation, the product): within 2 × 2⁻⁸ relative.
        let got = got
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 0.008 * w.abs() + 1e-3, "{g} vs {w}");
        }
        assert!(gelu_mul_bf16(&a, &b.narrow(1, 0, 10).unwrap()).is_err());
    }
}
