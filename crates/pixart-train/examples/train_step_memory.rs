//! One training step (forward, IDDPM loss, backward) of the PixArt-Σ XL/2 architecture with
//! fresh weights, with or without gradient checkpointing; prints time and peak RSS as JSON.
//! Run each variant in its own process (peak RSS is per process):
//!
//! ```sh
//! cargo run --release -p pixart-train --example train_step_memory -- 8 512 2
//! cargo run --release -p pixart-train --example train_step_memory -- 8 512 2 checkpointing
//! ```
//! Arguments: layers, image size (px, latent = size/8), batch, [hidden=H] [vae=F] [checkpointing].
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use pixart_model::GradSink;
use pixart_model::{PixArtTransformer, TransformerConfig};
use pixart_train::diffusion::GaussianDiffusion;

fn main() -> anyhow::Result<()> {
    pixart_core::mem::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (layers, size, batch) = (num(0, 8), num(1, 512), num(2, 2));
    let checkpointing = args.iter().any(|a| a == "checkpointing");
    let opt = |key: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("{key}=")).and_then(|v| v.parse::<usize>().ok()))
    };
    let vae_factor = opt("vae").unwrap_or(8);
    let mut cfg = TransformerConfig::sigma_xl2(size / vae_factor);
    cfg.num_layers = layers;
    if let Some(h) = opt("hidden") {
        cfg.attention_head_dim = 64;
        cfg.num_attention_heads = h / 64;
        cfg.caption_channels = Some(opt("caption").unwrap_or(128));
        cfg.cross_attention_dim = Some(h);
    }
    let weights = pixart_train::trainer::fresh_weights(&cfg, 0)?;
    let vars: Vec<(String, Var)> = weights
        .iter()
        .map(|(k, t)| Ok((k.clone(), Var::from_tensor(t)?)))
        .collect::<anyhow::Result<_>>()?;
    let tensors = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    let (mut model, _) = PixArtTransformer::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))?;
    let sink = Arc::new(GradSink::new(vars.iter().map(|(_, v)| v.clone()).collect()));
    if checkpointing {
        model = model.with_gradient_checkpointing(sink.clone());
    }
    let before = pixart_core::mem::peak_rss_bytes();
    let lat = size / vae_factor;
    let x0 = Tensor::randn(0f32, 1.0, (batch, 4, lat, lat), &Device::Cpu)?;
    let noise = Tensor::randn(0f32, 1.0, (batch, 4, lat, lat), &Device::Cpu)?;
    let y = Tensor::randn(
        0f32,
        1.0,
        (batch, 32, cfg.caption_channels.unwrap_or(4096)),
        &Device::Cpu,
    )?;
    let t: Vec<usize> = (0..batch).map(|i| (100 + 300 * i) % 1000).collect();
    let d = GaussianDiffusion::linear(1000)?;
    let x_t = d.q_sample(&x0, &t, &noise)?;
    let tt = Tensor::from_vec(t.iter().map(|&v| v as f32).collect::<Vec<_>>(), batch, &Device::Cpu)?;
    let start = Instant::now();
    let out = model.forward(&x_t, &tt, &y, None)?;
    let loss = d.training_losses(&out, &x0, &x_t, &noise, &t)?.loss.mean_all()?;
    let grads = loss.backward()?;
    let inner = sink.take();
    let with_grad = vars
        .iter()
        .filter(|(_, v)| grads.get(v.as_tensor()).is_some() || inner.contains_key(&v.as_tensor().id()))
        .count();
    println!(
        "{}",
        serde_json::json!({
            "layers": layers, "size": size, "batch": batch, "gradient_checkpointing": checkpointing,
            "seconds": start.elapsed().as_secs_f64(), "loss": loss.to_scalar::<f32>()?,
            "params_with_grad": with_grad, "params": vars.len(),
            "peak_rss_bytes_before_step": before, "peak_rss_bytes": pixart_core::mem::peak_rss_bytes(),
        })
    );
    Ok(())
}
