"""Golden files for `--scheduler iddpm` end to end: PixArt's own IDDPM sampling (the original
repository's `scripts/inference.py --sampling_algo iddpm`, PixArt-alpha/PixArt-sigma@1ce521a) on
the tiny random pipeline of fixtures/golden/pipeline (written by gen_pipeline.py), from given
initial latents and per-step noise.

diffusers has no IDDPM pipeline, so the loop is written here, from the original's semantics:
  - timesteps: the training schedule respaced to n steps (gen_schedulers.iddpm_timesteps), the
    model called with the original timestep values;
  - classifier-free guidance as `PixArtMS.forward_with_cfg` (diffusion/model/nets/PixArtMS.py):
    ε_u + g·(ε_c − ε_u) on the first three latent channels only, the fourth latent channel and
    the four variance channels from the conditional prediction;
  - the step: diffusers' DDPMScheduler with variance_type="learned_range", clip_sample=False and
    the respaced timesteps as custom timesteps, which gen_schedulers.py checks against the
    original p_sample equations (diffusion/model/gaussian_diffusion.py).
The prompts are encoded by diffusers' `PixArtSigmaPipeline.encode_prompt` (300 tokens, mask)
and the transformer is diffusers' `PixArtTransformer2DModel`, as in gen_pipeline.py.

Writes fixtures/golden/pipeline/iddpm.json (the cases) and iddpm.safetensors:
  <case>.latents_in (B, 4, h, w), <case>.noise (steps, B, 4, h, w), <case>.latents_out.

Run with the reference venv (tools/golden/setup.sh):  python tools/golden/gen_pipeline_iddpm.py
"""
import json
import os
import sys

import diffusers.schedulers.scheduling_ddpm as ddpm_mod
import torch
from diffusers import DDPMScheduler, PixArtSigmaPipeline
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from gen_schedulers import iddpm_timesteps  # noqa: E402
from pipeline_loop import Feed, encode, model_output  # noqa: E402

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden", "pipeline")

CASES = {
    # CFG with a negative prompt: the three-channel guidance.
    "iddpm_cfg": dict(prompt="a red cube on a table", negative_prompt="blurry", height=64, width=48,
                      steps=6, guidance=4.5, per_prompt=1),
    # No CFG, two prompts.
    "iddpm_no_cfg": dict(prompt=["Two Cats", "a dog in the snow"], negative_prompt="", height=48, width=64,
                         steps=5, guidance=1.0, per_prompt=1),
}


FEED = Feed()
ddpm_mod.randn_tensor = FEED


def sample(pipe, c, latents, noise):
    cfg, emb, mask = encode(pipe, c)
    sched = DDPMScheduler.from_config(pipe.scheduler.config, variance_type="learned_range", clip_sample=False)
    sched.set_timesteps(timesteps=iddpm_timesteps(sched.config.num_train_timesteps, c["steps"]))
    x = latents.clone()
    for i, t in enumerate(sched.timesteps):
        x_in = torch.cat([x, x]) if cfg else x
        out = model_output(pipe, x_in, t, emb, mask)
        if cfg:
            u, cond = out.chunk(2)
            guided = u[:, :3] + c["guidance"] * (cond[:, :3] - u[:, :3])
            out = torch.cat([guided, cond[:, 3:]], dim=1)
        FEED.next = noise[i]
        x = sched.step(out, t, x).prev_sample
    return x


def main():
    pipe = PixArtSigmaPipeline.from_pretrained(OUT)
    tensors, meta = {}, {}
    for k, (name, c) in enumerate(CASES.items()):
        n_prompts = 1 if isinstance(c["prompt"], str) else len(c["prompt"])
        shape = (n_prompts * c["per_prompt"], 4, c["height"] // 8, c["width"] // 8)
        g = torch.Generator().manual_seed(300 + k)
        latents = torch.randn(shape, generator=g)
        noise = torch.randn((c["steps"], *shape), generator=g)
        with torch.no_grad():
            out = sample(pipe, c, latents, noise)
        tensors[f"{name}.latents_in"] = latents
        tensors[f"{name}.noise"] = noise
        tensors[f"{name}.latents_out"] = out
        meta[name] = c
        print(f"{name}: latents {tuple(shape)}, |latents_out| max {out.abs().max():.3f}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "iddpm.safetensors"))
    with open(os.path.join(OUT, "iddpm.json"), "w") as f:
        json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
