//! The left operand of the GEMMs as their micro-kernels read it: panels of [`MR`] rows, either
//! packed ([`PackedLhs`]) or read in place from a row-major matrix ([`LhsOf`]). Shared by the
//! f32 GEMM ([`crate::cpu::sgemm`], elements f32) and the bf16 one ([`crate::cpu::bf16`],
//! elements bf16 pairs as `u32`); each module has its packing and in-place constructors.
use std::marker::PhantomData;

/// Rows per panel of the left operand, in both GEMMs (their micro-kernels' tile height).
pub const MR: usize = 8;

/// The left operand packed in panels of [`MR`] rows: `panel[p][r] = a[r, p]` in elements of
/// `E` (rows past `m` are zero). Reusable: packing again keeps the allocation.
#[derive(Debug, Clone, Default)]
pub struct PackedLhs<E> {
    pub(crate) data: Vec<E>,
    pub(crate) m: usize,
    /// Columns, in elements of `E`.
    pub(crate) k: usize,
}

impl<E: Copy + Default> PackedLhs<E> {
    pub fn new() -> Self {
        Self {
            data: Vec::new(),
            m: 0,
            k: 0,
        }
    }

    /// Rows of the packed matrix.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Makes room for an `m × k` matrix (zeros) and returns the panels, each `k × MR`.
    pub(crate) fn reset(&mut self, m: usize, k: usize) -> &mut [E] {
        self.m = m;
        self.k = k;
        self.data.clear();
        self.data.resize(m.div_ceil(MR) * k * MR, E::default());
        &mut self.data
    }
}

#[derive(Clone, Copy)]
pub struct LhsOf<'a, E> {
    base: *const E,
    pub(crate) m: usize,
    /// Columns, in elements of `E` (bf16 pairs for the bf16 GEMM).
    pub(crate) k: usize,
    /// Offsets (in `E`) between MR-row panels, rows within a panel, and consecutive columns.
    panel_stride: usize,
    row_stride: usize,
    pub(crate) k_stride: usize,
    _borrow: PhantomData<&'a [E]>,
}

// SAFETY: an `LhsOf` is a shared borrow of immutable data.
unsafe impl<E> Send for LhsOf<'_, E> {}
// SAFETY: as above.
unsafe impl<E> Sync for LhsOf<'_, E> {}

impl<'a, E> LhsOf<'a, E> {
    /// The operand at `base` with `m` rows of `k` columns laid out by the three strides. The
    /// constructors of each GEMM check that the data they borrow covers it.
    pub(crate) fn from_parts(
        base: *const E,
        m: usize,
        k: usize,
        panel_stride: usize,
        row_stride: usize,
        k_stride: usize,
    ) -> Self {
        Self {
            base,
            m,
            k,
            panel_stride,
            row_stride,
            k_stride,
            _borrow: PhantomData,
        }
    }

    /// A packed matrix.
    pub fn packed(a: &'a PackedLhs<E>) -> Self {
        Self::from_parts(a.data.as_ptr(), a.m, a.k, a.k * MR, 1, MR)
    }

    /// Pointers to the MR rows of panel `i` at column `p0`; rows past `m` repeat the last row
    /// (their results are never written).
    pub(crate) fn row_ptrs<const MR: usize>(&self, i: usize, p0: usize) -> [*const E; MR] {
        let mut out = [self.base; MR];
        for (r, o) in out.iter_mut().enumerate() {
            let row = (i * MR + r).min(self.m.saturating_sub(1));
            let (pi, ri) = (row / MR, row % MR);
            // In bounds: `row < m` and `p0 < k` (or p0 == 0 with k == 0: nothing is read).
            *o = self
                .base
                .wrapping_add(pi * self.panel_stride + ri * self.row_stride + p0 * self.k_stride);
        }
        out
    }
}
