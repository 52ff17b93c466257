"""Reads a GGUF written by `pixart quantize` back with llama.cpp's gguf-py and checks it against
the source text encoder folder.

For every tensor: `gguf.GGUFReader` finds it under llama.cpp's name with the source's shape; its
bytes equal `gguf.quants.quantize(source, type)` (F32, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: the types
gguf-py quantizes), so `gguf.quants.dequantize` gives the same values as pixart's dequantizer; and the
`t5encoder.*` metadata equals config.json. Prints one line per type and exits 1 on any mismatch.

Usage (reference venv):
  /work/pixart-ref-venv/bin/python tools/golden/check_quantized_gguf.py OUT.gguf TEXT_ENCODER_DIR
"""
import json
import os
import sys

import numpy as np
import torch
from gguf import GGMLQuantizationType as T, GGUFReader
from gguf.quants import dequantize, quantize
from safetensors.torch import load_file

LLAMA = {
    "layer.0.SelfAttention.q.weight": "attn_q", "layer.0.SelfAttention.k.weight": "attn_k",
    "layer.0.SelfAttention.v.weight": "attn_v", "layer.0.SelfAttention.o.weight": "attn_o",
    "layer.0.SelfAttention.relative_attention_bias.weight": "attn_rel_b",
    "layer.0.layer_norm.weight": "attn_norm", "layer.1.layer_norm.weight": "ffn_norm",
    "layer.1.DenseReluDense.wi_0.weight": "ffn_gate", "layer.1.DenseReluDense.wi_1.weight": "ffn_up",
    "layer.1.DenseReluDense.wi.weight": "ffn_up", "layer.1.DenseReluDense.wo.weight": "ffn_down",
}


def llama_name(k):
    if k == "shared.weight":
        return "token_embd.weight"
    if k == "encoder.final_layer_norm.weight":
        return "enc.output_norm.weight"
    if not k.startswith("encoder.block."):
        return None
    bid, rest = k[len("encoder.block."):].split(".", 1)
    return f"enc.blk.{bid}.{LLAMA[rest]}.weight" if rest in LLAMA else None


def main(path, src_dir):
    src = load_file(os.path.join(src_dir, "model.safetensors"))
    config = json.load(open(os.path.join(src_dir, "config.json")))
    reader = GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    bad, seen = 0, {}
    for k, v in src.items():
        name = llama_name(k)
        if name is None:
            continue
        t = tensors.pop(name, None)
        if t is None:
            print(f"MISSING {name} ({k})"); bad += 1; continue
        shape = tuple(int(d) for d in reversed(t.shape))
        x = v.float().numpy()
        if shape != x.shape:
            print(f"SHAPE {name}: {shape} vs {x.shape}"); bad += 1; continue
        got = dequantize(t.data, t.tensor_type).reshape(shape)
        want_bytes = quantize(x, t.tensor_type) if t.tensor_type != T.F32 else x
        if t.tensor_type == T.F32:
            same = np.array_equal(got, x)
        else:
            same = np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), want_bytes.view(np.uint8).reshape(-1))
        err = float(np.linalg.norm(got - x) / max(np.linalg.norm(x), 1e-30))
        seen.setdefault(t.tensor_type.name, []).append(err)
        if not same:
            print(f"BYTES {name}: differ from gguf-py's quantize ({t.tensor_type.name})"); bad += 1
    for name in tensors:
        print(f"EXTRA {name}"); bad += 1
    arch = reader.fields["general.architecture"].contents()
    meta = {k: reader.fields[f"{arch}.{k}"].contents() for k in
            ("embedding_length", "feed_forward_length", "block_count", "attention.head_count", "attention.key_length")}
    want = {"embedding_length": config["d_model"], "feed_forward_length": config["d_ff"], "block_count": config["num_layers"],
            "attention.head_count": config["num_heads"], "attention.key_length": config["d_kv"]}
    if meta != want:
        print(f"METADATA {meta} vs config.json {want}"); bad += 1
    for ty, errs in sorted(seen.items()):
        print(f"{ty}: {len(errs)} tensors, bytes equal to gguf-py's quantize, max relative L2 vs source {max(errs):.3g}")
    print("arch", arch, "OK" if bad == 0 else f"{bad} PROBLEMS")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
