//! The transformer benchmark: the full architecture with random weights (no files), timed
//! forwards at a given image size, batch and caption length.
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use pixart_core::weights::RandomWeights;
use pixart_core::Result;

use crate::config::TransformerConfig;
use crate::transformer::PixArtTransformer;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub config: TransformerConfig,
    /// Image size in pixels (latent = size / 8), square.
    pub size: usize,
    pub batch: usize,
    pub tokens: usize,
    pub dtype: DType,
    pub device: Device,
    pub warmup: usize,
    pub iters: usize,
    /// Time every stage of the timed forwards ([`crate::profile`]; synchronises the device
    /// around each stage, so the totals are a little slower).
    pub profile: bool,
}

/// Floating-point operations of one forward (multiply-add = 2), counting the linear layers,
/// the attention products and the caption projection; elementwise work is left out.
pub fn forward_flops(cfg: &TransformerConfig, batch: usize, latent_h: usize, latent_w: usize, tokens: usize) -> f64 {
    let p = cfg.patch_size;
    let (h, w) = (latent_h / p, latent_w / p);
    let n = (h * w) as f64;
    let c = cfg.inner_dim() as f64;
    let b = batch as f64;
    let l = tokens as f64;
    let cap = cfg.caption_channels.unwrap_or(cfg.inner_dim()) as f64;
    let mut total = 2.0 * b * l * (cap * c + c * c); // caption projection
    for i in 0..cfg.num_layers {
        let nk = match &cfg.kv_compress {
            Some(kv) if kv.applies_to(i) => ((h / kv.scale_factor) * (w / kv.scale_factor)) as f64,
            _ => n,
        };
        total += 2.0 * b * n * c * c * 4.0; // q, k, v, out of self-attention
        total += 2.0 * b * n * c * c * 2.0; // q, out of cross-attention
        total += 2.0 * b * l * c * c * 2.0; // k, v of cross-attention
        total += 2.0 * b * n * c * 4.0 * c * 2.0; // MLP
        total += 2.0 * 2.0 * b * n * nk * c; // self-attention scores and values
        total += 2.0 * 2.0 * b * n * l * c; // cross-attention scores and values
    }
    total += 2.0 * b * n * c * (p * p * cfg.out_channels()) as f64; // proj_out
    total
}

/// CPU time of all of this process's threads so far, in seconds (Linux:
/// `/proc/self/task/*/schedstat`; `None` elsewhere). On a machine shared with other jobs the
/// CPU time of a single-threaded run measures the work done, where wall time does not.
pub fn process_cpu_seconds() -> Option<f64> {
    let dir = std::fs::read_dir("/proc/self/task").ok()?;
    let ns: f64 = dir
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum();
    Some(ns / 1e9)
}

/// Timings of a benchmark run.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub seconds: Vec<f64>,
    /// CPU seconds (all threads) of each timed forward, when the OS reports them.
    pub cpu_seconds: Vec<f64>,
    /// Seconds until each timed forward call returned, before the device synchronisation: on a
    /// GPU the host's share (kernel launches, library calls); close to `seconds` means the GPU
    /// waited on the host (or something synchronised inside the forward).
    pub enqueue_seconds: Vec<f64>,
    pub flops: f64,
    pub build_seconds: f64,
    /// With `profile`: (stage, seconds per forward, calls per forward), in the order first run.
    pub profile: Vec<(&'static str, f64, f64)>,
}

/// [`RandomWeights`] that has the micro-condition embedders only when the config asks for them.
/// (`RandomWeights` has every tensor, so the model would find the probe and build PixArt-α's
/// resolution / aspect-ratio embedders, which PixArt-Σ does not have.)
struct RandomTransformerWeights {
    random: RandomWeights,
    micro_conditions: bool,
}

impl candle_nn::var_builder::SimpleBackend for RandomTransformerWeights {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.random.get(s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.random.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        name != crate::transformer::MICRO_COND_PROBE || self.micro_conditions
    }
}

/// The transformer of `config` with random weights (normal, std 0.02).
pub fn random_transformer(config: &TransformerConfig, dtype: DType, device: &Device) -> Result<PixArtTransformer> {
    let weights = RandomTransformerWeights {
        random: RandomWeights { std: 0.02 },
        micro_conditions: config.use_additional_conditions == Some(true),
    };
    let vb = VarBuilder::from_backend(Box::new(weights), dtype, device.clone());
    Ok(PixArtTransformer::new(config, vb)?.0)
}

/// A ControlNet adapter of `num_layers` block copies for `base`, with random weights (std
/// 0.02): for timing the ControlNet's cost.
pub fn random_controlnet(
    num_layers: usize,
    base: &TransformerConfig,
    dtype: DType,
    device: &Device,
) -> Result<crate::PixArtControlNetAdapter> {
    let vb = VarBuilder::from_backend(Box::new(RandomWeights { std: 0.02 }), dtype, device.clone());
    crate::PixArtControlNetAdapter::new(&crate::ControlNetConfig { num_layers }, base, vb)
}

/// Builds the model with random weights and times `iters` forwards after `warmup` ones.
/// `on_iter(i, seconds)` is called after every timed forward.
pub fn bench_transformer(spec: &BenchSpec, mut on_iter: impl FnMut(usize, f64)) -> Result<BenchResult> {
    let t0 = Instant::now();
    let model = random_transformer(&spec.config, spec.dtype, &spec.device)?;
    let build_seconds = t0.elapsed().as_secs_f64();
    let lat = spec.size / 8;
    let dev = &spec.device;
    let x = Tensor::randn(0f32, 1.0, (spec.batch, spec.config.in_channels, lat, lat), dev)?;
    let t = Tensor::from_vec(vec![500f32; spec.batch], spec.batch, dev)?;
    let cap = spec.config.caption_channels.unwrap_or(spec.config.inner_dim());
    let y = Tensor::randn(0f32, 1.0, (spec.batch, spec.tokens, cap), dev)?;
    let mask = Tensor::ones((spec.batch, spec.tokens), DType::F32, dev)?;
    let mut seconds = Vec::with_capacity(spec.iters);
    let mut cpu_seconds = Vec::with_capacity(spec.iters);
    let mut enqueue_seconds = Vec::with_capacity(spec.iters);
    for i in 0..spec.warmup + spec.iters {
        if i == spec.warmup && spec.profile {
            pixart_kernels::profile::take();
            pixart_kernels::profile::set_enabled(true);
        }
        dev.synchronize()?;
        let cpu0 = process_cpu_seconds();
        let start = Instant::now();
        let out = model.forward(&x, &t, &y, Some(&mask))?;
        let enqueued = start.elapsed().as_secs_f64();
        dev.synchronize()?;
        drop(out);
        let s = start.elapsed().as_secs_f64();
        if i >= spec.warmup {
            enqueue_seconds.push(enqueued);
            if let (Some(a), Some(b)) = (cpu0, process_cpu_seconds()) {
                cpu_seconds.push(b - a);
            }
            seconds.push(s);
            on_iter(i - spec.warmup, s);
        }
    }
    let mut profile = Vec::new();
    if spec.profile {
        pixart_kernels::profile::set_enabled(false);
        let n = spec.iters as f64;
        profile = pixart_kernels::profile::take()
            .into_iter()
            .map(|(label, s, calls)| (label, s / n, calls as f64 / n))
            .collect();
    }
    Ok(BenchResult {
        seconds,
        cpu_seconds,
        enqueue_seconds,
        flops: forward_flops(&spec.config, spec.batch, lat, lat, spec.tokens),
        build_seconds,
        profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KvCompressConfig, KvSampling};

    #[test]
    fn profile_counts_every_stage_of_every_block() {
        // Profiling is process-wide: one profiling test of this binary at a time.
        static TEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _serial = TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // 3 layers of width 12, KV compression in the middle one.
        let config = TransformerConfig {
            num_attention_heads: 1,
            attention_head_dim: 12,
            num_layers: 3,
            cross_attention_dim: Some(12),
            sample_size: 8,
            caption_channels: Some(6),
            interpolation_scale: Some(1.0),
            kv_compress: Some(KvCompressConfig {
                sampling: KvSampling::Conv,
                scale_factor: 2,
                layers: vec![1],
            }),
            ..TransformerConfig::default()
        };
        let spec = BenchSpec {
            config,
            size: 64,
            batch: 2,
            tokens: 5,
            dtype: DType::F32,
            device: Device::Cpu,
            warmup: 1,
            iters: 2,
            profile: true,
        };
        // Σ's architecture: no micro-condition embedders (RandomWeights alone would add them).
        assert!(!random_transformer(&spec.config, DType::F32, &Device::Cpu)
            .unwrap()
            .has_micro_conditions());
        let res = bench_transformer(&spec, |_, _| {}).unwrap();
        let calls = |label: &str| {
            res.profile
                .iter()
                .find(|(l, ..)| *l == label)
                .map(|r| r.2)
                .unwrap_or_else(|| panic!("no stage {label:?} in {:?}", res.profile))
        };
        // Per forward: once per model, once or twice per block, kv compression in layer 1 only.
        for (label, n) in [
            ("caption context", 1.0),
            ("patch embedding", 1.0),
            ("timestep embedding", 1.0),
            ("self-attn q, k, v", 3.0),
            ("self-attn kv compression", 1.0),
            ("self-attn core", 3.0),
            ("cross-attn core", 3.0),
            ("norm + modulate", 6.0),
            ("self-attn out + residual", 3.0),
            ("cross-attn out + residual", 3.0),
            ("mlp down + residual", 3.0),
            ("mlp up + gelu", 3.0),
            ("final layer", 2.0),
        ] {
            assert_eq!(calls(label), n, "{label}");
        }
        let staged: f64 = res.profile.iter().map(|r| r.1).sum();
        let mean = res.seconds.iter().sum::<f64>() / res.seconds.len() as f64;
        assert!(
            staged > 0.0 && staged <= mean * 1.001,
            "stages {staged} s of a {mean} s forward"
        );
        // Profiling is off again afterwards.
        pixart_kernels::profile::stage("after", &Device::Cpu, || Ok::<_, candle_core::Error>(())).unwrap();
        assert!(pixart_kernels::profile::take().is_empty());
    }
}
