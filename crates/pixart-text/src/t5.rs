//! The T5 encoder stack (`T5EncoderModel`), one struct per PyTorch module, fields named as the
//! checkpoint keys.
//!
//! Matched against transformers 5.23.0 `models/t5/modeling_t5.py` (`T5LayerNorm`,
//! `T5DenseGatedActDense`, `T5DenseActDense`, `T5LayerFF`, `T5Attention` with
//! `eager_attention_forward`, `T5LayerSelfAttention`, `T5Block`, `T5Stack`, `T5EncoderModel`):
//! no 1/sqrt(d) score scaling, relative position bias computed by block 0 and shared by every
//! block, padded keys masked with an additive `finfo.min` bias, RMS norms in f32.
use candle_core::{DType, Device, Module, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

use candle_nn::{linear_no_bias, Embedding, Linear, VarBuilder};
use pixart_core::{Error, Result};
use pixart_kernels::cpu::qgemm::QuantMatrix;
use pixart_kernels::ops::t5::{self as ops, ScoreBias};
use pixart_kernels::{PackedLinear, QuantEmbedding, QuantLinear};

use crate::config::{Activation, FeedForward, T5Config};

/// `T5LayerNorm`: RMS norm without mean subtraction or bias, accumulated in f32.
#[derive(Debug, Clone)]
pub struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    /// x: (b, l, d) -> (b, l, d) in the weight's dtype.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        ops::rms_norm(x, &self.weight, self.eps)
    }
}

fn activate(x: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    match act {
        Activation::GeluTanh => x.gelu(),
        Activation::GeluErf => x.gelu_erf(),
        Activation::Relu => x.relu(),
        Activation::Silu => x.silu(),
    }
}

/// Weights kept quantized (from a GGUF file), by checkpoint name (`encoder.block.0.layer.0.
/// SelfAttention.q.weight`, `shared.weight`): the projections and the embedding found here are
/// built as [`QuantLinear`] / [`QuantEmbedding`] instead of being read from the `VarBuilder`.
pub type QuantWeights = HashMap<String, Arc<QuantMatrix>>;

/// The quantized weight `{vb's prefix}.weight` of `q`, checked to be `(rows, cols)`.
fn quantized(
    q: &QuantWeights,
    vb: &VarBuilder,
    rows: usize,
    cols: usize,
) -> candle_core::Result<Option<Arc<QuantMatrix>>> {
    let name = format!("{}.weight", vb.prefix());
    match q.get(&name) {
        Some(w) if w.dims() != (rows, cols) => candle_core::bail!(
            "tensor `{name}`: shape {:?}, the model expects [{rows}, {cols}]",
            [w.dims().0, w.dims().1]
        ),
        found => Ok(found.cloned()),
    }
}

/// A T5 projection (no bias): candle's `Linear`, or for a bf16 model on a CPU with
/// AVX512-BF16 the native packed GEMM with the candle weight dropped once packed (one copy of
/// the weights in memory; candle's bf16 matmul converts the weight to f32 on every call,
/// single-threaded, which made T5-XXL take 35 s for 2 × 20 tokens).
#[derive(Debug, Clone)]
pub enum T5Linear {
    Candle(Linear),
    Packed(Arc<PackedLinear>),
    /// A weight kept quantized (GGUF), dequantized slab by slab inside the GEMM.
    Quant(QuantLinear),
}

impl T5Linear {
    fn new(in_dim: usize, out_dim: usize, vb: VarBuilder, q: &QuantWeights) -> candle_core::Result<Self> {
        if let Some(w) = quantized(q, &vb, out_dim, in_dim)? {
            return Ok(Self::Quant(QuantLinear::new(w, None)?));
        }
        Ok(match PackedLinear::pack(linear_no_bias(in_dim, out_dim, vb)?)? {
            Ok(p) => Self::Packed(Arc::new(p)),
            Err(l) => Self::Candle(l),
        })
    }

    /// Whether this layer runs on the packed native GEMM.
    pub fn is_packed(&self) -> bool {
        matches!(self, Self::Packed(_))
    }
}

impl Module for T5Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Candle(l) => l.forward(x),
            Self::Packed(p) => p.forward(x),
            Self::Quant(l) => l.forward(x),
        }
    }
}

/// `T5DenseGatedActDense` (`wi_0`, `wi_1`, `wo`) or `T5DenseActDense` (`wi`, `wo`).
#[derive(Debug, Clone)]
pub struct DenseReluDense {
    wi_0: T5Linear,
    /// The gate's linear branch; `None` for the ungated FFN (whose input weight is `wi_0` here).
    wi_1: Option<T5Linear>,
    wo: T5Linear,
    act: Activation,
}

impl DenseReluDense {
    pub fn new(cfg: &T5Config, ff: FeedForward, vb: VarBuilder, q: &QuantWeights) -> candle_core::Result<Self> {
        let (d, f) = (cfg.d_model, cfg.d_ff);
        let (wi_0, wi_1) = if ff.gated {
            (
                T5Linear::new(d, f, vb.pp("wi_0"), q)?,
                Some(T5Linear::new(d, f, vb.pp("wi_1"), q)?),
            )
        } else {
            (T5Linear::new(d, f, vb.pp("wi"), q)?, None)
        };
        Ok(Self {
            wi_0,
            wi_1,
            wo: T5Linear::new(f, d, vb.pp("wo"), q)?,
            act: ff.activation,
        })
    }

    /// x: (b, l, d) -> (b, l, d).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = self.wi_0.forward(x)?; // (b, l, f)
        if let (Some(wi_1), Activation::GeluTanh) = (&self.wi_1, self.act) {
            return self.wo.forward(&ops::gelu_tanh_mul(&gate, &wi_1.forward(x)?)?);
        }
        let h = activate(&gate, self.act)?; // (b, l, f)
        let h = match &self.wi_1 {
            Some(wi_1) => (h * wi_1.forward(x)?)?,
            None => h,
        };
        self.wo.forward(&h)
    }
}

/// `T5LayerFF`: pre-norm residual FFN (`layer.1` of a block).
#[derive(Debug, Clone)]
pub struct T5LayerFF {
    /// checkpoint key `DenseReluDense`
    dense_relu_dense: DenseReluDense,
    layer_norm: T5LayerNorm,
}

impl T5LayerFF {
    pub fn new(cfg: &T5Config, ff: FeedForward, vb: VarBuilder, q: &QuantWeights) -> candle_core::Result<Self> {
        Ok(Self {
            dense_relu_dense: DenseReluDense::new(cfg, ff, vb.pp("DenseReluDense"), q)?,
            layer_norm: T5LayerNorm::new(cfg.d_model, cfg.layer_norm_epsilon, vb.pp("layer_norm"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x + self.dense_relu_dense.forward(&self.layer_norm.forward(x)?)?
    }
}

/// The bucket of a relative position `memory - query`, as
/// `T5Attention._relative_position_bucket`: exact buckets for small distances, logarithmic ones
/// up to `max_distance`, computed in f32 like the reference so the bucket edges agree.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let distance = if bidirectional {
        buckets /= 2;
        if relative_position > 0 {
            bucket += buckets;
        }
        relative_position.abs()
    } else {
        (-relative_position).max(0)
    };
    let max_exact = buckets / 2;
    if distance < max_exact {
        return (bucket + distance) as usize;
    }
    // torch: log(rel.float() / max_exact) / math.log(max_distance / max_exact) * (nb - max_exact),
    // in f32 with the Python float scalars rounded to f32, truncated towards zero.
    let log_ratio = (distance as f32 / max_exact as f32).ln();
    let denom = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let large = max_exact + (log_ratio / denom * (buckets - max_exact) as f32) as i64;
    (bucket + large.min(buckets - 1)) as usize
}

/// `T5Attention` (self-attention of an encoder block).
#[derive(Debug, Clone)]
pub struct T5Attention {
    q: T5Linear,
    k: T5Linear,
    v: T5Linear,
    o: T5Linear,
    /// (num_buckets, heads); block 0 only.
    relative_attention_bias: Option<Embedding>,
    heads: usize,
    d_kv: usize,
    num_buckets: usize,
    max_distance: usize,
}

impl T5Attention {
    pub fn new(
        cfg: &T5Config,
        has_relative_attention_bias: bool,
        vb: VarBuilder,
        q: &QuantWeights,
    ) -> candle_core::Result<Self> {
        let inner = cfg.num_heads * cfg.d_kv;
        let relative_attention_bias = if has_relative_attention_bias {
            let w = vb
                .pp("relative_attention_bias")
                .get((cfg.relative_attention_num_buckets, cfg.num_heads), "weight")?;
            Some(Embedding::new(w, cfg.num_heads))
        } else {
            None
        };
        Ok(Self {
            q: T5Linear::new(cfg.d_model, inner, vb.pp("q"), q)?,
            k: T5Linear::new(cfg.d_model, inner, vb.pp("k"), q)?,
            v: T5Linear::new(cfg.d_model, inner, vb.pp("v"), q)?,
            o: T5Linear::new(inner, cfg.d_model, vb.pp("o"), q)?,
            relative_attention_bias,
            heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            num_buckets: cfg.relative_attention_num_buckets,
            max_distance: cfg.relative_attention_max_distance,
        })
    }

    /// `compute_bias` for an encoder (bidirectional): (1, heads, l, l) in f32.
    pub fn compute_bias(&self, len: usize, device: &Device) -> Result<Tensor> {
        let emb = self
            .relative_attention_bias
            .as_ref()
            .ok_or_else(|| Error::InvalidInput("this attention layer holds no relative position bias".into()))?;
        let mut idx = Vec::with_capacity(len * len);
        for query in 0..len as i64 {
            for memory in 0..len as i64 {
                idx.push(relative_position_bucket(memory - query, true, self.num_buckets, self.max_distance) as u32);
            }
        }
        let idx = Tensor::from_vec(idx, (len, len), device)?; // (l_q, l_k)
        let bias = emb
            .forward(&idx)? // (l_q, l_k, heads)
            .permute((2, 0, 1))? // (heads, l_q, l_k)
            .unsqueeze(0)? // (1, heads, l_q, l_k)
            .to_dtype(DType::F32)?;
        Ok(bias)
    }

    /// x: (b, l, d); bias: the position bias + mask of every block -> (b, l, d).
    pub fn forward(&self, x: &Tensor, bias: &AttentionBias) -> candle_core::Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, l, self.heads, self.d_kv))? // (b, l, h, dk)
                .transpose(1, 2)? // (b, h, l, dk)
                .contiguous()
        };
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let dtype = q.dtype();
        // No 1/sqrt(d_kv) scaling in T5. Scores, bias and softmax in f32.
        let out = match &bias.native {
            Some(native) if dtype == DType::BF16 && !q.track_op() => {
                ops::attention(&q, &k, &v, native.clone(), 1.0)? // (b, h, l, dk)
            }
            _ => {
                let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?; // (b, h, l, l)
                let scores = scores.broadcast_add(&bias.tensor)?;
                let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
                probs.matmul(&v)? // (b, h, l, dk)
            }
        };
        let out = out
            .transpose(1, 2)? // (b, l, h, dk)
            .reshape((b, l, self.heads * self.d_kv))?; // (b, l, h*dk)
        self.o.forward(&out)
    }
}

/// The score bias every encoder block adds: block 0's relative position bias with the padding
/// mask folded in, as a tensor, and for a bf16 model on the native GEMM the same values
/// flattened once per forward for [`ops::attention`].
#[derive(Debug, Clone)]
pub struct AttentionBias {
    /// (1 or b, heads, l, l) f32.
    pub tensor: Tensor,
    native: Option<ScoreBias>,
}

impl AttentionBias {
    /// Wraps `tensor` (1 or b, heads, l, l) f32; `native` also flattens it for the fused bf16
    /// attention.
    pub fn new(tensor: Tensor, native: bool) -> candle_core::Result<Self> {
        let native = if native {
            let batch = tensor.dim(0)?;
            let data = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Some(ScoreBias::Full {
                data: data.into(),
                batch,
            })
        } else {
            None
        };
        Ok(Self { tensor, native })
    }
}

/// `T5LayerSelfAttention`: pre-norm residual self-attention (`layer.0` of a block).
#[derive(Debug, Clone)]
pub struct T5LayerSelfAttention {
    /// checkpoint key `SelfAttention`
    self_attention: T5Attention,
    layer_norm: T5LayerNorm,
}

impl T5LayerSelfAttention {
    pub fn new(
        cfg: &T5Config,
        has_relative_attention_bias: bool,
        vb: VarBuilder,
        q: &QuantWeights,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            self_attention: T5Attention::new(cfg, has_relative_attention_bias, vb.pp("SelfAttention"), q)?,
            layer_norm: T5LayerNorm::new(cfg.d_model, cfg.layer_norm_epsilon, vb.pp("layer_norm"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, bias: &AttentionBias) -> candle_core::Result<Tensor> {
        x + self.self_attention.forward(&self.layer_norm.forward(x)?, bias)?
    }
}

/// `T5Block` of the encoder: `layer.0` self-attention, `layer.1` FFN.
#[derive(Debug, Clone)]
pub struct T5Block {
    self_attention: T5LayerSelfAttention,
    ff: T5LayerFF,
}

impl T5Block {
    pub fn new(
        cfg: &T5Config,
        ff: FeedForward,
        first: bool,
        vb: VarBuilder,
        q: &QuantWeights,
    ) -> candle_core::Result<Self> {
        let layer = vb.pp("layer");
        Ok(Self {
            self_attention: T5LayerSelfAttention::new(cfg, first, layer.pp("0"), q)?,
            ff: T5LayerFF::new(cfg, ff, layer.pp("1"), q)?,
        })
    }

    pub fn forward(&self, x: &Tensor, bias: &AttentionBias) -> candle_core::Result<Tensor> {
        self.ff.forward(&self.self_attention.forward(x, bias)?)
    }
}

/// The T5 encoder: `shared` embedding, `encoder.block.*`, `encoder.final_layer_norm`.
#[derive(Debug, Clone)]
pub struct T5Encoder {
    shared: T5Embedding,
    block: Vec<T5Block>,
    final_layer_norm: T5LayerNorm,
    config: T5Config,
}

/// The token embedding (`shared`): candle's, or a quantized table that dequantizes only the
/// rows a forward looks up.
#[derive(Debug, Clone)]
pub enum T5Embedding {
    Dense(Embedding),
    Quant(QuantEmbedding),
}

impl Module for T5Embedding {
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(e) => e.forward(ids),
            Self::Quant(e) => e.forward(ids),
        }
    }
}

/// Intermediates of a traced forward: `(name, tensor)` in execution order
/// (`embeddings`, `block.{i}`).
pub type Trace = Vec<(String, Tensor)>;

impl T5Encoder {
    /// Builds the encoder from `vb` at the checkpoint root. The embedding is `shared.weight`,
    /// or `encoder.embed_tokens.weight` when the file has no `shared.weight`. f16 is refused:
    /// T5 v1.1 activations overflow it.
    pub fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        Self::with_quantized(cfg, vb, &QuantWeights::new())
    }

    /// [`Self::new`] with the weights of `q` kept quantized (see [`QuantWeights`]); the others
    /// come from `vb`.
    pub fn with_quantized(cfg: &T5Config, vb: VarBuilder, q: &QuantWeights) -> Result<Self> {
        if vb.dtype() == DType::F16 {
            return Err(Error::InvalidInput(
                "the T5 encoder cannot run in f16 (its activations overflow); use bf16 or f32".into(),
            ));
        }
        let ff = cfg.feed_forward().map_err(Error::InvalidInput)?;
        let emb_vb = if !vb.contains_tensor("shared.weight") && vb.contains_tensor("encoder.embed_tokens.weight") {
            vb.pp("encoder").pp("embed_tokens")
        } else {
            vb.pp("shared")
        };
        let shared = match quantized(q, &vb.pp("shared"), cfg.vocab_size, cfg.d_model)? {
            Some(table) => T5Embedding::Quant(QuantEmbedding::new(table, vb.dtype())),
            None => T5Embedding::Dense(Embedding::new(
                emb_vb.get((cfg.vocab_size, cfg.d_model), "weight")?,
                cfg.d_model,
            )),
        };
        let enc = vb.pp("encoder");
        let block = (0..cfg.num_layers)
            .map(|i| T5Block::new(cfg, ff, i == 0, enc.pp("block").pp(i), q))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm = T5LayerNorm::new(cfg.d_model, cfg.layer_norm_epsilon, enc.pp("final_layer_norm"))?;
        Ok(Self {
            shared,
            block,
            final_layer_norm,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// How many weights are kept quantized ([`T5Encoder::with_quantized`]): projections and the
    /// token embedding.
    pub fn quantized_weights(&self) -> usize {
        let linears = self.block.iter().flat_map(|b| {
            let a = &b.self_attention.self_attention;
            let f = &b.ff.dense_relu_dense;
            [
                Some(&a.q),
                Some(&a.k),
                Some(&a.v),
                Some(&a.o),
                Some(&f.wi_0),
                f.wi_1.as_ref(),
                Some(&f.wo),
            ]
        });
        let n = linears.flatten().filter(|l| matches!(l, T5Linear::Quant(_))).count();
        n + usize::from(matches!(self.shared, T5Embedding::Quant(_)))
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.final_layer_norm.weight.dtype()
    }

    pub fn device(&self) -> &Device {
        self.final_layer_norm.weight.device()
    }

    /// input_ids: (b, l) u32 or i64; attention_mask: (b, l), 1 for tokens, 0 for padding
    /// (any dtype), or `None` for no padding. Returns the last hidden state (b, l, d_model) in
    /// the model's dtype. Padded positions get outputs too (they attend to the valid keys).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        self.forward_impl(input_ids, attention_mask, None)
    }

    /// [`Self::forward`] with each row encoded at its own valid length (the mask's prefix of
    /// ones) and zero-padded back to `l`: the valid positions equal [`Self::forward`]'s up to
    /// rounding (padded keys are masked there), but cost the valid tokens only instead of the
    /// full 300. Rows of equal length share one call; a row's result does not depend on
    /// which other texts are in the batch. Rows whose mask is not a prefix of ones are encoded
    /// at full length with their mask. Returns (b, l, d_model); padded positions are zero.
    pub fn forward_valid(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (b, l) = input_ids
            .dims2()
            .map_err(|_| Error::Shape(format!("input_ids must be (batch, length), got {:?}", input_ids.dims())))?;
        if attention_mask.dims() != [b, l] {
            return Err(Error::Shape(format!(
                "attention_mask has shape {:?}, input_ids {:?}",
                attention_mask.dims(),
                input_ids.dims()
            )));
        }
        let mask: Vec<Vec<f32>> = attention_mask
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec2()?;
        // Valid length per row; `None` when the ones are not a prefix (or there are none).
        let lengths: Vec<Option<usize>> = mask.iter().map(|row| pixart_core::mask::prefix_len(row)).collect();
        let mut groups: std::collections::BTreeMap<Option<usize>, Vec<usize>> = Default::default();
        for (i, n) in lengths.iter().enumerate() {
            groups.entry(*n).or_default().push(i);
        }
        let mut rows: Vec<Option<Tensor>> = vec![None; b];
        for (n, members) in groups {
            let idx = Tensor::new(
                members.iter().map(|&i| i as u32).collect::<Vec<_>>().as_slice(),
                input_ids.device(),
            )?;
            let ids = input_ids.index_select(&idx, 0)?; // (g, l)
            let out = match n {
                Some(n) => {
                    let h = self.forward(&ids.narrow(1, 0, n)?.contiguous()?, None)?; // (g, n, d)
                    h.pad_with_zeros(1, 0, l - n)? // (g, l, d)
                }
                None => {
                    let m = attention_mask.index_select(&idx.to_device(attention_mask.device())?, 0)?;
                    self.forward(&ids, Some(&m))?
                }
            };
            for (j, &i) in members.iter().enumerate() {
                rows[i] = Some(out.narrow(0, j, 1)?);
            }
        }
        let rows: Vec<Tensor> = rows
            .into_iter()
            .map(|r| r.ok_or_else(|| Error::Shape("forward_valid: a row was not encoded".into())))
            .collect::<Result<_>>()?;
        Ok(Tensor::cat(&rows, 0)?) // (b, l, d)
    }

    /// [`Self::forward`] that also records the embedding output and every block's output.
    pub fn forward_traced(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        self.forward_impl(input_ids, attention_mask, Some(trace))
    }

    fn forward_impl(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let (b, l) = input_ids
            .dims2()
            .map_err(|_| Error::Shape(format!("input_ids must be (batch, length), got {:?}", input_ids.dims())))?;
        if b == 0 || l == 0 {
            return Err(Error::Shape(format!("input_ids is empty: {:?}", input_ids.dims())));
        }
        let ids = self.checked_ids(input_ids)?;
        let dev = self.device().clone();
        let ids = ids.to_device(&dev)?;

        let mut bias = match self.block.first().map(|blk| &blk.self_attention.self_attention) {
            Some(attn) => attn.compute_bias(l, &dev)?, // (1, h, l, l)
            None => Tensor::zeros((1, self.config.num_heads, l, l), DType::F32, &dev)?,
        };
        if let Some(mask) = attention_mask {
            if mask.dims() != [b, l] {
                return Err(Error::Shape(format!(
                    "attention_mask has shape {:?}, input_ids {:?}",
                    mask.dims(),
                    input_ids.dims()
                )));
            }
            // 0 where attended, finfo(f32).min where padded, as transformers' bidirectional mask.
            let keep = mask.to_device(&dev)?.to_dtype(DType::F32)?.ne(0f64)?; // (b, l) u8
            let zeros = Tensor::zeros((b, l), DType::F32, &dev)?;
            let mins = Tensor::full(f32::MIN, (b, l), &dev)?;
            let additive = keep.where_cond(&zeros, &mins)?.reshape((b, 1, 1, l))?; // (b, 1, 1, l_k)
            bias = bias.broadcast_add(&additive)?; // (b, h, l_q, l_k)
        }
        let native = ops::fused_attention_applies(self.dtype(), &dev);
        let bias = AttentionBias::new(bias, native)?;

        let mut x = self.shared.forward(&ids)?; // (b, l, d)
        if let Some(t) = trace.as_deref_mut() {
            t.push(("embeddings".into(), x.clone()));
        }
        for (i, blk) in self.block.iter().enumerate() {
            x = blk.forward(&x, &bias)?;
            if let Some(t) = trace.as_deref_mut() {
                t.push((format!("block.{i}"), x.clone()));
            }
        }
        Ok(self.final_layer_norm.forward(&x)?)
    }

    /// Ids as u32, checked to lie in the vocabulary.
    fn checked_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let ids = match input_ids.dtype() {
            DType::U32 => input_ids.clone(),
            DType::I64 | DType::U8 => {
                let as_i64 = input_ids.to_dtype(DType::I64)?;
                let min = as_i64.flatten_all()?.min(0)?.to_scalar::<i64>()?;
                if min < 0 {
                    return Err(Error::InvalidInput(format!("input_ids holds a negative id ({min})")));
                }
                input_ids.to_dtype(DType::U32)?
            }
            other => {
                return Err(Error::InvalidInput(format!(
                    "input_ids must be u32 or i64, got {other:?}"
                )))
            }
        };
        let max = ids.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if max >= self.config.vocab_size {
            return Err(Error::InvalidInput(format!(
                "input_ids holds id {max}, outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        Ok(ids)
    }
}
