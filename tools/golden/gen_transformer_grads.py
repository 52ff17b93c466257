"""Golden gradients of the PixArt transformer, from diffusers' PixArtTransformer2DModel and
PyTorch autograd: training must get the same parameter gradients as PyTorch does.

Writes fixtures/golden/train/transformer_grads.safetensors: a tiny random model's weights
(diffusers names, every tensor non-zero, so no path is blocked), the inputs (`in.x`, `in.t`,
`in.y`, `in.mask` with padding, `in.target`), `loss` = mean((sample - target)^2) over all 8 output
channels, and `grad.<name>` for every parameter.

Run with the reference venv (tools/golden/setup.sh):  python tools/golden/gen_transformer_grads.py
"""
import os

import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import save_file

torch.set_num_threads(1)
torch.manual_seed(0)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden", "train")

model = PixArtTransformer2DModel(
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=4,
    out_channels=8,
    num_layers=2,
    cross_attention_dim=16,
    attention_bias=True,
    sample_size=8,
    patch_size=2,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    caption_channels=12,
    interpolation_scale=1.0,
    use_additional_conditions=False,
).double()
with torch.no_grad():
    for name, p in model.named_parameters():
        p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.1))

x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
t = torch.tensor([10.0, 900.0], dtype=torch.float64)
y = torch.randn(2, 5, 12, dtype=torch.float64)
mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
out = model(x, encoder_hidden_states=y, encoder_attention_mask=mask, timestep=t).sample
target = torch.randn_like(out)
loss = ((out - target) ** 2).mean()
loss.backward()

tensors = {name: p.detach().float().contiguous() for name, p in model.named_parameters()}
tensors.update({f"grad.{name}": p.grad.float().contiguous() for name, p in model.named_parameters()})
tensors.update(
    {
        "in.x": x.float(),
        "in.t": t.float(),
        "in.y": y.float(),
        "in.mask": mask.float(),
        "in.target": target.float(),
        "loss": loss.detach().float().reshape(1),
    }
)
os.makedirs(OUT, exist_ok=True)
save_file(tensors, os.path.join(OUT, "transformer_grads.safetensors"))
print("loss", loss.item(), "tensors", len(tensors))
