//! LayerNorm + adaLN modulation and the gated residual, one CUDA kernel each
//! (`cuda/fused_ops.cu`): the GPU counterparts of the CPU's fused passes in
//! [`crate::ops::layer_norm_modulate`] and [`crate::ops::add_gated`], which call these on a GPU.
//! Composed from candle ops the norm and modulation were about a dozen kernels over the
//! activations (a cast to f32, two means, the centring, the division, the cast back, then the
//! modulation), each a full pass through device memory.
//!
//! Also the depthwise conv of PixArt-Σ's KV token compression ([`kv_conv`]), which composed was
//! a broadcast multiply and two strided sums over the keys or values.
use candle_core::Tensor;

/// Whether the fused kernels serve x (b, n, c) with per-batch vectors `mods` (each (b, 1, c)).
pub fn applies(x: &Tensor, mods: &[&Tensor]) -> bool {
    let Ok((b, _, c)) = x.dims3() else {
        return false;
    };
    super::usable(x)
        && matches!(
            x.dtype(),
            candle_core::DType::F32 | candle_core::DType::BF16 | candle_core::DType::F16
        )
        && mods
            .iter()
            .all(|m| !m.track_op() && m.dtype() == x.dtype() && m.dims() == [b, 1, c])
}

/// A (b, 1, c) vector whose channels are contiguous, as a view when it already is one.
fn channels_contiguous(m: &Tensor) -> candle_core::Result<Tensor> {
    if m.dim(2)? > 1 && m.stride()[2] != 1 {
        m.contiguous()
    } else {
        Ok(m.clone())
    }
}

/// `LayerNorm(x) · (1 + scale) + shift` (no affine, f32 statistics, one rounding).
/// x: (b, n, c); shift, scale: (b, 1, c), e.g. views into the block's (b, 6, c) modulation.
pub fn layer_norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let (mut shift, mut scale) = (channels_contiguous(shift)?, channels_contiguous(scale)?);
    // The kernel takes one batch stride for both.
    if shift.dim(0)? > 1 && shift.stride()[0] != scale.stride()[0] {
        (shift, scale) = (shift.contiguous()?, scale.contiguous()?);
    }
    x.contiguous()?
        .apply_op3_no_bwd(&shift, &scale, &LnModulate { eps: eps as f32 })
}

/// `x + y · gate` (f32 arithmetic, one rounding). x, y: (b, n, c); gate: (b, 1, c).
pub fn add_gated(x: &Tensor, y: &Tensor, gate: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3_no_bwd(&y.contiguous()?, &channels_contiguous(gate)?, &AddGated)
}

/// Elements before the bias part of [`scale_rows`]'s output: the weights' count rounded up to
/// 128 elements, so that the bias view starts 256-byte aligned, as cuBLASLt's bias pointer wants.
fn bias_offset(weights: usize) -> usize {
    weights.div_ceil(128) * 128
}

/// The weights and bias of an output projection scaled per batch row and output channel by a
/// gate: w (rows, cols), gate (b, 1, rows), bias (rows) -> (w ⊙ gate (b, rows, cols),
/// bias ⊙ gate (b, rows)), f32 products, one rounding; one kernel. With them the gated residual
/// `x + gate ⊙ (y·Wᵀ + b)` is one batched GEMM with x in its epilogue
/// ([`super::linear_residual`]). All three of one dtype, on the GPU.
pub fn scale_rows(w: &Tensor, gate: &Tensor, bias: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let (rows, cols) = w.dims2()?;
    let (b, _, _) = gate.dims3()?;
    let flat = w
        .contiguous()?
        .apply_op3_no_bwd(&channels_contiguous(gate)?, &bias.contiguous()?, &ScaleRows)?;
    let weights = b * rows * cols;
    Ok((
        flat.narrow(0, 0, weights)?.reshape((b, rows, cols))?, // (b, rows, cols)
        flat.narrow(0, bias_offset(weights), b * rows)?.reshape((b, rows))?, // (b, rows)
    ))
}

/// Whether [`kv_conv`] serves x (b, n, c) with this weight and bias: a CUDA tensor, all three
/// f32, bf16 or f16 alike, none tracking gradients.
pub fn kv_conv_applies(x: &Tensor, weight: &Tensor, bias: &Tensor) -> bool {
    x.dims3().is_ok()
        && super::usable(x)
        && matches!(
            x.dtype(),
            candle_core::DType::F32 | candle_core::DType::BF16 | candle_core::DType::F16
        )
        && [weight, bias].iter().all(|t| !t.track_op() && t.dtype() == x.dtype())
}

/// The depthwise r×r, stride-r conv of KV token compression (PixArt-Σ, arXiv 2403.04692), one
/// kernel: x (b, h·w, c) tokens on an (h, w) grid -> (b, (h/r)·(w/r), c), f32 accumulation, one
/// rounding. The rows and columns of a grid that r does not divide are dropped (not read).
/// weight: r·r·c elements laid out (ky, kx, c), e.g. the (1, 1, r, 1, r, c) tensor of
/// [`crate::cpu::attention::KvCompress`]; bias: c elements.
pub fn kv_conv(
    x: &Tensor,
    h: usize,
    w: usize,
    r: usize,
    weight: &Tensor,
    bias: &Tensor,
) -> candle_core::Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    if n != h * w || r == 0 || h / r == 0 || w / r == 0 {
        candle_core::bail!("kv_conv: {n} tokens, a {h}x{w} grid, ratio {r}");
    }
    if weight.elem_count() != r * r * c || bias.elem_count() != c {
        candle_core::bail!(
            "kv_conv: weight {:?} and bias {:?} for {c} channels at ratio {r}",
            weight.dims(),
            bias.dims()
        );
    }
    // The kernel reads x as (b, h, w, c) and writes (b, h/r, w/r, c).
    let x = x.contiguous()?.reshape((b, h, w, c))?;
    let weight = weight.contiguous()?.reshape((r, r, c))?;
    let bias = bias.contiguous()?.reshape(c)?;
    x.apply_op3_no_bwd(&weight, &bias, &KvConv)?
        .reshape((b, (h / r) * (w / r), c)) // (b, n', c)
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct LnModulate {
    eps: f32,
}

struct AddGated;

struct KvConv;

struct ScaleRows;

super::cuda_only_op3!(LnModulate, "pixart-ln-modulate", gpu::ln_modulate);
super::cuda_only_op3!(AddGated, "pixart-add-gated", gpu::add_gated);
super::cuda_only_op3!(KvConv, "pixart-kv-conv", gpu::kv_conv);
super::cuda_only_op3!(ScaleRows, "pixart-scale-rows", gpu::scale_rows);

#[cfg(feature = "cuda")]
mod gpu {
    use super::{AddGated, KvConv, LnModulate, ScaleRows};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice, WrapErr};
    use candle_core::{CudaStorage, Layout, Shape};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused_ops.ptx"));
    const MODULE: &str = "pixart_fused_ops";
    const THREADS: u32 = 256;

    /// (b, n, c) of a contiguous x and the batch stride of a (b, 1, c) vector with contiguous
    /// channels.
    fn dims(xl: &Layout, ml: &Layout, what: &str) -> candle_core::Result<(usize, usize, usize, i64)> {
        let (b, n, c) = xl.shape().dims3()?;
        if !xl.is_contiguous() {
            candle_core::bail!("{what}: x must be contiguous");
        }
        if ml.dims() != [b, 1, c] || (c > 1 && ml.stride()[2] != 1) {
            candle_core::bail!("{what}: a modulation of {:?} for x {:?}", ml.dims(), xl.dims());
        }
        Ok((b, n, c, ml.stride()[0] as i64))
    }

    /// Runs `<kernel>_<dtype>` over three same-typed inputs on `blocks` blocks of THREADS threads;
    /// the kernel's parameters are the three input views, the output (`shape`, contiguous) and
    /// `scalars`.
    fn run3(
        [a, b, c]: [&CudaStorage; 3],
        [al, bl, cl]: [&Layout; 3],
        shape: &Shape,
        kernel: &str,
        blocks: u32,
        scalars: &[&dyn Scalar],
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let cfg = LaunchConfig {
            grid_dim: (blocks.max(1), 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        #[allow(clippy::too_many_arguments)]
        fn go<T: DeviceRepr>(
            dev: &CudaDevice,
            [a, b, c]: [&CudaSlice<T>; 3],
            [al, bl, cl]: [&Layout; 3],
            len: usize,
            name: &str,
            cfg: LaunchConfig,
            scalars: &[&dyn Scalar],
        ) -> candle_core::Result<CudaSlice<T>> {
            // SAFETY: the kernel writes every element.
            let mut out = unsafe { dev.alloc::<T>(len)? };
            if len == 0 {
                return Ok(out);
            }
            let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
            let (a, b, c) = (
                a.slice(al.start_offset()..),
                b.slice(bl.start_offset()..),
                c.slice(cl.start_offset()..),
            );
            {
                let mut builder = func.builder();
                builder.arg(&a).arg(&b).arg(&c).arg(&mut out);
                for s in scalars {
                    s.push(&mut builder);
                }
                // SAFETY: the views and the scalars match the kernel's parameters
                // (cuda/fused_ops.cu) and the shapes checked by the caller.
                unsafe { builder.launch(cfg) }.w()?;
            }
            Ok(out)
        }
        let dev = &a.device;
        let layouts = [al, bl, cl];
        let len = shape.elem_count();
        let slice = match (&a.slice, &b.slice, &c.slice) {
            (CudaStorageSlice::F32(x), CudaStorageSlice::F32(y), CudaStorageSlice::F32(z)) => CudaStorageSlice::F32(
                go(dev, [x, y, z], layouts, len, &format!("{kernel}_f32"), cfg, scalars)?,
            ),
            (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(y), CudaStorageSlice::BF16(z)) => {
                CudaStorageSlice::BF16(go(
                    dev,
                    [x, y, z],
                    layouts,
                    len,
                    &format!("{kernel}_bf16"),
                    cfg,
                    scalars,
                )?)
            }
            (CudaStorageSlice::F16(x), CudaStorageSlice::F16(y), CudaStorageSlice::F16(z)) => CudaStorageSlice::F16(
                go(dev, [x, y, z], layouts, len, &format!("{kernel}_f16"), cfg, scalars)?,
            ),
            _ => candle_core::bail!("{kernel}: the inputs must all be f32, all bf16 or all f16"),
        };
        Ok((
            CudaStorage {
                slice,
                device: dev.clone(),
            },
            shape.clone(),
        ))
    }

    /// Blocks of THREADS threads for a grid-stride loop over `items`: one item per thread, at most
    /// 2^20 blocks (the loops cover the rest).
    fn grid_stride_blocks(items: usize) -> u32 {
        (items as u64).div_ceil(THREADS as u64).clamp(1, 1 << 20) as u32
    }

    /// A kernel scalar argument.
    trait Scalar {
        fn push<'a>(&'a self, b: &mut candle_core::cuda_backend::cudarc::driver::LaunchArgs<'a>);
    }
    impl<T: DeviceRepr> Scalar for T {
        fn push<'a>(&'a self, b: &mut candle_core::cuda_backend::cudarc::driver::LaunchArgs<'a>) {
            b.arg(self);
        }
    }

    pub(super) fn ln_modulate(
        op: &LnModulate,
        x: &CudaStorage,
        xl: &Layout,
        shift: &CudaStorage,
        sl: &Layout,
        scale: &CudaStorage,
        cl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, n, c, mod_sb) = dims(xl, sl, "ln_modulate")?;
        let (.., scale_sb) = dims(xl, cl, "ln_modulate")?;
        if b > 1 && scale_sb != mod_sb {
            candle_core::bail!("ln_modulate: shift and scale must have the same batch stride");
        }
        let (c32, n32) = (c as i32, n.max(1) as i32);
        // One block per row.
        run3(
            [x, shift, scale],
            [xl, sl, cl],
            xl.shape(),
            "pixart_ln_modulate",
            (b * n) as u32,
            &[&mod_sb, &c32, &n32, &op.eps],
        )
    }

    pub(super) fn add_gated(
        _: &AddGated,
        x: &CudaStorage,
        xl: &Layout,
        y: &CudaStorage,
        yl: &Layout,
        gate: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (_, n, c, gate_sb) = dims(xl, gl, "add_gated")?;
        if yl.dims() != xl.dims() || !yl.is_contiguous() {
            candle_core::bail!(
                "add_gated: y {:?} must be contiguous and match x {:?}",
                yl.dims(),
                xl.dims()
            );
        }
        let total = xl.shape().elem_count() as i64;
        let per_batch = (n * c).max(1) as i64;
        let blocks = grid_stride_blocks(total as usize);
        let c32 = c.max(1) as i32;
        run3(
            [x, y, gate],
            [xl, yl, gl],
            xl.shape(),
            "pixart_add_gated",
            blocks,
            &[&total, &per_batch, &gate_sb, &c32],
        )
    }

    pub(super) fn kv_conv(
        _: &KvConv,
        x: &CudaStorage,
        xl: &Layout,
        weight: &CudaStorage,
        wl: &Layout,
        bias: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, h, w, c) = xl.shape().dims4()?;
        let (r, r2, wc) = wl.shape().dims3()?;
        if r != r2 || wc != c || r == 0 || bl.dims() != [c] {
            candle_core::bail!(
                "kv_conv: weight {:?} and bias {:?} for x {:?}",
                wl.dims(),
                bl.dims(),
                xl.dims()
            );
        }
        if !xl.is_contiguous() || !wl.is_contiguous() || !bl.is_contiguous() {
            candle_core::bail!("kv_conv: x, weight and bias must be contiguous");
        }
        let (h2, w2) = (h / r, w / r);
        let shape = Shape::from((b, h2, w2, c));
        let total = shape.elem_count() as i64;
        let blocks = grid_stride_blocks(total as usize);
        let [h, w, h2, w2, c, r] = [h, w, h2, w2, c, r].map(|v| v as i32);
        run3(
            [x, weight, bias],
            [xl, wl, bl],
            &shape,
            "pixart_kv_conv",
            blocks,
            &[&total, &h, &w, &h2, &w2, &c, &r],
        )
    }

    pub(super) fn scale_rows(
        _: &ScaleRows,
        w: &CudaStorage,
        wl: &Layout,
        gate: &CudaStorage,
        gl: &Layout,
        bias: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, cols) = wl.shape().dims2()?;
        let (b, one, gr) = gl.shape().dims3()?;
        if one != 1 || gr != rows || bl.dims() != [rows] || (rows > 1 && gl.stride()[2] != 1) {
            candle_core::bail!(
                "scale_rows: gate {:?} and bias {:?} for weights {:?}",
                gl.dims(),
                bl.dims(),
                wl.dims()
            );
        }
        if !wl.is_contiguous() || !bl.is_contiguous() {
            candle_core::bail!("scale_rows: the weights and the bias must be contiguous");
        }
        let per_batch = rows * cols;
        let bias_off = super::bias_offset(b * per_batch);
        let shape = Shape::from(bias_off + b * rows);
        // 16-byte pieces: the output starts at its allocation, the weights where their view does.
        let vec8 = i32::from(cols % 8 == 0 && wl.start_offset() % 8 == 0);
        let pieces = (b * per_batch) / if vec8 == 1 { 8 } else { 1 };
        let blocks = grid_stride_blocks(pieces.max(b * rows));
        let gate_sb = gl.stride()[0] as i64;
        let (per_batch, bias_off) = (per_batch as i64, bias_off as i64);
        let [b, rows, cols] = [b, rows, cols].map(|v| v as i32);
        run3(
            [w, gate, bias],
            [wl, gl, bl],
            &shape,
            "pixart_scale_rows",
            blocks,
            &[&per_batch, &bias_off, &gate_sb, &b, &rows, &cols, &vec8],
        )
    }
}
