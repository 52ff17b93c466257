//! f32 GEMM on the CPU: `C[m, n] = alpha · A[m, k] · B[k, n] (+ C) (+ bias)`, with an AVX-512
//! micro-kernel.
//!
//! Why: candle's f32 matmul (the `gemm` crate) runs its AVX2 kernels on this CPU (its AVX-512
//! kernels need a nightly feature): a 6 × 16 tile in 12 `ymm` registers, one broadcast or load
//! per two FMAs, which a Zen 4 core cannot feed at its FMA rate. Here the tile is 8 × 48 in 24
//! `zmm` accumulators: per `k` three vector loads and eight broadcasts for 24 FMAs.
//!
//! Written for this project; the structure is the usual GotoBLAS/BLIS one (K. Goto and R. van
//! de Geijn, "Anatomy of high-performance matrix multiplication", ACM TOMS 34(3), 2008), as in
//! [`crate::cpu::bf16`], with two differences:
//!
//! - B can be given unpacked ([`Rhs::Nk`], [`Rhs::Kn`], [`Rhs::Panels`]): each task then packs
//!   the `KC × NC` block it needs into a buffer of its own, so a Linear layer keeps one copy of
//!   its f32 weight (a packed copy would double the transformer's 2.4 GB) and the VAE's 3×3
//!   convolution reads its nine shifted inputs without an im2col buffer.
//! - A is read in place (any leading dimension: the micro-kernel broadcasts one value per row
//!   and `k`) or from [`PackedA`] panels; partial sums over `k` blocks are kept in C itself.
//!
//! A task is one column block of [`NC`] columns and a range of rows: for each `k` block it
//! packs its B block (kept in L2) and walks its rows tile by tile (each A micro-panel, `MR`
//! rows × [`KC`], stays in L1 while the tile walks the block's column panels).
//!
//! CPUs without AVX-512 get a portable kernel (slow; it exists so that the blocking and packing
//! are testable and the API is total). Callers with a faster fallback (candle) check
//! [`native_available`] first.
use rayon::prelude::*;

use crate::cpu::bf16::{check_matrix, GemmError};

/// Rows per micro-tile.
pub use crate::cpu::lhs::MR;
/// Columns per micro-tile (three 16-lane vectors).
pub const NR: usize = 48;
const NV: usize = NR / 16;
/// `k` per cache block: a B block (`KC × NC`, 295 KB) stays in L2, an A micro-panel
/// (`MR × KC`, 12 KB) in L1.
pub const KC: usize = 384;
/// Columns per task (a multiple of [`NR`]).
pub const NC: usize = 192;

type Result<T> = std::result::Result<T, GemmError>;

fn err<T>(msg: String) -> Result<T> {
    Err(GemmError(msg))
}

/// Whether the AVX-512 micro-kernel runs here: the CPU has AVX512F and `PIXART_GEMM` is not
/// `fallback` (which sends callers to candle, for comparisons).
pub fn native_available() -> bool {
    use std::sync::OnceLock;
    static NATIVE: OnceLock<bool> = OnceLock::new();
    *NATIVE.get_or_init(|| cpu_has_avx512f() && !crate::cpu::fallback_forced())
}

fn cpu_has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The left operand packed in panels of [`MR`] rows: `panel[p][r] = a[r, p]`.
pub type PackedA = crate::cpu::lhs::PackedLhs<f32>;

impl PackedA {
    /// Packs a row-major `m × k` matrix with leading dimension `lda` (rows past `m` are zero).
    pub fn pack(&mut self, a: &[f32], m: usize, k: usize, lda: usize) -> Result<()> {
        check_matrix("A", a.len(), m, k, lda)?;
        let data = self.reset(m, k);
        if k == 0 {
            return Ok(());
        }
        for (i, dst) in data.chunks_mut(k * MR).enumerate() {
            for r in 0..MR.min(m - i * MR) {
                let row = &a[(i * MR + r) * lda..(i * MR + r) * lda + k];
                for (p, v) in row.iter().enumerate() {
                    dst[p * MR + r] = *v;
                }
            }
        }
        Ok(())
    }
}

/// The left operand as the micro-kernel reads it.
pub type Lhs<'a> = crate::cpu::lhs::LhsOf<'a, f32>;

impl<'a> Lhs<'a> {
    /// A row-major `m × k` matrix with leading dimension `lda`, read in place.
    pub fn rows(a: &'a [f32], m: usize, k: usize, lda: usize) -> Result<Self> {
        check_matrix("A", a.len(), m, k, lda)?;
        Ok(Self::from_parts(a.as_ptr(), m, k, MR * lda, lda, 1))
    }
}

/// The right operand packed whole in panels of [`NR`] columns (`panel[p][c] = b[p, c]`), for
/// a B used by many products (attention keys and values).
#[derive(Debug, Clone, Default)]
pub struct PackedB {
    data: Vec<f32>,
    n: usize,
    k: usize,
}

impl PackedB {
    pub fn new() -> Self {
        Self::default()
    }

    /// Columns of the packed matrix.
    pub fn cols(&self) -> usize {
        self.n
    }

    /// Packs `src` (all its `k` and `n`) whole.
    pub fn pack(&mut self, src: Rhs<'_>, k: usize, n: usize) -> Result<()> {
        src.check(k, n)?;
        self.n = n;
        self.k = k;
        self.data.clear();
        self.data.resize(n.div_ceil(NR) * k * NR, 0.0);
        if k == 0 {
            return Ok(());
        }
        for (j, dst) in self.data.chunks_mut(k * NR).enumerate() {
            src.pack_panel(dst, 0, k, j * NR, n);
        }
        Ok(())
    }
}

/// Where B comes from.
#[derive(Clone, Copy)]
pub enum Rhs<'a> {
    /// Packed whole.
    Packed(&'a PackedB),
    /// `B = Wᵀ` of a row-major `n × k` matrix `w` with leading dimension `ld` (a Linear
    /// weight, or the keys in attention scores).
    Nk { w: &'a [f32], ld: usize },
    /// A row-major `k × n` matrix with leading dimension `ld`.
    Kn { b: &'a [f32], ld: usize },
    /// B packed panel by panel by the caller's function: `f(dst, p0, kc, c0)` writes
    /// `dst[p·NR + c] = B[p0 + p, c0 + c]` for `p < kc` and `c < NR` (zero for columns past
    /// `n`); `dst` holds `kc × NR` values. For operands that exist only implicitly (a
    /// convolution's shifted, zero-padded input).
    Panels(&'a PanelFn<'a>),
}

/// See [`Rhs::Panels`].
pub type PanelFn<'a> = dyn Fn(&mut [f32], usize, usize, usize) + Sync + 'a;

impl Rhs<'_> {
    fn check(&self, k: usize, n: usize) -> Result<()> {
        match *self {
            Rhs::Packed(p) => {
                if (p.k, p.n) != (k, n) {
                    return err(format!("packed B is {}×{}, expected {k}×{n}", p.k, p.n));
                }
                Ok(())
            }
            Rhs::Nk { w, ld } => check_matrix("W", w.len(), n, k, ld),
            Rhs::Kn { b, ld } => check_matrix("B", b.len(), k, n, ld),
            Rhs::Panels(_) => Ok(()),
        }
    }

    /// Packs rows `p0..p0 + kc` and the [`NR`] columns from `c0` (zero past `n`) into `dst`
    /// (`kc × NR`). Unpacked sources only; the bounds were checked by [`Rhs::check`].
    fn pack_panel(&self, dst: &mut [f32], p0: usize, kc: usize, c0: usize, n: usize) {
        let cols = NR.min(n - c0);
        match *self {
            Rhs::Packed(_) => unreachable!("a packed B is not packed again"),
            Rhs::Nk { w, ld } => {
                if cols < NR {
                    dst[..kc * NR].fill(0.0);
                }
                // Whole 8 × 8 blocks transposed in registers, the edges one by one.
                let (c8, p8) = (cols / 8 * 8, kc / 8 * 8);
                #[cfg(target_arch = "x86_64")]
                if cpu_has_avx512f() {
                    for c in (0..c8).step_by(8) {
                        for p in (0..p8).step_by(8) {
                            let at = (c0 + c) * ld + p0 + p;
                            // In bounds: rows c0 + c..c0 + c + 8 <= n of W hold k >= p0 + p + 8
                            // values at stride `ld`; dst holds kc × NR values.
                            let (src, out) = (&w[at..at + 7 * ld + 8], &mut dst[p * NR + c..(p + 7) * NR + c + 8]);
                            // SAFETY: AVX is there (AVX512F implies it); both slices cover the
                            // 8 × 8 block at their strides (checked by the slicing above).
                            unsafe { transpose8x8(src.as_ptr(), ld, out.as_mut_ptr(), NR) };
                        }
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                let (c8, p8) = (0, 0);
                for c in 0..cols {
                    let row = &w[(c0 + c) * ld + p0..(c0 + c) * ld + p0 + kc];
                    let from = if c < c8 { p8 } else { 0 };
                    for (p, v) in row.iter().enumerate().skip(from) {
                        dst[p * NR + c] = *v;
                    }
                }
            }
            Rhs::Kn { b, ld } => {
                for (p, d) in dst.chunks_exact_mut(NR).take(kc).enumerate() {
                    let at = (p0 + p) * ld + c0;
                    d[..cols].copy_from_slice(&b[at..at + cols]);
                    d[cols..].fill(0.0);
                }
            }
            Rhs::Panels(f) => f(&mut dst[..kc * NR], p0, kc, c0),
        }
    }
}

/// An addend broadcast over the product.
#[derive(Clone, Copy, Default)]
pub enum Bias<'a> {
    #[default]
    None,
    /// One value per column (`n`): a Linear layer's bias.
    Cols(&'a [f32]),
    /// One value per row (`m`): a convolution's bias with channels as rows.
    Rows(&'a [f32]),
}

/// Where the product goes: `c = alpha · A·B + bias`, or with `accumulate`
/// `c = c + alpha · A·B + bias`; row-major with leading dimension `ldc`.
pub struct Output<'a> {
    pub c: &'a mut [f32],
    pub ldc: usize,
    pub alpha: f32,
    pub bias: Bias<'a>,
    pub accumulate: bool,
}

impl<'a> Output<'a> {
    /// `c = A·B`.
    pub fn new(c: &'a mut [f32], ldc: usize) -> Self {
        Self {
            c,
            ldc,
            alpha: 1.0,
            bias: Bias::None,
            accumulate: false,
        }
    }
}

/// The output as raw parts, shared by the tasks (each writes disjoint tiles).
#[derive(Clone, Copy)]
struct RawOut {
    ptr: *mut f32,
    ldc: usize,
    alpha: f32,
    /// Null when absent.
    bias_cols: *const f32,
    bias_rows: *const f32,
    accumulate: bool,
    m: usize,
    n: usize,
}

/// One micro-tile over one `k` block.
#[derive(Clone, Copy)]
struct Tile {
    kc: usize,
    a: [*const f32; MR],
    a_step: usize,
    b: *const f32,
    /// Start from C (a later `k` block, or accumulating) instead of zero.
    load_c: bool,
    /// The last `k` block: apply alpha and the bias.
    last: bool,
    row0: usize,
    col0: usize,
}

type Kernel = unsafe fn(&Tile, &RawOut);

/// The micro-kernels by the number of 16-column vectors a tile needs (1 to [`NV`]): a tile
/// at the right edge whose valid columns fit in fewer vectors skips its panel's zero padding.
type Kernels = [Kernel; NV];

/// `C = alpha·A·B (+ C) (+ bias)` (see [`Output`]) for A `m × k` (from `a`) and B `k × n`;
/// `par` spreads the work over rayon's pool. With `accumulate`, `alpha` must be 1.
pub fn gemm(a: Lhs<'_>, b: Rhs<'_>, n: usize, out: Output<'_>, par: bool) -> Result<()> {
    gemm_with(a, b, n, out, par, select_kernel())
}

fn gemm_with(a: Lhs<'_>, b: Rhs<'_>, n: usize, out: Output<'_>, par: bool, kernels: Kernels) -> Result<()> {
    let (m, k) = (a.m, a.k);
    b.check(k, n)?;
    check_matrix("C", out.c.len(), m, n, out.ldc)?;
    let (bias_cols, bias_rows) = match out.bias {
        Bias::None => (std::ptr::null(), std::ptr::null()),
        Bias::Cols(v) if v.len() >= n => (v.as_ptr(), std::ptr::null()),
        Bias::Rows(v) if v.len() >= m => (std::ptr::null(), v.as_ptr()),
        Bias::Cols(v) | Bias::Rows(v) => {
            return err(format!("bias has {} values, too few for a {m}×{n} product", v.len()))
        }
    };
    if out.accumulate && out.alpha != 1.0 {
        return err(format!("accumulating needs alpha 1, got {}", out.alpha));
    }
    let raw = RawOut {
        ptr: out.c.as_mut_ptr(),
        ldc: out.ldc,
        alpha: out.alpha,
        bias_cols,
        bias_rows,
        accumulate: out.accumulate,
        m,
        n,
    };
    run(a, b, raw, par, kernels);
    Ok(())
}

/// [`gemm`] into an output given by a pointer: `c[i·ldc + j] = A·B + bias` for `i < m` (A's
/// rows), `j < n`; for callers whose tasks each write a disjoint part of one buffer (a slice
/// per task would overlap).
///
/// # Safety
/// `c` must be valid for writes of those elements and no other thread may read or write them
/// during the call; a `bias` must have `m` (rows) or `n` (columns) values.
pub unsafe fn gemm_raw(
    a: Lhs<'_>,
    b: Rhs<'_>,
    n: usize,
    c: *mut f32,
    ldc: usize,
    bias: Bias<'_>,
    par: bool,
) -> Result<()> {
    b.check(a.k, n)?;
    let (bias_cols, bias_rows) = match bias {
        Bias::None => (std::ptr::null(), std::ptr::null()),
        Bias::Cols(v) if v.len() >= n => (v.as_ptr(), std::ptr::null()),
        Bias::Rows(v) if v.len() >= a.m => (std::ptr::null(), v.as_ptr()),
        Bias::Cols(v) | Bias::Rows(v) => return err(format!("bias has {} values, too few", v.len())),
    };
    let raw = RawOut {
        ptr: c,
        ldc,
        alpha: 1.0,
        bias_cols,
        bias_rows,
        accumulate: false,
        m: a.m,
        n,
    };
    run(a, b, raw, par, select_kernel());
    Ok(())
}

/// Splits the product into tasks (column blocks × row-panel groups) and runs them.
fn run(a: Lhs<'_>, b: Rhs<'_>, raw: RawOut, par: bool, kernels: Kernels) {
    let (m, n, k) = (raw.m, raw.n, a.k);
    if m == 0 || n == 0 {
        return;
    }
    let (nt, mp) = (n.div_ceil(NC), m.div_ceil(MR));
    let par = par && (m * n).saturating_mul(k.max(1)) >= 1 << 18;
    // Row-panel groups per column block: enough tasks to keep every thread busy.
    let groups = if par {
        (2 * rayon::current_num_threads()).div_ceil(nt).clamp(1, mp)
    } else {
        1
    };
    let per = mp.div_ceil(groups);
    let tasks = nt * mp.div_ceil(per);
    // Each task writes its own column block × row-panel group of C, borrowed for the whole call.
    let shared = super::Shared::new(raw);
    let task = |buf: &mut Vec<f32>, t: usize| {
        let (jc, g) = (t % nt, t / nt);
        run_task(
            &a,
            &b,
            jc,
            g * per..((g + 1) * per).min(mp),
            &shared.get(),
            buf,
            kernels,
        );
    };
    if par && tasks > 1 {
        (0..tasks).into_par_iter().for_each_init(Vec::new, task);
    } else {
        let mut buf = Vec::new();
        (0..tasks).for_each(|t| task(&mut buf, t));
    }
}

fn select_kernel() -> Kernels {
    #[cfg(target_arch = "x86_64")]
    if cpu_has_avx512f() {
        return [kernel_avx512::<1>, kernel_avx512::<2>, kernel_avx512::<NV>];
    }
    [kernel_portable; NV]
}

/// Column block `jc` ([`NC`] columns) for the row panels `panels`, over all `k` blocks.
fn run_task(
    a: &Lhs<'_>,
    b: &Rhs<'_>,
    jc: usize,
    panels: std::ops::Range<usize>,
    out: &RawOut,
    buf: &mut Vec<f32>,
    kernels: Kernels,
) {
    let (n, k) = (out.n, a.k);
    let c0 = jc * NC;
    let jp = NC.min(n - c0).div_ceil(NR);
    let kblocks = k.div_ceil(KC).max(1);
    for kb in 0..kblocks {
        let p0 = kb * KC;
        let kc = KC.min(k - p0);
        let (bp, panel_stride) = match b {
            Rhs::Packed(pb) => (pb.data.as_ptr().wrapping_add((c0 / NR) * k * NR + p0 * NR), k * NR),
            _ if kc == 0 => (buf.as_ptr(), 0), // nothing is read
            _ => {
                buf.resize(jp * kc * NR, 0.0);
                for (j, dst) in buf.chunks_exact_mut(kc * NR).take(jp).enumerate() {
                    b.pack_panel(dst, p0, kc, c0 + j * NR, n);
                }
                (buf.as_ptr(), kc * NR)
            }
        };
        for i in panels.clone() {
            let ap = a.row_ptrs::<MR>(i, p0);
            for j in 0..jp {
                let kernel = kernels[NR.min(n - c0 - j * NR).div_ceil(16) - 1];
                let tile = Tile {
                    kc,
                    a: ap,
                    a_step: a.k_stride,
                    b: bp.wrapping_add(j * panel_stride),
                    load_c: kb > 0 || out.accumulate,
                    last: kb + 1 == kblocks,
                    row0: i * MR,
                    col0: c0 + j * NR,
                };
                // SAFETY: the A rows hold `kc` values from `p0` at step `a_step` and the B panel
                // `kc × NR` values (both checked at entry); the kernel writes only rows < m and
                // columns < n of this tile, which no other task writes.
                unsafe { kernel(&tile, out) };
            }
        }
    }
}

/// `dst[j·ldd + i] = src[i·lds + j]` for an 8 × 8 block (AVX shuffles: pairs, quads, halves).
///
/// # Safety
/// The CPU must have AVX; `src` must hold 8 rows of 8 values at stride `lds`, `dst` 8 rows of
/// 8 at stride `ldd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8x8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    use std::arch::x86_64::*;
    let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * lds)));
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // q[g·4 + j]: rows 4g..4g+4, column pairs j (within each 128-bit half).
    let q: [__m256; 8] = std::array::from_fn(|i| {
        let (g, j) = (i / 4, i % 4);
        let (a, b) = (t[g * 4 + j / 2], t[g * 4 + 2 + j / 2]);
        if j % 2 == 0 {
            _mm256_shuffle_ps::<0x44>(a, b)
        } else {
            _mm256_shuffle_ps::<0xEE>(a, b)
        }
    });
    for j in 0..4 {
        _mm256_storeu_ps(dst.add(j * ldd), _mm256_permute2f128_ps::<0x20>(q[j], q[4 + j]));
        _mm256_storeu_ps(dst.add((j + 4) * ldd), _mm256_permute2f128_ps::<0x31>(q[j], q[4 + j]));
    }
}

/// Masks of the valid lanes of the tile's three column vectors.
fn col_masks(cols: usize) -> [u16; NV] {
    let mut m = [0u16; NV];
    for (v, x) in m.iter_mut().enumerate() {
        let left = cols.saturating_sub(v * 16);
        *x = if left >= 16 {
            0xffff
        } else {
            ((1u32 << left) - 1) as u16
        };
    }
    m
}

/// The portable micro-kernel (the same arithmetic order per element as the AVX-512 one).
///
/// # Safety
/// As [`kernel_avx512`].
unsafe fn kernel_portable(t: &Tile, out: &RawOut) {
    let rows = MR.min(out.m - t.row0);
    let cols = NR.min(out.n - t.col0);
    let mut acc = [[0f32; NR]; MR];
    for (r, row) in acc.iter_mut().enumerate().take(rows) {
        let c = out.ptr.add((t.row0 + r) * out.ldc + t.col0);
        if t.load_c {
            for (x, j) in row.iter_mut().zip(0..cols) {
                *x = *c.add(j);
            }
        }
    }
    for p in 0..t.kc {
        let bp = t.b.add(p * NR);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = *t.a[r].add(p * t.a_step);
            for (c, x) in row.iter_mut().enumerate() {
                *x = av.mul_add(*bp.add(c), *x);
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(rows) {
        let c = out.ptr.add((t.row0 + r) * out.ldc + t.col0);
        for (j, x) in row.iter().enumerate().take(cols) {
            let mut y = *x;
            if t.last {
                y *= out.alpha;
                if !out.bias_cols.is_null() {
                    y += *out.bias_cols.add(t.col0 + j);
                }
                if !out.bias_rows.is_null() {
                    y += *out.bias_rows.add(t.row0 + r);
                }
            }
            *c.add(j) = y;
        }
    }
}

/// The AVX-512 micro-kernel: an `MR × 16·W` tile (the first `W` vectors of a panel's [`NR`]
/// columns) in `MR·W` zmm accumulators; for the full tile, per `k` three loads of B, eight
/// broadcasts of A and 24 FMAs.
///
/// # Safety
/// The CPU must have AVX512F; `t.a[r]` must hold `t.kc` values at step `t.a_step` and `t.b`
/// `t.kc × NR`; `out` must be valid for rows `< out.m` and columns `< out.n`; the tile's valid
/// columns must fit in `W` vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512<const W: usize>(t: &Tile, out: &RawOut) {
    use std::arch::x86_64::*;
    let rows = MR.min(out.m - t.row0);
    let masks = col_masks(NR.min(out.n - t.col0));
    // Every row pointer of the tile (rows past `m` get empty masks: nothing is read or written).
    let row_ptr = |r: usize| out.ptr.wrapping_add((t.row0 + r) * out.ldc + t.col0);
    let row_mask = |r: usize, v: usize| if r < rows { masks[v] } else { 0 };
    let mut acc = [[_mm512_setzero_ps(); W]; MR];
    if t.load_c {
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                *x = _mm512_maskz_loadu_ps(row_mask(r, v), row_ptr(r).wrapping_add(v * 16));
            }
        }
    }
    let (ar, mut off, mut bp) = (t.a, 0usize, t.b);
    for _ in 0..t.kc {
        let mut bv = [_mm512_setzero_ps(); W];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(bp.add(v * 16));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*ar[r].add(off));
            for (x, b) in row.iter_mut().zip(&bv) {
                *x = _mm512_fmadd_ps(a, *b, *x);
            }
        }
        off += t.a_step;
        bp = bp.add(NR);
    }
    let alpha = _mm512_set1_ps(if t.last { out.alpha } else { 1.0 });
    for (r, row) in acc.iter().enumerate() {
        let row_bias = if t.last && !out.bias_rows.is_null() && r < rows {
            *out.bias_rows.add(t.row0 + r)
        } else {
            0.0
        };
        for (v, x) in row.iter().enumerate() {
            let mut y = _mm512_mul_ps(*x, alpha);
            if t.last {
                if !out.bias_cols.is_null() {
                    y = _mm512_add_ps(
                        y,
                        _mm512_maskz_loadu_ps(masks[v], out.bias_cols.wrapping_add(t.col0 + v * 16)),
                    );
                }
                y = _mm512_add_ps(y, _mm512_set1_ps(row_bias));
            }
            _mm512_mask_storeu_ps(row_ptr(r).wrapping_add(v * 16), row_mask(r, v), y);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// B's element (p, j), as the reference reads it.
    type Entry<'a> = Box<dyn Fn(usize, usize) -> f32 + 'a>;

    /// A small deterministic generator (values in [-1, 1)).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }

        fn vec(&mut self, len: usize) -> Vec<f32> {
            (0..len).map(|_| self.next()).collect()
        }
    }

    /// `alpha · a·b (+ c0) + bias` in f64; a (m × k, lda), b[p][j] given by `bat`.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        a: &[f32],
        lda: usize,
        bat: &dyn Fn(usize, usize) -> f32,
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        c0: Option<(&[f32], usize)>,
        bias: Bias<'_>,
    ) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    s += a[i * lda + p] as f64 * bat(p, j) as f64;
                }
                let mut y = alpha * s;
                if let Some((c, ldc)) = c0 {
                    y += c[i * ldc + j] as f64;
                }
                y += match bias {
                    Bias::None => 0.0,
                    Bias::Cols(v) => v[j] as f64,
                    Bias::Rows(v) => v[i] as f64,
                };
                out[i * n + j] = y;
            }
        }
        out
    }

    fn check(got: &[f32], ldc: usize, want: &[f64], m: usize, n: usize, k: usize, what: &str) {
        for i in 0..m {
            for j in 0..n {
                let (g, w) = (got[i * ldc + j] as f64, want[i * n + j]);
                // f32 rounding of k products and sums of magnitude <= k (inputs in [-1, 1)).
                let tol = 1e-6 * (k as f64 + 4.0);
                assert!((g - w).abs() <= tol, "{what}: ({i}, {j}) got {g}, want {w}");
            }
        }
    }

    /// Every source of B, both kernels, odd shapes, more than one k block, strided A and C,
    /// alpha, both biases and accumulation, against f64.
    #[test]
    fn products_match_f64_for_every_operand_kind() {
        let mut rng = Lcg(7);
        let mut kernels: Vec<(&str, Kernels)> = vec![("portable", [kernel_portable; NV])];
        if cpu_has_avx512f() {
            kernels.push(("avx512", select_kernel()));
        }
        // n: right-edge tiles of one, two (72 = 48 + 24) and three vectors.
        for (m, k, n) in [
            (1, 1, 1),
            (13, 29, 50),
            (37, 800, 250),
            (64, 72, 48),
            (11, 300, 72),
            (9, 0, 5),
        ] {
            let (lda, ldc) = (k + 3, n + 5);
            let a = rng.vec(m * lda);
            let w = rng.vec(n * (k + 1)); // n × k, ld k + 1
            let bkn = rng.vec(k * (n + 2)); // k × n, ld n + 2
            let bias_c = rng.vec(n);
            let bias_r = rng.vec(m);
            let c_init = rng.vec(m * ldc);
            let mut packed = PackedB::new();
            packed.pack(Rhs::Nk { w: &w, ld: k + 1 }, k, n).unwrap();
            let mut pa = PackedA::new();
            pa.pack(&a, m, k, lda).unwrap();
            // The k × n matrix again, packed by a caller's function.
            let panel = |dst: &mut [f32], p0: usize, kc: usize, c0: usize| {
                for p in 0..kc {
                    for c in 0..NR {
                        dst[p * NR + c] = if c0 + c < n {
                            bkn[(p0 + p) * (n + 2) + c0 + c]
                        } else {
                            0.0
                        };
                    }
                }
            };
            let sources: Vec<(&str, Rhs<'_>, Entry<'_>)> = vec![
                ("panels", Rhs::Panels(&panel), Box::new(|p, j| bkn[p * (n + 2) + j])),
                ("nk", Rhs::Nk { w: &w, ld: k + 1 }, Box::new(|p, j| w[j * (k + 1) + p])),
                ("packed", Rhs::Packed(&packed), Box::new(|p, j| w[j * (k + 1) + p])),
                (
                    "kn",
                    Rhs::Kn { b: &bkn, ld: n + 2 },
                    Box::new(|p, j| bkn[p * (n + 2) + j]),
                ),
            ];
            for (kname, kernel) in &kernels {
                for (sname, rhs, bat) in &sources {
                    for (case, alpha, bias, accumulate) in [
                        ("plain", 1.0f32, Bias::None, false),
                        ("alpha+cols", 0.37, Bias::Cols(&bias_c), false),
                        ("rows+acc", 1.0, Bias::Rows(&bias_r), true),
                    ] {
                        for packed_a in [false, true] {
                            let lhs = if packed_a {
                                Lhs::packed(&pa)
                            } else {
                                Lhs::rows(&a, m, k, lda).unwrap()
                            };
                            let mut c = c_init.clone();
                            let out = Output {
                                c: &mut c,
                                ldc,
                                alpha,
                                bias,
                                accumulate,
                            };
                            gemm_with(lhs, *rhs, n, out, true, *kernel).unwrap();
                            let want = reference(
                                &a,
                                lda,
                                bat.as_ref(),
                                m,
                                k,
                                n,
                                alpha as f64,
                                accumulate.then_some((&c_init[..], ldc)),
                                bias,
                            );
                            let what = format!("{kname} {sname} {case} packed_a={packed_a} {m}×{k}×{n}");
                            check(&c, ldc, &want, m, n, k, &what);
                            // The padding columns of each C row are untouched.
                            for i in 0..m {
                                assert_eq!(
                                    c[i * ldc + n..i * ldc + ldc],
                                    c_init[i * ldc + n..i * ldc + ldc],
                                    "{what}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The raw-pointer entry writes the same values as the slice one, with a row bias.
    #[test]
    fn raw_output_equals_slice_output() {
        let mut rng = Lcg(3);
        let (m, k, n) = (19, 45, 70);
        let (a, w, bias) = (rng.vec(m * k), rng.vec(n * k), rng.vec(m));
        let lhs = Lhs::rows(&a, m, k, k).unwrap();
        let mut want = vec![0f32; m * n];
        let mut out = Output::new(&mut want, n);
        out.bias = Bias::Rows(&bias);
        gemm(lhs, Rhs::Nk { w: &w, ld: k }, n, out, true).unwrap();
        let mut got = vec![0f32; m * (n + 1)];
        // SAFETY: `got` holds m rows of n + 1 values; nothing else touches it.
        unsafe {
            gemm_raw(
                lhs,
                Rhs::Nk { w: &w, ld: k },
                n,
                got.as_mut_ptr(),
                n + 1,
                Bias::Rows(&bias),
                true,
            )
            .unwrap()
        };
        for i in 0..m {
            assert_eq!(got[i * (n + 1)..i * (n + 1) + n], want[i * n..(i + 1) * n], "row {i}");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let a = vec![0f32; 12];
        let w = vec![0f32; 12];
        let mut c = vec![0f32; 9];
        let lhs = Lhs::rows(&a, 3, 4, 4).unwrap();
        assert!(Lhs::rows(&a, 4, 4, 4).is_err(), "A too short");
        assert!(
            gemm(lhs, Rhs::Nk { w: &w, ld: 4 }, 4, Output::new(&mut c, 3), false).is_err(),
            "W too short"
        );
        assert!(
            gemm(lhs, Rhs::Nk { w: &w, ld: 4 }, 3, Output::new(&mut c[..8], 3), false).is_err(),
            "C too short"
        );
        let mut out = Output::new(&mut c, 3);
        out.bias = Bias::Cols(&a[..2]);
        assert!(
            gemm(lhs, Rhs::Nk { w: &w, ld: 4 }, 3, out, false).is_err(),
            "bias too short"
        );
        let mut out = Output::new(&mut c, 3);
        (out.alpha, out.accumulate) = (2.0, true);
        assert!(
            gemm(lhs, Rhs::Nk { w: &w, ld: 4 }, 3, out, false).is_err(),
            "alpha with accumulate"
        );
        let e = gemm(lhs, Rhs::Nk { w: &w, ld: 4 }, 3, Output::new(&mut c, 3), false);
        assert!(e.is_ok(), "{e:?}");
    }
}
