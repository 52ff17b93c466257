//! AdamW and CAME against PyTorch (`torch.optim.AdamW`, `came_pytorch.CAME` 0.1.3): four
//! steps with fixed gradients on a matrix, a vector and a rank-4 tensor
//! (tools/golden/gen_optim.py); every step's parameters compared.
use std::collections::BTreeMap;

use candle_core::{Device, Var};
use pixart_core::testing::{fixtures_root, max_abs_diff};
use pixart_train::optim::{Grads, OptimizerConfig};

fn check(kind: &str, cfg: OptimizerConfig, tol: f32) {
    let g =
        candle_core::safetensors::load(fixtures_root().join("golden/train/optim.safetensors"), &Device::Cpu).unwrap();
    let names = ["w", "b", "conv"];
    let params: BTreeMap<String, Var> = names
        .iter()
        .map(|n| (n.to_string(), Var::from_tensor(&g[&format!("init.{n}")]).unwrap()))
        .collect();
    let mut opt = cfg.build(params.clone());
    for step in 0..4 {
        let grads: Grads = names
            .iter()
            .map(|n| (n.to_string(), g[&format!("grad.{step}.{n}")].clone()))
            .collect();
        opt.step(&grads, 1e-2).unwrap();
        for n in names {
            let (d, i) = max_abs_diff(params[n].as_tensor(), &g[&format!("{kind}.{step}.{n}")]);
            assert!(d < tol, "{kind} step {step} `{n}`[{i}] differs by {d}");
        }
    }
}

#[test]
fn adamw_matches_pytorch() {
    check(
        "adamw",
        OptimizerConfig::AdamW {
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.03,
        },
        2e-6,
    );
}

#[test]
fn came_matches_came_pytorch() {
    check(
        "came",
        OptimizerConfig::Came {
            betas: [0.9, 0.999, 0.9999],
            eps: [1e-30, 1e-16],
            weight_decay: 0.03,
        },
        2e-6,
    );
}

/// `[train] lr_schedule` against diffusers' schedules with warm-up (tools/golden/gen_lr_schedules.py):
/// the factor of each of 30 optimiser steps, 5 of them warm-up.
#[test]
fn lr_schedules_match_diffusers() {
    use pixart_train::optim::LrSchedule;
    let g = candle_core::safetensors::load(
        fixtures_root().join("golden/train/lr_schedules.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (name, s) in [
        ("constant", LrSchedule::Constant),
        ("cosine", LrSchedule::Cosine),
        ("linear", LrSchedule::Linear),
    ] {
        let want: Vec<f64> = g[name].to_vec1().unwrap();
        assert_eq!(want.len(), 30);
        for (step, w) in want.iter().enumerate() {
            let got = s.factor(step as u64, 5, 30);
            assert!((got - w).abs() < 1e-12, "{name} step {step}: {got} vs diffusers {w}");
        }
    }
}
