//! The ControlNet-Transformer of PixArt-δ ("ControlNet-Half"): trainable copies of the first N
//! transformer blocks that read the control latents and add their projected outputs to the
//! inputs of base blocks 1..=N.
//!
//! Matched against two references, which agree:
//! - diffusers' research example `examples/research_projects/pixart/controlnet_pixart_alpha.py`
//!   (huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951):
//!   `PixArtControlNetAdapterBlock` / `PixArtControlNetAdapterModel` (the weight names here) and
//!   `PixArtControlNetTransformerModel.forward` (the wiring, in [`crate::PixArtTransformer`]);
//! - the original `diffusion/model/nets/pixart_controlnet.py` (PixArt-alpha/PixArt-alpha@cac2fd3):
//!   `ControlT2IDitBlockHalf` / `ControlPixArtHalf` (the `.pth` layout, [`source_for`]).
//!
//! The adapter's `config.json` holds only `num_layers`: every width comes from the base
//! transformer. Its blocks run full self-attention (no KV compression: the adapter has no
//! compression weights and neither reference compresses it).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use pixart_core::config::{read_component_config, ConfigClass};
use pixart_core::weights::{CheckedWeights, Shared, Source, TensorInfo, WeightFile};
use pixart_core::{Error, Result};
use pixart_kernels::{linear, Linear};
use serde::Deserialize;

use crate::attention::CrossKv;
use crate::block::TransformerBlock;
use crate::config::TransformerConfig;
use crate::original;

/// What an adapter's config.json may name as its class.
const CONFIG_CLASS: ConfigClass = ConfigClass {
    component: "a PixArt ControlNet adapter",
    key: "_class_name",
    names: &["PixArtControlNetAdapterModel"],
};

/// The adapter's `config.json` (`PixArtControlNetAdapterModel`): the number of block copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ControlNetConfig {
    /// 13 in PixArt-δ's released model (the paper's N).
    #[serde(default = "d_layers")]
    pub num_layers: usize,
}

fn d_layers() -> usize {
    13
}

impl ControlNetConfig {
    /// Whether `num_layers` copies fit `base`: copy i feeds base block i + 1, so a base of L
    /// blocks takes 1..=L-1 copies.
    pub fn check_fits(&self, base: &TransformerConfig) -> std::result::Result<(), String> {
        let max = base.num_layers.saturating_sub(1);
        if self.num_layers == 0 || self.num_layers > max {
            return Err(format!(
                "the ControlNet has {} blocks; a transformer of {} blocks takes 1 to {max}",
                self.num_layers, base.num_layers
            ));
        }
        Ok(())
    }
}

/// `controlnet_blocks.{i}`: a copy of base block i with its projections.
#[derive(Debug, Clone)]
pub struct ControlNetAdapterBlock {
    /// Only on the first copy (zero-initialised in training): maps the embedded control
    /// latents before they join the hidden states.
    before_proj: Option<Linear>,
    transformer_block: TransformerBlock,
    /// Zero-initialised in training: what is added to the base block's input.
    after_proj: Linear,
}

impl ControlNetAdapterBlock {
    pub fn new(block_index: usize, base: &TransformerConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let c = base.inner_dim();
        let before_proj = match block_index {
            0 => Some(linear(c, c, vb.pp("before_proj"))?),
            _ => None,
        };
        Ok(Self {
            before_proj,
            transformer_block: TransformerBlock::new(
                c,
                base.num_attention_heads,
                base.attention_head_dim,
                base.attention_bias,
                base.norm_eps,
                vb.pp("transformer_block"),
            )?,
            after_proj: linear(c, c, vb.pp("after_proj"))?,
        })
    }

    /// hidden_states: the base block's input (b, n, c), read by the first copy only;
    /// controlnet_states: the embedded control latents (first copy) or the previous copy's
    /// output (b, n, c). Returns (after_proj output, block output), both (b, n, c), as the
    /// example's `(controlnet_states_left, controlnet_states_down)`.
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        controlnet_states: &Tensor,
        grid: (usize, usize),
        t0: &Tensor,
        cross: &CrossKv,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let states = match &self.before_proj {
            Some(p) => (hidden_states + p.forward(controlnet_states)?)?,
            None => controlnet_states.clone(),
        };
        let down = self.transformer_block.forward(&states, grid, t0, cross, bias)?;
        let left = self.after_proj.forward(&down)?;
        Ok((left, down))
    }

    /// This copy's caption keys and values: y (b, l, c) already projected.
    pub fn cross_kv(&self, y: &Tensor, key_lens: Option<Arc<[usize]>>) -> candle_core::Result<CrossKv> {
        self.transformer_block.attn2.cross_kv(y, key_lens)
    }
}

/// `PixArtControlNetAdapterModel`: the block copies.
#[derive(Debug, Clone)]
pub struct PixArtControlNetAdapter {
    controlnet_blocks: Vec<ControlNetAdapterBlock>,
    config: ControlNetConfig,
}

impl PixArtControlNetAdapter {
    /// Builds the adapter for `base` from `vb` (diffusers names).
    pub fn new(config: &ControlNetConfig, base: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        config.check_fits(base).map_err(Error::InvalidInput)?;
        let vbb = vb.pp("controlnet_blocks");
        let controlnet_blocks = (0..config.num_layers)
            .map(|i| ControlNetAdapterBlock::new(i, base, vbb.pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            controlnet_blocks,
            config: *config,
        })
    }

    pub fn config(&self) -> &ControlNetConfig {
        &self.config
    }

    pub fn num_layers(&self) -> usize {
        self.controlnet_blocks.len()
    }

    pub fn blocks(&self) -> &[ControlNetAdapterBlock] {
        &self.controlnet_blocks
    }
}

/// Tensors of the original layout that a ControlNet file may hold and the adapter does not
/// use: the frozen base model saved with it (`ControlPixArtHalf.base_model`).
const BASE_MODEL_PREFIX: &str = "base_model.";

/// Whether a ControlNet checkpoint is in the original layout (`controlnet.{i}.copied_block...`).
pub fn is_original_layout(names: &std::collections::BTreeMap<String, TensorInfo>) -> bool {
    names.keys().any(|k| k.starts_with("controlnet.0."))
}

/// The original tensor behind an adapter tensor name: `controlnet_blocks.{i}.transformer_block.X`
/// is `controlnet.{i}.copied_block.X'` (X' the original block name of X, [`original::source_for`]),
/// and `controlnet_blocks.{i}.{before,after}_proj.*` is `controlnet.{i}.{before,after}_proj.*`.
pub fn source_for(name: &str) -> Option<Source> {
    let rest = name.strip_prefix("controlnet_blocks.")?;
    let (idx, rest) = rest.split_once('.')?;
    let i: usize = idx.parse().ok()?;
    if let Some(block) = rest.strip_prefix("transformer_block.") {
        let src = original::source_for(&format!("transformer_blocks.{i}.{block}"))?;
        let tail = src.name.strip_prefix(&format!("blocks.{i}."))?;
        return Some(Source {
            name: format!("controlnet.{i}.copied_block.{tail}"),
            rows: src.rows,
        });
    }
    if rest.starts_with("before_proj.") || rest.starts_with("after_proj.") {
        return Some(Source::whole(format!("controlnet.{i}.{rest}")));
    }
    None
}

/// The number of block copies in a checkpoint's names (either layout).
fn count_blocks(names: &std::collections::BTreeMap<String, TensorInfo>) -> Option<usize> {
    names
        .keys()
        .filter_map(|k| {
            let r = k
                .strip_prefix("controlnet_blocks.")
                .or_else(|| k.strip_prefix("controlnet."))?;
            r.split_once('.')?.0.parse::<usize>().ok()
        })
        .max()
        .map(|m| m + 1)
}

/// A loaded adapter and where it came from.
#[derive(Debug)]
pub struct LoadedControlNet {
    pub adapter: PixArtControlNetAdapter,
    pub config: ControlNetConfig,
    pub layout: crate::loading::Layout,
    pub weights: PathBuf,
}

/// Finds the adapter's weight file and config.json in `path`: a file, an adapter folder, or a
/// pipeline folder holding `controlnet/`.
pub fn locate(path: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    crate::loading::locate_component(
        path,
        "controlnet",
        &["diffusion_pytorch_model.safetensors", "model.safetensors"],
        "ControlNet ",
    )
}

/// Loads a ControlNet adapter for the transformer `base`, from the diffusers example's folder
/// (config.json + `controlnet_blocks.*`) or an original PixArt-ControlNet `.pth`
/// (`controlnet.{i}.*`; the `base_model.*` tensors saved with it are skipped: the transformer
/// is the one given). A block count or width that does not fit `base` is an error naming the
/// file; so is every missing, mis-shaped or unexpected tensor.
pub fn load_controlnet(
    path: &Path,
    base: &TransformerConfig,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> Result<LoadedControlNet> {
    let (weights, cfg_path) = locate(path)?;
    let file = WeightFile::open(&weights)?;
    let layout = if is_original_layout(file.infos()) {
        crate::loading::Layout::Original
    } else {
        crate::loading::Layout::Diffusers
    };
    let config = match &cfg_path {
        Some(c) if layout == crate::loading::Layout::Diffusers => read_component_config(c, CONFIG_CLASS)?,
        _ => ControlNetConfig {
            num_layers: count_blocks(file.infos())
                .ok_or_else(|| Error::weights(&weights, "no ControlNet blocks (`controlnet_blocks.{i}.*`)"))?,
        },
    };
    let fault = cfg_path.clone().unwrap_or_else(|| weights.clone());
    config.check_fits(base).map_err(|m| Error::config(&fault, m))?;
    // The width, checked on the first copy's before_proj, for a message that says so.
    let probe = match layout {
        crate::loading::Layout::Original => "controlnet.0.before_proj.weight",
        crate::loading::Layout::Diffusers => "controlnet_blocks.0.before_proj.weight",
    };
    if let Some(info) = file.infos().get(probe) {
        let c = base.inner_dim();
        if info.shape != [c, c] {
            return Err(Error::weights(
                &weights,
                format!(
                    "the ControlNet's width {:?} (`{probe}`) does not fit the transformer's width {c}",
                    info.shape
                ),
            ));
        }
    }
    let mut checked = CheckedWeights::new(file);
    if layout == crate::loading::Layout::Original {
        let skipped: Vec<String> = checked
            .file()
            .infos()
            .keys()
            .filter(|k| k.starts_with(BASE_MODEL_PREFIX))
            .cloned()
            .collect();
        checked = checked.with_renamer(Box::new(source_for)).ignoring(skipped);
    }
    let backend = Shared(Arc::new(checked));
    let vb = VarBuilder::from_backend(Box::new(backend.clone()), dtype, device.clone());
    let built = PixArtControlNetAdapter::new(&config, base, vb);
    backend.0.finish()?;
    Ok(LoadedControlNet {
        adapter: built?,
        config,
        layout,
        weights,
    })
}

/// A fresh adapter from a transformer's tensors (diffusers names), as the example's
/// `PixArtControlNetAdapterModel.from_transformer` and the original `ControlT2IDitBlockHalf`
/// make one: copy i is base block i, `before_proj` (first copy) and every `after_proj` zero, so
/// that the ControlNet starts as the identity.
pub fn adapter_from_transformer(
    base: &std::collections::HashMap<String, Tensor>,
    num_layers: usize,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let mut out = std::collections::HashMap::new();
    for i in 0..num_layers {
        let prefix = format!("transformer_blocks.{i}.");
        let mut found = false;
        for (name, t) in base.iter().filter(|(n, _)| n.starts_with(&prefix)) {
            let rest = &name[prefix.len()..];
            out.insert(format!("controlnet_blocks.{i}.transformer_block.{rest}"), t.clone());
            found = true;
        }
        if !found {
            return Err(Error::InvalidInput(format!(
                "the transformer has no block {i} to copy into the ControlNet"
            )));
        }
        let ss = base
            .get(&format!("{prefix}scale_shift_table"))
            .ok_or_else(|| Error::InvalidInput(format!("no `{prefix}scale_shift_table`")))?;
        let c = ss.dim(1)?;
        let projs: &[&str] = if i == 0 {
            &["before_proj", "after_proj"]
        } else {
            &["after_proj"]
        };
        for proj in projs {
            out.insert(
                format!("controlnet_blocks.{i}.{proj}.weight"),
                Tensor::zeros((c, c), ss.dtype(), ss.device())?,
            );
            out.insert(
                format!("controlnet_blocks.{i}.{proj}.bias"),
                Tensor::zeros(c, ss.dtype(), ss.device())?,
            );
        }
    }
    Ok(out)
}

/// Writes an adapter folder as the example saves one: `config.json` (`_class_name`,
/// `num_layers`) and `diffusion_pytorch_model.safetensors`, each atomically.
pub fn save_controlnet(
    dir: &Path,
    tensors: &std::collections::HashMap<String, Tensor>,
    config: &ControlNetConfig,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    pixart_core::weights::save_safetensors(tensors, &dir.join("diffusion_pytorch_model.safetensors"))?;
    let json = serde_json::json!({
        "_class_name": "PixArtControlNetAdapterModel",
        "num_layers": config.num_layers,
    });
    pixart_core::config::write_json(&dir.join("config.json"), &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_names_of_adapter_tensors() {
        let s = source_for("controlnet_blocks.3.transformer_block.attn1.to_v.weight").unwrap();
        assert_eq!(s.name, "controlnet.3.copied_block.attn.qkv.weight");
        assert_eq!(s.rows, Some((2, 3)));
        let s = source_for("controlnet_blocks.0.transformer_block.scale_shift_table").unwrap();
        assert_eq!(s.name, "controlnet.0.copied_block.scale_shift_table");
        assert_eq!(
            source_for("controlnet_blocks.0.before_proj.bias").unwrap().name,
            "controlnet.0.before_proj.bias"
        );
        assert_eq!(
            source_for("controlnet_blocks.12.after_proj.weight").unwrap().name,
            "controlnet.12.after_proj.weight"
        );
        assert!(source_for("transformer_blocks.0.attn1.to_q.weight").is_none());
    }

    #[test]
    fn block_count_must_fit_the_base() {
        let base = TransformerConfig {
            num_layers: 28,
            ..TransformerConfig::default()
        };
        assert!(ControlNetConfig { num_layers: 13 }.check_fits(&base).is_ok());
        assert!(ControlNetConfig { num_layers: 27 }.check_fits(&base).is_ok());
        let e = ControlNetConfig { num_layers: 28 }.check_fits(&base).unwrap_err();
        assert!(e.contains("28 blocks; a transformer of 28 blocks takes 1 to 27"), "{e}");
        assert!(ControlNetConfig { num_layers: 0 }.check_fits(&base).is_err());
    }
}
