//! Fresh weights for training from scratch, initialised as PixArt does
//! (PixArt-alpha/PixArt-sigma@1ce521af `diffusion/model/nets/PixArtMS.py`,
//! `PixArtMS.initialize_weights`, and `PixArt_blocks.py` for the KV-compression conv):
//!
//! - every `nn.Linear`: Xavier-uniform weight, zero bias;
//! - the patch-embedding conv: Xavier-uniform on the weight viewed as (out, in·k·k), bias as
//!   PyTorch's conv default (uniform ±1/√fan_in);
//! - timestep MLP, `t_block` (`adaln_single.linear`), micro-condition embedders and the caption
//!   projection: normal(0, 0.02) weights;
//! - cross-attention output projections and the final linear (`proj_out`): zero;
//! - `scale_shift_table`s: normal / √hidden;
//! - KV compression: the conv as R×R averaging (weight 1/R², bias 0), the LayerNorm as identity.
//!
//! [`InitWeights::pytorch_caption_path`] departs from PixArt for the caption path only
//! (`caption_projection.*` and `*.attn2.to_out.*`): PyTorch's `nn.Linear` default, weight and
//! bias uniform ±1/√fan_in, so the caption reaches the output from the first step.
//!
//! [`InitWeights`] is a `VarBuilder` backend that draws these by weight name from a seeded
//! generator, so building a [`crate::PixArtTransformer`] through it (with
//! `pixart_core::weights::Recording` to keep the tensors) yields the full initial state dict.
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::transformer::MICRO_COND_PROBE;

/// The initialiser backend (see the module docs).
pub struct InitWeights {
    rng: Mutex<StdRng>,
    micro_conditions: bool,
    /// Fan-in of the last weight whose bias depends on it (the patch-embedding conv; the
    /// caption path's linears with `pytorch_caption_path`); a weight is drawn before its bias.
    last_fan_in: Mutex<usize>,
    pytorch_caption_path: bool,
}

impl InitWeights {
    /// `micro_conditions`: whether the PixArt-α resolution/aspect-ratio embedders exist.
    pub fn new(seed: u64, micro_conditions: bool) -> Self {
        Self {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            micro_conditions,
            last_fan_in: Mutex::new(1),
            pytorch_caption_path: false,
        }
    }

    /// Initialise the caption path as PyTorch's `nn.Linear` does (see the module docs).
    pub fn pytorch_caption_path(mut self, on: bool) -> Self {
        self.pytorch_caption_path = on;
        self
    }

    fn draw(&self, n: usize, f: impl Fn(&mut StdRng) -> f32) -> candle_core::Result<Vec<f32>> {
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("init rng poisoned".into()))?;
        Ok((0..n).map(|_| f(&mut rng)).collect())
    }

    fn normal(&self, n: usize, std: f64) -> candle_core::Result<Vec<f32>> {
        let d = Normal::new(0.0, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        self.draw(n, |r| d.sample(r) as f32)
    }

    fn uniform(&self, n: usize, bound: f64) -> candle_core::Result<Vec<f32>> {
        self.draw(n, |r| r.random_range(-bound..=bound) as f32)
    }

    /// The init rule for one weight, by name and shape.
    fn init(&self, name: &str, dims: &[usize]) -> candle_core::Result<Vec<f32>> {
        let n: usize = dims.iter().product();
        let zeros = || Ok(vec![0f32; n]);
        let is_weight = name.ends_with(".weight");
        let is_bias = name.ends_with(".bias");
        if name.ends_with("scale_shift_table") {
            let hidden = dims.last().copied().unwrap_or(1) as f64;
            return self.normal(n, 1.0 / hidden.sqrt());
        }
        if name.contains("kv_compress.conv.") {
            return if is_weight {
                let r2 = dims.get(2).copied().unwrap_or(1) * dims.get(3).copied().unwrap_or(1);
                Ok(vec![1.0 / r2 as f32; n])
            } else {
                zeros()
            };
        }
        if name.contains("kv_compress.norm.") {
            return Ok(vec![if is_weight { 1.0 } else { 0.0 }; n]);
        }
        let caption_path = name.starts_with("caption_projection.") || name.contains(".attn2.to_out.");
        if self.pytorch_caption_path && caption_path {
            // nn.Linear: kaiming_uniform(a=√5) = U(±1/√fan_in) for the weight, the same bound
            // for the bias; the bias (drawn after its weight) reuses the fan-in recorded then.
            let fan_in = if is_weight && dims.len() == 2 {
                if let Ok(mut f) = self.last_fan_in.lock() {
                    *f = dims[1];
                }
                dims[1]
            } else {
                self.last_fan_in.lock().map(|f| *f).unwrap_or(1)
            };
            return self.uniform(n, 1.0 / (fan_in.max(1) as f64).sqrt());
        }
        if name.starts_with("proj_out.") || name.contains(".attn2.to_out.") {
            return zeros();
        }
        if name == "pos_embed.proj.weight" {
            let fan_out = dims.first().copied().unwrap_or(1).max(1);
            let fan_in = n / fan_out;
            if let Ok(mut f) = self.last_fan_in.lock() {
                *f = fan_in;
            }
            return self.uniform(n, (6.0 / (fan_in + fan_out) as f64).sqrt());
        }
        if name == "pos_embed.proj.bias" {
            let fan_in = self.last_fan_in.lock().map(|f| *f).unwrap_or(1).max(1);
            return self.uniform(n, 1.0 / (fan_in as f64).sqrt());
        }
        if is_bias {
            return zeros();
        }
        let normal_002 = name.starts_with("adaln_single.") || name.starts_with("caption_projection.");
        if is_weight && normal_002 {
            return self.normal(n, 0.02);
        }
        if is_weight && dims.len() == 2 {
            let (fan_out, fan_in) = (dims[0], dims[1]);
            return self.uniform(n, (6.0 / (fan_in + fan_out) as f64).sqrt());
        }
        Err(candle_core::Error::Msg(format!(
            "init: no rule for weight `{name}` {dims:?}"
        )))
    }
}

impl SimpleBackend for InitWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self.init(name, s.dims())?;
        Tensor::from_vec(data, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::CannotFindTensor { path: name.into() })
    }

    fn contains_tensor(&self, name: &str) -> bool {
        name != MICRO_COND_PROBE || self.micro_conditions
    }
}
