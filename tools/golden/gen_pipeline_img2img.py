"""Golden files for image to image and inpainting (`pixart generate --image [--mask]`) on the
tiny random pipeline of
fixtures/golden/pipeline (written by gen_pipeline.py), from diffusers 0.42.1 components.

diffusers has no PixArt img2img pipeline, so the loop is written here: the start of
`StableDiffusionImg2ImgPipeline` (pipelines/stable_diffusion/pipeline_stable_diffusion_img2img.py:
`get_timesteps` — int(steps * strength) steps run, the sampler's begin index set to the rest —
and `prepare_latents` — the VAE posterior sampled, times scaling_factor, then
`scheduler.add_noise` at the first timestep that runs), then the denoising loop of
`PixArtSigmaPipeline.__call__` (CFG with the negative rows first, the learned-sigma channels
dropped). The init image is a PNG in the fixtures (so both sides read the same bytes), turned
into [-1, 1] as `VaeImageProcessor` does (x / 255, 2x - 1) and, where the generation size
differs from its own, resized to cover it and centre-cropped with diffusers'
`PixArtImageProcessor.resize_and_crop_tensor` (bilinear).

Inpainting (a case with a mask) follows `StableDiffusionXLInpaintPipeline` for models without
mask input channels (pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl_inpaint.py, the
`num_channels_unet == 4` branch): the mask PNG as its mask processor reads it (PIL "L",
binarised at 0.5), `F.interpolate` (nearest) to latent size; strength 1 starts from the noise
times init_noise_sigma; after every step `(1 - m) * proper + m * latents`, `proper` the image
latents noised (with the start noise) to the next step's timestep, clean after the last.

One difference from the SD pipelines, on purpose: every image of a batch draws its own posterior
sample (diffusers draws one for the batch), so image k is what a single-image run with seed + k
makes. The noise per image comes in the order the Rust pipeline draws it: the posterior ε, the
noise for add_noise, then each step's noise (samplers that need it).

Writes fixtures/golden/pipeline/img2img_init.png, img2img_mask.png, img2img.json (the cases) and
img2img.safetensors: <case>.posterior_noise (B, 4, h, w), <case>.noise (B, 4, h, w),
<case>.step_noise (steps run, B, 4, h, w), <case>.latents_out.

Run with the reference venv (tools/golden/setup.sh):  python tools/golden/gen_pipeline_img2img.py
"""
import json
import os
import sys

import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_mod
import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, PixArtSigmaPipeline
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from pipeline_loop import Feed, encode, model_output  # noqa: E402

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden", "pipeline")
INIT = "img2img_init.png"
MASK = "img2img_mask.png"
KINDS = {"dpm++": DPMSolverMultistepScheduler, "euler-a": EulerAncestralDiscreteScheduler, "ddim": DDIMScheduler}

CASES = {
    # DPM-Solver++ (the model's scheduler), CFG, 6 of 10 steps at the image's own size.
    "img2img_dpmpp": dict(prompt="a red cube on a table", negative_prompt="", height=48, width=64,
                          steps=10, strength=0.6, guidance=4.5, per_prompt=1, sampler=None),
    # Euler ancestral (σ-scaled add_noise, noise at every step), no CFG, two prompts.
    "img2img_euler_a": dict(prompt=["Two Cats", "a dog in the snow"], negative_prompt="", height=48, width=64,
                            steps=6, strength=0.5, guidance=1.0, per_prompt=1, sampler="euler-a"),
    # DDIM at another size than the image's: resized to cover 32x48 and centre-cropped; strength 1.
    "img2img_ddim_resized": dict(prompt="a dog in the snow", negative_prompt="blurry", height=48, width=32,
                                 steps=4, strength=1.0, guidance=3.0, per_prompt=2, sampler="ddim"),
    # Inpainting: DPM-Solver++ with CFG, 7 of 10 steps.
    "inpaint_dpmpp": dict(prompt="a red cube on a table", negative_prompt="", height=48, width=64,
                          steps=10, strength=0.75, guidance=4.5, per_prompt=1, sampler=None, mask=MASK),
    # Inpainting at strength 1 (pure noise start) with Euler ancestral, no CFG, two images.
    "inpaint_euler_a_full": dict(prompt="Two Cats", negative_prompt="", height=48, width=64,
                                 steps=5, strength=1.0, guidance=1.0, per_prompt=2, sampler="euler-a", mask=MASK),
}


FEED = Feed()
euler_mod.randn_tensor = FEED


def init_image():
    """A 64x48 picture with gradients and two blocks (deterministic)."""
    h, w = 48, 64
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], axis=-1)
    img[10:30, 8:28] = [220, 30, 40]
    img[20:44, 36:60] = [20, 200, 90]
    return img.astype(np.uint8)


def mask_image():
    """64x48, RGB: white (repaint), black and a dark grey and a colour whose luma is under 0.5
    (keep), a light grey just over it (repaint)."""
    m = np.zeros((48, 64, 3), dtype=np.uint8)
    m[8:40, 24:56] = 255
    m[16:24, 0:16] = 127      # luma 127/255 < 0.5: keep
    m[32:48, 0:16] = 128      # luma 128/255 >= 0.5: repaint
    m[0:8, 40:64] = [130, 90, 200]  # luma 115: keep
    return m


def latent_mask(path, h, w):
    m = np.array(Image.open(path).convert("L")).astype(np.float32) / 255.0
    m = torch.from_numpy((m >= 0.5).astype(np.float32))[None, None]
    return torch.nn.functional.interpolate(m, size=(h // 8, w // 8))


def sample(pipe, c, pixels, post_eps, fresh, step_noise):
    cfg, emb, mask = encode(pipe, c)
    cls = KINDS[c["sampler"]] if c["sampler"] else type(pipe.scheduler)
    sched = cls.from_config(pipe.scheduler.config, **({"clip_sample": False} if cls is DDIMScheduler else {}))
    sched.set_timesteps(c["steps"])
    # get_timesteps
    init_steps = min(int(c["steps"] * c["strength"]), c["steps"])
    t_start = max(c["steps"] - init_steps, 0)
    timesteps = sched.timesteps[t_start * sched.order:]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    # prepare_latents (a posterior sample per image)
    x = torch.from_numpy(pixels).float().permute(2, 0, 1)[None] / 255.0
    x = 2.0 * x - 1.0
    if (c["height"], c["width"]) != tuple(x.shape[-2:]):
        x = pipe.image_processor.resize_and_crop_tensor(x, c["width"], c["height"])
    dist = pipe.vae.encode(x).latent_dist
    z = pipe.vae.config.scaling_factor * (dist.mean + dist.std * post_eps)
    repaint = latent_mask(os.path.join(OUT, c["mask"]), c["height"], c["width"]) if c.get("mask") else None
    if repaint is not None and c["strength"] == 1.0:
        latents = fresh * sched.init_noise_sigma
    else:
        latents = sched.add_noise(z, fresh, timesteps[:1].repeat(z.shape[0]))
    # PixArtSigmaPipeline's loop
    for i, t in enumerate(timesteps):
        x_in = torch.cat([latents] * 2) if cfg else latents
        x_in = sched.scale_model_input(x_in, t)
        out = model_output(pipe, x_in, t, emb, mask)
        if cfg:
            u, cond = out.chunk(2)
            out = u + c["guidance"] * (cond - u)
        out = out.chunk(2, dim=1)[0]
        FEED.next = step_noise[i] if step_noise is not None else None
        latents = sched.step(out, t, latents).prev_sample
        if repaint is not None:
            proper = z
            if i < len(timesteps) - 1:
                proper = sched.add_noise(z, fresh, torch.tensor([timesteps[i + 1]]))
            latents = (1 - repaint) * proper + repaint * latents
    return latents, len(timesteps)


def main():
    pixels = init_image()
    Image.fromarray(pixels).save(os.path.join(OUT, INIT))
    Image.fromarray(mask_image()).save(os.path.join(OUT, MASK))
    pipe = PixArtSigmaPipeline.from_pretrained(OUT)
    tensors, meta = {}, {}
    for k, (name, c) in enumerate(CASES.items()):
        n_prompts = 1 if isinstance(c["prompt"], str) else len(c["prompt"])
        shape = (n_prompts * c["per_prompt"], 4, c["height"] // 8, c["width"] // 8)
        run = min(int(c["steps"] * c["strength"]), c["steps"])
        g = torch.Generator().manual_seed(500 + k)
        post_eps = torch.randn(shape, generator=g)
        fresh = torch.randn(shape, generator=g)
        step_noise = torch.randn((run, *shape), generator=g) if c["sampler"] == "euler-a" else None
        with torch.no_grad():
            out, ran = sample(pipe, c, pixels, post_eps, fresh, step_noise)
        assert ran == run
        tensors[f"{name}.posterior_noise"] = post_eps
        tensors[f"{name}.noise"] = fresh
        if step_noise is not None:
            tensors[f"{name}.step_noise"] = step_noise
        tensors[f"{name}.latents_out"] = out
        meta[name] = {"mask": None, **c, "image": INIT, "steps_run": run}
        print(f"{name}: {run} of {c['steps']} steps, latents {tuple(shape)}, |latents_out| max {out.abs().max():.3f}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "img2img.safetensors"))
    with open(os.path.join(OUT, "img2img.json"), "w") as f:
        json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
