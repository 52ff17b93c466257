#!/usr/bin/env python3
"""Drives `pixart serve`'s OpenAI images API with the official `openai` SDK.

    pixart serve --port 7861 &            # the built-in model (64 px)
    python tools/clients/check_openai.py --port 7861

Prints what each call gave and exits 1 on the first check that fails.
"""
import argparse
import base64
import io
import sys

import openai
from PIL import Image, ImageDraw


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--api-key", default="unused")
    a = ap.parse_args()
    client = openai.OpenAI(base_url=f"http://{a.host}:{a.port}/v1", api_key=a.api_key)
    print("openai", openai.__version__)

    models = client.models.list()
    ids = [m.id for m in models.data]
    print("models.list:", ids)
    check(len(ids) >= 1, "models.list names the served model")
    model = ids[0]

    prompt = "a large yellow triangle at the center on a blue background"
    # DALL·E 3 style request.
    r = client.images.generate(model=model, prompt=prompt, size="auto", quality="hd", style="vivid",
                               response_format="b64_json", n=1, user="check-script")
    img = Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json)))
    print(f"images.generate (dall-e-3 fields, size auto): {img.format} {img.size}")
    check(img.size == (64, 64), "size auto is the model's native size")
    # gpt-image style request.
    for fmt, want in [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")]:
        r = client.images.generate(model=model, prompt=prompt, size="64x64", quality="high",
                                   background="opaque", moderation="low", output_format=fmt,
                                   output_compression=80, n=2)
        imgs = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in r.data]
        print(f"images.generate output_format={fmt}: {[(i.format, i.size) for i in imgs]}")
        check(all(i.format == want for i in imgs) and len(imgs) == 2, f"output_format {fmt}")
    try:
        client.images.generate(model=model, prompt=prompt, quality="ultra")
        check(False, "quality ultra is refused")
    except openai.UnprocessableEntityError as e:
        print("quality=ultra:", e.status_code, e.body)
        check(e.body["param"] == "quality", "an unknown quality is 422 naming quality")

    start = Image.new("RGB", (64, 64), "blue")
    ImageDraw.Draw(start).polygon([(32, 12), (52, 52), (12, 52)], fill="yellow")
    buf = io.BytesIO()
    start.save(buf, "PNG")
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=(0, 0, 0, 0))
    mbuf = io.BytesIO()
    mask.save(mbuf, "PNG")
    r = client.images.edit(model=model, image=("start.png", buf.getvalue(), "image/png"),
                           mask=("mask.png", mbuf.getvalue(), "image/png"),
                           prompt="a large red triangle at the center on a blue background", n=1, size="64x64")
    img = Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json)))
    print(f"images.edit (inpainting, alpha mask): {img.format} {img.size}")
    check(img.size == (64, 64), "images.edit answers")
    r = client.images.edit(model=model, image=("start.png", buf.getvalue(), "image/png"), prompt=prompt)
    check(len(r.data) == 1, "images.edit without a mask (image to image)")
    print("all openai checks passed")


if __name__ == "__main__":
    main()
