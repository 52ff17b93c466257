//! Layers whose weights stay quantized in memory ([`cpu::qgemm::QuantMatrix`]): a Linear layer
//! ([`QuantLinear`]) and an embedding table that dequantizes only the rows it looks up
//! ([`QuantEmbedding`]). CPU only; inputs in f32 or bf16, without gradients.
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Shape, Tensor};

use crate::cpu::qgemm::QuantMatrix;

/// `y = x·Wᵀ (+ b)` with `W` quantized ([`QuantMatrix::matmul_f32`] / [`QuantMatrix::matmul_bf16`]).
#[derive(Debug, Clone)]
pub struct QuantLinear {
    weight: Arc<QuantMatrix>,
    bias: Option<Arc<Vec<f32>>>,
}

impl QuantLinear {
    pub fn new(weight: Arc<QuantMatrix>, bias: Option<Vec<f32>>) -> candle_core::Result<Self> {
        if let Some(b) = &bias {
            if b.len() != weight.dims().0 {
                candle_core::bail!(
                    "quantized linear: {} bias values for {} outputs",
                    b.len(),
                    weight.dims().0
                );
            }
        }
        Ok(Self {
            weight,
            bias: bias.map(Arc::new),
        })
    }

    pub fn weight(&self) -> &QuantMatrix {
        &self.weight
    }
}

impl Module for QuantLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, k) = self.weight.dims();
        if !x.device().is_cpu() || x.dims().last() != Some(&k) || !matches!(x.dtype(), DType::F32 | DType::BF16) {
            candle_core::bail!(
                "quantized linear ({k} -> {n}, {}): needs an f32 or bf16 CPU input with {k} features, got {:?} {:?}",
                self.weight.dtype(),
                x.dtype(),
                x.dims()
            );
        }
        let mut out_dims = x.dims().to_vec();
        let m = x.elem_count() / k.max(1);
        *out_dims.last_mut().unwrap_or(&mut 0) = n;
        let flat = x.reshape((m, k))?.contiguous()?;
        flat.apply_op1_no_bwd(&QuantMatmul {
            w: &self.weight,
            bias: self.bias.as_deref().map(|b| b.as_slice()),
        })?
        .reshape(out_dims)
    }
}

struct QuantMatmul<'a> {
    w: &'a QuantMatrix,
    bias: Option<&'a [f32]>,
}

impl CustomOp1 for QuantMatmul<'_> {
    fn name(&self) -> &'static str {
        "pixart-quant-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, _) = xl.shape().dims2()?;
        let n = self.w.dims().0;
        let (a, b) = xl
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("pixart-quant-linear: x must be contiguous".into()))?;
        let y = match x {
            CpuStorage::F32(v) => CpuStorage::F32(
                self.w
                    .matmul_f32(&v[a..b], m, self.bias)
                    .map_err(candle_core::Error::Msg)?,
            ),
            CpuStorage::BF16(v) => CpuStorage::BF16(
                self.w
                    .matmul_bf16(&v[a..b], m, self.bias)
                    .map_err(candle_core::Error::Msg)?,
            ),
            _ => candle_core::bail!("pixart-quant-linear: x must be f32 or bf16"),
        };
        Ok((y, Shape::from((m, n))))
    }
}

/// An embedding table kept quantized: a lookup dequantizes the rows it reads, to `dtype`.
#[derive(Debug, Clone)]
pub struct QuantEmbedding {
    table: Arc<QuantMatrix>,
    dtype: DType,
}

impl QuantEmbedding {
    pub fn new(table: Arc<QuantMatrix>, dtype: DType) -> Self {
        Self { table, dtype }
    }

    /// (vocabulary, width)
    pub fn dims(&self) -> (usize, usize) {
        self.table.dims()
    }
}

impl Module for QuantEmbedding {
    /// ids: any shape of integer ids -> that shape plus the width.
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        let flat: Vec<usize> = ids
            .flatten_all()?
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|i| i as usize)
            .collect();
        let rows = self.table.gather_rows(&flat).map_err(candle_core::Error::Msg)?;
        dims.push(self.table.dims().1);
        Tensor::from_vec(rows, dims, ids.device())?.to_dtype(self.dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use pixart_core::gguf::GgmlType;

    #[test]
    fn quantized_layers_equal_candle_on_the_dequantized_weights() {
        let (n, k) = (40, 64);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0).collect();
        let q = Arc::new(QuantMatrix::quantize(GgmlType::Q8_0, &w, n, k).unwrap());
        let mut dq = vec![0f32; n * k];
        q.dequantize_rows(0, n, &mut dq).unwrap();
        let dense = Tensor::from_vec(dq, (n, k), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, k), &Device::Cpu).unwrap();
        let lin = QuantLinear::new(q.clone(), None).unwrap();
        let want = x.broadcast_matmul(&dense.t().unwrap()).unwrap();
        let got = lin.forward(&x).unwrap();
        let diff = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
        let ids = Tensor::new(&[[1u32, 39], [0, 1]], &Device::Cpu).unwrap();
        let emb = QuantEmbedding::new(q, DType::F32).forward(&ids).unwrap();
        let want = candle_nn::Embedding::new(dense, k).forward(&ids).unwrap();
        assert_eq!(emb.to_vec3::<f32>().unwrap(), want.to_vec3::<f32>().unwrap());
        assert!(QuantEmbedding::new(
            Arc::new(QuantMatrix::quantize(GgmlType::Q8_0, &w, n, k).unwrap()),
            DType::F32
        )
        .forward(&Tensor::new(&[40u32], &Device::Cpu).unwrap())
        .is_err());
    }
}
