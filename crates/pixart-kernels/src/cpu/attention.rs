//! Fused CPU attention in bf16 on the native GEMM ([`crate::cpu::bf16`]), and in f32 on the
//! AVX-512 f32 GEMM ([`crate::cpu::sgemm`], [`attention_f32`]):
//! `softmax(scale·Q·Kᵀ + bias)·V` per (batch, head) and block of [`ATTN_BLOCK`] queries, in
//! parallel over blocks. Keys and values are packed once per head, the scores are accumulated
//! in f32 and live only in a per-thread block (rows × keys, never the whole score matrix), bias
//! and softmax run in f32 in cache, and the probabilities are rounded to bf16 for `P·V` (as
//! PyTorch's CPU flash attention does for bf16; f32 keeps them in f32). Used by the transformer (a per-key padding
//! bias) and the T5 encoder (its relative position bias, per head and query).
use std::marker::PhantomData;
use std::sync::Arc;

use candle_core::{CpuStorage, Layout, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use crate::cpu::bf16::{gemm, softmax_to_bf16, GemmError, Lhs, Output, PackedA, PackedB};
use crate::cpu::sgemm::{self, Rhs};
use crate::cpu::vector::softmax_in_place;

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
/// (b, h, n, d) bf16. Callers check [`crate::cpu::bf16::native_available`] (the portable GEMM
/// would be slow). Scores and softmax in f32, probabilities rounded to bf16 for `P·V`.
pub fn attention_bf16(q: &Tensor, k: &Tensor, v: &Tensor, bias: ScoreBias, scale: f32) -> candle_core::Result<Tensor> {
    Attention::<Bf16Products>::run(q, k, v, bias, scale)
}

/// Fused attention, f32, on the AVX-512 f32 GEMM ([`crate::cpu::sgemm`]): q (b, h, n, d); k, v
/// (b, h, m, d), all f32 on the CPU. Returns (b, h, n, d) f32. Callers check
/// [`crate::cpu::sgemm::native_available`] (the portable kernel would be slow). The same blocking
/// as [`attention_bf16`], with the probabilities kept in f32.
pub fn attention_f32(q: &Tensor, k: &Tensor, v: &Tensor, bias: ScoreBias, scale: f32) -> candle_core::Result<Tensor> {
    Attention::<F32Products>::run(q, k, v, bias, scale)
}

/// The dtype-specific part of the fused attention: how a head's keys and values are packed and
/// how one block of queries runs its two products.
trait Products {
    type T: candle_core::WithDType;
    /// A head's keys as B = Kᵀ (d × mk) and values as B = V (mk × d).
    type Packed: Send + Sync;
    /// Per-thread buffers beyond the scores.
    type Scratch: Default + Send;
    const NAME: &'static str;

    fn pack(k: &[Self::T], v: &[Self::T], mk: usize, d: usize) -> Result<Self::Packed, GemmError>;

    /// The `rows` queries `q` (rows × d) of one block against `mk` keys: `scores` (rows × mk)
    /// = scale·q·kᵀ plus `add_bias` on each score row, the softmax, then `out` (rows × d) = P·V.
    #[allow(clippy::too_many_arguments)]
    fn block(
        q: &[Self::T],
        rows: usize,
        d: usize,
        mk: usize,
        scale: f32,
        packed: &Self::Packed,
        buffers: (&mut Vec<f32>, &mut Self::Scratch),
        add_bias: impl Fn(usize, &mut [f32]),
        out: &mut [Self::T],
    ) -> Result<(), GemmError>;
}

/// bf16 on the native bf16 GEMM; the probabilities rounded to bf16 for `P·V`.
struct Bf16Products;

impl Products for Bf16Products {
    type T = bf16;
    type Packed = (PackedB, PackedB);
    /// The bf16 probabilities and the packed queries (odd head dims).
    type Scratch = (Vec<bf16>, PackedA);
    const NAME: &'static str = "pixart-attention-bf16";

    fn pack(k: &[bf16], v: &[bf16], mk: usize, d: usize) -> Result<Self::Packed, GemmError> {
        let (mut pk, mut pv) = (PackedB::new(), PackedB::new());
        pk.pack_nk(k, mk, d, d, false)?;
        pv.pack_kn(v, mk, d, d, false)?;
        Ok((pk, pv))
    }

    fn block(
        q: &[bf16],
        rows: usize,
        d: usize,
        mk: usize,
        scale: f32,
        (pk, pv): &Self::Packed,
        (scores, (probs, qpack)): (&mut Vec<f32>, &mut Self::Scratch),
        add_bias: impl Fn(usize, &mut [f32]),
        out: &mut [bf16],
    ) -> Result<(), GemmError> {
        // P rows padded to an even length so that P is read in place as the left operand.
        let mp = mk + mk % 2;
        probs.resize(rows * mp, bf16::ZERO);
        let lhs = if d.is_multiple_of(2) {
            Lhs::rows(q, rows, d, d)?
        } else {
            qpack.pack_bf16(q, rows, d, d, false)?;
            Lhs::packed(qpack)
        };
        let c = Output::F32 {
            c: scores,
            ldc: mk,
            alpha: scale,
        };
        gemm(lhs, pk, c, false)?;
        for (r, (row, prow)) in scores.chunks_mut(mk).zip(probs.chunks_mut(mp)).enumerate() {
            add_bias(r, row);
            softmax_to_bf16(row, prow);
            prow[mk..].fill(bf16::ZERO); // the pad column (a reused buffer)
        }
        let c = Output::Bf16 {
            c: out,
            ldc: d,
            bias: None,
        };
        gemm(Lhs::rows(probs, rows, mp, mp)?, pv, c, false)
    }
}

/// f32 on the AVX-512 f32 GEMM.
struct F32Products;

impl Products for F32Products {
    type T = f32;
    type Packed = (sgemm::PackedB, sgemm::PackedB);
    type Scratch = ();
    const NAME: &'static str = "pixart-attention-f32";

    fn pack(k: &[f32], v: &[f32], mk: usize, d: usize) -> Result<Self::Packed, GemmError> {
        let (mut pk, mut pv) = (sgemm::PackedB::new(), sgemm::PackedB::new());
        pk.pack(Rhs::Nk { w: k, ld: d }, d, mk)?;
        pv.pack(Rhs::Kn { b: v, ld: d }, mk, d)?;
        Ok((pk, pv))
    }

    fn block(
        q: &[f32],
        rows: usize,
        d: usize,
        mk: usize,
        scale: f32,
        (pk, pv): &Self::Packed,
        (scores, ()): (&mut Vec<f32>, &mut ()),
        add_bias: impl Fn(usize, &mut [f32]),
        out: &mut [f32],
    ) -> Result<(), GemmError> {
        let mut so = sgemm::Output::new(scores, mk);
        so.alpha = scale;
        sgemm::gemm(sgemm::Lhs::rows(q, rows, d, d)?, Rhs::Packed(pk), mk, so, false)?;
        for (r, row) in scores.chunks_mut(mk).enumerate() {
            add_bias(r, row);
            softmax_in_place(row);
        }
        let lhs = sgemm::Lhs::rows(scores, rows, mk, mk)?;
        sgemm::gemm(lhs, Rhs::Packed(pv), d, sgemm::Output::new(out, d), false)
    }
}

/// The fused attention as a candle op, one body for both dtypes ([`Products`]).
struct Attention<P> {
    bias: ScoreBias,
    scale: f32,
    _kind: PhantomData<P>,
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

impl<P: Products + Send + Sync> Attention<P> {
    fn run(q: &Tensor, k: &Tensor, v: &Tensor, bias: ScoreBias, scale: f32) -> candle_core::Result<Tensor> {
        let op = Self {
            bias,
            scale,
            _kind: PhantomData,
        };
        q.contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
    }
}

impl<P: Products + Send + Sync> candle_core::CustomOp3 for Attention<P> {
    fn name(&self) -> &'static str {
        P::NAME
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
        use candle_core::WithDType;
        let gerr = |e: GemmError| candle_core::Error::Msg(e.to_string());
        let (b, h, n, d, m) = attention_dims(ql, kl, vl)?;
        self.bias.check(b, h, n, m)?;
        let (qv, kv, vv) = (
            crate::cpu::contiguous_data::<P::T>(qs, ql, "attention: q")?,
            crate::cpu::contiguous_data::<P::T>(ks, kl, "attention: k")?,
            crate::cpu::contiguous_data::<P::T>(vs, vl, "attention: v")?,
        );
        let mut out = vec![P::T::from_f64(0.0); b * h * n * d];
        if out.is_empty() || m == 0 {
            return Ok((P::T::to_cpu_storage_owned(out), ql.shape().clone()));
        }
        // Keys and values packed once per head (mk: the keys the head attends to).
        let packed: Vec<P::Packed> = (0..b * h)
            .into_par_iter()
            .map(|bh| {
                let mk = self.bias.keys(bh, h, m);
                P::pack(
                    &kv[bh * m * d..(bh * m + mk) * d],
                    &vv[bh * m * d..(bh * m + mk) * d],
                    mk,
                    d,
                )
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
            .try_for_each_init(
                || (Vec::<f32>::new(), P::Scratch::default()),
                |(scores, scratch), (bh, blk, ob)| {
                    let rows = ob.len() / d;
                    let row0 = blk * ATTN_BLOCK;
                    let mk = self.bias.keys(bh, h, m);
                    scores.resize(rows * mk, 0.0);
                    let qb = &qv[(bh * n + row0) * d..(bh * n + row0 + rows) * d];
                    let bias_rows = |r: usize, row: &mut [f32]| {
                        if let Some(br) = self.bias.row(bh, h, n, m, row0 + r) {
                            for (s, bb) in row.iter_mut().zip(br) {
                                *s += *bb;
                            }
                        }
                    };
                    P::block(
                        qb,
                        rows,
                        d,
                        mk,
                        self.scale,
                        &packed[bh],
                        (scores, scratch),
                        bias_rows,
                        ob,
                    )
                },
            )
            .map_err(gerr)?;
        Ok((P::T::to_cpu_storage_owned(out), ql.shape().clone()))
    }
}

/// Fused CPU attention: `softmax(scale·q·kᵀ + bias)·v` per (batch, head) and block of
/// [`ATTN_BLOCK`] queries, in parallel over blocks; each block's scores live in a per-thread
/// buffer (rows × keys), never the whole score matrix. bf16 inputs on a CPU with AVX512-BF16 run
/// [`attention_bf16`]; others run in f32 on [`attention_f32`] with AVX-512 (keys and values
/// packed once per head), elsewhere on the `gemm` crate's products per block, and come back
/// in q's dtype.
///
/// q: (b, h, n, d); k, v: (b, h, m, d) (checked: a mismatch is an error, never a read out of
/// bounds); bias: (b, m) values (any shape holding them, e.g. (b, 1, 1, m)) added to every
/// query's scores; key_lens: (b), row i attends to its first `key_lens[i]` keys only (the
/// others skipped exactly, so a row's result does not depend on the other rows; it replaces
/// the bias). Returns (b, h, n, d).
pub fn attention_cpu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    key_lens: Option<&[usize]>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let native = if q.dtype() == candle_core::DType::BF16 && crate::cpu::bf16::native_available() {
        CpuPath::NativeBf16
    } else if crate::cpu::sgemm::native_available() {
        CpuPath::NativeF32
    } else {
        CpuPath::Portable
    };
    attention_cpu_on(native, q, k, v, bias, key_lens, scale)
}

/// The GEMMs [`attention_cpu`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CpuPath {
    /// [`attention_bf16`] (bf16 inputs, AVX512-BF16).
    NativeBf16,
    /// [`attention_f32`] (AVX-512).
    NativeF32,
    /// The `gemm` crate, per block ([`attention_portable`]).
    Portable,
}

/// [`attention_cpu`] on the given products: the shapes and the bias are checked here, before
/// any kernel runs, whichever it is.
fn attention_cpu_on(
    path: CpuPath,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    key_lens: Option<&[usize]>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, h, n, d) = q.dims4()?;
    let m = k.dims4()?.2;
    if k.dims() != [b, h, m, d] || v.dims() != [b, h, m, d] {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not match",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let bias = match (key_lens, bias) {
        (Some(lens), _) => ScoreBias::Prefix(lens.into()),
        (None, Some(bt)) => ScoreBias::PerKey(
            bt.reshape((b, m))? // e.g. (b, 1, 1, m) -> (b, m)
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .into(),
        ),
        (None, None) => ScoreBias::None,
    };
    bias.check(b, h, n, m)?;
    let f = |t: &Tensor| t.to_dtype(candle_core::DType::F32);
    let out = match path {
        CpuPath::NativeBf16 => return attention_bf16(q, k, v, bias, scale as f32),
        CpuPath::NativeF32 => attention_f32(&f(q)?, &f(k)?, &f(v)?, bias, scale as f32)?,
        CpuPath::Portable => attention_portable(&f(q)?, &f(k)?, &f(v)?, &bias, scale as f32)?,
    };
    out.to_dtype(q.dtype())
}

/// [`attention_cpu`] in f32 on the `gemm` crate (CPUs without AVX-512, or `PIXART_GEMM=fallback`);
/// q, k, v f32 of checked shapes, `bias` checked against them.
fn attention_portable(q: &Tensor, k: &Tensor, v: &Tensor, bias: &ScoreBias, scale: f32) -> candle_core::Result<Tensor> {
    let (b, h, n, d) = q.dims4()?;
    let m = k.dim(2)?;
    let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    let (qv, kv, vv) = (flat(q)?, flat(k)?, flat(v)?);
    let mut out = vec![0f32; b * h * n * d];
    let blocks_per_head = n.div_ceil(ATTN_BLOCK);
    // Each task owns a disjoint (head, block) range of `out`.
    let tasks: Vec<(usize, usize)> = (0..b * h)
        .flat_map(|bh| (0..blocks_per_head).map(move |blk| (bh, blk)))
        .collect();
    let out_ptr = super::Shared::new(out.as_mut_ptr());
    tasks
        .par_iter()
        .for_each_init(Vec::new, |scores: &mut Vec<f32>, &(bh, blk)| {
            let row0 = blk * ATTN_BLOCK;
            let rows = ATTN_BLOCK.min(n - row0);
            let mk = bias.keys(bh, h, m); // keys this head attends to
            scores.clear();
            scores.resize(rows * mk, 0.0);
            let qp = &qv[(bh * n + row0) * d..(bh * n + row0 + rows) * d];
            let kp = &kv[bh * m * d..(bh * m + mk) * d];
            let vp = &vv[bh * m * d..(bh * m + mk) * d];
            // SAFETY: the slices above hold `rows × d` (q), `mk × d` (k) and `rows × mk`
            // (scores) f32 values, row-major with the strides given, as the shapes were checked;
            // gemm reads lhs/rhs and writes dst only within them.
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
            for (r, row) in scores.chunks_mut(mk).enumerate() {
                if let Some(br) = bias.row(bh, h, n, m, row0 + r) {
                    for (s, bb) in row.iter_mut().zip(br) {
                        *s += *bb;
                    }
                }
                softmax_in_place(row);
            }
            // SAFETY: task (bh, blk) writes only rows [row0, row0 + rows) of head bh, `rows × d`
            // values inside `out` (b·h·n·d long), a range no other task touches; `out` outlives
            // the parallel loop; `vp` holds `mk × d` values.
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

    /// A k or v whose shape does not match q is an error on every kernel path, never a read
    /// out of bounds (the portable path used to take k's dims on trust).
    #[test]
    fn mismatched_key_value_shapes_are_errors_on_every_path() {
        let dev = Device::Cpu;
        let r = |shape: (usize, usize, usize, usize)| Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let q = r((2, 3, 5, 8));
        let bad: [(Tensor, Tensor); 4] = [
            (r((2, 3, 7, 8)), r((2, 3, 6, 8))), // v has fewer keys than k
            (r((2, 3, 7, 4)), r((2, 3, 7, 8))), // k has another head dim
            (r((1, 3, 7, 8)), r((1, 3, 7, 8))), // another batch
            (r((2, 2, 7, 8)), r((2, 2, 7, 8))), // other heads
        ];
        let mut paths = vec![CpuPath::Portable];
        if crate::cpu::sgemm::native_available() {
            paths.push(CpuPath::NativeF32);
        }
        for p in paths {
            for (k, v) in &bad {
                let got = attention_cpu_on(p, &q, k, v, None, None, 0.3);
                assert!(got.is_err(), "{p:?}: k {:?} v {:?} accepted", k.dims(), v.dims());
            }
            let (k, v) = (r((2, 3, 7, 8)), r((2, 3, 7, 8)));
            assert!(attention_cpu_on(p, &q, &k, &v, None, None, 0.3).is_ok(), "{p:?}");
            assert!(
                attention_cpu_on(p, &q, &k, &v, None, Some(&[1, 8]), 0.3).is_err(),
                "{p:?}: lengths"
            );
        }
        if crate::cpu::bf16::native_available() {
            let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
            for (k, v) in &bad {
                assert!(attention_cpu_on(CpuPath::NativeBf16, &bf(&q), &bf(k), &bf(v), None, None, 0.3).is_err());
            }
        }
    }

    /// The portable and the native paths agree, with a per-key bias and with prefix lengths.
    #[test]
    #[cfg_attr(no_avx512, ignore = "no AVX-512: the native path is not there to compare")]
    fn portable_and_native_paths_agree() {
        assert!(
            crate::cpu::sgemm::native_available(),
            "the native f32 GEMM is off (no AVX-512, or PIXART_GEMM=fallback)"
        );
        let dev = Device::Cpu;
        let r = |shape: (usize, usize, usize, usize)| Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let (q, k, v) = (r((2, 3, 70, 8)), r((2, 3, 11, 8)), r((2, 3, 11, 8)));
        let bias = Tensor::randn(0f32, 1.0, (2, 1, 1, 11), &dev).unwrap();
        for (bias, lens) in [(Some(&bias), None), (None, Some(&[4usize, 11][..]))] {
            let a = attention_cpu_on(CpuPath::Portable, &q, &k, &v, bias, lens, 0.3).unwrap();
            let b = attention_cpu_on(CpuPath::NativeF32, &q, &k, &v, bias, lens, 0.3).unwrap();
            let d = pixart_core::testing::max_abs_diff(&a, &b).0;
            assert!(d < 1e-5, "{d}");
        }
    }
}
