"""Golden files for a PixArt-α pipeline folder (`model_index.json` naming PixArtAlphaPipeline, as
PixArt-alpha/PixArt-XL-2-1024-MS and PixArt-LCM do): diffusers 0.42.1 `PixArtAlphaPipeline` on the
components of the tiny random pipeline of fixtures/golden/pipeline (written by gen_pipeline.py),
with a prompt longer than the 120 caption tokens the α pipeline keeps (the Σ pipeline keeps 300).

Writes fixtures/golden/pipeline/alpha.json (the case) and alpha.safetensors: `<case>.latents_in`,
`<case>.latents_out` (output_type="latent").

Run with the reference venv (tools/golden/setup.sh):  python tools/golden/gen_pipeline_alpha.py
"""
import json
import os

import torch
from diffusers import PixArtAlphaPipeline, PixArtSigmaPipeline
from safetensors.torch import save_file

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden", "pipeline")

LONG = ("a very detailed photograph of a small red fox sitting in the snow next to a wooden fence, " * 4).strip()
CASES = {
    "alpha_long_prompt": dict(prompt=LONG, negative_prompt="blurry", height=48, width=64, steps=3, guidance=4.5),
}


def main():
    sigma = PixArtSigmaPipeline.from_pretrained(OUT)
    pipe = PixArtAlphaPipeline(tokenizer=sigma.tokenizer, text_encoder=sigma.text_encoder, vae=sigma.vae,
                               transformer=sigma.transformer, scheduler=sigma.scheduler)
    tensors, meta = {}, {}
    for k, (name, c) in enumerate(CASES.items()):
        n_tokens = len(pipe.tokenizer(c["prompt"].lower()).input_ids)
        assert 120 < n_tokens < 300, n_tokens
        g = torch.Generator().manual_seed(700 + k)
        latents = torch.randn((1, 4, c["height"] // 8, c["width"] // 8), generator=g)
        with torch.no_grad():
            out = pipe(prompt=c["prompt"], negative_prompt=c["negative_prompt"], num_inference_steps=c["steps"],
                       guidance_scale=c["guidance"], height=c["height"], width=c["width"], latents=latents.clone(),
                       output_type="latent", clean_caption=False, use_resolution_binning=False,
                       max_sequence_length=120).images
        tensors[f"{name}.latents_in"] = latents
        tensors[f"{name}.latents_out"] = out
        meta[name] = {**c, "per_prompt": 1, "binning": False, "prompt_tokens": n_tokens}
        print(f"{name}: {n_tokens} prompt tokens, |latents_out| max {out.abs().max():.3f}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "alpha.safetensors"))
    with open(os.path.join(OUT, "alpha.json"), "w") as f:
        json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
