"""The PixArt-Σ transformer forward in PyTorch/diffusers, the same work as
`pixart bench transformer`: full XL/2 architecture with random weights, batch 2, 300 caption
tokens, square image of --size px, same thread count. Prints one JSON object per line.

Needs the reference venv (tools/golden/setup.sh).
"""
import argparse
import json
import resource
import statistics
import time

import torch
from diffusers import PixArtTransformer2DModel


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def random_sigma_transformer(size, dtype, device="cpu"):
    """PixArt-Σ XL/2 (diffusers' defaults) at its trained sample size for --size px, random
    weights, as `pixart bench` builds it."""
    sample = {256: 32, 512: 64, 1024: 128}.get(size, 256)
    return PixArtTransformer2DModel(
        sample_size=sample,
        interpolation_scale=sample / 64,
        caption_channels=4096,
        use_additional_conditions=False,
    ).to(device=device, dtype=dtype).eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = DTYPES[a.dtype]
    t0 = time.perf_counter()
    model = random_sigma_transformer(a.size, dtype, a.device)
    build = time.perf_counter() - t0
    lat = a.size // 8
    x = torch.randn(a.batch, 4, lat, lat, device=a.device, dtype=dtype)
    t = torch.full((a.batch,), 500, device=a.device)
    y = torch.randn(a.batch, a.tokens, 4096, device=a.device, dtype=dtype)
    mask = torch.ones(a.batch, a.tokens, device=a.device)
    secs, cpu = [], []
    with torch.inference_mode():
        for i in range(a.warmup + a.iters):
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            s, c = time.perf_counter(), time.process_time()
            model(x, encoder_hidden_states=y, timestep=t, encoder_attention_mask=mask)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            e, ce = time.perf_counter() - s, time.process_time() - c
            if i >= a.warmup:
                secs.append(e)
                cpu.append(ce)
                print(json.dumps({"bench": "transformer-pytorch", "iter": i - a.warmup, "seconds": e}), flush=True)
    med = statistics.median(secs)
    print(json.dumps({
        "bench": "transformer-pytorch",
        "size": a.size,
        "dtype": a.dtype,
        "batch": a.batch,
        "tokens": a.tokens,
        "iters": a.iters,
        "seconds_per_forward": med,
        "seconds_min": min(secs),
        # CPU time of all threads (time.process_time), median over the timed forwards.
        "cpu_seconds_per_forward": statistics.median(cpu),
        "build_seconds": build,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "gpu_peak_bytes": torch.cuda.max_memory_allocated() if a.device.startswith("cuda") else 0,
    }), flush=True)


if __name__ == "__main__":
    main()
