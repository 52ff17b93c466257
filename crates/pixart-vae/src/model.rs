//! `Encoder`, `Decoder` and `AutoencoderKL`, matched against diffusers 0.42.1
//! `models/autoencoders/vae.py` (`Encoder`, `Decoder`, `DiagonalGaussianDistribution`) and
//! `models/autoencoders/autoencoder_kl.py` (`AutoencoderKL`).
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use pixart_core::{Error, Result};

use crate::blocks::{Conv2d, DownEncoderBlock2D, GroupNorm, UNetMidBlock2D, UpDecoderBlock2D};
use crate::config::AutoencoderKlConfig;
use crate::tiling::{axis_weights, tile_starts, Blender, TileConfig, Tiling};

/// The encoder: image (b, in_channels, H, W) -> moments (b, 2·latent_channels, H/f, W/f).
#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    pub fn new(cfg: &AutoencoderKlConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let ch = &cfg.block_out_channels;
        let groups = cfg.norm_num_groups;
        let last = ch.len() - 1;
        let conv_in = Conv2d::new(cfg.in_channels, ch[0], 3, 1, 1, vb.pp("conv_in"))?;
        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut c_prev = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            down_blocks.push(DownEncoderBlock2D::new(
                c_prev,
                c,
                cfg.layers_per_block,
                groups,
                i != last,
                vb.pp("down_blocks").pp(i),
            )?);
            c_prev = c;
        }
        let mid_block = UNetMidBlock2D::new(ch[last], groups, cfg.mid_block_add_attention, vb.pp("mid_block"))?;
        let conv_norm_out = GroupNorm::new(groups, ch[last], vb.pp("conv_norm_out"))?;
        // double_z: mean and log-variance.
        let conv_out = Conv2d::new(ch[last], 2 * cfg.latent_channels, 3, 1, 1, vb.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block,
            conv_norm_out,
            conv_out,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for b in &self.down_blocks {
            h = b.forward(&h)?;
        }
        h = self.mid_block.forward(&h)?;
        h = self.conv_norm_out.forward(&h, true)?;
        self.conv_out.forward(&h)
    }
}

/// The decoder: latent (b, latent_channels, h, w) -> image (b, out_channels, f·h, f·w).
#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: UNetMidBlock2D,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    pub fn new(cfg: &AutoencoderKlConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let groups = cfg.norm_num_groups;
        let last = rev.len() - 1;
        let conv_in = Conv2d::new(cfg.latent_channels, rev[0], 3, 1, 1, vb.pp("conv_in"))?;
        let mid_block = UNetMidBlock2D::new(rev[0], groups, cfg.mid_block_add_attention, vb.pp("mid_block"))?;
        let mut up_blocks = Vec::with_capacity(rev.len());
        let mut c_prev = rev[0];
        for (i, &c) in rev.iter().enumerate() {
            up_blocks.push(UpDecoderBlock2D::new(
                c_prev,
                c,
                cfg.layers_per_block + 1,
                groups,
                i != last,
                vb.pp("up_blocks").pp(i),
            )?);
            c_prev = c;
        }
        let conv_norm_out = GroupNorm::new(groups, rev[last], vb.pp("conv_norm_out"))?;
        let conv_out = Conv2d::new(rev[last], cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    pub fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(z)?;
        h = self.mid_block.forward(&h)?;
        for b in &self.up_blocks {
            h = b.forward(&h)?;
        }
        h = self.conv_norm_out.forward(&h, true)?;
        self.conv_out.forward(&h)
    }
}

/// The encoder's posterior: a diagonal Gaussian per latent value.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    /// (b, latent_channels, H/f, W/f)
    pub mean: Tensor,
    /// `exp(0.5 · clamp(logvar, -30, 20))`, same shape as `mean`.
    pub std: Tensor,
}

impl DiagonalGaussian {
    /// From the `quant_conv` output (b, 2c, h, w): the first c channels are the mean, the
    /// rest the log-variance (clamped to [-30, 20] as diffusers does).
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let c2 = moments.dim(1)?;
        let c = c2 / 2;
        let mean = moments.narrow(1, 0, c)?;
        let logvar = moments.narrow(1, c, c)?.clamp(-30f32, 20f32)?;
        let std = (logvar * 0.5)?.exp()?;
        Ok(Self { mean, std })
    }

    /// `mean + std · noise`; the caller draws `noise` (standard normal, shape of `mean`).
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        if noise.dims() != self.mean.dims() {
            return Err(Error::Shape(format!(
                "posterior noise has shape {:?}, expected {:?}",
                noise.dims(),
                self.mean.dims()
            )));
        }
        let noise = noise.to_dtype(self.mean.dtype())?;
        Ok((&self.mean + (&self.std * noise)?)?)
    }
}

/// diffusers' `AutoencoderKL`: encoder, `quant_conv`, `post_quant_conv`, decoder.
#[derive(Debug, Clone)]
pub struct AutoencoderKl {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: AutoencoderKlConfig,
    dtype: DType,
    device: Device,
}

impl AutoencoderKl {
    /// Builds the model from `vb`, whose names are the checkpoint keys (`encoder.*`,
    /// `decoder.*`, `quant_conv.*`, `post_quant_conv.*`). The config must be valid
    /// ([`AutoencoderKlConfig::validate`]).
    pub fn new(config: &AutoencoderKlConfig, vb: VarBuilder) -> Result<Self> {
        config.validate().map_err(Error::InvalidInput)?;
        let lat = config.latent_channels;
        let quant_conv = if config.use_quant_conv {
            Some(Conv2d::new(2 * lat, 2 * lat, 1, 1, 0, vb.pp("quant_conv"))?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(Conv2d::new(lat, lat, 1, 1, 0, vb.pp("post_quant_conv"))?)
        } else {
            None
        };
        Ok(Self {
            encoder: Encoder::new(config, vb.pp("encoder"))?,
            decoder: Decoder::new(config, vb.pp("decoder"))?,
            quant_conv,
            post_quant_conv,
            config: config.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &AutoencoderKlConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Image pixels per latent pixel along each side (8 for SDXL).
    pub fn downsample_factor(&self) -> usize {
        self.config.downsample_factor()
    }

    /// Diffusion latents to VAE latents, as the pipelines do before decoding:
    /// `z / scaling_factor + shift_factor`.
    pub fn unscale_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let z = (latents / self.config.scaling_factor)?;
        Ok(match self.config.shift_factor {
            Some(s) => (z + s)?,
            None => z,
        })
    }

    /// VAE latents to diffusion latents, as training does after encoding:
    /// `(z - shift_factor) · scaling_factor`.
    pub fn scale_latents(&self, z: &Tensor) -> Result<Tensor> {
        let z = match self.config.shift_factor {
            Some(s) => (z - s)?,
            None => z.clone(),
        };
        Ok((z * self.config.scaling_factor)?)
    }

    fn check_latents(&self, z: &Tensor) -> Result<(usize, usize, usize, usize)> {
        let (b, c, h, w) = z.dims4().map_err(|_| {
            Error::Shape(format!("latents must be (batch, channels, height, width), got shape {:?}", z.dims()))
        })?;
        if c != self.config.latent_channels {
            return Err(Error::Shape(format!(
                "latents have {c} channels, but the VAE expects {} (shape {:?})",
                self.config.latent_channels,
                z.dims()
            )));
        }
        if b == 0 || h == 0 || w == 0 {
            return Err(Error::Shape(format!("latents are empty (shape {:?})", z.dims())));
        }
        Ok((b, c, h, w))
    }

    fn check_image(&self, x: &Tensor) -> Result<(usize, usize, usize, usize)> {
        let (b, c, h, w) = x.dims4().map_err(|_| {
            Error::Shape(format!("images must be (batch, channels, height, width), got shape {:?}", x.dims()))
        })?;
        if c != self.config.in_channels {
            return Err(Error::Shape(format!(
                "images have {c} channels, but the VAE expects {} (shape {:?})",
                self.config.in_channels,
                x.dims()
            )));
        }
        let f = self.downsample_factor();
        if b == 0 || h == 0 || w == 0 || h % f != 0 || w % f != 0 {
            return Err(Error::Shape(format!(
                "image size {h}x{w} (height x width) is not a positive multiple of {f}, the VAE's downsampling factor"
            )));
        }
        Ok((b, c, h, w))
    }

    /// Decodes VAE latents `z` (b, latent_channels, h, w), already unscaled (see
    /// [`Self::unscale_latents`]), to images (b, out_channels, f·h, f·w) in the model's dtype,
    /// nominally in [-1, 1]: `post_quant_conv`, then the decoder, tile by tile if `tiling` says so.
    pub fn decode(&self, z: &Tensor, tiling: Tiling) -> Result<Tensor> {
        self.decode_with_progress(z, tiling, &mut |_, _| {})
    }

    /// [`Self::decode`], calling `progress(done, total)` after each tile (once for untiled).
    pub fn decode_with_progress(
        &self,
        z: &Tensor,
        tiling: Tiling,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let (_, _, h, w) = self.check_latents(z)?;
        let z = z.to_device(&self.device)?.to_dtype(self.dtype)?;
        match tiling.resolve(h, w) {
            Some(cfg) if h > cfg.tile_latent || w > cfg.tile_latent => {
                cfg.validate()?;
                self.decode_tiled(&z, &cfg, progress)
            }
            _ => {
                let out = self.decode_tile(&z)?;
                progress(1, 1);
                Ok(out)
            }
        }
    }

    fn decode_tile(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(z)?,
            None => z.clone(),
        };
        Ok(self.decoder.forward(&z)?)
    }

    fn decode_tiled(&self, z: &Tensor, cfg: &TileConfig, progress: &mut dyn FnMut(usize, usize)) -> Result<Tensor> {
        let (b, _, h, w) = z.dims4()?;
        let f = self.downsample_factor();
        let c_out = self.config.out_channels;
        let (ys, xs) = (tile_starts(h, cfg), tile_starts(w, cfg));
        let (wys, wxs) = (
            axis_weights(h, &ys, cfg.tile_latent, f),
            axis_weights(w, &xs, cfg.tile_latent, f),
        );
        let (th, tw) = (cfg.tile_latent.min(h), cfg.tile_latent.min(w));
        let mut out = Blender::new(b, c_out, h * f, w * f);
        let total = ys.len() * xs.len();
        for (i, (&y0, wy)) in ys.iter().zip(&wys).enumerate() {
            for (j, (&x0, wx)) in xs.iter().zip(&wxs).enumerate() {
                // (b, c, th, tw) -> (b, c_out, th·f, tw·f)
                let tile = z.narrow(2, y0, th)?.narrow(3, x0, tw)?;
                let img = self.decode_tile(&tile)?;
                let img = img.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                out.add(&img, th * f, tw * f, y0 * f, x0 * f, wy, wx);
                progress(i * xs.len() + j + 1, total);
            }
        }
        let t = Tensor::from_vec(out.buf, (b, c_out, h * f, w * f), &self.device)?;
        Ok(t.to_dtype(self.dtype)?)
    }

    /// Encodes images (b, in_channels, H, W), nominally in [-1, 1], with H and W multiples of
    /// the downsampling factor, to the posterior over VAE latents (b, latent_channels, H/f,
    /// W/f) (unscaled: see [`Self::scale_latents`]), tile by tile if `tiling` says so.
    pub fn encode(&self, x: &Tensor, tiling: Tiling) -> Result<DiagonalGaussian> {
        let (_, _, h, w) = self.check_image(x)?;
        let x = x.to_device(&self.device)?.to_dtype(self.dtype)?;
        let f = self.downsample_factor();
        let moments = match tiling.resolve(h / f, w / f) {
            Some(cfg) if h / f > cfg.tile_latent || w / f > cfg.tile_latent => {
                cfg.validate()?;
                self.encode_tiled(&x, &cfg)?
            }
            _ => self.encode_tile(&x)?,
        };
        DiagonalGaussian::from_moments(&moments)
    }

    fn encode_tile(&self, x: &Tensor) -> Result<Tensor> {
        let m = self.encoder.forward(x)?;
        Ok(match &self.quant_conv {
            Some(c) => c.forward(&m)?,
            None => m,
        })
    }

    fn encode_tiled(&self, x: &Tensor, cfg: &TileConfig) -> Result<Tensor> {
        let (b, _, hh, ww) = x.dims4()?;
        let f = self.downsample_factor();
        let (h, w) = (hh / f, ww / f);
        let c2 = 2 * self.config.latent_channels;
        let (ys, xs) = (tile_starts(h, cfg), tile_starts(w, cfg));
        let (wys, wxs) = (
            axis_weights(h, &ys, cfg.tile_latent, 1),
            axis_weights(w, &xs, cfg.tile_latent, 1),
        );
        let (th, tw) = (cfg.tile_latent.min(h), cfg.tile_latent.min(w));
        let mut out = Blender::new(b, c2, h, w);
        for (&y0, wy) in ys.iter().zip(&wys) {
            for (&x0, wx) in xs.iter().zip(&wxs) {
                // (b, c, th·f, tw·f) -> moments (b, 2·latent, th, tw)
                let tile = x.narrow(2, y0 * f, th * f)?.narrow(3, x0 * f, tw * f)?;
                let m = self.encode_tile(&tile)?;
                let m = m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                out.add(&m, th, tw, y0, x0, wy, wx);
            }
        }
        let t = Tensor::from_vec(out.buf, (b, c2, h, w), &self.device)?;
        Ok(t.to_dtype(self.dtype)?)
    }
}
