"""Golden files for the VAE, from diffusers' AutoencoderKL (diffusers 0.42.1, torch 2.15.0).

Writes fixtures/golden/vae/<case>/ with config.json + diffusion_pytorch_model.safetensors (a tiny
random AutoencoderKL) and io.safetensors:
  decode.z [B, C_lat, h, w]            -> decode.sample [B, 3, f*h, f*w]   (vae.decode(z).sample)
  encode.sample [B, 3, H, W]           -> encode.latent_mean, encode.latent_std [B, C_lat, H/f, W/f]
  encode.noise (same shape as mean)    -> encode.latent_sample = mean + std * noise
Every GroupNorm weight and bias is randomised (so a skipped or misplaced norm fails), conv weights
are N(0, 1/fan_in) so activations stay O(1), and the attention q/k projections are large enough
that the softmax is far from uniform (so a wrong attention shows).

`small_legacy/` holds the weights of `small` under the legacy attention names
(`query`/`key`/`value`/`proj_attn`), as checkpoints written before diffusers 0.14 have them.

Run with the reference venv (tools/golden/setup.sh):  python tools/golden/gen_vae.py
"""
import json
import os

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden", "vae")

CASES = {
    # Four blocks: downsampling factor 8 as in the SDXL VAE; mid-block attention; quant convs.
    "base": dict(
        block_out_channels=[8, 8, 16, 16],
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=32,
        scaling_factor=0.13025,
        force_upcast=False,
    ),
    # Two blocks, two layers per block (three resnets per decoder up block).
    "small": dict(
        block_out_channels=[4, 8],
        layers_per_block=2,
        norm_num_groups=2,
        latent_channels=4,
        sample_size=16,
    ),
    # No mid-block attention, no quant convs, 3 latent channels, 2 groups.
    "plain": dict(
        block_out_channels=[4, 8],
        layers_per_block=1,
        norm_num_groups=2,
        latent_channels=3,
        sample_size=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    ),
}

LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def randomise(vae: AutoencoderKL, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in vae.named_modules():
            if isinstance(mod, torch.nn.GroupNorm):
                mod.weight.copy_(1.0 + 0.3 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=g))
            elif isinstance(mod, torch.nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / fan_in**0.5)
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
            elif isinstance(mod, torch.nn.Linear):
                fan_in = mod.weight.shape[1]
                gain = 1.5 if name.endswith(("to_q", "to_k")) else 1.0
                mod.weight.copy_(gain * torch.randn(mod.weight.shape, generator=g) / fan_in**0.5)
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))


def save_model(vae: AutoencoderKL, folder: str, legacy: bool = False) -> None:
    os.makedirs(folder, exist_ok=True)
    sd = {}
    for k, v in vae.state_dict().items():
        if legacy:
            for new, old in LEGACY.items():
                k = k.replace(f".{new}.", f".{old}.")
        sd[k] = v.contiguous()
    save_file(sd, os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    cfg = dict(vae.config)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg = {"_class_name": "AutoencoderKL", "_diffusers_version": "0.42.1", **cfg}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)


def main() -> None:
    for seed, (case, kw) in enumerate(CASES.items()):
        n = len(kw["block_out_channels"])
        vae = AutoencoderKL(
            down_block_types=["DownEncoderBlock2D"] * n,
            up_block_types=["UpDecoderBlock2D"] * n,
            **kw,
        ).eval()
        randomise(vae, 1000 + seed)
        folder = os.path.join(OUT, case)
        save_model(vae, folder)
        if case == "small":
            save_model(vae, os.path.join(OUT, "small_legacy"), legacy=True)

        f = 2 ** (n - 1)
        c = kw["latent_channels"]
        g = torch.Generator().manual_seed(7 + seed)
        z = torch.randn((2, c, 6, 5), generator=g)
        image = torch.rand((2, 3, 6 * f, 5 * f), generator=g) * 2 - 1
        with torch.no_grad():
            sample = vae.decode(z).sample
            post = vae.encode(image).latent_dist
            noise = torch.randn(post.mean.shape, generator=g)
            latent_sample = post.mean + post.std * noise
        io = {
            "decode.z": z,
            "decode.sample": sample,
            "encode.sample": image,
            "encode.latent_mean": post.mean,
            "encode.latent_std": post.std,
            "encode.noise": noise,
            "encode.latent_sample": latent_sample,
        }
        save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(folder, "io.safetensors"))
        print(
            f"{case}: decode |sample| max {sample.abs().max():.3f} std {sample.std():.3f}; "
            f"mean std {post.mean.std():.3f}, latent_std range [{post.std.min():.3f}, {post.std.max():.3f}]"
        )


if __name__ == "__main__":
    main()
