"""Golden files for T5 encoders stored in quantized single files, from gguf-py and transformers.

Writes, under fixtures/golden/quant/:
- t5_gguf.gguf: a tiny random T5 v1.1 encoder (gated-gelu, 2 blocks, d_model 64, d_ff 256) written
  by `gguf.GGUFWriter` with llama.cpp's T5 tensor names (`token_embd`, `enc.blk.N.attn_q|k|v|o`,
  `attn_rel_b`, `attn_norm`, `ffn_gate|up|down`, `ffn_norm`, `enc.output_norm`) and `t5.*`
  metadata (keys as llama.cpp's convert_hf_to_gguf.py `T5EncoderModel` writes them): the
  embedding and the attention and gate/up projections in Q8_0 (`gguf.quants.quantize`), `ffn_down`
  in Q4_K (random blocks: gguf-py has no k-quant quantizer; their dequantized values *are* that
  model's f32 weights, so the f32 reference differs from the GGUF model by the Q8_0 tensors), norms and the position bias in F32.
- t5_fp8.safetensors: the same model as a ComfyUI single file with transformers' key names:
  projections in float8_e4m3fn with a per-tensor `scale_weight` and the `scaled_fp8` marker, one
  projection (block 1 `wo`) in float8_e5m2 without a scale, the embedding in F16, norms and the
  position bias in F32.
- t5_io.safetensors: input_ids / attention_mask (2 rows, one padded), and
  `gguf.last_hidden_state` / `fp8.last_hidden_state`: transformers' `T5EncoderModel` (f32, eager)
  run on the weights dequantized by gguf-py (`GGUFReader` + `gguf.quants.dequantize`) and by
  torch (`w.float() * scale_weight`); `f32.last_hidden_state`: the model before quantization.

References: gguf 0.19.0, transformers 5.23.0 `models/t5/modeling_t5.py`; ComfyUI `comfy/ops.py`
(`scaled_fp8`, `scale_weight`: weight.to(dtype) * scale_weight).

Run with the reference venv:  /work/pixart-ref-venv/bin/python tools/golden/gen_quant_t5.py
"""
import os

import numpy as np
import torch
from gguf import GGMLQuantizationType as T, GGUFReader, GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden", "quant")

CONFIG = dict(vocab_size=96, d_model=64, d_kv=16, num_heads=4, d_ff=256, num_layers=2,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", is_encoder_decoder=False)


def llama_name(k):
    """transformers' key -> llama.cpp's (gguf-py tensor_mapping.py, MODEL_TENSOR.ENC_*)."""
    if k == "shared.weight":
        return "token_embd.weight"
    if k == "encoder.final_layer_norm.weight":
        return "enc.output_norm.weight"
    parts = k.split(".")
    bid = parts[2]
    rest = ".".join(parts[3:])
    table = {
        "layer.0.SelfAttention.q.weight": "attn_q", "layer.0.SelfAttention.k.weight": "attn_k",
        "layer.0.SelfAttention.v.weight": "attn_v", "layer.0.SelfAttention.o.weight": "attn_o",
        "layer.0.SelfAttention.relative_attention_bias.weight": "attn_rel_b",
        "layer.0.layer_norm.weight": "attn_norm", "layer.1.layer_norm.weight": "ffn_norm",
        "layer.1.DenseReluDense.wi_0.weight": "ffn_gate", "layer.1.DenseReluDense.wi_1.weight": "ffn_up",
        "layer.1.DenseReluDense.wo.weight": "ffn_down",
    }
    return f"enc.blk.{bid}.{table[rest]}.weight"


def run(state, ids, mask):
    model = T5EncoderModel(T5Config(**CONFIG)).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(m == "encoder.embed_tokens.weight" for m in missing), (missing, unexpected)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state.contiguous()


def main():
    torch.manual_seed(26)
    rng = np.random.default_rng(2626)
    os.makedirs(OUT, exist_ok=True)
    model = T5EncoderModel(T5Config(**CONFIG)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "layer_norm" in n:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "relative_attention_bias" not in n:
                p.copy_(0.08 * torch.randn_like(p))
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    # The FFN output projections as random Q4_K blocks (gguf-py cannot quantize to Q4_K): their
    # values as gguf-py dequantizes them are the f32 model's weights too, so the f32 reference
    # differs from the GGUF model by the Q8_0 tensors only.
    q4k = {}
    for k in [k for k in state if k.endswith("wo.weight")]:
        rows, cols = state[k].shape
        n_blocks = rows * cols // 256
        b = rng.integers(0, 256, size=(n_blocks, 144), dtype=np.uint8)
        for off in (0, 2):
            scale = (np.abs(rng.standard_normal(n_blocks)) * 0.0002 + 0.0002).astype(np.float16)
            b[:, off:off + 2] = scale.view(np.uint8).reshape(-1, 2)
        q4k[k] = b.reshape(rows, -1)
        state[k] = torch.from_numpy(dequantize(q4k[k], T.Q4_K).astype(np.float32).reshape(rows, cols).copy())

    ids = torch.tensor([[int(x) for x in rng.integers(3, 96, 12)], [5, 17, 1] + [0] * 9], dtype=torch.long)
    mask = torch.tensor([[1] * 12, [1] * 3 + [0] * 9], dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask, "f32.last_hidden_state": run(state, ids, mask)}

    # GGUF with llama.cpp names.
    path = os.path.join(OUT, "t5_gguf.gguf")
    w = GGUFWriter(path, arch="t5")
    w.add_context_length(512)
    w.add_embedding_length(CONFIG["d_model"])
    w.add_feed_forward_length(CONFIG["d_ff"])
    w.add_block_count(CONFIG["num_layers"])
    w.add_head_count(CONFIG["num_heads"])
    w.add_key_length(CONFIG["d_kv"])
    w.add_value_length(CONFIG["d_kv"])
    w.add_layer_norm_eps(CONFIG["layer_norm_epsilon"])
    w.add_layer_norm_rms_eps(CONFIG["layer_norm_epsilon"])
    w.add_relative_attn_buckets_count(CONFIG["relative_attention_num_buckets"])
    for k, v in state.items():
        x = v.numpy().astype(np.float32)
        name = llama_name(k)
        if k in q4k:
            w.add_tensor(name, q4k[k], raw_shape=q4k[k].shape, raw_dtype=T.Q4_K)
        elif x.ndim == 2 and "attn_rel_b" not in name:
            q = quantize(x, T.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=T.Q8_0)
        else:
            w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    back = {t.name: t for t in GGUFReader(path).tensors}
    inverse = {llama_name(k): k for k in state}
    deq = {}
    for name, t in back.items():
        shape = tuple(int(d) for d in reversed(t.shape))
        deq[inverse[name]] = torch.from_numpy(dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape).copy())
    out["gguf.last_hidden_state"] = run(deq, ids, mask)

    # ComfyUI scaled-fp8 single file.
    fp8, ref = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for k, v in state.items():
        if k == "encoder.block.1.layer.1.DenseReluDense.wo.weight":
            fp8[k] = v.to(torch.float8_e5m2)
            ref[k] = fp8[k].float()
        elif k.endswith(("q.weight", "k.weight", "v.weight", "o.weight", "wi_0.weight", "wi_1.weight", "wo.weight")):
            scale = (v.abs().max() / 448.0).float()
            fp8[k] = (v / scale).to(torch.float8_e4m3fn)
            fp8[k[: -len("weight")] + "scale_weight"] = scale.reshape(())
            ref[k] = fp8[k].float() * scale
        elif k == "shared.weight":
            fp8[k] = v.half()
            ref[k] = fp8[k].float()
        else:
            fp8[k] = v
            ref[k] = v
    save_file(fp8, os.path.join(OUT, "t5_fp8.safetensors"))
    out["fp8.last_hidden_state"] = run(ref, ids, mask)

    save_file(out, os.path.join(OUT, "t5_io.safetensors"))
    for key in ("gguf", "fp8"):
        e = out[f"{key}.last_hidden_state"] - out["f32.last_hidden_state"]
        print(key, "relative L2 vs f32:", float(e.norm() / out["f32.last_hidden_state"].norm()))
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
