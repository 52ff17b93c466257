//! The CPU kernels: matrix products and the fused operations built on them.
//!
//! - [`bf16`]: a native bf16 GEMM (`vdpbf16ps` micro-kernel on CPUs with AVX512-BF16, chosen at
//!   run time; a portable kernel with the same arithmetic elsewhere): both operands packed into
//!   cache-sized panels, f32 accumulation, bf16 or f32 output, parallel over output blocks.
//! - [`sgemm`]: an f32 GEMM with an AVX-512 micro-kernel (8 × 48 tile), B packed whole or
//!   block by block from a Linear weight, a row-major matrix or shifted rows (convolution).
//! - [`lhs`]: the left operand of both GEMMs, packed or read in place.
//! - [`attention`]: fused attention on those GEMMs (scores per query block, bias and softmax
//!   in f32 in cache), for the transformer, the T5 encoder and the VAE.
//! - [`vector`]: vectorised f32 row kernels (e^x, softmax, tanh-GELU, SiLU) chosen at run time.
//! - [`rows`]: softmax, GELU, LayerNorm (+ adaLN modulation) and the gated residual as custom
//!   ops, parallel over rows.
//! - [`t5`]: T5's RMS norm and gated GELU in bf16.
//! - [`vae`]: the VAE's GroupNorm (+ SiLU), 3×3 and 1×1 convolutions.
//! - [`quant`]: ggml's block formats (GGUF): dequantization of every type we read, quantization
//!   of Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and BF16, bit for bit as gguf-py.
//! - [`qgemm`]: [`qgemm::QuantMatrix`], a Linear weight kept quantized, multiplied by the bf16
//!   or f32 GEMM on slabs dequantized inside each task.
//! - [`grad`]: GELU, softmax, LayerNorm, modulation and the gated residual with a backward.
//!
//! Apart from [`grad`], forward only: these are custom ops without a backward, and the
//! dispatch layer ([`crate::ops`]) sends tensors that track gradients elsewhere.
pub mod attention;
pub mod bf16;
pub mod grad;
pub mod lhs;
pub mod qgemm;
pub mod quant;
pub mod rows;
pub mod sgemm;
pub mod t5;
pub mod vae;
pub mod vector;

use rayon::prelude::*;

/// Whether `PIXART_GEMM=fallback` sends callers to candle's matmul instead of the native GEMMs
/// (for comparisons).
pub(crate) fn fallback_forced() -> bool {
    std::env::var("PIXART_GEMM").is_ok_and(|v| v.eq_ignore_ascii_case("fallback"))
}

/// The elements of a contiguous CPU tensor of element type `T`, for custom ops; an error naming
/// `what` when the storage holds another dtype or the layout is not contiguous.
pub fn contiguous_data<'a, T: candle_core::WithDType>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    match (s.as_slice::<T>(), l.contiguous_offsets()) {
        (Ok(v), Some((a, b))) => Ok(&v[a..b]),
        _ => Err(candle_core::Error::Msg(format!(
            "{what} must be contiguous {:?}",
            T::DTYPE
        ))),
    }
}

/// Raw parts of an output buffer (a pointer, or a small struct of pointers and strides) shared
/// by the parallel tasks of one kernel call, each of which writes a range of the buffer no
/// other task touches while the buffer's owner waits for them: the crate's one wrapper that
/// lets raw pointers cross threads.
#[derive(Clone, Copy)]
pub(crate) struct Shared<T: Copy>(T);

// SAFETY: a `Shared` is only made over a buffer that outlives the parallel loop using it, whose
// tasks write disjoint ranges and only read what else it points to (the callers' invariant,
// stated where they write through it).
unsafe impl<T: Copy> Send for Shared<T> {}
// SAFETY: as above: no two tasks write the same element, and nobody reads an element while
// the loop may write it.
unsafe impl<T: Copy> Sync for Shared<T> {}

impl<T: Copy> Shared<T> {
    pub(crate) fn new(parts: T) -> Self {
        Self(parts)
    }

    /// The parts; writing through them is the caller's `unsafe`.
    pub(crate) fn get(&self) -> T {
        self.0
    }
}

/// Element types the row kernels read and write: computed in f32, rounded once on the way out.
pub trait Element: Copy + Send + Sync + Default {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
    /// `dst[i] = from_f32(src[i])` over the shorter of the two.
    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = Self::from_f32(*s);
        }
    }
}

impl Element for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Element for half::bf16 {
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        bf16::round_to_bf16(src, dst)
    }
}

impl Element for half::f16 {
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}

/// Rows per parallel task: about 16 K elements, so that rayon has pieces to share.
pub(crate) fn rows_per_task(dim: usize) -> usize {
    (16_384 / dim.max(1)).max(1)
}

/// The row-map helper of the row kernels: `f(row index, row, other row)` on f32 copies of the
/// `dim`-long rows of `x` (and of `y`, empty rows when `None`), in parallel over blocks of
/// [`rows_per_task`] rows; `f` leaves its result in `row`, which is written back as `T`. The
/// last row may be shorter than `dim` (element-wise ops cut a flat tensor into fixed rows).
pub(crate) fn map_rows<T: Element>(
    x: &[T],
    y: Option<&[T]>,
    dim: usize,
    f: impl Fn(usize, &mut [f32], &[f32]) + Sync,
) -> Vec<T> {
    let mut dst = vec![T::default(); x.len()];
    let dim = dim.max(1);
    let per_task = rows_per_task(dim);
    dst.par_chunks_mut(per_task * dim).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(bx, by): &mut (Vec<f32>, Vec<f32>), (t, d)| {
            let start = t * per_task * dim;
            for (r, drow) in d.chunks_mut(dim).enumerate() {
                let at = start + r * dim;
                bx.clear();
                bx.extend(x[at..at + drow.len()].iter().map(|v| v.to_f32()));
                by.clear();
                if let Some(y) = y {
                    by.extend(y[at..at + drow.len()].iter().map(|v| v.to_f32()));
                }
                f(t * per_task + r, bx, by);
                T::from_f32_slice(bx, drow);
            }
        },
    );
    dst
}
