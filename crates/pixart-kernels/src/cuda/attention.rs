//! Fused attention on the GPU: `cuda/flash_attention.cu` (FlashAttention-2's design on
//! `mma.sync` tensor-core instructions: online softmax with the scores, probabilities and output
//! in registers, never in device memory) for bf16 and f16 inference with a head dim up to 128.
//!
//! candle has no fused attention that builds here, so the CUDA path used to be query-chunked
//! `matmul → softmax → matmul` with the scores materialised; on an H100 that ran at about
//! 470 GB/s of score traffic and made the 1024 px forward 8.9× slower than diffusers' SDPA
//! (docs/performance.md).
use candle_core::{DType, Tensor};
use std::sync::OnceLock;

/// Whether [`flash_attention`] serves a query tensor of this kind: a CUDA build, a CUDA tensor in
/// bf16 or f16 that no gradient tracks, a head dim ≤ 128, and the project's kernels switched on.
pub fn applies(q: &Tensor, head_dim: usize) -> bool {
    super::usable(q) && matches!(q.dtype(), DType::BF16 | DType::F16) && (1..=128).contains(&head_dim)
}

/// softmax(scale · q·kᵀ) · v over each batch row's first `kv_lens[i]` keys (all when `None`).
/// q: (b, h, n, d), k and v: (b, h, m, d), any strides with a contiguous last dim (e.g. the
/// (b, n, h, d) projections transposed); returns (b, n, h, d), contiguous. Each warp of the
/// kernel owns [`rows_per_warp`] queries, and the K/V prefetch is on when [`pipelined`] says so.
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    kv_lens: Option<&[usize]>,
) -> candle_core::Result<Tensor> {
    flash_attention_variant(q, k, v, scale, kv_lens, rows_per_warp(), pipelined())
}

/// [`flash_attention`] with a chosen kernel variant, for timing them all: `rows` (16 or 32)
/// queries per warp, i.e. `pixart_flash_attention_<type>_d<DP>` (16: 64 queries per block) or
/// `..._q32` (32: 128 per block, each K/V fragment read from shared memory feeding two m16
/// tiles); `pipeline`: the `..._pipe` kernel of that variant, which copies the next 64-key K/V
/// block into a second shared-memory buffer with `cp.async` while it computes on the current one
/// (1.5× the shared memory: 102 KiB per block at head dim 128 and 32 rows). Where 16-byte copies
/// do not apply (a head dim or stride not a multiple of 8 elements, a misaligned view), the
/// pipelined kernel copies element-wise and synchronously: correct, but nothing is overlapped.
pub fn flash_attention_variant(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    kv_lens: Option<&[usize]>,
    rows: usize,
    pipeline: bool,
) -> candle_core::Result<Tensor> {
    if rows != 16 && rows != 32 {
        candle_core::bail!("flash attention: {rows} queries per warp, not 16 or 32");
    }
    if !(scale > 0.0 && scale.is_finite()) {
        // The kernel keeps the row max of the unscaled scores, which needs scale > 0.
        candle_core::bail!("flash attention: scale {scale} is not a positive number");
    }
    let kv_lens = kv_lens.map(|l| {
        l.iter()
            .map(|&x| i32::try_from(x).unwrap_or(i32::MAX))
            .collect::<Vec<_>>()
    });
    q.apply_op3_no_bwd(
        k,
        v,
        &FlashAttention {
            scale: scale as f32,
            kv_lens,
            m_tiles: rows / 16,
            pipeline,
        },
    )
}

/// Queries per warp of the attention kernel: `PIXART_FA_ROWS` (16 or 32, read once per process),
/// 32 by default.
pub fn rows_per_warp() -> usize {
    static ROWS: OnceLock<usize> = OnceLock::new();
    *ROWS.get_or_init(|| super::env_choice("PIXART_FA_ROWS", 32, &[("16", 16), ("32", 32)]))
}

/// Whether the attention kernel prefetches K/V blocks with `cp.async` (the `..._pipe` kernels):
/// `PIXART_FA_PIPELINE` (0 or 1, read once per process), on by default: the fastest variant on
/// an H100 (2026-11-27: 0.73 against 1.16 ms at 1024 px, 11.1 against 14.9 ms at 2048 px).
pub fn pipelined() -> bool {
    static PIPE: OnceLock<bool> = OnceLock::new();
    *PIPE.get_or_init(|| super::env_choice("PIXART_FA_PIPELINE", true, &[("0", false), ("1", true)]))
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct FlashAttention {
    scale: f32,
    kv_lens: Option<Vec<i32>>,
    /// m16 tiles of queries per warp (MT of the kernel): 1 or 2.
    m_tiles: usize,
    /// The `_pipe` kernel (cp.async double buffering of K and V).
    pipeline: bool,
}

super::cuda_only_op3!(FlashAttention, "pixart-flash-attention", gpu::forward);

#[cfg(feature = "cuda")]
mod gpu {
    use super::FlashAttention;
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice, WrapErr};
    use candle_core::{CudaStorage, Layout, Shape};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/flash_attention.ptx"));

    /// `pixart_fa::Params` of cuda/flash_attention.cu, field for field.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    struct Params {
        q: u64,
        k: u64,
        v: u64,
        out: u64,
        kv_lens: u64,
        heads: i32,
        n: i32,
        m: i32,
        d: i32,
        q_sb: i64,
        q_sh: i64,
        q_sn: i64,
        k_sb: i64,
        k_sh: i64,
        k_sn: i64,
        v_sb: i64,
        v_sh: i64,
        v_sn: i64,
        o_sb: i64,
        o_sh: i64,
        o_sn: i64,
        scale_log2: f32,
        vec8: i32,
    }
    // SAFETY: plain-old-data with the C layout of the kernel's parameter struct.
    unsafe impl DeviceRepr for Params {}

    /// Queries per block for `m_tiles` m16 tiles per warp (`pixart_fa::block_queries`): 4 warps.
    fn block_queries(m_tiles: usize) -> usize {
        16 * m_tiles * 4
    }

    /// Bytes of dynamic shared memory (`pixart_fa::smem_bytes`): the Q tile (block_queries rows)
    /// and the K and V tiles (64 rows each; two of each when pipelined), rows of DP + 8 elements.
    fn smem_bytes(dp: usize, elem: usize, m_tiles: usize, pipeline: bool) -> usize {
        let kv_tiles = if pipeline { 4 } else { 2 };
        (block_queries(m_tiles) + kv_tiles * 64) * (dp + 8) * elem
    }

    /// (batch, head, row) element strides of a 4-D layout whose last dim is contiguous.
    fn strides(l: &Layout, what: &str) -> candle_core::Result<[i64; 3]> {
        let s = l.stride();
        if l.dims()[3] > 1 && s[3] != 1 {
            candle_core::bail!("flash attention: the last dim of {what} must be contiguous");
        }
        Ok([s[0] as i64, s[1] as i64, s[2] as i64])
    }

    pub(super) fn forward(
        op: &FlashAttention,
        qs: &CudaStorage,
        ql: &Layout,
        ks: &CudaStorage,
        kl: &Layout,
        vs: &CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, h, n, d) = ql.shape().dims4()?;
        let (kb, kh, m, kd) = kl.shape().dims4()?;
        if (kb, kh, kd) != (b, h, d) || vl.dims() != kl.dims() {
            candle_core::bail!(
                "flash attention: q {:?}, k {:?} and v {:?} do not match",
                ql.dims(),
                kl.dims(),
                vl.dims()
            );
        }
        if !(1..=128).contains(&d) || h > 65_535 || b > 65_535 || n > i32::MAX as usize || m > i32::MAX as usize {
            candle_core::bail!(
                "flash attention: shape {:?} / {:?} out of the kernel's range",
                ql.dims(),
                kl.dims()
            );
        }
        if let Some(lens) = &op.kv_lens {
            if lens.len() != b {
                candle_core::bail!("flash attention: {} key lengths for a batch of {b}", lens.len());
            }
        }
        let dev = qs.device.clone();
        let shape = Shape::from((b, n, h, d));
        let args = Args {
            op,
            dims: (b, h, n, m, d),
            layouts: [ql, kl, vl],
        };
        let slice = match (&qs.slice, &ks.slice, &vs.slice) {
            (CudaStorageSlice::BF16(q), CudaStorageSlice::BF16(k), CudaStorageSlice::BF16(v)) => {
                CudaStorageSlice::BF16(args.launch(&dev, q, k, v, "bf16")?)
            }
            (CudaStorageSlice::F16(q), CudaStorageSlice::F16(k), CudaStorageSlice::F16(v)) => {
                CudaStorageSlice::F16(args.launch(&dev, q, k, v, "f16")?)
            }
            _ => candle_core::bail!("flash attention: q, k and v must all be bf16 or all f16"),
        };
        Ok((CudaStorage { slice, device: dev }, shape))
    }

    struct Args<'a> {
        op: &'a FlashAttention,
        dims: (usize, usize, usize, usize, usize),
        layouts: [&'a Layout; 3],
    }

    impl Args<'_> {
        fn launch<T: DeviceRepr>(
            &self,
            dev: &CudaDevice,
            q: &CudaSlice<T>,
            k: &CudaSlice<T>,
            v: &CudaSlice<T>,
            dtype: &str,
        ) -> candle_core::Result<CudaSlice<T>> {
            let (b, h, n, m, d) = self.dims;
            let [ql, kl, vl] = self.layouts;
            let elem = std::mem::size_of::<T>();
            // SAFETY: every element is written by the kernel (rows < n, columns < d).
            let out = unsafe { dev.alloc::<T>(b * n * h * d)? };
            if b * n * h * d == 0 {
                return Ok(out);
            }
            let lens = match &self.op.kv_lens {
                Some(l) => Some(dev.clone_htod(l.as_slice())?),
                None => None,
            };
            // The pointer guards end before `out` is returned.
            {
                let stream = dev.cuda_stream();
                let (qp, _q) = q.device_ptr(&stream);
                let (kp, _k) = k.device_ptr(&stream);
                let (vp, _v) = v.device_ptr(&stream);
                let (op, _o) = out.device_ptr(&stream);
                let (lp, _l) = match &lens {
                    Some(l) => {
                        let (p, g) = l.device_ptr(&stream);
                        (p, Some(g))
                    }
                    None => (0, None),
                };
                let at = |p: u64, l: &Layout| p + (l.start_offset() * elem) as u64;
                let [q_sb, q_sh, q_sn] = strides(ql, "q")?;
                let [k_sb, k_sh, k_sn] = strides(kl, "k")?;
                let [v_sb, v_sh, v_sn] = strides(vl, "v")?;
                let mut params = Params {
                    q: at(qp, ql),
                    k: at(kp, kl),
                    v: at(vp, vl),
                    out: op,
                    kv_lens: lp,
                    heads: h as i32,
                    n: n as i32,
                    m: m as i32,
                    d: d as i32,
                    q_sb,
                    q_sh,
                    q_sn,
                    k_sb,
                    k_sh,
                    k_sn,
                    v_sb,
                    v_sh,
                    v_sn,
                    // out: (b, n, h, d), contiguous
                    o_sb: (n * h * d) as i64,
                    o_sh: d as i64,
                    o_sn: (h * d) as i64,
                    scale_log2: self.op.scale * std::f32::consts::LOG2_E,
                    vec8: 0,
                };
                // 16-byte tile copies when every row of q, k and v starts 16-byte aligned.
                let rows_aligned = |p: u64, s: [i64; 3]| p % 16 == 0 && s.iter().all(|x| x % 8 == 0);
                params.vec8 = i32::from(
                    d % 8 == 0
                        && elem == 2
                        && rows_aligned(params.q, [q_sb, q_sh, q_sn])
                        && rows_aligned(params.k, [k_sb, k_sh, k_sn])
                        && rows_aligned(params.v, [v_sb, v_sh, v_sn]),
                );
                let dp = d.div_ceil(16) * 16;
                let mt = self.op.m_tiles;
                let smem = smem_bytes(dp, elem, mt, self.op.pipeline);
                let variant = if mt == 2 { "_q32" } else { "" };
                let pipe = if self.op.pipeline { "_pipe" } else { "" };
                let kernel = format!("pixart_flash_attention_{dtype}_d{dp}{variant}{pipe}");
                let func = dev.get_or_load_custom_func(&kernel, "pixart_flash_attention", PTX)?;
                func.set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .w()?;
                let cfg = LaunchConfig {
                    grid_dim: (n.div_ceil(block_queries(mt)) as u32, h as u32, b as u32),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: smem as u32,
                };
                let mut builder = func.builder();
                builder.arg(&params);
                // SAFETY: the pointers and strides describe live device buffers of the shapes checked
                // above; the kernel reads q, k, v (and kv_lens) and writes `out` only.
                unsafe { builder.launch(cfg) }.w()?;
            }
            Ok(out)
        }
    }
}
