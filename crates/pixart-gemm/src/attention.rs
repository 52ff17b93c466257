//! Fused CPU attention in bf16 on the native GEMM ([`crate::bf16`]), and in f32 on the
//! AVX-512 f32 GEMM ([`crate::sgemm`], [`attention_f32`]):
//! `softmax(scale·Q·Kᵀ + bias)·V` per (batch, head) and block of [`ATTN_BLOCK`] queries, in
//! parallel over blocks. Keys and values are packed once per head, the scores are accumulated
//! in f32 and live only in a per-thread block (rows × keys, never the whole score matrix), bias
//! and softmax run in f32 in cache, and the probabilities are rounded to bf16 for `P·V` (as
//! PyTorch's CPU flash attention does for bf16; f32 keeps them in f32). Used by the transformer (a per-key padding
//! bias) and the T5 encoder (its relative position bias, per head and query).
use std::sync::Arc;

use candle_core::{CpuStorage, Layout, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use crate::bf16::{gemm, softmax_to_bf16, GemmError, Lhs, Output, PackedA, PackedB};
use crate::vector::softmax_in_place;

/// Query rows per attention task: the task's score block (rows × keys) stays in cache.
pub const ATTN_BLOCK: usize = 64;

/// What is added to the scores `scale·q·kᵀ` before the softmax.
#[derive(Debug, Clone, Default)]
pub enum ScoreBias {
    #[default]
    None,
    /// (b, m): one value per key, the same for every head and query (a padding mask).
    PerKey(Arc<[f32]>),
    /// (batch, h, n, m) with `batch` 1 (shared by the whole batch) or b: one value per head,
    /// query and key (T5's relative position bias, with its padding mask folded in).
    Full { data: Arc<[f32]>, batch: usize },
    /// (b): batch row i attends to its first `lens[i]` keys only, the others are skipped (a
    /// padding mask that keeps a prefix, applied exactly: a row's result does not depend on
    /// how many keys the other rows have).
    Prefix(Arc<[usize]>),
}

impl ScoreBias {
    /// Checks the length against q (b, h, n, ·) and k (·, ·, m, ·).
    fn check(&self, b: usize, h: usize, n: usize, m: usize) -> candle_core::Result<()> {
        let (have, want) = match self {
            Self::None => return Ok(()),
            Self::Prefix(lens) => {
                if let Some(bad) = lens.iter().find(|&&l| l == 0 || l > m) {
                    candle_core::bail!("attention: key length {bad} outside 1..={m}");
                }
                (lens.len(), b)
            }
            Self::PerKey(v) => (v.len(), b * m),
            Self::Full { data, batch } => {
                if *batch != 1 && *batch != b {
                    candle_core::bail!("attention: bias batch {batch} is neither 1 nor {b}");
                }
                (data.len(), batch * h * n * m)
            }
        };
        if have != want {
            candle_core::bail!("attention: bias has {have} values, expected {want}");
        }
        Ok(())
    }

    /// The keys head `bh` (= batch · h + head) attends to: all `m` or its row's prefix.
    fn keys(&self, bh: usize, h: usize, m: usize) -> usize {
        match self {
            Self::Prefix(lens) => lens[bh / h],
            _ => m,
        }
    }

    /// The bias of query `q` of head `bh` (= batch · h + head), `m` values, if any.
    fn row(&self, bh: usize, h: usize, n: usize, m: usize, q: usize) -> Option<&[f32]> {
        match self {
            Self::None | Self::Prefix(_) => None,
            Self::PerKey(v) => Some(&v[(bh / h) * m..(bh / h + 1) * m]),
            Self::Full { data, batch } => {
                let bi = if *batch == 1 { 0 } else { bh / h };
                let start = ((bi * h + bh % h) * n + q) * m;
                Some(&data[start..start + m])
            }
        }
    }
}

/// Fused attention, bf16: q (b, h, n, d); k, v (b, h, m, d), all bf16 on the CPU. Returns
/// (b, h, n, d) bf16. Callers check [`crate::bf16::native_available`] (the portable GEMM
/// would be slow).
pub fn attention_bf16(q: &Tensor, k: &Tensor, v: &Tensor, bias: ScoreBias, scale: f32) -> candle_core::Result<Tensor> {
    let op = AttentionBf16 { bias, scale };
    q.contiguous()?
        .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
}

struct AttentionBf16 {
    bias: ScoreBias,
    scale: f32,
}

impl candle_core::CustomOp3 for AttentionBf16 {
    fn name(&self) -> &'static str {
        "pixart-attention-bf16"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let gerr = |e: GemmError| candle_core::Error::Msg(e.to_string());
        let (b, h, n, d, m) = attention_dims(ql, kl, vl)?;
        self.bias.check(b, h, n, m)?;
        let (qv, kv, vv) = (
            crate::contiguous_data::<bf16>(qs, ql, "attention: q")?,
            crate::contiguous_data::<bf16>(ks, kl, "attention: k")?,
            crate::contiguous_data::<bf16>(vs, vl, "attention: v")?,
        );
        let mut out = vec![bf16::ZERO; b * h * n * d];
        if out.is_empty() || m == 0 {
            return Ok((CpuStorage::BF16(out), ql.shape().clone()));
        }
        // Keys as B = Kᵀ (d × mk), values as B = V (mk × d), once per head (mk: the keys the
        // head attends to).
        let packed: Vec<(PackedB, PackedB)> = (0..b * h)
            .into_par_iter()
            .map(|bh| {
                let mk = self.bias.keys(bh, h, m);
                let (kh, vh) = (&kv[bh * m * d..(bh * m + mk) * d], &vv[bh * m * d..(bh * m + mk) * d]);
                let (mut pk, mut pv) = (PackedB::new(), PackedB::new());
                pk.pack_nk(kh, mk, d, d, false)?;
                pv.pack_kn(vh, mk, d, d, false)?;
                Ok((pk, pv))
            })
            .collect::<Result<_, GemmError>>()
            .map_err(gerr)?;
        let scale = self.scale;
        out.par_chunks_mut(n * d)
            .enumerate()
            .flat_map(|(bh, o)| {
                o.par_chunks_mut(ATTN_BLOCK * d)
                    .enumerate()
                    .map(move |(blk, ob)| (bh, blk, ob))
            })
            .try_for_each_init(
                || (Vec::<f32>::new(), Vec::<bf16>::new(), PackedA::new()),
                |(scores, probs, qpack), (bh, blk, ob)| {
                    let rows = ob.len() / d;
                    let row0 = blk * ATTN_BLOCK;
                    let m = self.bias.keys(bh, h, m);
                    // P rows padded to an even length so that P is read in place as the left
                    // operand.
                    let mp = m + m % 2;
                    scores.resize(rows * m, 0.0);
                    probs.resize(rows * mp, bf16::ZERO);
                    let qb = &qv[(bh * n + row0) * d..(bh * n + row0 + rows) * d];
                    let lhs = if d.is_multiple_of(2) {
                        Lhs::rows(qb, rows, d, d)?
                    } else {
                        qpack.pack_bf16(qb, rows, d, d, false)?;
                        Lhs::packed(qpack)
                    };
                    let (pk, pv) = &packed[bh];
                    gemm(
                        lhs,
                        pk,
                        Output::F32 {
                            c: scores,
                            ldc: m,
                            alpha: scale,
                        },
                        false,
                    )?;
                    for (r, (row, prow)) in scores.chunks_mut(m).zip(probs.chunks_mut(mp)).enumerate() {
                        if let Some(br) = self.bias.row(bh, h, n, m, row0 + r) {
                            for (s, bb) in row.iter_mut().zip(br) {
                                *s += *bb;
                            }
                        }
                        softmax_to_bf16(row, prow);
                        prow[m..].fill(bf16::ZERO); // the pad column (a reused buffer)
                    }
                    gemm(
                        Lhs::rows(probs, rows, mp, mp)?,
                        pv,
                        Output::Bf16 {
                            c: ob,
                            ldc: d,
                            bias: None,
                        },
                        false,
                    )
                },
            )
            .map_err(gerr)?;
        Ok((CpuStorage::BF16(out), ql.shape().clone()))
    }
}

/// Fused attention, f32, on the AVX-512 f32 GEMM ([`crate::sgemm`]): q (b, h, n, d); k, v
/// (b, h, m, d), all f32 on the CPU. Returns (b, h, n, d) f32. Callers check
/// [`crate::sgemm::native_available`] (the portable kernel would be slow). The same blocking
/// as [`attention_bf16`], with the probabilities kept in f32.
pub fn attention_f32(q: &Tensor, k: &Tensor, v: &Tensor, bias: ScoreBias, scale: f32) -> candle_core::Result<Tensor> {
    let op = AttentionF32 { bias, scale };
    q.contiguous()?
        .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
}

struct AttentionF32 {
    bias: ScoreBias,
    scale: f32,
}

/// (b, h, n, d, m) of matching q, k, v layouts.
fn attention_dims(ql: &Layout, kl: &Layout, vl: &Layout) -> candle_core::Result<(usize, usize, usize, usize, usize)> {
    let (b, h, n, d) = ql.shape().dims4()?;
    let m = kl.shape().dims4()?.2;
    if kl.shape().dims() != [b, h, m, d] || vl.shape().dims() != [b, h, m, d] {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not match",
            ql.shape().dims(),
            kl.shape().dims(),
            vl.shape().dims()
        );
    }
    Ok((b, h, n, d, m))
}

impl candle_core::CustomOp3 for AttentionF32 {
    fn name(&self) -> &'static str {
        "pixart-attention-f32"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use crate::sgemm::{self, Rhs};
        let gerr = |e: GemmError| candle_core::Error::Msg(e.to_string());
        let (b, h, n, d, m) = attention_dims(ql, kl, vl)?;
        self.bias.check(b, h, n, m)?;
        let (qv, kv, vv) = (
            crate::contiguous_data::<f32>(qs, ql, "attention: q")?,
            crate::contiguous_data::<f32>(ks, kl, "attention: k")?,
            crate::contiguous_data::<f32>(vs, vl, "attention: v")?,
        );
        let mut out = vec![0f32; b * h * n * d];
        if out.is_empty() || m == 0 {
            return Ok((CpuStorage::F32(out), ql.shape().clone()));
        }
        // Keys as B = Kᵀ (d × mk), values as B = V (mk × d), once per head.
        let packed: Vec<(sgemm::PackedB, sgemm::PackedB)> = (0..b * h)
            .into_par_iter()
            .map(|bh| {
                let mk = self.bias.keys(bh, h, m);
                let (kh, vh) = (&kv[bh * m * d..(bh * m + mk) * d], &vv[bh * m * d..(bh * m + mk) * d]);
                let (mut pk, mut pv) = (sgemm::PackedB::new(), sgemm::PackedB::new());
                pk.pack(Rhs::Nk { w: kh, ld: d }, d, mk)?;
                pv.pack(Rhs::Kn { b: vh, ld: d }, mk, d)?;
                Ok((pk, pv))
            })
            .collect::<Result<_, GemmError>>()
            .map_err(gerr)?;
        out.par_chunks_mut(n * d)
            .enumerate()
            .flat_map(|(bh, o)| {
                o.par_chunks_mut(ATTN_BLOCK * d)
                    .enumerate()
                    .map(move |(blk, ob)| (bh, blk, ob))
            })
            .try_for_each_init(Vec::<f32>::new, |scores, (bh, blk, ob)| {
                let rows = ob.len() / d;
                let row0 = blk * ATTN_BLOCK;
                let mk = self.bias.keys(bh, h, m);
                scores.resize(rows * mk, 0.0);
                let qb = &qv[(bh * n + row0) * d..(bh * n + row0 + rows) * d];
                let (pk, pv) = &packed[bh];
                let mut so = sgemm::Output::new(scores, mk);
                so.alpha = self.scale;
                sgemm::gemm(sgemm::Lhs::rows(qb, rows, d, d)?, Rhs::Packed(pk), mk, so, false)?;
                for (r, row) in scores.chunks_mut(mk).enumerate() {
                    if let Some(br) = self.bias.row(bh, h, n, m, row0 + r) {
                        for (s, bb) in row.iter_mut().zip(br) {
                            *s += *bb;
                        }
                    }
                    softmax_in_place(row);
                }
                let lhs = sgemm::Lhs::rows(scores, rows, mk, mk)?;
                sgemm::gemm(lhs, Rhs::Packed(pv), d, sgemm::Output::new(ob, d), false)
            })
            .map_err(gerr)?;
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, D};

    /// The composed reference in f32: softmax(scale·q·kᵀ + bias)·v.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, scale: f64) -> Tensor {
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let s = (f(q).matmul(&f(k).t().unwrap()).unwrap() * scale).unwrap(); // (b, h, n, m)
        let s = match bias {
            Some(b) => s.broadcast_add(b).unwrap(),
            None => s,
        };
        candle_nn::ops::softmax(&s, D::Minus1).unwrap().matmul(&f(v)).unwrap()
    }

    /// The fused attention in `dtype` (bf16 or f32) and its tolerance against the f32 reference.
    fn attention(
        dtype: DType,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: ScoreBias,
        scale: f32,
    ) -> candle_core::Result<Tensor> {
        let c = |t: &Tensor| t.to_dtype(dtype).unwrap();
        match dtype {
            DType::F32 => attention_f32(&c(q), &c(k), &c(v), bias, scale),
            _ => attention_bf16(&c(q), &c(k), &c(v), bias, scale),
        }
    }

    fn tolerance(dtype: DType) -> f32 {
        if dtype == DType::F32 {
            1e-5
        } else {
            3e-2
        }
    }

    const DTYPES: [DType; 2] = [DType::BF16, DType::F32];

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        pixart_core::testing::max_abs_diff(a, b).0
    }

    #[test]
    fn matches_the_composed_reference_with_each_bias() {
        let dev = Device::Cpu;
        // n = 70 spans two query blocks; m odd pads the probabilities; d odd packs q.
        for (dtype, (b, h, n, m, d)) in DTYPES
            .into_iter()
            .flat_map(|t| [(t, (2, 3, 70, 45, 16)), (t, (1, 2, 9, 10, 7))])
        {
            let r = |shape: (usize, usize, usize, usize)| {
                Tensor::randn(0f32, 1.0, shape, &dev)
                    .unwrap()
                    .to_dtype(DType::BF16)
                    .unwrap()
            };
            let (q, k, v) = (r((b, h, n, d)), r((b, h, m, d)), r((b, h, m, d)));
            let (scale, tol) = (0.3, tolerance(dtype));
            let none = attention(dtype, &q, &k, &v, ScoreBias::None, scale as f32).unwrap();
            assert_eq!(none.dtype(), dtype);
            let d0 = max_diff(&none, &reference(&q, &k, &v, None, scale));
            assert!(d0 < tol, "{dtype:?} no bias: {d0}");

            let per_key = Tensor::randn(0f32, 2.0, (b, 1, 1, m), &dev).unwrap();
            let flat: Arc<[f32]> = per_key.flatten_all().unwrap().to_vec1::<f32>().unwrap().into();
            let got = attention(dtype, &q, &k, &v, ScoreBias::PerKey(flat), scale as f32).unwrap();
            let d1 = max_diff(&got, &reference(&q, &k, &v, Some(&per_key), scale));
            assert!(d1 < tol, "{dtype:?} per-key bias: {d1}");

            for batch in [1, b] {
                let full = Tensor::randn(0f32, 2.0, (batch, h, n, m), &dev).unwrap();
                let data: Arc<[f32]> = full.flatten_all().unwrap().to_vec1::<f32>().unwrap().into();
                let got = attention(dtype, &q, &k, &v, ScoreBias::Full { data, batch }, scale as f32).unwrap();
                let d = max_diff(&got, &reference(&q, &k, &v, Some(&full), scale));
                assert!(d < tol, "{dtype:?} full bias (batch {batch}): {d}");
            }
        }
    }

    #[test]
    fn a_prefix_mask_skips_keys_exactly() {
        let dev = Device::Cpu;
        for dtype in DTYPES {
            let r = |shape: (usize, usize, usize, usize)| {
                Tensor::randn(0f32, 1.0, shape, &dev).unwrap().to_dtype(dtype).unwrap()
            };
            let (b, h, n, m, d) = (2, 3, 70, 9, 8);
            let (q, k, v) = (r((b, h, n, d)), r((b, h, m, d)), r((b, h, m, d)));
            let lens: Arc<[usize]> = vec![4, 9].into();
            let got = attention(dtype, &q, &k, &v, ScoreBias::Prefix(lens), 0.5).unwrap();
            for (i, len) in [(0, 4), (1, 9)] {
                // The same row alone with only its keys: the same bits.
                let row = |t: &Tensor, keys: usize| t.narrow(0, i, 1).unwrap().narrow(2, 0, keys).unwrap();
                let alone = attention(dtype, &row(&q, n), &row(&k, len), &row(&v, len), ScoreBias::None, 0.5).unwrap();
                let got_i = got.narrow(0, i, 1).unwrap();
                assert_eq!(
                    pixart_core::testing::max_abs_diff(&got_i, &alone).0,
                    0.0,
                    "{dtype:?} row {i}"
                );
            }
            let bad = ScoreBias::Prefix(vec![0, 3].into());
            assert!(attention(dtype, &q, &k, &v, bad, 0.5).is_err());
        }
    }

    #[test]
    fn a_bias_of_the_wrong_length_is_an_error() {
        let dev = Device::Cpu;
        for dtype in DTYPES {
            let q = Tensor::zeros((1, 2, 4, 8), dtype, &dev).unwrap();
            let bad = ScoreBias::Full {
                data: vec![0f32; 5].into(),
                batch: 1,
            };
            let e = attention(dtype, &q, &q, &q, bad, 1.0).unwrap_err().to_string();
            assert!(e.contains("expected 32"), "{e}");
        }
    }
}
