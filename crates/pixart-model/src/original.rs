//! The original PixArt checkpoint layout (`PixArtMS` in PixArt-alpha/PixArt-sigma@1ce521af,
//! `diffusion/model/nets/PixArtMS.py`) and its mapping to the diffusers names, following
//! diffusers' `scripts/convert_pixart_sigma_to_diffusers.py` (v0.42.1).
use std::collections::BTreeMap;

use pixart_core::weights::{Source, TensorInfo};

use crate::config::{KvCompressConfig, KvSampling, TransformerConfig};

/// Tensors of the original layout that have no diffusers counterpart and are ignored: the
/// stale position table and the null caption embedding.
pub const IGNORED: [&str; 2] = ["pos_embed", "y_embedder.y_embedding"];

/// Whether a checkpoint's tensor names are in the original layout.
pub fn is_original_layout(names: &BTreeMap<String, TensorInfo>) -> bool {
    names.contains_key("x_embedder.proj.weight")
}

/// The original tensor behind a diffusers tensor name (row blocks for fused qkv / kv).
pub fn source_for(diffusers_name: &str) -> Option<Source> {
    let whole = |s: String| Some(Source::whole(s));
    let rows = |s: String, i, n| {
        Some(Source {
            name: s,
            rows: Some((i, n)),
        })
    };
    if diffusers_name == "scale_shift_table" {
        return whole("final_layer.scale_shift_table".into());
    }
    let (stem, leaf) = diffusers_name.rsplit_once('.')?; // leaf: weight / bias
    let top = match stem {
        "pos_embed.proj" => Some("x_embedder.proj"),
        "caption_projection.linear_1" => Some("y_embedder.y_proj.fc1"),
        "caption_projection.linear_2" => Some("y_embedder.y_proj.fc2"),
        "adaln_single.emb.timestep_embedder.linear_1" => Some("t_embedder.mlp.0"),
        "adaln_single.emb.timestep_embedder.linear_2" => Some("t_embedder.mlp.2"),
        "adaln_single.emb.resolution_embedder.linear_1" => Some("csize_embedder.mlp.0"),
        "adaln_single.emb.resolution_embedder.linear_2" => Some("csize_embedder.mlp.2"),
        "adaln_single.emb.aspect_ratio_embedder.linear_1" => Some("ar_embedder.mlp.0"),
        "adaln_single.emb.aspect_ratio_embedder.linear_2" => Some("ar_embedder.mlp.2"),
        "adaln_single.linear" => Some("t_block.1"),
        "proj_out" => Some("final_layer.linear"),
        _ => None,
    };
    if let Some(t) = top {
        return whole(format!("{t}.{leaf}"));
    }
    // transformer_blocks.{i}.<rest>
    let rest = diffusers_name.strip_prefix("transformer_blocks.")?;
    let (idx, rest) = rest.split_once('.')?;
    let i: usize = idx.parse().ok()?;
    let b = format!("blocks.{i}");
    if rest == "scale_shift_table" {
        return whole(format!("{b}.scale_shift_table"));
    }
    let (stem, leaf) = rest.rsplit_once('.')?;
    match stem {
        "attn1.to_q" => rows(format!("{b}.attn.qkv.{leaf}"), 0, 3),
        "attn1.to_k" => rows(format!("{b}.attn.qkv.{leaf}"), 1, 3),
        "attn1.to_v" => rows(format!("{b}.attn.qkv.{leaf}"), 2, 3),
        "attn1.to_out.0" => whole(format!("{b}.attn.proj.{leaf}")),
        "attn1.kv_compress.conv" => whole(format!("{b}.attn.sr.{leaf}")),
        "attn1.kv_compress.norm" => whole(format!("{b}.attn.norm.{leaf}")),
        "attn2.to_q" => whole(format!("{b}.cross_attn.q_linear.{leaf}")),
        "attn2.to_k" => rows(format!("{b}.cross_attn.kv_linear.{leaf}"), 0, 2),
        "attn2.to_v" => rows(format!("{b}.cross_attn.kv_linear.{leaf}"), 1, 2),
        "attn2.to_out.0" => whole(format!("{b}.cross_attn.proj.{leaf}")),
        "ff.net.0.proj" => whole(format!("{b}.mlp.fc1.{leaf}")),
        "ff.net.2" => whole(format!("{b}.mlp.fc2.{leaf}")),
        _ => None,
    }
}

/// The KV compression a checkpoint's weights describe (layers that have conv weights, R from
/// the kernel), in either layout. `None` when it has none.
pub fn kv_compress_from_weights(infos: &BTreeMap<String, TensorInfo>) -> Option<KvCompressConfig> {
    let mut layers = Vec::new();
    let mut ratio = 0;
    for (name, info) in infos {
        let layer = name
            .strip_prefix("transformer_blocks.")
            .and_then(|r| r.strip_suffix(".attn1.kv_compress.conv.weight"))
            .or_else(|| {
                name.strip_prefix("blocks.")
                    .and_then(|r| r.strip_suffix(".attn.sr.weight"))
            });
        if let Some(i) = layer.and_then(|l| l.parse::<usize>().ok()) {
            layers.push(i);
            ratio = info.shape.last().copied().unwrap_or(0);
        }
    }
    if layers.is_empty() {
        return None;
    }
    layers.sort_unstable();
    Some(KvCompressConfig {
        sampling: KvSampling::Conv,
        scale_factor: ratio,
        layers,
    })
}

/// Infers a diffusers config from an original-layout checkpoint: sizes from the tensor
/// shapes, `sample_size` from the stale `pos_embed` (else `default_sample_size`),
/// `interpolation_scale = sample_size / 64` as in the released models, head dim 72 unless
/// `heads` is given, micro-conditions and KV compression from the weights present.
pub fn infer_config(
    infos: &BTreeMap<String, TensorInfo>,
    heads: Option<usize>,
    default_sample_size: usize,
) -> Result<TransformerConfig, String> {
    let shape = |n: &str| {
        infos
            .get(n)
            .map(|i| i.shape.clone())
            .ok_or_else(|| format!("missing tensor `{n}`"))
    };
    let xe = shape("x_embedder.proj.weight")?;
    let [c, in_ch, p, _] = xe[..] else {
        return Err(format!(
            "tensor `x_embedder.proj.weight` has shape {xe:?}, expected 4 dims"
        ));
    };
    let num_layers = infos
        .keys()
        .filter_map(|k| k.strip_prefix("blocks.")?.split_once('.')?.0.parse::<usize>().ok())
        .max()
        .map(|m| m + 1)
        .ok_or("no `blocks.{i}` tensors")?;
    let fl = shape("final_layer.linear.weight")?;
    let out = fl.first().copied().unwrap_or(0) / (p * p).max(1);
    let caption = shape("y_embedder.y_proj.fc1.weight")?.get(1).copied();
    let heads = match heads {
        Some(h) => h,
        None if c % 72 == 0 => c / 72,
        None => {
            return Err(format!(
                "hidden size {c} is not a multiple of 72: give the number of heads"
            ))
        }
    };
    if heads == 0 || c % heads != 0 {
        return Err(format!("hidden size {c} is not divisible by {heads} heads"));
    }
    let sample_size = match infos.get("pos_embed") {
        Some(info) => {
            let n = info.shape.get(1).copied().unwrap_or(0);
            let side = (n as f64).sqrt().round() as usize;
            if side * side == n && n > 0 {
                side * p
            } else {
                default_sample_size
            }
        }
        None => default_sample_size,
    };
    Ok(TransformerConfig {
        num_attention_heads: heads,
        attention_head_dim: c / heads,
        in_channels: in_ch,
        out_channels: Some(out),
        num_layers,
        cross_attention_dim: Some(c),
        sample_size,
        patch_size: p,
        interpolation_scale: Some(sample_size as f64 / 64.0),
        use_additional_conditions: Some(infos.contains_key("csize_embedder.mlp.0.weight")),
        caption_channels: caption,
        kv_compress: kv_compress_from_weights(infos),
        ..TransformerConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_fused_projections_by_rows() {
        let s = source_for("transformer_blocks.3.attn1.to_k.weight").unwrap();
        assert_eq!(s.name, "blocks.3.attn.qkv.weight");
        assert_eq!(s.rows, Some((1, 3)));
        let s = source_for("transformer_blocks.0.attn2.to_v.bias").unwrap();
        assert_eq!(s.name, "blocks.0.cross_attn.kv_linear.bias");
        assert_eq!(s.rows, Some((1, 2)));
        assert_eq!(
            source_for("scale_shift_table").unwrap().name,
            "final_layer.scale_shift_table"
        );
        assert_eq!(source_for("proj_out.weight").unwrap().name, "final_layer.linear.weight");
        assert_eq!(
            source_for("transformer_blocks.27.attn1.kv_compress.norm.weight")
                .unwrap()
                .name,
            "blocks.27.attn.norm.weight"
        );
        assert!(source_for("nonsense.weight").is_none());
    }
}
