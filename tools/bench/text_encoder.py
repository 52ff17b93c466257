"""T5 v1.1 encoder in PyTorch/transformers, the same work as `pixart bench text-encoder`:
random weights (built directly in --dtype, so an XXL model needs ~9.5 GB in bf16), --batch ×
--tokens valid tokens. Prints one JSON object. Needs the reference venv (tools/golden/setup.sh)."""
import argparse
import json
import resource
import time

import torch
from transformers import T5Config, T5EncoderModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="xxl", help="xxl, or a config.json path")
    ap.add_argument("--dtype", default="bf16", choices=["f32", "bf16"])
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    if a.config == "xxl":
        cfg = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                       relative_attention_num_buckets=32, relative_attention_max_distance=128,
                       feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    else:
        cfg = T5Config.from_json_file(a.config)
    torch.set_default_dtype(dtype)
    t0 = time.perf_counter()
    model = T5EncoderModel(cfg).eval()
    build = time.perf_counter() - t0
    torch.set_default_dtype(torch.float32)
    ids = torch.randint(2, cfg.vocab_size, (a.batch, a.tokens))
    mask = torch.ones(a.batch, a.tokens, dtype=torch.int64)
    with torch.inference_mode():
        s = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        e = time.perf_counter() - s
    print(json.dumps({
        "bench": "text-encoder-pytorch", "config": a.config, "dtype": a.dtype, "batch": a.batch,
        "tokens": a.tokens, "seconds_per_forward": e, "build_seconds": build,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }), flush=True)


if __name__ == "__main__":
    main()
