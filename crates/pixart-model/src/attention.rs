//! Self- and cross-attention (diffusers `Attention` with `AttnProcessor2_0`), with optional
//! KV token compression in self-attention.
use std::sync::Arc;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use pixart_kernels::ops::{attention, kv_conv_norm, linear, linear_residual, ln_scale_of, norm_affine, split_heads};
use pixart_kernels::profile::stage;
use pixart_kernels::{linear_b, Linear};

use crate::config::KvSampling;

/// KV token compression (`AttentionKVCompress.downsample_2d`, PixArt-alpha/PixArt-sigma@1ce521af
/// `diffusion/model/nets/PixArt_blocks.py`). Keys and values, after their projections, are
/// reduced from an (h, w) grid to (h/R, w/R). Odd grids are floored: a trailing row or column
/// that does not fill an R×R window is dropped, as the original conv does.
#[derive(Debug, Clone)]
pub struct KvCompress {
    sampling: KvSampling,
    ratio: usize,
    /// conv mode: depthwise weight as (1, 1, R, 1, R, c) and bias (c).
    conv: Option<(Tensor, Tensor)>,
    /// conv mode: LayerNorm(c, eps 1e-5) weight and bias.
    norm: Option<(Tensor, Tensor)>,
    /// conv mode on a GPU: the norm weight minus 1 as (1, 1, c), the `scale` of the fused
    /// LayerNorm + modulation kernel (`LN(y)·(1 + scale) + shift`), when 1 + (w − 1) gives every
    /// weight back exactly in the weights' dtype (always for weights in [0.5, 2], e.g. the
    /// averaging init); else `None` and the composed LayerNorm runs.
    ln_scale: Option<Tensor>,
}

/// Whether a conv-mode compression module was read from the weights or initialised to
/// averaging (a checkpoint trained without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvInit {
    Loaded,
    Averaging,
    ParameterFree,
}

impl KvCompress {
    /// `vb` points at `attn1.kv_compress`.
    pub fn new(sampling: KvSampling, ratio: usize, dim: usize, vb: VarBuilder) -> candle_core::Result<(Self, KvInit)> {
        if sampling != KvSampling::Conv {
            return Ok((
                Self {
                    sampling,
                    ratio,
                    conv: None,
                    norm: None,
                    ln_scale: None,
                },
                KvInit::ParameterFree,
            ));
        }
        let names = ["conv.weight", "conv.bias", "norm.weight", "norm.bias"];
        let any_present = names.iter().any(|n| vb.contains_tensor(n));
        let (w, b, nw, nb, init) = if any_present {
            (
                vb.get((dim, 1, ratio, ratio), "conv.weight")?,
                vb.get(dim, "conv.bias")?,
                vb.get(dim, "norm.weight")?,
                vb.get(dim, "norm.bias")?,
                KvInit::Loaded,
            )
        } else {
            // "Conv Avg Init": the conv starts as R×R average pooling, the norm as identity affine.
            let (dev, dt) = (vb.device(), vb.dtype());
            (
                (Tensor::ones((dim, 1, ratio, ratio), dt, dev)? / (ratio * ratio) as f64)?,
                Tensor::zeros(dim, dt, dev)?,
                Tensor::ones(dim, dt, dev)?,
                Tensor::zeros(dim, dt, dev)?,
                KvInit::Averaging,
            )
        };
        let w = w
            .reshape((dim, ratio, ratio))? // (c, ky, kx)
            .permute((1, 2, 0))? // (ky, kx, c)
            .reshape((1, 1, ratio, 1, ratio, dim))? // (1, 1, ky, 1, kx, c)
            .contiguous()?;
        Ok((
            Self {
                sampling,
                ratio,
                conv: Some((w, b)),
                ln_scale: ln_scale_of(&nw)?,
                norm: Some((nw, nb)),
            },
            init,
        ))
    }

    /// The sampling mode.
    pub fn sampling(&self) -> KvSampling {
        self.sampling
    }

    /// The compressed grid for an (h, w) token grid.
    pub fn out_grid(&self, h: usize, w: usize) -> (usize, usize) {
        (h / self.ratio, w / self.ratio)
    }

    /// x: (b, h*w, c) -> (b, (h/R)*(w/R), c).
    pub fn forward(&self, x: &Tensor, h: usize, w: usize) -> candle_core::Result<Tensor> {
        let (_, n, _) = x.dims3()?;
        if n != h * w {
            candle_core::bail!("kv compression: {n} tokens do not form a {h}x{w} grid");
        }
        let r = self.ratio;
        let (h2, w2) = self.out_grid(h, w);
        if h2 == 0 || w2 == 0 {
            candle_core::bail!("kv compression: a {h}x{w} token grid is smaller than the ratio {r}");
        }
        if let (Some((cw, cb)), Some((nw, nb))) = (&self.conv, &self.norm) {
            // The kernels' conv + norm where they apply (a GPU), else the definition below.
            return kv_conv_norm(x, (h, w), r, (cw, cb), (nw, nb), self.ln_scale.as_ref(), || {
                self.downsample(x, (h, w))
            });
        }
        self.downsample(x, (h, w))
    }

    /// The compression composed from tensor ops: x (b, h*w, c) -> (b, n', c).
    fn downsample(&self, x: &Tensor, (h, w): (usize, usize)) -> candle_core::Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let r = self.ratio;
        let (h2, w2) = self.out_grid(h, w);
        let mut g = x.reshape((b, h, w, c))?; // (b, h, w, c)
        if h2 * r != h {
            g = g.narrow(1, 0, h2 * r)?;
        }
        if w2 * r != w {
            g = g.narrow(2, 0, w2 * r)?;
        }
        let g = g.reshape((b, h2, r, w2, r, c))?; // (b, h2, ky, w2, kx, c)
        match (&self.conv, &self.norm) {
            (Some((cw, cb)), Some((nw, nb))) => {
                let y = g
                    .broadcast_mul(cw)?
                    .sum(4)? // (b, h2, ky, w2, c)
                    .sum(2)? // (b, h2, w2, c)
                    .broadcast_add(cb)?
                    .reshape((b, h2 * w2, c))?; // (b, n', c)
                norm_affine(&y, nw, nb)
            }
            _ => g
                .narrow(2, 0, 1)?
                .narrow(4, 0, 1)? // (b, h2, 1, w2, 1, c)
                .reshape((b, h2 * w2, c)), // (b, n', c)
        }
    }
}

/// Multi-head attention with separate q/k/v projections (`to_q`, `to_k`, `to_v`, `to_out.0`).
#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
    kv_compress: Option<KvCompress>,
}

/// Keys and values of a cross-attention, projected and split into heads:
/// each (b, heads, l, d). Computed once per prompt and reused at every step.
#[derive(Debug, Clone)]
pub struct CrossKv {
    pub k: Tensor,
    pub v: Tensor,
    /// (b): when the caption mask keeps a prefix of every row, row i's valid keys are its
    /// first `key_lens[i]`: the CPU kernels attend to exactly those (the result of a row does
    /// not depend on the other rows' lengths); other paths use the mask bias.
    pub key_lens: Option<Arc<[usize]>>,
}

impl Attention {
    pub fn new(dim: usize, heads: usize, head_dim: usize, bias: bool, vb: VarBuilder) -> candle_core::Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: linear_b(dim, inner, bias, vb.pp("to_q"))?,
            to_k: linear_b(dim, inner, bias, vb.pp("to_k"))?,
            to_v: linear_b(dim, inner, bias, vb.pp("to_v"))?,
            to_out: linear_b(inner, dim, true, vb.pp("to_out").pp("0"))?,
            heads,
            head_dim,
            kv_compress: None,
        })
    }

    /// Adds KV compression to this (self-)attention.
    pub fn with_kv_compress(mut self, kv: KvCompress) -> Self {
        self.kv_compress = Some(kv);
        self
    }

    /// Whether keys and values are compressed.
    pub fn kv_compress(&self) -> Option<&KvCompress> {
        self.kv_compress.as_ref()
    }

    /// (b, n, h*d) -> (b, h, n, d), laid out for the attention kernel that will read it.
    fn split_heads(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        split_heads(x, self.heads)
    }

    /// The attention core, then the output projection added to `residual` (scaled by `gate`
    /// when there is one); `labels`: the profile stages of the two.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
        key_lens: Option<&[usize]>,
        (residual, gate): (&Tensor, Option<&Tensor>),
        labels: [&'static str; 2],
    ) -> candle_core::Result<Tensor> {
        let o = stage(labels[0], q.device(), || self.attention_core(q, k, v, bias, key_lens))?;
        stage(labels[1], q.device(), || {
            linear_residual(&self.to_out, &o, residual, gate)
        })
    }

    /// softmax(q·kᵀ/√d + bias)·v with the heads merged back: q (b, n, h*d) -> (b, n, h*d).
    fn attention_core(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
        key_lens: Option<&[usize]>,
    ) -> candle_core::Result<Tensor> {
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        attention(q, k, v, self.heads, bias, key_lens, scale)
    }

    /// `residual + gate ⊙ SelfAttention(x)` over an (h, w) token grid (no gate: a plain sum).
    /// x, residual: (b, h*w, c); gate: (b, 1, c) -> (b, h*w, c).
    pub fn forward_self(
        &self,
        x: &Tensor,
        grid: (usize, usize),
        residual: &Tensor,
        gate: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let dev = x.device();
        let (q, mut k, mut v) = stage("self-attn q, k, v", dev, || {
            Ok::<_, candle_core::Error>((linear(&self.to_q, x)?, linear(&self.to_k, x)?, linear(&self.to_v, x)?))
        })?;
        if let Some(kv) = &self.kv_compress {
            (k, v) = stage("self-attn kv compression", dev, || {
                Ok::<_, candle_core::Error>((kv.forward(&k, grid.0, grid.1)?, kv.forward(&v, grid.0, grid.1)?))
            })?;
        }
        let (k, v) = stage("self-attn head split", dev, || {
            Ok::<_, candle_core::Error>((self.split_heads(&k)?, self.split_heads(&v)?))
        })?;
        self.attend(
            &q,
            &k,
            &v,
            None,
            None,
            (residual, gate),
            ["self-attn core", "self-attn out + residual"],
        )
    }

    /// Projects context tokens to keys and values. y: (b, l, c); key_lens: see [`CrossKv`].
    pub fn cross_kv(&self, y: &Tensor, key_lens: Option<Arc<[usize]>>) -> candle_core::Result<CrossKv> {
        Ok(CrossKv {
            k: self.split_heads(&linear(&self.to_k, y)?)?,
            v: self.split_heads(&linear(&self.to_v, y)?)?,
            key_lens,
        })
    }

    /// `x + CrossAttention(x)` from x (b, n, c) to precomputed keys/values; `bias` (b, 1, 1, l)
    /// is added to the scores (0 keep, -10000 drop, as diffusers).
    pub fn forward_cross(&self, x: &Tensor, kv: &CrossKv, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let q = stage("cross-attn q", x.device(), || linear(&self.to_q, x))?;
        let bias = match bias {
            Some(b) => Some(b.to_dtype(q.dtype())?),
            None => None,
        };
        self.attend(
            &q,
            &kv.k,
            &kv.v,
            bias.as_ref(),
            kv.key_lens.as_deref(),
            (x, None),
            ["cross-attn core", "cross-attn out + residual"],
        )
    }
}

/// The additive cross-attention bias from a caption mask: (b, l) with 1 = keep ->
/// (b, 1, 1, l) with 0 / -10000 (diffusers `PixArtTransformer2DModel.forward`).
pub fn mask_to_bias(mask: &Tensor) -> candle_core::Result<Tensor> {
    let (b, l) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?;
    ((1.0 - m)? * -10000.0)?.reshape((b, 1, 1, l)) // (b, 1, 1, l)
}
