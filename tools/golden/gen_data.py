"""Golden files for training data: tokenizer training, the random T5 encoder, feature extraction.

Two phases (tools/golden/gen_data.sh runs them around the Rust commands):

`--phase inputs` writes, under fixtures/golden/data/:
- images/*.png and train.jsonl: a tiny caption dataset in `pixart demo-data`'s format (plain
  coloured shapes, short and long captions), including a greyscale and an RGBA image, a
  non-square one, a file that is no image at all and a PNG cut short in its pixel data;
- t5_config.json: a tiny T5 v1.1 (gated-gelu) encoder config for `pixart init text-encoder`.

Then the Rust side writes tokenizer/ (`pixart train-tokenizer --vocab-size 64`) and
text_encoder/ (`pixart init text-encoder --seed 0`).

`--phase expected` checks those with transformers / diffusers and writes:
- tokens.json: captions with the ids and masks of `AutoTokenizer.from_pretrained(tokenizer/)`
  and `T5TokenizerFast.from_pretrained(tokenizer/)` (max_length 16, padding "max_length",
  truncation), which must agree;
- init_check.json: what `T5EncoderModel.from_pretrained(text_encoder/, output_loading_info=True)`
  reported (missing / unexpected / mismatched keys), whether our config.json equals the one
  transformers writes for the same config, and the per-tensor std of our weights next to the std of
  transformers' own `_init_weights` for the same config (torch seed 0);
- features.safetensors: for every 16x16 image (no resize involved), the VAE posterior mean / std
  of diffusers' AutoencoderKL (fixtures/golden/vae/small) on the image scaled to [-1, 1], and the
  T5 last hidden state of both captions (lower-cased, stripped, tokenised to max_length 16) at the
  valid positions, keyed `<stem>.<tensor>`.

References: transformers 5.23.0 `models/t5/tokenization_t5.py`, `models/t5/modeling_t5.py`
(`T5PreTrainedModel._init_weights`); diffusers 0.42.1 `models/autoencoders/autoencoder_kl.py`;
PixArt-sigma `diffusion/data/datasets/InternalData_ms.py` (RGB, ToTensor, Normalize(.5, .5)).

Run with the reference venv:  tools/golden/gen_data.sh
"""
import argparse
import json
import os
import shutil
import struct
import tempfile
import zlib

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from transformers import AutoTokenizer, T5Config, T5EncoderModel, T5TokenizerFast
from diffusers import AutoencoderKL

torch.set_num_threads(1)
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
OUT = os.path.join(ROOT, "fixtures", "golden", "data")
VAE = os.path.join(ROOT, "fixtures", "golden", "vae", "small")
MAX_LENGTH = 16
COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (240, 220, 40),
          "white": (250, 250, 250), "black": (10, 10, 10)}

# (file, shape, colour, background, size, position, image size (w, h), mode)
SCENES = [
    ("000000.png", "circle", "red", "blue", "small", "top left", (16, 16), "RGB"),
    ("000001.png", "square", "green", "white", "large", "center", (16, 16), "RGB"),
    ("000002.png", "triangle", "yellow", "black", "small", "bottom right", (16, 16), "RGB"),
    ("000003.png", "circle", "white", "red", "large", "top right", (16, 16), "RGB"),
    ("000004.png", "square", "blue", "yellow", "small", "bottom left", (16, 16), "L"),
    ("000005.png", "triangle", "black", "green", "large", "center", (16, 16), "RGBA"),
    ("000006.png", "circle", "green", "black", "large", "center", (32, 16), "RGB"),
    ("000007.png", "square", "red", "white", "small", "top left", (16, 16), "RGB"),
]
BROKEN = "000008.png"      # not an image at all
TRUNCATED = "000009.png"   # a PNG cut short after its header and the start of its pixels


def caption(s):
    _, shape, color, bg, size, pos, _, _ = s
    where = "at the center" if pos == "center" else f"at the {pos}"
    return f"a {color} {shape}", f"a {size} {color} {shape} {where} on a {bg} background"


def draw(s):
    _, shape, color, bg, size, pos, (w, h), mode = s
    img = Image.new("RGB", (w, h), COLORS[bg])
    d = ImageDraw.Draw(img)
    r = (0.11 if size == "small" else 0.21) * min(w, h)
    cx = {"left": 0.27, "right": 0.73}.get(pos.split()[-1], 0.5) * w
    cy = {"top": 0.27, "bottom": 0.73}.get(pos.split()[0], 0.5) * h
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        d.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        d.rectangle(box, fill=COLORS[color])
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLORS[color])
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(200)
    return img


def phase_inputs():
    images = os.path.join(OUT, "images")
    os.makedirs(images, exist_ok=True)
    lines = []
    for s in SCENES:
        draw(s).save(os.path.join(images, s[0]))
        short, long = caption(s)
        lines.append({"path": f"images/{s[0]}", "caption": short, "long_caption": long,
                      "attributes": {"shape": s[1], "color": s[2], "background": s[3], "size": s[4],
                                     "position": s[5]}})
    with open(os.path.join(images, BROKEN), "wb") as f:
        f.write(b"this is not an image\n")
    # A valid PNG signature and IHDR (16x16 RGB), then an IDAT holding the first bytes of the pixel
    # stream only and no IEND: the header reads, decoding fails.
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    pixels = zlib.compress(bytes(16 * (1 + 16 * 3)))[:6]
    with open(os.path.join(images, TRUNCATED), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels))
    for name, text in [(BROKEN, ("a red square", "a small red square at the center on a blue background")),
                       (TRUNCATED, ("a blue circle", "a large blue circle at the top left on a white background"))]:
        lines.append({"path": f"images/{name}", "caption": text[0], "long_caption": text[1]})
    with open(os.path.join(OUT, "train.jsonl"), "w") as f:
        for rec in lines:
            f.write(json.dumps(rec) + "\n")
    cfg = {"vocab_size": 64, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2, "num_heads": 4,
           "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16,
           "feed_forward_proj": "gated-gelu"}
    with open(os.path.join(OUT, "t5_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


TEST_CAPTIONS = [
    "a red circle",
    "a small red circle at the top left on a blue background",
    "a large green square at the center on a white background",
    "A Yellow   Triangle",                      # upper case and repeated spaces, as given
    "a purple hexagon near a zebra",            # words and letters never seen in training
    "  leading and trailing spaces  ",
    "",
    "a small red circle at the top left on a blue background and a large green square at the center",
]


def phase_expected():
    tok_dir = os.path.join(OUT, "tokenizer")
    auto = AutoTokenizer.from_pretrained(tok_dir)
    fast = T5TokenizerFast.from_pretrained(tok_dir)
    cases = []
    for text in TEST_CAPTIONS:
        a = auto(text, max_length=MAX_LENGTH, padding="max_length", truncation=True, add_special_tokens=True)
        b = fast(text, max_length=MAX_LENGTH, padding="max_length", truncation=True, add_special_tokens=True)
        assert a["input_ids"] == b["input_ids"] and a["attention_mask"] == b["attention_mask"], text
        cases.append({"text": text, "input_ids": a["input_ids"], "attention_mask": a["attention_mask"],
                      "tokens": auto.convert_ids_to_tokens(auto(text)["input_ids"])})
    tokens = {"max_length": MAX_LENGTH, "vocab_size": len(auto), "tokenizer_class": type(auto).__name__,
              "cases": cases}
    with open(os.path.join(OUT, "tokens.json"), "w") as f:
        json.dump(tokens, f, indent=1, ensure_ascii=False)
        f.write("\n")

    enc_dir = os.path.join(OUT, "text_encoder")
    model, info = T5EncoderModel.from_pretrained(enc_dir, output_loading_info=True)
    model.eval()
    ours = json.load(open(os.path.join(enc_dir, "config.json")))
    with tempfile.TemporaryDirectory() as tmp:
        model.config.save_pretrained(tmp)
        theirs = json.load(open(os.path.join(tmp, "config.json")))
    config_diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    torch.manual_seed(0)
    fresh = T5EncoderModel(T5Config.from_pretrained(enc_dir))
    fresh_sd = fresh.state_dict()
    stds = {}
    for name, t in model.state_dict().items():
        if name == "encoder.embed_tokens.weight":
            continue  # tied to shared.weight
        stds[name] = {"ours": float(t.float().std()), "transformers": float(fresh_sd[name].float().std()),
                      "ours_mean": float(t.float().mean()), "numel": t.numel()}
    check = {"missing_keys": sorted(info["missing_keys"]), "unexpected_keys": sorted(info["unexpected_keys"]),
             "mismatched_keys": sorted(str(k) for k in info["mismatched_keys"]),
             "config_keys_differing_from_transformers": config_diff, "tensor_stats": stds}
    with open(os.path.join(OUT, "init_check.json"), "w") as f:
        json.dump(check, f, indent=1)
        f.write("\n")
    assert not check["missing_keys"] and not check["unexpected_keys"] and not check["mismatched_keys"], check
    assert not config_diff, config_diff

    vae = AutoencoderKL.from_pretrained(VAE).eval()
    tensors = {}
    with torch.no_grad():
        for s in SCENES:
            if s[6] != (16, 16):
                continue
            stem = s[0].split(".")[0]
            img = Image.open(os.path.join(OUT, "images", s[0])).convert("RGB")
            x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]  # (1,3,h,w)
            x = (x - 0.5) / 0.5
            post = vae.encode(x).latent_dist
            tensors[f"{stem}.latent_mean"] = post.mean[0].contiguous()
            tensors[f"{stem}.latent_std"] = post.std[0].contiguous()
            for kind, text in zip(["short", "long"], caption(s)):
                text = text.lower().strip()
                t = auto(text, max_length=MAX_LENGTH, padding="max_length", truncation=True,
                         add_special_tokens=True, return_tensors="pt")
                y = model(input_ids=t.input_ids, attention_mask=t.attention_mask).last_hidden_state[0]
                n = int(t.attention_mask.sum())
                tensors[f"{stem}.{kind}_feature"] = y[:n].contiguous()
                tensors[f"{stem}.{kind}_ids"] = t.input_ids[0, :n].contiguous()
    save_file(tensors, os.path.join(OUT, "features.safetensors"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=["inputs", "expected"], required=True)
    args = ap.parse_args()
    if args.phase == "inputs":
        phase_inputs()
    else:
        phase_expected()
