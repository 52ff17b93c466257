"""Golden trajectories for the `dpm-solver` sampler: the original PixArt repository's DPM-Solver,
run from a checkout of PixArt-alpha/PixArt-sigma (commit 1ce521a; only its standalone
`diffusion/model/dpm_solver.py`, which needs torch and tqdm, is loaded) exactly as its
`scripts/inference.py --sampling_algo dpm-solver` sets it up (`diffusion/dpm_solver.py` DPMS):
NoiseScheduleVP("discrete") on the linear betas (numpy f64, as `gd.get_named_beta_schedule`),
`model_wrapper(model_type="noise")`, `DPM_Solver(algorithm_type="dpmsolver++")`,
`.sample(order=2, skip_type="time_uniform", method="multistep")`. Guidance is left to the
caller here (`guidance_type="uncond"`): the fake model of gen_schedulers.py stands in for
PixArt's guided ε.

Writes fixtures/golden/schedulers/dpm_solver_original_<steps>.safetensors in the format of
gen_schedulers.py (timesteps = the model's input times) and cases_original.json.

    python tools/golden/gen_dpm_solver_original.py --pixart-repo /path/to/PixArt-sigma
"""
import argparse
import importlib.util
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

from gen_schedulers import OUT, PIXART, SHAPE

torch.set_num_threads(1)


def load_original(repo):
    path = os.path.join(repo, "diffusion", "model", "dpm_solver.py")
    spec = importlib.util.spec_from_file_location("pixart_dpm_solver", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(mod, n, seed):
    betas = torch.tensor(np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    ns = mod.NoiseScheduleVP(schedule="discrete", betas=betas)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(SHAPE, generator=g)
    r = torch.randn((n, *SHAPE), generator=g)
    inputs, times, outputs = [], [], []

    def model(x, t_input):
        k = len(inputs)
        t = t_input.reshape(-1)[0]
        out = x * 0.9 + r[k] * 0.1 + t / 1000.0 * 0.05
        inputs.append(x.clone())
        times.append(float(t))
        outputs.append(out)
        return out

    fn = mod.model_wrapper(model, ns, model_type="noise", guidance_type="uncond")
    solver = mod.DPM_Solver(fn, ns, algorithm_type="dpmsolver++")
    _, traj = solver.sample(x_T.clone(), steps=n, order=2, skip_type="time_uniform", method="multistep",
                            return_intermediate=True)
    assert len(inputs) == n, (len(inputs), n)
    return {
        "timesteps": torch.tensor(times, dtype=torch.float64),
        "init_noise_sigma": torch.tensor([1.0]),
        "x_T": x_T,
        "r": r,
        "noise": torch.zeros((n, *SHAPE)),
        "model_input": torch.stack(inputs),
        "model_output": torch.stack(outputs),
        "prev_sample": torch.stack(traj[1:]),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pixart-repo", default=os.environ.get("PIXART_SIGMA_REPO"), required=False)
    a = ap.parse_args()
    if not a.pixart_repo:
        raise SystemExit("pass --pixart-repo (a checkout of PixArt-alpha/PixArt-sigma at 1ce521a)")
    mod = load_original(a.pixart_repo)
    manifest = []
    for n in (2, 5, 14, 20, 25):
        t = run(mod, n, seed=9000 + n)
        fname = f"dpm_solver_original_{n}.safetensors"
        save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, fname))
        manifest.append({"name": f"dpm_solver_original_{n}", "file": fname,
                         "config": json.dumps(PIXART, sort_keys=True), "kind": "dpm-solver", "steps": n, "eta": 0.0})
        print(f"dpm_solver_original_{n}: timesteps {t['timesteps'][:3].tolist()} ... |x_0| max {t['prev_sample'][-1].abs().max():.3f}")
    with open(os.path.join(OUT, "cases_original.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
