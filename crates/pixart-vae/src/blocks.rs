//! The VAE's building blocks, one struct per diffusers module, fields named as checkpoint keys.
//!
//! Matched against diffusers 0.42.1: `models/resnet.py` (`ResnetBlock2D`),
//! `models/downsampling.py` (`Downsample2D`), `models/upsampling.py` (`Upsample2D`),
//! `models/attention_processor.py` (`Attention` with `AttnProcessor2_0`, as built by
//! `UNetMidBlock2D` with `_from_deprecated_attn_block=True`), and `models/unets/unet_2d_blocks.py`
//! (`UNetMidBlock2D`, `DownEncoderBlock2D`, `UpDecoderBlock2D`).
use std::cell::{Cell, RefCell};

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use pixart_kernels::ops::vae as ops;

/// The epsilon of every GroupNorm in the KL autoencoders (`resnet_eps=1e-6`).
pub const NORM_EPS: f64 = 1e-6;

/// At most this many attention scores (f32) exist at once in the mid-block attention:
/// 2^26 values = 256 MiB.
pub const ATTENTION_MAX_SCORES: usize = 1 << 26;

/// How the layers compute, chosen when the model is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The fast CPU kernels of [`ops`] (forward only: they cut the autograd graph).
    #[default]
    Inference,
    /// Only composed candle ops that have a backward (conv2d, GroupNorm from mean/variance,
    /// `candle_nn::ops::softmax`, nearest upsample), so gradients reach every weight.
    Training,
}

/// PyTorch's default initialisation of `nn.Conv2d` and `nn.Linear` weights and biases
/// (`reset_parameters` in torch 2.15 `nn/modules/conv.py` and `nn/modules/linear.py`):
/// `kaiming_uniform_(a=√5)` for the weight, which is U(-1/√fan_in, 1/√fan_in), and the same
/// bound for the bias. diffusers' `AutoencoderKL` keeps these defaults (it has no
/// `_init_weights`). Only used when the weights are created (a `VarMap` or a seeded
/// initialiser); loading from a file ignores it.
pub fn torch_default_init(fan_in: usize) -> candle_nn::Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    candle_nn::Init::Uniform { lo: -bound, up: bound }
}

/// `nn.Linear(c_in, c_out)` with bias, initialised as PyTorch does ([`torch_default_init`]).
fn linear(c_in: usize, c_out: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    let init = torch_default_init(c_in);
    let weight = vb.get_with_hints((c_out, c_in), "weight", init)?;
    let bias = vb.get_with_hints(c_out, "bias", init)?;
    Ok(Linear::new(weight, Some(bias)))
}

/// `nn.Conv2d` with bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
    mode: Mode,
}

impl Conv2d {
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        mode: Mode,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let init = torch_default_init(c_in * kernel * kernel);
        Ok(Self {
            weight: vb.get_with_hints((c_out, c_in, kernel, kernel), "weight", init)?,
            bias: vb.get_with_hints(c_out, "bias", init)?,
            kernel,
            stride,
            padding,
            mode,
        })
    }

    /// x: (b, c_in, h, w) -> (b, c_out, h', w').
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.mode == Mode::Training {
            return ops::conv2d_train(x, &self.weight, Some(&self.bias), self.stride, self.padding);
        }
        if self.kernel == 3 && self.stride == 1 && self.padding == 1 {
            return ops::conv3x3(x, &self.weight, Some(&self.bias), false);
        }
        if self.kernel == 1 && self.stride == 1 && self.padding == 0 {
            return ops::conv1x1(x, &self.weight, &self.bias);
        }
        let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
        // bias: (c_out) -> (1, c_out, 1, 1)
        y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }

    /// Nearest 2× upsample of x, then this (3×3, stride 1, padding 1) conv.
    pub fn forward_upsampled(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.mode {
            Mode::Inference => ops::conv3x3(x, &self.weight, Some(&self.bias), true),
            Mode::Training => {
                let (_, _, h, w) = x.dims4()?;
                // (b, c, h, w) -> (b, c, 2h, 2w)
                self.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
            }
        }
    }
}

/// Where the GroupNorms take their statistics from.
///
/// Tiled decoding normalises every tile with the same statistics, recorded on a downscaled
/// "guide" pass over the whole latent, so that the tiles agree (no seams from per-tile
/// normalisation). The GroupNorms are visited in the same order in every pass.
#[derive(Debug, Default)]
pub enum NormStats {
    /// Each GroupNorm uses the statistics of its own input (the normal forward).
    #[default]
    Local,
    /// Like `Local`, and every GroupNorm appends its statistics (b, groups, 2).
    Record(RefCell<Vec<Tensor>>),
    /// The i-th GroupNorm visited uses `stats[i]`.
    Replay { stats: Vec<Tensor>, next: Cell<usize> },
}

impl NormStats {
    /// A replay of `stats` from the first GroupNorm.
    pub fn replay(stats: Vec<Tensor>) -> Self {
        NormStats::Replay {
            stats,
            next: Cell::new(0),
        }
    }

    /// The recorded statistics (empty unless `Record`).
    pub fn into_recorded(self) -> Vec<Tensor> {
        match self {
            NormStats::Record(v) => v.into_inner(),
            _ => Vec::new(),
        }
    }
}

/// `nn.GroupNorm(groups, channels, eps=1e-6, affine=True)`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    mode: Mode,
}

impl GroupNorm {
    pub fn new(groups: usize, channels: usize, mode: Mode, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", candle_nn::init::ONE)?,
            bias: vb.get_with_hints(channels, "bias", candle_nn::init::ZERO)?,
            groups,
            mode,
        })
    }

    fn stats(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.mode {
            Mode::Inference => ops::group_stats(x, self.groups, NORM_EPS),
            Mode::Training => ops::group_stats_composed(x, self.groups, NORM_EPS),
        }
    }

    /// GroupNorm of x (b, c, h, w), followed by SiLU when `silu`, with statistics as `ns` says.
    pub fn forward(&self, x: &Tensor, silu: bool, ns: &NormStats) -> candle_core::Result<Tensor> {
        let stats = match ns {
            NormStats::Local => self.stats(x)?,
            NormStats::Record(rec) => {
                let st = self.stats(x)?;
                rec.borrow_mut().push(st.clone());
                st
            }
            NormStats::Replay { stats, next } => {
                let i = next.get();
                next.set(i + 1);
                stats.get(i).cloned().ok_or_else(|| {
                    candle_core::Error::Msg(format!("group_norm: no recorded statistics for norm #{i}"))
                })?
            }
        };
        match self.mode {
            Mode::Inference => ops::group_norm_with_stats(x, &stats, &self.weight, &self.bias, silu),
            Mode::Training => ops::group_norm_with_stats_composed(x, &stats, &self.weight, &self.bias, silu),
        }
    }
}

/// `ResnetBlock2D` without time embedding (`temb_channels=None`, `output_scale_factor=1`):
/// `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    /// 1×1 conv when the channel count changes (`use_in_shortcut`).
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    pub fn new(c_in: usize, c_out: usize, groups: usize, mode: Mode, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(groups, c_in, mode, vb.pp("norm1"))?,
            conv1: Conv2d::new(c_in, c_out, 3, 1, 1, mode, vb.pp("conv1"))?,
            norm2: GroupNorm::new(groups, c_out, mode, vb.pp("norm2"))?,
            conv2: Conv2d::new(c_out, c_out, 3, 1, 1, mode, vb.pp("conv2"))?,
            conv_shortcut: if c_in != c_out {
                Some(Conv2d::new(c_in, c_out, 1, 1, 0, mode, vb.pp("conv_shortcut"))?)
            } else {
                None
            },
        })
    }

    /// x: (b, c_in, h, w) -> (b, c_out, h, w).
    pub fn forward(&self, x: &Tensor, ns: &NormStats) -> candle_core::Result<Tensor> {
        // Reassigned rather than shadowed, so that each intermediate is freed as soon as the
        // next one exists (a shadowed binding lives to the end of the scope: at 1024 px that
        // kept four more full-resolution tensors, about 2.5 GB, alive through the block).
        let mut h = self.norm1.forward(x, true, ns)?;
        h = self.conv1.forward(&h)?;
        h = self.norm2.forward(&h, true, ns)?;
        // Dropout is the identity at inference.
        h = self.conv2.forward(&h)?;
        match &self.conv_shortcut {
            Some(c) => c.forward(x)? + h,
            None => x + h,
        }
    }
}

/// `Downsample2D(use_conv=True, padding=0)`: zero-pad right and bottom by one (diffusers'
/// asymmetric `F.pad(x, (0, 1, 0, 1))`), then a 3×3 stride-2 conv without padding.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
}

impl Downsample2D {
    pub fn new(channels: usize, mode: Mode, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            conv: Conv2d::new(channels, channels, 3, 2, 0, mode, vb.pp("conv"))?,
        })
    }

    /// x: (b, c, h, w) -> (b, c, h/2, w/2) for even h, w.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // (b, c, h, w) -> (b, c, h + 1, w + 1)
        let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
        self.conv.forward(&x)
    }
}

/// `Upsample2D(use_conv=True)`: nearest 2× upsample, then a 3×3 conv (fused on the CPU).
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(channels: usize, mode: Mode, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            conv: Conv2d::new(channels, channels, 3, 1, 1, mode, vb.pp("conv"))?,
        })
    }

    /// x: (b, c, h, w) -> (b, c, 2h, 2w).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.conv.forward_upsampled(x)
    }
}

/// The mid block's single-head spatial self-attention (diffusers `Attention` with
/// `heads=1`, `dim_head=channels`, `bias=True`, `residual_connection=True`,
/// `norm_num_groups=groups`): `x + to_out(attn(group_norm(x)))`.
#[derive(Debug, Clone)]
pub struct Attention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    /// `to_out.0` (`to_out.1` is dropout).
    to_out: Linear,
    channels: usize,
    max_scores: usize,
    mode: Mode,
}

impl Attention {
    pub fn new(channels: usize, groups: usize, mode: Mode, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::new(groups, channels, mode, vb.pp("group_norm"))?,
            to_q: linear(channels, channels, vb.pp("to_q"))?,
            to_k: linear(channels, channels, vb.pp("to_k"))?,
            to_v: linear(channels, channels, vb.pp("to_v"))?,
            to_out: linear(channels, channels, vb.pp("to_out").pp("0"))?,
            channels,
            max_scores: ATTENTION_MAX_SCORES,
            mode,
        })
    }

    /// x: (b, c, h, w) -> (b, c, h, w).
    pub fn forward(&self, x: &Tensor, ns: &NormStats) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        // (b, c, h, w) -> (b, h*w, c)
        let hs = self
            .group_norm
            .forward(x, false, ns)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.to_q.forward(&hs)?;
        let k = self.to_k.forward(&hs)?;
        let v = self.to_v.forward(&hs)?;
        drop(hs);
        let scale = 1.0 / (self.channels as f64).sqrt();
        let o = match self.mode {
            Mode::Inference => ops::attention_single_head(&q, &k, &v, scale, self.max_scores)?,
            Mode::Training => ops::attention_composed(&q, &k, &v, scale)?,
        };
        let o = self.to_out.forward(&o)?;
        // (b, h*w, c) -> (b, c, h, w)
        let o = o.transpose(1, 2)?.reshape((b, c, h, w))?;
        o + x
    }
}

/// `UNetMidBlock2D` (one layer): resnet, attention (optional), resnet.
#[derive(Debug, Clone)]
pub struct UNetMidBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
}

impl UNetMidBlock2D {
    pub fn new(
        channels: usize,
        groups: usize,
        add_attention: bool,
        mode: Mode,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let resnets = (0..2)
            .map(|i| ResnetBlock2D::new(channels, channels, groups, mode, vb.pp("resnets").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let attentions = if add_attention {
            vec![Attention::new(channels, groups, mode, vb.pp("attentions").pp(0))?]
        } else {
            Vec::new()
        };
        Ok(Self { resnets, attentions })
    }

    /// x: (b, c, h, w) -> (b, c, h, w).
    pub fn forward(&self, x: &Tensor, ns: &NormStats) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            if i > 0 {
                if let Some(attn) = self.attentions.get(i - 1) {
                    h = attn.forward(&h, ns)?;
                }
            }
            h = resnet.forward(&h, ns)?;
        }
        Ok(h)
    }
}

/// `resnets.{i}`: `layers` resnet blocks, the first from `c_in` channels, all to `c_out`.
fn resnet_stack(
    c_in: usize,
    c_out: usize,
    layers: usize,
    groups: usize,
    mode: Mode,
    vb: &VarBuilder,
) -> candle_core::Result<Vec<ResnetBlock2D>> {
    (0..layers)
        .map(|i| {
            let c = if i == 0 { c_in } else { c_out };
            ResnetBlock2D::new(c, c_out, groups, mode, vb.pp("resnets").pp(i))
        })
        .collect()
}

/// `DownEncoderBlock2D`: `layers` resnets, then a downsampler unless it is the last block.
#[derive(Debug, Clone)]
pub struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsamplers: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    pub fn new(
        c_in: usize,
        c_out: usize,
        layers: usize,
        groups: usize,
        add_downsample: bool,
        mode: Mode,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let resnets = resnet_stack(c_in, c_out, layers, groups, mode, &vb)?;
        let downsamplers = if add_downsample {
            Some(Downsample2D::new(c_out, mode, vb.pp("downsamplers").pp(0))?)
        } else {
            None
        };
        Ok(Self { resnets, downsamplers })
    }

    /// x: (b, c_in, h, w) -> (b, c_out, h/2, w/2) (or (h, w) for the last block).
    pub fn forward(&self, x: &Tensor, ns: &NormStats) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, ns)?;
        }
        match &self.downsamplers {
            Some(d) => d.forward(&h),
            None => Ok(h),
        }
    }
}

/// `UpDecoderBlock2D`: `layers` resnets (the decoder passes `layers_per_block + 1`), then an
/// upsampler unless it is the last block.
#[derive(Debug, Clone)]
pub struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsamplers: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    pub fn new(
        c_in: usize,
        c_out: usize,
        layers: usize,
        groups: usize,
        add_upsample: bool,
        mode: Mode,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let resnets = resnet_stack(c_in, c_out, layers, groups, mode, &vb)?;
        let upsamplers = if add_upsample {
            Some(Upsample2D::new(c_out, mode, vb.pp("upsamplers").pp(0))?)
        } else {
            None
        };
        Ok(Self { resnets, upsamplers })
    }

    /// x: (b, c_in, h, w) -> (b, c_out, 2h, 2w) (or (h, w) for the last block).
    pub fn forward(&self, x: &Tensor, ns: &NormStats) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, ns)?;
        }
        match &self.upsamplers {
            Some(u) => u.forward(&h),
            None => Ok(h),
        }
    }
}
