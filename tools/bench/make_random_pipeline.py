"""Writes a full-size PixArt-Σ pipeline folder with random weights, in the diffusers layout of
PixArt-alpha/PixArt-Sigma-XL-2-1024-MS: transformer (XL/2, sample size 128, bf16), SDXL VAE
(f32), T5 v1.1 XXL encoder (bf16, sharded), PixArt-Σ's scheduler config, and a tokenizer
copied from --tokenizer (the real T5 tokenizer cannot be downloaded here; any T5 SentencePiece
tokenizer gives ids the XXL encoder accepts). For measuring what `pixart generate` needs at
1024 px with real-size components (time, peak RSS); the images are noise.

    <venv>/bin/python tools/bench/make_random_pipeline.py --out /tmp/sigma-random \
        --tokenizer models/builtin/tokenizer

About 11 GB on disk; building the XXL encoder needs about 10 GB of memory.
"""
import argparse
import json
import os
import shutil
import sys

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler
from transformers import T5Config, T5EncoderModel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "golden"))
from gen_schedulers import PIXART  # noqa: E402  (PixArt-Σ's scheduler_config.json)
from transformer import random_sigma_transformer  # noqa: E402  (tools/bench/transformer.py)
from vae_decode import sdxl_vae  # noqa: E402  (tools/bench/vae_decode.py)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", required=True, help="a T5 tokenizer folder to copy")
    a = ap.parse_args()
    torch.manual_seed(0)
    os.makedirs(a.out, exist_ok=True)
    shutil.copytree(a.tokenizer, os.path.join(a.out, "tokenizer"), dirs_exist_ok=True)
    DPMSolverMultistepScheduler.from_config(PIXART).save_pretrained(os.path.join(a.out, "scheduler"))
    print("transformer", flush=True)
    random_sigma_transformer(1024, torch.bfloat16).save_pretrained(os.path.join(a.out, "transformer"))
    print("vae", flush=True)
    sdxl_vae().save_pretrained(os.path.join(a.out, "vae"))
    print("text encoder (T5 v1.1 XXL, bf16)", flush=True)
    cfg = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    torch.set_default_dtype(torch.bfloat16)
    t5 = T5EncoderModel(cfg).eval()
    torch.set_default_dtype(torch.float32)
    t5.save_pretrained(os.path.join(a.out, "text_encoder"), max_shard_size="5GB")
    del t5
    with open(os.path.join(a.out, "model_index.json"), "w") as f:
        json.dump({
            "_class_name": "PixArtSigmaPipeline",
            "_diffusers_version": "0.42.1",
            "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
            "text_encoder": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "T5Tokenizer"],
            "transformer": ["diffusers", "PixArtTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }, f, indent=2)
    print(f"wrote {a.out}", flush=True)


if __name__ == "__main__":
    main()
