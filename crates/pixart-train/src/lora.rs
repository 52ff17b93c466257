//! LoRA (Hu et al. 2021) on the transformer's linear layers, with PEFT's conventions (as
//! diffusers loads them): `lora_A` (rank, in) Kaiming-uniform (a = √5), `lora_B` (out, rank)
//! zero, effective weight `W + (alpha / rank)·B·A`.
//!
//! Files: `lora.safetensors` with keys `transformer.<layer>.lora_A.weight` /
//! `transformer.<layer>.lora_B.weight`, the scale `alpha / rank` folded into `lora_B` so that
//! a loader that assumes alpha = rank (diffusers without a PEFT config) applies it correctly.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use pixart_core::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::LoraSection;

/// The adapters of one run: which layers, rank and scale.
#[derive(Debug, Clone)]
pub struct Lora {
    /// Layer names (`transformer_blocks.0.attn1.to_q`) with (out, in).
    layers: BTreeMap<String, (usize, usize)>,
    rank: usize,
    scale: f64,
    seed: u64,
}

impl Lora {
    /// Finds the layers of `weights` whose names end with one of the targets.
    pub fn new(cfg: &LoraSection, weights: &BTreeMap<String, Tensor>, seed: u64) -> Result<Self> {
        let mut layers = BTreeMap::new();
        for (name, t) in weights {
            let Some(layer) = name.strip_suffix(".weight") else {
                continue;
            };
            if t.rank() != 2
                || !cfg
                    .targets
                    .iter()
                    .any(|s| layer == s || layer.ends_with(&format!(".{s}")))
            {
                continue;
            }
            let (o, i) = t.dims2()?;
            layers.insert(layer.to_string(), (o, i));
        }
        if layers.is_empty() {
            return Err(Error::InvalidInput(format!(
                "lora.targets {:?} match no linear layer of the transformer",
                cfg.targets
            )));
        }
        // A rank above a layer's width adds nothing and only costs memory.
        if let Some((layer, &(o, i))) = layers.iter().min_by_key(|(_, (o, i))| (*o).min(*i)) {
            let width = o.min(i);
            if cfg.rank > width {
                return Err(Error::InvalidInput(format!(
                    "lora.rank {} is more than the width {width} of the adapted layer `{layer}`",
                    cfg.rank
                )));
            }
        }
        Ok(Self {
            layers,
            rank: cfg.rank,
            scale: cfg.alpha.unwrap_or(cfg.rank as f64) / cfg.rank as f64,
            seed,
        })
    }

    /// Fresh adapters: A Kaiming-uniform, B zero (so training starts at the base model).
    pub fn init_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x4c6f_5241);
        let mut out = BTreeMap::new();
        for (layer, &(o, i)) in &self.layers {
            // kaiming_uniform_(a=√5): bound = √(6 / ((1 + a²)·fan_in)) = 1/√fan_in.
            let bound = 1.0 / (i as f64).sqrt();
            let a: Vec<f32> = (0..self.rank * i)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            out.insert(
                format!("{layer}.lora_A.weight"),
                Tensor::from_vec(a, (self.rank, i), &Device::Cpu)?,
            );
            out.insert(
                format!("{layer}.lora_B.weight"),
                Tensor::zeros((o, self.rank), DType::F32, &Device::Cpu)?,
            );
        }
        Ok(out)
    }

    /// The base weights with `W + scale·B·A` in the adapted layers (tracked when A/B are).
    pub fn merged(
        &self,
        base: &BTreeMap<String, Tensor>,
        ab: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>> {
        let mut out = base.clone();
        for layer in self.layers.keys() {
            let (Some(a), Some(b)) = (
                ab.get(&format!("{layer}.lora_A.weight")),
                ab.get(&format!("{layer}.lora_B.weight")),
            ) else {
                return Err(Error::InvalidInput(format!("LoRA weights for `{layer}` are missing")));
            };
            let key = format!("{layer}.weight");
            let w = base
                .get(&key)
                .ok_or_else(|| Error::InvalidInput(format!("LoRA layer `{layer}` has no base weight")))?;
            let delta = (b.matmul(a)? * self.scale)?; // (out, rank)·(rank, in) -> (out, in)
            out.insert(key, (w.to_dtype(DType::F32)?.detach() + delta)?);
        }
        Ok(out)
    }

    /// Writes the adapters as `lora.safetensors` (PEFT/diffusers keys, scale folded into B).
    pub fn save(&self, ab: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
        let mut out = HashMap::new();
        for (k, t) in ab {
            let t = t.detach().to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            let t = if k.ends_with(".lora_B.weight") {
                (t * self.scale)?
            } else {
                t
            };
            out.insert(format!("transformer.{k}"), t);
        }
        pixart_core::weights::save_safetensors(&out, path)
    }
}
