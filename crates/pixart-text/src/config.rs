//! The T5 encoder's configuration: transformers' `text_encoder/config.json`.
//!
//! Field names and defaults follow `T5Config` in transformers 5.23.0
//! (`models/t5/configuration_t5.py`); keys the encoder does not use are ignored.
use std::path::Path;

use pixart_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// `config.json` of a transformers `T5EncoderModel` (or any T5 checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_model")]
    pub d_model: usize,
    #[serde(default = "d_kv")]
    pub d_kv: usize,
    #[serde(default = "d_ff")]
    pub d_ff: usize,
    #[serde(default = "d_layers")]
    pub num_layers: usize,
    #[serde(default = "d_heads")]
    pub num_heads: usize,
    #[serde(default = "d_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "d_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_epsilon: f64,
    /// `"relu"`, `"gated-gelu"` (T5 v1.1), `"gated-silu"`, ...: `[gated-]<activation>`.
    #[serde(default = "d_ff_proj")]
    pub feed_forward_proj: String,
}

fn d_vocab() -> usize {
    32128
}
fn d_model() -> usize {
    512
}
fn d_kv() -> usize {
    64
}
fn d_ff() -> usize {
    2048
}
fn d_layers() -> usize {
    6
}
fn d_heads() -> usize {
    8
}
fn d_buckets() -> usize {
    32
}
fn d_max_distance() -> usize {
    128
}
fn d_eps() -> f64 {
    1e-6
}
fn d_ff_proj() -> String {
    "relu".into()
}

/// The FFN's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluTanh,
    /// exact erf GELU (`gelu`).
    GeluErf,
    Relu,
    Silu,
}

/// The feed-forward kind parsed from `feed_forward_proj`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedForward {
    /// `wo(act(wi_0 x) * wi_1 x)` when true, `wo(act(wi x))` otherwise.
    pub gated: bool,
    pub activation: Activation,
}

impl T5Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let class = pixart_core::config::ConfigClass {
            component: "a T5 encoder",
            key: "model_type",
            names: &["t5"],
        };
        let cfg: Self = pixart_core::config::read_component_config(path, class)?;
        cfg.validate().map_err(|m| Error::config(path, m))?;
        Ok(cfg)
    }

    /// The encoder of T5 v1.1 XXL (`google/t5-v1_1-xxl`), which PixArt-Σ uses.
    pub fn xxl() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
        }
    }

    /// The FFN kind, as `T5Config.__init__` derives it (`"gated-gelu"` means `gelu_new`).
    pub fn feed_forward(&self) -> std::result::Result<FeedForward, String> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let (gated, act) = match parts.as_slice() {
            [act] => (false, *act),
            ["gated", act] => (true, *act),
            _ => {
                return Err(format!(
                    "feed_forward_proj `{}` is not `[gated-]<activation>`",
                    self.feed_forward_proj
                ))
            }
        };
        let activation = match act {
            // transformers maps "gated-gelu" to gelu_new for backwards compatibility.
            "gelu" if gated => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => return Err(format!("unsupported FFN activation `{other}` in feed_forward_proj")),
        };
        Ok(FeedForward { gated, activation })
    }

    /// Checks the values that would make the model impossible to build.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("relative_attention_max_distance", self.relative_attention_max_distance),
        ] {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        pixart_core::config::check_at_most(&[
            ("vocab_size", self.vocab_size, 1 << 20),
            ("d_model", self.d_model, 65536),
            ("d_kv", self.d_kv, 4096),
            ("d_ff", self.d_ff, 1 << 18),
            ("num_layers", self.num_layers, 1024),
            ("num_heads", self.num_heads, 1024),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
                4096,
            ),
        ])?;
        pixart_core::config::check_parameters(self.num_parameters() as u128)?;
        // Bidirectional buckets: half per direction, half of those exact; at least one exact.
        if self.relative_attention_num_buckets < 4 {
            return Err(format!(
                "relative_attention_num_buckets must be at least 4, got {}",
                self.relative_attention_num_buckets
            ));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon > 0.0) {
            return Err(format!(
                "layer_norm_epsilon must be positive, got {}",
                self.layer_norm_epsilon
            ));
        }
        self.feed_forward()?;
        Ok(())
    }

    /// Number of parameters of the encoder (embedding included).
    pub fn num_parameters(&self) -> usize {
        let inner = self.num_heads * self.d_kv;
        let attn = 4 * self.d_model * inner;
        let ffn_in = if self.feed_forward().map(|f| f.gated).unwrap_or(true) {
            2
        } else {
            1
        };
        let ffn = (ffn_in + 1) * self.d_model * self.d_ff;
        self.vocab_size * self.d_model
            + self.num_layers * (attn + ffn + 2 * self.d_model)
            + self.relative_attention_num_buckets * self.num_heads
            + self.d_model
    }
}
