#!/usr/bin/env python3
"""Drives `pixart serve`'s AUTOMATIC1111 API (/sdapi/v1/...) with the `webuiapi` client.

    pixart serve --port 7861 &            # the built-in model (64 px)
    python tools/clients/check_webuiapi.py --port 7861

Prints what each call gave and exits 1 on the first check that fails. The Rust tests
(crates/pixart-cli/tests/serve_a1111.rs) send the same JSON.
"""
import argparse
import io
import json
import sys
import threading
import time

import requests
import webuiapi
from PIL import Image, ImageDraw


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    a = ap.parse_args()
    api = webuiapi.WebUIApi(host=a.host, port=a.port, sampler="DPM++ 2M", steps=10)
    base = f"http://{a.host}:{a.port}/sdapi/v1"
    prompt = "a large red circle at the center on a white background"

    models = api.get_sd_models()
    print("sd-models:", json.dumps(models))
    check(len(models) == 1 and models[0]["title"], "sd-models lists the served model")
    title = models[0]["title"]
    api.util_set_model(title)
    check(api.util_get_current_model() == title, "options: sd_model_checkpoint set and read back")
    r = requests.post(f"{base}/options", json={"sd_model_checkpoint": "no-such-model"})
    check(r.status_code == 422 and r.json()["error"]["param"] == "sd_model_checkpoint",
          f"options: an unknown model is 422 naming sd_model_checkpoint ({r.status_code})")
    samplers = api.util_get_sampler_names()
    print("samplers:", samplers)
    check("DPM++ 2M" in samplers and "Euler a" in samplers and "DDIM" in samplers, "A1111 sampler names")
    print("schedulers:", api.util_get_scheduler_names())
    print("upscalers:", [u["name"] for u in api.get_upscalers()])
    print("loras:", api.get_loras())

    t0 = time.time()
    res = api.txt2img(prompt=prompt, negative_prompt="blurry", seed=7, steps=10, cfg_scale=4.5,
                      width=64, height=64, batch_size=2, n_iter=2, sampler_name="Euler a")
    print(f"txt2img: {len(res.images)} images {[im.size for im in res.images]} in {time.time() - t0:.2f} s")
    print("  info.all_seeds:", res.info["all_seeds"], "sampler:", res.info["sampler_name"])
    print("  infotexts[0]:", res.info["infotexts"][0].replace("\n", " | "))
    check(len(res.images) == 4 and res.images[0].size == (64, 64), "txt2img: batch_size 2 × n_iter 2 = 4 images of 64x64")
    check(res.info["all_seeds"] == [7, 8, 9, 10], "txt2img: seeds 7..10 in info")
    check(res.parameters["seed"] == 7 and res.parameters["n_iter"] == 2, "txt2img: parameters echo the request")

    res = api.txt2img(prompt=prompt, seed=-1, steps=6, width=64, height=64)
    check(0 <= res.info["seed"] < 2**32 and res.parameters["seed"] == -1, f"seed -1: random seed {res.info['seed']}")

    res = api.txt2img(prompt=prompt, seed=3, steps=6, width=64, height=64, enable_hr=True, hr_scale=2,
                      denoising_strength=0.5, hr_second_pass_steps=6)
    check(res.images[0].size == (128, 128), f"enable_hr, hr_scale 2: {res.images[0].size}")

    res = api.txt2img(prompt=prompt, seed=3, steps=6, width=64, height=64,
                      override_settings={"samples_format": "jpg", "jpeg_quality": 90})
    check(res.images[0].format == "JPEG", f"override_settings samples_format jpg: {res.images[0].format}")

    start = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(start).ellipse((16, 16, 48, 48), fill="red")
    res = api.img2img(images=[start], prompt="a large blue circle at the center on a white background",
                      denoising_strength=0.6, seed=1, steps=10, width=64, height=64)
    check(len(res.images) == 1 and res.images[0].size == (64, 64), "img2img: one 64x64 image")
    mask = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill="white")
    res2 = api.img2img(images=[start], mask_image=mask, prompt=prompt, denoising_strength=1.0, seed=1,
                       steps=10, width=64, height=64)
    right = [res2.images[0].convert("RGB").getpixel((x, 32)) for x in (40, 60)]
    print("  inpainting: kept half pixels", right, "vs start", [start.getpixel((x, 32)) for x in (40, 60)])
    check(len(res2.images) == 1, "img2img with a mask (inpainting)")

    # Progress with a live preview, then interrupt, on a longer job run from another thread.
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("r", api.txt2img(
        prompt=prompt, seed=5, steps=150, width=256, height=256, n_iter=3)))
    th.start()
    prog = None
    for _ in range(400):
        p = api.get_progress()
        if p["progress"] > 0 and p["current_image"]:
            prog = p
            break
        time.sleep(0.05)
    check(prog is not None, "progress: running, with a current_image")
    img = Image.open(io.BytesIO(__import__("base64").b64decode(prog["current_image"])))
    print(f"  progress {prog['progress']:.3f}, eta_relative {prog['eta_relative']:.2f} s, "
          f"state {json.dumps(prog['state'])}, current_image {img.size}")
    check(prog["eta_relative"] > 0, "progress: an ETA")
    api.skip()
    time.sleep(0.3)
    p = api.get_progress()
    print(f"  after skip: job {p['state']['job']!r}")
    api.interrupt()
    th.join(60)
    r = out["r"]
    print(f"  after interrupt: the request answered with {len(r.images)} images")
    check(len(r.images) <= 1, "skip + interrupt: the request ends early")
    p = api.get_progress()
    check(p["progress"] == 0 and p["state"]["job_count"] == 0, "progress: idle again")

    r = requests.post(f"{base}/txt2img", json={"prompt": "x", "cfg_scale": "high"})
    print("wrong type:", r.status_code, r.json()["error"]["message"])
    check(r.status_code == 422 and r.json()["error"]["param"] == "cfg_scale", "wrong type: 422 naming cfg_scale")
    print("all webuiapi checks passed")


if __name__ == "__main__":
    main()
