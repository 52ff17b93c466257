//! Tensor ops the VAE needs, written for the CPU where candle's generic paths are slow.
//!
//! - [`group_norm`]: GroupNorm with an optional fused SiLU. On the CPU (f32) it is one custom
//!   op: statistics in two passes (mean, then centred sum of squares) accumulated in f32 lanes
//!   folded into f64, then one parallel pass that normalises, applies the affine parameters and
//!   the SiLU. Elsewhere it is composed from tensor ops in f32.
//! - [`conv3x3`]: 3×3, stride 1, padding 1 convolution, with an optional fused nearest 2×
//!   upsample of its input. On the CPU (f32) it runs as nine shifted GEMMs over a zero-padded
//!   copy of the input (no im2col buffer), which keeps GEMM speed; candle's own conv2d
//!   (tiled im2col) runs at about a quarter of it. Elsewhere it is candle's conv2d.
//! - [`attention_single_head`]: softmax attention with the queries processed in chunks, so
//!   the full N×N score matrix is never held.
//!
//! The fast CPU paths are forward-only custom ops: they cut the autograd graph. Training
//! ([`crate::blocks::Mode::Training`]) uses versions built from candle ops that have a
//! backward ([`group_stats_composed`], [`group_norm_with_stats_composed`], [`conv2d_im2col`],
//! [`attention_composed`]).
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use pixart_gemm::contiguous_data;
use rayon::prelude::*;

/// GroupNorm over `x` (b, c, *spatial) with `groups` groups and per-channel `weight`, `bias`
/// (c); with `silu`, SiLU is applied to the result. Computed in f32 whatever the input dtype.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    silu: bool,
) -> candle_core::Result<Tensor> {
    let stats = group_stats(x, groups, eps)?;
    group_norm_with_stats(x, &stats, weight, bias, silu)
}

/// The statistics GroupNorm normalises with: (b, groups, 2) f32 holding the mean and
/// `1 / sqrt(var + eps)` of each group (biased variance, two passes).
pub fn group_stats(x: &Tensor, groups: usize, eps: f64) -> candle_core::Result<Tensor> {
    let (b, c) = (x.dim(0)?, x.dim(1)?);
    if x.device().is_cpu() && x.dtype() == DType::F32 && groups > 0 && c % groups == 0 {
        return x
            .contiguous()?
            .apply_op1_no_bwd(&GroupStatsOp { groups, eps })?
            .reshape((b, groups, 2));
    }
    group_stats_composed(x, groups, eps)
}

/// [`group_stats`] composed from candle tensor ops (mean, centred mean of squares), which
/// have a backward: the training path, and the path off the CPU.
pub fn group_stats_composed(x: &Tensor, groups: usize, eps: f64) -> candle_core::Result<Tensor> {
    let (b, c) = (x.dim(0)?, x.dim(1)?);
    if groups == 0 || c % groups != 0 {
        candle_core::bail!("group_norm: {c} channels are not divisible into {groups} groups");
    }
    // (b, c, *spatial) -> (b, groups, c/groups * spatial)
    let xg = x.to_dtype(DType::F32)?.reshape((b, groups, ()))?;
    let mean = xg.mean_keepdim(D::Minus1)?;
    let var = xg.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    // (b, groups, 1) x2 -> (b, groups, 2)
    Tensor::cat(&[mean, inv], 2)
}

/// GroupNorm of `x` with given `stats` (from [`group_stats`], possibly of another tensor:
/// tiled decoding normalises every tile with shared statistics), then the affine parameters
/// and an optional SiLU.
pub fn group_norm_with_stats(
    x: &Tensor,
    stats: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    silu: bool,
) -> candle_core::Result<Tensor> {
    let (b, c) = (x.dim(0)?, x.dim(1)?);
    let (sb, groups, two) = stats.dims3()?;
    if sb != b || two != 2 || groups == 0 || c % groups != 0 {
        candle_core::bail!(
            "group_norm: statistics {:?} do not fit an input {:?}",
            stats.dims(),
            x.dims()
        );
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        // weight, bias: (c), (c) -> (2, c)
        let wb = Tensor::stack(&[weight.to_dtype(DType::F32)?, bias.to_dtype(DType::F32)?], 0)?;
        return x.contiguous()?.apply_op3_no_bwd(
            &wb,
            &stats.to_dtype(DType::F32)?.contiguous()?,
            &GroupNormApplyOp { groups, silu },
        );
    }
    group_norm_with_stats_composed(x, stats, weight, bias, silu)
}

/// [`group_norm_with_stats`] composed from candle tensor ops, which have a backward (through
/// `x`, the statistics, and the affine parameters): the training path, and the path off the CPU.
pub fn group_norm_with_stats_composed(
    x: &Tensor,
    stats: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    silu: bool,
) -> candle_core::Result<Tensor> {
    let (b, c) = (x.dim(0)?, x.dim(1)?);
    let groups = stats.dim(1)?;
    let dtype = x.dtype();
    let dims = x.dims().to_vec();
    // (b, c, *spatial) -> (b, groups, c/groups * spatial)
    let xg = x.to_dtype(DType::F32)?.reshape((b, groups, ()))?;
    let mean = stats.narrow(2, 0, 1)?;
    let inv = stats.narrow(2, 1, 1)?;
    // (b, groups, c/groups * spatial) -> (b, c, *spatial)
    let xn = xg.broadcast_sub(&mean)?.broadcast_mul(&inv)?.reshape(dims.as_slice())?;
    // weight, bias: (c) -> (1, c, 1, ...)
    let mut affine_shape = vec![1usize; dims.len()];
    affine_shape[1] = c;
    let w = weight.to_dtype(DType::F32)?.reshape(affine_shape.as_slice())?;
    let bb = bias.to_dtype(DType::F32)?.reshape(affine_shape.as_slice())?;
    let mut y = xn.broadcast_mul(&w)?.broadcast_add(&bb)?;
    if silu {
        y = y.silu()?;
    }
    y.to_dtype(dtype)
}

struct GroupStatsOp {
    groups: usize,
    eps: f64,
}

struct GroupNormApplyOp {
    groups: usize,
    silu: bool,
}

/// Sum of `s` in f32 lanes (vectorisable), folded into f64 every 4096 values.
fn sum_f64(s: &[f32], shift: f32, square: bool) -> f64 {
    const LANES: usize = 16;
    s.chunks(4096)
        .map(|block| {
            let mut acc = [0f32; LANES];
            let mut it = block.chunks_exact(LANES);
            for ch in &mut it {
                for (a, v) in acc.iter_mut().zip(ch) {
                    let d = v - shift;
                    *a += if square { d * d } else { d };
                }
            }
            let mut t: f64 = acc.iter().map(|&a| a as f64).sum();
            for v in it.remainder() {
                let d = v - shift;
                t += if square { (d * d) as f64 } else { d as f64 };
            }
            t
        })
        .sum()
}

impl CustomOp1 for GroupStatsOp {
    fn name(&self) -> &'static str {
        "group-stats"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_data::<f32>(s1, l1, "group_norm input")?;
        let b = l1.dims()[0];
        let group_len = x.len() / (b * self.groups).max(1);
        // Per (batch, group): the mean, then the centred sum of squares.
        let stats: Vec<f32> = x
            .par_chunks(group_len.max(1))
            .flat_map_iter(|g| {
                let n = g.len().max(1) as f64;
                let mean = sum_f64(g, 0.0, false) / n;
                let var = sum_f64(g, mean as f32, true) / n;
                [mean as f32, (1.0 / (var + self.eps).sqrt()) as f32]
            })
            .collect();
        Ok((CpuStorage::F32(stats), Shape::from((b * self.groups, 2))))
    }
}

impl CustomOp3 for GroupNormApplyOp {
    fn name(&self) -> &'static str {
        "group-norm-apply"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_data::<f32>(s1, l1, "group_norm input")?;
        let wb = contiguous_data::<f32>(s2, l2, "group_norm weight/bias")?;
        let stats = contiguous_data::<f32>(s3, l3, "group_norm statistics")?;
        let dims = l1.dims();
        let (b, c) = (dims[0], dims[1]);
        let spatial: usize = dims[2..].iter().product();
        if wb.len() != 2 * c || stats.len() != 2 * b * self.groups {
            candle_core::bail!("group_norm: parameters do not fit an input {dims:?}");
        }
        let (w, bias) = wb.split_at(c);
        let per_group = c / self.groups;
        // Per (batch, channel) plane: normalise, affine, optional SiLU.
        let mut dst = vec![0f32; x.len()];
        dst.par_chunks_mut(spatial.max(1))
            .zip(x.par_chunks(spatial.max(1)))
            .enumerate()
            .for_each(|(plane, (d, s))| {
                let ch = plane % c;
                let g = (plane / c) * self.groups + ch / per_group;
                let (mean, inv) = (stats[2 * g], stats[2 * g + 1]);
                let (scale, shift) = (inv * w[ch], bias[ch]);
                for (o, v) in d.iter_mut().zip(s) {
                    *o = (v - mean) * scale + shift;
                }
                if self.silu {
                    pixart_gemm::vector::silu_in_place(d);
                }
            });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }
}

/// 1×1 convolution of `x` (b, c_in, h, w) with `weight` (c_out, c_in, 1, 1) and `bias`
/// (c_out): on the CPU in f32 one GEMM per image on [`pixart_gemm::sgemm`] (the input read
/// as it is, bias fused), elsewhere candle's conv2d.
pub fn conv1x1(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c_in, h, w) = x.dims4()?;
    let (c_out, k_in, kh, kw) = weight.dims4()?;
    if (k_in, kh, kw) != (c_in, 1, 1) || bias.dims() != [c_out] {
        candle_core::bail!(
            "conv1x1: weight {:?} and bias {:?} do not fit an input of {c_in} channels",
            weight.dims(),
            bias.dims()
        );
    }
    let fast = x.device().is_cpu()
        && [x.dtype(), weight.dtype(), bias.dtype()] == [DType::F32; 3]
        && pixart_gemm::sgemm::native_available();
    if !fast {
        // bias: (c_out) -> (1, c_out, 1, 1)
        return x
            .conv2d(weight, 0, 1, 1, 1)?
            .broadcast_add(&bias.reshape((1, (), 1, 1))?);
    }
    let x = x.contiguous()?.reshape((b, c_in, h * w))?; // (b, c_in, h, w) -> (b, c_in, h·w)
    let w2 = weight.reshape((c_out, c_in))?.contiguous()?; // (c_out, c_in, 1, 1) -> (c_out, c_in)
    let y = x.apply_op3_no_bwd(&w2, &bias.contiguous()?, &Conv1x1Op)?; // (b, c_out, h·w)
    y.reshape((b, c_out, h, w))
}

struct Conv1x1Op;

impl CustomOp3 for Conv1x1Op {
    fn name(&self) -> &'static str {
        "conv1x1"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use pixart_gemm::sgemm;
        let (x, w, bias) = (
            contiguous_data::<f32>(s1, l1, "conv1x1 input")?,
            contiguous_data::<f32>(s2, l2, "conv1x1 weight")?,
            contiguous_data::<f32>(s3, l3, "conv1x1 bias")?,
        );
        let (b, c_in, hw) = l1.shape().dims3()?;
        let c_out = l2.dims()[0];
        let gerr = |e: pixart_gemm::bf16::GemmError| candle_core::Error::Msg(e.to_string());
        let mut out = vec![0f32; b * c_out * hw];
        for (xi, yi) in x.chunks(c_in * hw).zip(out.chunks_mut(c_out * hw)) {
            let mut o = sgemm::Output::new(yi, hw);
            o.bias = sgemm::Bias::Rows(bias);
            let lhs = sgemm::Lhs::rows(w, c_out, c_in, c_in).map_err(gerr)?;
            sgemm::gemm(lhs, sgemm::Rhs::Kn { b: xi, ld: hw }, hw, o, true).map_err(gerr)?;
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c_out, hw))))
    }
}

/// 3×3 convolution, stride 1, zero padding 1, of `x` (b, c_in, h, w) with `weight`
/// (c_out, c_in, 3, 3) and optional `bias` (c_out). With `upsample`, the input is first
/// upsampled 2× by nearest neighbour (diffusers' `Upsample2D`), so the output is
/// (b, c_out, 2h, 2w); on the CPU the upsampled input is never materialised on its own.
pub fn conv3x3(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, upsample: bool) -> candle_core::Result<Tensor> {
    let (_, c_in, _, _) = x.dims4()?;
    let (_, k_in, kh, kw) = weight.dims4()?;
    if (k_in, kh, kw) != (c_in, 3, 3) {
        candle_core::bail!(
            "conv3x3: weight {:?} does not fit an input of {c_in} channels",
            weight.dims()
        );
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 && weight.dtype() == DType::F32 {
        let bias = bias.map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
        if bias.as_ref().is_some_and(|b| b.len() != weight.dim(0).unwrap_or(0)) {
            candle_core::bail!("conv3x3: the bias does not have one value per output channel");
        }
        return x
            .contiguous()?
            .apply_op2_no_bwd(&weight.contiguous()?, &Conv3x3Op::new(upsample, bias));
    }
    conv3x3_composed(x, weight, bias, upsample)
}

/// [`conv3x3`] as candle's `upsample_nearest2d` and `conv2d`: the path off the CPU.
pub fn conv3x3_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    upsample: bool,
) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let x = if upsample {
        // (b, c, h, w) -> (b, c, 2h, 2w)
        x.upsample_nearest2d(2 * h, 2 * w)?
    } else {
        x.clone()
    };
    let y = x.conv2d(weight, 1, 1, 1, 1)?;
    match bias {
        // bias: (c_out) -> (1, c_out, 1, 1)
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

struct Conv3x3Op {
    upsample: bool,
    /// Added per output channel while the result is copied out (inference only: the
    /// backward has no bias gradient, so training adds its bias outside the op).
    bias: Option<Vec<f32>>,
    /// On the AVX-512 f32 GEMM ([`pixart_gemm::sgemm`]) rather than the `gemm` crate.
    native: bool,
}

impl Conv3x3Op {
    fn new(upsample: bool, bias: Option<Vec<f32>>) -> Self {
        Self {
            upsample,
            bias,
            native: pixart_gemm::sgemm::native_available(),
        }
    }
}

/// A raw pointer that rayon tasks may share; every task writes a disjoint region.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: only used to let parallel tasks write disjoint, in-bounds regions of one buffer that
// outlives them (see `Conv3x3Op::cpu_fwd`).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The input and output geometry of one [`Conv3x3Op`]: `f` is the upsampling factor (1 or 2),
/// `ho × wo` the (upsampled) size of the output and of the conv's input grid.
#[derive(Clone, Copy)]
struct ConvGeom {
    c_in: usize,
    h: usize,
    w: usize,
    f: usize,
    ho: usize,
    wo: usize,
}

impl Conv3x3Op {
    /// The conv as one GEMM per band of output rows on [`pixart_gemm::sgemm`]:
    /// `out (c_out, positions) = A (c_out, 9·c_in) · B (9·c_in, positions) + bias`, with
    /// `k = tap · c_in + ci` (tap = ky · 3 + kx). B, the shifted zero-padded (upsampled)
    /// input, is never built: [`pack_conv_panel`] writes each panel the GEMM asks for straight
    /// from `x`, and the GEMM writes its rows of the output in place (bias fused).
    fn fwd_native(&self, x: &[f32], wt: &[f32], b: usize, c_out: usize, g: ConvGeom) -> candle_core::Result<Vec<f32>> {
        use pixart_gemm::sgemm;
        let gerr = |e: pixart_gemm::bf16::GemmError| candle_core::Error::Msg(e.to_string());
        let (c_in, kk, hw_out) = (g.c_in, 9 * g.c_in, g.ho * g.wo);
        let mut a = vec![0f32; c_out * kk];
        for co in 0..c_out {
            for ci in 0..c_in {
                for t in 0..9 {
                    a[co * kk + t * c_in + ci] = wt[(co * c_in + ci) * 9 + t];
                }
            }
        }
        let mut packed = sgemm::PackedA::new();
        packed.pack(&a, c_out, kk, kk).map_err(gerr)?;
        drop(a);
        if let Some(bv) = &self.bias {
            if bv.len() != c_out {
                candle_core::bail!("conv3x3: {} bias values for {c_out} output channels", bv.len());
            }
        }
        let bias = self.bias.as_deref().map_or(sgemm::Bias::None, sgemm::Bias::Rows);
        // Bands of about 4096 output positions (whole rows), at least 4 per thread.
        let threads = rayon::current_num_threads().max(1);
        let rows = (4096 / g.wo).max(1).min(g.ho.div_ceil(4 * threads).max(1));
        let bands = g.ho.div_ceil(rows);
        let mut out = vec![0f32; b * c_out * hw_out];
        let out_ptr = SharedMut(out.as_mut_ptr());
        let in_len = c_in * g.h * g.w;
        (0..b * bands).into_par_iter().try_for_each(|job| {
            let (bi, y0) = (job / bands, (job % bands) * rows);
            let n = rows.min(g.ho - y0) * g.wo;
            let img = &x[bi * in_len..(bi + 1) * in_len];
            let pack =
                |dst: &mut [f32], p0: usize, kc: usize, c0: usize| pack_conv_panel(dst, img, g, y0, n, p0, kc, c0);
            // SAFETY: this job writes output positions y0·wo..y0·wo + n of each of the c_out
            // rows (stride ho·wo) of image bi, which no other job writes; they lie inside `out`,
            // which outlives the parallel loop.
            unsafe {
                let c = out_ptr.get().add(bi * c_out * hw_out + y0 * g.wo);
                sgemm::gemm_raw(
                    sgemm::Lhs::packed(&packed),
                    sgemm::Rhs::Panels(&pack),
                    n,
                    c,
                    hw_out,
                    bias,
                    false,
                )
            }
            .map_err(gerr)
        })?;
        Ok(out)
    }
}

/// One panel of the conv's B for the band of output rows from `y0` (`n` positions): rows
/// `p0..p0 + kc` of `k = tap · c_in + ci`, the [`pixart_gemm::sgemm::NR`] positions from `c0`;
/// `B[(tap, ci), pos] = x_up[ci, oy + ky − 1, ox + kx − 1]` (zero outside the image), where
/// `x_up` is `x` upsampled by `g.f` and `(oy, ox)` the position's output row and column.
#[allow(clippy::too_many_arguments)]
fn pack_conv_panel(dst: &mut [f32], x: &[f32], g: ConvGeom, y0: usize, n: usize, p0: usize, kc: usize, c0: usize) {
    use pixart_gemm::sgemm::NR;
    // The panel's positions cut at output-row ends: (first column, oy, ox, length).
    let cols = NR.min(n - c0);
    let mut segs = [(0usize, 0usize, 0usize, 0usize); NR];
    let (mut ns, mut j) = (0, 0);
    while j < cols {
        let pos = c0 + j;
        let (oy, ox) = (y0 + pos / g.wo, pos % g.wo);
        let len = (g.wo - ox).min(cols - j);
        segs[ns] = (j, oy, ox, len);
        (ns, j) = (ns + 1, j + len);
    }
    let plane = g.h * g.w;
    for (p, row) in dst.chunks_exact_mut(NR).take(kc).enumerate() {
        let (t, ci) = ((p0 + p) / g.c_in, (p0 + p) % g.c_in);
        let (ky, kx) = (t / 3, t % 3);
        let src_plane = &x[ci * plane..(ci + 1) * plane];
        for &(j, oy, ox, len) in &segs[..ns] {
            let seg = &mut row[j..j + len];
            // Input row oy + ky − 1 of the upsampled grid; none above or below the image.
            if oy + ky == 0 || oy + ky > g.ho {
                seg.fill(0.0);
                continue;
            }
            let iy = (oy + ky - 1) / g.f;
            let src = &src_plane[iy * g.w..(iy + 1) * g.w];
            // Columns q of the segment read upsampled column ox + q + kx − 1, valid in 0..wo.
            let q_lo = (1usize.saturating_sub(ox + kx)).min(len);
            let q_hi = (g.wo + 1 - kx - ox).min(len).max(q_lo);
            seg[..q_lo].fill(0.0);
            seg[q_hi..].fill(0.0);
            let (d, first) = (&mut seg[q_lo..q_hi], ox + kx + q_lo - 1);
            if d.is_empty() {
                continue;
            }
            if g.f == 1 {
                d.copy_from_slice(&src[first..first + d.len()]);
                continue;
            }
            // Nearest 2× upsampling: each source value twice, from an odd start once first.
            let (d, from) = if first % 2 == 1 {
                d[0] = src[first / 2];
                (&mut d[1..], first / 2 + 1)
            } else {
                (d, first / 2)
            };
            let half = d.len() / 2;
            let mut pairs = d.chunks_exact_mut(2);
            for (pair, v) in (&mut pairs).zip(&src[from..]) {
                pair[0] = *v;
                pair[1] = *v;
            }
            if let [last] = pairs.into_remainder() {
                *last = src[from + half];
            }
        }
        row[cols..].fill(0.0);
    }
}

impl CustomOp2 for Conv3x3Op {
    fn name(&self) -> &'static str {
        "conv3x3"
    }

    /// The backward of the plain (not upsampling) conv, with the same fast kernel: the input
    /// gradient is the 3×3 conv of the output gradient with the kernel transposed (in ↔ out) and
    /// flipped; the weight gradient is Σ_b grad_b · im2col(x_b)ᵀ, one batched GEMM.
    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if self.upsample {
            candle_core::bail!("conv3x3: no backward for the fused upsample (upsample first)");
        }
        let (x, w, g) = (arg1.detach(), arg2.detach(), grad_res.detach().contiguous()?);
        let (c_out, c_in, _, _) = w.dims4()?;
        let (b, _, h, wd) = x.dims4()?;
        let rev = Tensor::new(&[2u32, 1, 0], w.device())?;
        // w (c_out, c_in, 3, 3) -> (c_in, c_out, 3, 3), flipped along both spatial axes
        let wt = w
            .transpose(0, 1)?
            .contiguous()?
            .index_select(&rev, 2)?
            .index_select(&rev, 3)?
            .contiguous()?;
        let grad_x = g.apply_op2_no_bwd(&wt, &Conv3x3Op::new(false, None))?;
        // (b, c_out, h·w) @ (b, h·w, c_in·9) -> (b, c_out, c_in·9), summed over b
        let cols = im2col(&x, 3, 3, 1, 1)?;
        let grad_w = g
            .reshape((b, c_out, h * wd))?
            .matmul(&cols.transpose(1, 2)?.contiguous()?)?
            .sum(0)?
            .reshape((c_out, c_in, 3, 3))?;
        Ok((Some(grad_x), Some(grad_w)))
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_data::<f32>(s1, l1, "conv3x3 input")?;
        let wt = contiguous_data::<f32>(s2, l2, "conv3x3 weight")?;
        let (b, c_in, h, w) = l1.shape().dims4()?;
        let c_out = l2.dims()[0];
        let f = if self.upsample { 2 } else { 1 };
        let (ho, wo) = (h * f, w * f);
        if self.native {
            let geom = ConvGeom { c_in, h, w, f, ho, wo };
            let out = self.fwd_native(x, wt, b, c_out, geom)?;
            return Ok((CpuStorage::F32(out), Shape::from((b, c_out, ho, wo))));
        }
        let (hp, wp) = (ho + 2, wo + 2);
        let plane = hp * wp;

        // Zero-padded (and upsampled) input, (b, c_in, ho + 2, wo + 2), plus a little slack:
        // the shifted GEMM operands of the last rows read two values past the last plane
        // (they only feed the two discarded columns of each wide row).
        let mut xp = vec![0f32; b * c_in * plane + 2 * wp];
        xp.par_chunks_mut(plane)
            .take(b * c_in)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| {
                for y in 0..ho {
                    let src_row = &src[(y / f) * w..(y / f + 1) * w];
                    let dst_row = &mut dst[(y + 1) * wp + 1..(y + 1) * wp + 1 + wo];
                    if f == 1 {
                        dst_row.copy_from_slice(src_row);
                    } else {
                        for (pair, v) in dst_row.chunks_exact_mut(2).zip(src_row) {
                            pair[0] = *v;
                            pair[1] = *v;
                        }
                    }
                }
            });

        // Weight taps, (9, c_out, c_in): tap t = ky * 3 + kx.
        let mut taps = vec![0f32; 9 * c_out * c_in];
        for co in 0..c_out {
            for ci in 0..c_in {
                for t in 0..9 {
                    taps[(t * c_out + co) * c_in + ci] = wt[(co * c_in + ci) * 9 + t];
                }
            }
        }

        // Bands of output rows. Each band computes `rows` "wide" rows of wp positions (the last
        // two of each are garbage and dropped) as sum over taps of taps[t] @ shifted input.
        let threads = rayon::current_num_threads().max(1);
        let rows = (4096 / wp).max(1).min(ho.div_ceil(4 * threads).max(1));
        let bands_per_image = ho.div_ceil(rows);
        let mut out = vec![0f32; b * c_out * ho * wo];
        let out_ptr = SharedMut(out.as_mut_ptr());
        let (xp, taps, bias) = (&xp, &taps, self.bias.as_deref());
        (0..b * bands_per_image).into_par_iter().for_each(|job| {
            let (bi, band) = (job / bands_per_image, job % bands_per_image);
            let y0 = band * rows;
            let r = rows.min(ho - y0);
            let n = r * wp;
            let mut acc = vec![0f32; c_out * n];
            for t in 0..9 {
                let (ky, kx) = (t / 3, t % 3);
                let rhs_off = bi * c_in * plane + (y0 + ky) * wp + kx;
                // SAFETY: dst is `acc` (c_out × n, row stride n). lhs is tap t of `taps`
                // (c_out × c_in, row stride c_in). rhs starts at `rhs_off` in `xp` with rows of
                // stride `plane` (one per input channel) and n columns; its last element is at
                // rhs_off + (c_in-1)*plane + n - 1 <= b*c_in*plane + 1, inside `xp` thanks to the
                // slack. All three buffers live for the whole call and are not aliased mutably.
                unsafe {
                    gemm::gemm(
                        c_out,
                        n,
                        c_in,
                        acc.as_mut_ptr(),
                        1,
                        n as isize,
                        t > 0,
                        taps.as_ptr().add(t * c_out * c_in),
                        1,
                        c_in as isize,
                        xp.as_ptr().add(rhs_off),
                        1,
                        plane as isize,
                        1.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            for co in 0..c_out {
                let add = bias.map_or(0.0, |bv| bv[co]);
                for yy in 0..r {
                    let src = &acc[co * n + yy * wp..co * n + yy * wp + wo];
                    let dst_off = ((bi * c_out + co) * ho + y0 + yy) * wo;
                    // SAFETY: each job writes the rows y0..y0+r of image bi, which no other job
                    // writes; dst_off + wo <= out.len(), and `out` outlives the parallel loop.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(dst_off), wo) };
                    for (d, v) in dst.iter_mut().zip(src) {
                        *d = v + add;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c_out, ho, wo))))
    }
}

/// Single-head softmax attention `softmax(q kᵀ · scale) v` with q: (b, n, d), k, v: (b, m, d),
/// computed over chunks of queries so that at most about `max_scores` score values exist at
/// once. The softmax is computed in f32. Returns (b, n, d) in the dtype of `q`.
pub fn attention_single_head(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    max_scores: usize,
) -> candle_core::Result<Tensor> {
    let (b, n, d) = q.dims3()?;
    let m = k.dim(1)?;
    if q.device().is_cpu() && pixart_gemm::sgemm::native_available() {
        // The fused attention (scores per 64-query block), as one head: (b, n, d) -> (b, 1, n, d).
        let f = |t: &Tensor, rows: usize| t.to_dtype(DType::F32)?.reshape((b, 1, rows, d));
        let none = pixart_gemm::attention::ScoreBias::None;
        let o = pixart_gemm::attention::attention_f32(&f(q, n)?, &f(k, m)?, &f(v, m)?, none, scale as f32)?;
        return o.reshape((b, n, d))?.to_dtype(q.dtype()); // (b, 1, n, d) -> (b, n, d)
    }
    let chunk = (max_scores / (b * m).max(1)).clamp(1, n.max(1));
    let dtype = q.dtype();
    let q = (q.to_dtype(DType::F32)? * scale)?;
    let kt = k.to_dtype(DType::F32)?.t()?.contiguous()?; // (b, d, m)
    let v = v.to_dtype(DType::F32)?.contiguous()?;
    let mut outs = Vec::with_capacity(n.div_ceil(chunk));
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let s = q.narrow(1, start, len)?.contiguous()?.matmul(&kt)?; // (b, len, m)
        let p = candle_nn::ops::softmax_last_dim(&s)?;
        outs.push(p.matmul(&v)?); // (b, len, d)
        start += len;
    }
    let out = if outs.len() == 1 {
        outs.remove(0)
    } else {
        Tensor::cat(&outs, 1)?
    };
    out.to_dtype(dtype)
}

/// The im2col matrix of `x` (b, c_in, h, w) for a kh × kw window with `stride` and zero
/// `padding`: (b, c_in·kh·kw, ho·wo), rows in the (ci, ky, kx) order of a conv weight. Built
/// from `pad`/`narrow`/`stack`/`reshape`, so it has a backward.
pub fn im2col(x: &Tensor, kh: usize, kw: usize, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    let (b, c_in, h, w) = x.dims4()?;
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    if stride == 0 || hp < kh || wp < kw {
        candle_core::bail!(
            "im2col: a {kh}x{kw} window (stride {stride}, padding {padding}) does not fit {:?}",
            x.dims()
        );
    }
    let (ho, wo) = ((hp - kh) / stride + 1, (wp - kw) / stride + 1);
    // Zero padding, plus trailing zeros so that every tap's strided window of
    // stride·ho rows (stride·wo columns) fits; the extra ones are never picked.
    let (eh, ew) = (
        (kh - 1 + stride * ho).saturating_sub(hp),
        (kw - 1 + stride * wo).saturating_sub(wp),
    );
    let xp = x
        .pad_with_zeros(2, padding, padding + eh)?
        .pad_with_zeros(3, padding, padding + ew)?;
    let mut taps = Vec::with_capacity(kh * kw);
    for ky in 0..kh {
        for kx in 0..kw {
            let t = xp.narrow(2, ky, stride * ho)?.narrow(3, kx, stride * wo)?;
            let t = if stride > 1 {
                // (b, c_in, ho·s, wo·s) -> (b, c_in, ho, s, wo, s) -> every s-th row and column
                t.reshape((b, c_in, ho, stride, wo, stride))?
                    .narrow(3, 0, 1)?
                    .narrow(5, 0, 1)?
            } else {
                t
            };
            // -> (b, c_in, ho·wo)
            taps.push(t.reshape((b, c_in, ho * wo))?);
        }
    }
    // (b, c_in, kh·kw, ho·wo) -> (b, c_in·kh·kw, ho·wo), rows in the weight's (ci, ky, kx) order
    Tensor::stack(&taps, 2)?.reshape((b, c_in * kh * kw, ho * wo))
}

/// The training conv: 3×3, stride 1, padding 1 convolutions of f32 CPU tensors run the fast
/// [`conv3x3`] kernel with its GEMM backward (`Conv3x3Op::bwd`); every other conv is
/// [`conv2d_im2col`]. Both have a backward for the input and the weight (the bias is added with
/// a broadcast, which has one).
pub fn conv2d_train(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let (_, c_in, _, _) = x.dims4()?;
    let (_, k_in, kh, kw) = weight.dims4()?;
    let fast = x.device().is_cpu() && x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    if !(fast && (kh, kw, stride, padding) == (3, 3, 1, 1) && k_in == c_in) {
        return conv2d_im2col(x, weight, bias, stride, padding);
    }
    let y = x
        .contiguous()?
        .apply_op2(&weight.contiguous()?, Conv3x3Op::new(false, None))?;
    match bias {
        // bias: (c_out) -> (1, c_out, 1, 1)
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

/// Convolution of `x` (b, c_in, h, w) with `weight` (c_out, c_in, kh, kw), optional `bias`
/// (c_out), zero padding `padding` on every side and stride `stride`, as one GEMM over an
/// im2col matrix built from `narrow`/`stack`/`reshape`: every op has a backward that is itself
/// a GEMM or a copy. The training path for the convs [`conv2d_train`] does not run on its fast
/// kernel: candle's own conv2d backward runs `conv_transpose2d`, a scalar loop on the CPU.
pub fn conv2d_im2col(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let (b, c_in, h, w) = x.dims4()?;
    let (c_out, k_in, kh, kw) = weight.dims4()?;
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    if k_in != c_in || stride == 0 || hp < kh || wp < kw {
        candle_core::bail!(
            "conv2d: weight {:?} (stride {stride}, padding {padding}) does not fit an input {:?}",
            weight.dims(),
            x.dims()
        );
    }
    let (ho, wo) = ((hp - kh) / stride + 1, (wp - kw) / stride + 1);
    let y = if (kh, kw, stride, padding) == (1, 1, 1, 0) {
        // weight (c_out, c_in, 1, 1) -> (c_out, c_in); x (b, c_in, h, w) -> (b, c_in, h·w)
        weight
            .reshape((c_out, c_in))?
            .broadcast_matmul(&x.reshape((b, c_in, h * w))?)?
    } else {
        let cols = im2col(x, kh, kw, stride, padding)?;
        // weight (c_out, c_in, kh, kw) -> (c_out, c_in·kh·kw)
        weight.reshape((c_out, c_in * kh * kw))?.broadcast_matmul(&cols)?
    };
    // (b, c_out, ho·wo) -> (b, c_out, ho, wo)
    let y = y.reshape((b, c_out, ho, wo))?;
    match bias {
        // bias: (c_out) -> (1, c_out, 1, 1)
        Some(bb) => y.broadcast_add(&bb.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

/// `softmax(q kᵀ · scale) v` for q: (b, n, d), k, v: (b, m, d) in one piece, from ops that
/// have a backward (matmul and `candle_nn::ops::softmax`, not the forward-only
/// `softmax_last_dim`): the training path. Holds the whole (b, n, m) score matrix.
pub fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let dtype = q.dtype();
    let q = q.to_dtype(DType::F32)?;
    // (b, m, d) -> (b, d, m)
    let kt = k.to_dtype(DType::F32)?.t()?;
    let s = (q.matmul(&kt)? * scale)?; // (b, n, m)
    let p = candle_nn::ops::softmax(&s, D::Minus1)?;
    p.matmul(&v.to_dtype(DType::F32)?)?.to_dtype(dtype) // (b, n, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The 1×1 conv against candle's conv2d + bias.
    #[test]
    fn conv1x1_matches_candle() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 7, 5, 11), &dev)?;
        let w = Tensor::randn(0f32, 0.3, (9, 7, 1, 1), &dev)?;
        let bias = Tensor::randn(0f32, 1.0, 9, &dev)?;
        let got = conv1x1(&x, &w, &bias)?;
        let want = x.conv2d(&w, 0, 1, 1, 1)?.broadcast_add(&bias.reshape((1, 9, 1, 1))?)?;
        let (d, _) = pixart_core::testing::max_abs_diff(&got, &want);
        assert!(d < 1e-5, "{d}");
        assert!(conv1x1(&x, &w.narrow(1, 0, 6)?, &bias).is_err());
        Ok(())
    }

    /// The CPU conv (both GEMM paths, with bias and the fused upsample) against candle's
    /// upsample + conv2d + bias.
    #[test]
    fn conv3x3_matches_candle_on_both_paths() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (b, c_in, c_out, h, w) in [(2, 5, 7, 9, 13), (1, 16, 3, 4, 70)] {
            let x = Tensor::randn(0f32, 1.0, (b, c_in, h, w), &dev)?;
            let wt = Tensor::randn(0f32, 0.2, (c_out, c_in, 3, 3), &dev)?;
            let bias = Tensor::randn(0f32, 1.0, c_out, &dev)?;
            for upsample in [false, true] {
                let want = conv3x3_composed(&x, &wt, Some(&bias), upsample)?;
                let mut natives = vec![false];
                if pixart_gemm::sgemm::native_available() {
                    natives.push(true);
                }
                for native in natives {
                    let op = Conv3x3Op {
                        upsample,
                        bias: Some(bias.to_vec1()?),
                        native,
                    };
                    let got = x.apply_op2_no_bwd(&wt, &op)?;
                    let (d, _) = pixart_core::testing::max_abs_diff(&got, &want);
                    assert!(
                        d < 1e-4,
                        "{b}x{c_in}->{c_out} {h}x{w} upsample {upsample} native {native}: {d}"
                    );
                }
            }
        }
        Ok(())
    }
}
