//! The VAE's CPU kernels: GroupNorm statistics and the normalisation (+ SiLU) in two
//! parallel passes (f32 lanes folded into f64), the 1×1 convolution as one GEMM per image, and
//! the 3×3 convolution as nine shifted GEMMs over a zero-padded copy of the input (no im2col
//! buffer; with a fused nearest 2× upsample of its input, and a GEMM backward for training).
//! [`crate::ops::vae`] chooses between these and candle's ops.
//! [`attention_composed`]).
use crate::cpu::contiguous_data;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

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

/// The per-group mean and `1 / sqrt(var + eps)` of `x` (b, c, *spatial), f32 on the CPU, as
/// (b · groups · 2) values.
pub fn group_stats(x: &Tensor, groups: usize, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&GroupStatsOp { groups, eps })
}

/// GroupNorm of `x` (b, c, *spatial) with `stats` (b, groups, 2) and the affine parameters
/// `wb` (2, c), then SiLU with `silu`; f32 on the CPU.
pub fn group_norm_apply(
    x: &Tensor,
    wb: &Tensor,
    stats: &Tensor,
    groups: usize,
    silu: bool,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(
        &wb.contiguous()?,
        &stats.contiguous()?,
        &GroupNormApplyOp { groups, silu },
    )
}

/// 1×1 convolution of x (b, c_in, h·w) with w (c_out, c_in) and bias (c_out): one f32 GEMM per
/// image on [`crate::cpu::sgemm`] (the input read as it is, bias fused). Returns (b, c_out, h·w).
pub fn conv1x1(x: &Tensor, w: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3_no_bwd(&w.contiguous()?, &bias.contiguous()?, &Conv1x1Op)
}

/// 3×3 convolution, stride 1, padding 1 (after a nearest 2× upsample with `upsample`), f32
/// on the CPU, inference only (see [`crate::ops::vae::conv3x3`]).
pub fn conv3x3(x: &Tensor, weight: &Tensor, bias: Option<Vec<f32>>, upsample: bool) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&weight.contiguous()?, &Conv3x3Op::new(upsample, bias))
}

/// [`conv3x3`] without upsampling or bias, with the GEMM backward (training).
pub fn conv3x3_train(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, Conv3x3Op::new(false, None))
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
                    crate::cpu::vector::silu_in_place(d);
                }
            });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }
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
        use crate::cpu::sgemm;
        let (x, w, bias) = (
            contiguous_data::<f32>(s1, l1, "conv1x1 input")?,
            contiguous_data::<f32>(s2, l2, "conv1x1 weight")?,
            contiguous_data::<f32>(s3, l3, "conv1x1 bias")?,
        );
        let (b, c_in, hw) = l1.shape().dims3()?;
        let c_out = l2.dims()[0];
        let gerr = |e: crate::cpu::bf16::GemmError| candle_core::Error::Msg(e.to_string());
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

pub(crate) struct Conv3x3Op {
    pub(crate) upsample: bool,
    /// Added per output channel while the result is copied out (inference only: the
    /// backward has no bias gradient, so training adds its bias outside the op).
    pub(crate) bias: Option<Vec<f32>>,
    /// On the AVX-512 f32 GEMM ([`crate::cpu::sgemm`]) rather than the `gemm` crate.
    pub(crate) native: bool,
}

impl Conv3x3Op {
    fn new(upsample: bool, bias: Option<Vec<f32>>) -> Self {
        Self {
            upsample,
            bias,
            native: crate::cpu::sgemm::native_available(),
        }
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
    /// The conv as one GEMM per band of output rows on [`crate::cpu::sgemm`]:
    /// `out (c_out, positions) = A (c_out, 9·c_in) · B (9·c_in, positions) + bias`, with
    /// `k = tap · c_in + ci` (tap = ky · 3 + kx). B, the shifted zero-padded (upsampled)
    /// input, is never built: [`pack_conv_panel`] writes each panel the GEMM asks for straight
    /// from `x`, and the GEMM writes its rows of the output in place (bias fused).
    fn fwd_native(&self, x: &[f32], wt: &[f32], b: usize, c_out: usize, g: ConvGeom) -> candle_core::Result<Vec<f32>> {
        use crate::cpu::sgemm;
        let gerr = |e: crate::cpu::bf16::GemmError| candle_core::Error::Msg(e.to_string());
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
        let out_ptr = super::Shared::new(out.as_mut_ptr());
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
/// `p0..p0 + kc` of `k = tap · c_in + ci`, the [`crate::cpu::sgemm::NR`] positions from `c0`;
/// `B[(tap, ci), pos] = x_up[ci, oy + ky − 1, ox + kx − 1]` (zero outside the image), where
/// `x_up` is `x` upsampled by `g.f` and `(oy, ox)` the position's output row and column.
#[allow(clippy::too_many_arguments)]
fn pack_conv_panel(dst: &mut [f32], x: &[f32], g: ConvGeom, y0: usize, n: usize, p0: usize, kc: usize, c0: usize) {
    use crate::cpu::sgemm::NR;
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
        let out_ptr = super::Shared::new(out.as_mut_ptr());
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
