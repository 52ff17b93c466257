//! Golden tests against diffusers' AutoencoderKL (0.42.1), from fixtures/golden/vae
//! (tools/golden/gen_vae.py), plus tiled against untiled decoding and encoding.
use pixart_core::testing::{assert_close, max_abs_diff};
use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use pixart_vae::{load_vae, run_vae_decode, run_vae_encode, TileConfig, TileNorm, Tiling};

/// Absolute tolerance of every golden comparison (f32 model against the f32 reference).
const ATOL: f32 = 1e-5;

fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/golden/vae")
        .join(case)
}

/// io.safetensors of `case` (`small_legacy` shares `small`'s).
fn io(case: &str) -> HashMap<String, Tensor> {
    let case = case.trim_end_matches("_legacy");
    candle_core::safetensors::load(case_dir(case).join("io.safetensors"), &Device::Cpu).unwrap()
}

/// The tensors of `io` under `prefix.` with the prefix removed.
fn section(io: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    io.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(&format!("{prefix}."))
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect()
}

fn check_decode(case: &str) {
    let t = io(case);
    let dec = section(&t, "decode");
    let out = run_vae_decode(&case_dir(case), &dec, None).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_close(&format!("{case}/decode"), &out["sample"], &dec["sample"], ATOL);
}

fn check_encode(case: &str) {
    let t = io(case);
    let enc = section(&t, "encode");
    let out = run_vae_encode(&case_dir(case), &enc, None).unwrap_or_else(|e| panic!("{case}: {e}"));
    for k in ["latent_mean", "latent_std", "latent_sample"] {
        assert_close(&format!("{case}/encode/{k}"), &out[k], &enc[k], ATOL);
    }
}

#[test]
fn base_decode() {
    check_decode("base");
}

#[test]
fn base_encode() {
    check_encode("base");
}

#[test]
fn small_decode_and_encode() {
    check_decode("small");
    check_encode("small");
}

#[test]
fn legacy_attention_names() {
    check_decode("small_legacy");
    check_encode("small_legacy");
}

#[test]
fn plain_no_attention_no_quant_conv() {
    check_decode("plain");
    check_encode("plain");
}

#[test]
fn config_values() {
    let vae = load_vae(&case_dir("base"), DType::F32, &Device::Cpu).unwrap();
    let c = vae.config();
    assert_eq!(c.block_out_channels, vec![8, 8, 16, 16]);
    assert_eq!(vae.downsample_factor(), 8);
    assert!((c.scaling_factor - 0.13025).abs() < 1e-12);
    assert!(!c.force_upcast);
    assert_eq!(c.shift_factor, None);
    let z = Tensor::ones((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let back = vae.scale_latents(&vae.unscale_latents(&z).unwrap()).unwrap();
    assert_close("scale round trip", &back, &z, 1e-6);
}

/// A smooth, structured latent: low-frequency waves differing per channel, amplitude ~1.
fn smooth_latent(c: usize, h: usize, w: usize) -> Tensor {
    let mut v = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let (fy, fx) = (y as f32 / h as f32, x as f32 / w as f32);
                let k = ch as f32 + 1.0;
                v.push((6.0 * fy * k / 2.0 + ch as f32).sin() * (5.0 * fx + 0.7 * k).cos() + 0.3 * (fx - fy));
            }
        }
    }
    Tensor::from_vec(v, (1, c, h, w), &Device::Cpu).unwrap()
}

/// Tiled against untiled decoding of a smooth latent on `case`, with `tile`/`overlap`; returns
/// (max |diff|, mean |diff|, max |image|).
fn tiled_decode_diff(case: &str, n: usize, tile: usize, overlap: usize, norm: TileNorm) -> (f32, f32, f32) {
    let mut vae = load_vae(&case_dir(case), DType::F32, &Device::Cpu).unwrap();
    vae.set_tile_norm(norm);
    let z = smooth_latent(vae.config().latent_channels, n, n - n / 10);
    let full = vae.decode(&z, Tiling::Off).unwrap();
    let cfg = TileConfig {
        tile_latent: tile,
        overlap_latent: overlap,
    };
    let tiled = vae.decode(&z, Tiling::On(cfg)).unwrap();
    let d = max_abs_diff(&tiled, &full).0;
    let mean_d = (&tiled - &full)
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let range = full.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    eprintln!("{case} {n}x{} tile {tile} overlap {overlap} {norm:?}: max |diff| {d:.4}, mean |diff| {mean_d:.5}, max |image| {range:.3}", n - n / 10);
    (d, mean_d, range)
}

/// The tiles' results differ from the untiled decode where a tile's receptive field is cut
/// off and where the guide pass's GroupNorm statistics differ from the full image's, so this
/// is not exact. `base` (factor 8, mid-block attention): a 40×36 latent in 30-latent tiles
/// overlapping by 10 (2×2 tiles). Measured: max |diff| 0.37, mean 0.028 on an image of
/// max |value| 7.5 (per-tile statistics as diffusers: max 1.51, mean 0.147).
#[test]
fn tiled_decode_matches_untiled() {
    let (d, mean_d, _) = tiled_decode_diff("base", 40, 30, 10, TileNorm::Guide);
    assert!(
        d <= 0.5 && mean_d <= 0.04,
        "tiled decode differs: max {d}, mean {mean_d}"
    );
    let (d_local, mean_local, _) = tiled_decode_diff("base", 40, 30, 10, TileNorm::PerTile);
    assert!(
        mean_local > mean_d,
        "shared statistics should beat per-tile ones ({mean_local} vs {mean_d})"
    );
    assert!(d_local.is_finite());
}

/// `small` (factor 2, attention, 3 resnets per up block): an 80×72 latent in 40-latent tiles
/// overlapping by 10 (2×2 tiles). Measured: max |diff| 0.23, mean 0.020, max |image| 2.2.
#[test]
fn tiled_decode_matches_untiled_small() {
    let (d, mean_d, _) = tiled_decode_diff("small", 80, 40, 10, TileNorm::Guide);
    assert!(
        d <= 0.3 && mean_d <= 0.03,
        "tiled decode differs: max {d}, mean {mean_d}"
    );
}

/// A latent no larger than one tile decodes exactly as untiled.
#[test]
fn one_tile_is_exact() {
    let vae = load_vae(&case_dir("base"), DType::F32, &Device::Cpu).unwrap();
    let z = smooth_latent(4, 8, 6);
    let full = vae.decode(&z, Tiling::Off).unwrap();
    let tiled = vae
        .decode(
            &z,
            Tiling::On(TileConfig {
                tile_latent: 8,
                overlap_latent: 2,
            }),
        )
        .unwrap();
    assert_eq!(max_abs_diff(&tiled, &full).0, 0.0);
}

/// `base`: a 320×288 image (the decode of a smooth latent) in 240-px tiles overlapping by 80
/// (2×2 tiles). Measured: max |diff| 0.58 on the mean (whose values are ~±2), 0.46 on the std.
/// The encoder's down path sees high-frequency detail, which the nearest-downscaled guide pass
/// estimates statistics from less well than the decoder's.
#[test]
fn tiled_encode_matches_untiled() {
    let vae = load_vae(&case_dir("base"), DType::F32, &Device::Cpu).unwrap();
    let z = smooth_latent(4, 40, 36);
    let img = vae.decode(&z, Tiling::Off).unwrap().clamp(-1f32, 1f32).unwrap();
    let full = vae.encode(&img, Tiling::Off).unwrap();
    let cfg = TileConfig {
        tile_latent: 30,
        overlap_latent: 10,
    };
    let tiled = vae.encode(&img, Tiling::On(cfg)).unwrap();
    let d = max_abs_diff(&tiled.mean, &full.mean).0;
    let ds = max_abs_diff(&tiled.std, &full.std).0;
    eprintln!("tiled vs untiled encode: mean max |diff| {d:e}, std max |diff| {ds:e}");
    assert!(d <= TILED_ENCODE_BOUND && ds <= TILED_ENCODE_BOUND);
}

const TILED_ENCODE_BOUND: f32 = 0.8;
