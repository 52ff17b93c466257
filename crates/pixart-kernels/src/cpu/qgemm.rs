//! Products with a weight that stays quantized in memory (ggml block formats, [`super::quant`]).
//!
//! [`QuantMatrix`] holds a Linear weight `W[n, k]` as its GGUF bytes (each row a whole number of
//! blocks). Its products cut `W` into slabs of [`SLAB`] rows (output columns): each slab is one
//! rayon task that dequantizes its rows (to bf16 for the bf16 GEMM, to f32 for the f32 one), packs
//! them as the GEMM's right operand and multiplies the whole left operand by them. Every weight is
//! dequantized once per product, the dequantized copy of a slab lives only while its task runs
//! (SLAB × k values per thread), and the left operand is packed once and shared by the tasks.
//!
//! The f32 product is the product of the dequantized weight (what the reference computes on
//! gguf-py's dequantized tensors); the bf16 one rounds the dequantized weight to bf16 first, as
//! a bf16 model of the same weights would.
use half::bf16;
use pixart_core::gguf::GgmlType;
use rayon::prelude::*;

use super::{bf16 as gemm16, quant, sgemm};

/// Weight rows (output columns) per task: a multiple of both GEMMs' panel widths.
pub const SLAB: usize = 192;

/// A Linear weight `W[n, k]` kept in a ggml block format.
#[derive(Clone)]
pub struct QuantMatrix {
    ty: GgmlType,
    n: usize,
    k: usize,
    row_bytes: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantMatrix")
            .field("type", &self.ty)
            .field("n", &self.n)
            .field("k", &self.k)
            .finish()
    }
}

impl QuantMatrix {
    /// `data`: the stored bytes of an `n × k` matrix of `ty` (rows of whole blocks).
    pub fn new(ty: GgmlType, n: usize, k: usize, data: Vec<u8>) -> Result<Self, String> {
        let row_bytes = ty.bytes_for(k).map_err(|e| format!("rows of {k}: {e}"))?;
        if n.checked_mul(row_bytes) != Some(data.len()) {
            return Err(format!("{} bytes do not hold {n} × {k} values of {ty}", data.len()));
        }
        Ok(Self {
            ty,
            n,
            k,
            row_bytes,
            data,
        })
    }

    /// Quantizes a row-major `n × k` f32 matrix to `ty` (a type [`quant::quantize`] writes).
    pub fn quantize(ty: GgmlType, w: &[f32], n: usize, k: usize) -> Result<Self, String> {
        if w.len() != n * k {
            return Err(format!("{} values for a {n} × {k} matrix", w.len()));
        }
        let row_bytes = ty.bytes_for(k).map_err(|e| format!("rows of {k}: {e}"))?;
        let mut data = vec![0u8; n * row_bytes];
        data.par_chunks_mut(row_bytes.max(1))
            .zip(w.par_chunks(k.max(1)))
            .try_for_each(|(dst, row)| {
                let mut v = Vec::with_capacity(row_bytes);
                quant::quantize(ty, row, &mut v)?;
                dst.copy_from_slice(&v);
                Ok::<_, String>(())
            })?;
        Self::new(ty, n, k, data)
    }

    pub fn dtype(&self) -> GgmlType {
        self.ty
    }

    /// (n, k): rows (output features) and columns (input features).
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Dequantizes rows `r0..r0 + rows` into `out` (`rows × k`).
    pub fn dequantize_rows(&self, r0: usize, rows: usize, out: &mut [f32]) -> Result<(), String> {
        if r0 + rows > self.n || out.len() != rows * self.k {
            return Err(format!(
                "rows {r0}..{} of a {} × {} matrix into {} values",
                r0 + rows,
                self.n,
                self.k,
                out.len()
            ));
        }
        let bytes = &self.data[r0 * self.row_bytes..(r0 + rows) * self.row_bytes];
        quant::dequantize(self.ty, bytes, out)
    }

    /// The rows `ids` (an embedding lookup), dequantized: `ids.len() × k` values.
    pub fn gather_rows(&self, ids: &[usize]) -> Result<Vec<f32>, String> {
        let mut out = vec![0f32; ids.len() * self.k];
        for (&id, dst) in ids.iter().zip(out.chunks_exact_mut(self.k.max(1))) {
            if id >= self.n {
                return Err(format!("row {id} of a table of {} rows", self.n));
            }
            self.dequantize_rows(id, 1, dst)?;
        }
        Ok(out)
    }

    fn slabs(&self) -> impl IndexedParallelIterator<Item = (usize, usize)> + '_ {
        (0..self.n.div_ceil(SLAB))
            .into_par_iter()
            .map(|s| (s * SLAB, SLAB.min(self.n - s * SLAB)))
    }

    /// `y[m, n] = x[m, k] · Wᵀ (+ bias)` in bf16 with f32 accumulation (the bf16 GEMM on the
    /// weight dequantized slab by slab to bf16).
    pub fn matmul_bf16(&self, x: &[bf16], m: usize, bias: Option<&[f32]>) -> Result<Vec<bf16>, String> {
        let (n, k) = (self.n, self.k);
        if x.len() != m * k || bias.is_some_and(|b| b.len() != n) {
            return Err(format!(
                "x has {} values for {m} × {k}, or the bias is not {n} long",
                x.len()
            ));
        }
        let mut pa = gemm16::PackedA::new();
        let lhs = if k.is_multiple_of(2) {
            gemm16::Lhs::rows(x, m, k, k).map_err(|e| e.to_string())?
        } else {
            pa.pack_bf16(x, m, k, k, true).map_err(|e| e.to_string())?;
            gemm16::Lhs::packed(&pa)
        };
        let parts = self
            .slabs()
            .map(|(c0, cols)| -> Result<(usize, usize, Vec<bf16>), String> {
                let mut wf = vec![0f32; cols * k];
                self.dequantize_rows(c0, cols, &mut wf)?;
                let mut wb = vec![bf16::ZERO; cols * k];
                gemm16::round_to_bf16(&wf, &mut wb);
                drop(wf);
                let mut pb = gemm16::PackedB::new();
                pb.pack_nk(&wb, cols, k, k, false).map_err(|e| e.to_string())?;
                let mut c = vec![bf16::ZERO; m * cols];
                let out = gemm16::Output::Bf16 {
                    c: &mut c,
                    ldc: cols,
                    bias: bias.map(|b| &b[c0..c0 + cols]),
                };
                gemm16::gemm(lhs, &pb, out, false).map_err(|e| e.to_string())?;
                Ok((c0, cols, c))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(scatter(parts, m, n, bf16::ZERO))
    }

    /// `y[m, n] = x[m, k] · Wᵀ (+ bias)` in f32 (the f32 GEMM on the weight dequantized slab by
    /// slab).
    pub fn matmul_f32(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Result<Vec<f32>, String> {
        let (n, k) = (self.n, self.k);
        if x.len() != m * k || bias.is_some_and(|b| b.len() != n) {
            return Err(format!(
                "x has {} values for {m} × {k}, or the bias is not {n} long",
                x.len()
            ));
        }
        let lhs = sgemm::Lhs::rows(x, m, k, k).map_err(|e| e.to_string())?;
        let parts = self
            .slabs()
            .map(|(c0, cols)| -> Result<(usize, usize, Vec<f32>), String> {
                let mut wf = vec![0f32; cols * k];
                self.dequantize_rows(c0, cols, &mut wf)?;
                let mut c = vec![0f32; m * cols];
                let mut out = sgemm::Output::new(&mut c, cols);
                if let Some(b) = bias {
                    out.bias = sgemm::Bias::Cols(&b[c0..c0 + cols]);
                }
                sgemm::gemm(lhs, sgemm::Rhs::Nk { w: &wf, ld: k }, cols, out, false).map_err(|e| e.to_string())?;
                Ok((c0, cols, c))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(scatter(parts, m, n, 0.0))
    }
}

/// Puts each slab's `m × cols` block at its columns of the `m × n` result.
fn scatter<T: Copy>(parts: Vec<(usize, usize, Vec<T>)>, m: usize, n: usize, zero: T) -> Vec<T> {
    let mut y = vec![zero; m * n];
    for (c0, cols, c) in parts {
        for (dst, src) in y.chunks_exact_mut(n).zip(c.chunks_exact(cols)) {
            dst[c0..c0 + cols].copy_from_slice(src);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    /// The product of the dequantized weight, in f64.
    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, bias: &[f32]) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum();
                y[i * n + j] = s + bias[j] as f64;
            }
        }
        y
    }

    #[test]
    fn quantized_products_equal_the_product_of_the_dequantized_weight() {
        // Several slabs, a ragged last one, odd m; every type with whole blocks in k.
        let (m, n, k) = (7, 2 * SLAB + 37, 512);
        let x = lcg(m * k, 1);
        let bias = lcg(n, 3);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_1, GgmlType::BF16] {
            let q = QuantMatrix::quantize(ty, &lcg(n * k, 2), n, k).unwrap();
            let mut w = vec![0f32; n * k];
            q.dequantize_rows(0, n, &mut w).unwrap();
            let want = reference(&x, &w, m, n, k, &bias);
            let y = q.matmul_f32(&x, m, Some(&bias)).unwrap();
            let err = y
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-5, "{ty} f32: max error {err}");
            // bf16: x and the dequantized weight rounded to bf16, accumulated in f32.
            let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
            let xr: Vec<f32> = xb.iter().map(|v| v.to_f32()).collect();
            let wr: Vec<f32> = w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
            let want = reference(&xr, &wr, m, n, k, &bias);
            let y = q.matmul_bf16(&xb, m, Some(&bias)).unwrap();
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                let tol = 1e-5 + b.abs() / 128.0;
                assert!((a.to_f32() as f64 - b).abs() <= tol, "{ty} bf16 [{i}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn gather_rows_dequantizes_the_rows_asked_for() {
        let (n, k) = (10, 64);
        let q = QuantMatrix::quantize(GgmlType::Q8_0, &lcg(n * k, 5), n, k).unwrap();
        let mut w = vec![0f32; n * k];
        q.dequantize_rows(0, n, &mut w).unwrap();
        let rows = q.gather_rows(&[3, 0, 9, 3]).unwrap();
        for (r, id) in [3, 0, 9, 3].iter().enumerate() {
            assert_eq!(&rows[r * k..(r + 1) * k], &w[id * k..(id + 1) * k]);
        }
        assert!(q.gather_rows(&[10]).is_err());
        assert!(QuantMatrix::new(GgmlType::Q8_0, 2, 64, vec![0; 67]).is_err());
    }
}
