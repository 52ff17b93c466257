"""Golden file for VAE training: the loss and every parameter's gradient, from diffusers'
AutoencoderKL (diffusers 0.42.1, torch 2.15.0) on the tiny `small` VAE of fixtures/golden/vae.

The loss is the formula of pixart_vae::training (LDM's KL autoencoder loss without the perceptual
and GAN terms; CompVis/latent-diffusion ldm/modules/losses/contperceptual.py):

    post = vae.encode(x).latent_dist            # DiagonalGaussianDistribution
    z    = post.mean + post.std * noise         # noise passed in
    rec  = vae.decode(z).sample
    l1   = mean |x - rec|,  l2 = mean (x - rec)^2,  kl = post.kl().sum() / x.numel()
    loss = W_L1 * l1 + W_L2 * l2 + W_KL * kl

Writes fixtures/golden/vae_train/small.safetensors:
  x [2, 3, 16, 12], noise [2, 4, 8, 6], z, reconstruction [2, 3, 16, 12],
  loss.total, loss.l1, loss.l2, loss.kl (scalars), grad.<parameter name> for every parameter.

Run with the reference venv (tools/golden/setup.sh):  python tools/golden/gen_vae_train.py
"""
import os

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

torch.set_num_threads(1)
ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden")
# Weights of the loss parts (the KL weight is large so that its gradient is visible).
W_L1, W_L2, W_KL = 1.0, 0.5, 0.01


def main() -> None:
    vae = AutoencoderKL.from_pretrained(os.path.join(ROOT, "vae", "small")).float()
    vae.train()  # no dropout in the KL autoencoder; GroupNorm is the same in both modes
    g = torch.Generator().manual_seed(11)
    x = torch.rand((2, 3, 16, 12), generator=g) * 2 - 1
    post = vae.encode(x).latent_dist
    noise = torch.randn(post.mean.shape, generator=g)
    z = post.mean + post.std * noise
    rec = vae.decode(z).sample
    l1 = (x - rec).abs().mean()
    l2 = ((x - rec) ** 2).mean()
    kl = post.kl().sum() / x.numel()
    loss = W_L1 * l1 + W_L2 * l2 + W_KL * kl
    loss.backward()
    out = {
        "x": x,
        "noise": noise,
        "z": z.detach(),
        "reconstruction": rec.detach(),
        "loss.total": loss.detach(),
        "loss.l1": l1.detach(),
        "loss.l2": l2.detach(),
        "loss.kl": kl.detach(),
    }
    for name, p in vae.named_parameters():
        out[f"grad.{name}"] = p.grad.detach().clone()
    os.makedirs(os.path.join(ROOT, "vae_train"), exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(ROOT, "vae_train", "small.safetensors"))
    print(f"loss {loss.item():.6f} l1 {l1.item():.6f} l2 {l2.item():.6f} kl {kl.item():.6f}, {len(out) - 8} grads")


if __name__ == "__main__":
    main()
