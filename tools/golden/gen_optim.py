"""Golden file for pixart-train's optimisers (torch 2.15.0, came-pytorch 0.1.3).

Three parameters (a matrix, a vector, a conv-shaped rank-4 tensor) take 4 steps of
torch.optim.AdamW and of came_pytorch.CAME with fixed gradients; the parameters after every step
are stored in fixtures/golden/train/optim.safetensors:
  init.<p>, grad.<k>.<p> (k = 0..3), adamw.<k>.<p>, came.<k>.<p>

Run with the reference venv:  /work/pyref/bin/python tools/golden/gen_optim.py
"""
import os

import torch
from came_pytorch import CAME
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden", "train")
SHAPES = {"w": (3, 5), "b": (5,), "conv": (4, 2, 3, 3)}
STEPS = 4


def run(make_opt):
    torch.manual_seed(0)
    params = {k: torch.nn.Parameter(torch.randn(s)) for k, s in SHAPES.items()}
    grads = [{k: torch.randn(s) * (0.1 + k2) for k2, (k, s) in enumerate(SHAPES.items())} for _ in range(STEPS)]
    opt = make_opt(list(params.values()))
    init = {k: p.detach().clone() for k, p in params.items()}
    traj = []
    for i in range(STEPS):
        for k, p in params.items():
            p.grad = grads[i][k].clone()
        opt.step()
        traj.append({k: p.detach().clone() for k, p in params.items()})
    return init, grads, traj


def main():
    out = {}
    init, grads, adam = run(lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.03))
    _, _, came = run(lambda ps: CAME(ps, lr=1e-2, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16), weight_decay=0.03))
    for k, v in init.items():
        out[f"init.{k}"] = v
    for i in range(STEPS):
        for k in SHAPES:
            out[f"grad.{i}.{k}"] = grads[i][k]
            out[f"adamw.{i}.{k}"] = adam[i][k]
            out[f"came.{i}.{k}"] = came[i][k]
    os.makedirs(OUT, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "optim.safetensors"))


if __name__ == "__main__":
    main()
