//! One PixArt transformer block (diffusers `BasicTransformerBlock` with
//! `norm_type="ada_norm_single"`, `models/attention.py` v0.42.1).
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use pixart_kernels::ops::{layer_norm_modulate, linear, linear_gelu, linear_residual};
use pixart_kernels::profile::stage;
use pixart_kernels::Linear;

use crate::attention::{Attention, CrossKv};

/// `ff`: Linear -> GELU(tanh) -> Linear (`ff.net.0.proj`, `ff.net.2`).
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    pub fn new(dim: usize, inner: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let net = vb.pp("net");
        Ok(Self {
            proj_in: pixart_kernels::linear(dim, inner, net.pp("0").pp("proj"))?,
            proj_out: pixart_kernels::linear(inner, dim, net.pp("2"))?,
        })
    }

    /// `residual + gate ⊙ FF(x)`: x, residual (b, n, c); gate (b, 1, c).
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor, gate: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.hidden(x)?;
        stage("mlp down + residual", x.device(), || {
            linear_residual(&self.proj_out, &h, residual, Some(gate))
        })
    }

    /// GELU(x·W₀ᵀ + b₀), the up projection (on a GPU, bf16/f16, the GELU runs in the
    /// projection's epilogue).
    fn hidden(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        stage("mlp up + gelu", x.device(), || linear_gelu(&self.proj_in, x))
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.hidden(x)?;
        stage("mlp down", x.device(), || linear(&self.proj_out, &h))
    }
}

/// A transformer block: modulated self-attention, plain cross-attention, modulated MLP.
#[derive(Debug, Clone)]
pub struct TransformerBlock {
    pub attn1: Attention,
    pub attn2: Attention,
    ff: FeedForward,
    /// (6, c): shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp offsets.
    scale_shift_table: Tensor,
    eps: f64,
}

impl TransformerBlock {
    pub fn new(
        dim: usize,
        heads: usize,
        head_dim: usize,
        bias: bool,
        eps: f64,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            attn1: Attention::new(dim, heads, head_dim, bias, vb.pp("attn1"))?,
            attn2: Attention::new(dim, heads, head_dim, bias, vb.pp("attn2"))?,
            ff: FeedForward::new(dim, 4 * dim, vb.pp("ff"))?,
            scale_shift_table: vb.get((6, dim), "scale_shift_table")?,
            eps,
        })
    }

    /// x: (b, n, c) on an (h, w) grid; t0: (b, 6*c); cross: this block's caption keys/values;
    /// bias: caption mask bias (b, 1, 1, l). Returns (b, n, c).
    pub fn forward(
        &self,
        x: &Tensor,
        grid: (usize, usize),
        t0: &Tensor,
        cross: &CrossKv,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let mods = self
            .scale_shift_table
            .unsqueeze(0)?
            .broadcast_add(&t0.reshape((b, 6, c))?)?; // (b, 6, c)
        let m = |i: usize| mods.narrow(1, i, 1); // (b, 1, c)
        let (shift_msa, scale_msa, gate_msa) = (m(0)?, m(1)?, m(2)?);
        let (shift_mlp, scale_mlp, gate_mlp) = (m(3)?, m(4)?, m(5)?);

        let dev = x.device();
        let a = stage("norm + modulate", dev, || {
            layer_norm_modulate(x, &shift_msa, &scale_msa, self.eps)
        })?;
        // Each output projection adds its residual itself (in the GEMM's epilogue on a GPU).
        let x = self.attn1.forward_self(&a, grid, x, Some(&gate_msa))?;
        let x = self.attn2.forward_cross(&x, cross, bias)?;
        let f = stage("norm + modulate", dev, || {
            layer_norm_modulate(&x, &shift_mlp, &scale_mlp, self.eps)
        })?;
        self.ff.forward_residual(&f, &x, &gate_mlp)
    }
}
