//! Clear one-line errors for bad steps, configs, sampler names and call sequences.
use candle_core::{Device, Tensor};
use pixart_schedulers::{from_config, Sampler, SamplerKind, Scheduler, SchedulerConfig};

fn one_line(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "multi-line error: {s}");
    s
}

fn all_samplers() -> Vec<Sampler> {
    let cfg = SchedulerConfig::pixart_sigma();
    SamplerKind::ALL
        .into_iter()
        .map(|k| from_config(&cfg, Some(k)).unwrap())
        .collect()
}

#[test]
fn zero_and_too_many_steps() {
    for mut s in all_samplers() {
        let e = one_line(s.set_timesteps(0).unwrap_err());
        assert!(e.contains("at least 1"), "{}: {e}", s.kind());
        let e = one_line(s.set_timesteps(1001).unwrap_err());
        assert!(e.contains("1001") && e.contains("1000"), "{}: {e}", s.kind());
        if s.kind() == SamplerKind::Lcm {
            // LCM picks from its 50-step distillation schedule.
            let e = one_line(s.set_timesteps(51).unwrap_err());
            assert!(e.contains("51") && e.contains("50"), "{e}");
            s.set_timesteps(50).unwrap();
            assert_eq!(s.timesteps().len(), 50);
            continue;
        }
        s.set_timesteps(1000).unwrap();
        assert_eq!(s.timesteps().len(), 1000, "{}", s.kind());
    }
}

#[test]
fn unknown_sampler_name() {
    let e = one_line("heun".parse::<SamplerKind>().unwrap_err());
    assert!(
        e.contains("\"heun\"") && e.contains("dpm++, sa-solver, ddim, euler-a, iddpm, ddpm"),
        "{e}"
    );
    for k in SamplerKind::ALL {
        assert_eq!(k.name().parse::<SamplerKind>().unwrap(), k);
    }
}

#[test]
fn non_finite_config_values() {
    for text in [
        r#"{"_class_name": "DPMSolverMultistepScheduler", "beta_start": NaN}"#,
        r#"{"_class_name": "DPMSolverMultistepScheduler", "beta_end": Infinity}"#,
        r#"{"_class_name": "DPMSolverMultistepScheduler", "beta_end": -Infinity}"#,
        r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": NaN}"#,
    ] {
        let e = one_line(SchedulerConfig::from_json(text).unwrap_err());
        assert!(e.contains("finite") || e.contains("-Infinity"), "{e}");
    }
    // Also when a config is built in code rather than read.
    let mut cfg = SchedulerConfig::pixart_sigma();
    cfg.beta_end = Some(f64::NAN);
    let e = one_line(from_config(&cfg, None).unwrap_err());
    assert!(e.contains("beta_end"), "{e}");
}

#[test]
fn config_file_errors_name_the_file() {
    let dir = std::env::temp_dir().join(format!("pixart-sched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("scheduler_config.json");
    std::fs::write(
        &p,
        r#"{"_class_name": "DPMSolverMultistepScheduler", "solver_type": "rk4"}"#,
    )
    .unwrap();
    let e = one_line(SchedulerConfig::from_file(&p).unwrap_err());
    assert!(e.contains("scheduler_config.json") && e.contains("solver_type"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unsupported_class_and_options() {
    let cfg = SchedulerConfig::from_json(r#"{"_class_name": "UniPCMultistepScheduler"}"#).unwrap();
    let e = one_line(from_config(&cfg, None).unwrap_err());
    assert!(e.contains("UniPCMultistepScheduler"), "{e}");
    assert_eq!(
        from_config(&cfg, Some(SamplerKind::Ddim)).unwrap().kind(),
        SamplerKind::Ddim
    );
    let cfg =
        SchedulerConfig::from_json(r#"{"_class_name": "DPMSolverMultistepScheduler", "solver_order": 4}"#).unwrap();
    let e = one_line(from_config(&cfg, None).unwrap_err());
    assert!(e.contains("solver_order"), "{e}");
    let cfg =
        SchedulerConfig::from_json(r#"{"_class_name": "DPMSolverMultistepScheduler", "thresholding": true}"#).unwrap();
    assert!(one_line(from_config(&cfg, None).unwrap_err()).contains("thresholding"));
    let cfg = SchedulerConfig::from_json(r#"{"_class_name": "DPMSolverMultistepScheduler", "beta_end": 1.5}"#).unwrap();
    assert!(one_line(from_config(&cfg, None).unwrap_err()).contains("[0, 1)"));
    // DDPM files: their variance type is read, the diffusers NaN one refused.
    let cfg =
        SchedulerConfig::from_json(r#"{"_class_name": "DDPMScheduler", "variance_type": "fixed_large_log"}"#).unwrap();
    assert!(one_line(from_config(&cfg, None).unwrap_err()).contains("fixed_large_log"));
    let cfg =
        SchedulerConfig::from_json(r#"{"_class_name": "DDPMScheduler", "variance_type": "learned_range"}"#).unwrap();
    let s = from_config(&cfg, None).unwrap();
    assert_eq!(s.kind(), SamplerKind::Ddpm);
    assert!(s.model_variance());
    // ... but a DPM-Solver++ file's variance type is not DDPM's business.
    let cfg = SchedulerConfig::from_json(r#"{"_class_name": "DDPMScheduler", "thresholding": true}"#).unwrap();
    assert!(one_line(from_config(&cfg, Some(SamplerKind::Iddpm)).unwrap_err()).contains("thresholding"));
}

#[test]
fn step_sequence_and_noise_errors() {
    let x = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    for mut s in all_samplers() {
        // Samplers that take the model's variance get the 2·C channels of a learned-sigma model.
        let c = if s.model_variance() { 8 } else { 4 };
        let out = Tensor::zeros((1, c, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = one_line(s.step(&out, 0, &x, Some(&x)).unwrap_err());
        assert!(e.contains("set_timesteps"), "{}: {e}", s.kind());
        s.set_timesteps(10).unwrap();
        let e = one_line(s.step(&out, 10, &x, Some(&x)).unwrap_err());
        assert!(e.contains("out of range"), "{}: {e}", s.kind());
        s.step(&out, 0, &x, Some(&x)).unwrap();
        let e = one_line(s.step(&out, 2, &x, Some(&x)).unwrap_err());
        assert!(e.contains("in order"), "{}: {e}", s.kind());
        let bad = Tensor::zeros((1, c, 2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = one_line(s.step(&bad, 1, &x, Some(&x)).unwrap_err());
        assert!(e.contains("shape"), "{}: {e}", s.kind());
        if s.model_variance() {
            // Without the variance channels (a model with fixed sigma).
            let e = one_line(s.step(&x, 1, &x, Some(&x)).unwrap_err());
            assert!(e.contains("variance channels") && e.contains("8"), "{}: {e}", s.kind());
        }
    }
    let mut s = from_config(&SchedulerConfig::pixart_sigma(), Some(SamplerKind::Iddpm)).unwrap();
    assert_eq!(s.kind(), SamplerKind::Iddpm);
    assert!(s.needs_noise() && s.model_variance());
    s.set_timesteps(10).unwrap();
    let out = Tensor::zeros((1, 8, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(one_line(s.step(&out, 0, &x, None).unwrap_err()).contains("noise"));
    let ddpm = from_config(&SchedulerConfig::pixart_sigma(), Some(SamplerKind::Ddpm)).unwrap();
    assert_eq!(ddpm.kind(), SamplerKind::Ddpm);
    assert!(ddpm.needs_noise() && !ddpm.model_variance());
    let mut s = from_config(&SchedulerConfig::pixart_sigma(), Some(SamplerKind::EulerAncestral)).unwrap();
    s.set_timesteps(10).unwrap();
    assert!(s.needs_noise());
    let e = one_line(s.step(&x, 0, &x, None).unwrap_err());
    assert!(e.contains("noise"), "{e}");
    let mut s = from_config(&SchedulerConfig::pixart_sigma(), Some(SamplerKind::Ddim)).unwrap();
    assert!(!s.needs_noise());
    if let Sampler::Ddim(d) = &mut s {
        assert!(d.set_eta(-1.0).is_err());
        d.set_eta(1.0).unwrap();
    }
    assert!(s.needs_noise());
    s.set_timesteps(10).unwrap();
    assert!(one_line(s.step(&x, 0, &x, None).unwrap_err()).contains("noise"));
}

#[test]
fn pixart_defaults_and_add_noise() {
    let mut s = from_config(&SchedulerConfig::pixart_sigma(), None).unwrap();
    assert_eq!(s.kind(), SamplerKind::DpmSolverPp);
    s.set_timesteps(20).unwrap();
    assert_eq!(s.timesteps()[10], 500.0);
    assert_eq!(s.sigmas().last(), Some(&0.0));
    assert_eq!(s.init_noise_sigma(), 1.0);
    let x0 = Tensor::ones((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let n = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    // Zero noise: √ᾱ_t · x0 at t = 999 (ᾱ_999 ≈ 4.04e-5 for PixArt's betas).
    let v: Vec<f32> = s
        .add_noise(&x0, &n, 0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!((v[0] - 4.035e-5f32.sqrt()).abs() < 1e-4, "{v:?}");
}
