//! `Encoder`, `Decoder` and `AutoencoderKL`, matched against diffusers 0.42.1
//! `models/autoencoders/vae.py` (`Encoder`, `Decoder`, `DiagonalGaussianDistribution`) and
//! `models/autoencoders/autoencoder_kl.py` (`AutoencoderKL`).
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use pixart_core::{Error, Result};

use crate::blocks::{Conv2d, DownEncoderBlock2D, GroupNorm, Mode, NormStats, UNetMidBlock2D, UpDecoderBlock2D};
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
    pub fn new(cfg: &AutoencoderKlConfig, mode: Mode, vb: VarBuilder) -> candle_core::Result<Self> {
        let ch = &cfg.block_out_channels;
        let groups = cfg.norm_num_groups;
        let last = ch.len() - 1;
        let conv_in = Conv2d::new(cfg.in_channels, ch[0], 3, 1, 1, mode, vb.pp("conv_in"))?;
        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut c_prev = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            down_blocks.push(DownEncoderBlock2D::new(
                c_prev,
                c,
                cfg.layers_per_block,
                groups,
                i != last,
                mode,
                vb.pp("down_blocks").pp(i),
            )?);
            c_prev = c;
        }
        let mid_block = UNetMidBlock2D::new(ch[last], groups, cfg.mid_block_add_attention, mode, vb.pp("mid_block"))?;
        let conv_norm_out = GroupNorm::new(groups, ch[last], mode, vb.pp("conv_norm_out"))?;
        // double_z: mean and log-variance.
        let conv_out = Conv2d::new(ch[last], 2 * cfg.latent_channels, 3, 1, 1, mode, vb.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block,
            conv_norm_out,
            conv_out,
        })
    }

    pub fn forward(&self, x: &Tensor, ns: &NormStats) -> candle_core::Result<Tensor> {
        let h = self.forward_head(x, ns)?;
        self.forward_tail(&h, ns)
    }

    /// The image-resolution part: `conv_in` and the down blocks.
    pub fn forward_head(&self, x: &Tensor, ns: &NormStats) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for b in &self.down_blocks {
            h = b.forward(&h, ns)?;
        }
        Ok(h)
    }

    /// The latent-resolution part after [`Self::forward_head`]: mid block and output layers.
    pub fn forward_tail(&self, h: &Tensor, ns: &NormStats) -> candle_core::Result<Tensor> {
        let mut h = self.mid_block.forward(h, ns)?;
        h = self.conv_norm_out.forward(&h, true, ns)?;
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
    pub fn new(cfg: &AutoencoderKlConfig, mode: Mode, vb: VarBuilder) -> candle_core::Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let groups = cfg.norm_num_groups;
        let last = rev.len() - 1;
        let conv_in = Conv2d::new(cfg.latent_channels, rev[0], 3, 1, 1, mode, vb.pp("conv_in"))?;
        let mid_block = UNetMidBlock2D::new(rev[0], groups, cfg.mid_block_add_attention, mode, vb.pp("mid_block"))?;
        let mut up_blocks = Vec::with_capacity(rev.len());
        let mut c_prev = rev[0];
        for (i, &c) in rev.iter().enumerate() {
            up_blocks.push(UpDecoderBlock2D::new(
                c_prev,
                c,
                cfg.layers_per_block + 1,
                groups,
                i != last,
                mode,
                vb.pp("up_blocks").pp(i),
            )?);
            c_prev = c;
        }
        let conv_norm_out = GroupNorm::new(groups, rev[last], mode, vb.pp("conv_norm_out"))?;
        let conv_out = Conv2d::new(rev[last], cfg.out_channels, 3, 1, 1, mode, vb.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    pub fn forward(&self, z: &Tensor, ns: &NormStats) -> candle_core::Result<Tensor> {
        let h = self.forward_head(z, ns)?;
        self.forward_tail(&h, ns)
    }

    /// The latent-resolution part: `conv_in` and the mid block.
    pub fn forward_head(&self, z: &Tensor, ns: &NormStats) -> candle_core::Result<Tensor> {
        let h = self.conv_in.forward(z)?;
        self.mid_block.forward(&h, ns)
    }

    /// The up blocks and the output layers, after [`Self::forward_head`].
    pub fn forward_tail(&self, h: &Tensor, ns: &NormStats) -> candle_core::Result<Tensor> {
        let mut h = h.clone();
        for b in &self.up_blocks {
            h = b.forward(&h, ns)?;
        }
        h = self.conv_norm_out.forward(&h, true, ns)?;
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
    /// `clamp(logvar, -30, 20)`, same shape as `mean`.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// From the `quant_conv` output (b, 2c, h, w): the first c channels are the mean, the
    /// rest the log-variance (clamped to [-30, 20] as diffusers does).
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let c2 = moments.dim(1)?;
        let c = c2 / 2;
        let mean = moments.narrow(1, 0, c)?;
        let logvar = moments.narrow(1, c, c)?.clamp(-30f32, 20f32)?;
        let std = (&logvar * 0.5)?.exp()?;
        Ok(Self { mean, std, logvar })
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

    /// The KL divergence to N(0, I) of each sample, (b): diffusers'
    /// `DiagonalGaussianDistribution.kl()` (`models/autoencoders/vae.py`, 0.42.1),
    /// `0.5 · Σ_{c,h,w} (mean² + var − 1 − logvar)` with `var = exp(logvar)`.
    pub fn kl(&self) -> Result<Tensor> {
        let var = self.logvar.exp()?;
        let t = ((self.mean.sqr()? + var)? - 1.0)?.sub(&self.logvar)?;
        // (b, c, h, w) -> (b, c·h·w)
        let t = t.flatten_from(1)?;
        Ok((t.sum(1)? * 0.5)?)
    }
}

/// Tiled decoding runs the latent-resolution part of the decoder (conv_in, mid block with
/// attention), and tiled encoding that of the encoder (mid block, output layers), on the whole
/// latent when it has at most this many pixels (256 × 256 = 2048² px with SDXL): it is cheap in
/// memory at latent resolution, and the attention then sees the whole image as untiled. Larger
/// latents run it per tile (the attention cost grows with the square of the pixel count).
pub const GLOBAL_MID_MAX_TOKENS: usize = 256 * 256;

/// How tiles are normalised in tiled decoding and encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TileNorm {
    /// Every GroupNorm of every tile uses the statistics recorded on a "guide" pass over the
    /// whole input, downscaled (nearest) to fit one tile. All tiles are normalised alike, so
    /// normalisation causes no seams; what remains per tile is the mid-block attention's
    /// context and the conv borders, which the overlap blend hides.
    #[default]
    Guide,
    /// Each tile normalises with its own statistics, as diffusers' `tiled_decode` does.
    PerTile,
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
    tile_norm: TileNorm,
    mode: Mode,
}

impl AutoencoderKl {
    /// Builds the model from `vb`, whose names are the checkpoint keys (`encoder.*`,
    /// `decoder.*`, `quant_conv.*`, `post_quant_conv.*`). The config must be valid
    /// ([`AutoencoderKlConfig::validate`]).
    pub fn new(config: &AutoencoderKlConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_mode(config, Mode::Inference, vb)
    }

    /// [`Self::new`] in the given [`Mode`]: [`Mode::Training`] builds every layer from
    /// composed candle ops that have a backward, so gradients reach every weight.
    pub fn with_mode(config: &AutoencoderKlConfig, mode: Mode, vb: VarBuilder) -> Result<Self> {
        config.validate().map_err(Error::InvalidInput)?;
        let lat = config.latent_channels;
        let quant_conv = if config.use_quant_conv {
            Some(Conv2d::new(2 * lat, 2 * lat, 1, 1, 0, mode, vb.pp("quant_conv"))?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(Conv2d::new(lat, lat, 1, 1, 0, mode, vb.pp("post_quant_conv"))?)
        } else {
            None
        };
        Ok(Self {
            encoder: Encoder::new(config, mode, vb.pp("encoder"))?,
            decoder: Decoder::new(config, mode, vb.pp("decoder"))?,
            quant_conv,
            post_quant_conv,
            config: config.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            tile_norm: TileNorm::default(),
            mode,
        })
    }

    /// Chooses how tiles are normalised (default [`TileNorm::Guide`]).
    pub fn set_tile_norm(&mut self, tile_norm: TileNorm) {
        self.tile_norm = tile_norm;
    }

    /// Tiling as asked, except in [`Mode::Training`], which never tiles (tiles are blended
    /// outside the autograd graph).
    fn effective(&self, tiling: Tiling) -> Tiling {
        match self.mode {
            Mode::Inference => tiling,
            Mode::Training => Tiling::Off,
        }
    }

    /// The mode the model was built in.
    pub fn mode(&self) -> Mode {
        self.mode
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
            Error::Shape(format!(
                "latents must be (batch, channels, height, width), got shape {:?}",
                z.dims()
            ))
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
            Error::Shape(format!(
                "images must be (batch, channels, height, width), got shape {:?}",
                x.dims()
            ))
        })?;
        if c != self.config.in_channels {
            return Err(Error::Shape(format!(
                "images have {c} channels, but the VAE expects {} (shape {:?})",
                self.config.in_channels,
                x.dims()
            )));
        }
        let f = self.downsample_factor();
        if b == 0 || h == 0 || w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
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
        match self.effective(tiling).resolve(h, w) {
            Some(cfg) if h > cfg.tile_latent || w > cfg.tile_latent => {
                cfg.validate()?;
                self.decode_tiled(&z, &cfg, progress)
            }
            _ => {
                let out = self.decode_tile(&z, &NormStats::Local)?;
                progress(1, 1);
                Ok(out)
            }
        }
    }

    fn decode_tile(&self, z: &Tensor, ns: &NormStats) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(z)?,
            None => z.clone(),
        };
        Ok(self.decoder.forward(&z, ns)?)
    }

    /// The GroupNorm statistics of a pass over `x` downscaled (nearest) so that its larger side
    /// is `side`, made by `run`.
    fn guide_stats(
        &self,
        x: &Tensor,
        side: usize,
        multiple: usize,
        run: impl Fn(&Tensor, &NormStats) -> Result<Tensor>,
    ) -> Result<Vec<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let scale = side as f64 / h.max(w) as f64;
        let fit = |n: usize| (((n as f64 * scale) / multiple as f64).round() as usize).max(1) * multiple;
        // (b, c, h, w) -> (b, c, fit(h), fit(w))
        let small = x.upsample_nearest2d(fit(h), fit(w))?;
        let rec = NormStats::Record(Default::default());
        run(&small, &rec)?;
        Ok(rec.into_recorded())
    }

    /// The GroupNorm statistics source for one tile.
    fn tile_norm_stats(guide: &Option<Vec<Tensor>>) -> NormStats {
        match guide {
            Some(stats) => NormStats::replay(stats.clone()),
            None => NormStats::Local,
        }
    }

    fn decode_tiled(&self, z: &Tensor, cfg: &TileConfig, progress: &mut dyn FnMut(usize, usize)) -> Result<Tensor> {
        let (b, _, h, w) = z.dims4()?;
        let f = self.downsample_factor();
        let c_out = self.config.out_channels;
        // Up to GLOBAL_MID_MAX_TOKENS latent pixels, the latent-resolution part (conv_in and
        // the mid block with its attention) runs on the whole latent, so the attention sees
        // all of it as in the untiled decode; only the up blocks are tiled.
        let global_head = h * w <= GLOBAL_MID_MAX_TOKENS;
        let run = |t: &Tensor, ns: &NormStats| -> Result<Tensor> {
            if global_head {
                Ok(self.decoder.forward_tail(t, ns)?)
            } else {
                self.decode_tile(t, ns)
            }
        };
        let src = if global_head {
            let z = match &self.post_quant_conv {
                Some(c) => c.forward(z)?,
                None => z.clone(),
            };
            self.decoder.forward_head(&z, &NormStats::Local)?
        } else {
            z.clone()
        };
        let (ys, xs) = (tile_starts(h, cfg), tile_starts(w, cfg));
        let (wys, wxs) = (
            axis_weights(h, &ys, cfg.tile_latent, f),
            axis_weights(w, &xs, cfg.tile_latent, f),
        );
        let (th, tw) = (cfg.tile_latent.min(h), cfg.tile_latent.min(w));
        let guide = match self.tile_norm {
            TileNorm::Guide => Some(self.guide_stats(&src, cfg.tile_latent, 1, run)?),
            TileNorm::PerTile => None,
        };
        let mut out = Blender::new(b, c_out, h * f, w * f);
        let total = ys.len() * xs.len();
        for (i, (&y0, wy)) in ys.iter().zip(&wys).enumerate() {
            for (j, (&x0, wx)) in xs.iter().zip(&wxs).enumerate() {
                // (b, c, th, tw) -> (b, c_out, th·f, tw·f)
                let tile = src.narrow(2, y0, th)?.narrow(3, x0, tw)?;
                let img = run(&tile, &Self::tile_norm_stats(&guide))?;
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
        let moments = match self.effective(tiling).resolve(h / f, w / f) {
            Some(cfg) if h / f > cfg.tile_latent || w / f > cfg.tile_latent => {
                cfg.validate()?;
                self.encode_tiled(&x, &cfg)?
            }
            _ => self.encode_tile(&x, &NormStats::Local)?,
        };
        DiagonalGaussian::from_moments(&moments)
    }

    fn encode_tile(&self, x: &Tensor, ns: &NormStats) -> Result<Tensor> {
        let m = self.encoder.forward(x, ns)?;
        Ok(match &self.quant_conv {
            Some(c) => c.forward(&m)?,
            None => m,
        })
    }

    fn encode_tiled(&self, x: &Tensor, cfg: &TileConfig) -> Result<Tensor> {
        let (b, _, hh, ww) = x.dims4()?;
        let f = self.downsample_factor();
        let (h, w) = (hh / f, ww / f);
        // Up to GLOBAL_MID_MAX_TOKENS latent pixels, only the image-resolution part (the down
        // blocks) is tiled; its blended output goes through the mid block (with its attention)
        // and the output layers in one piece, as in the untiled encode.
        let global_tail = h * w <= GLOBAL_MID_MAX_TOKENS;
        let run = |t: &Tensor, ns: &NormStats| -> Result<Tensor> {
            if global_tail {
                Ok(self.encoder.forward_head(t, ns)?)
            } else {
                self.encode_tile(t, ns)
            }
        };
        let c = if global_tail {
            self.config.block_out_channels.last().copied().unwrap_or(1)
        } else {
            2 * self.config.latent_channels
        };
        let (ys, xs) = (tile_starts(h, cfg), tile_starts(w, cfg));
        let (wys, wxs) = (
            axis_weights(h, &ys, cfg.tile_latent, 1),
            axis_weights(w, &xs, cfg.tile_latent, 1),
        );
        let (th, tw) = (cfg.tile_latent.min(h), cfg.tile_latent.min(w));
        let guide = match self.tile_norm {
            TileNorm::Guide => Some(self.guide_stats(x, cfg.tile_latent * f, f, run)?),
            TileNorm::PerTile => None,
        };
        let mut out = Blender::new(b, c, h, w);
        for (&y0, wy) in ys.iter().zip(&wys) {
            for (&x0, wx) in xs.iter().zip(&wxs) {
                // (b, c, th·f, tw·f) -> (b, c, th, tw)
                let tile = x.narrow(2, y0 * f, th * f)?.narrow(3, x0 * f, tw * f)?;
                let m = run(&tile, &Self::tile_norm_stats(&guide))?;
                let m = m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                out.add(&m, th, tw, y0, x0, wy, wx);
            }
        }
        let t = Tensor::from_vec(out.buf, (b, c, h, w), &self.device)?.to_dtype(self.dtype)?;
        if !global_tail {
            return Ok(t);
        }
        let m = self.encoder.forward_tail(&t, &NormStats::Local)?;
        Ok(match &self.quant_conv {
            Some(q) => q.forward(&m)?,
            None => m,
        })
    }
}
