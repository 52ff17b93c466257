//! A T5 encoder with fresh random weights, written as a transformers `T5EncoderModel` folder
//! (`config.json` + `model.safetensors`): the frozen text encoder of a model trained from
//! scratch.
//!
//! The initialisation follows `T5PreTrainedModel._init_weights` in transformers 5.23.0
//! (`models/t5/modeling_t5.py`), with `factor = initializer_factor` (default 1):
//! - `shared.weight` ~ N(0, factor);
//! - attention: `q` ~ N(0, factor·(d_model·d_kv)^-½), `k`, `v` ~ N(0, factor·d_model^-½),
//!   `o` ~ N(0, factor·(num_heads·d_kv)^-½), `relative_attention_bias` ~ N(0, factor·d_model^-½);
//! - feed-forward: `wi` / `wi_0` / `wi_1` ~ N(0, factor·d_model^-½), `wo` ~ N(0, factor·d_ff^-½);
//! - every `T5LayerNorm` weight = factor.
//!
//! One departure is available, off by default: `relative_attention_bias_std` in the init config
//! draws the relative position bias from N(0, std²) instead. With transformers' std (0.09 for
//! d_model 128) attention starts nearly uniform, so a random encoder's outputs hardly depend on
//! word order: "a red circle on a blue background" and "a blue circle on a red background" give
//! the same set of token features to within 5 % of the distance between tokens, and the
//! transformer cannot tell object from background colour. With std 4 each head attends to a few
//! relative offsets and the two differ by 77 % (docs/builtin-model.md).
//!
//! The values are drawn from `rand`'s `StdRng` seeded with the seed, tensor after tensor in
//! the module order of transformers' state dict, so the same config and seed give the same
//! file. (They are not torch's numbers: only the distributions match.)
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use pixart_core::{Error, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::config::T5Config;

/// The `transformers_version` written to `config.json` (the version whose layout we match).
pub const TRANSFORMERS_VERSION: &str = "5.23.0";

/// How [`init_weights`] draws the weights (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InitOptions {
    /// transformers' `initializer_factor`.
    pub factor: f64,
    /// The std of the relative position bias, instead of `factor·d_model^-½`.
    pub relative_attention_bias_std: Option<f64>,
}

impl From<f64> for InitOptions {
    /// transformers' initialisation with this `initializer_factor`.
    fn from(factor: f64) -> Self {
        Self {
            factor,
            relative_attention_bias_std: None,
        }
    }
}

/// One tensor of the encoder and how it is initialised.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Name in transformers' `T5EncoderModel` state dict.
    pub name: String,
    pub shape: Vec<usize>,
    /// `Some(std)`: N(0, std²); `None`: the constant `factor` (layer norms).
    pub std: Option<f64>,
}

/// Every tensor of a `T5EncoderModel` for `config`, in the module order of transformers' state
/// dict (the tied `encoder.embed_tokens.weight` is left out, as transformers saves it), with
/// its initialisation (see the module docs).
pub fn param_specs(config: &T5Config, opts: &InitOptions) -> Result<Vec<ParamSpec>> {
    let factor = opts.factor;
    config.validate().map_err(Error::InvalidInput)?;
    let ff = config.feed_forward().map_err(Error::InvalidInput)?;
    let (d, kv, h, d_ff) = (config.d_model, config.d_kv, config.num_heads, config.d_ff);
    let inner = h * kv;
    let fd = d as f64;
    let normal = |name: String, shape: Vec<usize>, std: f64| ParamSpec {
        name,
        shape,
        std: Some(factor * std),
    };
    let norm = |name: String| ParamSpec {
        name,
        shape: vec![d],
        std: None,
    };
    let mut specs = vec![normal("shared.weight".into(), vec![config.vocab_size, d], 1.0)];
    for i in 0..config.num_layers {
        let att = format!("encoder.block.{i}.layer.0.SelfAttention");
        specs.push(normal(
            format!("{att}.q.weight"),
            vec![inner, d],
            (fd * kv as f64).powf(-0.5),
        ));
        specs.push(normal(format!("{att}.k.weight"), vec![inner, d], fd.powf(-0.5)));
        specs.push(normal(format!("{att}.v.weight"), vec![inner, d], fd.powf(-0.5)));
        specs.push(normal(
            format!("{att}.o.weight"),
            vec![d, inner],
            (inner as f64).powf(-0.5),
        ));
        if i == 0 {
            let name = format!("{att}.relative_attention_bias.weight");
            let shape = vec![config.relative_attention_num_buckets, h];
            specs.push(match opts.relative_attention_bias_std {
                Some(std) => ParamSpec {
                    name,
                    shape,
                    std: Some(std),
                },
                None => normal(name, shape, fd.powf(-0.5)),
            });
        }
        specs.push(norm(format!("encoder.block.{i}.layer.0.layer_norm.weight")));
        let ffn = format!("encoder.block.{i}.layer.1.DenseReluDense");
        let wi = if ff.gated { vec!["wi_0", "wi_1"] } else { vec!["wi"] };
        for w in wi {
            specs.push(normal(format!("{ffn}.{w}.weight"), vec![d_ff, d], fd.powf(-0.5)));
        }
        specs.push(normal(
            format!("{ffn}.wo.weight"),
            vec![d, d_ff],
            (d_ff as f64).powf(-0.5),
        ));
        specs.push(norm(format!("encoder.block.{i}.layer.1.layer_norm.weight")));
    }
    specs.push(norm("encoder.final_layer_norm.weight".into()));
    Ok(specs)
}

/// The encoder's weights for `config`, drawn from `seed` (see the module docs), as f32 CPU
/// tensors by name.
pub fn init_weights(config: &T5Config, opts: &InitOptions, seed: u64) -> Result<Vec<(String, Tensor)>> {
    let factor = opts.factor;
    if !(factor.is_finite() && factor > 0.0) {
        return Err(Error::InvalidInput(format!(
            "initializer_factor must be a positive number, got {factor}"
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    param_specs(config, opts)?
        .into_iter()
        .map(|p| {
            let n: usize = p.shape.iter().product();
            let values: Vec<f32> = match p.std {
                Some(std) => {
                    let dist = Normal::new(0f32, std as f32)
                        .map_err(|e| Error::InvalidInput(format!("{}: bad std {std}: {e}", p.name)))?;
                    (0..n).map(|_| dist.sample(&mut rng)).collect()
                }
                None => vec![factor as f32; n],
            };
            Ok((p.name, Tensor::from_vec(values, p.shape, &Device::Cpu)?))
        })
        .collect()
}

/// `config.json` as transformers 5.23.0 writes it for a `T5EncoderModel` with `config`
/// (`T5Config.to_dict` after `T5EncoderModel.save_pretrained`; checked in
/// tools/golden/gen_tokenizer.py).
pub fn transformers_config_json(config: &T5Config, factor: f64) -> Result<serde_json::Value> {
    let ff = config.feed_forward().map_err(Error::InvalidInput)?;
    let act = config
        .feed_forward_proj
        .strip_prefix("gated-")
        .unwrap_or(&config.feed_forward_proj);
    // transformers maps "gated-gelu" to gelu_new (T5Config.__init__).
    let dense_act_fn = if config.feed_forward_proj == "gated-gelu" {
        "gelu_new"
    } else {
        act
    };
    Ok(serde_json::json!({
        "architectures": ["T5EncoderModel"],
        "classifier_dropout": 0.0,
        "d_ff": config.d_ff,
        "d_kv": config.d_kv,
        "d_model": config.d_model,
        "dense_act_fn": dense_act_fn,
        "dropout_rate": 0.1,
        "dtype": "float32",
        "eos_token_id": 1,
        "feed_forward_proj": config.feed_forward_proj,
        "initializer_factor": factor,
        "is_decoder": false,
        "is_encoder_decoder": false,
        "is_gated_act": ff.gated,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "model_type": "t5",
        "num_decoder_layers": config.num_layers,
        "num_heads": config.num_heads,
        "num_layers": config.num_layers,
        "pad_token_id": 0,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "scale_decoder_outputs": false,
        "tie_word_embeddings": true,
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": false,
        "vocab_size": config.vocab_size,
    }))
}

#[derive(serde::Deserialize)]
struct Factor {
    #[serde(default = "one")]
    initializer_factor: f64,
    #[serde(default)]
    relative_attention_bias_std: Option<f64>,
}

fn one() -> f64 {
    1.0
}

/// Reads an encoder config file (a transformers `T5Config` JSON; missing keys take T5's
/// defaults), its `initializer_factor` (default 1) and the project's
/// `relative_attention_bias_std` (default: transformers' init).
pub fn read_init_config(path: &Path) -> Result<(T5Config, InitOptions)> {
    let config = T5Config::from_file(path)?;
    let f: Factor = pixart_core::config::read_json(path)?;
    if !(f.initializer_factor.is_finite() && f.initializer_factor > 0.0) {
        return Err(Error::config(
            path,
            format!("initializer_factor must be positive, got {}", f.initializer_factor),
        ));
    }
    if let Some(s) = f.relative_attention_bias_std.filter(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(Error::config(
            path,
            format!("relative_attention_bias_std must be positive, got {s}"),
        ));
    }
    Ok((
        config,
        InitOptions {
            factor: f.initializer_factor,
            relative_attention_bias_std: f.relative_attention_bias_std,
        },
    ))
}

/// Writes a `T5EncoderModel` folder to `out`: `config.json` and `model.safetensors` with
/// weights drawn from `seed` (each file atomically). Returns the two paths.
pub fn init_text_encoder(config: &T5Config, opts: &InitOptions, seed: u64, out: &Path) -> Result<[PathBuf; 2]> {
    let json = transformers_config_json(config, opts.factor)?;
    pixart_core::mem::check_fits(config.num_parameters() as u128 * 4, "the text encoder's f32 weights")
        .map_err(Error::InvalidInput)?;
    let weights: HashMap<String, Tensor> = init_weights(config, opts, seed)?.into_iter().collect();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let cfg_path = out.join("config.json");
    let w_path = out.join("model.safetensors");
    pixart_core::weights::save_safetensors(&weights, &w_path)?;
    pixart_core::config::write_json(&cfg_path, &json)?;
    Ok([cfg_path, w_path])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tiny() -> T5Config {
        T5Config {
            vocab_size: 40,
            d_model: 32,
            d_kv: 8,
            d_ff: 48,
            num_layers: 2,
            num_heads: 4,
            relative_attention_num_buckets: 8,
            relative_attention_max_distance: 16,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
        }
    }

    #[test]
    fn same_seed_same_weights_other_seed_differs() {
        let a = init_weights(&tiny(), &1.0.into(), 7).unwrap();
        let b = init_weights(&tiny(), &1.0.into(), 7).unwrap();
        let c = init_weights(&tiny(), &1.0.into(), 8).unwrap();
        for ((na, ta), ((nb, tb), (_, tc))) in a.iter().zip(b.iter().zip(&c)) {
            assert_eq!(na, nb);
            let (va, vb, vc) = (
                ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                tb.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                tc.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(va, vb, "{na}");
            if !na.ends_with("norm.weight") {
                assert_ne!(va, vc, "{na}");
            }
        }
    }

    #[test]
    fn stds_follow_transformers_init() {
        // Big enough tensors that the sample std is within a few percent of the target.
        let mut cfg = tiny();
        cfg.vocab_size = 512;
        cfg.d_model = 64;
        cfg.d_ff = 256;
        cfg.relative_attention_num_buckets = 32;
        let specs = param_specs(&cfg, &0.5.into()).unwrap();
        let weights = init_weights(&cfg, &0.5.into(), 3).unwrap();
        assert_eq!(specs.len(), weights.len());
        for (spec, (name, t)) in specs.iter().zip(&weights) {
            assert_eq!(&spec.name, name);
            assert_eq!(t.dims(), spec.shape.as_slice(), "{name}");
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let n = v.len() as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
            match spec.std {
                None => assert!(v.iter().all(|&x| x == 0.5), "{name}"),
                Some(want) => {
                    assert!((std / want - 1.0).abs() < 0.08, "{name}: std {std} vs {want}");
                    assert!(mean.abs() < 4.0 * want / n.sqrt() + 1e-9, "{name}: mean {mean}");
                }
            }
        }
        let q = specs
            .iter()
            .find(|s| s.name.ends_with("0.layer.0.SelfAttention.q.weight"))
            .unwrap();
        assert!((q.std.unwrap() - 0.5 / (64.0f64 * 8.0).sqrt()).abs() < 1e-12);
        let wo = specs
            .iter()
            .find(|s| s.name.ends_with("0.layer.1.DenseReluDense.wo.weight"))
            .unwrap();
        assert!((wo.std.unwrap() - 0.5 / 16.0).abs() < 1e-12);
        assert_eq!(specs[0].std, Some(0.5));
        let bias = |specs: &[ParamSpec]| {
            specs
                .iter()
                .find(|s| s.name.ends_with("relative_attention_bias.weight"))
                .unwrap()
                .std
        };
        assert_eq!(bias(&specs), Some(0.5 / 8.0));
        // The project's override changes that tensor only.
        let opts = InitOptions {
            factor: 0.5,
            relative_attention_bias_std: Some(4.0),
        };
        let other = param_specs(&cfg, &opts).unwrap();
        assert_eq!(bias(&other), Some(4.0));
        let differ = specs.iter().zip(&other).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 1);
    }

    #[test]
    fn init_config_reads_the_bias_std_and_refuses_a_bad_one() {
        let dir = std::env::temp_dir().join(format!("pixart-t5-init-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t5.json");
        std::fs::write(
            &p,
            r#"{"d_model": 32, "num_heads": 2, "d_kv": 16, "relative_attention_bias_std": 4.0}"#,
        )
        .unwrap();
        let (_, opts) = read_init_config(&p).unwrap();
        assert_eq!(
            opts,
            InitOptions {
                factor: 1.0,
                relative_attention_bias_std: Some(4.0)
            }
        );
        std::fs::write(&p, r#"{"d_model": 32, "relative_attention_bias_std": -1}"#).unwrap();
        let err = read_init_config(&p).unwrap_err().to_string();
        assert!(err.contains("relative_attention_bias_std"), "{err}");
    }

    #[test]
    fn written_folder_loads_with_every_tensor_used() {
        let dir = std::env::temp_dir().join(format!("pixart-init-t5-{}", std::process::id()));
        let [cfg, _] = init_text_encoder(&tiny(), &1.0.into(), 1, &dir).unwrap();
        assert_eq!(T5Config::from_file(&cfg).unwrap(), tiny());
        // CheckedWeights reports any missing, mis-shaped or unexpected tensor as an error.
        let enc = crate::load_text_encoder(&dir, candle_core::DType::F32, &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[3u32, 5, 1, 0]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 0]], &Device::Cpu).unwrap();
        let y = enc.forward(&ids, Some(&mask)).unwrap();
        assert_eq!(y.dims(), &[1, 4, 32]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn relu_config_has_a_single_wi() {
        let mut cfg = tiny();
        cfg.feed_forward_proj = "relu".into();
        let specs = param_specs(&cfg, &1.0.into()).unwrap();
        assert!(specs
            .iter()
            .any(|s| s.name == "encoder.block.1.layer.1.DenseReluDense.wi.weight"));
        assert!(!specs.iter().any(|s| s.name.contains("wi_0")));
        let json = transformers_config_json(&cfg, 1.0).unwrap();
        assert_eq!(json["dense_act_fn"], "relu");
        assert_eq!(json["is_gated_act"], false);
    }
}
