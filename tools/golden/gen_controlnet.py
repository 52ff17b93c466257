"""Golden files for the ControlNet-Transformer (PixArt-δ), from the diffusers example code.

The reference is diffusers' research example `examples/research_projects/pixart/
controlnet_pixart_alpha.py` (`PixArtControlNetAdapterModel`, `PixArtControlNetTransformerModel`)
at huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951 (git blob faf11879...). The pip
package does not ship it: pass the file (or a checkout of diffusers at that commit) with
`--example PATH` or `PIXART_CONTROLNET_EXAMPLE`; the generator refuses another version of the file.
It is run against the pinned pip diffusers (tools/golden/requirements.txt).

Writes fixtures/golden/controlnet/<case>/:
- transformer/: a tiny random PixArt-Σ transformer (diffusers layout) and `original.pth` (the
  original PixArt layout, for the original-layout twin);
- controlnet/: the adapter as the example saves it (config.json holding only `num_layers`, plus
  diffusion_pytorch_model.safetensors, keys `controlnet_blocks.{i}.*`);
- controlnet_original.pth: the same adapter in the original PixArt-ControlNet layout
  (PixArt-alpha/PixArt-alpha@cac2fd3, diffusion/model/nets/pixart_controlnet.py: `ControlPixArtHalf`
  state dict, keys `controlnet.{i}.copied_block.<block keys>`, `controlnet.{i}.{before,after}_proj.*`,
  plus `base_model.*` keys of the frozen base, which a loader must skip);
- io.safetensors: inputs (`hidden_states`, `timestep`, `encoder_hidden_states`,
  `encoder_attention_mask`, `controlnet_cond`), `sample` (with the ControlNet), `sample_plain`
  (the transformer alone), `sample_scale_{s}` (each after_proj output times s, our
  `--control-scale`: the example has no scale, so a forward hook multiplies after_proj's output),
  and `trace.control.{i}.after_proj` / `trace.control.{i}.block` (every adapter block's two
  outputs) and `trace.block.{i}` (every base block's output).

    /work/pixart-ref-venv/bin/python tools/golden/gen_controlnet.py --example PATH/controlnet_pixart_alpha.py
"""
import argparse
import hashlib
import importlib.util
import json
import os
import sys

import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import save_file

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden", "controlnet")
DIFFUSERS_COMMIT = "58eb52c0803ea9af3abec60841c2a093bdf1f951"
EXAMPLE_BLOB = "faf118798eccb45452a14b4c21d4a899a205fd50"  # git hash-object of the file at that commit
EXAMPLE_REL = "examples/research_projects/pixart/controlnet_pixart_alpha.py"

TINY = dict(
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=8,
    num_layers=4,
    cross_attention_dim=24,
    attention_bias=True,
    sample_size=8,
    patch_size=2,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    caption_channels=32,
    use_additional_conditions=False,
)


def git_blob(path):
    data = open(path, "rb").read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def load_example(path):
    if os.path.isdir(path):
        path = os.path.join(path, EXAMPLE_REL)
    blob = git_blob(path)
    if blob != EXAMPLE_BLOB:
        raise SystemExit(f"{path}: git blob {blob}, expected {EXAMPLE_BLOB} (diffusers@{DIFFUSERS_COMMIT})")
    spec = importlib.util.spec_from_file_location("controlnet_pixart_alpha", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def randomise(model):
    """Every parameter random (the example zero-initialises the projections, which would hide
    them), scaled by fan-in, with small modulation offsets and projections so that activations
    stay O(1) through four blocks plus the copies (a 1e-5 absolute tolerance is then a
    meaningful relative one)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "scale_shift_table" in name:
                p.normal_(0, 0.3)
            elif "before_proj" in name or "after_proj" in name:
                p.normal_(0, 0.3 / p[0].numel() ** 0.5) if p.ndim >= 2 else p.normal_(0, 0.05)
            elif p.ndim >= 2:
                p.normal_(0, 1.0 / p[0].numel() ** 0.5)
            else:
                p.normal_(0, 0.1)


def block_to_original(sd, p, b):
    """One diffusers block's tensors (prefix p) under the original PixArt block names (prefix b),
    the inverse of diffusers' scripts/convert_pixart_sigma_to_diffusers.py."""
    o = {f"{b}.scale_shift_table": sd[f"{p}.scale_shift_table"]}
    for leaf in ("weight", "bias"):
        o[f"{b}.attn.qkv.{leaf}"] = torch.cat([sd[f"{p}.attn1.to_{x}.{leaf}"] for x in "qkv"], 0)
        o[f"{b}.attn.proj.{leaf}"] = sd[f"{p}.attn1.to_out.0.{leaf}"]
        o[f"{b}.cross_attn.q_linear.{leaf}"] = sd[f"{p}.attn2.to_q.{leaf}"]
        o[f"{b}.cross_attn.kv_linear.{leaf}"] = torch.cat([sd[f"{p}.attn2.to_{x}.{leaf}"] for x in "kv"], 0)
        o[f"{b}.cross_attn.proj.{leaf}"] = sd[f"{p}.attn2.to_out.0.{leaf}"]
        o[f"{b}.mlp.fc1.{leaf}"] = sd[f"{p}.ff.net.0.proj.{leaf}"]
        o[f"{b}.mlp.fc2.{leaf}"] = sd[f"{p}.ff.net.2.{leaf}"]
    return o


def transformer_to_original(sd, num_layers):
    top = {
        "pos_embed.proj": "x_embedder.proj",
        "caption_projection.linear_1": "y_embedder.y_proj.fc1",
        "caption_projection.linear_2": "y_embedder.y_proj.fc2",
        "adaln_single.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "adaln_single.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
        "adaln_single.linear": "t_block.1",
        "proj_out": "final_layer.linear",
    }
    o = {"final_layer.scale_shift_table": sd["scale_shift_table"]}
    for k, v in top.items():
        for leaf in ("weight", "bias"):
            o[f"{v}.{leaf}"] = sd[f"{k}.{leaf}"]
    for i in range(num_layers):
        o.update(block_to_original(sd, f"transformer_blocks.{i}", f"blocks.{i}"))
    return o


def adapter_to_original(sd, n):
    """`ControlPixArtHalf.controlnet` (a ModuleList of `ControlT2IDitBlockHalf`) names."""
    o = {}
    for i in range(n):
        p, c = f"controlnet_blocks.{i}", f"controlnet.{i}"
        o.update(block_to_original(sd, f"{p}.transformer_block", f"{c}.copied_block"))
        for proj in ("before_proj", "after_proj") if i == 0 else ("after_proj",):
            for leaf in ("weight", "bias"):
                o[f"{c}.{proj}.{leaf}"] = sd[f"{p}.{proj}.{leaf}"]
    return o


def run_case(ex, name, cfg, control_layers, latent_hw, mask_rows, timesteps, seed, scales=(0.0, 0.5)):
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(**cfg).eval()
    randomise(transformer)
    # The example's adapter blocks take PixArt-XL's widths by default; the widths of the base
    # are passed here (what our loader does: the adapter's config.json holds only num_layers).
    adapter = ex.PixArtControlNetAdapterModel(num_layers=control_layers)
    widths = {k: cfg[k] for k in ("num_attention_heads", "attention_head_dim", "cross_attention_dim",
                                  "attention_bias", "activation_fn", "num_embeds_ada_norm", "norm_type",
                                  "norm_elementwise_affine", "norm_eps")}
    adapter.controlnet_blocks = torch.nn.ModuleList(
        [ex.PixArtControlNetAdapterBlock(block_index=i, **widths) for i in range(control_layers)]
    )
    randomise(adapter)
    adapter.eval()
    model = ex.PixArtControlNetTransformerModel(transformer, adapter, blocks_num=control_layers).eval()

    H, W = latent_hw
    B, L = len(mask_rows), len(mask_rows[0])
    x = torch.randn(B, cfg["in_channels"], H, W)
    t = torch.tensor(timesteps)
    y = torch.randn(B, L, cfg["caption_channels"])
    mask = torch.tensor(mask_rows, dtype=torch.int64)
    cond = torch.randn(B, cfg["in_channels"], H, W)

    trace = {}
    hooks = []
    for j, blk in enumerate(transformer.transformer_blocks):
        hooks.append(blk.register_forward_hook(lambda m, i, o, j=j: trace.__setitem__(f"block.{j}", o)))
    for j, blk in enumerate(adapter.controlnet_blocks):
        hooks.append(blk.register_forward_hook(
            lambda m, i, o, j=j: trace.update({f"control.{j}.after_proj": o[0], f"control.{j}.block": o[1]})))

    def run(c):
        with torch.no_grad():
            return model(x, encoder_hidden_states=y, timestep=t, controlnet_cond=c,
                         encoder_attention_mask=mask).sample

    out = run(cond)
    for h in hooks:
        h.remove()
    plain = run(None)
    with torch.no_grad():
        plain_direct = transformer(x, encoder_hidden_states=y, timestep=t, encoder_attention_mask=mask).sample
    assert torch.equal(plain, plain_direct) or (plain - plain_direct).abs().max() < 1e-6
    scaled = {}
    for s in scales:
        hs = [blk.after_proj.register_forward_hook(lambda m, i, o, s=s: o * s) for blk in adapter.controlnet_blocks]
        scaled[f"sample_scale_{s}"] = run(cond)
        for h in hs:
            h.remove()

    d = os.path.join(OUT, name)
    os.makedirs(os.path.join(d, "transformer"), exist_ok=True)
    tsd = {k: v.detach().contiguous() for k, v in transformer.state_dict().items()}
    save_file(tsd, os.path.join(d, "transformer", "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(d, "transformer", "config.json"), "w") as f:
        json.dump(dict(cfg, _class_name="PixArtTransformer2DModel"), f, indent=2)
    adapter.save_pretrained(os.path.join(d, "controlnet"))  # the example's own folder layout
    asd = {k: v.detach().contiguous() for k, v in adapter.state_dict().items()}
    orig = {k: v.contiguous() for k, v in adapter_to_original(asd, control_layers).items()}
    base_orig = transformer_to_original(tsd, cfg["num_layers"])
    orig.update({f"base_model.{k}": v.contiguous() for k, v in base_orig.items()})
    torch.save({"state_dict": orig}, os.path.join(d, "controlnet_original.pth"))
    torch.save({"state_dict": {k: v.contiguous() for k, v in base_orig.items()}},
               os.path.join(d, "transformer_original.pth"))

    io = {"hidden_states": x, "timestep": t, "encoder_hidden_states": y, "encoder_attention_mask": mask,
          "controlnet_cond": cond, "sample": out, "sample_plain": plain}
    io.update(scaled)
    io.update({f"trace.{k}": v.detach().float() for k, v in trace.items()})
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(d, "io.safetensors"))
    print(f"{name}: sample {tuple(out.shape)} |max| {out.abs().max():.3f}, "
          f"|sample - plain| max {(out - plain).abs().max():.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--example", default=os.environ.get("PIXART_CONTROLNET_EXAMPLE"),
                    help=f"{EXAMPLE_REL} of diffusers@{DIFFUSERS_COMMIT}, or a checkout holding it")
    a = ap.parse_args()
    if not a.example:
        raise SystemExit(f"pass --example PATH ({EXAMPLE_REL} of diffusers@{DIFFUSERS_COMMIT})")
    sys.path.insert(0, os.path.dirname(os.path.abspath(a.example)))
    ex = load_example(a.example)
    many = [[1, 1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0, 0]]
    # Two control blocks on a four-block base: blocks 1 and 2 get control, block 3 does not.
    run_case(ex, "base", dict(TINY, interpolation_scale=0.5), 2, (8, 8), many, [999, 17], seed=0)
    # Non-square latents, as many control blocks as the base allows (num_layers - 1).
    run_case(ex, "nonsquare_full", dict(TINY, num_layers=3, interpolation_scale=1.0, sample_size=16), 2,
             (6, 10), many, [500, 3], seed=1)


if __name__ == "__main__":
    main()
