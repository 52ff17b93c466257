//! Training needs gradients at every parameter: the fast CPU kernels have no backward, so the
//! model must take composed ops whenever a tensor tracks gradients. This builds a tiny model
//! with KV compression from fresh PixArt-initialised `Var`s, backpropagates a loss through
//! one forward (with a caption mask) and checks every parameter received a non-zero gradient,
//! and checks the gradients themselves against PyTorch autograd (golden file).
use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use pixart_core::weights::{Recording, Shared};
use pixart_model::init::InitWeights;
use pixart_model::{KvCompressConfig, KvSampling, PixArtTransformer, TransformerConfig};

fn tiny_config() -> TransformerConfig {
    TransformerConfig {
        num_attention_heads: 2,
        attention_head_dim: 8,
        in_channels: 4,
        out_channels: Some(8),
        num_layers: 2,
        cross_attention_dim: Some(16),
        sample_size: 8,
        patch_size: 2,
        caption_channels: Some(12),
        interpolation_scale: Some(1.0),
        kv_compress: Some(KvCompressConfig {
            sampling: KvSampling::Conv,
            scale_factor: 2,
            layers: vec![1],
        }),
        ..TransformerConfig::default()
    }
}

fn init_tensors(cfg: &TransformerConfig) -> BTreeMap<String, Tensor> {
    let rec = Shared(Arc::new(Recording::new(InitWeights::new(3, false))));
    let vb = VarBuilder::from_backend(Box::new(rec.clone()), DType::F32, Device::Cpu);
    PixArtTransformer::new(cfg, vb).unwrap();
    rec.0.tensors()
}

#[test]
fn every_parameter_gets_a_gradient() {
    let cfg = tiny_config();
    let init = init_tensors(&cfg);
    assert!(init.contains_key("transformer_blocks.1.attn1.kv_compress.conv.weight"));
    let varmap = candle_nn::VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in &init {
            // Zero-initialised layers (proj_out, attn2.to_out) block gradients to everything
            // upstream in the first step; perturb them so the test sees every path.
            let t = if name.starts_with("proj_out.") || name.contains("attn2.to_out") {
                (t + Tensor::randn(0f32, 0.02, t.shape(), &Device::Cpu).unwrap()).unwrap()
            } else {
                t.clone()
            };
            data.insert(name.clone(), Var::from_tensor(&t).unwrap());
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let (model, report) = PixArtTransformer::new(&cfg, vb).unwrap();
    assert!(report.kv_averaging_init.is_empty(), "kv weights come from the var map");
    let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &Device::Cpu).unwrap();
    let t = Tensor::new(&[10f32, 900.0], &Device::Cpu).unwrap();
    let y = Tensor::randn(0f32, 1.0, (2, 5, 12), &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 0., 0.], [1., 1., 1., 1., 1.]], &Device::Cpu).unwrap();
    let out = model.forward(&x, &t, &y, Some(&mask)).unwrap();
    assert_eq!(out.dims(), &[2, 8, 8, 8]);
    let target = Tensor::randn(0f32, 1.0, out.shape(), &Device::Cpu).unwrap();
    let loss = (out - target).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    let mut missing = Vec::new();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        match grads.get(var.as_tensor()) {
            Some(g) => {
                let n = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                if n.is_nan() || n <= 0.0 {
                    missing.push(format!("{name} (zero)"));
                }
            }
            None => missing.push(format!("{name} (none)")),
        }
    }
    assert!(missing.is_empty(), "parameters without gradient: {missing:?}");
    assert_eq!(varmap.all_vars().len(), init.len());
}

#[test]
fn tracked_forward_matches_the_fast_forward() {
    // The composed (differentiable) path and the fused CPU kernels give the same output.
    let cfg = tiny_config();
    let init = init_tensors(&cfg);
    let plain = VarBuilder::from_tensors(init.clone().into_iter().collect(), DType::F32, &Device::Cpu);
    let (fast, _) = PixArtTransformer::new(&cfg, plain).unwrap();
    let varmap = candle_nn::VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in &init {
            let t = (t + Tensor::randn(0f32, 0.0, t.shape(), &Device::Cpu).unwrap()).unwrap();
            data.insert(name.clone(), Var::from_tensor(&t).unwrap());
        }
    }
    let (tracked, _) =
        PixArtTransformer::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &Device::Cpu).unwrap();
    let t = Tensor::new(&[10f32, 900.0], &Device::Cpu).unwrap();
    let y = Tensor::randn(0f32, 1.0, (2, 5, 12), &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 0., 0.], [1., 1., 1., 1., 1.]], &Device::Cpu).unwrap();
    let a = fast.forward(&x, &t, &y, Some(&mask)).unwrap();
    let b = tracked.forward(&x, &t, &y, Some(&mask)).unwrap();
    let (d, _) = pixart_core::testing::max_abs_diff(&a, &b);
    assert!(d < 1e-5, "fast vs differentiable forward differ by {d}");
}

#[test]
fn gradient_checkpointing_gives_the_same_gradients() {
    use pixart_model::GradSink;
    let cfg = tiny_config();
    let init = init_tensors(&cfg);
    let varmap = candle_nn::VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in &init {
            let t = (t + Tensor::randn(0f32, 0.02, t.shape(), &Device::Cpu).unwrap()).unwrap();
            data.insert(name.clone(), Var::from_tensor(&t).unwrap());
        }
    }
    let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &Device::Cpu).unwrap();
    let t = Tensor::new(&[10f32, 900.0], &Device::Cpu).unwrap();
    let y = Tensor::randn(0f32, 1.0, (2, 5, 12), &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 0., 0.], [1., 1., 1., 1., 1.]], &Device::Cpu).unwrap();
    let target = Tensor::randn(0f32, 1.0, (2, 8, 8, 8), &Device::Cpu).unwrap();
    let build = || {
        PixArtTransformer::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))
            .unwrap()
            .0
    };
    let loss_of = |m: &PixArtTransformer| {
        let out = m.forward(&x, &t, &y, Some(&mask)).unwrap();
        (out - &target).unwrap().sqr().unwrap().mean_all().unwrap()
    };
    let plain = loss_of(&build()).backward().unwrap();
    let vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let sink = Arc::new(GradSink::new(vars.iter().map(|(_, v)| v.clone()).collect()));
    let ck = build().with_gradient_checkpointing(sink.clone());
    let outer = loss_of(&ck).backward().unwrap();
    let mut inner = sink.take();
    for (name, v) in &vars {
        let a = plain.get(v.as_tensor()).unwrap();
        let mut b = outer.get(v.as_tensor()).cloned();
        if let Some(g) = inner.remove(&v.as_tensor().id()) {
            b = Some(match b {
                Some(o) => (o + g).unwrap(),
                None => g,
            });
        }
        let b = b.unwrap_or_else(|| panic!("{name}: no gradient with checkpointing"));
        let (d, _) = pixart_core::testing::max_abs_diff(a, &b);
        let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(
            d <= 1e-5 * scale.max(1e-3),
            "{name}: gradients differ by {d} (scale {scale})"
        );
    }
}

/// Every parameter's gradient equals PyTorch autograd's through diffusers'
/// PixArtTransformer2DModel (tools/golden/gen_transformer_grads.py: a tiny random model with no
/// zero weights, a padded caption mask, loss = mean((sample − target)²)).
#[test]
fn gradients_match_pytorch() {
    let path = pixart_core::testing::fixtures_root().join("golden/train/transformer_grads.safetensors");
    let golden = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let cfg = TransformerConfig {
        kv_compress: None,
        ..tiny_config()
    };
    let varmap = candle_nn::VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in &golden {
            if name.starts_with("grad.") || name.starts_with("in.") || name == "loss" {
                continue;
            }
            data.insert(name.clone(), Var::from_tensor(t).unwrap());
        }
    }
    let (model, _) = PixArtTransformer::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let g = |n: &str| golden[n].clone();
    let out = model
        .forward(&g("in.x"), &g("in.t"), &g("in.y"), Some(&g("in.mask")))
        .unwrap();
    let loss = (out - g("in.target")).unwrap().sqr().unwrap().mean_all().unwrap();
    let want = g("loss").to_vec1::<f32>().unwrap()[0];
    let got = loss.to_scalar::<f32>().unwrap();
    assert!((got - want).abs() <= 1e-4 * want.abs(), "loss {got} vs PyTorch {want}");
    let grads = loss.backward().unwrap();
    let mut bad = Vec::new();
    let data = varmap.data().lock().unwrap();
    assert_eq!(
        data.len() * 2 + 6,
        golden.len(),
        "every parameter of the golden model is loaded"
    );
    for (name, var) in data.iter() {
        let want = &golden[&format!("grad.{name}")];
        let Some(got) = grads.get(var.as_tensor()) else {
            bad.push(format!("{name}: no gradient"));
            continue;
        };
        let (d, _) = pixart_core::testing::max_abs_diff(got, want);
        let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        // Relative to the tensor's largest gradient; the key biases' true gradient is zero
        // (softmax ignores a shift shared by all keys), so f32 rounding (~1e-7) is all there is.
        if d > 2e-4 * scale + 1e-6 {
            bad.push(format!("{name}: max diff {d:.3e} (max |grad| {scale:.3e})"));
        }
    }
    assert!(bad.is_empty(), "gradients differ from PyTorch:\n{}", bad.join("\n"));
}
