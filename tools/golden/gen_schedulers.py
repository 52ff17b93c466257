"""Golden files for pixart-schedulers, from diffusers' schedulers (diffusers 0.42.1, torch 2.15.0).

Drives DPMSolverMultistepScheduler, DDIMScheduler, EulerAncestralDiscreteScheduler and
SASolverScheduler with a deterministic fake model from a fixed initial latent (1x4x4x4), and
stores every step of the trajectory in fixtures/golden/schedulers/<case>_<steps>.safetensors:

  timesteps (n,) f64      the scheduler's timesteps after set_timesteps(n)
  sigmas (n+1,) f32       the scheduler's sigmas (not for DDIM)
  init_noise_sigma (1,)   f32
  x_T                     the initial latent before scaling by init_noise_sigma
  r (n, ...)              the fake model's per-step random part
  noise (n, ...)          the per-step noise handed to the scheduler (DDIM variance_noise; for
                          Euler-a and SA-Solver, the value their internal randn_tensor returns)
  model_input (n, ...)    scale_model_input(sample, t) at each step
  model_output (n, ...)   fake model output at each step
  prev_sample (n, ...)    step(...).prev_sample at each step

The fake model is  model_output = model_input * 0.9 + r[i] * 0.1 + (t / 1000 * 0.05)
(f32 tensor ops, the scalar added as an f32).  cases.json lists each case: the scheduler
config JSON (as diffusers writes it, e.g. `-Infinity`), the sampler kind to build from it
(null: the config's own class), the step count and DDIM's eta.  schedule_<beta>.safetensors
hold betas and alphas_cumprod for the three beta schedules.

Run with the reference venv:  /work/pyref/bin/python tools/golden/gen_schedulers.py
"""
import json
import os

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    SASolverScheduler,
)
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_mod
import diffusers.schedulers.scheduling_sasolver as sa_mod
from safetensors.torch import save_file

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden", "schedulers")
SHAPE = (1, 4, 4, 4)
STEPS = (14, 20, 25)

# PixArt-alpha/PixArt-Sigma-XL-2-1024-MS scheduler/scheduler_config.json
PIXART = {
    "_class_name": "DPMSolverMultistepScheduler",
    "_diffusers_version": "0.22.0.dev0",
    "algorithm_type": "dpmsolver++",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "dynamic_thresholding_ratio": 0.995,
    "euler_at_final": False,
    "lambda_min_clipped": -float("inf"),
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_type": "midpoint",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_karras_sigmas": False,
    "use_lu_lambdas": False,
    "variance_type": None,
}

CLASSES = {
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
    "DDIMScheduler": DDIMScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "SASolverScheduler": SASolverScheduler,
}
KIND_CLASS = {
    "dpm++": DPMSolverMultistepScheduler,
    "ddim": DDIMScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "sa-solver": SASolverScheduler,
}


def dpm(**over):
    return {**PIXART, **over}


# name -> (config json dict, kind override or None, python-side extra kwargs for from_config, eta)
CASES = {
    "dpmpp_pixart": (PIXART, None, {}, 0.0),
    "dpmpp_trailing": (dpm(timestep_spacing="trailing"), None, {}, 0.0),
    "dpmpp_leading": (dpm(timestep_spacing="leading", steps_offset=1), None, {}, 0.0),
    "dpmpp_karras": (dpm(use_karras_sigmas=True), None, {}, 0.0),
    "dpmpp_order1": (dpm(solver_order=1), None, {}, 0.0),
    "dpmpp_order3": (dpm(solver_order=3), None, {}, 0.0),
    "dpmpp_heun": (dpm(solver_type="heun"), None, {}, 0.0),
    "dpmpp_sigma_min": (dpm(final_sigmas_type="sigma_min", lower_order_final=False), None, {}, 0.0),
    "dpmpp_euler_final": (dpm(final_sigmas_type="sigma_min", euler_at_final=True), None, {}, 0.0),
    "dpmpp_vpred_scaled": (dpm(prediction_type="v_prediction", beta_schedule="scaled_linear",
                               beta_start=0.00085, beta_end=0.012), None, {}, 0.0),
    "dpmpp_sample_cos": (dpm(prediction_type="sample", beta_schedule="squaredcos_cap_v2"), None, {}, 0.0),
    # a minimal file: every missing key takes the class default
    "dpmpp_minimal": ({"_class_name": "DPMSolverMultistepScheduler"}, None, {}, 0.0),
    # DDIM / Euler-a / SA-Solver built from PixArt's DPM++ file, as the CLI's --sampler does.
    # pixart-schedulers turns clip_sample off for DDIM built from another class's file.
    "ddim_eta0": (PIXART, "ddim", {"clip_sample": False}, 0.0),
    "ddim_eta1": (PIXART, "ddim", {"clip_sample": False}, 1.0),
    "ddim_leading_eta05": ({"_class_name": "DDIMScheduler", "clip_sample": False, "set_alpha_to_one": False,
                            "steps_offset": 1, "timestep_spacing": "leading",
                            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
                           None, {}, 0.5),
    "euler_a": (PIXART, "euler-a", {}, 0.0),
    "euler_a_leading_vpred": ({"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "leading",
                               "steps_offset": 1, "prediction_type": "v_prediction"}, None, {}, 0.0),
    # PixArt's demo: SASolverScheduler.from_config(cfg, algorithm_type="data_prediction",
    # tau_func=lambda t: 1 if 200 <= t <= 800 else 0) (which is also the class default tau).
    "sa_solver": (PIXART, "sa-solver", {"algorithm_type": "data_prediction"}, 0.0),
    "sa_solver_karras": (dpm(use_karras_sigmas=True), "sa-solver", {"algorithm_type": "data_prediction"}, 0.0),
}


class NoiseFeed:
    """Stands in for diffusers' randn_tensor: hands out the stored per-step noise."""

    def __init__(self):
        self.queue = []

    def __call__(self, shape, generator=None, device=None, dtype=None, **kw):
        assert tuple(shape) == SHAPE, shape
        return self.queue.pop(0).to(dtype)


FEED = NoiseFeed()
euler_mod.randn_tensor = FEED
sa_mod.randn_tensor = FEED


def fake_model(x, t, r):
    return x * 0.9 + r * 0.1 + float(t) / 1000.0 * 0.05


def run(name, cfg, kind, extra, eta, n, seed):
    cls = KIND_CLASS[kind] if kind else CLASSES[cfg["_class_name"]]
    sched = cls.from_config(cfg, **extra)
    sched.set_timesteps(n)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(SHAPE, generator=g)
    r = torch.randn((n, *SHAPE), generator=g)
    noise = torch.randn((n, *SHAPE), generator=g)
    ins, outs, prevs = [], [], []
    init = sched.init_noise_sigma
    x = x_T * init
    for i, t in enumerate(sched.timesteps):
        inp = sched.scale_model_input(x, t)
        out = fake_model(inp, t, r[i])
        if isinstance(sched, DDIMScheduler):
            x = sched.step(out, t, x, eta=eta, variance_noise=noise[i] if eta > 0 else None).prev_sample
        else:
            FEED.queue = [noise[i]]
            x = sched.step(out, t, x).prev_sample
        ins.append(inp)
        outs.append(out)
        prevs.append(x)
    t = {
        "timesteps": sched.timesteps.to(torch.float64),
        "init_noise_sigma": torch.tensor([float(init)], dtype=torch.float32),
        "x_T": x_T,
        "r": r,
        "noise": noise,
        "model_input": torch.stack(ins),
        "model_output": torch.stack(outs),
        "prev_sample": torch.stack(prevs),
    }
    if hasattr(sched, "sigmas"):
        t["sigmas"] = sched.sigmas.to(torch.float32)
    fname = f"{name}_{n}.safetensors"
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, fname))
    return fname


def main():
    os.makedirs(OUT, exist_ok=True)
    manifest = []
    for ci, (name, (cfg, kind, extra, eta)) in enumerate(CASES.items()):
        for n in STEPS:
            fname = run(name, cfg, kind, extra, eta, n, seed=1000 * ci + n)
            manifest.append({
                "name": f"{name}_{n}",
                "file": fname,
                # json.dumps writes -Infinity like diffusers' to_json_string
                "config": json.dumps(cfg, sort_keys=True),
                "kind": kind,
                "steps": n,
                "eta": eta,
            })
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    for beta in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        kw = {"beta_start": 0.00085, "beta_end": 0.012} if beta == "scaled_linear" else {}
        s = DDIMScheduler(beta_schedule=beta, **kw)
        save_file({"betas": s.betas.contiguous(), "alphas_cumprod": s.alphas_cumprod.contiguous()},
                  os.path.join(OUT, f"schedule_{beta}.safetensors"))
    print(f"wrote {len(manifest)} trajectories to {OUT}")


if __name__ == "__main__":
    main()
