//! A drop-in for `candle_nn::Linear` (same weight names, same `forward`) that runs bf16 inputs
//! on the CPU through the native GEMM in [`crate::cpu::bf16`] and f32 inputs through the AVX-512
//! f32 GEMM in [`crate::cpu::sgemm`] (reading the weight in place: no second copy; f16 inputs and
//! weights too, widened on the way in), with the bias fused into the epilogue, and everything
//! else (other dtypes and devices, CPUs without AVX-512, anything tracking gradients) through
//! candle.
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Module, Shape, Tensor};
use candle_nn::VarBuilder;
use half::bf16;
use rayon::prelude::*;

use crate::cpu::bf16::{matmul_nt_packed, native_available, PackedB};

/// `y = x·Wᵀ + b` with `W` of shape (out, in), as `candle_nn::Linear`.
///
/// On the native path the weight is packed for the GEMM on the first forward and kept (shared
/// by clones): one more copy of the weight in memory, in exchange for not packing it on
/// every call (about a tenth of a 256 px transformer forward).
#[derive(Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
    prepared: Arc<OnceLock<Prepared>>,
}

/// The weight packed for the GEMM and the bias in f32.
struct Prepared {
    w: PackedB,
    bias: Option<Vec<f32>>,
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linear")
            .field("inner", &self.inner)
            .field("packed", &self.prepared.get().is_some())
            .finish()
    }
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        candle_nn::Linear::new(weight, bias).into()
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    /// Whether `x` takes a native path in `dtype` (bf16, f32 or f16): not when anything needs
    /// gradients (`track_op`: the custom ops have no backward).
    fn native_for(&self, x: &Tensor, dtype: DType) -> bool {
        let w = self.weight();
        !x.track_op()
            && !w.track_op()
            && self.bias().is_none_or(|b| !b.track_op())
            && x.device().is_cpu()
            && x.dtype() == dtype
            && w.dtype() == dtype
            && w.rank() == 2
            && x.rank() >= 1
            && x.dims().last() == w.dims().get(1)
            && w.dims()[1] > 0
            && self.bias().is_none_or(|b| b.dims() == [w.dims()[0]])
            && match dtype {
                DType::BF16 => native_available(),
                DType::F32 | DType::F16 => crate::cpu::sgemm::native_available(),
                _ => false,
            }
    }

    /// The packed weight, packed on first use.
    fn prepared(&self) -> candle_core::Result<&Prepared> {
        if let Some(p) = self.prepared.get() {
            return Ok(p);
        }
        let w = self.weight();
        let (n, k) = w.dims2()?;
        let wv = w.flatten_all()?.to_vec1::<bf16>()?; // (n, k) -> (n·k)
        let mut packed = PackedB::new();
        packed
            .pack_nk(&wv, n, k, k, true)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let bias = match self.bias() {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        // Two threads racing here pack twice; one result is kept.
        Ok(self.prepared.get_or_init(|| Prepared { w: packed, bias }))
    }
}

impl From<candle_nn::Linear> for Linear {
    fn from(inner: candle_nn::Linear) -> Self {
        Self {
            inner,
            prepared: Arc::new(OnceLock::new()),
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.native_for(x, DType::F32) || self.native_for(x, DType::F16) {
            return sgemm_forward(x, self.weight(), self.bias());
        }
        if !self.native_for(x, DType::BF16) {
            return flat_forward(x, self.weight(), self.bias());
        }
        let (n, k) = self.weight().dims2()?;
        packed_forward(x, self.prepared()?, n, k)
    }
}

/// `x·Wᵀ + b` with candle's ops (gradients, GPUs, CPUs without the native kernels), on x
/// flattened to one matrix of rows. `candle_nn::Linear` broadcasts the weight to x's batch dims
/// instead: one small product per batch row, and in the backward pass a weight gradient per batch
/// row summed by candle's single-threaded strided reduction (15 % of a training step of the
/// built-in model). Flat, the weight gradient is one product.
fn flat_forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    if x.rank() <= 2 {
        let y = x.matmul(&w.t()?)?;
        return match bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        };
    }
    let (n, k) = w.dims2()?;
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    let x2 = x.reshape((x.elem_count() / k.max(1), k))?; // (..., k) -> (m, k)
    let trained = x2.track_op() || w.track_op();
    let y = if trained
        && x2.device().is_cpu()
        && x2.dtype() == DType::F32
        && w.dtype() == DType::F32
        && crate::cpu::sgemm::native_available()
    {
        x2.apply_op2(&w.contiguous()?, TrainedLinear)? // (m, n), with a backward on the native GEMM
    } else {
        x2.matmul(&w.t()?)? // (m, n)
    };
    let y = match bias {
        Some(b) if (y.track_op() || b.track_op()) && y.device().is_cpu() && y.dtype() == DType::F32 => {
            y.apply_op2(&b.contiguous()?, RowBias)?
        }
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    y.reshape(out_dims) // (m, n) -> (..., n)
}

/// `x·Wᵀ` for x (m, k) and W (n, k), f32 on the CPU, on [`crate::cpu::sgemm`] forward and backward:
/// dx = dy·W and dW = dyᵀ·x (dy transposed once into a buffer, m·n values against the product's
/// m·n·k). candle's matmul runs the `gemm` crate's AVX2 kernel here (a third of a training step
/// of the built-in model).
struct TrainedLinear;

/// The two products of [`TrainedLinear`]'s backward; no backward of their own.
enum LinearGrad {
    /// dx (m, k) = dy (m, n) · W (n, k).
    Input,
    /// dW (n, k) = dyᵀ · x (m, k).
    Weight,
}

fn gemm_err(e: crate::cpu::bf16::GemmError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl CustomOp2 for TrainedLinear {
    fn name(&self) -> &'static str {
        "pixart-linear-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        LinearF32 { bias: None }.cpu_fwd(xs, xl, ws, wl)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(&w.contiguous()?, &LinearGrad::Input)?;
        let dw = grad.apply_op2_no_bwd(&x.contiguous()?, &LinearGrad::Weight)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp2 for LinearGrad {
    fn name(&self) -> &'static str {
        "pixart-linear-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        os: &CpuStorage,
        ol: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use crate::cpu::sgemm::{gemm, Lhs, Output, Rhs};
        let (m, n) = gl.shape().dims2()?;
        let dy = crate::cpu::contiguous_data::<f32>(gs, gl, self.name())?;
        let other = crate::cpu::contiguous_data::<f32>(os, ol, self.name())?;
        match self {
            LinearGrad::Input => {
                let (wn, k) = ol.shape().dims2()?;
                if wn != n {
                    candle_core::bail!("linear backward: dy has {n} columns, the weight {wn} rows");
                }
                let mut dx = vec![0f32; m * k];
                gemm(
                    Lhs::rows(dy, m, n, n).map_err(gemm_err)?,
                    Rhs::Kn { b: other, ld: k },
                    k,
                    Output::new(&mut dx, k),
                    true,
                )
                .map_err(gemm_err)?;
                Ok((CpuStorage::F32(dx), Shape::from((m, k))))
            }
            LinearGrad::Weight => {
                let (xm, k) = ol.shape().dims2()?;
                if xm != m {
                    candle_core::bail!("linear backward: dy has {m} rows, x {xm}");
                }
                // dyᵀ (n, m), row-major, for the GEMM's row-read A.
                let mut dyt = vec![0f32; n * m];
                dyt.par_chunks_mut(m.max(1)).enumerate().for_each(|(j, row)| {
                    for (i, v) in row.iter_mut().enumerate() {
                        *v = dy[i * n + j];
                    }
                });
                let mut dw = vec![0f32; n * k];
                gemm(
                    Lhs::rows(&dyt, n, m, m).map_err(gemm_err)?,
                    Rhs::Kn { b: other, ld: k },
                    k,
                    Output::new(&mut dw, k),
                    true,
                )
                .map_err(gemm_err)?;
                Ok((CpuStorage::F32(dw), Shape::from((n, k))))
            }
        }
    }
}

/// `y + b` over the rows of y (m, n), f32 on the CPU, with a backward whose bias gradient is
/// [`ColumnSums`] (candle's `broadcast_add` sums it with a single-threaded strided reduction).
struct RowBias;

/// (n) column sums of a contiguous (m, n) f32 matrix: parallel partial sums over row blocks.
struct ColumnSums;

impl CustomOp2 for RowBias {
    fn name(&self) -> &'static str {
        "row-bias"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = crate::cpu::contiguous_data::<f32>(ys, yl, self.name())?;
        let b = crate::cpu::contiguous_data::<f32>(bs, bl, self.name())?;
        let n = b.len();
        if yl.dims().last() != Some(&n) {
            candle_core::bail!("row-bias: a bias of {n} for rows of {:?}", yl.dims());
        }
        let mut out = y.to_vec();
        let rows = (16_384 / n.max(1)).max(1);
        out.par_chunks_mut(rows * n.max(1)).for_each(|blk| {
            for row in blk.chunks_mut(n.max(1)) {
                for (o, b) in row.iter_mut().zip(b) {
                    *o += b;
                }
            }
        });
        Ok((CpuStorage::F32(out), yl.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gb = grad.contiguous()?.apply_op1_no_bwd(&ColumnSums)?;
        Ok((Some(grad.clone()), Some(gb)))
    }
}

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column-sums"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = crate::cpu::contiguous_data::<f32>(gs, gl, self.name())?;
        let n = gl.dims().last().copied().unwrap_or(1).max(1);
        // One partial sum per block of rows (about 64 K elements), then their sum.
        let rows = (65_536 / n).max(1);
        let partials: Vec<Vec<f32>> = g
            .par_chunks(rows * n)
            .map(|blk| {
                let mut acc = vec![0f32; n];
                for row in blk.chunks(n) {
                    for (a, v) in acc.iter_mut().zip(row) {
                        *a += v;
                    }
                }
                acc
            })
            .collect();
        let mut out = vec![0f32; n];
        for p in partials {
            for (o, v) in out.iter_mut().zip(p) {
                *o += v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

/// `x·Wᵀ + b` on [`crate::cpu::sgemm`] for f32 or f16 x and W (n, k), the weight read in place.
///
/// f16: every f16 value is exact in f32, the products are accumulated in f32 and the result
/// (bias added in f32) is rounded to f16 once, as PyTorch's CPU f16 Linear does. The weight
/// stays f16 in its one copy: it is widened panel by panel while the GEMM packs it. candle's
/// f16 matmul (the `gemm` crate's f16 kernel) ran at a third of the f32 rate.
fn sgemm_forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (n, k) = w.dims2()?;
    let m = x.elem_count() / k;
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    let bias = bias.map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
    let x2 = x.contiguous()?.reshape((m, k))?; // (..., k) -> (m, k)
    let y = x2.apply_op2_no_bwd(&w.contiguous()?, &LinearF32 { bias })?; // (m, n)
    y.reshape(out_dims) // (m, n) -> (..., n)
}

/// The custom op of [`sgemm_forward`]: x (m, k) times w (n, k)ᵀ plus bias -> (m, n), f32
/// or f16 (f32 inside).
struct LinearF32 {
    bias: Option<Vec<f32>>,
}

impl candle_core::CustomOp2 for LinearF32 {
    fn name(&self) -> &'static str {
        "pixart-linear-f32"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use crate::cpu::sgemm::{gemm, Bias, Lhs, Output, Rhs, KC, NR};
        use half::f16;
        use half::slice::HalfFloatSliceExt;
        /// Rows per task of the f16 conversions.
        const ROWS: usize = 64;
        let ((m, k), (n, kw)) = (xl.shape().dims2()?, wl.shape().dims2()?);
        if kw != k {
            candle_core::bail!("{}: x has {k} features, the weight {kw}", self.name());
        }
        let mut y = vec![0f32; m * n];
        let mut out = Output::new(&mut y, n);
        if let Some(b) = &self.bias {
            out.bias = Bias::Cols(b);
        }
        if let (CpuStorage::F16(_), CpuStorage::F16(_)) = (x, w) {
            let xs = crate::cpu::contiguous_data::<f16>(x, xl, "pixart-linear-f16: x")?;
            let ws = crate::cpu::contiguous_data::<f16>(w, wl, "pixart-linear-f16: w")?;
            let mut xf = vec![0f32; m * k];
            xf.par_chunks_mut(ROWS * k.max(1))
                .zip(xs.par_chunks(ROWS * k.max(1)))
                .for_each(|(d, s)| s.convert_to_f32_slice(d));
            // B = Wᵀ, panel by panel: row c0 + c of W widened, then written down column c.
            let panel = |dst: &mut [f32], p0: usize, kc: usize, c0: usize| {
                let mut row = [0f32; KC];
                for c in 0..NR {
                    if c0 + c < n {
                        ws[(c0 + c) * k + p0..(c0 + c) * k + p0 + kc].convert_to_f32_slice(&mut row[..kc]);
                        for (p, v) in row[..kc].iter().enumerate() {
                            dst[p * NR + c] = *v;
                        }
                    } else {
                        (0..kc).for_each(|p| dst[p * NR + c] = 0.0);
                    }
                }
            };
            let lhs = Lhs::rows(&xf, m, k, k).map_err(gemm_err)?;
            gemm(lhs, Rhs::Panels(&panel), n, out, true).map_err(gemm_err)?;
            drop(xf);
            let mut yh = vec![f16::ZERO; m * n];
            yh.par_chunks_mut(ROWS * n.max(1))
                .zip(y.par_chunks(ROWS * n.max(1)))
                .for_each(|(d, s)| d.convert_from_f32_slice(s));
            return Ok((CpuStorage::F16(yh), Shape::from((m, n))));
        }
        let xs = crate::cpu::contiguous_data::<f32>(x, xl, "pixart-linear-f32: x")?;
        let ws = crate::cpu::contiguous_data::<f32>(w, wl, "pixart-linear-f32: w")?;
        let lhs = Lhs::rows(xs, m, k, k).map_err(gemm_err)?;
        gemm(lhs, Rhs::Nk { w: ws, ld: k }, n, out, true).map_err(gemm_err)?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
}

/// `x·Wᵀ + b` on the native GEMM with the packed weight (n, k): x (..., k) bf16 -> (..., n).
fn packed_forward(x: &Tensor, prep: &Prepared, n: usize, k: usize) -> candle_core::Result<Tensor> {
    let m = x.elem_count() / k;
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    let x2 = x.contiguous()?.reshape((m, k))?; // (..., k) -> (m, k)
    let y = x2.apply_op1_no_bwd(&MatmulNt { prep })?; // (m, n)
    y.reshape(out_dims) // (m, n) -> (..., n)
}

/// `candle_nn::linear`: weight "weight" (out, in) and bias "bias" (out).
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    candle_nn::linear(in_dim, out_dim, vb).map(Linear::from)
}

/// `candle_nn::linear_no_bias`.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    candle_nn::linear_no_bias(in_dim, out_dim, vb).map(Linear::from)
}

/// `candle_nn::linear_b`: with or without a bias.
pub fn linear_b(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> candle_core::Result<Linear> {
    candle_nn::linear_b(in_dim, out_dim, bias, vb).map(Linear::from)
}

/// An inference-only bf16 linear layer that keeps only the packed weight: the candle weight
/// is dropped once packed, so the layer costs one copy of the weight instead of [`Linear`]'s
/// two (T5-XXL in bf16: 9.5 GB instead of 19). Its forward takes contiguous or strided bf16
/// CPU inputs that track no gradients and errors on anything else; build it with
/// [`PackedLinear::pack`], which declines (returns the candle layer back) where the native
/// path does not apply.
pub struct PackedLinear {
    prep: Prepared,
    /// (out, in)
    n: usize,
    k: usize,
}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedLinear")
            .field("out", &self.n)
            .field("in", &self.k)
            .finish()
    }
}

impl PackedLinear {
    /// Packs `lin` when its weight is a bf16 CPU matrix and the CPU has AVX512-BF16;
    /// otherwise gives `lin` back unchanged.
    pub fn pack(lin: candle_nn::Linear) -> candle_core::Result<std::result::Result<Self, candle_nn::Linear>> {
        let w = lin.weight();
        let fits = w.dtype() == DType::BF16
            && w.device().is_cpu()
            && w.rank() == 2
            && w.dims()[1] > 0
            && lin.bias().is_none_or(|b| b.dims() == [w.dims()[0]])
            && native_available();
        if !fits {
            return Ok(Err(lin));
        }
        let (n, k) = w.dims2()?;
        let l = Linear::from(lin);
        l.prepared()?;
        let Linear { inner, prepared } = l;
        drop(inner); // the candle weight goes here
        let prep = Arc::try_unwrap(prepared)
            .ok()
            .and_then(OnceLock::into_inner)
            .ok_or_else(|| candle_core::Error::Msg("packed linear: the packed weight is shared".into()))?;
        Ok(Ok(Self { prep, n, k }))
    }

    /// (out, in) features.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }
}

impl Module for PackedLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.dtype() != DType::BF16 || !x.device().is_cpu() || x.track_op() || x.dims().last() != Some(&self.k) {
            candle_core::bail!(
                "packed bf16 linear ({} -> {}): needs a bf16 CPU input without gradients, got {:?} {:?}",
                self.k,
                self.n,
                x.dtype(),
                x.dims()
            );
        }
        packed_forward(x, &self.prep, self.n, self.k)
    }
}

/// The custom op: x (m, k) bf16 times the packed weight (n, k)ᵀ plus bias -> (m, n) bf16.
struct MatmulNt<'a> {
    prep: &'a Prepared,
}

impl CustomOp1 for MatmulNt<'_> {
    fn name(&self) -> &'static str {
        "pixart-linear-bf16"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        if k.div_ceil(2) != self.prep.w.kpairs() {
            candle_core::bail!("pixart-linear-bf16: x has {k} features, the weight does not");
        }
        let xs = match (x, xl.contiguous_offsets()) {
            (CpuStorage::BF16(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("pixart-linear-bf16: x must be contiguous bf16"),
        };
        let y = matmul_nt_packed(xs, m, k, &self.prep.w, self.prep.bias.as_deref())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((CpuStorage::BF16(y), Shape::from((m, self.prep.w.cols()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    use pixart_core::testing::max_abs;

    /// With gradients (the training path): the flattened product and the row bias give
    /// candle_nn::Linear's values and gradients, with several partial column sums.
    #[test]
    fn tracked_linear_matches_candle_nn_with_gradients() {
        let dev = Device::Cpu;
        let (k, n) = (29, 53);
        let var = |t: Tensor| candle_core::Var::from_tensor(&t).unwrap();
        let x = var(Tensor::randn(0f32, 1.0, (4, 700, k), &dev).unwrap());
        let w = var(Tensor::randn(0f32, 0.1, (n, k), &dev).unwrap());
        let b = var(Tensor::randn(0f32, 1.0, n, &dev).unwrap());
        let probe = Tensor::randn(0f32, 1.0, (4, 700, n), &dev).unwrap();
        let ours = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let theirs = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let (y1, y2) = (ours.forward(&x).unwrap(), theirs.forward(&x).unwrap());
        assert!(max_abs(&(&y1 - &y2).unwrap()) < 1e-4);
        let g1 = (y1 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (y2 * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
            let (a, c) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
            assert_eq!(a.dims(), c.dims(), "{name}");
            let scale = max_abs(c).max(1.0);
            let d = max_abs(&(a - c).unwrap());
            assert!(d <= 1e-4 * scale, "gradient of {name} differs by {d} (scale {scale})");
        }
    }

    /// The native path against candle's f32 product of the same bf16 values, on shapes with
    /// leading batch dims and a non-contiguous input.
    #[test]
    fn linear_matches_candle_in_f32() {
        if !native_available() {
            eprintln!("no AVX512-BF16 here: the native path is not taken (the GEMM tests cover it)");
        }
        let dev = Device::Cpu;
        for (dims, n, bias) in [
            (vec![2usize, 37, 29], 53usize, true),
            (vec![3, 100], 1, false),
            (vec![2, 3, 5, 64], 130, true),
        ] {
            let k = *dims.last().unwrap();
            let x = Tensor::randn(0f32, 1.0, dims.as_slice(), &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            let w = Tensor::randn(0f32, 0.1, (n, k), &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            let lin = Linear::new(w.clone(), bias.then(|| b.clone()));
            let got = lin.forward(&x).unwrap().to_dtype(DType::F32).unwrap();
            let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = candle_nn::Linear::new(f(&w), bias.then(|| f(&b)))
                .forward(&f(&x))
                .unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = max_abs(&(&got - &want).unwrap());
            let scale = max_abs(&want);
            // One bf16 rounding of the output (2^-8 relative) on values up to `scale`.
            assert!(
                diff <= scale * 2f32.powi(-8),
                "{dims:?}x{n}: max diff {diff} (scale {scale})"
            );
        }
        // A transposed (non-contiguous) input takes the same path after a copy.
        let x = Tensor::randn(0f32, 1.0, (16, 8), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
            .t()
            .unwrap();
        let w = Tensor::randn(0f32, 0.1, (5, 16), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let got = Linear::new(w.clone(), None).forward(&x).unwrap();
        let want = candle_nn::Linear::new(w, None)
            .forward(&x.contiguous().unwrap())
            .unwrap();
        assert_eq!(got.dims(), [8, 5]);
        let d = max_abs(&(got.to_dtype(DType::F32).unwrap() - want.to_dtype(DType::F32).unwrap()).unwrap());
        assert!(d < 0.05, "transposed input: {d}");
    }

    /// The f32 path (sgemm, weight read in place) against candle's f32 Linear, and candle's
    /// path (with gradients) when the weight is a variable.
    #[test]
    #[cfg_attr(no_avx512, ignore = "no AVX-512: f16 takes candle's path, tested by candle")]
    fn f16_linear_is_the_f32_product_rounded_once() {
        assert!(
            crate::cpu::sgemm::native_available(),
            "the native f32 GEMM is off (no AVX-512, or PIXART_GEMM=fallback)"
        );
        let dev = Device::Cpu;
        // k past one 384-deep block, n off the 48-column panels, a strided x.
        for (dims, n, bias) in [
            (vec![2usize, 37, 700], 53usize, true),
            (vec![3, 100], 1, false),
            (vec![2, 3, 5, 64], 300, true),
        ] {
            let k = *dims.last().unwrap();
            let h = |t: Tensor| t.to_dtype(DType::F16).unwrap();
            let x = h(Tensor::randn(0f32, 1.0, dims.as_slice(), &dev).unwrap());
            let w = h(Tensor::randn(0f32, 0.1, (n, k), &dev).unwrap());
            let b = h(Tensor::randn(0f32, 1.0, n, &dev).unwrap());
            let got = Linear::new(w.clone(), bias.then(|| b.clone())).forward(&x).unwrap();
            assert_eq!(got.dtype(), DType::F16);
            let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = candle_nn::Linear::new(f(&w), bias.then(|| f(&b)))
                .forward(&f(&x))
                .unwrap();
            let want = f(&h(want));
            assert_eq!(got.dims(), want.dims());
            // At most one f16 rounding step apart (the f32 sums may differ in their last bits).
            let diff = max_abs(&(&f(&got) - &want).unwrap());
            assert!(diff <= 1e-3 * max_abs(&want).max(1.0), "{dims:?}x{n}: {diff}");
        }
        let x = Tensor::randn(0f32, 1.0, (16, 8), &dev)
            .unwrap()
            .t()
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let w = Tensor::randn(0f32, 0.1, (5, 16), &dev)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let got = Linear::new(w.clone(), None).forward(&x).unwrap();
        let want = x
            .to_dtype(DType::F32)
            .unwrap()
            .matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap())
            .unwrap();
        let diff = max_abs(&(&got.to_dtype(DType::F32).unwrap() - &want).unwrap());
        assert!(diff <= 1e-3 * max_abs(&want).max(1.0), "strided: {diff}");
    }

    #[test]
    fn f32_linear_matches_candle_and_keeps_gradients() {
        let dev = Device::Cpu;
        for (dims, n, bias) in [
            (vec![2usize, 37, 29], 53usize, true),
            (vec![3, 100], 1, false),
            (vec![2, 3, 5, 64], 300, true),
        ] {
            let k = *dims.last().unwrap();
            let x = Tensor::randn(0f32, 1.0, dims.as_slice(), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.1, (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let got = Linear::new(w.clone(), bias.then(|| b.clone())).forward(&x).unwrap();
            let want = candle_nn::Linear::new(w, bias.then_some(b)).forward(&x).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = max_abs(&(&got - &want).unwrap());
            assert!(diff <= 1e-5 * max_abs(&want).max(1.0), "{dims:?}x{n}: {diff}");
        }
        let x = Tensor::randn(0f32, 1.0, (16, 8), &dev).unwrap().t().unwrap(); // strided
        let w = candle_core::Var::randn(0f32, 0.1, (5, 16), &dev).unwrap();
        let lin = Linear::new(w.as_tensor().clone(), None);
        let y = lin.forward(&x).unwrap();
        let want = x.contiguous().unwrap().matmul(&w.as_tensor().t().unwrap()).unwrap();
        assert!(max_abs(&(&y - &want).unwrap()) < 1e-5);
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(w.as_tensor()).is_some(), "no gradient through the f32 Linear");
    }

    /// The packed-only layer gives the same bits as `Linear`'s native path, declines where
    /// that path does not apply, and refuses inputs it cannot take.
    #[test]
    fn packed_linear_equals_linear_and_declines_f32() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.1, (24, 40), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 7, 40), &dev).unwrap();
        // f32 weights are never packed.
        assert!(PackedLinear::pack(candle_nn::Linear::new(w.clone(), None))
            .unwrap()
            .is_err());
        let (wb, xb) = (w.to_dtype(DType::BF16).unwrap(), x.to_dtype(DType::BF16).unwrap());
        match PackedLinear::pack(candle_nn::Linear::new(wb.clone(), None)).unwrap() {
            Err(_) => assert!(!native_available(), "declined although AVX512-BF16 is here"),
            Ok(p) => {
                assert_eq!(p.dims(), (24, 40));
                let got = p.forward(&xb).unwrap();
                let want = Linear::new(wb, None).forward(&xb).unwrap();
                assert_eq!(got.dims(), [3, 7, 24]);
                let diff = max_abs(&(got.to_dtype(DType::F32).unwrap() - want.to_dtype(DType::F32).unwrap()).unwrap());
                assert_eq!(diff, 0.0);
                assert!(p.forward(&x).is_err(), "an f32 input must be refused");
            }
        }
    }
}
