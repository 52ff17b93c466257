//! Embeddings: patches, timesteps (adaLN-single), 2-D sin-cos positions, caption projection.
//!
//! Reference: diffusers v0.42.1 `models/embeddings.py` (`PatchEmbed`, `get_2d_sincos_pos_embed`,
//! `get_timestep_embedding`, `TimestepEmbedding`, `PixArtAlphaCombinedTimestepSizeEmbeddings`,
//! `PixArtAlphaTextProjection`) and `models/normalization.py` (`AdaLayerNormSingle`).
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use pixart_kernels::{linear, Linear};

/// `pos_embed.proj`: a k×k stride-k conv from the latent channels to the hidden size, done as
/// one matmul over non-overlapping patches (works for every dtype on every device).
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    weight: Tensor, // (c, in*p*p): the conv weight (c, in, p, p) flattened
    bias: Tensor,   // (c)
    patch: usize,
}

impl PatchEmbed {
    pub fn new(in_ch: usize, hidden: usize, patch: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let vb = vb.pp("proj");
        let weight = vb.get((hidden, in_ch, patch, patch), "weight")?;
        let weight = weight.reshape((hidden, in_ch * patch * patch))?; // (c, in*p*p)
        let bias = vb.get(hidden, "bias")?;
        Ok(Self { weight, bias, patch })
    }

    /// x: (b, in, H, W) -> (b, h*w, c) with h = H/p, w = W/p, tokens row-major.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c_in, hh, ww) = x.dims4()?;
        let p = self.patch;
        let (h, w) = (hh / p, ww / p);
        let x = x
            .reshape((b, c_in, h, p, w, p))? // (b, in, h, py, w, px)
            .permute((0, 2, 4, 1, 3, 5))? // (b, h, w, in, py, px)
            .reshape((b, h * w, c_in * p * p))?; // (b, n, in*p*p), inputs ordered as the conv weight
        x.broadcast_matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// The 2-D sin-cos position table for an (h, w) token grid, (h*w, dim), f32.
///
/// Positions are `i / (h / base_size) / scale` (rows) and `j / (w / base_size) / scale`
/// (columns), computed in f32 like diffusers; the first dim/2 features embed the column
/// coordinate, the last dim/2 the row coordinate; each half is `[sin(p·ω), cos(p·ω)]` with
/// `ω_k = 1 / 10000^(k / (dim/4))`, evaluated in f64 and rounded to f32.
pub fn sincos_pos_embed(
    dim: usize,
    h: usize,
    w: usize,
    base_size: usize,
    interpolation_scale: f64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let base = base_size as f32;
    let s = interpolation_scale as f32;
    let coord = |idx: usize, len: usize| (idx as f32 / (len as f32 / base)) / s;
    let mut data = vec![0f32; h * w * dim];
    for (n, row) in data.chunks_mut(dim).enumerate() {
        let (i, j) = (n / w, n % w);
        let (px, py) = (coord(j, w) as f64, coord(i, h) as f64);
        for (half, p) in [px, py].into_iter().enumerate() {
            let out = &mut row[half * 2 * quarter..(half + 1) * 2 * quarter];
            for (k, om) in omega.iter().enumerate() {
                out[k] = (p * om).sin() as f32;
                out[quarter + k] = (p * om).cos() as f32;
            }
        }
    }
    Tensor::from_vec(data, (h * w, dim), device)
}

/// Sinusoidal timestep features, `[cos(t·f), sin(t·f)]` with `f_k = exp(-ln(10000)·k/half)`
/// (diffusers `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)`), f32.
/// t: (b) any float dtype -> (b, dim).
pub fn timestep_features(t: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let ln = (10000f64).ln() as f32;
    // exponent in f32 as torch does; exp evaluated in f64 and rounded (correctly rounded expf).
    let freqs: Vec<f32> = (0..half)
        .map(|k| {
            let e = (-ln * k as f32) / half as f32;
            (e as f64).exp() as f32
        })
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&freqs)?; // (b, half)
    Tensor::cat(&[args.cos()?, args.sin()?], 1)
}

/// `TimestepEmbedding`: Linear -> SiLU -> Linear.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            linear_1: linear(in_dim, out_dim, vb.pp("linear_1"))?,
            linear_2: linear(out_dim, out_dim, vb.pp("linear_2"))?,
        })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}

/// PixArt-α micro-conditions (resolution and aspect-ratio embedders).
#[derive(Debug, Clone)]
pub struct SizeEmbedders {
    resolution_embedder: TimestepEmbedding,
    aspect_ratio_embedder: TimestepEmbedding,
}

/// `AdaLayerNormSingle`: the timestep (plus micro-conditions when present) embedded once,
/// and `linear(silu(temb))` giving the 6 modulation rows shared by all blocks.
#[derive(Debug, Clone)]
pub struct AdaLayerNormSingle {
    timestep_embedder: TimestepEmbedding,
    size: Option<SizeEmbedders>,
    linear: Linear,
}

/// Micro-condition inputs: resolution (b, 2) as (height, width) in pixels and aspect ratio
/// (b, 1) as height / width.
#[derive(Debug, Clone)]
pub struct AddedCond {
    pub resolution: Tensor,
    pub aspect_ratio: Tensor,
}

impl AdaLayerNormSingle {
    /// `micro_conditions`: whether to build the resolution/aspect-ratio embedders.
    pub fn new(dim: usize, micro_conditions: bool, vb: VarBuilder) -> candle_core::Result<Self> {
        let emb = vb.pp("emb");
        let size = if micro_conditions {
            Some(SizeEmbedders {
                resolution_embedder: TimestepEmbedding::new(256, dim / 3, emb.pp("resolution_embedder"))?,
                aspect_ratio_embedder: TimestepEmbedding::new(256, dim / 3, emb.pp("aspect_ratio_embedder"))?,
            })
        } else {
            None
        };
        Ok(Self {
            timestep_embedder: TimestepEmbedding::new(256, dim, emb.pp("timestep_embedder"))?,
            size,
            linear: linear(dim, 6 * dim, vb.pp("linear"))?,
        })
    }

    /// Whether the micro-condition embedders are present.
    pub fn has_micro_conditions(&self) -> bool {
        self.size.is_some()
    }

    /// t: (b) -> (t0 (b, 6*c), temb (b, c)), in `dtype`.
    pub fn forward(&self, t: &Tensor, cond: Option<&AddedCond>, dtype: DType) -> candle_core::Result<(Tensor, Tensor)> {
        let b = t.dim(0)?;
        let mut temb = self
            .timestep_embedder
            .forward(&timestep_features(t, 256)?.to_dtype(dtype)?)?;
        if let (Some(size), Some(cond)) = (&self.size, cond) {
            let res = timestep_features(&cond.resolution.flatten_all()?, 256)?.to_dtype(dtype)?;
            let res = size.resolution_embedder.forward(&res)?.reshape((b, ()))?; // (b, 2*c/3)
            let ar = timestep_features(&cond.aspect_ratio.flatten_all()?, 256)?.to_dtype(dtype)?;
            let ar = size.aspect_ratio_embedder.forward(&ar)?.reshape((b, ()))?; // (b, c/3)
            temb = (temb + Tensor::cat(&[res, ar], 1)?)?;
        }
        let t0 = self.linear.forward(&temb.silu()?)?;
        Ok((t0, temb))
    }
}

/// `PixArtAlphaTextProjection`: Linear -> GELU(tanh) -> Linear.
#[derive(Debug, Clone)]
pub struct CaptionProjection {
    linear_1: Linear,
    linear_2: Linear,
}

impl CaptionProjection {
    pub fn new(in_dim: usize, hidden: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            linear_1: linear(in_dim, hidden, vb.pp("linear_1"))?,
            linear_2: linear(hidden, hidden, vb.pp("linear_2"))?,
        })
    }
}

impl Module for CaptionProjection {
    /// y: (b, l, caption_channels) -> (b, l, c)
    fn forward(&self, y: &Tensor) -> candle_core::Result<Tensor> {
        self.linear_2
            .forward(&pixart_kernels::ops::gelu(&self.linear_1.forward(y)?)?)
    }
}
