//! Golden trajectories from diffusers 0.42.1 (tools/golden/gen_schedulers.py), in
//! fixtures/golden/schedulers. Each case replays the generator's fake model
//! (`model_input · 0.9 + r[i] · 0.1 + t/1000 · 0.05`) with the stored per-step noise through
//! the sampler built by `from_config` from the case's config JSON, and compares the timesteps
//! exactly, the sigmas and every step's `prev_sample` elementwise.
use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use pixart_schedulers::{from_config, BetaConfig, BetaSchedule, Sampler, SamplerKind, Scheduler, SchedulerConfig};

/// Elementwise bound: |got − want| <= ATOL + RTOL·|want|.
///
/// DPM-Solver++, DDIM, SA-Solver and DDPM stay within ~1e-6 (a few f32 ulps: torch 2.15's CPU f32
/// `sqrt`/`** 0.5` is not always correctly rounded, Rust's is). Euler ancestral starts at
/// σ_max ≈ 157 (|x| up to ~300), so a 1-ulp difference in σ_up times the noise is ~2e-5 in
/// absolute terms; relative to the values it stays below 6e-6, hence the relative term.
const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-5;

fn fixtures_root() -> PathBuf {
    match std::env::var_os("PIXART_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"),
    }
}

fn dir() -> PathBuf {
    fixtures_root().join("golden/schedulers")
}

fn load(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join(file), &Device::Cpu).unwrap()
}

fn vec_f32(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Max |diff| / (1 + |want|); panics past the bound.
fn compare(name: &str, got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let (g, w) = (vec_f32(got), vec_f32(want));
    let mut worst = 0f32;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let d = (a - b).abs();
        assert!(
            d <= ATOL + RTOL * b.abs(),
            "{name}: |diff| {d:e} at flat index {i} (got {a}, want {b})"
        );
        worst = worst.max(d / (1.0 + b.abs()));
    }
    worst
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    file: String,
    config: String,
    kind: Option<String>,
    steps: usize,
    eta: f64,
}

fn fake_model(x: &Tensor, t: f64, r: &Tensor) -> Tensor {
    let a = x.affine(0.9, 0.0).unwrap();
    let b = r.affine(0.1, 0.0).unwrap();
    let c = (t / 1000.0 * 0.05) as f32;
    (a + b)
        .unwrap()
        .broadcast_add(&Tensor::new(c, x.device()).unwrap())
        .unwrap()
}

/// Runs one case; returns the worst scaled difference of the trajectory.
fn run_case(case: &Case) -> f32 {
    let f = load(&case.file);
    let cfg = SchedulerConfig::from_json(&case.config).unwrap();
    let kind = case.kind.as_deref().map(|k| k.parse::<SamplerKind>().unwrap());
    let mut s = from_config(&cfg, kind).unwrap();
    if let Sampler::Ddim(d) = &mut s {
        d.set_eta(case.eta).unwrap();
    }
    s.set_timesteps(case.steps).unwrap();
    let name = &case.name;

    let want_t: Vec<f64> = f["timesteps"].to_vec1().unwrap();
    assert_eq!(s.timesteps(), want_t.as_slice(), "{name}: timesteps");
    if let Some(want) = f.get("sigmas") {
        let got = Tensor::new(s.sigmas(), &Device::Cpu).unwrap();
        compare(&format!("{name}: sigmas"), &got, want);
    }
    let init: Vec<f32> = f["init_noise_sigma"].to_vec1().unwrap();
    assert!(
        (s.init_noise_sigma() as f32 - init[0]).abs() <= 1e-6 * init[0],
        "{name}: init_noise_sigma {} vs {}",
        s.init_noise_sigma(),
        init[0]
    );

    let mut x = f["x_T"].affine(s.init_noise_sigma(), 0.0).unwrap();
    let mut worst = 0f32;
    for i in 0..case.steps {
        let t = s.timesteps()[i];
        let inp = s.scale_model_input(&x, i).unwrap();
        worst = worst.max(compare(
            &format!("{name}: model_input[{i}]"),
            &inp,
            &f["model_input"].i(i).unwrap(),
        ));
        let mut out = fake_model(&inp, t, &f["r"].i(i).unwrap());
        if let Some(v) = f.get("variance") {
            // A learned variance: channels C..2C of the model output.
            assert!(s.model_variance(), "{name}: the sampler ignores the model's variance");
            out = Tensor::cat(&[out, v.i(i).unwrap()], 1).unwrap();
        }
        let noise = f["noise"].i(i).unwrap();
        let noise = s.needs_noise().then_some(&noise);
        x = s.step(&out, i, &x, noise).unwrap();
        worst = worst.max(compare(
            &format!("{name}: prev_sample[{i}] (t = {t})"),
            &x,
            &f["prev_sample"].i(i).unwrap(),
        ));
    }
    worst
}

fn cases(prefix: &str) -> Vec<Case> {
    // cases.json (diffusers) and cases_original.json (the original PixArt DPM-Solver,
    // tools/golden/gen_dpm_solver_original.py).
    let mut all: Vec<Case> = Vec::new();
    for file in ["cases.json", "cases_original.json"] {
        let text = std::fs::read_to_string(dir().join(file)).unwrap();
        all.extend(serde_json::from_str::<Vec<Case>>(&text).unwrap());
    }
    let v: Vec<Case> = all.into_iter().filter(|c| c.name.starts_with(prefix)).collect();
    assert!(!v.is_empty(), "no cases for {prefix}");
    v
}

fn run_prefix(prefix: &str) {
    for case in cases(prefix) {
        let worst = run_case(&case);
        eprintln!("{:<28} max |diff|/(1+|want|) = {worst:.3e}", case.name);
    }
}

#[test]
fn dpm_solver_pp_pixart() {
    run_prefix("dpmpp_pixart");
}

#[test]
fn dpm_solver_pp_spacing() {
    run_prefix("dpmpp_trailing");
    run_prefix("dpmpp_leading");
}

#[test]
fn dpm_solver_pp_karras() {
    run_prefix("dpmpp_karras");
}

#[test]
fn dpm_solver_pp_orders_and_solver_types() {
    run_prefix("dpmpp_order1");
    run_prefix("dpmpp_order3");
    run_prefix("dpmpp_heun");
}

#[test]
fn dpm_solver_pp_final_sigma() {
    run_prefix("dpmpp_sigma_min");
    run_prefix("dpmpp_euler_final");
}

#[test]
fn dpm_solver_pp_prediction_types_and_betas() {
    run_prefix("dpmpp_vpred_scaled");
    run_prefix("dpmpp_sample_cos");
    run_prefix("dpmpp_minimal");
}

#[test]
fn ddim() {
    run_prefix("ddim_");
}

#[test]
fn euler_ancestral() {
    run_prefix("euler_a");
}

#[test]
fn sa_solver() {
    run_prefix("sa_solver");
}

/// PixArt's IDDPM sampler: diffusers' DDPMScheduler with the learned-range variance on the
/// respaced timesteps (the generator checks that trajectory against the original equations).
#[test]
fn iddpm() {
    run_prefix("iddpm");
}

#[test]
fn ddpm() {
    run_prefix("ddpm_");
}

/// LCM on PixArt's schedule (1, 4, 14, 20, 25 steps) and an LCMScheduler file's options.
#[test]
fn lcm() {
    run_prefix("lcm_");
}

/// `dpm-solver`: the original PixArt repository's DPM-Solver run from its own source (model
/// input times, every step of the trajectory).
#[test]
fn dpm_solver_original() {
    run_prefix("dpm_solver_original");
}

#[test]
fn beta_schedules_match_diffusers() {
    for (beta, start, end) in [
        (BetaSchedule::Linear, 1e-4, 0.02),
        (BetaSchedule::ScaledLinear, 0.00085, 0.012),
        (BetaSchedule::SquaredcosCapV2, 1e-4, 0.02),
    ] {
        let name = match beta {
            BetaSchedule::Linear => "linear",
            BetaSchedule::ScaledLinear => "scaled_linear",
            BetaSchedule::SquaredcosCapV2 => "squaredcos_cap_v2",
        };
        let f = load(&format!("schedule_{name}.safetensors"));
        let cfg = BetaConfig {
            beta_start: start,
            beta_end: end,
            beta_schedule: beta,
            ..BetaConfig::default()
        };
        let betas: Vec<f32> = f["betas"].to_vec1().unwrap();
        let acp: Vec<f32> = f["alphas_cumprod"].to_vec1().unwrap();
        let got_b = cfg.betas().unwrap();
        let got_a = cfg.alphas_cumprod().unwrap();
        let nb = got_b.iter().zip(&betas).filter(|(a, b)| a != b).count();
        let na = got_a.iter().zip(&acp).filter(|(a, b)| a != b).count();
        let max_rel = got_a
            .iter()
            .zip(&acp)
            .map(|(a, b)| ((a - b) / b).abs())
            .fold(0f32, f32::max);
        eprintln!("{name}: {nb} betas and {na} alphas_cumprod differ in the last bit; max rel {max_rel:e}");
        assert!(max_rel <= 1e-6, "{name}: alphas_cumprod max rel diff {max_rel:e}");
        let max_b = got_b
            .iter()
            .zip(&betas)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_b <= 1e-9, "{name}: betas max diff {max_b:e}");
    }
}
