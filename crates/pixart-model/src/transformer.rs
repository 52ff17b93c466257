//! The PixArt-Σ transformer (diffusers `PixArtTransformer2DModel`,
//! `models/transformers/pixart_transformer_2d.py` v0.42.1).
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use pixart_core::{Error, Result};
use pixart_kernels::{linear, Linear};

use crate::attention::{mask_to_bias, CrossKv, KvCompress, KvInit};
use crate::block::TransformerBlock;
use crate::config::TransformerConfig;
use crate::controlnet::PixArtControlNetAdapter;
use crate::embeddings::{sincos_pos_embed, AdaLayerNormSingle, AddedCond, CaptionProjection, PatchEmbed};
use pixart_kernels::checkpoint::GradSink;
use pixart_kernels::ops::layer_norm_modulate;
use pixart_kernels::profile::stage;

/// Weight name of the first micro-condition tensor; its presence turns micro-conditions on.
pub const MICRO_COND_PROBE: &str = "adaln_single.emb.resolution_embedder.linear_1.weight";

/// The denoiser.
#[derive(Debug, Clone)]
pub struct PixArtTransformer {
    pos_embed: PatchEmbed,
    caption_projection: Option<CaptionProjection>,
    adaln_single: AdaLayerNormSingle,
    transformer_blocks: Vec<TransformerBlock>,
    /// (2, c): shift and scale offsets of the final layer.
    scale_shift_table: Tensor,
    proj_out: Linear,
    config: TransformerConfig,
    interpolation_scale: f64,
    dtype: DType,
    device: Device,
    /// The last position table, keyed by (h, w, interpolation scale bits): denoising calls the
    /// model many times at one size, and at 2K/4K the table is costly to build.
    pos_cache: Arc<Mutex<Option<(PosKey, Tensor)>>>,
    /// Gradient checkpointing per block (training): where the blocks put parameter gradients.
    checkpointing: Option<Arc<GradSink>>,
}

/// What building the model decided from the weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    /// PixArt-α micro-conditions are on (their weights are present).
    pub micro_conditions: bool,
    /// Layers whose conv KV compression was initialised to averaging because the checkpoint
    /// has no weights for it (a weak-to-strong step).
    pub kv_averaging_init: Vec<usize>,
}

/// Text context prepared once per prompt batch: the caption projected and turned into every
/// block's cross-attention keys and values, plus the mask bias.
#[derive(Debug, Clone)]
pub struct Context {
    pub cross: Vec<CrossKv>,
    pub bias: Option<Tensor>,
    pub batch: usize,
    /// The ControlNet copies' own caption keys and values (empty without a ControlNet,
    /// [`PixArtTransformer::encode_context_with_controlnet`]).
    pub control_cross: Vec<CrossKv>,
}

/// A ControlNet applied to one forward: the adapter, the control latents (b, in, H, W) as the
/// pipeline makes them (VAE posterior mean times the scaling factor) and the scale each copy's
/// `after_proj` output is multiplied by (0: the ControlNet is skipped, the output is exactly
/// the transformer's alone).
#[derive(Debug, Clone, Copy)]
pub struct Control<'a> {
    pub adapter: &'a PixArtControlNetAdapter,
    pub cond: &'a Tensor,
    pub scale: f64,
}

/// Which caption positions matter, from the mask (b, l).
struct KeptPositions {
    /// 1 + the last position any row keeps; `None` when some row keeps no position (diffusers
    /// then attends uniformly to all of them, which dropping positions would change).
    keep: Option<usize>,
    /// Each row's length when every row keeps a prefix of ones (and at least one).
    prefix_lens: Option<Arc<[usize]>>,
}

impl KeptPositions {
    fn of(mask: &Tensor) -> Result<Self> {
        let rows: Vec<Vec<f32>> = mask.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec2()?;
        let mut keep = Some(0);
        let mut lens = Vec::with_capacity(rows.len());
        for row in &rows {
            match row.iter().rposition(|&v| v != 0.0) {
                Some(last) => keep = keep.map(|k: usize| k.max(last + 1)),
                None => keep = None,
            }
            lens.push(pixart_core::mask::prefix_len(row));
        }
        let prefix_lens = lens.into_iter().collect::<Option<Vec<usize>>>().map(Arc::from);
        Ok(Self { keep, prefix_lens })
    }
}

/// Key of the cached position table: token grid (h, w) and the interpolation scale's bits.
type PosKey = (usize, usize, u64);

/// Named intermediate tensors recorded by [`PixArtTransformer::forward_traced`].
pub type Trace = Vec<(String, Tensor)>;

fn shape_err(msg: String) -> Error {
    Error::Shape(msg)
}

impl PixArtTransformer {
    /// Builds the model from `vb` (diffusers names). Micro-conditions are used when the
    /// weights have them (or the config demands them, which then makes missing weights an
    /// error); conv KV compression without weights starts from averaging.
    pub fn new(config: &TransformerConfig, vb: VarBuilder) -> Result<(Self, BuildReport)> {
        config
            .validate()
            .map_err(|m| Error::InvalidInput(format!("transformer config: {m}")))?;
        let c = config.inner_dim();
        let micro = vb.contains_tensor(MICRO_COND_PROBE) || config.use_additional_conditions == Some(true);
        let pos_embed = PatchEmbed::new(config.in_channels, c, config.patch_size, vb.pp("pos_embed"))?;
        let caption_projection = match config.caption_channels {
            Some(cc) => Some(CaptionProjection::new(cc, c, vb.pp("caption_projection"))?),
            None => None,
        };
        let adaln_single = AdaLayerNormSingle::new(c, micro, vb.pp("adaln_single"))?;
        let mut transformer_blocks = Vec::with_capacity(config.num_layers);
        let mut kv_averaging_init = Vec::new();
        let vb_blocks = vb.pp("transformer_blocks");
        for i in 0..config.num_layers {
            let vbi = vb_blocks.pp(i);
            let mut block = TransformerBlock::new(
                c,
                config.num_attention_heads,
                config.attention_head_dim,
                config.attention_bias,
                config.norm_eps,
                vbi.clone(),
            )?;
            if let Some(kv) = config.kv_compress.as_ref().filter(|kv| kv.applies_to(i)) {
                let (module, init) =
                    KvCompress::new(kv.sampling, kv.scale_factor, c, vbi.pp("attn1").pp("kv_compress"))?;
                if init == KvInit::Averaging {
                    kv_averaging_init.push(i);
                }
                block.attn1 = block.attn1.with_kv_compress(module);
            }
            transformer_blocks.push(block);
        }
        let model = Self {
            pos_embed,
            caption_projection,
            adaln_single,
            transformer_blocks,
            scale_shift_table: vb.get((2, c), "scale_shift_table")?,
            proj_out: linear(
                c,
                config.patch_size * config.patch_size * config.out_channels(),
                vb.pp("proj_out"),
            )?,
            config: config.clone(),
            interpolation_scale: config.interpolation_scale(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            pos_cache: Arc::new(Mutex::new(None)),
            checkpointing: None,
        };
        let report = BuildReport {
            micro_conditions: micro,
            kv_averaging_init,
        };
        Ok((model, report))
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the PixArt-α resolution / aspect-ratio embedders are in use.
    pub fn has_micro_conditions(&self) -> bool {
        self.adaln_single.has_micro_conditions()
    }

    /// Overrides the PE interpolation scale (e.g. to run a checkpoint at another resolution).
    pub fn set_interpolation_scale(&mut self, s: f64) -> Result<()> {
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::InvalidInput(format!(
                "interpolation scale must be a positive number, got {s}"
            )));
        }
        self.interpolation_scale = s;
        Ok(())
    }

    pub fn interpolation_scale(&self) -> f64 {
        self.interpolation_scale
    }

    /// The caption projection alone: y (b, l, caption_channels) -> (b, l, c).
    pub fn project_caption(&self, y: &Tensor) -> Result<Tensor> {
        let y = y.to_device(&self.device)?.to_dtype(self.dtype)?;
        Ok(match &self.caption_projection {
            Some(p) => p.forward(&y)?,
            None => y,
        })
    }

    /// Projects the caption and computes every block's cross-attention keys and values.
    /// y: (b, l, caption_channels); mask: (b, l), 1 = keep (any numeric dtype).
    pub fn encode_context(&self, y: &Tensor, mask: Option<&Tensor>) -> Result<Context> {
        self.encode_context_with_controlnet(y, mask, None)
    }

    /// [`Self::encode_context`], plus the caption keys and values of `controlnet`'s copies.
    pub fn encode_context_with_controlnet(
        &self,
        y: &Tensor,
        mask: Option<&Tensor>,
        controlnet: Option<&PixArtControlNetAdapter>,
    ) -> Result<Context> {
        let (b, l, d) = y
            .dims3()
            .map_err(|_| shape_err(format!("encoder_hidden_states must be [B,L,D], got {:?}", y.dims())))?;
        let expect_d = self.config.caption_channels.unwrap_or(self.config.inner_dim());
        if d != expect_d {
            return Err(shape_err(format!(
                "encoder_hidden_states has {d} features, the model expects {expect_d}"
            )));
        }
        if l == 0 {
            return Err(shape_err("encoder_hidden_states has no tokens".into()));
        }
        // Caption positions after the last one any row keeps are dropped: they are masked in
        // every row, so they change no output (their scores are 10000 below the kept ones: a
        // softmax weight under 1e-38), and a prompt of 20 tokens then costs 20 keys, not 300.
        // And when every row keeps a prefix, the CPU attention takes each row's own length
        // (so a row's result does not depend on the longest caption in the batch).
        let mut key_lens = None;
        let (y, mask) = match mask {
            Some(m) => {
                if m.dims() != [b, l] {
                    return Err(shape_err(format!(
                        "encoder_attention_mask must be [{b},{l}], got {:?}",
                        m.dims()
                    )));
                }
                let kept = KeptPositions::of(m)?;
                key_lens = kept.prefix_lens;
                match kept.keep {
                    Some(n) if n < l => (y.narrow(1, 0, n)?, Some(m.narrow(1, 0, n)?)), // (b, n, d), (b, n)
                    _ => (y.clone(), Some(m.clone())),
                }
            }
            None => (y.clone(), None),
        };
        let bias = match mask {
            Some(m) => Some(mask_to_bias(&m.to_device(&self.device)?)?.to_dtype(self.dtype)?),
            None => None,
        };
        let y = self.project_caption(&y)?;
        let cross = self
            .transformer_blocks
            .iter()
            .map(|blk| blk.attn2.cross_kv(&y, key_lens.clone()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let control_cross = match controlnet {
            Some(cn) => cn
                .blocks()
                .iter()
                .map(|blk| blk.cross_kv(&y, key_lens.clone()))
                .collect::<candle_core::Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        Ok(Context {
            cross,
            bias,
            batch: b,
            control_cross,
        })
    }

    /// The (h*w, c) f32 position table for an (h, w) token grid, cached for the last grid.
    fn pos_embed_table(&self, h: usize, w: usize) -> Result<Tensor> {
        let key = (h, w, self.interpolation_scale.to_bits());
        if let Ok(cache) = self.pos_cache.lock() {
            if let Some((k, t)) = cache.as_ref() {
                if *k == key {
                    return Ok(t.clone());
                }
            }
        }
        let c = self.config.inner_dim();
        let pe = sincos_pos_embed(c, h, w, self.config.base_size(), self.interpolation_scale, &self.device)?;
        if let Ok(mut cache) = self.pos_cache.lock() {
            *cache = Some((key, pe.clone()));
        }
        Ok(pe)
    }

    fn check_latents(&self, x: &Tensor, t: &Tensor, ctx: &Context) -> Result<(usize, usize, usize)> {
        let (b, ch, hh, ww) = x
            .dims4()
            .map_err(|_| shape_err(format!("hidden_states must be [B,C,H,W], got {:?}", x.dims())))?;
        if ch != self.config.in_channels {
            return Err(shape_err(format!(
                "hidden_states has {ch} channels, the model expects {}",
                self.config.in_channels
            )));
        }
        let p = self.config.patch_size;
        if hh % p != 0 || ww % p != 0 || hh == 0 || ww == 0 {
            return Err(shape_err(format!(
                "latent size {hh}x{ww} is not a non-zero multiple of the patch size {p}"
            )));
        }
        if t.dims() != [b] {
            return Err(shape_err(format!("timestep must be [{b}], got {:?}", t.dims())));
        }
        if ctx.batch != b {
            return Err(shape_err(format!(
                "encoder_hidden_states has batch {}, hidden_states has batch {b}",
                ctx.batch
            )));
        }
        Ok((b, hh / p, ww / p))
    }

    /// Turns gradient checkpointing per block on: blocks keep no activations for the
    /// backward pass and recompute them; parameter gradients computed inside the blocks go to
    /// `sink` (see [`pixart_kernels::checkpoint`]).
    pub fn with_gradient_checkpointing(mut self, sink: Arc<GradSink>) -> Self {
        self.checkpointing = Some(sink);
        self
    }

    /// The full forward: x (b, in, H, W), t (b), y (b, l, caption_channels), mask (b, l)
    /// -> (b, out, H, W) in the model dtype.
    pub fn forward(&self, x: &Tensor, t: &Tensor, y: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let ctx = stage("caption context", &self.device, || self.encode_context(y, mask))?;
        self.forward_with_context(x, t, &ctx, None)
    }

    /// The forward with a prepared [`Context`] (reused across denoising steps).
    pub fn forward_with_context(
        &self,
        x: &Tensor,
        t: &Tensor,
        ctx: &Context,
        cond: Option<&AddedCond>,
    ) -> Result<Tensor> {
        self.run(x, t, ctx, cond, None, None)
    }

    /// [`Self::forward_with_context`] with a ControlNet (`ctx` from
    /// [`Self::encode_context_with_controlnet`] with the same adapter).
    pub fn forward_with_control(
        &self,
        x: &Tensor,
        t: &Tensor,
        ctx: &Context,
        cond: Option<&AddedCond>,
        control: Option<&Control>,
    ) -> Result<Tensor> {
        self.run(x, t, ctx, cond, control, None)
    }

    /// The forward, recording intermediates (`pos_embed`, `x_embed`, `temb`, `t0`,
    /// `block.{i}`, `final_norm`, `proj_out`; with a ControlNet also `control.{j}.after_proj`
    /// (before the scale) and `control.{j}.block`) for layer-by-layer comparisons.
    pub fn forward_traced(
        &self,
        x: &Tensor,
        t: &Tensor,
        ctx: &Context,
        cond: Option<&AddedCond>,
        control: Option<&Control>,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        self.run(x, t, ctx, cond, control, Some(trace))
    }

    /// The patch embedding plus positions of latents (b, in, H, W) on an (h, w) token grid:
    /// (b, h*w, c) in the model dtype (table added in f32, as diffusers does).
    fn embed(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let pe = self.pos_embed_table(h, w)?;
        let tokens = self.pos_embed.forward(x)?; // (b, n, c)
        Ok(tokens
            .to_dtype(DType::F32)?
            .broadcast_add(&pe.unsqueeze(0)?)?
            .to_dtype(self.dtype)?)
    }

    /// Checks a ControlNet's inputs against the latents (b, in, H, W) and the context.
    fn check_control(&self, control: &Control, x: &Tensor, ctx: &Context) -> Result<()> {
        if control.cond.dims() != x.dims() {
            return Err(shape_err(format!(
                "controlnet_cond must have the shape of hidden_states {:?}, got {:?}",
                x.dims(),
                control.cond.dims()
            )));
        }
        let n = control.adapter.num_layers();
        if ctx.control_cross.len() != n {
            return Err(Error::InvalidInput(format!(
                "the caption context holds {} ControlNet blocks, the ControlNet has {n}: encode it with \
                 encode_context_with_controlnet",
                ctx.control_cross.len()
            )));
        }
        if n >= self.transformer_blocks.len() {
            return Err(Error::InvalidInput(format!(
                "the ControlNet has {n} blocks; a transformer of {} blocks takes at most {}",
                self.transformer_blocks.len(),
                self.transformer_blocks.len().saturating_sub(1)
            )));
        }
        if !control.scale.is_finite() {
            return Err(Error::InvalidInput(format!(
                "the ControlNet scale must be a finite number, got {}",
                control.scale
            )));
        }
        Ok(())
    }

    fn run(
        &self,
        x: &Tensor,
        t: &Tensor,
        ctx: &Context,
        cond: Option<&AddedCond>,
        control: Option<&Control>,
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let mut record = |name: &str, v: &Tensor| {
            if let Some(tr) = trace.as_deref_mut() {
                tr.push((name.to_string(), v.clone()));
            }
        };
        let x = x.to_device(&self.device)?.to_dtype(self.dtype)?;
        let t = t.to_device(&self.device)?;
        let (b, h, w) = self.check_latents(&x, &t, ctx)?;
        let p = self.config.patch_size;
        if let Some(c) = control {
            self.check_control(c, &x, ctx)?;
        }
        // A zero scale skips the ControlNet: exactly the transformer alone.
        let control = control.filter(|c| c.scale != 0.0);

        // 1. Patches + positions (table computed in f32, added in f32 as diffusers does).
        let pe = self.pos_embed_table(h, w)?;
        record("pos_embed", &pe);
        let mut hs = stage("patch embedding", &self.device, || self.embed(&x, h, w))?;
        record("x_embed", &hs);
        // The control latents go through the transformer's own patch embedding and positions
        // (the example's `self.transformer.pos_embed(controlnet_cond)`).
        let mut control_states = match control {
            Some(c) => {
                let cond = c.cond.to_device(&self.device)?.to_dtype(self.dtype)?;
                Some(stage("patch embedding", &self.device, || self.embed(&cond, h, w))?)
            }
            None => None,
        };

        // 2. Timestep (and micro-conditions).
        let derived;
        let cond = match (self.has_micro_conditions(), cond) {
            (true, None) => {
                let (hh, ww) = ((h * p * 8) as f32, (w * p * 8) as f32);
                derived = AddedCond {
                    resolution: Tensor::from_vec([hh, ww].repeat(b), (b, 2), &self.device)?,
                    aspect_ratio: Tensor::from_vec(vec![hh / ww; b], (b, 1), &self.device)?,
                };
                Some(&derived)
            }
            (_, Some(c)) => {
                derived = AddedCond {
                    resolution: c.resolution.to_device(&self.device)?.to_dtype(DType::F32)?,
                    aspect_ratio: c.aspect_ratio.to_device(&self.device)?.to_dtype(DType::F32)?,
                };
                Some(&derived)
            }
            (_, None) => None,
        };
        let (t0, temb) = stage("timestep embedding", &self.device, || {
            self.adaln_single.forward(&t, cond, self.dtype)
        })?;
        record("temb", &temb);
        record("t0", &t0);

        // 3. Blocks.
        for (i, (blk, kv)) in self.transformer_blocks.iter().zip(&ctx.cross).enumerate() {
            // Copy i-1 feeds base block i, for i in 1..=N (`block_index > 0 and block_index <=
            // self.blocks_num` in the example; `ControlPixArtHalf.forward` in the original).
            if let (Some(c), Some(states)) = (control, control_states.as_ref()) {
                if i > 0 && i <= c.adapter.num_layers() {
                    let j = i - 1;
                    let (left, down) = stage("controlnet", &self.device, || {
                        c.adapter.blocks()[j].forward(
                            &hs,
                            states,
                            (h, w),
                            &t0,
                            &ctx.control_cross[j],
                            ctx.bias.as_ref(),
                        )
                    })?;
                    record(&format!("control.{j}.after_proj"), &left);
                    record(&format!("control.{j}.block"), &down);
                    hs = if c.scale == 1.0 {
                        (hs + left)?
                    } else {
                        (hs + (left * c.scale)?)?
                    };
                    control_states = Some(down);
                }
            }
            hs = match &self.checkpointing {
                Some(sink) if hs.track_op() => checkpointed_block(blk, &hs, (h, w), &t0, kv, ctx.bias.as_ref(), sink)?,
                _ => blk.forward(&hs, (h, w), &t0, kv, ctx.bias.as_ref())?,
            };
            record(&format!("block.{i}"), &hs);
        }

        // 4. Final layer: shift/scale from the table plus the embedded timestep.
        let ss = self
            .scale_shift_table
            .unsqueeze(0)?
            .broadcast_add(&temb.unsqueeze(1)?)?; // (b, 2, c)
        let (shift, scale) = (ss.narrow(1, 0, 1)?, ss.narrow(1, 1, 1)?);
        let hs = stage("final layer", &self.device, || {
            layer_norm_modulate(&hs, &shift, &scale, 1e-6)
        })?;
        record("final_norm", &hs);
        let hs = stage("final layer", &self.device, || self.proj_out.forward(&hs))?; // (b, n, p*p*out)
        record("proj_out", &hs);

        // 5. Unpatchify: per token (py, px, c) with c fastest.
        let oc = self.config.out_channels();
        let out = hs
            .reshape((b, h, w, p, p, oc))? // (b, h, w, py, px, c)
            .permute((0, 5, 1, 3, 2, 4))? // (b, c, h, py, w, px)
            .reshape((b, oc, h * p, w * p))?; // (b, c, H, W)
        Ok(out)
    }
}

/// `block` as one checkpoint over its tracked inputs: the hidden states, the modulation `t0`
/// and the cross-attention keys and values stacked (2, b, heads, l, d)
/// ([`pixart_kernels::checkpoint`]).
fn checkpointed_block(
    block: &TransformerBlock,
    x: &Tensor,
    grid: (usize, usize),
    t0: &Tensor,
    cross: &CrossKv,
    bias: Option<&Tensor>,
    sink: &Arc<GradSink>,
) -> candle_core::Result<Tensor> {
    let kv = Tensor::stack(&[&cross.k, &cross.v], 0)?; // (2, b, heads, l, d)
    let (block, bias) = (block.clone(), bias.map(|b| b.detach()));
    let f = move |x: &Tensor, t0: &Tensor, kv: &Tensor| {
        let cross = CrossKv {
            k: kv.get(0)?,
            v: kv.get(1)?,
            key_lens: None, // the mask bias, as the backward's composed ops use
        };
        block.forward(x, grid, t0, &cross, bias.as_ref())
    };
    pixart_kernels::checkpoint::checkpoint(x, t0, &kv, Arc::new(f), sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(rows: &[&[u32]]) -> (Option<usize>, Option<Vec<usize>>) {
        let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let mask = Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap();
        let k = KeptPositions::of(&mask).unwrap();
        (k.keep, k.prefix_lens.map(|l| l.to_vec()))
    }

    #[test]
    fn kept_positions_of_a_mask() {
        assert_eq!(kept(&[&[1, 1, 1, 0, 0], &[1, 0, 0, 0, 0]]), (Some(3), Some(vec![3, 1])));
        // A hole inside a row is kept (it stays masked by the bias), and is not a prefix.
        assert_eq!(kept(&[&[1, 0, 1, 0, 0, 0], &[1, 1, 0, 0, 0, 0]]), (Some(3), None));
        assert_eq!(kept(&[&[1, 1, 1]]), (Some(3), Some(vec![3])));
        // A row that keeps nothing attends uniformly to every position: nothing is dropped.
        assert_eq!(kept(&[&[1, 1, 0], &[0, 0, 0]]), (None, None));
    }
}
