"""Golden files for the PixArt transformer, from diffusers' PixArtTransformer2DModel.

Writes fixtures/golden/transformer/<case>/ with config.json + diffusion_pytorch_model.safetensors
(a tiny random model) and io.safetensors (inputs, the output `sample`, and intermediates
`trace.*`). KV compression has no diffusers implementation: the `kv_*` cases patch the
self-attention of the compressed layers with a small PyTorch port of `AttentionKVCompress`
(PixArt-alpha/PixArt-sigma@1ce521af, diffusion/model/nets/PixArt_blocks.py), whose conv-mode
weights are stored under the diffusers-layout names `attn1.kv_compress.{conv,norm}.*`.
The `original_*` files hold the same tiny models in the original PixArt layout.

Run with the reference venv (tools/golden/setup.sh):  python tools/golden/gen_transformer.py
"""
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import PixArtTransformer2DModel
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from safetensors.torch import save_file

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden", "transformer")

TINY = dict(
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=8,
    num_layers=2,
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


class KvCompressRef(nn.Module):
    """AttentionKVCompress.downsample_2d, the parts PixArt-Σ uses (conv / uniform / ave)."""

    def __init__(self, dim, sampling, r):
        super().__init__()
        self.sampling, self.r = sampling, r
        if sampling == "conv":
            self.conv = nn.Conv2d(dim, dim, groups=dim, kernel_size=r, stride=r)
            self.norm = nn.LayerNorm(dim)
            with torch.no_grad():  # random, so that a skipped op or a swapped axis shows
                self.conv.weight.normal_(0.25, 0.2)
                self.conv.bias.normal_(0, 0.1)
                self.norm.weight.normal_(1.0, 0.3)
                self.norm.bias.normal_(0, 0.2)

    def forward(self, t, H, W):
        B, N, C = t.shape
        t = t.reshape(B, H, W, C).permute(0, 3, 1, 2)
        nh, nw = int(H / self.r), int(W / self.r)
        if self.sampling == "ave":
            t = F.interpolate(t, scale_factor=1 / self.r, mode="nearest").permute(0, 2, 3, 1)
        elif self.sampling == "uniform":
            t = t[:, :, :: self.r, :: self.r].permute(0, 2, 3, 1)
        elif self.sampling == "conv":
            t = self.conv(t).reshape(B, C, -1).permute(0, 2, 1)
            t = self.norm(t)
        return t.reshape(B, nh * nw, C).contiguous()


class KvProcessor:
    """Self-attention with K/V compressed after their projections (project first, compress after)."""

    def __init__(self, kv, grid):
        self.kv, self.grid = kv, grid

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        B, N, C = hidden_states.shape
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        H, W = self.grid
        k, v = self.kv(k, H, W), self.kv(v, H, W)
        d = C // attn.heads
        q = q.view(B, -1, attn.heads, d).transpose(1, 2)
        k = k.view(B, -1, attn.heads, d).transpose(1, 2)
        v = v.view(B, -1, attn.heads, d).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)
        o = o.transpose(1, 2).reshape(B, -1, C)
        return attn.to_out[1](attn.to_out[0](o))


def to_original(sd, kv_layers=()):
    """diffusers names -> original PixArt names (inverse of scripts/convert_pixart_sigma_to_diffusers.py)."""
    o = {}
    top = {
        "pos_embed.proj": "x_embedder.proj",
        "caption_projection.linear_1": "y_embedder.y_proj.fc1",
        "caption_projection.linear_2": "y_embedder.y_proj.fc2",
        "adaln_single.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "adaln_single.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
        "adaln_single.linear": "t_block.1",
        "proj_out": "final_layer.linear",
    }
    for k, v in top.items():
        for leaf in ("weight", "bias"):
            o[f"{v}.{leaf}"] = sd[f"{k}.{leaf}"]
    o["final_layer.scale_shift_table"] = sd["scale_shift_table"]
    n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks."))
    for i in range(n):
        p, b = f"transformer_blocks.{i}", f"blocks.{i}"
        o[f"{b}.scale_shift_table"] = sd[f"{p}.scale_shift_table"]
        for leaf in ("weight", "bias"):
            o[f"{b}.attn.qkv.{leaf}"] = torch.cat([sd[f"{p}.attn1.to_{x}.{leaf}"] for x in "qkv"], 0)
            o[f"{b}.attn.proj.{leaf}"] = sd[f"{p}.attn1.to_out.0.{leaf}"]
            o[f"{b}.cross_attn.q_linear.{leaf}"] = sd[f"{p}.attn2.to_q.{leaf}"]
            o[f"{b}.cross_attn.kv_linear.{leaf}"] = torch.cat([sd[f"{p}.attn2.to_{x}.{leaf}"] for x in "kv"], 0)
            o[f"{b}.cross_attn.proj.{leaf}"] = sd[f"{p}.attn2.to_out.0.{leaf}"]
            o[f"{b}.mlp.fc1.{leaf}"] = sd[f"{p}.ff.net.0.proj.{leaf}"]
            o[f"{b}.mlp.fc2.{leaf}"] = sd[f"{p}.ff.net.2.{leaf}"]
            if i in kv_layers:
                o[f"{b}.attn.sr.{leaf}"] = sd[f"{p}.attn1.kv_compress.conv.{leaf}"]
                o[f"{b}.attn.norm.{leaf}"] = sd[f"{p}.attn1.kv_compress.norm.{leaf}"]
    return {k: v.contiguous() for k, v in o.items()}


def randomise(model):
    """diffusers zero-inits some layers: randomise every parameter, scaled by fan-in so that
    activations stay O(1) (a 1e-5 absolute tolerance is then a meaningful relative one)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "scale_shift_table" not in name:
                p.normal_(0, 1.0 / p[0].numel() ** 0.5)
            elif "scale_shift_table" in name:
                p.normal_(0, 0.5)
            else:
                p.normal_(0, 0.1)


def run_case(name, cfg, latent_hw, mask_rows, timesteps, kv=None, seed=0, added=None, original=False):
    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(**cfg).eval()
    randomise(model)
    H, W = latent_hw
    grid = (H // cfg["patch_size"], W // cfg["patch_size"])
    extra = {}
    kv_layers = ()
    if kv is not None:
        sampling, r, kv_layers = kv
        for i in kv_layers:
            mod = KvCompressRef(cfg["num_attention_heads"] * cfg["attention_head_dim"], sampling, r)
            blk = model.transformer_blocks[i]
            blk.attn1.kv_compress = mod
            blk.attn1.set_processor(KvProcessor(mod, grid))
        cfg = dict(cfg, kv_compress={"sampling": sampling, "scale_factor": r, "layers": list(kv_layers)})

    B, L = len(mask_rows), len(mask_rows[0])
    x = torch.randn(B, cfg["in_channels"], H, W)
    t = torch.tensor(timesteps)
    y = torch.randn(B, L, cfg["caption_channels"])
    mask = torch.tensor(mask_rows, dtype=torch.int64)

    trace = {}
    hooks = [
        model.pos_embed.register_forward_hook(lambda m, i, o: trace.__setitem__("x_embed", o)),
        model.adaln_single.register_forward_hook(lambda m, i, o: trace.update(t0=o[0], temb=o[1])),
        model.caption_projection.register_forward_hook(lambda m, i, o: trace.__setitem__("caption", o)),
        model.proj_out.register_forward_pre_hook(lambda m, i: trace.__setitem__("final_norm", i[0])),
        model.proj_out.register_forward_hook(lambda m, i, o: trace.__setitem__("proj_out", o)),
    ]
    for j, blk in enumerate(model.transformer_blocks):
        hooks.append(blk.register_forward_hook(lambda m, i, o, j=j: trace.__setitem__(f"block.{j}", o)))
    kwargs = {}
    if added is not None:
        kwargs["added_cond_kwargs"] = {
            "resolution": torch.tensor(added["resolution"], dtype=torch.float32),
            "aspect_ratio": torch.tensor(added["aspect_ratio"], dtype=torch.float32),
        }
    with torch.no_grad():
        out = model(x, encoder_hidden_states=y, timestep=t, encoder_attention_mask=mask, **kwargs).sample
    for h in hooks:
        h.remove()
    s = model.config.interpolation_scale or max(cfg["sample_size"] // 64, 1)
    trace["pos_embed"] = get_2d_sincos_pos_embed(
        model.inner_dim, grid, base_size=cfg["sample_size"] // cfg["patch_size"], interpolation_scale=s
    ).float()

    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(d, "diffusion_pytorch_model.safetensors"))
    conf = dict(cfg, _class_name="PixArtTransformer2DModel")
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(conf, f, indent=2)
    io = {
        "hidden_states": x,
        "timestep": t,
        "encoder_hidden_states": y,
        "encoder_attention_mask": mask,
        "sample": out,
    }
    if added is not None:
        io["resolution"] = kwargs["added_cond_kwargs"]["resolution"]
        io["aspect_ratio"] = kwargs["added_cond_kwargs"]["aspect_ratio"]
    io.update({f"trace.{k}": v.detach().float().contiguous() for k, v in trace.items()})
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(d, "io.safetensors"))
    if original:
        o = to_original(sd, kv_layers)
        n_tok = (cfg["sample_size"] // cfg["patch_size"]) ** 2
        o["pos_embed"] = torch.randn(1, n_tok, model.inner_dim)  # stale buffer, must be ignored
        o["y_embedder.y_embedding"] = torch.randn(L, cfg["caption_channels"])  # null caption
        torch.save({"state_dict": o, "epoch": 3}, os.path.join(d, "original.pth"))
        torch.save(o, os.path.join(d, "original_plain.pth"))  # no `state_dict` key
        save_file(o, os.path.join(d, "original.safetensors"))
    print(f"{name}: sample {tuple(out.shape)} |max| {out.abs().max():.3f}")


many = [[1, 1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0, 0]]
run_case("base", dict(TINY, interpolation_scale=0.5), (8, 8), many, [999, 17], original=True)
for s in (0.5, 1.0, 2.0):
    run_case(f"nonsquare_s{s}", dict(TINY, interpolation_scale=s, sample_size=16), (6, 10), many, [500, 3], seed=1)
run_case("fractional_t", dict(TINY, interpolation_scale=None, sample_size=16), (8, 4), [[1] * 7, [1, 1, 1, 0, 0, 0, 0]], [949.05, 0.5], seed=2)
run_case(
    "micro",
    dict(TINY, use_additional_conditions=True, interpolation_scale=1.0),
    (8, 8),
    many,
    [999, 17],
    seed=3,
    added={"resolution": [[64.0, 64.0], [64.0, 64.0]], "aspect_ratio": [[1.0], [1.0]]},
)
run_case("kv_conv", dict(TINY, num_layers=3, interpolation_scale=1.0), (8, 12), many, [700, 40], kv=("conv", 2, (1, 2)), seed=4, original=True)
run_case("kv_conv_odd", dict(TINY, interpolation_scale=1.0), (10, 6), many, [700, 40], kv=("conv", 2, (1,)), seed=5)
run_case("kv_uniform", dict(TINY, interpolation_scale=1.0), (8, 12), many, [300, 600], kv=("uniform", 2, (0, 1)), seed=6)
run_case("kv_ave", dict(TINY, interpolation_scale=1.0), (8, 12), many, [300, 600], kv=("ave", 2, (1,)), seed=7)
run_case("kv_conv_r3", dict(TINY, interpolation_scale=1.0), (12, 12), many, [250, 251], kv=("conv", 3, (0,)), seed=8)
# Patch size 1 with interpolated positions: the built-in model's stage 5 (weak-to-strong to a finer patch).
run_case("patch1", dict(TINY, patch_size=1, interpolation_scale=2.0), (8, 6), many, [640, 90], seed=9)
