"""Golden files for pixart-schedulers, from diffusers' schedulers (diffusers 0.42.1, torch 2.15.0).

Drives DPMSolverMultistepScheduler, DDIMScheduler, EulerAncestralDiscreteScheduler,
SASolverScheduler, DDPMScheduler (also as PixArt's IDDPM sampler) and LCMScheduler with a deterministic fake model from a fixed initial latent (1x4x4x4), and
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
  variance (n, ...)       for a learned variance (DDPM `learned`/`learned_range`, IDDPM): the
                          model's extra channels, handed to step() as channels C..2C

The fake model is  model_output = model_input * 0.9 + r[i] * 0.1 + (t / 1000 * 0.05)
(f32 tensor ops, the scalar added as an f32); its variance channels are tanh(r_v[i]) for
`learned_range` (the [-1, 1] range of a learned-sigma model) and 0.01 + 0.05·sigmoid(r_v[i]) for
`learned` (a variance itself).  cases.json lists each case: the scheduler
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
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    LCMScheduler,
    SASolverScheduler,
)
import diffusers.schedulers.scheduling_ddpm as ddpm_mod
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_mod
import diffusers.schedulers.scheduling_lcm as lcm_mod
import numpy as np
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
    "DDPMScheduler": DDPMScheduler,
    "LCMScheduler": LCMScheduler,
}
KIND_CLASS = {
    "dpm++": DPMSolverMultistepScheduler,
    "ddim": DDIMScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "sa-solver": SASolverScheduler,
    "ddpm": DDPMScheduler,
    "iddpm": DDPMScheduler,
    "lcm": LCMScheduler,
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
    # PixArt's IDDPM sampler (scripts/inference.py --sampling_algo iddpm): DDPMScheduler with the
    # learned-range variance, no clipping, on the respaced timesteps (see iddpm_timesteps); also
    # checked against an f64 transcription of the original equations (iddpm_reference).
    "iddpm": (PIXART, "iddpm", {"variance_type": "learned_range", "clip_sample": False}, 0.0),
    # `--sampler ddpm` on PixArt's file: the fixed posterior variance, no clipping.
    "ddpm_pixart": (PIXART, "ddpm", {"variance_type": "fixed_small", "clip_sample": False}, 0.0),
    # DDPMScheduler files: class defaults (clip_sample on, leading), and the other variance types.
    "ddpm_default": ({"_class_name": "DDPMScheduler"}, None, {}, 0.0),
    "ddpm_large_trailing_vpred": ({"_class_name": "DDPMScheduler", "variance_type": "fixed_large",
                                   "timestep_spacing": "trailing", "prediction_type": "v_prediction",
                                   "clip_sample": False}, None, {}, 0.0),
    "ddpm_smalllog_linspace_x0": ({"_class_name": "DDPMScheduler", "variance_type": "fixed_small_log",
                                   "timestep_spacing": "linspace", "prediction_type": "sample",
                                   "beta_schedule": "squaredcos_cap_v2", "clip_sample": False}, None, {}, 0.0),
    "ddpm_learned_offset": ({"_class_name": "DDPMScheduler", "variance_type": "learned", "steps_offset": 1,
                             "clip_sample_range": 2.0}, None, {}, 0.0),
    "ddpm_learned_range": ({"_class_name": "DDPMScheduler", "variance_type": "learned_range",
                            "timestep_spacing": "linspace", "clip_sample": False}, None, {}, 0.0),
    # LCM (PixArt-LCM's sampler, usually 4 steps) on PixArt's training schedule, and an
    # LCMScheduler file with its other options.
    "lcm_pixart": (PIXART, "lcm", {}, 0.0),
    "lcm_own_vpred": ({"_class_name": "LCMScheduler", "original_inference_steps": 25, "prediction_type": "v_prediction",
                       "timestep_scaling": 5.0, "clip_sample": True, "clip_sample_range": 2.0}, None, {}, 0.0),
}
# Extra step counts per case (IDDPM's default in PixArt's scripts/inference.py is 100; LCM's 4).
EXTRA_STEPS = {"iddpm": (100,), "lcm_pixart": (1, 4)}


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
ddpm_mod.randn_tensor = FEED
lcm_mod.randn_tensor = FEED


def iddpm_timesteps(num_timesteps, n):
    """IDDPM's timestep respacing with one section of n steps (PixArt-alpha/PixArt-sigma@1ce521a,
    diffusion/model/respace.py `space_timesteps(T, "n")`), descending: the fractional stride
    (T-1)/(n-1) accumulated by addition, each value rounded as Python's round()."""
    stride = 1 if n <= 1 else (num_timesteps - 1) / (n - 1)
    kept, cur = set(), 0.0
    for _ in range(n):
        kept.add(round(cur))
        cur += stride
    return sorted(kept, reverse=True)


def iddpm_reference(x_T, r, rv, noise, kept):
    """The original IDDPM sampling loop in float64 numpy, transcribed from the equations of
    PixArt-alpha/PixArt-sigma@1ce521a diffusion/model/respace.py (SpacedDiffusion's respaced
    betas) and gaussian_diffusion.py (posterior coefficients, learned-range log variance between
    the clipped posterior log variance and log beta, p_sample with no noise at t = 0), with the
    fake model of this file. Returns the trajectory."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    acp_train = np.cumprod(1.0 - betas)
    asc = sorted(kept)
    new_betas, last = [], 1.0
    for t in asc:
        new_betas.append(1.0 - acp_train[t] / last)
        last = acp_train[t]
    b = np.array(new_betas)
    alphas = 1.0 - b
    acp = np.cumprod(alphas)
    acp_prev = np.append(1.0, acp[:-1])
    post_var = b * (1.0 - acp_prev) / (1.0 - acp)
    post_log_var = np.log(np.append(post_var[1], post_var[1:])) if len(b) > 1 else np.log(np.maximum(post_var, 1e-20))
    coef1 = b * np.sqrt(acp_prev) / (1.0 - acp)
    coef2 = (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp)
    x = x_T.double().numpy()
    traj = []
    for k, i in enumerate(range(len(asc) - 1, -1, -1)):
        t = asc[i]
        eps = x * 0.9 + r[k].double().numpy() * 0.1 + t / 1000.0 * 0.05
        v = np.tanh(rv[k].double().numpy())
        frac = (v + 1.0) / 2.0
        log_var = frac * np.log(b[i]) + (1.0 - frac) * post_log_var[i]
        x0 = np.sqrt(1.0 / acp[i]) * x - np.sqrt(1.0 / acp[i] - 1.0) * eps
        mean = coef1[i] * x0 + coef2[i] * x
        x = mean + (0.0 if i == 0 else 1.0) * np.exp(0.5 * log_var) * noise[k].double().numpy()
        traj.append(x)
    return np.stack(traj)


def fake_model(x, t, r):
    return x * 0.9 + r * 0.1 + float(t) / 1000.0 * 0.05


def run(name, cfg, kind, extra, eta, n, seed):
    cls = KIND_CLASS[kind] if kind else CLASSES[cfg["_class_name"]]
    sched = cls.from_config(cfg, **extra)
    if kind == "iddpm":
        sched.set_timesteps(timesteps=iddpm_timesteps(sched.config.num_train_timesteps, n))
    else:
        sched.set_timesteps(n)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(SHAPE, generator=g)
    r = torch.randn((n, *SHAPE), generator=g)
    noise = torch.randn((n, *SHAPE), generator=g)
    learned = isinstance(sched, DDPMScheduler) and sched.config.variance_type in ("learned", "learned_range")
    rv = torch.randn((n, *SHAPE), generator=g) if learned else None
    ins, outs, prevs, variances = [], [], [], []
    init = sched.init_noise_sigma
    x = x_T * init
    for i, t in enumerate(sched.timesteps):
        inp = sched.scale_model_input(x, t)
        out = fake_model(inp, t, r[i])
        if learned:
            if sched.config.variance_type == "learned_range":
                v = torch.tanh(rv[i])
            else:
                v = 0.01 + 0.05 * torch.sigmoid(rv[i])
            variances.append(v)
            FEED.queue = [noise[i]]
            x = sched.step(torch.cat([out, v], dim=1), t, x).prev_sample
        elif isinstance(sched, DDIMScheduler):
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
    if learned:
        t["variance"] = torch.stack(variances)
    if kind == "iddpm":
        want = iddpm_reference(x_T, r, rv, noise, [int(v) for v in sched.timesteps])
        diff = np.abs(want - t["prev_sample"].double().numpy()).max()
        assert diff < 1e-4, f"{name}_{n}: diffusers' DDPMScheduler is {diff:.2e} from the original IDDPM"
        print(f"{name}_{n}: DDPMScheduler (learned_range, respaced) vs the original IDDPM equations: {diff:.1e}")
    fname = f"{name}_{n}.safetensors"
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, fname))
    return fname


def main():
    os.makedirs(OUT, exist_ok=True)
    manifest = []
    for ci, (name, (cfg, kind, extra, eta)) in enumerate(CASES.items()):
        for n in STEPS + EXTRA_STEPS.get(name, ()):
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
