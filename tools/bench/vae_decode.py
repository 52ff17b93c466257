"""SDXL VAE decode in PyTorch/diffusers, the same work as `pixart bench vae-decode`: the full
SDXL AutoencoderKL architecture with random weights, one latent of --size/8 square, f32, untiled
unless --tile. With --encode, `pixart bench vae-encode`'s work instead: one image of --size
square in [-1, 1] to the posterior moments (`latent_dist`), as image to image needs. Prints one
JSON object. Needs the reference venv (tools/golden/setup.sh)."""
import argparse
import json
import resource
import time

import torch
from diffusers import AutoencoderKL


def sdxl_vae():
    """The SDXL AutoencoderKL architecture (madebyollin/sdxl-vae-fp16-fix config) with random
    weights."""
    return AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=1024,
        scaling_factor=0.13025,
    ).eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tile", action="store_true", help="diffusers' enable_tiling()")
    ap.add_argument("--encode", action="store_true", help="time the encoder instead")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    vae = sdxl_vae()
    if a.tile:
        vae.enable_tiling()
    if a.encode:
        x = torch.rand(1, 3, a.size, a.size) * 2 - 1
        with torch.inference_mode():
            s = time.perf_counter()
            out = vae.encode(x).latent_dist.mean
            e = time.perf_counter() - s
        assert out.shape[-1] == a.size // 8
    else:
        z = torch.randn(1, 4, a.size // 8, a.size // 8)
        with torch.inference_mode():
            s = time.perf_counter()
            out = vae.decode(z).sample
            e = time.perf_counter() - s
        assert out.shape[-1] == a.size
    what = "encode" if a.encode else "decode"
    print(json.dumps({
        "bench": f"vae-{what}-pytorch", "size": a.size, "tile": a.tile, f"seconds_per_{what}": e,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }), flush=True)


if __name__ == "__main__":
    main()
