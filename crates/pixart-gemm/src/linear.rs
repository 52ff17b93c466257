//! A drop-in for `candle_nn::Linear` (same weight names, same `forward`) that runs bf16 inputs
//! on the CPU through the native GEMM in [`crate::bf16`] and f32 inputs through the AVX-512
//! f32 GEMM in [`crate::sgemm`] (reading the weight in place: no second copy), with the bias
//! fused into the epilogue, and everything else (other dtypes and devices, CPUs without
//! AVX-512, anything tracking gradients) through candle.
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Shape, Tensor};
use candle_nn::VarBuilder;
use half::bf16;

use crate::bf16::{matmul_nt_packed, native_available, PackedB};

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

    /// Whether `x` takes a native path in `dtype` (bf16 or f32): not when anything needs
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
                DType::F32 => crate::sgemm::native_available(),
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
        if self.native_for(x, DType::F32) {
            return f32_forward(x, self.weight(), self.bias());
        }
        if !self.native_for(x, DType::BF16) {
            return self.inner.forward(x);
        }
        let (n, k) = self.weight().dims2()?;
        packed_forward(x, self.prepared()?, n, k)
    }
}

/// `x·Wᵀ + b` in f32 on [`crate::sgemm`], the weight (n, k) read in place.
fn f32_forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (n, k) = w.dims2()?;
    let m = x.elem_count() / k;
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    let x2 = x.contiguous()?.reshape((m, k))?; // (..., k) -> (m, k)
    let y = x2.apply_op2_no_bwd(&w.contiguous()?, &LinearF32 { bias })?; // (m, n)
    y.reshape(out_dims) // (m, n) -> (..., n)
}

/// The f32 custom op: x (m, k) times w (n, k)ᵀ plus bias -> (m, n).
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
        use crate::sgemm::{gemm, Bias, Lhs, Output, Rhs};
        let ((m, k), (n, kw)) = (xl.shape().dims2()?, wl.shape().dims2()?);
        let xs = crate::contiguous_data::<f32>(x, xl, "pixart-linear-f32: x")?;
        let ws = crate::contiguous_data::<f32>(w, wl, "pixart-linear-f32: w")?;
        if kw != k {
            candle_core::bail!("pixart-linear-f32: x has {k} features, the weight {kw}");
        }
        let mut y = vec![0f32; m * n];
        let mut out = Output::new(&mut y, n);
        if let Some(b) = &self.bias {
            out.bias = Bias::Cols(b);
        }
        let gerr = |e: crate::bf16::GemmError| candle_core::Error::Msg(e.to_string());
        gemm(
            Lhs::rows(xs, m, k, k).map_err(gerr)?,
            Rhs::Nk { w: ws, ld: k },
            n,
            out,
            true,
        )
        .map_err(gerr)?;
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
