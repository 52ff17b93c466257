"""End-to-end golden files for the text-to-image pipeline, from diffusers' PixArtSigmaPipeline
(diffusers 0.42.1, torch 2.15.0, transformers 5.23.0).

Writes fixtures/golden/pipeline/, a complete (tiny, random) diffusers pipeline folder:
  model_index.json, scheduler/ (PixArt-Σ's DPMSolverMultistepScheduler config),
  transformer/ (2-layer PixArtTransformer2DModel, sample_size 32 -> the 256 aspect-ratio bins),
  text_encoder/ + tokenizer/ (copies of fixtures/golden/text/, a 3-layer T5 encoder),
  vae/ (4-block AutoencoderKL, downsampling factor 8 like the SDXL VAE),
and cases.json + cases.safetensors: for every case, the initial latents given to the pipeline
(`<case>.latents_in`), the final latents (`output_type="latent"`, `<case>.latents_out`) and the
decoded image (`output_type="np"`, (B, H, W, 3) in [0, 1], `<case>.image`).

Run with the reference venv (tools/golden/setup.sh):  python tools/golden/gen_pipeline.py
"""
import json
import os
import shutil
import sys

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
from safetensors.torch import save_file
from transformers import T5EncoderModel, T5Tokenizer

sys.path.insert(0, os.path.dirname(__file__))
from gen_schedulers import PIXART  # noqa: E402
from gen_vae import randomise as randomise_vae  # noqa: E402

torch.set_num_threads(1)
ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden")
OUT = os.path.join(ROOT, "pipeline")

CASES = {
    # CFG with the default empty negative prompt; aspect-ratio binning (96x136 -> a 256 bin) and
    # the resize + centre-crop back to the requested size.
    "cfg_binned": dict(
        prompt="  A small Cactus with a happy face in the Sahara desert. ",
        negative_prompt="",
        height=96, width=136, steps=4, guidance=4.5, per_prompt=1, binning=True,
    ),
    # No CFG (guidance <= 1), two prompts, binning off.
    "no_cfg_two_prompts": dict(
        prompt=["a red cube on a table", "Two Cats"],
        negative_prompt="blurry",
        height=48, width=64, steps=3, guidance=1.0, per_prompt=1, binning=False,
    ),
    # CFG with a negative prompt, two images of one prompt, binning off.
    "cfg_negative_batch": dict(
        prompt="a dog in the snow",
        negative_prompt="low quality, ugly",
        height=64, width=48, steps=3, guidance=3.0, per_prompt=2, binning=False,
    ),
}


def randomise_transformer(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def build() -> PixArtSigmaPipeline:
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        cross_attention_dim=24,
        attention_bias=True,
        sample_size=32,
        patch_size=2,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        caption_channels=32,
        use_additional_conditions=False,
        interpolation_scale=0.5,
    ).eval()
    randomise_transformer(transformer, 2024)
    # Scale the output projection so that the predicted noise is O(1), as a trained model's is.
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        x = torch.randn((1, 4, 8, 8), generator=g)
        y = torch.randn((1, 5, 32), generator=g)
        eps = transformer(x, encoder_hidden_states=y, timestep=torch.tensor([500])).sample[:, :4]
        transformer.proj_out.weight.div_(eps.std())
        transformer.proj_out.bias.div_(eps.std())
    vae = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 8, 8],
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=32,
        scaling_factor=0.13025,
        force_upcast=False,
    ).eval()
    randomise_vae(vae, 2025)
    text = os.path.join(ROOT, "text")
    text_encoder = T5EncoderModel.from_pretrained(os.path.join(text, "text_encoder")).eval()
    tokenizer = T5Tokenizer.from_pretrained(os.path.join(text, "tokenizer"))
    scheduler = DPMSolverMultistepScheduler.from_config(PIXART)
    return PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


def main() -> None:
    pipe = build()
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    pipe.save_pretrained(OUT)
    # Ship the exact tokenizer and text encoder files of the text fixtures.
    for sub in ("tokenizer", "text_encoder"):
        shutil.rmtree(os.path.join(OUT, sub))
        shutil.copytree(os.path.join(ROOT, "text", sub), os.path.join(OUT, sub))

    tensors, meta = {}, {}
    for seed, (name, c) in enumerate(CASES.items()):
        n_prompts = 1 if isinstance(c["prompt"], str) else len(c["prompt"])
        batch = n_prompts * c["per_prompt"]
        if c["binning"]:
            hb, wb = pipe.image_processor.classify_height_width_bin(
                c["height"], c["width"], ratios=__import__(
                    "diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha", fromlist=["x"]
                ).ASPECT_RATIO_256_BIN
            )
        else:
            hb, wb = c["height"], c["width"]
        g = torch.Generator().manual_seed(100 + seed)
        latents = torch.randn((batch, 4, hb // 8, wb // 8), generator=g)
        outs = {}
        for output_type in ("latent", "np"):
            with torch.no_grad():
                out = pipe(
                    prompt=c["prompt"],
                    negative_prompt=c["negative_prompt"],
                    num_inference_steps=c["steps"],
                    guidance_scale=c["guidance"],
                    height=c["height"],
                    width=c["width"],
                    num_images_per_prompt=c["per_prompt"],
                    latents=latents.clone(),
                    output_type=output_type,
                    clean_caption=False,
                    use_resolution_binning=c["binning"],
                    max_sequence_length=300,
                )
            outs[output_type] = torch.as_tensor(out.images)
        tensors[f"{name}.latents_in"] = latents
        tensors[f"{name}.latents_out"] = outs["latent"].float()
        tensors[f"{name}.image"] = outs["np"].float()
        meta[name] = {**c, "bin_height": hb, "bin_width": wb}
        print(
            f"{name}: latents {tuple(latents.shape)} -> image {tuple(outs['np'].shape)}, "
            f"|latents_out| max {outs['latent'].abs().max():.3f}, image std {outs['np'].std():.3f}"
        )
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "cases.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
