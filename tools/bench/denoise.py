"""The denoising loop of one image in PyTorch/diffusers, the same work as `pixart bench denoise`:
the full PixArt-Σ XL/2 transformer with random weights, --steps DPM-Solver++ steps (PixArt-Σ's
scheduler config) with classifier-free guidance (model batch 2: [unconditional, prompt]), 300
caption positions with the prompt's --valid-tokens and the empty negative prompt's one valid,
same thread count. The loop body is diffusers 0.42.1 `PixArtSigmaPipeline.__call__`
(pipelines/pixart_alpha/pipeline_pixart_sigma.py, "7. Denoising loop"): the transformer runs
the caption projection and cross-attention keys/values at every step. Prints JSON lines.

Needs the reference venv (tools/golden/setup.sh).
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
from diffusers import DPMSolverMultistepScheduler

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "golden"))
from gen_schedulers import PIXART  # noqa: E402  (PixArt-Σ's scheduler_config.json)
from transformer import DTYPES, random_sigma_transformer  # noqa: E402  (tools/bench/transformer.py)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--valid-tokens", type=int, default=0, help="default: all")
    ap.add_argument("--guidance", type=float, default=4.5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    valid = a.valid_tokens or a.tokens
    dtype = DTYPES[a.dtype]
    t0 = time.perf_counter()
    dev = a.device
    cuda = dev.startswith("cuda")
    model = random_sigma_transformer(a.size, dtype, dev)
    build = time.perf_counter() - t0
    lat = a.size // 8
    y = torch.randn(2, a.tokens, 4096, dtype=dtype, device=dev)
    mask = torch.zeros(2, a.tokens, device=dev)
    mask[0, 0] = 1
    mask[1, :valid] = 1
    scheduler = DPMSolverMultistepScheduler.from_config(PIXART)
    scheduler.set_timesteps(a.steps, device=dev)  # timesteps on the model's device
    latents = (torch.randn(1, 4, lat, lat, device=dev) * scheduler.init_noise_sigma).to(dtype)
    steps = []
    with torch.inference_mode():
        if cuda:
            torch.cuda.synchronize()
        s0, c0 = time.perf_counter(), time.process_time()
        for i, t in enumerate(scheduler.timesteps):
            s = time.perf_counter()
            x_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            out = model(x_in, encoder_hidden_states=y, encoder_attention_mask=mask,
                        timestep=t.expand(2), return_dict=False)[0]
            u, c = out.chunk(2)
            eps = u + a.guidance * (c - u)
            eps = eps.chunk(2, dim=1)[0]  # learned sigma
            latents = scheduler.step(eps, t, latents, return_dict=False)[0]
            if cuda:
                torch.cuda.synchronize()
            e = time.perf_counter() - s
            steps.append(e)
            print(json.dumps({"bench": "denoise-pytorch", "step": i, "seconds": e}), flush=True)
        total, cpu = time.perf_counter() - s0, time.process_time() - c0
    print(json.dumps({
        "bench": "denoise-pytorch", "size": a.size, "steps": a.steps, "dtype": a.dtype,
        "tokens": a.tokens, "valid_tokens": valid, "seconds": total, "cpu_seconds": cpu,
        "seconds_per_step": statistics.median(steps), "build_seconds": build,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "device": dev, "gpu_peak_bytes": torch.cuda.max_memory_allocated() if cuda else 0,
    }), flush=True)


if __name__ == "__main__":
    main()
