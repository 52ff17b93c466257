"""Golden file for `[train] lr_schedule` (diffusers 0.42.1 `diffusers.optimization`).

The LR factor of every optimiser step of a 30-step run with 5 warm-up steps, from diffusers'
constant / cosine / linear schedules with warm-up, as the LambdaLR of an optimiser with lr 1.
Writes fixtures/golden/train/lr_schedules.safetensors: `constant`, `cosine`, `linear` (f64, 30).

Run with the reference venv:  /work/pyref/bin/python tools/golden/gen_lr_schedules.py
"""
import os

import torch
from diffusers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden", "train")
STEPS, WARMUP = 30, 5


def factors(make):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt)
    out = []
    for _ in range(STEPS):
        out.append(sched.get_last_lr()[0])  # the LR this optimiser step uses
        opt.step()
        sched.step()
    return torch.tensor(out, dtype=torch.float64)


out = {
    "constant": factors(lambda o: get_constant_schedule_with_warmup(o, WARMUP)),
    "cosine": factors(lambda o: get_cosine_schedule_with_warmup(o, WARMUP, STEPS)),
    "linear": factors(lambda o: get_linear_schedule_with_warmup(o, WARMUP, STEPS)),
}
os.makedirs(OUT, exist_ok=True)
save_file(out, os.path.join(OUT, "lr_schedules.safetensors"))
for k, v in out.items():
    print(k, [round(x, 4) for x in v.tolist()])
