"""Golden file for pixart-train's IDDPM objective (torch 2.15.0).

PixArt's training objective (PixArt-alpha/PixArt-sigma@1ce521af diffusion/model/gaussian_diffusion.py,
GaussianDiffusion.training_losses with LEARNED_RANGE variance, MSE loss type, learn_sigma; and
diffusion_utils.py normal_kl / discretized_gaussian_log_likelihood) written out in PyTorch from
those formulas (the PixArt repository is not a PyPI package), in float64 for the schedule and
float32 for the tensors, as the original does. Autograd gives d(mean loss)/d(model_output),
which checks the stop-gradient on eps in the variance term.

Writes fixtures/golden/train/iddpm.safetensors:
  x0, noise (b,c,h,w) f32; t (b,) i64; model_output (b,2c,h,w) f32
  x_t, loss, mse, vb (b,) f32; grad_model_output (b,2c,h,w) f32; betas, alphas_cumprod (1000,) f64

Run with the reference venv:  /work/pyref/bin/python tools/golden/gen_iddpm.py
"""
import math
import os

import numpy as np
import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden", "train")


def schedule(steps=1000):
    scale = 1000 / steps
    betas = np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    return dict(
        betas=betas,
        ac=ac,
        sqrt_ac=np.sqrt(ac),
        sqrt_1m_ac=np.sqrt(1.0 - ac),
        sqrt_recip_ac=np.sqrt(1.0 / ac),
        sqrt_recipm1_ac=np.sqrt(1.0 / ac - 1),
        post_logvar_clipped=np.log(np.append(post_var[1], post_var[1:])),
        coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    )


def extract(arr, t, shape):
    # _extract_into_tensor: index in float64, cast to float32 tensor, broadcast
    res = torch.from_numpy(arr)[t].float()
    while len(res.shape) < len(shape):
        res = res[..., None]
    return res.expand(shape)


def mean_flat(x):
    return x.mean(dim=list(range(1, len(x.shape))))


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * torch.exp(-logvar2))


def approx_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def disc_ll(x, means, log_scales):
    centered = x - means
    inv = torch.exp(-log_scales)
    cdf_plus = approx_cdf(inv * (centered + 1.0 / 255.0))
    cdf_min = approx_cdf(inv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_1m_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_1m_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


def losses(s, model_output, x0, noise, t):
    shape = x0.shape
    x_t = extract(s["sqrt_ac"], t, shape) * x0 + extract(s["sqrt_1m_ac"], t, shape) * noise
    c = x0.shape[1]
    eps, v = torch.split(model_output, c, dim=1)
    frozen = torch.cat([eps.detach(), v], dim=1)
    eps_f, v_f = torch.split(frozen, c, dim=1)
    min_log = extract(s["post_logvar_clipped"], t, shape)
    max_log = extract(np.log(s["betas"]), t, shape)
    frac = (v_f + 1) / 2
    model_log_var = frac * max_log + (1 - frac) * min_log
    pred_x0 = extract(s["sqrt_recip_ac"], t, shape) * x_t - extract(s["sqrt_recipm1_ac"], t, shape) * eps_f
    model_mean = extract(s["coef1"], t, shape) * pred_x0 + extract(s["coef2"], t, shape) * x_t
    true_mean = extract(s["coef1"], t, shape) * x0 + extract(s["coef2"], t, shape) * x_t
    true_logvar = extract(s["post_logvar_clipped"], t, shape)
    kl = mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_log_var)) / math.log(2.0)
    nll = -mean_flat(disc_ll(x0, model_mean, 0.5 * model_log_var)) / math.log(2.0)
    vb = torch.where(t == 0, nll, kl)
    mse = mean_flat((noise - eps) ** 2)
    return x_t, mse + vb, mse, vb


def main():
    torch.manual_seed(0)
    b, c, h, w = 6, 4, 4, 4
    s = schedule()
    x0 = torch.randn(b, c, h, w).clamp(-1.2, 1.2)
    x0[0, 0, 0, :2] = torch.tensor([-1.0, 1.0])  # exercise the edge bins at t = 0
    noise = torch.randn(b, c, h, w)
    t = torch.tensor([0, 1, 10, 500, 998, 999], dtype=torch.int64)
    model_output = (torch.randn(b, 2 * c, h, w) * 0.5).requires_grad_(True)
    x_t, loss, mse, vb = losses(s, model_output, x0, noise, t)
    loss.mean().backward()
    os.makedirs(OUT, exist_ok=True)
    save_file(
        {
            "x0": x0.contiguous(),
            "noise": noise.contiguous(),
            "t": t,
            "model_output": model_output.detach().contiguous(),
            "x_t": x_t.detach().contiguous(),
            "loss": loss.detach(),
            "mse": mse.detach(),
            "vb": vb.detach(),
            "grad_model_output": model_output.grad.contiguous(),
            "betas": torch.from_numpy(s["betas"]),
            "alphas_cumprod": torch.from_numpy(s["ac"]),
        },
        os.path.join(OUT, "iddpm.safetensors"),
    )
    print("loss", loss.detach().numpy(), "vb", vb.detach().numpy())


if __name__ == "__main__":
    main()
