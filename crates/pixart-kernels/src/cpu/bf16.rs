//! bf16 GEMM on the CPU: `C[m, n] = A[m, k] · B[k, n]` with bf16 operands, f32 accumulation
//! and a bf16 (plus bias) or f32 (times a scale) result.
//!
//! Written for this project; the structure is the usual GotoBLAS/BLIS one (K. Goto and R. van
//! de Geijn, "Anatomy of high-performance matrix multiplication", ACM TOMS 34(3), 2008):
//!
//! - `k` is taken in pairs, because `vdpbf16ps` multiplies two bf16 pairs per f32 lane and adds
//!   both products to the lane. A pair is stored as one `u32` (low half = the even `k`).
//! - A is packed in panels of [`MR`] rows: `panel[p][r] = (a[r, 2p], a[r, 2p+1])`; the
//!   micro-kernel broadcasts one `u32` per row and pair.
//! - B is packed in panels of [`NR`] columns: `panel[p][c] = (b[2p, c], b[2p+1, c])`; the
//!   micro-kernel loads `NR / 16` vectors of 16 columns per pair.
//! - Rows and columns beyond `m`, `n` and an odd last `k` are zero in the panels, so the
//!   micro-kernel always computes a whole `MR × NR` tile in 24 registers and the epilogue writes
//!   only the valid part (masked stores).
//! - The output is cut into blocks of [`MC`] × [`NC`], one rayon task each; `k` into blocks of
//!   [`KCP`] pairs, so that a task's A block and B block stay in L2 while the micro-kernel walks
//!   its tiles. With more than one `k` block the partial tiles are kept in f32 in a per-task
//!   buffer and the bias/rounding epilogue runs after the last one.
//!
//! The micro-kernel is `vdpbf16ps` (AVX512-BF16, detected at run time); other CPUs get a
//! portable kernel with the same arithmetic (exact bf16 products summed in f32), which is slow
//! and exists so that the packing and blocking are testable and the API is total. Callers that
//! have a faster fallback (candle's matmul) check [`native_available`] first.
use half::bf16;
use rayon::prelude::*;

/// Rows per micro-tile.
pub use crate::cpu::lhs::MR;
/// Columns per micro-tile (three 16-lane f32 vectors).
pub const NR: usize = 48;
const NV: usize = NR / 16;
/// `k` pairs per cache block (A block `MC × 2·KCP` and B block `2·KCP × NC` bf16 stay in L2).
pub const KCP: usize = 192;
/// Output rows per task (a multiple of [`MR`]).
pub const MC: usize = 128;
/// Output columns per task (a multiple of [`NR`]).
pub const NC: usize = 192;

type Result<T> = std::result::Result<T, GemmError>;

/// A shape or length that does not fit the GEMM's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GemmError(pub String);

impl std::fmt::Display for GemmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gemm: {}", self.0)
    }
}

impl std::error::Error for GemmError {}

fn err<T>(msg: String) -> Result<T> {
    Err(GemmError(msg))
}

/// Whether the native micro-kernel can run here: the CPU has AVX512-BF16 (with AVX512F/BW/VL)
/// and `PIXART_GEMM` is not set to `fallback` (which forces callers onto their fallback, for
/// comparisons).
pub fn native_available() -> bool {
    use std::sync::OnceLock;
    static NATIVE: OnceLock<bool> = OnceLock::new();
    *NATIVE.get_or_init(|| cpu_has_avx512bf16() && !crate::cpu::fallback_forced())
}

fn cpu_has_avx512bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[inline(always)]
fn pair(lo: u16, hi: u16) -> u32 {
    lo as u32 | (hi as u32) << 16
}

/// Checks that a row-major `rows × cols` matrix with leading dimension `ld` fits in `len`.
pub(crate) fn check_matrix(what: &str, len: usize, rows: usize, cols: usize, ld: usize) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    if ld < cols {
        return err(format!("{what}: leading dimension {ld} < {cols} columns"));
    }
    let need = (rows - 1) * ld + cols;
    if len < need {
        return err(format!(
            "{what}: {rows}×{cols} (ld {ld}) needs {need} elements, got {len}"
        ));
    }
    Ok(())
}

/// The left operand packed in panels of [`MR`] rows of bf16 pairs (reusable: packing again
/// keeps the allocation); `k` counts pairs.
pub type PackedA = crate::cpu::lhs::PackedLhs<u32>;

/// A source element that becomes bf16 bits when packed.
trait ToBf16Bits: Copy + Send + Sync {
    fn bits(self) -> u16;
}

impl ToBf16Bits for bf16 {
    #[inline(always)]
    fn bits(self) -> u16 {
        self.to_bits()
    }
}

impl ToBf16Bits for f32 {
    #[inline(always)]
    fn bits(self) -> u16 {
        bf16::from_f32(self).to_bits()
    }
}

fn pack_a_panel<T: ToBf16Bits>(dst: &mut [u32], src: &[T], rows: usize, k: usize, lda: usize, kp: usize) {
    for r in 0..MR {
        if r < rows {
            let row = &src[r * lda..r * lda + k];
            for (p, two) in row.chunks_exact(2).enumerate() {
                dst[p * MR + r] = pair(two[0].bits(), two[1].bits());
            }
            if k % 2 == 1 {
                dst[(kp - 1) * MR + r] = pair(row[k - 1].bits(), 0);
            }
        } else {
            for p in 0..kp {
                dst[p * MR + r] = 0;
            }
        }
    }
}

impl PackedA {
    /// `k` pairs (`ceil(k / 2)`).
    pub fn kpairs(&self) -> usize {
        self.k
    }

    fn pack<T: ToBf16Bits>(&mut self, a: &[T], m: usize, k: usize, lda: usize, par: bool) -> Result<()> {
        check_matrix("A", a.len(), m, k, lda)?;
        let kp = k.div_ceil(2);
        let data = self.reset(m, kp);
        if kp == 0 {
            return Ok(());
        }
        let job = |(i, dst): (usize, &mut [u32])| {
            let r0 = i * MR;
            let rows = MR.min(m - r0);
            pack_a_panel(dst, &a[r0 * lda..], rows, k, lda, kp);
        };
        if par && m * k >= 1 << 15 {
            data.par_chunks_mut(kp * MR).enumerate().for_each(job);
        } else {
            data.chunks_mut(kp * MR).enumerate().for_each(job);
        }
        Ok(())
    }

    /// Packs a row-major bf16 `m × k` matrix with leading dimension `lda`.
    pub fn pack_bf16(&mut self, a: &[bf16], m: usize, k: usize, lda: usize, par: bool) -> Result<()> {
        self.pack(a, m, k, lda, par)
    }

    /// Packs a row-major f32 `m × k` matrix, rounding to bf16 (to nearest even).
    pub fn pack_f32(&mut self, a: &[f32], m: usize, k: usize, lda: usize, par: bool) -> Result<()> {
        self.pack(a, m, k, lda, par)
    }
}

/// The left operand as the micro-kernel reads it: either packed panels or a row-major bf16
/// matrix read in place (no copy; needs an even `k` and leading dimension); `k` counts pairs.
pub type Lhs<'a> = crate::cpu::lhs::LhsOf<'a, u32>;

impl<'a> Lhs<'a> {
    /// A row-major bf16 `m × k` matrix with leading dimension `lda`, read in place; `k` and
    /// `lda` must be even.
    pub fn rows(a: &'a [bf16], m: usize, k: usize, lda: usize) -> Result<Self> {
        check_matrix("A", a.len(), m, k, lda)?;
        if k % 2 == 1 || lda % 2 == 1 {
            return err(format!("A read in place needs an even k and lda, got k {k}, lda {lda}"));
        }
        Ok(Self::from_parts(
            a.as_ptr() as *const u32,
            m,
            k / 2,
            MR * lda / 2,
            lda / 2,
            1,
        ))
    }
}

/// The right operand packed in panels of [`NR`] columns (reusable).
#[derive(Debug, Clone, Default)]
pub struct PackedB {
    data: Vec<u32>,
    n: usize,
    kp: usize,
}

impl PackedB {
    pub fn new() -> Self {
        Self::default()
    }

    /// Columns of the packed matrix.
    pub fn cols(&self) -> usize {
        self.n
    }

    /// `k` pairs (`ceil(k / 2)`).
    pub fn kpairs(&self) -> usize {
        self.kp
    }

    fn reset(&mut self, n: usize, k: usize) -> usize {
        let kp = k.div_ceil(2);
        self.n = n;
        self.kp = kp;
        self.data.clear();
        self.data.resize(n.div_ceil(NR) * kp * NR, 0);
        kp
    }

    /// Packs `B = Wᵀ` from a row-major `n × k` matrix `w` (the Linear weight layout, and `Kᵀ`
    /// in attention scores), leading dimension `ldw`.
    pub fn pack_nk(&mut self, w: &[bf16], n: usize, k: usize, ldw: usize, par: bool) -> Result<()> {
        check_matrix("W", w.len(), n, k, ldw)?;
        let kp = self.reset(n, k);
        if kp == 0 {
            return Ok(());
        }
        let job = |(i, dst): (usize, &mut [u32])| {
            let c0 = i * NR;
            let cols = NR.min(n - c0);
            for c in 0..cols {
                let row = &w[(c0 + c) * ldw..(c0 + c) * ldw + k];
                for (p, two) in row.chunks_exact(2).enumerate() {
                    dst[p * NR + c] = pair(two[0].to_bits(), two[1].to_bits());
                }
                if k % 2 == 1 {
                    dst[(kp - 1) * NR + c] = pair(row[k - 1].to_bits(), 0);
                }
            }
        };
        if par && n * k >= 1 << 15 {
            self.data.par_chunks_mut(kp * NR).enumerate().for_each(job);
        } else {
            self.data.chunks_mut(kp * NR).enumerate().for_each(job);
        }
        Ok(())
    }

    /// Packs `B` from a row-major `k × n` matrix `b` (e.g. the values in attention), leading
    /// dimension `ldb`.
    pub fn pack_kn(&mut self, b: &[bf16], k: usize, n: usize, ldb: usize, par: bool) -> Result<()> {
        check_matrix("B", b.len(), k, n, ldb)?;
        let kp = self.reset(n, k);
        if kp == 0 {
            return Ok(());
        }
        let job = |(i, dst): (usize, &mut [u32])| {
            let c0 = i * NR;
            let cols = NR.min(n - c0);
            for p in 0..kp {
                let r0 = &b[2 * p * ldb + c0..2 * p * ldb + c0 + cols];
                let d = &mut dst[p * NR..p * NR + cols];
                if 2 * p + 1 < k {
                    let r1 = &b[(2 * p + 1) * ldb + c0..(2 * p + 1) * ldb + c0 + cols];
                    for ((o, lo), hi) in d.iter_mut().zip(r0).zip(r1) {
                        *o = pair(lo.to_bits(), hi.to_bits());
                    }
                } else {
                    for (o, lo) in d.iter_mut().zip(r0) {
                        *o = pair(lo.to_bits(), 0);
                    }
                }
            }
        };
        if par && n * k >= 1 << 15 {
            self.data.par_chunks_mut(kp * NR).enumerate().for_each(job);
        } else {
            self.data.chunks_mut(kp * NR).enumerate().for_each(job);
        }
        Ok(())
    }
}

/// Where the product goes.
pub enum Output<'a> {
    /// `c = round_bf16(a·b + bias)`, row-major with leading dimension `ldc`; `bias` has `n`
    /// values.
    Bf16 {
        c: &'a mut [bf16],
        ldc: usize,
        bias: Option<&'a [f32]>,
    },
    /// `c = alpha · a·b` in f32, row-major with leading dimension `ldc`.
    F32 { c: &'a mut [f32], ldc: usize, alpha: f32 },
}

/// The output as raw parts, shared by the tasks (each writes a disjoint block).
#[derive(Clone, Copy)]
struct RawOut {
    bf16: bool,
    ptr: *mut u8,
    ldc: usize,
    /// Null when there is no bias.
    bias: *const f32,
    alpha: f32,
    m: usize,
    n: usize,
}

/// One micro-tile job: where its A and B panels start, its f32 staging tile and its place in
/// the output.
#[derive(Clone, Copy)]
struct Tile {
    pc: usize,
    /// The MR rows of A at the first pair of this k block, and the step from pair to pair.
    a: [*const u32; MR],
    a_step: usize,
    b: *const u32,
    stage: *mut f32,
    first: bool,
    last: bool,
    row0: usize,
    col0: usize,
}

type Kernel = unsafe fn(&Tile, &RawOut);

/// The micro-kernels by the number of 16-column vectors a tile needs (1 to [`NV`]): a tile
/// at the right edge whose valid columns fit in fewer vectors skips the zero padding of its
/// panel (the attention's `P·V` with 72 columns: 48 + 32 computed instead of 48 + 48).
type Kernels = [Kernel; NV];

/// `C = A·B` into `out` (see [`Output`]); `par` spreads the output blocks over rayon's pool.
pub fn gemm(a: Lhs<'_>, b: &PackedB, out: Output<'_>, par: bool) -> Result<()> {
    if a.k != b.kp {
        return err(format!("A has {} k pairs, B has {}", a.k, b.kp));
    }
    let (m, n) = (a.m, b.n);
    let raw = match out {
        Output::Bf16 { c, ldc, bias } => {
            check_matrix("C", c.len(), m, n, ldc)?;
            if let Some(bias) = bias {
                if bias.len() < n {
                    return err(format!("bias has {} values, C has {n} columns", bias.len()));
                }
            }
            RawOut {
                bf16: true,
                ptr: c.as_mut_ptr() as *mut u8,
                ldc,
                bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                alpha: 1.0,
                m,
                n,
            }
        }
        Output::F32 { c, ldc, alpha } => {
            check_matrix("C", c.len(), m, n, ldc)?;
            RawOut {
                bf16: false,
                ptr: c.as_mut_ptr() as *mut u8,
                ldc,
                bias: std::ptr::null(),
                alpha,
                m,
                n,
            }
        }
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    let kernels = select_kernel();
    let (mt, nt) = (m.div_ceil(MC), n.div_ceil(NC));
    let work = (m * n).saturating_mul(a.k.max(1));
    if par && mt * nt > 1 && work >= 1 << 18 {
        // Each task writes its own MC × NC block of C, borrowed for the whole call.
        let shared = super::Shared::new(raw);
        (0..mt * nt).into_par_iter().for_each_init(Vec::new, |buf, t| {
            run_block(&a, b, t / nt, t % nt, &shared.get(), buf, kernels)
        });
    } else {
        let mut buf = Vec::new();
        for t in 0..mt * nt {
            run_block(&a, b, t / nt, t % nt, &raw, &mut buf, kernels);
        }
    }
    Ok(())
}

fn select_kernel() -> Kernels {
    #[cfg(target_arch = "x86_64")]
    if cpu_has_avx512bf16() {
        return [kernel_avx512::<1>, kernel_avx512::<2>, kernel_avx512::<NV>];
    }
    [kernel_portable; NV]
}

/// One `MC × NC` output block: all its tiles over all `k` blocks.
fn run_block(a: &Lhs<'_>, b: &PackedB, ic: usize, jc: usize, out: &RawOut, buf: &mut Vec<f32>, kernels: Kernels) {
    let (m, n, kp) = (out.m, out.n, a.k);
    let (r0, c0) = (ic * MC, jc * NC);
    let (ip, jp) = ((MC.min(m - r0)).div_ceil(MR), (NC.min(n - c0)).div_ceil(NR));
    let kblocks = kp.div_ceil(KCP).max(1);
    if kblocks > 1 {
        buf.resize(ip * jp * MR * NR, 0.0);
    }
    for kb in 0..kblocks {
        let p0 = kb * KCP;
        let pc = KCP.min(kp - p0);
        for j in 0..jp {
            let bj = (c0 / NR + j) * kp * NR + p0 * NR;
            let kernel = kernels[NR.min(n - c0 - j * NR).div_ceil(16) - 1];
            for i in 0..ip {
                let stage = if kblocks > 1 {
                    buf[(j * ip + i) * MR * NR..].as_mut_ptr()
                } else {
                    std::ptr::null_mut()
                };
                let tile = Tile {
                    pc,
                    a: a.row_ptrs::<MR>(r0 / MR + i, p0),
                    a_step: a.k_stride,
                    b: b.data[bj..].as_ptr(),
                    stage,
                    first: kb == 0,
                    last: kb + 1 == kblocks,
                    row0: r0 + i * MR,
                    col0: c0 + j * NR,
                };
                // SAFETY: the panels hold `pc` pairs of MR (NR) values from these offsets; the
                // stage tile has MR×NR floats when there is more than one k block; the kernel
                // writes only rows < m and columns < n of this block, which no other task
                // writes.
                unsafe { kernel(&tile, out) };
            }
        }
    }
}

/// The portable micro-kernel: exact bf16 products summed in f32, pair by pair.
///
/// # Safety
/// As [`kernel_avx512`].
unsafe fn kernel_portable(t: &Tile, out: &RawOut) {
    let f = |bits: u32| f32::from_bits(bits << 16);
    let mut acc = [[0f32; NR]; MR];
    if !t.first {
        for (r, row) in acc.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = *t.stage.add(r * NR + c);
            }
        }
    }
    for p in 0..t.pc {
        let bp = t.b.add(p * NR);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = t.a[r].add(p * t.a_step).read_unaligned();
            let (a0, a1) = (f(av & 0xffff), f(av >> 16));
            for (c, v) in row.iter_mut().enumerate() {
                let bv = *bp.add(c);
                *v += a0 * f(bv & 0xffff) + a1 * f(bv >> 16);
            }
        }
    }
    if !t.last {
        for (r, row) in acc.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                *t.stage.add(r * NR + c) = *v;
            }
        }
        return;
    }
    let rows = MR.min(out.m - t.row0);
    let cols = NR.min(out.n - t.col0);
    for (r, row) in acc.iter().enumerate().take(rows) {
        let at = (t.row0 + r) * out.ldc + t.col0;
        for (c, v) in row.iter().enumerate().take(cols) {
            if out.bf16 {
                let b = if out.bias.is_null() {
                    0.0
                } else {
                    *out.bias.add(t.col0 + c)
                };
                *(out.ptr as *mut half::bf16).add(at + c) = bf16::from_f32(v + b);
            } else {
                *(out.ptr as *mut f32).add(at + c) = v * out.alpha;
            }
        }
    }
}

/// `vcvtneps2bf16`: 16 f32 to 16 bf16, rounded to nearest even, NaN kept (quiet), subnormal
/// inputs and outputs flushed to zero. One instruction where [`round_ps`] takes seven; its
/// intrinsic is not stable in Rust 1.95.
///
/// # Safety
/// The CPU must have AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
unsafe fn cvtneps2bf16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256i {
    let r: std::arch::x86_64::__m256i;
    // SAFETY: the caller checked AVX512-BF16; register operands only.
    unsafe {
        std::arch::asm!(
            "vcvtneps2bf16 {r}, {x}",
            x = in(zmm_reg) x,
            r = lateout(ymm_reg) r,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    r
}

/// 16 f32 to 16 bf16, rounded to nearest even, NaN kept quiet: the same bits as
/// `half::bf16::from_f32` (`vcvtneps2bf16` would flush subnormals, and its intrinsic is not
/// stable in Rust 1.95).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
fn round_ps(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let bits = _mm512_castps_si512(x);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    let quiet = _mm512_or_si512(bits, _mm512_set1_epi32(0x0040_0000));
    let r = _mm512_mask_mov_epi32(rounded, nan, quiet);
    _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(r))
}

/// The AVX512-BF16 micro-kernel: an `MR × 16·W` tile (the first `W` vectors of a panel's
/// [`NR`] columns) in `MR·W` zmm accumulators (24 for the full tile), one `vdpbf16ps` per row
/// and 16 columns and `k` pair.
///
/// # Safety
/// The CPU must have AVX512F/BW/VL and AVX512-BF16; `t.a` must hold `t.pc × MR` and `t.b`
/// `t.pc × NR` values; `t.stage` must hold `MR × NR` floats unless the tile is both first and
/// last; `out` must be valid for rows `< out.m` and columns `< out.n`; the tile's valid
/// columns must fit in `W` vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn kernel_avx512<const W: usize>(t: &Tile, out: &RawOut) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); W]; MR];
    if !t.first {
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(t.stage.add(r * NR + v * 16));
            }
        }
    }
    let (ar, mut off, mut bp) = (t.a, 0usize, t.b);
    for _ in 0..t.pc {
        let mut bv = [_mm512_setzero_si512(); W];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm512_loadu_si512(bp.add(v * 16) as *const __m512i);
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(ar[r].add(off).read_unaligned() as i32));
            for (x, b) in row.iter_mut().zip(&bv) {
                *x = _mm512_dpbf16_ps(*x, a, std::mem::transmute::<__m512i, __m512bh>(*b));
            }
        }
        off += t.a_step;
        bp = bp.add(NR);
    }
    if !t.last {
        for (r, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                _mm512_storeu_ps(t.stage.add(r * NR + v * 16), *x);
            }
        }
        return;
    }
    // The epilogue walks the tile with run-time bounds; a copy keeps `acc` itself indexed by
    // constants only, so that it stays in registers through the main loop.
    let mut res = [[_mm512_setzero_ps(); W]; MR];
    for r in 0..MR {
        for v in 0..W {
            res[r][v] = acc[r][v];
        }
    }
    let rows = MR.min(out.m - t.row0);
    let cols = NR.min(out.n - t.col0);
    let alpha = _mm512_set1_ps(out.alpha);
    for (r, row) in res.iter().enumerate() {
        if r >= rows {
            break;
        }
        let at = (t.row0 + r) * out.ldc + t.col0;
        for (v, x) in row.iter().enumerate() {
            let c = v * 16;
            if c >= cols {
                break;
            }
            let mask: u16 = if cols - c >= 16 {
                0xffff
            } else {
                ((1u32 << (cols - c)) - 1) as u16
            };
            if out.bf16 {
                let mut y = *x;
                if !out.bias.is_null() {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, out.bias.add(t.col0 + c)));
                }
                let h = round_ps(y);
                _mm256_mask_storeu_epi16((out.ptr as *mut half::bf16).add(at + c) as *mut i16, mask, h);
            } else {
                _mm512_mask_storeu_ps((out.ptr as *mut f32).add(at + c), mask, _mm512_mul_ps(*x, alpha));
            }
        }
    }
}

/// `x[m, k] · w[n, k]ᵀ (+ bias[n])` in bf16 with f32 accumulation, row-major, parallel: the
/// Linear layer's product. Returns `m × n` values. Packs `w` on every call; see
/// [`matmul_nt_packed`] to pack it once.
pub fn matmul_nt(x: &[bf16], m: usize, k: usize, w: &[bf16], n: usize, bias: Option<&[f32]>) -> Result<Vec<bf16>> {
    let mut pb = PackedB::new();
    pb.pack_nk(w, n, k, k, true)?;
    matmul_nt_packed(x, m, k, &pb, bias)
}

/// [`matmul_nt`] with the weight already packed ([`PackedB::pack_nk`]). `x` is read in place
/// when `k` is even, else packed into a buffer kept per thread.
pub fn matmul_nt_packed(x: &[bf16], m: usize, k: usize, w: &PackedB, bias: Option<&[f32]>) -> Result<Vec<bf16>> {
    thread_local! {
        static BUF: std::cell::RefCell<PackedA> = Default::default();
    }
    let n = w.cols();
    let mut c = vec![bf16::ZERO; m * n];
    let run = |pa: &mut PackedA, c: &mut [bf16]| -> Result<()> {
        let lhs = if k.is_multiple_of(2) {
            Lhs::rows(x, m, k, k)?
        } else {
            pa.pack_bf16(x, m, k, k, true)?;
            Lhs::packed(pa)
        };
        gemm(lhs, w, Output::Bf16 { c, ldc: n, bias }, true)
    };
    BUF.with(|buf| match buf.try_borrow_mut() {
        Ok(mut pa) => run(&mut pa, &mut c),
        // Re-entered from a task that this thread ran while waiting: a fresh buffer.
        Err(_) => run(&mut PackedA::new(), &mut c),
    })?;
    Ok(c)
}

/// Rounds f32 values to bf16 (to nearest even, as `half::bf16::from_f32`) into `dst` (the
/// shorter length of the two), 16 at a time with AVX-512 where the CPU has it.
pub fn round_to_bf16(src: &[f32], dst: &mut [bf16]) {
    #[cfg(target_arch = "x86_64")]
    if cpu_has_avx512bf16() {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { round_avx512(src, dst) };
        return;
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = bf16::from_f32(*s);
    }
}

/// `dst = round_bf16(softmax(row))` (the shorter length of the two); `row` is scratch. The
/// same values, bit for bit, as [`crate::cpu::vector::softmax_in_place`] followed by
/// [`round_to_bf16`], except that a probability below 2^-126 (an f32 subnormal) becomes 0:
/// where the CPU has AVX512-BF16 it is three passes over the row instead of five, the last
/// rounding with `vcvtneps2bf16` (the attention's softmax of every score block).
pub fn softmax_to_bf16(row: &mut [f32], dst: &mut [bf16]) {
    let n = row.len().min(dst.len());
    let row = &mut row[..n];
    #[cfg(target_arch = "x86_64")]
    if cpu_has_avx512bf16() {
        // SAFETY: the CPU has the features the functions are compiled for.
        unsafe {
            let inv = exp_sum_avx512(row);
            scale_round_avx512::<true>(row, inv, dst);
        }
        return;
    }
    crate::cpu::vector::softmax_in_place(row);
    round_to_bf16(row, dst);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,fma")]
unsafe fn exp_sum_avx512(row: &mut [f32]) -> f32 {
    crate::cpu::vector::exp_sum::<crate::cpu::vector::Fused>(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn scale_round_avx512<const NATIVE: bool>(src: &[f32], inv: f32, dst: &mut [bf16]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr() as *mut i16);
    let scale = _mm512_set1_ps(inv);
    let mut i = 0;
    while i < n {
        let left = n - i;
        let mask: u16 = if left >= 16 {
            0xffff
        } else {
            ((1u32 << left) - 1) as u16
        };
        let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, s.add(i)), scale);
        let h = if NATIVE { cvtneps2bf16(v) } else { round_ps(v) };
        _mm256_mask_storeu_epi16(d.add(i), mask, h);
        i += 16;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn round_avx512(src: &[f32], dst: &mut [bf16]) {
    // x · 1 is x, bit for bit (NaNs are made quiet by the rounding either way).
    scale_round_avx512::<false>(src, 1.0, dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift) for test matrices.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn bf16s(&mut self, len: usize) -> Vec<bf16> {
            (0..len).map(|_| bf16::from_f32(self.next())).collect()
        }
    }

    /// f64 reference of `a·b` with `a` given by `at(i, kk)` and `b` by `bt(kk, j)`; also the
    /// sum of |products| per element, which bounds the f32 accumulation error.
    fn reference(
        m: usize,
        n: usize,
        k: usize,
        at: impl Fn(usize, usize) -> f64,
        bt: impl Fn(usize, usize) -> f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut c = vec![0f64; m * n];
        let mut mag = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for kk in 0..k {
                    let p = at(i, kk) * bt(kk, j);
                    c[i * n + j] += p;
                    mag[i * n + j] += p.abs();
                }
            }
        }
        (c, mag)
    }

    fn check_bf16(got: &[bf16], want: &[f64], mag: &[f64], what: &str) {
        for (i, ((g, w), s)) in got.iter().zip(want).zip(mag).enumerate() {
            // f32 accumulation error plus one bf16 rounding of the result.
            let tol = 1e-5 * s + w.abs() * 2f64.powi(-8) + 1e-30;
            let d = (g.to_f64() - w).abs();
            assert!(
                d <= tol,
                "{what}: element {i}: got {g}, want {w}, |diff| {d:e} > {tol:e}"
            );
        }
    }

    /// Shapes around the tile and block sizes: tails in m (MR, MC), n (NR, NC; of one, two
    /// and three vectors), odd k and more than one k block.
    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (2, 3, 5),
        (7, 47, 33),
        (9, 49, 64),
        (97, 193, 385),
        (100, 200, 2 * KCP + 3),
        (33, 50, 2 * KCP),
        (200, 97, 1152),
        (13, 300, 4 * KCP + 1),
        // Right-edge tiles of two vectors (the attention's P·V with d = 72), over several k
        // blocks, and of exactly two.
        (9, 72, 2 * KCP + 1),
        (5, 80, 7),
    ];

    #[test]
    fn matmul_nt_matches_f64_on_odd_shapes() {
        let mut rng = Rng(0x2545F4914F6CDD1D);
        for &(m, n, k) in SHAPES {
            let x = rng.bf16s(m * k);
            let w = rng.bf16s(n * k);
            let bias: Vec<f32> = (0..n).map(|_| rng.next()).collect();
            let got = matmul_nt(&x, m, k, &w, n, Some(&bias)).unwrap();
            let (mut want, mag) = reference(m, n, k, |i, kk| x[i * k + kk].to_f64(), |kk, j| w[j * k + kk].to_f64());
            for (i, v) in want.iter_mut().enumerate() {
                *v += bias[i % n] as f64;
            }
            check_bf16(&got, &want, &mag, &format!("nt {m}x{n}x{k}"));
        }
    }

    #[test]
    fn portable_kernel_matches_f64() {
        // The same blocking through the portable kernel, on every CPU.
        let mut rng = Rng(7);
        for &(m, n, k) in SHAPES {
            let x = rng.bf16s(m * k);
            let w = rng.bf16s(n * k);
            let mut pa = PackedA::new();
            pa.pack_bf16(&x, m, k, k, false).unwrap();
            let mut pb = PackedB::new();
            pb.pack_nk(&w, n, k, k, false).unwrap();
            let raw_len = m * n;
            let mut c = vec![0f32; raw_len];
            let out = RawOut {
                bf16: false,
                ptr: c.as_mut_ptr() as *mut u8,
                ldc: n,
                bias: std::ptr::null(),
                alpha: 1.0,
                m,
                n,
            };
            let mut buf = Vec::new();
            for ic in 0..m.div_ceil(MC) {
                for jc in 0..n.div_ceil(NC) {
                    run_block(&Lhs::packed(&pa), &pb, ic, jc, &out, &mut buf, [kernel_portable; NV]);
                }
            }
            let (want, mag) = reference(m, n, k, |i, kk| x[i * k + kk].to_f64(), |kk, j| w[j * k + kk].to_f64());
            for (i, ((g, w), s)) in c.iter().zip(&want).zip(&mag).enumerate() {
                assert!(
                    (*g as f64 - w).abs() <= 1e-5 * s + 1e-30,
                    "portable {m}x{n}x{k} element {i}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn f32_output_with_kn_packing_and_strides() {
        // C (ld 70) = 0.5 · A (f32, ld k+3, rounded to bf16) · B (k × n, ld n+5).
        let mut rng = Rng(99);
        let (m, n, k) = (45, 61, 77);
        let (lda, ldb, ldc) = (k + 3, n + 5, 70);
        let a: Vec<f32> = (0..m * lda).map(|_| rng.next()).collect();
        let b = rng.bf16s(k * ldb);
        let mut pa = PackedA::new();
        pa.pack_f32(&a, m, k, lda, true).unwrap();
        let mut pb = PackedB::new();
        pb.pack_kn(&b, k, n, ldb, true).unwrap();
        let mut c = vec![f32::NAN; m * ldc];
        gemm(
            Lhs::packed(&pa),
            &pb,
            Output::F32 {
                c: &mut c,
                ldc,
                alpha: 0.5,
            },
            true,
        )
        .unwrap();
        let ar = |i: usize, kk: usize| bf16::from_f32(a[i * lda + kk]).to_f64();
        let (want, mag) = reference(m, n, k, ar, |kk, j| b[kk * ldb + j].to_f64());
        for i in 0..m {
            for j in 0..ldc {
                let g = c[i * ldc + j];
                if j >= n {
                    assert!(g.is_nan(), "wrote outside the output at ({i}, {j})");
                    continue;
                }
                let (w, s) = (0.5 * want[i * n + j], 0.5 * mag[i * n + j]);
                assert!((g as f64 - w).abs() <= 1e-5 * s, "({i}, {j}): {g} vs {w}");
            }
        }
    }

    #[test]
    fn lhs_read_in_place_with_a_stride() {
        // A is the left 2·20 columns of a 37 × 50 matrix; C is bf16 with a leading dimension
        // larger than n and a bias.
        let mut rng = Rng(5);
        let (m, n, k, lda, ldc) = (37, 70, 40, 50, 75);
        let a = rng.bf16s(m * lda);
        let w = rng.bf16s(n * k);
        let bias: Vec<f32> = (0..n).map(|_| rng.next()).collect();
        let mut pb = PackedB::new();
        pb.pack_nk(&w, n, k, k, false).unwrap();
        let mut c = vec![bf16::NAN; m * ldc];
        let lhs = Lhs::rows(&a, m, k, lda).unwrap();
        gemm(
            lhs,
            &pb,
            Output::Bf16 {
                c: &mut c,
                ldc,
                bias: Some(&bias),
            },
            true,
        )
        .unwrap();
        let (mut want, mag) = reference(
            m,
            n,
            k,
            |i, kk| a[i * lda + kk].to_f64(),
            |kk, j| w[j * k + kk].to_f64(),
        );
        for (i, v) in want.iter_mut().enumerate() {
            *v += bias[i % n] as f64;
        }
        let got: Vec<bf16> = (0..m).flat_map(|i| c[i * ldc..i * ldc + n].to_vec()).collect();
        check_bf16(&got, &want, &mag, "rows in place");
        assert!((0..m).all(|i| c[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan())));
        assert!(Lhs::rows(&a, m, 39, lda).is_err(), "odd k");
    }

    #[test]
    fn fused_softmax_rounds_the_same_bits() {
        let mut rng = Rng(3);
        for n in [1, 15, 16, 17, 72, 300, 4096] {
            let row: Vec<f32> = (0..n).map(|i| rng.next() * (1 + i % 9) as f32).collect();
            let mut want_f = row.clone();
            crate::cpu::vector::softmax_in_place(&mut want_f);
            let mut want = vec![bf16::ZERO; n];
            round_to_bf16(&want_f, &mut want);
            let (mut scratch, mut got) = (row.clone(), vec![bf16::NAN; n + 1]);
            softmax_to_bf16(&mut scratch, &mut got);
            assert!(got[n].is_nan(), "wrote past the row");
            let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got[..n]), bits(&want), "n = {n}");
        }
        // Probabilities in the f32 subnormal range (e^-87.3 / 2 here) may be flushed to zero;
        // NaN stays NaN.
        let (mut row, mut got) = (vec![0.0, 0.0, -100.0, f32::NAN], vec![bf16::ZERO; 4]);
        softmax_to_bf16(&mut row[..3], &mut got[..3]);
        assert_eq!(&got[..2], &[bf16::from_f32(0.5); 2]);
        assert!(got[2].to_f32() < f32::MIN_POSITIVE, "{}", got[2]);
        softmax_to_bf16(&mut row, &mut got);
        assert!(got.iter().all(|v| v.is_nan()), "{got:?}");
    }

    #[test]
    fn rounding_to_bf16_matches_half() {
        let mut rng = Rng(11);
        let src: Vec<f32> = (0..1000)
            .map(|i| rng.next() * 10f32.powi(i % 7 - 3))
            .chain([0.0, -0.0, 1.0 + f32::EPSILON, f32::MAX, f32::INFINITY, 3.0e38])
            .collect();
        let mut got = vec![bf16::ZERO; 999 + 6];
        round_to_bf16(&src, &mut got);
        for (i, (g, s)) in got.iter().zip(&src).enumerate() {
            assert_eq!(g.to_bits(), bf16::from_f32(*s).to_bits(), "element {i}: {s}");
        }
        assert_eq!(got.len(), 1005);
    }

    #[test]
    fn shape_errors_are_reported() {
        let mut pa = PackedA::new();
        assert!(pa.pack_bf16(&[bf16::ZERO; 5], 2, 3, 3, false).is_err(), "A too short");
        assert!(pa.pack_bf16(&[bf16::ZERO; 8], 2, 3, 2, false).is_err(), "lda < k");
        pa.pack_bf16(&[bf16::ZERO; 6], 2, 3, 3, false).unwrap();
        let mut pb = PackedB::new();
        pb.pack_nk(&[bf16::ZERO; 10], 2, 5, 5, false).unwrap();
        let mut c = vec![bf16::ZERO; 4];
        let e = gemm(
            Lhs::packed(&pa),
            &pb,
            Output::Bf16 {
                c: &mut c,
                ldc: 2,
                bias: None,
            },
            false,
        );
        assert!(e.is_err(), "k 3 against k 5");
        pb.pack_nk(&[bf16::ZERO; 8], 2, 4, 4, false).unwrap();
        let e = gemm(
            Lhs::packed(&pa),
            &pb,
            Output::Bf16 {
                c: &mut c[..3],
                ldc: 2,
                bias: None,
            },
            false,
        );
        assert!(e.is_err(), "C too short");
        let e = gemm(
            Lhs::packed(&pa),
            &pb,
            Output::Bf16 {
                c: &mut c,
                ldc: 2,
                bias: Some(&[0.0]),
            },
            false,
        );
        assert!(e.is_err(), "bias too short");
        gemm(
            Lhs::packed(&pa),
            &pb,
            Output::Bf16 {
                c: &mut c,
                ldc: 2,
                bias: None,
            },
            false,
        )
        .unwrap();
    }
}
