//! CPU kernels for the element-wise work candle runs on one core with scalar libm calls:
//! softmax over the last dim and tanh-GELU, parallel over rows with rayon and written so that
//! the compiler vectorises them (AVX2+FMA when the CPU has it, chosen at run time).
//!
//! Forward only: training uses the composed candle ops, which have a backward.
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::num_like::{FromF32, ToF32};

pub(crate) use pixart_gemm::vector::has_avx2;
use pixart_gemm::vector::{gelu_tanh_in_place, softmax_in_place};

/// Applies `f` to f32 copies of `dim`-long rows of `src` in parallel and converts back.
fn map_rows<T>(src: &[T], dim: usize, f: impl Fn(&mut [f32]) + Sync) -> Vec<T>
where
    T: Copy + Send + Sync + Default + ToF32 + FromF32,
{
    let mut dst = vec![T::default(); src.len()];
    // Work in blocks of whole rows of about 16 K elements so rayon has pieces to share.
    let rows_per_block = (16_384 / dim.max(1)).max(1);
    dst.par_chunks_mut(rows_per_block * dim)
        .zip(src.par_chunks(rows_per_block * dim))
        .for_each_init(Vec::new, |buf: &mut Vec<f32>, (d, s)| {
            buf.clear();
            buf.extend(s.iter().map(|v| v.to_f32()));
            for row in buf.chunks_mut(dim) {
                f(row);
            }
            T::from_f32_slice(buf, d);
        });
    dst
}

fn map_f32_rows(src: &[f32], dim: usize, f: impl Fn(&mut [f32]) + Sync) -> Vec<f32> {
    let mut dst = src.to_vec();
    let rows_per_block = (16_384 / dim.max(1)).max(1);
    dst.par_chunks_mut(rows_per_block * dim).for_each(|block| {
        for row in block.chunks_mut(dim) {
            f(row);
        }
    });
    dst
}

struct RowOp {
    name: &'static str,
    /// Rows are the last dim (softmax) or fixed blocks (element-wise ops).
    whole_last_dim: bool,
    f: fn(&mut [f32]),
}

impl CustomOp1 for RowOp {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: input not contiguous", self.name)))?;
        let dim = if self.whole_last_dim {
            layout.dims().last().copied().unwrap_or(1).max(1)
        } else {
            4096
        };
        let g = self.f;
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(map_f32_rows(&v[start..end], dim, g)),
            CpuStorage::BF16(v) => CpuStorage::BF16(map_rows(&v[start..end], dim, g)),
            CpuStorage::F16(v) => CpuStorage::F16(map_rows(&v[start..end], dim, g)),
            other => {
                use candle_core::backend::BackendStorage;
                return Err(candle_core::Error::UnsupportedDTypeForOp(other.dtype(), self.name));
            }
        };
        Ok((out, layout.shape().clone()))
    }
}

/// Softmax over the last dim; the parallel kernel on the CPU, candle's op elsewhere. A tensor
/// that needs gradients (`track_op`) takes candle's composed softmax, which has a backward.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.track_op() && crate::grad_ops::applies(x) {
        crate::grad_ops::softmax_last_dim(x)
    } else if x.track_op() {
        candle_nn::ops::softmax(x, candle_core::D::Minus1)
    } else if x.device().is_cpu() {
        x.contiguous()?.apply_op1_no_bwd(&RowOp {
            name: "pixart-softmax",
            whole_last_dim: true,
            f: softmax_in_place,
        })
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// GELU with the tanh approximation; the parallel kernel on the CPU, candle's op elsewhere
/// (and for tensors that need gradients: candle's `gelu` has a backward).
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.track_op() && crate::grad_ops::applies(x) {
        crate::grad_ops::gelu(x)
    } else if x.device().is_cpu() && !x.track_op() {
        x.contiguous()?.apply_op1_no_bwd(&RowOp {
            name: "pixart-gelu",
            whole_last_dim: false,
            f: gelu_tanh_in_place,
        })
    } else {
        x.gelu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

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
        let got = attention_cpu_bf16(&bf(&q), &bf(&k), &bf(&v), None, Some(&lens), 0.3).unwrap();
        let d = pixart_core::testing::max_abs_diff(
            &got,
            &attention_cpu(&bf(&q), &bf(&k), &bf(&v), None, Some(&lens), 0.3).unwrap(),
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
        let b = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "softmax {d}");
        let a = gelu(&x).unwrap();
        let b = x.gelu().unwrap();
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 2e-6, "gelu {d}");
        let xb = x.to_dtype(candle_core::DType::BF16).unwrap();
        let a = gelu(&xb).unwrap().to_dtype(candle_core::DType::F32).unwrap();
        let b = xb.to_dtype(candle_core::DType::F32).unwrap().gelu().unwrap();
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 5e-2, "gelu bf16 {d}");
    }
}

use pixart_gemm::attention::{ScoreBias, ATTN_BLOCK};

/// Fused CPU attention, f32: `softmax(scale·q·kᵀ + bias)·v` per (batch, head) and block of
/// [`ATTN_BLOCK`] queries, in parallel over blocks; each block's scores live in a per-thread
/// buffer (rows × keys), never the whole score matrix. With AVX-512 this is
/// [`pixart_gemm::attention::attention_f32`] (keys and values packed once per head, the
/// products on the AVX-512 f32 GEMM); elsewhere the `gemm` crate's products per block.
///
/// q: (b, h, n, d); k, v: (b, h, m, d); bias: (b, m) added to every query's scores;
/// key_lens: (b), row i attends to its first `key_lens[i]` keys only (the others skipped
/// exactly, so a row's result does not depend on the other rows). Returns (b, h, n, d) f32.
pub fn attention_cpu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    key_lens: Option<&[usize]>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, h, n, d) = q.dims4()?;
    let m = k.dim(2)?;
    let flat = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
        t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()
    };
    let bias = match bias {
        Some(bt) => Some(flat(&bt.reshape((b, m))?)?),
        None => None,
    };
    if let Some(lens) = key_lens {
        if lens.len() != b || lens.iter().any(|&l| l == 0 || l > m) {
            candle_core::bail!("attention: key lengths {lens:?} do not fit batch {b} and {m} keys");
        }
    }
    if pixart_gemm::sgemm::native_available() {
        // Prefix lengths replace the bias (the kept keys' bias is 0).
        let bias = match (key_lens, bias) {
            (Some(lens), _) => ScoreBias::Prefix(lens.into()),
            (None, Some(bv)) => ScoreBias::PerKey(bv.into()),
            (None, None) => ScoreBias::None,
        };
        let f = |t: &Tensor| t.to_dtype(candle_core::DType::F32);
        return pixart_gemm::attention::attention_f32(&f(q)?, &f(k)?, &f(v)?, bias, scale as f32);
    }
    let (qv, kv, vv) = (flat(q)?, flat(k)?, flat(v)?);
    let mut out = vec![0f32; b * h * n * d];
    let blocks_per_head = n.div_ceil(ATTN_BLOCK);
    let scale = scale as f32;
    // Each task owns a disjoint (head, block) range of `out`.
    let tasks: Vec<(usize, usize)> = (0..b * h)
        .flat_map(|bh| (0..blocks_per_head).map(move |blk| (bh, blk)))
        .collect();
    let out_ptr = SendPtr(out.as_mut_ptr());
    tasks
        .par_iter()
        .for_each_init(Vec::new, |scores: &mut Vec<f32>, &(bh, blk)| {
            let row0 = blk * ATTN_BLOCK;
            let rows = ATTN_BLOCK.min(n - row0);
            let mk = key_lens.map_or(m, |l| l[bh / h]); // keys this head attends to
            scores.clear();
            scores.resize(rows * mk, 0.0);
            let qp = &qv[(bh * n + row0) * d..];
            let kp = &kv[bh * m * d..];
            let vp = &vv[bh * m * d..];
            // SAFETY: the pointers cover `rows × d`, `m × d` and `rows × m` f32 values with the
            // strides given (row-major); gemm reads lhs/rhs and writes dst only within them.
            unsafe {
                gemm::gemm(
                    rows,
                    mk,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    mk as isize,
                    false,
                    qp.as_ptr(),
                    1,
                    d as isize,
                    kp.as_ptr(),
                    d as isize, // rhs (kk, j) = k[j, kk]: column j strides by d
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            // Prefix lengths replace the bias (the kept keys' bias is 0).
            let bias_row = match key_lens {
                Some(_) => None,
                None => bias.as_ref().map(|bv| &bv[(bh / h) * m..(bh / h + 1) * m]),
            };
            for row in scores.chunks_mut(mk) {
                if let Some(br) = bias_row {
                    for (s, bb) in row.iter_mut().zip(br) {
                        *s += *bb;
                    }
                }
                softmax_in_place(row);
            }
            // SAFETY: task (bh, blk) writes only rows [row0, row0 + rows) of head bh, a range no
            // other task touches; `out` outlives the parallel loop.
            unsafe {
                let dst = out_ptr.get().add((bh * n + row0) * d);
                gemm::gemm(
                    rows,
                    d,
                    mk,
                    dst,
                    1,
                    d as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    mk as isize,
                    vp.as_ptr(),
                    1,
                    d as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
    Tensor::from_vec(out, (b, h, n, d), q.device())
}

/// A raw pointer that may cross threads: each parallel task writes a disjoint range.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only for disjoint writes from rayon tasks while the owner waits.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Fused CPU attention in bf16 on the native AVX512-BF16 GEMM
/// ([`pixart_gemm::attention::attention_bf16`]): the same blocking as [`attention_cpu`], keys
/// and values packed once per head, scores and softmax in f32, probabilities rounded to bf16
/// for `P·V`.
///
/// q: (b, h, n, d); k, v: (b, h, m, d), all bf16; bias and key_lens as [`attention_cpu`]
/// (key_lens, when given, replaces the bias). Returns (b, h, n, d) bf16. Callers check
/// [`pixart_gemm::bf16::native_available`] (the portable kernel would be slow).
pub fn attention_cpu_bf16(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    key_lens: Option<&[usize]>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, _h, _n, _d) = q.dims4()?;
    let m = k.dim(2)?;
    let bias = match (key_lens, bias) {
        (Some(lens), _) => ScoreBias::Prefix(lens.into()),
        (None, Some(bt)) => ScoreBias::PerKey(
            bt.reshape((b, m))? // (b, 1, 1, m) -> (b, m)
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .into(),
        ),
        (None, None) => ScoreBias::None,
    };
    pixart_gemm::attention::attention_bf16(q, k, v, bias, scale as f32)
}
