//! `x·Wᵀ + b` (and `GELU(x·Wᵀ + b)`) in one cuBLASLt call on the GPU, with the bias and the
//! activation in the GEMM's epilogue.
//!
//! candle's path is a cuBLAS GEMM, then the bias as a broadcast add (candle's strided binary
//! kernel), then GELU as a third kernel: two extra passes over the output through device memory,
//! the broadcast one slow. On an H100 (2026-11-27, `bench transformer --profile`, 1024 px bf16)
//! the MLP's up projection took 1.05 ms a call for an 87 GFLOP product, the down projection of the
//! same size 0.32 ms: the difference is the bias add over the 4× wider output. cuBLASLt's
//! `CUBLASLT_EPILOGUE_BIAS` / `_GELU_BIAS` apply both while the tile is still in registers
//! (cuBLAS documentation, "cublasLtEpilogue_t"). Its GELU is the tanh approximation, PixArt's
//! `GELU(approximate="tanh")`: PyTorch's decomposition of `_addmm_activation(use_gelu=True)`, the
//! op that runs this epilogue, is `gelu(approximate="tanh")` on CUDA (torch 2.15,
//! `torch/_decomp/decompositions.py`); `cuda_kernels_check` compares it with both formulas on the
//! GPU.
//!
//! bf16 and f16 only: an f32 matmul through cuBLASLt would run in TF32 (cudarc's f32 compute type),
//! which is not the f32 the golden tests hold the GPU to.
use candle_core::{DType, Tensor};

/// Whether [`linear`] serves x (..., k) with the weight w (n, k) and bias (n): a CUDA build, a
/// bf16/f16 CUDA tensor without gradients, the kernels on, every operand contiguous and starting
/// at its allocation (cuBLASLt's heuristics assume 256-byte aligned pointers).
pub fn applies(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> bool {
    let ok =
        |t: &Tensor| t.dtype() == x.dtype() && !t.track_op() && t.is_contiguous() && t.layout().start_offset() == 0;
    let Ok((_, k)) = w.dims2() else {
        return false;
    };
    super::usable(x)
        && matches!(x.dtype(), DType::BF16 | DType::F16)
        && x.dims().last() == Some(&k)
        && x.rank() >= 2
        && ok(x)
        && ok(w)
        && bias.is_none_or(|b| ok(b) && b.dims() == [w.dim(0).unwrap_or(0)])
}

/// `x·Wᵀ + b`, then GELU (tanh) when `gelu`: x (..., k), w (n, k), bias (n) -> (..., n).
/// Callers check [`applies`] first.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, gelu: bool) -> candle_core::Result<Tensor> {
    x.apply_op2_no_bwd(
        w,
        &LtLinear {
            bias: bias.cloned(),
            gelu,
        },
    )
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct LtLinear {
    bias: Option<Tensor>,
    gelu: bool,
}

super::cuda_only_op2!(LtLinear, "pixart-linear-cublaslt", gpu::forward);

#[cfg(feature = "cuda")]
mod gpu {
    use super::LtLinear;
    use candle_core::cuda_backend::cudarc::cublaslt::{Activation, CudaBlasLT, Matmul, MatmulConfig};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
    use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice};
    use candle_core::{CudaStorage, Layout, Shape, Storage};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    /// One cuBLASLt handle (and its 32 MiB workspace) per device, made on first use.
    fn handle(dev: &CudaDevice) -> candle_core::Result<Arc<CudaBlasLT>> {
        static HANDLES: OnceLock<Mutex<HashMap<candle_core::cuda_backend::DeviceId, Arc<CudaBlasLT>>>> =
            OnceLock::new();
        let mut map = HANDLES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(h) = map.get(&dev.id()) {
            return Ok(h.clone());
        }
        let h = Arc::new(
            CudaBlasLT::new(dev.cuda_stream())
                .map_err(|e| candle_core::Error::Msg(format!("cuBLASLt handle: {e:?}")))?,
        );
        map.insert(dev.id(), h.clone());
        Ok(h)
    }

    pub(super) fn forward(
        op: &LtLinear,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (n, k) = wl.shape().dims2()?;
        let dims = xl.dims();
        if dims.last() != Some(&k) || !xl.is_contiguous() || !wl.is_contiguous() {
            candle_core::bail!("cuBLASLt linear: x {dims:?} and weight ({n}, {k}) must be contiguous with k last");
        }
        let m = xl.shape().elem_count() / k.max(1);
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = n; // (..., k) -> (..., n)
        }
        let bias_guard = op.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &bias_guard {
            Some((s, l)) => match &**s {
                Storage::Cuda(s) => Some((s, *l)),
                _ => candle_core::bail!("cuBLASLt linear: the bias is not on the GPU"),
            },
            None => None,
        };
        let dev = &x.device;
        let lt = handle(dev)?;
        // Row-major Y (m, n) = X (m, k) · Wᵀ is column-major Yᵀ (n, m) = op(W) · X with W, stored
        // column-major as (k, n), transposed: cuBLASLt's C (rows n, cols m, ld n).
        let cfg = MatmulConfig {
            transa: true,
            transb: false,
            transc: false,
            m: n as u64,
            n: m as u64,
            k: k as u64,
            alpha: 1.0,
            lda: k as i64,
            ldb: k as i64,
            beta: 0.0,
            ldc: n as i64,
            stride_a: None,
            stride_b: None,
            stride_c: None,
            stride_bias: None,
            batch_size: None,
        };
        let act = op.gelu.then_some(Activation::Gelu);
        fn run<T: DeviceRepr>(
            lt: &CudaBlasLT,
            dev: &CudaDevice,
            cfg: MatmulConfig,
            [x, w]: [(&CudaSlice<T>, &Layout); 2],
            bias: Option<(&CudaSlice<T>, &Layout)>,
            act: Option<&Activation>,
        ) -> candle_core::Result<CudaSlice<T>>
        where
            CudaBlasLT: Matmul<T>,
        {
            fn view<'a, T>((s, l): (&'a CudaSlice<T>, &Layout)) -> CudaView<'a, T> {
                s.slice(l.start_offset()..)
            }
            // SAFETY: cuBLASLt writes every element of the m × n output (beta = 0).
            let mut out = unsafe { dev.alloc::<T>((cfg.m * cfg.n) as usize)? };
            if cfg.m * cfg.n == 0 {
                return Ok(out);
            }
            let bias = bias.map(view);
            // SAFETY: the shapes in cfg are those of the contiguous operands checked above.
            unsafe { lt.matmul(cfg, &view(w), &view(x), &mut out, bias.as_ref(), act) }
                .map_err(|e| candle_core::Error::Msg(format!("cuBLASLt matmul: {e:?}")))?;
            Ok(out)
        }
        let slice = match (&x.slice, &w.slice, bias.map(|(b, l)| (&b.slice, l))) {
            (CudaStorageSlice::BF16(xs), CudaStorageSlice::BF16(ws), bias) => {
                let bias = match bias {
                    Some((CudaStorageSlice::BF16(b), l)) => Some((b, l)),
                    None => None,
                    _ => candle_core::bail!("cuBLASLt linear: the bias must have x's dtype"),
                };
                CudaStorageSlice::BF16(run(&lt, dev, cfg, [(xs, xl), (ws, wl)], bias, act.as_ref())?)
            }
            (CudaStorageSlice::F16(xs), CudaStorageSlice::F16(ws), bias) => {
                let bias = match bias {
                    Some((CudaStorageSlice::F16(b), l)) => Some((b, l)),
                    None => None,
                    _ => candle_core::bail!("cuBLASLt linear: the bias must have x's dtype"),
                };
                CudaStorageSlice::F16(run(&lt, dev, cfg, [(xs, xl), (ws, wl)], bias, act.as_ref())?)
            }
            _ => candle_core::bail!("cuBLASLt linear: x and the weight must both be bf16 or both f16"),
        };
        Ok((
            CudaStorage {
                slice,
                device: dev.clone(),
            },
            Shape::from(out_dims),
        ))
    }
}
