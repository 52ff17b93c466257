"""Renders plain coloured shapes for trying `pixart train-vae` before `pixart demo-data` exists.

One circle, square or triangle per image, on a plain background of another colour, small or
large, at a corner or the centre, anti-aliased by 4x supersampling. Writes OUT/images/NNNNNN.png
and OUT/train.jsonl ({"path": "images/NNNNNN.png"}), the layout `pixart demo-data` writes.

    python tools/train/render_shapes.py --out /tmp/shapes64 --count 512 --size 64 --seed 0

Needs Pillow (the golden-file venv has it).
"""
import argparse
import json
import os
import random

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 210),
    "yellow": (235, 215, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ["circle", "square", "triangle"]
SIZES = {"small": 0.22, "large": 0.42}
POSITIONS = {
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
    "center": (0.5, 0.5),
}


def render(size: int, shape: str, fg, bg, extent: float, centre) -> Image.Image:
    ss = 4
    s = size * ss
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    r = extent * s / 2
    cx, cy = centre[0] * s, centre[1] * s
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    return img.resize((size, size), Image.LANCZOS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=512)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(os.path.join(a.out, "images"), exist_ok=True)
    lines = []
    for i in range(a.count):
        fg, bg = rng.sample(sorted(COLOURS), 2)
        shape = rng.choice(SHAPES)
        size = rng.choice(sorted(SIZES))
        pos = rng.choice(sorted(POSITIONS))
        img = render(a.size, shape, COLOURS[fg], COLOURS[bg], SIZES[size], POSITIONS[pos])
        rel = f"images/{i:06d}.png"
        img.save(os.path.join(a.out, rel))
        lines.append(json.dumps({"path": rel, "caption": f"a {size} {fg} {shape} at the {pos} on a {bg} background"}))
    with open(os.path.join(a.out, "train.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
