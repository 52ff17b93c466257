"""Golden files for the GGUF reader and the block (de)quantizers, from llama.cpp's gguf-py.

Writes, under fixtures/golden/quant/:
- blocks.gguf: a GGUF v3 file written by `gguf.GGUFWriter`, holding
  - `deq.<TYPE>`: raw blocks of every type we read (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
    Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), random bytes with the f16 block scales set to finite values, on
    odd shapes of several blocks per row (one of them 3-D), to test dequantization on every bit pattern;
  - `q.<TYPE>`: `gguf.quants.quantize` of `src.<TYPE>` (in blocks.safetensors) for BF16, Q4_0, Q4_1,
    Q5_0, Q5_1, Q8_0, the types gguf-py can quantize (it has no k-quant quantizer);
  - metadata of every value type (the reader test checks them).
- blocks.safetensors: `src.<TYPE>` (the f32 inputs of the quantizer, including an all-zero block,
  blocks whose largest magnitude is negative, and values that land on rounding ties) and
  `deq.<TYPE>` / `qdeq.<TYPE>`: what `gguf.GGUFReader` + `gguf.quants.dequantize` read back from
  blocks.gguf, in f32.

Reference: gguf 0.19.0 (`gguf/quants.py`, `gguf/gguf_reader.py`, `gguf/gguf_writer.py`), pinned in
requirements.txt.

Run with the reference venv:  /work/pixart-ref-venv/bin/python tools/golden/gen_quant.py
"""
import os

import numpy as np
import torch
from gguf import GGMLQuantizationType as T, GGUFReader, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden", "quant")

# Byte offsets of the f16 scales (d, dmin) inside one block of each type, so random blocks
# can be given finite scales (random bytes would hold NaN/inf in some of them).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
# numpy shape (outermost first) of each raw tensor: several blocks per row, odd row counts.
SHAPES = {
    T.F32: (3, 7), T.F16: (5, 3), T.BF16: (3, 5),
    T.Q4_0: (3, 160), T.Q4_1: (5, 96), T.Q5_0: (3, 160), T.Q5_1: (3, 2, 64), T.Q8_0: (7, 96),
    T.Q2_K: (3, 512), T.Q3_K: (3, 512), T.Q4_K: (3, 2, 512), T.Q5_K: (3, 512), T.Q6_K: (3, 512),
}
QUANTIZABLE = [T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]


def raw_blocks(rng, qtype, shape):
    if qtype == T.F32:
        return rng.standard_normal(shape).astype(np.float32)
    if qtype == T.F16:
        return rng.standard_normal(shape).astype(np.float16)
    if qtype == T.BF16:
        x = rng.standard_normal(shape).astype(np.float32).view(np.uint32) >> 16
        return x.astype(np.uint16).view(np.uint8).reshape(*shape[:-1], shape[-1] * 2)
    block, size = GGML_QUANT_SIZES[qtype]
    n_blocks = int(np.prod(shape)) // block
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        scale = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        b[:, off:off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return b.reshape(*shape[:-1], shape[-1] // block * size)


def quant_source(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1, 32)
    flat[0] = 0.0                                   # all-zero block: d = 0 branch
    flat[1] = -np.abs(flat[1]); flat[1, 3] = -4.0   # largest magnitude negative
    flat[2] = np.arange(32, dtype=np.float32) - 16  # integers: lands on .5 ties in Q8_0 / Q4_0
    flat[3, :] = 1.0; flat[3, 5] = -1.0             # +/- max with the same magnitude
    return flat.reshape(shape)


def main():
    rng = np.random.default_rng(26)
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "blocks.gguf")
    w = GGUFWriter(path, arch="pixart-golden")
    w.add_uint8("golden.u8", 200)
    w.add_int8("golden.i8", -100)
    w.add_uint16("golden.u16", 60000)
    w.add_int16("golden.i16", -30000)
    w.add_uint32("golden.u32", 4000000000)
    w.add_int32("golden.i32", -2000000000)
    w.add_float32("golden.f32", 0.25)
    w.add_bool("golden.bool", True)
    w.add_string("golden.string", "naïve façade")
    w.add_array("golden.array", [1, 2, 3])
    w.add_array("golden.strings", ["a", "bc", ""])
    w.add_uint64("golden.u64", 2**63 + 5)
    w.add_int64("golden.i64", -(2**62))
    w.add_float64("golden.f64", -1.5)
    sources = {}
    for qtype, shape in SHAPES.items():
        raw = raw_blocks(rng, qtype, shape)
        if qtype in (T.F32, T.F16):
            w.add_tensor(f"deq.{qtype.name}", raw)
        else:
            w.add_tensor(f"deq.{qtype.name}", raw, raw_shape=raw.shape, raw_dtype=qtype)
    for qtype in QUANTIZABLE:
        src = quant_source(rng, (5, 96) if qtype != T.Q5_1 else (3, 5, 64))
        sources[f"src.{qtype.name}"] = torch.from_numpy(src.copy())
        w.add_tensor(f"q.{qtype.name}", quantize(src, qtype), raw_shape=quantize(src, qtype).shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # What gguf-py reads back (its reader and its dequantizer): the expected values.
    out = dict(sources)
    reader = GGUFReader(path)
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        x = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        prefix, name = t.name.split(".", 1)
        key = f"deq.{name}" if prefix == "deq" else f"qdeq.{name}"
        out[key] = torch.from_numpy(np.ascontiguousarray(x))
    save_file(out, os.path.join(OUT, "blocks.safetensors"))
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
