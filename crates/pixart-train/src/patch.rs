//! Weak-to-strong (d): a finer patch for a trained transformer.
//!
//! A model trained with patch size P sees each P×P block of latent cells as one token. Going to
//! patch size 1 gives each cell its own token (P² times the tokens, finer detail per token) while
//! keeping everything but the two patch layers. The new layers start where the old model's
//! behaviour is kept for smooth latents:
//! - `pos_embed.proj` (a P×P stride-P conv) becomes a 1×1 conv whose weight is the sum of the
//!   old P² taps: on a block whose P×P cells are equal it gives the old token embedding;
//! - `proj_out` (hidden → P·P·C, diffusers' `nhwpqc` order, `transformer_2d` /
//!   `PixArtTransformer2DModel.forward` unpatchify, diffusers 0.42.1) becomes hidden → C with the
//!   mean of the P² sub-positions' rows, i.e. the old prediction averaged over the block.
//!
//! The 2-D sin-cos positions then need `interpolation_scale = P` to stay in the trained range
//! (the paper's PE interpolation, §3 of arXiv 2403.04692).
use std::collections::BTreeMap;

use candle_core::{DType, Tensor, D};
use pixart_core::{Error, Result};

/// Rewrites the patch layers of `weights` (trained with `from` × `from` patches, `out_channels`
/// output channels) for patch size 1.
pub fn to_unit_patch(weights: &mut BTreeMap<String, Tensor>, from: usize, out_channels: usize) -> Result<()> {
    if from == 1 {
        return Ok(());
    }
    let take = |w: &mut BTreeMap<String, Tensor>, name: &str| -> Result<Tensor> {
        w.remove(name)
            .ok_or_else(|| Error::InvalidInput(format!("model.patch_size: the checkpoint lacks `{name}`")))
    };
    let conv = take(weights, "pos_embed.proj.weight")?;
    let (hidden, cin, kh, kw) = conv.dims4()?;
    if kh != from || kw != from {
        return Err(Error::Shape(format!(
            "model.patch_size: pos_embed.proj.weight is {:?}, expected {from}x{from} taps",
            conv.dims()
        )));
    }
    // [hidden, cin, P, P] -> [hidden, cin, 1, 1]: the taps summed.
    let conv = conv
        .to_dtype(DType::F32)?
        .reshape((hidden, cin, from * from))?
        .sum_keepdim(D::Minus1)?
        .reshape((hidden, cin, 1, 1))?;
    weights.insert("pos_embed.proj.weight".into(), conv);

    let pp = from * from;
    let w = take(weights, "proj_out.weight")?;
    let b = take(weights, "proj_out.bias")?;
    let (rows, h) = w.dims2()?;
    if rows != pp * out_channels || b.dims() != [rows] {
        return Err(Error::Shape(format!(
            "model.patch_size: proj_out is {:?} / {:?}, expected [{}, hidden] for patch {from} and {out_channels} channels",
            w.dims(),
            b.dims(),
            pp * out_channels
        )));
    }
    // Rows are ordered (p, q, c): [P*P*C, hidden] -> [P*P, C, hidden], mean over the sub-positions.
    let w = w.to_dtype(DType::F32)?.reshape((pp, out_channels, h))?.mean(0)?;
    // [P*P*C] -> [P*P, C] -> [C].
    let b = b.to_dtype(DType::F32)?.reshape((pp, out_channels))?.mean(0)?;
    weights.insert("proj_out.weight".into(), w);
    weights.insert("proj_out.bias".into(), b);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sums_taps_and_averages_sub_positions() {
        let dev = Device::Cpu;
        let mut w = BTreeMap::new();
        // hidden 2, cin 1, 2x2 taps.
        let conv = Tensor::new(&[1f32, 2., 3., 4., 10., 20., 30., 40.], &dev)
            .unwrap()
            .reshape((2, 1, 2, 2))
            .unwrap();
        w.insert("pos_embed.proj.weight".to_string(), conv);
        // 4 sub-positions x 2 channels, hidden 1: row value = 10 * position + channel.
        let rows: Vec<f32> = (0..4).flat_map(|p| (0..2).map(move |c| (10 * p + c) as f32)).collect();
        w.insert(
            "proj_out.weight".to_string(),
            Tensor::new(rows.as_slice(), &dev).unwrap().reshape((8, 1)).unwrap(),
        );
        w.insert("proj_out.bias".to_string(), Tensor::new(rows.as_slice(), &dev).unwrap());
        to_unit_patch(&mut w, 2, 2).unwrap();
        let conv: Vec<f32> = w["pos_embed.proj.weight"].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(conv, vec![10., 100.]);
        assert_eq!(w["pos_embed.proj.weight"].dims(), &[2, 1, 1, 1]);
        let out: Vec<f32> = w["proj_out.weight"].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(out, vec![15., 16.]);
        let bias: Vec<f32> = w["proj_out.bias"].to_vec1().unwrap();
        assert_eq!(bias, vec![15., 16.]);
    }

    #[test]
    fn wrong_shapes_are_errors() {
        // A 3x3 conv for patch 2; then a right conv but no proj_out.
        for (taps, want) in [(3, "2x2 taps"), (2, "proj_out.weight")] {
            let conv = Tensor::zeros((2, 1, taps, taps), DType::F32, &Device::Cpu).unwrap();
            let mut w = BTreeMap::from([("pos_embed.proj.weight".to_string(), conv)]);
            let e = to_unit_patch(&mut w, 2, 2).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
