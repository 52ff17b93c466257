"""Pieces shared by the generators that write their own sampling loop around diffusers'
PixArt-Σ components (gen_pipeline_iddpm.py, gen_pipeline_img2img.py)."""
import torch


class Feed:
    """Stands in for diffusers' `randn_tensor` inside a scheduler's step: hands out the stored
    noise set in `next` (patch it into the scheduler's module: `mod.randn_tensor = FEED`)."""

    def __init__(self):
        self.next = None

    def __call__(self, shape, generator=None, device=None, dtype=None, **kw):
        assert tuple(shape) == tuple(self.next.shape), (shape, self.next.shape)
        return self.next.to(dtype)


def encode(pipe, c):
    """The prompt rows of case `c` as `PixArtSigmaPipeline.__call__` builds them (300 tokens,
    no caption cleaning; with CFG the negative rows first). Returns (cfg, embeddings, mask)."""
    cfg = c["guidance"] > 1.0
    emb, mask, neg, neg_mask = pipe.encode_prompt(
        c["prompt"], do_classifier_free_guidance=cfg, negative_prompt=c["negative_prompt"],
        num_images_per_prompt=c["per_prompt"], clean_caption=False, max_sequence_length=300,
    )
    if cfg:
        emb, mask = torch.cat([neg, emb]), torch.cat([neg_mask, mask])
    return cfg, emb, mask


def model_output(pipe, x_in, t, emb, mask):
    """The transformer on `x_in` at timestep `t` (a 0-d tensor), as the pipeline calls it."""
    return pipe.transformer(
        x_in, encoder_hidden_states=emb, encoder_attention_mask=mask,
        timestep=t.expand(x_in.shape[0]), added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    ).sample
